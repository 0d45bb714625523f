"""HF transformers profile: golden bytes worked by hand from transformers' cache classes.

Sources: huggingface/transformers src/transformers/cache_utils.py (DynamicLayer,
DynamicSlidingWindowLayer.update: "Only cache the last `self.sliding_window - 1`
tokens"; StaticLayer / StaticSlidingWindowLayer; QuantizedLayer.update),
models/deepseek_v3/modeling_deepseek_v3.py DeepseekV3Attention.forward (4.x caches
the decompressed per-head K and V), models/jamba/modular_jamba.py
HybridMambaAttentionDynamicCache. Rules marked "measured" were checked on tiny random
models with transformers 4.57.1 and 5.24.0 on CPU. bf16 = 2 B per value.
"""

from __future__ import annotations

import pytest

from kvplan.sources.catalog import resolve_spec
from kvplan.engines import GIB, MIB, MemoryInputs
from kvplan.engines import hf
from kvplan.model.formats import parse_format_pair


def run(name, context, batch=1, kv="auto", **opts):
    spec = resolve_spec(name)
    return hf.cache(spec, context, batch, hf.HFOptions(**opts), kv_cache_dtype=kv,
                    ideal_format=parse_format_pair("auto", spec.dtype))


LLAMA_TOKEN = 32 * 8 * (128 + 128) * 2  # 131,072 B per token, all layers
GEMMA_LAYER_TOKEN = 16 * (128 + 128) * 2  # 8,192 B per token per layer


def test_plain_gqa_dynamic_equals_ideal():
    c = run("llama-3.1-8b", 8192)
    assert c.kv_bytes_total == 8192 * LLAMA_TOKEN == GIB
    assert c.differences == ()


def test_generate_caches_one_token_fewer():
    """generate() never feeds the last sampled token back, so 8192 output tokens leave 8191 cached."""
    c = run("llama-3.1-8b", 8192, batch=2, generate=True)
    assert c.kv_bytes_total == 2 * 8191 * LLAMA_TOKEN
    assert c.overhead_bytes == {"generate(): the last sampled token is not cached (one token fewer)": -2 * LLAMA_TOKEN}


@pytest.mark.parametrize(
    "opts, sliding_tokens, full_tokens",
    [
        ({}, 1023, 8000),  # DynamicSlidingWindowLayer: W - 1
        ({"generate": True}, 1023, 7999),
        ({"cache": "static"}, 1024, 8000),  # StaticSlidingWindowLayer: min(W, max_cache_len) = W
        ({"cache": "static", "max_cache_len": 16384}, 1024, 16384),  # full layers preallocate max_cache_len
        ({"cache": "static", "max_cache_len": 600}, None, None),  # too short for 8000 tokens: an input error
    ],
)
def test_gemma_3_window_rules(opts, sliding_tokens, full_tokens):
    if sliding_tokens is None:
        with pytest.raises(Exception, match="--max-cache-len 600 is smaller than the 8000 tokens"):
            run("gemma-3-27b", 8000, **opts)
        return
    c = run("gemma-3-27b", 8000, **opts)
    rows = {k.kind: k for k in c.by_kind}
    assert rows["sliding_attention"].tokens_per_sequence == sliding_tokens
    assert rows["full_attention"].tokens_per_sequence == full_tokens
    assert c.kv_bytes_total == (52 * sliding_tokens + 10 * full_tokens) * GEMMA_LAYER_TOKEN


def test_dynamic_sliding_difference_is_one_token_per_sliding_layer():
    c = run("gemma-3-27b", 8000)
    assert c.ideal_bytes_total - c.kv_bytes_total == 52 * GEMMA_LAYER_TOKEN
    assert list(c.overhead_bytes) == ["DynamicSlidingWindowLayer keeps the last W - 1 = 1,023 tokens"]


def test_short_sequence_keeps_every_token_in_a_sliding_layer():
    c = run("gemma-3-27b", 500)
    assert {k.kind: k.tokens_per_sequence for k in c.by_kind} == {"full_attention": 500, "sliding_attention": 500}


# --- MLA: 4.x decompressed per-head K (qk_nope + qk_rope) and V (v_head_dim); 5.x the latent


