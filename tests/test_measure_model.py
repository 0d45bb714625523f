"""The torch side of `kvplan measure`, on the CPU for real: caches, the decoder, cached decode.

Every attention kind gets a tiny spec (hidden 64): its allocated cache bytes must
equal the calculator's prediction exactly, and cached decode must give the logits
a recomputation without the cache gives.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kvplan.formats import parse_format, parse_format_pair  # noqa: E402
from kvplan.measure.cache import (  # noqa: E402
    KVCache,
    LatentCache,
    StateCache,
    allocate_caches,
    cache_tensors,
    held_positions,
    storage_bytes,
)
from kvplan.measure.model import Decoder  # noqa: E402
from kvplan.measure.predict import build_arch, cache_layout, weight_count  # noqa: E402
from kvplan.measure.run import check_cached_decode  # noqa: E402
from kvplan.spec import LayerKind  # noqa: E402

CPU = torch.device("cpu")

# One tiny spec per attention kind (fields over conftest's make_spec: hidden 64,
# 4 heads of 16, 2 KV heads, vocab 256, MLP 128).
KINDS = {
    "gqa": dict(num_hidden_layers=2),
    "mha": dict(num_hidden_layers=2, num_key_value_heads=4),
    "mqa": dict(num_hidden_layers=2, num_key_value_heads=1),
    "sliding": dict(
        num_hidden_layers=3, layer_types=("sliding_attention", "full_attention", "sliding_attention"), sliding_window=8
    ),
    "all-sliding": dict(num_hidden_layers=2, sliding_window=5),
    "chunked": dict(num_hidden_layers=2, layer_types=("chunked_attention", "full_attention"), attention_chunk_size=8),
    "mla": dict(
        num_hidden_layers=2, num_key_value_heads=None, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
        v_head_dim=16, q_lora_rank=24,
    ),
    "mla-direct-q": dict(num_hidden_layers=2, num_key_value_heads=None, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16),
    "mamba1": dict(num_hidden_layers=2, layer_types=("mamba", "full_attention"), mamba_d_state=8, mamba_d_conv=4, mamba_expand=2),
    "mamba2": dict(
        num_hidden_layers=2, layer_types=("mamba", "full_attention"), mamba_d_state=8, mamba_d_conv=4, mamba_expand=2,
        mamba_n_heads=8, mamba_n_groups=2,
    ),
    "state-count": dict(num_hidden_layers=2, layer_types=("state", "full_attention"), state_elements_per_layer=40),
    "kv-shared": dict(
        num_hidden_layers=4,
        layer_types=("sliding_attention", "full_attention", "sliding_attention", "full_attention"),
        sliding_window=8,
        num_kv_shared_layers=2,
    ),
    "moe": dict(num_hidden_layers=2, num_experts_per_tok=2, n_routed_experts=4, moe_intermediate_size=32),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _arch(spec_factory, kind):
    return build_arch(spec_factory(**KINDS[kind]))


def _caches(arch, tokens, batch, dtype=torch.float32, k=None, v=None):
    return allocate_caches(arch, tokens, batch, k or dtype, v or dtype, dtype, CPU)


# ------------------------------------------------------------------ cache bytes


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("tokens, batch", [(5, 1), (19, 3)])
def test_allocated_cache_bytes_equal_the_prediction(spec_factory, kind, tokens, batch):
    arch = _arch(spec_factory, kind)
    fmt = parse_format_pair("fp32", "fp32")
    est = cache_layout(arch, fmt, parse_format("fp32")).at(tokens, batch)
    caches = _caches(arch, tokens, batch)
    assert storage_bytes(cache_tensors(caches)) == est.kv_bytes_total
    for row in est.by_kind:  # and kind by kind
        measured = sum(
            storage_bytes(c.tensors()) for layer, c in zip(arch.layers, caches) if c is not None and layer.kind.value == row.kind
        )
        assert measured == row.bytes_total, row.kind


@pytest.mark.parametrize(
    "kind, tokens, batch, dtype, expected",
    [
        # GQA: 2 layers x 2 KV heads x (16 + 16) x 2 B = 256 B per token; 19 tokens x 3 sequences
        ("gqa", 19, 3, "bf16", 256 * 19 * 3),
        # sliding (W 8) holds min(19, 8) = 8 tokens in 2 layers, full 19 in one: 64 B per token-layer in fp16
        ("sliding", 19, 1, "fp16", 128 * (2 * 8 + 19)),
        # MLA: one 32 + 8 = 40-element latent per token and layer, 4 B each
        ("mla", 19, 2, "fp32", 2 * 40 * 4 * 19 * 2),
        # Mamba-1 state 128 x 3 + 128 x 8 = 1,408 elements x 2 B per sequence, + the full layer's 128 B per token
        ("mamba1", 19, 2, "bf16", 2 * (1_408 * 2 + 128 * 19)),
        # fp8 K and V: 1 byte per element: 2 layers x 2 heads x 32 x 1 B = 128 B per token
        ("gqa", 10, 1, "fp8", 128 * 10),
    ],
)
def test_cache_bytes_golden(spec_factory, kind, tokens, batch, dtype, expected):
    arch = _arch(spec_factory, kind)
    kv = getattr(torch, "float8_e4m3fn") if dtype == "fp8" else DTYPES[dtype]
    state = torch.bfloat16 if dtype == "fp8" else DTYPES[dtype]
    caches = allocate_caches(arch, tokens, batch, kv, kv, state, CPU)
    assert storage_bytes(cache_tensors(caches)) == expected
    est = cache_layout(arch, parse_format_pair(dtype, "bf16"), parse_format("bf16" if dtype == "fp8" else dtype)).at(tokens, batch)
    assert est.kv_bytes_total == expected


def test_cache_shapes(spec_factory):
    arch = _arch(spec_factory, "sliding")
    caches = _caches(arch, 19, 3)
    assert isinstance(caches[0], KVCache) and caches[0].k.shape == (3, 2, 8, 16)  # ring of W = 8 slots
    assert caches[1].k.shape == (3, 2, 19, 16)  # (B, H_kv, T, D)
    mla = _caches(_arch(spec_factory, "mla"), 19, 3)
    assert isinstance(mla[0], LatentCache) and mla[0].latent.shape == (3, 19, 40)  # (B, T, r + rope)
    state = _caches(_arch(spec_factory, "mamba2"), 19, 3)
    assert isinstance(state[0], StateCache)
    assert {k: tuple(v.shape) for k, v in state[0].states.items()} == {"conv_state": (3, 160, 3), "ssm_state": (3, 8, 16, 8)}
    shared = _caches(_arch(spec_factory, "kv-shared"), 19, 1)
    assert shared[2] is None and shared[3] is None


def test_ring_positions_and_masks():
    pos = torch.tensor([6])
    # 4 slots after writing positions 0..6 as p mod 4: slots hold 4, 5, 6, 3
    assert held_positions(pos, 4).tolist() == [4, 5, 6, 3]
    # a full cache of 10 slots: 0..6 written, 7..9 empty (negative)
    assert (held_positions(pos, 10) >= 0).tolist() == [True] * 7 + [False] * 3
    sliding = KVCache(LayerKind.SLIDING, 3, 1, 1, 3, 2, 2, torch.float32, torch.float32, CPU)
    assert sliding.mask(pos).tolist() == [True, True, True]  # slots hold 6, 4, 5: all within 3 of 6
    sliding4 = KVCache(LayerKind.SLIDING, 3, 1, 1, 4, 2, 2, torch.float32, torch.float32, CPU)
    assert sliding4.mask(pos).tolist() == [True, True, True, False]  # position 3 is 3 behind: outside W = 3
    chunked = KVCache(LayerKind.CHUNKED, 4, 1, 1, 4, 2, 2, torch.float32, torch.float32, CPU)
    assert chunked.mask(pos).tolist() == [True, True, True, False]  # chunk 1 = positions 4..7; slot 3 holds 3


def test_ring_keeps_the_last_tokens_of_a_long_prompt():
    cache = KVCache(LayerKind.SLIDING, 4, 1, 1, 4, 1, 1, torch.float32, torch.float32, CPU)
    k = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1)
    cache.update(torch.arange(10), k, k)
    assert cache.k.flatten().tolist() == [8.0, 9.0, 6.0, 7.0]  # positions 6..9 in slots p mod 4


def test_fp8_cache_round_trips():
    cache = KVCache(LayerKind.FULL, None, 1, 1, 4, 2, 2, torch.float8_e4m3fn, torch.float8_e4m3fn, CPU)
    values = torch.tensor([[[[0.5, -1.0], [2.0, 0.25]]]])
    cache.update(torch.tensor([1, 3]), values, values)
    assert cache.k.float()[0, 0, 1].tolist() == [0.5, -1.0]
    assert cache.k.float()[0, 0, 3].tolist() == [2.0, 0.25]
    assert storage_bytes([cache.k]) == 4 * 2  # one byte per element


# ------------------------------------------------------------------ the decoder


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_model_parameters_match_the_weight_count(spec_factory, kind):
    arch = _arch(spec_factory, kind)
    model = Decoder(arch, CPU, torch.bfloat16, seed=0)
    assert sum(p.numel() for p in model.parameters()) == weight_count(arch).total
    assert storage_bytes(model.parameter_tensors()) == 2 * weight_count(arch).total


def test_weights_are_seeded_and_leave_the_global_rng_alone(spec_factory):
    arch = _arch(spec_factory, "gqa")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = Decoder(arch, CPU, torch.float32, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = Decoder(arch, CPU, torch.float32, seed=7)
    c = Decoder(arch, CPU, torch.float32, seed=8)
    assert torch.equal(a.layers[0].mixer.q_proj, b.layers[0].mixer.q_proj)
    assert not torch.equal(a.layers[0].mixer.q_proj, c.layers[0].mixer.q_proj)


# (prompt, decode steps): the prompt is longer than the sliding window (8) and the
# chunk (8), and decoding crosses a chunk boundary, so ring wrap-around is exercised.
CASES = [(12, 6), (3, 7)]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("prompt, steps", CASES)
def test_cached_decode_equals_recomputation_fp32(spec_factory, kind, prompt, steps):
    arch = _arch(spec_factory, kind)
    torch.manual_seed(0)
    model = Decoder(arch, CPU, torch.float32, seed=1)
    tokens = torch.randint(0, arch.vocab, (2, prompt + steps))
    caches = _caches(arch, prompt + steps, 2)
    with torch.no_grad():
        worst, scale = check_cached_decode(model, caches, tokens, prompt, steps)
    assert scale > 1.0  # the logits are not trivially zero
    assert worst <= 1e-4 * scale, (worst, scale)


@pytest.mark.parametrize("kind", ["gqa", "sliding", "chunked", "mla", "mamba1", "mamba2", "kv-shared"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cached_decode_equals_recomputation_half(spec_factory, kind, dtype):
    # bf16 / fp16 round K/V, partial sums and the state differently on the two paths;
    # 5% / 1% of the largest logit are run.VERIFY_TOLERANCE's bounds
    arch = _arch(spec_factory, kind)
    torch.manual_seed(0)
    model = Decoder(arch, CPU, DTYPES[dtype], seed=1)
    tokens = torch.randint(0, arch.vocab, (2, 18))
    caches = _caches(arch, 18, 2, DTYPES[dtype])
    with torch.no_grad():
        worst, scale = check_cached_decode(model, caches, tokens, 12, 6)
    assert worst <= {"bf16": 5e-2, "fp16": 1e-2}[dtype] * scale, (worst, scale)


def test_a_wrong_cache_is_caught(spec_factory):
    # the check can fail: decode over a cache whose K was zeroed after the prefill
    arch = _arch(spec_factory, "gqa")
    model = Decoder(arch, CPU, torch.float32, seed=1)
    tokens = torch.randint(0, arch.vocab, (1, 13))
    caches = _caches(arch, 13, 1)
    with torch.no_grad():
        model.prefill(tokens[:, :12], caches)
        caches[0].k.zero_()
        cached = model.decode(tokens[:, 12:13], torch.tensor([12]), caches)
        recomputed = model.prefill(tokens)
    assert (cached - recomputed).abs().max().item() > 1e-2
