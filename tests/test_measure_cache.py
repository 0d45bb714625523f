"""The tensors `kvplan measure` allocates (kvplan/measure/cache.py), against hand-computed shapes.

`allocate_caches` sizes a windowed layer with the calculator's `tokens_held`, the same rule
the prediction uses, so "measured bytes == predicted bytes" cannot catch a wrong rule. These
tests state the shapes from the rule itself, worked by hand: a sliding window W keeps the
last W tokens (a ring of min(T, W) slots; HF transformers `SlidingWindowLayer`,
`max_cache_len = min(sliding_window, max_cache_len)`), a chunked layer keeps its current
chunk of C (a ring of min(T, C) slots), a full layer keeps all T; each K is
(B, H_kv, slots, D) and each V (B, H_kv, slots, D_v), gpt-fast's layout.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kvplan.measure.cache import (  # noqa: E402
    LatentCache,
    StateCache,
    allocate_caches,
    cache_dtype,
    cache_tensors,
    storage_bytes,
)
from kvplan.measure.predict import build_arch  # noqa: E402
from kvplan.model.spec import LayerKind  # noqa: E402

CPU = torch.device("cpu")


def _shapes(caches):
    return [None if c is None else [tuple(t.shape) for t in c.tensors()] for c in caches]


@pytest.mark.parametrize(
    "tokens, ring",
    [
        (5, 5),  # fewer tokens than the window: the ring is only as long as the run
        (7, 7),  # W - 1
        (8, 8),  # exactly W
        (9, 8),  # W + 1: one token has left the window
        (23, 8),
    ],
)
def test_sliding_window_ring_shapes(spec_factory, tokens, ring):
    # 3 layers (sliding, full, sliding), W = 8; hidden 64 / 4 heads = head_dim 16, 2 KV heads;
    # V head dim 8 (v_head_dim set apart from head_dim); batch 3
    spec = spec_factory(
        num_hidden_layers=3, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=8, v_head_dim=8,
    )
    caches = allocate_caches(build_arch(spec), tokens, 3, torch.float16, torch.float16, torch.float16, CPU)
    assert _shapes(caches) == [
        [(3, 2, ring, 16), (3, 2, ring, 8)],
        [(3, 2, tokens, 16), (3, 2, tokens, 8)],
        [(3, 2, ring, 16), (3, 2, ring, 8)],
    ]
    assert [c.slots for c in caches] == [ring, tokens, ring]
    assert [c.window for c in caches] == [8, None, 8]
    # fp16: 2 B x 3 sequences x 2 heads x (16 + 8) = 288 B per slot and layer
    assert storage_bytes(cache_tensors(caches)) == 288 * (2 * ring + tokens)


@pytest.mark.parametrize("tokens, ring", [(6, 6), (8, 8), (9, 8), (20, 8)])
def test_chunked_ring_shapes(spec_factory, tokens, ring):
    # chunk C = 8; a chunked layer attends within its chunk, so at most 8 slots
    spec = spec_factory(num_hidden_layers=2, layer_types=["chunked_attention", "full_attention"], attention_chunk_size=8)
    caches = allocate_caches(build_arch(spec), tokens, 1, torch.float32, torch.float32, torch.float32, CPU)
    assert _shapes(caches) == [[(1, 2, ring, 16)] * 2, [(1, 2, tokens, 16)] * 2]
    assert caches[0].kind is LayerKind.CHUNKED and caches[1].kind is LayerKind.FULL
    # fp32: 4 B x 2 heads x (16 + 16) = 256 B per slot
    assert storage_bytes(cache_tensors(caches)) == 256 * (ring + tokens)


def test_k_and_v_formats_apart(spec_factory):
    # an fp8 K beside a bf16 V: 1 B and 2 B per element; 4 tokens, 2 KV heads x 16
    caches = allocate_caches(build_arch(spec_factory(num_hidden_layers=1)), 4, 1, torch.float8_e4m3fn, torch.bfloat16, torch.float32, CPU)
    (cache,) = caches
    assert cache.k.dtype == torch.float8_e4m3fn and cache.v.dtype == torch.bfloat16
    assert storage_bytes(cache.tensors()) == 4 * 2 * 16 * (1 + 2)  # 384 B


def test_latent_and_state_shapes(spec_factory):
    # MLA: one latent of kv_lora_rank 32 + rope 8 = 40 per token, no heads: (B, T, 40)
    mla = spec_factory(num_hidden_layers=1, num_key_value_heads=None, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16)
    (latent,) = allocate_caches(build_arch(mla), 11, 2, torch.bfloat16, torch.bfloat16, torch.float32, CPU)
    assert isinstance(latent, LatentCache) and tuple(latent.latent.shape) == (2, 11, 40) and latent.slots == 11
    assert latent.latent.dtype == torch.bfloat16
    # Mamba-1, hidden 64 x expand 2 = d_inner 128: conv (128, d_conv 4 - 1 = 3), SSM (128, d_state 8), per
    # sequence; whatever the tokens, in the state dtype
    mamba = spec_factory(num_hidden_layers=2, layer_types=["mamba", "full_attention"], mamba_d_state=8, mamba_d_conv=4, mamba_expand=2)
    state, full = allocate_caches(build_arch(mamba), 50, 2, torch.float16, torch.float16, torch.float32, CPU)
    assert isinstance(state, StateCache)
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.states.items()} == {
        "conv_state": ((2, 128, 3), torch.float32),
        "ssm_state": ((2, 128, 8), torch.float32),
    }
    assert tuple(full.k.shape) == (2, 2, 50, 16)


def test_storage_counts_a_shared_storage_once():
    base = torch.zeros(10, dtype=torch.float32)
    assert storage_bytes([base, base[:5], base.view(2, 5)]) == 40
    assert storage_bytes([base, torch.zeros(3, dtype=torch.float16)]) == 46


def test_cache_dtypes():
    assert cache_dtype("bf16") is torch.bfloat16 and cache_dtype("fp32") is torch.float32
    assert cache_dtype("fp8") is torch.float8_e4m3fn and cache_dtype("fp8_e5m2") is torch.float8_e5m2
    assert cache_dtype("int4") is None