@pytest.mark.parametrize(
    "model, layers, heads, ratio",
    [
        # DeepSeek-V3: 128 x (128 + 64) + 128 x 128 = 40,960 values per token per layer vs 576: ~71x
        ("deepseek-v3", 61, 128, 40960 / 576),
        # DeepSeek-V2-Lite: 16 x 192 + 16 x 128 = 5,120 vs 576: ~8.9x
        ("deepseek-v2-lite", 27, 16, 5120 / 576),
    ],
)
def test_mla_4x_decompressed_vs_5x_latent(model, layers, heads, ratio):
    four = run(model, 1000, transformers_version="4")
    five = run(model, 1000, transformers_version="5")
    values = heads * (128 + 64) + heads * 128
    assert four.kv_bytes_total == layers * 1000 * values * 2
    assert five.kv_bytes_total == layers * 1000 * 576 * 2
    assert four.kv_bytes_total / five.kv_bytes_total == pytest.approx(ratio)
    assert five.differences == ()


def test_deepseek_v3_4x_per_token_per_layer():
    c = run("deepseek-v3", 100, transformers_version="4")
    mla = c.by_kind[0]
    assert mla.bytes_per_slot == 128 * (192 + 128) * 2 == 81_920


def test_4x_static_refuses_mla_5x_sizes_v_by_its_own_width():
    """4.x StaticLayer sizes V by the key's head dim (192), so DeepSeek's 128-wide V fails to copy in
    (measured with transformers 4.57.1); 5.x allocates K 512 and V 64 (measured with 5.24.0)."""
    four = run("deepseek-v3", 100, cache="static", transformers_version="4")
    assert four.refusals == (
        "RuntimeError: index_copy_(): Source/destination tensor must have same slice shapes. Destination slice "
        "shape: 1 128 192 at dimension 2 and source slice shape: 1 128 128 at dimension 0.",
    )
    five = run("deepseek-v3", 100, cache="static", transformers_version="5", max_cache_len=128)
    assert five.kv_bytes_total == 61 * 128 * (512 + 64) * 2


# --- Jamba: HybridMambaAttentionDynamicCache


def test_jamba_state_conv_in_model_dtype_ssm_in_float32():
    """conv [d_inner, d_conv] in bf16 + SSM [d_inner, d_state] in float32 (measured in 4.57.1 and 5.24.0)."""
    c = run("jamba-v0.1", 4096)
    d_inner = 2 * 4096
    state = d_inner * 4 * 2 + d_inner * 16 * 4  # 65,536 + 524,288 B per sequence per layer
    attention = 4 * 4096 * 8 * 256 * 2  # 4 attention layers, 8 KV heads x (128 + 128), bf16
    assert c.kv_bytes_total == attention + 28 * state == 83_623_936
    # the ideal keeps d_conv - 1 columns and the SSM state in bf16: (3 + 16) x d_inner x 2 B per layer
    assert sum(c.overhead_bytes.values()) == 28 * (state - 19 * d_inner * 2)
    # the state row: no token slots, one state per sequence per layer
    row = next(r for r in c.by_kind if r.kind == "state")
    assert (row.layers, row.tokens_per_sequence, row.slots_per_layer, row.bytes_per_slot, row.bytes) == (
        28, 0, 1, state, 28 * state)


# --- QuantizedCache (QuantizedLayer.update): residual = decode steps mod residual_length


@pytest.mark.parametrize(
    "prompt, residual_length, version, residual",
    [
        (4096, 128, "5", 0),  # all prefilled: quantised whole, empty residual
        (4096 - 300, 128, "5", 44),  # 300 one-token steps: 300 mod 128
        (4096 - 256, 128, "5", 0),  # the 256th step re-quantises everything
        # 5.x: `residual + 1 >= 1` flushes at every step (measured, 5.25 + optimum-quanto 0.2.7)
        (4096 - 5, 1, "5", 0),
        # 4.x: the step after a flush finds the emptied 1-d residual (`self.keys.dim() == 4` false) and appends,
        # so residual_length 1 still cycles through one residual token: 5 mod 2
        (4096 - 5, 1, "4", 1),
    ],
)
def test_quantized_residual_count(prompt, residual_length, version, residual):
    c = run("llama-3.1-8b", 4096, cache="quantized", prompt_tokens=prompt, residual_length=residual_length,
            transformers_version=version)
    assert c.settings["residual_tokens"] == residual
    assert c.settings["quantised_tokens"] == 4096 - residual


def test_quantized_bytes_quanto_4bit():
    """quanto int4: nbits / 8 per value + a bf16 scale and shift per 64 values, plus the bf16 residual."""
    c = run("llama-3.1-8b", 4096, cache="quantized", prompt_tokens=4096 - 300)
    values = 8 * 4052 * 128  # one layer's K: 8 heads x 4052 quantised tokens x 128
    per_side = values // 2 + values // 64 * 4 + 8 * 44 * 128 * 2
    assert c.kv_bytes_total == 32 * 2 * per_side == 155_140_096


