"""The torch side of `kvplan measure`, on the CPU for real: caches, the decoder, cached decode.

Every attention kind gets a tiny spec (hidden 64): its allocated cache bytes must
equal the calculator's prediction exactly, and cached decode must give the logits
a recomputation without the cache gives.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kvplan.model.formats import parse_format, parse_format_pair  # noqa: E402
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
from kvplan.model.spec import LayerKind  # noqa: E402

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
    # Kimi Delta Attention beside MLA (Kimi-Linear), LFM2 short convolutions beside GQA
    "kda": dict(
        num_hidden_layers=2, layer_types=("state", "full_attention"), num_key_value_heads=None, kv_lora_rank=32,
        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, linear_num_heads=2, linear_head_dim=16,
        linear_conv_kernel_dim=4,
    ),
    "shortconv": dict(num_hidden_layers=2, layer_types=("conv", "full_attention"), conv_L_cache=3),
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


@pytest.mark.parametrize("kind", ["gqa", "sliding", "chunked", "mla", "mamba1", "mamba2", "kv-shared", "kda", "shortconv"])
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


# ------------------------------------------------------------------ the math, against independent references
# Cached decode is checked against a recomputation by the same model, so a rule wrong in both
# paths (RoPE's base, the softmax scale, a window off by one) passes that check. These tests hold
# the building blocks to hand values and to a plain reference written out here.

from kvplan.measure import model as model_module  # noqa: E402
from kvplan.measure.model import (  # noqa: E402
    PREFILL_QUERY_BLOCK,
    _Init,
    cached_attention,
    prefill_attention,
    rms_norm,
    rope,
)


def test_rope_rotates_pairs_at_theta_10000():
    # head dim 4: pairs (x0, x2) at frequency 10,000^(-0/2) = 1 and (x1, x3) at 10,000^(-1/2) = 0.01;
    # rotate-half: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos) with angle = position x frequency
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # (S = 1, D = 4)
    out = rope(x, torch.tensor([3]))
    expected = [torch.cos(torch.tensor(3.0)), torch.cos(torch.tensor(0.03)), torch.sin(torch.tensor(3.0)), torch.sin(torch.tensor(0.03))]
    assert torch.allclose(out[0], torch.stack(expected), atol=1e-6)
    # position 0: no rotation; an odd head keeps its last element as it is (D = 5: pairs over the first 4)
    assert torch.equal(rope(x, torch.tensor([0])), x)
    odd = torch.tensor([[0.0, 1.0, 0.0, 0.0, 7.0]])
    out = rope(odd, torch.tensor([2]))
    assert out[0, 4].item() == 7.0
    assert torch.allclose(out[0, :4], torch.tensor([0.0, float(torch.cos(torch.tensor(0.02))), 0.0, float(torch.sin(torch.tensor(0.02)))]), atol=1e-6)
    one = torch.tensor([[5.0]])  # a head of 1: nothing to rotate
    assert torch.equal(rope(one, torch.tensor([9])), one)


def test_rms_norm_by_hand():
    # (3, 4): mean of squares (9 + 16) / 2 = 12.5; x / sqrt(12.5 + 1e-6) x weight (2, 1)
    out = rms_norm(torch.tensor([[3.0, 4.0]]), torch.tensor([2.0, 1.0]))
    r = (12.5 + 1e-6) ** -0.5
    assert torch.allclose(out, torch.tensor([[6.0 * r, 4.0 * r]]), rtol=1e-6)


def _reference_attention(q, k, v, allowed, scale):
    """softmax(q k^T x scale, masked) v, one query and key at a time; K/V heads repeated per group."""
    B, H, S, _ = q.shape
    groups = H // k.shape[1]
    out = torch.zeros(B, H, S, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kv = h // groups  # head h reads KV head h // groups (repeat_interleave)
            for i in range(S):
                keys = [j for j in range(k.shape[2]) if allowed(i, j)]
                s = torch.stack([(q[b, h, i].double() * k[b, kv, j].double()).sum() * scale for j in keys])
                w = torch.softmax(s, dim=0)
                out[b, h, i] = sum(w[n] * v[b, kv, j].double() for n, j in enumerate(keys))
    return out


@pytest.mark.parametrize(
    "kind, window, allowed",
    [
        (LayerKind.FULL, None, lambda i, j: j <= i),
        (LayerKind.SLIDING, 3, lambda i, j: j <= i and i - j < 3),  # the last 3 tokens, this one included
        (LayerKind.CHUNKED, 4, lambda i, j: j <= i and j // 4 == i // 4),  # within the query's chunk of 4
    ],
)
def test_prefill_attention_against_a_reference(kind, window, allowed):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 11, 3, generator=gen)  # 4 query heads over 2 KV heads
    k = torch.randn(1, 2, 11, 3, generator=gen)
    v = torch.randn(1, 2, 11, 2, generator=gen)
    out = prefill_attention(q, k, v, kind, window, scale=0.7)
    assert torch.allclose(out.double(), _reference_attention(q, k, v, allowed, 0.7), atol=1e-5)


@pytest.mark.parametrize("kind, window", [(LayerKind.SLIDING, 5), (LayerKind.CHUNKED, 6)])
def test_prefill_attention_query_blocks_past_the_first(kind, window):
    # a prompt longer than one query block: queries 512.. see keys of the previous block
    S = PREFILL_QUERY_BLOCK + 9
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, S, 2, generator=gen) for _ in range(3))
    out = prefill_attention(q, k, v, kind, window, scale=1.0)
    if kind is LayerKind.SLIDING:
        allowed = lambda i, j: j <= i and i - j < window  # noqa: E731
    else:
        allowed = lambda i, j: j <= i and j // window == i // window  # noqa: E731
    rows = [0, 4, 5, 6, 510, 511, 512, 513, 515, S - 1]  # block starts and window / chunk edges
    ref = _reference_attention(q[:, :, rows], k, v, lambda n, j: allowed(rows[n], j), 1.0)
    assert torch.allclose(out[:, :, rows].double(), ref, atol=1e-5)


def test_cached_attention_groups_heads_as_repeat_interleave():
    # 4 query heads over 2 KV heads: heads 0, 1 read KV head 0 and heads 2, 3 read KV head 1;
    # 5 cache slots, of which the mask allows slots 0, 1 and 3
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 1, 3, generator=gen)
    k = torch.randn(2, 2, 5, 3, generator=gen)
    v = torch.randn(2, 2, 5, 4, generator=gen)
    mask = torch.tensor([True, True, False, True, False])
    out = cached_attention(q, k, v, mask, scale=0.5)
    ref = _reference_attention(q, k, v, lambda i, j: bool(mask[j]), 0.5)
    assert out.shape == (2, 4, 1, 4)
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_init_uniform_spread_and_repeated_block(monkeypatch):
    # uniform(mean - a, mean + a) with a = std x sqrt(3) has standard deviation std
    init = _Init(CPU, torch.float32)
    torch.manual_seed(0)
    t = init.uniform(20_000, std=0.5, mean=2.0).detach()
    a = 0.5 * 3**0.5  # 0.866
    assert 2.0 - a <= t.min().item() < 2.0 - 0.85 and 2.0 + 0.85 < t.max().item() <= 2.0 + a
    assert abs(t.std().item() - 0.5) < 0.01
    assert init.allocated == [80_000]  # 20,000 x 4 B
    assert torch.equal(init.ones(3).detach(), torch.ones(3)) and init.allocated == [80_000, 12]
    # above the block size the CPU repeats one random block: 20 elements over a block of 7 = 7 + 7 + 6
    monkeypatch.setattr(model_module, "CPU_RANDOM_BLOCK", 7)
    t = _Init(CPU, torch.float32).uniform(4, 5, std=1.0).detach().flatten()
    assert torch.equal(t[7:14], t[:7]) and torch.equal(t[14:], t[:6])
    assert len(set(t[:7].tolist())) == 7  # the block itself is random
    small = _Init(CPU, torch.float32).uniform(7, std=1.0).detach()  # exactly the block: drawn whole
    assert len(set(small.tolist())) == 7


def test_linear_init_std_is_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    w = _Init(CPU, torch.float32).linear(400, 100).detach()  # fan_in 100: std 0.1
    assert w.shape == (400, 100)
    assert abs(w.std().item() - 0.1) < 0.002
    assert w.abs().max().item() <= 0.1 * 3**0.5


# ------------------------------------------------------------------ state layers, one step against a reference
# A state rule wrong in both the prefill scan and decode (the same `_step`) passes the cached-decode
# check; these hold one step to mamba_ssm's reference semantics, written out per channel in plain
# Python floats: causal_conv1d_update (shift the window left, append the input, weighted sum + bias,
# SiLU), then selective_state_update_ref (dt = softplus(dt + bias), dA = exp(dt x A) with
# A = -exp(A_log), h = dA h + dt B x, y = C . h + D x).

import math  # noqa: E402

from kvplan.measure.model import StateLayer  # noqa: E402


def _silu(v: float) -> float:
    return v / (1.0 + math.exp(-v))


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _state_layer(spec_factory, **fields):
    arch = build_arch(spec_factory(num_hidden_layers=2, **fields))
    layer = StateLayer(arch, arch.layers[0], model_module._Init(CPU, torch.float32))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in layer.parameters():  # every parameter a different, known value
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return layer, gen


def _conv_reference(layer, conv_state, u):
    """(new conv state, SiLU(conv output)) per channel: causal_conv1d_update."""
    w, b = layer.conv_weight.tolist(), layer.conv_bias.tolist()
    new_state, out = [], []
    for c in range(len(u)):
        window = conv_state[c] + [u[c]]
        new_state.append(window[1:])
        out.append(_silu(sum(x * wk for x, wk in zip(window, w[c])) + b[c]))
    return new_state, out


def test_mamba1_step_against_the_reference(spec_factory):
    # hidden 64 x expand 1 = d_inner 64, d_state 3, d_conv 3, dt_rank ceil(64 / 16) = 4
    layer, gen = _state_layer(spec_factory, layer_types=["mamba", "full_attention"], mamba_d_state=3, mamba_d_conv=3, mamba_expand=1)
    s = layer.s
    conv = torch.randn(1, s.d_inner, s.d_conv - 1, generator=gen)
    ssm = torch.randn(1, s.d_inner, s.d_state, generator=gen)
    u = torch.randn(1, s.d_inner, generator=gen)
    new, y = layer._step(layer._fp32_params(), {"conv_state": conv, "ssm_state": ssm}, u, None)

    conv_ref, xc = _conv_reference(layer, conv[0].tolist(), u[0].tolist())
    x_proj, dt_proj, dt_bias = layer.x_proj.tolist(), layer.dt_proj.tolist(), layer.dt_proj_bias.tolist()
    A_log, D = layer.A_log.tolist(), layer.D.tolist()
    dbc = [sum(row[j] * xc[j] for j in range(s.d_inner)) for row in x_proj]  # (dt_rank + 2 N)
    dt_low, Bv, Cv = dbc[: s.dt_rank], dbc[s.dt_rank : s.dt_rank + s.d_state], dbc[s.dt_rank + s.d_state :]
    h_ref, y_ref = [], []
    for c in range(s.d_inner):
        dt = _softplus(sum(dt_proj[c][r] * dt_low[r] for r in range(s.dt_rank)) + dt_bias[c])
        h = [math.exp(dt * -math.exp(A_log[c][n])) * ssm[0, c, n].item() + dt * xc[c] * Bv[n] for n in range(s.d_state)]
        h_ref.append(h)
        y_ref.append(sum(h[n] * Cv[n] for n in range(s.d_state)) + D[c] * xc[c])
    assert torch.allclose(new["conv_state"][0], torch.tensor(conv_ref), atol=1e-6)
    assert torch.allclose(new["ssm_state"][0], torch.tensor(h_ref), atol=1e-5)
    assert torch.allclose(y[0], torch.tensor(y_ref), atol=1e-5)


def test_mamba2_step_against_the_reference(spec_factory):
    # d_inner 64 in 4 heads of 16, 2 groups (heads 0, 1 read group 0; heads 2, 3 group 1), d_state 2, d_conv 2:
    # the conv runs over x, B and C: 64 + 2 x 2 x 2 = 72 channels
    layer, gen = _state_layer(
        spec_factory, layer_types=["mamba", "full_attention"], mamba_d_state=2, mamba_d_conv=2, mamba_expand=1,
        mamba_n_heads=4, mamba_n_groups=2,
    )
    s = layer.s
    assert (s.conv_dim, s.head_dim) == (72, 16)
    conv = torch.randn(1, s.conv_dim, s.d_conv - 1, generator=gen)
    ssm = torch.randn(1, s.n_heads, s.head_dim, s.d_state, generator=gen)
    u = torch.randn(1, s.conv_dim, generator=gen)
    dt_in = torch.randn(1, s.n_heads, generator=gen)
    new, y = layer._step(layer._fp32_params(), {"conv_state": conv, "ssm_state": ssm}, u, dt_in)

    conv_ref, xc = _conv_reference(layer, conv[0].tolist(), u[0].tolist())
    x, Bs, Cs = xc[:64], xc[64:68], xc[68:72]  # B and C: 2 groups x d_state 2 each
    A_log, D, dt_bias = layer.A_log.tolist(), layer.D.tolist(), layer.dt_bias.tolist()
    y_ref, h_ref = [], []
    for head in range(4):
        g = head // 2
        B, C = Bs[2 * g : 2 * g + 2], Cs[2 * g : 2 * g + 2]
        dt = _softplus(dt_in[0, head].item() + dt_bias[head])
        dA = math.exp(dt * -math.exp(A_log[head]))
        rows = []
        for p in range(16):
            xp = x[16 * head + p]
            h = [dA * ssm[0, head, p, n].item() + dt * xp * B[n] for n in range(2)]
            rows.append(h)
            y_ref.append(sum(h[n] * C[n] for n in range(2)) + D[head] * xp)
        h_ref.append(rows)
    assert torch.allclose(new["conv_state"][0], torch.tensor(conv_ref), atol=1e-6)
    assert torch.allclose(new["ssm_state"][0], torch.tensor(h_ref), atol=1e-5)
    assert torch.allclose(y[0], torch.tensor(y_ref), atol=1e-5)


def test_recurrence_step_by_hand(spec_factory):
    # new = a x state + (1 - a) x u with a = sigmoid(decay): decay 0 -> a = 1/2, decay ln 3 -> a = 3/4
    arch = build_arch(spec_factory(num_hidden_layers=2, layer_types=["state", "full_attention"], state_elements_per_layer=2))
    layer = StateLayer(arch, arch.layers[0], model_module._Init(CPU, torch.float32))
    with torch.no_grad():
        layer.decay.copy_(torch.tensor([0.0, math.log(3.0)]))
    new, y = layer._step(layer._fp32_params(), {"state": torch.tensor([[1.0, 2.0]])}, torch.tensor([[3.0, 5.0]]), None)
    # 0.5 x 1 + 0.5 x 3 = 2; 0.75 x 2 + 0.25 x 5 = 2.75
    assert torch.allclose(new["state"], torch.tensor([[2.0, 2.75]])) and torch.equal(y, new["state"])