def test_quantized_matches_the_measured_quanto_cache():
    """Measured with transformers 5.24.0 + optimum-quanto 0.2.7: a 2-layer model (2 KV heads x 64, bf16),
    100 prompt tokens, generate(max_new_tokens=301): 400 cached, 356 quantised, 44 residual; one layer's K
    store = 22,784 B packed data + 1,424 B scales + 1,424 B shifts, residual 11,264 B."""
    from kvplan.model.formats import parse_format_pair

    from conftest import make_spec

    spec = make_spec(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_hidden_layers=2)
    c = hf.cache(spec, 401, 1, hf.HFOptions(cache="quantized", generate=True, prompt_tokens=100),
                 ideal_format=parse_format_pair("auto", spec.dtype))
    assert (c.settings["quantised_tokens"], c.settings["residual_tokens"]) == (356, 44)
    assert c.kv_bytes_total == 2 * 2 * (22_784 + 1_424 + 1_424 + 11_264)


def test_quantized_cache_4x_keeps_every_token_in_sliding_layers():
    c = run("gemma-3-27b", 8000, cache="quantized", transformers_version="4")
    rows = {k.kind: k for k in c.by_kind}
    assert rows["sliding_attention"].tokens_per_sequence == 8000
    assert rows["sliding_attention"].bytes_per_slot is None  # quantised + residual: no single slot size


def test_quantized_cache_5x_refuses_sliding_models():
    c = run("gemma-3-27b", 8000, cache="quantized", transformers_version="5")
    assert c.refusals == ("`QuantizedCache` is only supported for models with only full attention layers. We found "
                          "the following invalid layer types: {'sliding_attention'}",)


@pytest.mark.parametrize(
    "opts, refusal",
    [
        ({"cache": "quantized", "nbits": 3}, "`nbits` for `quanto` backend has to be one of [`2`, `4`] but got 3"),
        ({"cache": "quantized", "quant_backend": "hqq", "nbits": 5},
         "`nbits` for `HQQ` backend has to be one of [`1`, `2`, `3`, `4`, `8`] but got 5"),
        ({"cache": "quantized", "quant_backend": "kivi"}, "Unknown quantization backend `kivi`"),
    ],
)
def test_quantized_refusals(opts, refusal):
    c = run("llama-3.1-8b", 1024, **opts)
    assert c.refusals == (refusal,) and c.kv_bytes_total is None


@pytest.mark.parametrize("backend, nbits", [("quanto", 2), ("quanto", 4), ("hqq", 1), ("hqq", 3), ("hqq", 8)])
def test_quantized_nbits_each_backend_takes(backend, nbits):
    # QuantizedCache.__init__ refuses only nbits outside the backend's own list (quanto 2, 4; HQQ 1, 2, 3, 4, 8)
    c = run("llama-3.1-8b", 1024, cache="quantized", quant_backend=backend, nbits=nbits)
    assert c.refusals == () and c.kv_bytes_total is not None


def test_no_fp8_kv_dtype_in_transformers():
    c = run("llama-3.1-8b", 1024, kv="fp8")
    assert c.refused and "no fp8 KV cache" in c.refusals[0]


def test_fp32_model_doubles_the_cache():
    c = run("llama-3.1-8b", 1024, kv="fp32")
    assert c.kv_bytes_total == 2 * 1024 * LLAMA_TOKEN


def test_capacity_divides_the_room_left_after_weights():
    spec = resolve_spec("llama-3.1-8b")
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("24g", 24 * GIB, weights, 512 * MIB, GIB, "given")
    cap = hf.capacity(spec, 8192, 4, hf.HFOptions(), mem, ideal_format=parse_format_pair("auto", "bf16"))
    budget = 24 * GIB - weights - 512 * MIB - GIB  # 8,098,668,544 B
    assert cap.kv_budget_bytes == budget
    assert cap.max_concurrent_sequences == budget // GIB == 7
    assert cap.fits


def test_the_prefill_chunk_note_is_for_windowed_layers_only():
    note = ("During a prefill chunk a sliding layer briefly holds W - 1 + chunk tokens (the concatenation "
            "returned for attention) before trimming.")
    assert note in run("gemma-3-27b", 4096).notes  # sliding layers, no chunked ones
    assert note not in run("llama-3.1-8b", 4096).notes


def test_quantized_bytes_by_hand():
    # HQQ cuts the tensor into 64-row columns (Quantizer.quantize: W.reshape([group_size, -1])) and packs each
    # column's 3-bit values ten to an int32 row, the 64 rows padded to 70 (BitPack.pack_3bit_32): 7 words per
    # column. 640 values -> 10 columns x 7 x 4 B = 280 B (not 64 words = 256 B, ten values a word across the
    # tensor), and a scale and a zero point per column in 2 bytes each: 40 B. Measured (hqq 0.2.8.post1):
    # 896 values, group 64 -> int32 (7, 14) = 392 B.
    assert hf.quantized_bytes(640, 3, 64, "hqq", 2) == 280 + 40
    assert hf.quantized_bytes(896, 3, 64, "hqq", 2) == 392 + 14 * 4
    assert hf.quantized_bytes(896, 4, 64, "hqq", 2) == 448 + 14 * 4  # uint8 (32, 14): two values a byte
    # fp8 (5.x): one byte per value and one float32 scale per tensor (Fp8QuantizedLayer._quantize)
    assert hf.quantized_bytes(896, 8, 64, "fp8", 2) == 896 + 4
    # otherwise nbits per value, rounded up to whole bytes: 101 x 2 bits = 202 bits -> 26 B
    assert hf.quantized_bytes(101, 2, 64, "quanto", 2) == 26 + 8
    assert hf.quantized_bytes(100, 3, 64, "quanto", 2) == 38 + 8  # 300 bits -> 38 B: not HQQ's words
    assert hf.quantized_bytes(0, 4, 64, "quanto", 2) == 0


def _mamba2(make_spec, **fields):
    # hidden 64, mamba_expand 2: d_inner 128 = 8 heads x 16; d_state 16, d_conv 4; 2 Mamba-2 + 2 attention layers
    return make_spec(
        torch_dtype="bfloat16", layer_types=["mamba", "full_attention", "mamba", "full_attention"],
        mamba_expand=2, mamba_d_state=16, mamba_d_conv=4, mamba_n_heads=8, **fields,
    )


def test_mamba_2_conv_state_holds_x_b_and_c(spec_factory):
    """transformers' Mamba-2 hybrid caches (models/bamba/modeling_bamba.py, models/nemotron_h:
    HybridMambaAttentionDynamicCache) keep a conv state of (mamba_expand x hidden + 2 x n_groups x
    d_state) channels x d_conv columns: x, B and C go through the conv. So one more group adds
    2 x 16 channels x 4 columns x 2 B = 256 B per sequence per Mamba layer, whatever the SSM state's dtype."""
    ideal = parse_format_pair("auto", "bf16")

    def state_total(spec):
        c = hf.cache(spec, 8, 1, hf.HFOptions(), ideal_format=ideal)
        return next(r for r in c.by_kind if r.kind == "state").bytes

    one, two = state_total(_mamba2(spec_factory, mamba_n_groups=1)), state_total(_mamba2(spec_factory, mamba_n_groups=2))
    assert two - one == 2 * 256  # 2 Mamba layers
    # the SSM state's head_dim defaults to d_inner / n_heads = 16, as given explicitly
    assert state_total(_mamba2(spec_factory, mamba_n_groups=2, mamba_head_dim=16)) == two


# --- transformers 5.25, measured on tiny models (tests/test_hf_real_kinds.py builds the same ones)


def _tiny(**fields):
    """2 layers, 2 KV heads x 16 (hidden 64, 4 heads), bf16: transformers' LlamaConfig in test_hf_real_kinds."""
    from conftest import make_spec

    return make_spec(num_hidden_layers=2, torch_dtype="bfloat16", **fields)


def _tiny_cache(spec, context, batch=2, **opts):
    return hf.cache(spec, context, batch, hf.HFOptions(**opts), ideal_format=parse_format_pair("auto", spec.dtype))


@pytest.mark.parametrize(
    "opts, slots",
    [
        # generate(cache_implementation="static"): max_cache_len = generation_config.max_length - 1 (generation/
        # utils.py generate, step 7), and max_length = prompt + new tokens = --context: 13 - 1 = 12
        ({"cache": "static", "generate": True}, 12),
        # generation_config.max_cache_len raises it (_prepare_cache_for_generation: max of the two)
        ({"cache": "static", "generate": True, "max_cache_len": 20}, 20),
        # a StaticCache you build yourself: its max_cache_len, default --context
        ({"cache": "static"}, 13),
        ({"cache": "static", "max_cache_len": 16}, 16),
    ],
)
def test_static_cache_slots(opts, slots):
    c = _tiny_cache(_tiny(), 13, **opts)
    assert c.settings["max_cache_len"] == slots
    assert c.kv_bytes_total == 2 * 2 * 2 * 2 * slots * 16 * 2  # layers x (K, V) x batch x heads x slots x 16 x 2 B


def test_quantized_quanto_and_hqq_as_measured():
    """Measured with transformers 5.25 + optimum-quanto 0.2.7 / hqq 0.2.8.post1 (tests/hf_real.py
    quantized_generate_cache): batch 2, prompt 10, generate(max_new_tokens=7), residual_length 4: 16 tokens cached,
    the prefill and 4 steps quantised (14 tokens: 2 x 2 heads x 14 x 16 = 896 values per K or V per layer), 2 in the
    bf16 residual (2 x 2 x 2 x 16 x 2 B = 256 B)."""
    spec = _tiny()
    common = dict(cache="quantized", generate=True, prompt_tokens=10, residual_length=4)
    residual = 256
    # quanto int4: uint8 (7, 64) = 448 B, a bf16 scale and shift per 64 values: (14, 1) x 2 B each
    quanto = _tiny_cache(spec, 17, **common)
    assert (quanto.settings["quantised_tokens"], quanto.settings["residual_tokens"]) == (14, 2)
    assert quanto.kv_bytes_total == 2 * 2 * (448 + 28 + 28 + residual) == 3040
    # hqq 3-bit: int32 (7, 14): 14 columns of 64 values, 7 words each; scale and zero (1, 14) bf16
    hqq = _tiny_cache(spec, 17, quant_backend="hqq", nbits=3, **common)
    assert hqq.kv_bytes_total == 2 * 2 * (392 + 28 + 28 + residual) == 2816


@pytest.mark.parametrize(
    "backend, prompt, context, group, refusal",
    [
        # the flush after 3 steps quantises 13 tokens: per batch row 2 heads x 13 x 16 = 416 values, not 64k
        ("quanto", 10, 14, 64, "ValueError: Group size (64) must be a divisor of (416)"),
        # the prefill: 2 x 2 x 9 x 16 = 576 values in all, not a multiple of 128 (hqq's assert)
        ("hqq", 9, 13, 128, "AssertionError: group_size should be divisble by the total tensor dimensions. shape: "
                            "torch.Size([2, 2, 9, 16]), group_size: 128"),
        ("quanto", 10, 14, 32, None),  # 32 divides 2 x 16 x every token count
    ],
)
def test_a_group_size_that_does_not_divide_is_refused_as_the_backend_refuses_it(backend, prompt, context, group,
                                                                                refusal):
    c = _tiny_cache(_tiny(), context, cache="quantized", generate=True, prompt_tokens=prompt, residual_length=3,
                    quant_backend=backend, q_group_size=group)
    assert c.refusals == ((refusal,) if refusal else ())


def test_fp8_quantized_cache():
    """Fp8QuantizedLayer (5.x): every token in float8_e4m3fn, no residual, a float32 scale per K and V per layer."""
    c = _tiny_cache(_tiny(), 17, cache="quantized", generate=True, prompt_tokens=10, quant_backend="fp8")
    assert c.kv_bytes_total == 2 * 2 * (2 * 2 * 16 * 16 * 1 + 4) == 4112
    assert c.settings == {"cache": "quantized", "transformers_version": "5", "generate": True, "tokens_cached": 16,
                          "dtype": "torch.bfloat16", "backend": "fp8", "prompt_tokens": 10, "quantised_tokens": 16}
    assert _tiny_cache(_tiny(), 17, cache="quantized", quant_backend="fp8", nbits=2).refusals == (
        "The `fp8` backend quantizes per-tensor and does not support ['nbits']. Use the `quanto` or `hqq` backend "
        "to quantize group-wise.",)
    four = _tiny_cache(_tiny(), 17, cache="quantized", quant_backend="fp8", transformers_version="4")
    assert four.refusals == ("Unknown quantization backend `fp8`",)


def test_quantized_cache_5x_refuses_mamba_layers():
    # JambaConfig.layer_types names its Mamba layers "linear_attention" (measured, 5.25)
    c = run("jamba-v0.1", 1024, cache="quantized")
    assert c.refusals == ("`QuantizedCache` is only supported for models with only full attention layers. We found "
                          "the following invalid layer types: {'linear_attention'}",)
