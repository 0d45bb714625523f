"""config.json -> spec fields: golden values from the published configs, HF semantics, parameter counts.

Every expected number below is read off the model card / config by hand, never
computed by the code under test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvplan.sources.hf_config import ConfigError, convert_config
from kvplan.model.spec_rules import layer_fields
from kvplan.model.spec import ModelSpec

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def spec_of(config: dict) -> ModelSpec:
    conv = convert_config(config)
    fields = {"torch_dtype": "bfloat16", **conv.fields}
    return ModelSpec(name="t", source="test", num_parameters=conv.parameters, **fields)


def kinds(spec: ModelSpec) -> dict[str, int]:
    return dict(Counter(k.value for k in spec.layer_kinds))


# (fixture, layers, heads, kv heads, K dim per head, {kind: layers}, window, chunk)
# Read from each config.json (and transformers' defaults where it is silent).
GOLDEN = [
    ("llama-3.1-8b-instruct", 32, 32, 8, 128, {"full_attention": 32}, None, None),
    ("llama-3.2-1b-instruct", 16, 32, 8, 64, {"full_attention": 16}, None, None),
    ("mistral-7b-v0.1", 32, 32, 8, 128, {"sliding_attention": 32}, 4096, None),
    ("mistral-7b-v0.3", 32, 32, 8, 128, {"full_attention": 32}, None, None),  # sliding_window: null
    ("mixtral-8x7b-v0.1", 32, 32, 8, 128, {"full_attention": 32}, None, None),
    ("qwen2-7b-instruct", 28, 28, 4, 128, {"full_attention": 28}, None, None),  # use_sliding_window false
    ("qwen2-57b-a14b", 28, 28, 4, 128, {"full_attention": 28}, None, None),
    ("qwen3-8b", 36, 32, 8, 128, {"full_attention": 36}, None, None),
    ("qwen3-30b-a3b", 48, 32, 4, 128, {"full_attention": 48}, None, None),
    ("gemma-2b", 18, 8, 1, 256, {"full_attention": 18}, None, None),
    ("gemma-2-9b", 42, 16, 8, 256, {"sliding_attention": 21, "full_attention": 21}, 4096, None),
    ("gemma-3-1b-it", 26, 4, 1, 256, {"sliding_attention": 22, "full_attention": 4}, 512, None),
    # text_config names only hidden/intermediate/layers: heads 8, kv 4, head_dim 256 are Gemma3TextConfig's
    ("gemma-3-4b-it", 34, 8, 4, 256, {"sliding_attention": 29, "full_attention": 5}, 1024, None),
    ("gemma-3-27b-it", 62, 32, 16, 128, {"sliding_attention": 52, "full_attention": 10}, 1024, None),
    ("deepseek-v2-lite", 27, 16, 16, 512 + 64, {"mla": 27}, None, None),
    ("deepseek-r1", 61, 128, 128, 512 + 64, {"mla": 61}, None, None),
    ("gpt2", 12, 12, 12, 64, {"full_attention": 12}, None, None),
    ("redpajama-incite-base-3b-v1", 32, 32, 32, 80, {"full_attention": 32}, None, None),
    ("falcon-7b-instruct", 32, 71, 1, 64, {"full_attention": 32}, None, None),  # multi_query: num_kv_heads 71 ignored
    ("phi-3-mini-4k-instruct", 32, 32, 32, 96, {"sliding_attention": 32}, 2047, None),
    ("jamba-1.5-mini", 32, 32, 8, 128, {"state": 28, "full_attention": 4}, None, None),
    ("gpt-oss-20b", 24, 64, 8, 64, {"sliding_attention": 12, "full_attention": 12}, 128, None),
    ("llama-4-maverick-17b-128e", 48, 40, 8, 128, {"chunked_attention": 36, "full_attention": 12}, None, 8192),
    ("llava-1.5-7b-hf", 32, 32, 32, 128, {"full_attention": 32}, None, None),  # LlamaConfig defaults
]


def test_every_fixture_has_a_golden_row():
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(row[0] for row in GOLDEN)


@pytest.mark.parametrize("name, layers, heads, kv, k_dim, layer_kinds, window, chunk", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_fixture_kv_fields(name, layers, heads, kv, k_dim, layer_kinds, window, chunk):
    spec = spec_of(load(name))
    assert spec.num_hidden_layers == layers
    assert spec.num_attention_heads == heads
    assert spec.num_key_value_heads == kv
    assert spec.k_head_dim == k_dim
    assert kinds(spec) == layer_kinds
    assert spec.sliding_window == window
    assert spec.attention_chunk_size == chunk


# Published totals, entered by hand: the Hub's safetensors parameter count or the
# model card (all weights of the text model, embeddings and an untied lm_head included).
PUBLISHED_TOTALS = [
    ("llama-3.1-8b-instruct", 8_030_261_248),  # Llama-3.1-8B
    ("mistral-7b-v0.1", 7_241_732_096),
    ("qwen2-7b-instruct", 7_615_616_512),  # Qwen2.5-7B has the same shapes and the same total
    ("mixtral-8x7b-v0.1", 46_702_792_704),
    ("gemma-2b", 2_506_172_416),
    ("gemma-2-9b", 9_241_705_984),
    ("gemma-3-1b-it", 999_885_952),
    ("qwen3-8b", 8_190_735_360),
    ("phi-3-mini-4k-instruct", 3_821_079_552),
    ("gpt2", 124_439_808),
    ("falcon-7b-instruct", 6_921_720_704),
    ("deepseek-v2-lite", 15_706_484_224),  # q_lora_rank null: one q_proj, no low-rank query
]


@pytest.mark.parametrize("name, total", PUBLISHED_TOTALS, ids=[p[0] for p in PUBLISHED_TOTALS])
def test_analytic_count_matches_published_total(name, total):
    assert convert_config(load(name)).parameters == total


def test_llama_count_by_hand():
    # Llama-3.1-8B: embed + lm_head 2 x 128256 x 4096; per layer q,o 4096^2, k,v 4096 x 1024,
    # MLP 3 x 4096 x 14336, two norms of 4096; a final norm.
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    expected = 2 * 128256 * 4096 + 32 * per_layer + 4096
    assert expected == 8_030_261_248
    assert convert_config(load("llama-3.1-8b-instruct")).parameters == expected


def test_moe_active_parameters():
    # Mixtral-8x7B: 6 of 8 experts idle per token in each of 32 layers, 3 x 4096 x 14336 each.
    conv = convert_config(load("mixtral-8x7b-v0.1"))
    assert conv.inactive_parameters == 32 * 6 * 3 * 4096 * 14336
    assert conv.parameters - conv.inactive_parameters == 12_879_925_248


def test_quantization_sets_weights_dtype():
    assert convert_config(load("deepseek-r1")).weights_dtype == "fp8"
    assert convert_config(load("gpt-oss-20b")).weights_dtype == "mxfp4"
    assert convert_config(load("llama-3.1-8b-instruct")).weights_dtype is None


def test_mxfp4_quantizes_only_the_experts():
    """gpt-oss-20b: quant_method mxfp4, modules_to_not_convert = attention, router, embeddings, lm_head;
    config.json names no torch_dtype, and MXFP4 loaders run the rest in bfloat16."""
    conv = convert_config(load("gpt-oss-20b"))
    assert (conv.weights_dtype, conv.weights_quantized) == ("mxfp4", "experts")
    assert conv.fields["weights_quantized"] == "experts" and conv.fields["torch_dtype"] == "bfloat16"
    assert (
        "MXFP4 holds only the routed experts' weights; quantization_config.modules_to_not_convert keeps "
        "model.layers.*.self_attn, model.layers.*.mlp.router, model.embed_tokens, lm_head in torch_dtype "
        "(weights_quantized: experts)"
    ) in conv.notes
    assert "config.json names no torch_dtype; bfloat16, as transformers' MXFP4 loader and vLLM run it" in conv.notes
    spec = ModelSpec(name="t", source="test", num_parameters=conv.parameters,
                     num_active_parameters=conv.parameters - conv.inactive_parameters, **conv.fields)
    # 32 experts x 24 layers x (5,760 + 2,880 rows of 90 blocks x 17 B), the other 646,192,704 parameters
    # (attention, sinks, router, norms, expert biases) and both 201,088 x 2880 tables in bf16
    from kvplan.plan.planner import stage_weight_bytes

    assert conv.parameters == 20_914_757_184
    assert stage_weight_bytes(spec, [24], "mxfp4", 1) == [32 * 24 * 8640 * 90 * 17 + 2 * 646_192_704 + 4 * 201_088 * 2880]


def test_fp8_quantizes_every_linear_layer():
    """DeepSeek-R1 (V3 architecture): block-wise fp8 over every linear layer, no modules_to_not_convert."""
    conv = convert_config(load("deepseek-r1"))
    assert (conv.weights_dtype, conv.weights_quantized) == ("fp8", "all_linear")
    assert "weights_quantized" not in conv.fields


def test_mxfp4_without_experts_is_not_sized_as_quantised():
    cfg = dict(load("mistral-7b-v0.1"), quantization_config={"quant_method": "mxfp4"})
    conv = convert_config(cfg)
    assert conv.weights_dtype is None and "weights_dtype" not in conv.fields
    assert "mxfp4 quantises only MoE experts and config.json names none; weights_dtype left unset" in conv.notes


def test_modules_to_not_convert_is_reported_for_other_methods():
    cfg = dict(load("qwen3-30b-a3b"), quantization_config={"quant_method": "awq", "bits": 4,
                                                           "modules_to_not_convert": ["self_attn", "mlp.gate"]})
    conv = convert_config(cfg)
    assert (conv.weights_dtype, conv.weights_quantized) == ("int4", "all_linear")
    assert ("quantization_config.modules_to_not_convert keeps self_attn, mlp.gate unquantised; kvplan counts every "
            "body weight as int4 (weights_quantized: all_linear)") in conv.notes


def test_deepseek_mtp_layers_reported():
    conv = convert_config(load("deepseek-r1"))
    assert conv.mtp_layers == 1
    assert conv.parameters == 671_026_419_200  # DeepSeek's "671B main model", MTP layer excluded


def test_defaults_are_named_in_notes():
    conv = convert_config(load("gemma-3-4b-it"))
    assert any("num_attention_heads" in n and "Gemma3TextConfig" in n for n in conv.notes)
    assert any("vision tower is not sized" in n for n in conv.notes)


# ----------------------------------------------------------- HF semantics, small configs

BASE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=6,
            intermediate_size=128, vocab_size=100, torch_dtype="bfloat16")


def kinds_list(config: dict) -> list[str]:
    return [k.value for k in spec_of(config).layer_kinds]


def test_qwen2_sliding_only_when_enabled():
    off = dict(BASE, model_type="qwen2", sliding_window=32, use_sliding_window=False, max_window_layers=2)
    assert kinds_list(off) == ["full_attention"] * 6
    assert spec_of(off).sliding_window is None  # left out: no layer slides
    on = dict(off, use_sliding_window=True)
    assert kinds_list(on) == ["full_attention"] * 2 + ["sliding_attention"] * 4


def test_mistral_window_null_vs_set():
    assert kinds_list(dict(BASE, model_type="mistral", sliding_window=None)) == ["full_attention"] * 6
    assert kinds_list(dict(BASE, model_type="mistral", sliding_window=16)) == ["sliding_attention"] * 6
    # absent: MistralConfig's default window of 4096 applies
    assert spec_of(dict(BASE, model_type="mistral")).sliding_window == 4096


def test_gemma2_alternates_from_layer_zero():
    cfg = dict(BASE, model_type="gemma2", head_dim=16, sliding_window=8)
    assert kinds_list(cfg) == ["sliding_attention", "full_attention"] * 3


def test_gemma3_pattern_and_layer_types():
    cfg = dict(BASE, model_type="gemma3_text", head_dim=16, sliding_window=8, sliding_window_pattern=3)
    assert kinds_list(cfg) == ["sliding_attention", "sliding_attention", "full_attention"] * 2
    explicit = dict(cfg, layer_types=["full_attention"] + ["sliding_attention"] * 5)
    assert kinds_list(explicit) == ["full_attention"] + ["sliding_attention"] * 5


def test_gpt_oss_default_alternation():
    cfg = dict(BASE, model_type="gpt_oss", head_dim=16, sliding_window=8, num_local_experts=4, num_experts_per_tok=2)
    assert kinds_list(cfg) == ["sliding_attention", "full_attention"] * 3


def test_llama4_no_rope_layers():
    cfg = dict(BASE, model_type="llama4_text", head_dim=16, intermediate_size_mlp=256, num_local_experts=2,
               num_experts_per_tok=1, attention_chunk_size=32, no_rope_layers=[1, 0, 1, 1, 0, 1])
    assert kinds_list(cfg) == ["chunked_attention", "full_attention", "chunked_attention", "chunked_attention",
                               "full_attention", "chunked_attention"]
    default = dict(cfg, no_rope_layers=[])  # empty: a NoPE global layer every 4th
    assert kinds_list(default) == ["chunked_attention"] * 3 + ["full_attention"] + ["chunked_attention"] * 2


def test_jamba_attention_period_and_offset():
    cfg = dict(BASE, model_type="jamba", attn_layer_period=3, attn_layer_offset=1, num_experts=1,
               mamba_d_state=4, mamba_d_conv=4, mamba_expand=2)
    assert kinds_list(cfg) == ["state", "full_attention", "state"] * 2
    # Mamba-1 state per layer and sequence: d_inner x (d_conv - 1) + d_inner x d_state, d_inner = 2 x 64
    assert spec_of(cfg).state_elements_per_layer_resolved == 128 * 3 + 128 * 4


@pytest.mark.parametrize(
    "name, period, offset",
    [
        ("jamba-1.5-mini", 2, 1),  # expert_layer_period 2, expert_layer_offset 1
        ("llama-4-maverick-17b-128e", 2, 1),  # interleave_moe_layer_step 2: layers 1, 3, ..., 47
        ("qwen3-30b-a3b", None, None),  # decoder_sparse_step 1: every layer
        ("mixtral-8x7b-v0.1", None, None),
    ],
)
def test_interleaved_moe_layers(name, period, offset):
    fields = convert_config(load(name)).fields
    assert (fields.get("expert_layer_period"), fields.get("expert_layer_offset")) == (period, offset)


def test_moe_layers_without_a_pattern_are_named_in_a_note():
    cfg = dict(load("qwen3-30b-a3b"), num_hidden_layers=6, mlp_only_layers=[0, 2])
    conv = convert_config(cfg)
    assert "expert_layer_period" not in conv.fields
    assert ("experts sit in layers [1, 3, 4, 5], a pattern the spec cannot state (expert_layer_period/offset); "
            "kvplan measure runs every layer as MoE") in conv.notes
    sparse = convert_config(dict(load("qwen3-30b-a3b"), num_hidden_layers=6, decoder_sparse_step=3)).fields
    assert (sparse["expert_layer_period"], sparse["expert_layer_offset"]) == (3, 2)  # layers 2 and 5


@pytest.mark.parametrize(
    "extra, kv_heads",
    [
        (dict(new_decoder_architecture=True, num_kv_heads=2), 2),  # Falcon-40B style
        (dict(new_decoder_architecture=False, multi_query=True, num_kv_heads=4), 1),  # Falcon-7B
        (dict(new_decoder_architecture=False, multi_query=False), 4),  # Falcon-RW: plain MHA
    ],
)
def test_falcon_kv_heads(extra, kv_heads):
    cfg = dict(model_type="falcon", hidden_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=100, **extra)
    assert spec_of(cfg).num_key_value_heads == kv_heads


def test_old_refinedweb_names():
    cfg = dict(model_type="RefinedWebModel", hidden_size=64, n_head=4, n_layer=3, vocab_size=100, multi_query=True)
    spec = spec_of(cfg)
    assert (spec.num_hidden_layers, spec.num_attention_heads, spec.num_key_value_heads) == (3, 4, 1)


def test_gpt2_names():
    spec = spec_of(dict(model_type="gpt2", n_embd=64, n_head=4, n_layer=3, n_positions=128, vocab_size=100))
    assert (spec.hidden_size, spec.num_hidden_layers, spec.head_dim, spec.max_position_embeddings) == (64, 3, 16, 128)


def test_deepseek_mla_fields():
    spec = spec_of(load("deepseek-v2-lite"))
    assert (spec.kv_lora_rank, spec.qk_rope_head_dim, spec.qk_nope_head_dim, spec.q_lora_rank) == (512, 64, 128, None)


def test_unknown_type_refused_naming_missing_fields():
    with pytest.raises(ConfigError) as err:
        convert_config({"model_type": "brand_new", "hidden_size": 64, "num_attention_heads": 4})
    assert "num_hidden_layers, vocab_size" in err.value.message
    assert "'brand_new'" in err.value.message


def test_unknown_type_with_every_field_has_no_parameter_formula():
    conv = convert_config(dict(BASE, model_type="brand_new", sliding_window=16))
    assert conv.parameters is None
    assert conv.fields["sliding_window"] == 16


def test_unknown_type_read_by_its_architecture_class():
    # Kimi-K2 style: an unknown model_type on a DeepseekV3ForCausalLM checkpoint.
    cfg = dict(load("deepseek-r1"), model_type="kimi_k2")
    conv = convert_config(cfg)
    assert conv.model_type == "deepseek_v3"
    assert conv.parameters == 671_026_419_200
    assert any("kimi_k2" in n for n in conv.notes)


@pytest.mark.parametrize(
    "config, message",
    [
        ([], "expected a JSON object"),
        ({"hidden_size": 4}, "must name its model_type"),
        (dict(BASE, model_type="llama", num_hidden_layers="32"), "num_hidden_layers is '32', not a positive integer"),
        (dict(BASE, model_type="llama", hidden_size=-1), "hidden_size is -1"),
        (dict(BASE, model_type="gemma3_text", head_dim=16, layer_types=["full_attention"]), "layer_types has 1 entries"),
        (dict(BASE, model_type="gemma3_text", head_dim=16, layer_types=["weird"] * 6), "layer_types has 'weird'"),
    ],
)
def test_bad_configs(config, message):
    with pytest.raises(ConfigError) as err:
        convert_config(config)
    assert message in err.value.message


KIND_NAMES = ["full_attention", "sliding_attention", "chunked_attention", "state"]


@settings(deadline=None)  # no wall-clock limit on a shared CI machine
@given(st.lists(st.sampled_from(KIND_NAMES), min_size=1, max_size=40))
def test_layer_fields_round_trip(layer_kinds):
    """However the kinds are compacted (nothing, a cycle, a list), the spec reads back the same layers."""
    fields = dict(hidden_size=64, num_hidden_layers=len(layer_kinds), num_attention_heads=4, vocab_size=10,
                  num_parameters=10_000, sliding_window=8, attention_chunk_size=16, mamba_d_state=4,
                  mamba_d_conv=4, mamba_expand=2, **layer_fields(layer_kinds))
    if all(k == "full_attention" for k in layer_kinds):
        fields.pop("sliding_window")  # a bare sliding_window means every layer slides
    spec = ModelSpec(name="t", source="test", **fields)
    assert [k.value for k in spec.layer_kinds] == layer_kinds


# ------------------------------------------------------------------ layer_fields: the shortest repeating pattern


def _cycled(pattern: tuple, n: int) -> list[str]:
    cycle = [name for entry in pattern for name, count in entry.items() for _ in range(count)]
    return [cycle[i % len(cycle)] for i in range(n)]


@given(st.lists(st.sampled_from(["full_attention", "sliding_attention", "mamba"]), max_size=40))
def test_layer_fields_finds_the_shortest_period(kinds):
    out = layer_fields(kinds)
    if "layer_pattern" in out:
        period = sum(c for entry in out["layer_pattern"] for c in entry.values())
        assert _cycled(out["layer_pattern"], len(kinds)) == kinds
        assert not any(all(kinds[i] == kinds[i % p] for i in range(len(kinds))) for p in range(1, period))
    elif "layer_types" in out:
        assert list(out["layer_types"]) == kinds
        assert not any(all(kinds[i] == kinds[i % p] for i in range(len(kinds))) for p in range(1, len(kinds)))
    else:
        assert set(kinds) <= {"full_attention"} or set(kinds) == {"sliding_attention"}


def test_layer_fields_is_linear_in_the_layers():
    # one full layer after 9,999 sliding ones has no period: every shorter period fails only at the end,
    # which took seconds when each period was tried in turn
    from kvplan.model.spec import MAX_LAYERS

    kinds = ["sliding_attention"] * (MAX_LAYERS - 1) + ["full_attention"]
    assert layer_fields(kinds) == {"layer_types": tuple(kinds)}


# A config.json that names only its model_type is sized with transformers' class defaults, and most
# of those defaults describe one published model: the count must be that model's published total
# (the Hugging Face model card / safetensors total) and its context and KV heads the model's own.
DEFAULT_IS_A_PUBLISHED_MODEL = [
    # model_type, the model its defaults describe, parameters, max_position_embeddings, KV heads, head_dim, window
    ("llama", "LLaMA-7B (2023)", 6_738_415_616, 2048, 32, 128, None),
    ("mistral", "Mistral-7B-v0.1", 7_241_732_096, 4096 * 32, 8, 128, 4096),
    ("mixtral", "Mixtral-8x7B-v0.1", 46_702_792_704, 4096 * 32, 8, 128, None),
    ("gemma", "gemma-7b", 8_537_680_896, 8192, 16, 256, None),
    ("gemma2", "gemma-2-2b", 2_614_341_888, 8192, 4, 256, 4096),
    ("deepseek_v3", "DeepSeek-V3 (671B without the MTP layer)", 671_026_419_200, 4096, 128, None, None),
    ("gpt2", "gpt2 (124M)", 124_439_808, 1024, 12, 64, None),
    ("gpt_neox", "gpt-neox-20b", 20_554_567_680, 2048, 64, 96, None),
    ("falcon", "falcon-7b (multi-query: one KV head)", 6_921_720_704, 2048, 1, 64, None),
    ("phi3", "Phi-3-mini-4k", 3_821_079_552, 4096, 32, 96, None),
    ("gpt_oss", "gpt-oss-120b", 116_829_156_672, 131072, 8, 64, 128),
]


@pytest.mark.parametrize("model_type, model, total, context, kv_heads, head_dim, window", DEFAULT_IS_A_PUBLISHED_MODEL,
                         ids=[d[0] for d in DEFAULT_IS_A_PUBLISHED_MODEL])
def test_a_bare_model_type_is_its_default_model(model_type, model, total, context, kv_heads, head_dim, window):
    conv = convert_config({"model_type": model_type})
    assert conv.parameters == total, model
    f = conv.fields
    assert (f.get("max_position_embeddings"), f.get("num_key_value_heads"), f.get("head_dim"), f.get("sliding_window")) == (
        context, kv_heads, head_dim, window), model


def test_qwen2_moe_defaults_are_qwen15_moe_a27b():
    """Qwen2MoeConfig's defaults are Qwen1.5-MoE-A2.7B: 14.3B parameters, 2.7B read per token."""
    conv = convert_config({"model_type": "qwen2_moe"})
    assert conv.parameters == 14_315_784_192
    # per token, 56 of the 60 routed experts sit idle in each of 24 layers; one expert = gate, up and
    # down projections of 2,048 x 1,408: 3 x 2,048 x 1,408 = 8,650,752
    assert conv.inactive_parameters == 24 * 56 * 8_650_752 == 11_626_610_688
    assert conv.parameters - conv.inactive_parameters == 2_689_173_504  # "A2.7B"


def test_falcon_without_multi_query_has_a_fused_3h_qkv():
    """modeling_falcon, parallel_attn and not new_decoder_architecture nor multi_query: one input_layernorm
    (weight + bias), query_key_value h -> 3h, dense h -> h, MLP h -> 4h -> h, no biases; ln_f; tied embedding."""
    conv = convert_config({"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                           "vocab_size": 100, "multi_query": False, "new_decoder_architecture": False,
                           "parallel_attn": True, "bias": False})
    layer = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64 + 2 * 64  # 49,280
    assert conv.parameters == 2 * layer + 100 * 64 + 2 * 64 == 105_088
    assert conv.fields["num_key_value_heads"] == 4  # every head has its own K and V


def test_jamba_defaults_are_jamba_v01():
    """JambaConfig's defaults are Jamba-v0.1 (Lieber et al. 2024, arXiv 2403.19887, section 3: blocks of
    l = 8 layers with a:m = 1:7 attention to Mamba, MoE every e = 2 layers, n = 16 experts, K = 2 per token;
    "12B active of 52B")."""
    conv = convert_config({"model_type": "jamba"})
    f = conv.fields
    assert f["layer_pattern"] == ({"state": 4}, {"full_attention": 1}, {"state": 3})  # attention at 4, 12, 20, 28
    assert (f["num_local_experts"], f["num_experts_per_tok"], f["expert_layer_period"], f["expert_layer_offset"]) == (16, 2, 2, 1)
    # 16 MoE layers x 14 idle experts x (gate, up, down: 3 x 4,096 x 14,336 = 176,160,768)
    assert conv.inactive_parameters == 16 * 14 * 176_160_768 == 39_460_012_032
    assert conv.parameters - conv.inactive_parameters == 12_110_311_296  # "12B active"


# Bare configs sized with transformers' class defaults. Every default below is copied from transformers
# 5.25.0, transformers/models/<type>/configuration_<type>.py (the dataclass fields of <Type>Config), and
# every count is the modeling file's weights added up by hand.


def test_a_bare_qwen3_is_qwen3config_defaults():
    """Qwen3Config: vocab 151936, hidden 4096, intermediate 22016, 32 layers, 32 heads, 32 KV heads,
    head_dim 128, untied, no attention bias; modeling_qwen3 adds q_norm and k_norm (head_dim each)."""
    conv = convert_config({"model_type": "qwen3"})
    attention = 4 * 4096 * (32 * 128) + 2 * 128  # q, k, v, o projections (4,096 wide each) + q/k norms
    mlp = 3 * 4096 * 22016  # gate, up, down
    layer = attention + mlp + 2 * 4096  # + input and post-attention RMSNorms = 337,649,920
    assert conv.parameters == 32 * layer + 2 * 151936 * 4096 + 4096 == 12_049_461_248
    f = conv.fields
    assert (f["vocab_size"], f["num_hidden_layers"], f["num_key_value_heads"], f["head_dim"]) == (151936, 32, 32, 128)


def test_a_bare_qwen3_moe_is_qwen3moeconfig_defaults():
    """Qwen3MoeConfig: vocab 151936, hidden 2048, 24 layers, 32 heads, 4 KV heads, no head_dim field (so
    hidden / heads = 64), 128 experts of 768, 8 per token, no shared expert, untied."""
    conv = convert_config({"model_type": "qwen3_moe"})
    attention = 2048 * 2048 + 2 * 2048 * (4 * 64) + 2048 * 2048 + 2 * 64  # q, k, v, o + q/k norms
    expert = 3 * 2048 * 768  # 4,718,592
    layer = attention + 128 * expert + 2048 * 128 + 2 * 2048  # experts + router + norms = 613,683,328
    assert conv.parameters == 24 * layer + 2 * 151936 * 2048 + 2048 == 15_350_731_776
    assert conv.inactive_parameters == 24 * (128 - 8) * expert == 13_589_544_960
    assert (conv.fields["num_key_value_heads"], conv.fields["head_dim"]) == (4, 64)


def test_qwen3_moe_saved_by_transformers_5_names_its_experts_num_local_experts():
    """transformers 5.25 Qwen3MoeConfig.attribute_map = {"num_experts": "num_local_experts"}, so a config it
    saves (Qwen3MoeConfig(num_experts=4, ...).to_dict()) holds num_local_experts: 4 and no num_experts; read
    as num_experts alone it took the 128 default. Tiny: hidden 64, 6 layers, 4 heads x 16, 2 KV heads,
    vocab 256, 4 experts of 32, 2 per token, untied."""
    conv = convert_config({
        "model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "intermediate_size": 128,
        "moe_intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
    })
    expert = 3 * 64 * 32  # 6,144
    # q 64x64, k and v 64x32, o 64x64 = 12,288; q/k norms 2 x 16; 4 experts; router 64 x 4; 2 RMSNorms
    layer = 12_288 + 32 + 4 * expert + 64 * 4 + 2 * 64  # 37,280
    assert conv.parameters == 6 * layer + 2 * 256 * 64 + 64 == 256_512
    assert conv.inactive_parameters == 6 * 2 * expert == 73_728
    assert conv.fields["num_local_experts"] == 4


def test_qwen3_moe_sliding_window_default_is_4096():
    """Qwen3MoeConfig.sliding_window defaults to 4096 and applies when use_sliding_window is true."""
    spec = spec_of({"model_type": "qwen3_moe", "use_sliding_window": True, "max_window_layers": 0})
    assert spec.sliding_window == 4096
    assert kinds(spec) == {"sliding_attention": 24}


def test_qwen3_sliding_layers_from_max_window_layers_28():
    """Qwen3Config.__post_init__: layer i slides when i >= max_window_layers (28) and use_sliding_window."""
    spec = spec_of({"model_type": "qwen3", "use_sliding_window": True})
    assert spec.sliding_window == 4096
    assert [k.value for k in spec.layer_kinds] == ["full_attention"] * 28 + ["sliding_attention"] * 4


def test_qwen2_moe_dense_layer_uses_intermediate_size_5632():
    """Qwen2MoeConfig.intermediate_size = 5632 sizes the layers in mlp_only_layers (modeling_qwen2_moe:
    a layer in mlp_only_layers gets Qwen2MoeMLP(intermediate_size)). Layer 0 made dense: drop its 60
    experts (3 x 2,048 x 1,408 each), router (2,048 x 60), shared expert (3 x 2,048 x 5,632) and its gate
    (2,048 x 1); add a dense MLP of 3 x 2,048 x 5,632."""
    bare = 14_315_784_192  # test_qwen2_moe_defaults_are_qwen15_moe_a27b
    conv = convert_config({"model_type": "qwen2_moe", "mlp_only_layers": [0]})
    moe_mlp = 60 * 3 * 2048 * 1408 + 2048 * 60 + 3 * 2048 * 5632 + 2048
    assert conv.parameters == bare - moe_mlp + 3 * 2048 * 5632 == 13_796_614_144


def test_a_bare_deepseek_v2_is_deepseekv2config_defaults():
    """DeepseekV2Config (5.25): vocab 102400, hidden 4096, 32 layers, 32 heads (KV heads = heads),
    q_lora 1536, kv_lora 512, rope 64, nope 128, v 128, 64 routed experts of 1407 and 2 shared, every
    layer MoE (first_k_dense_replace 0), untied."""
    conv = convert_config({"model_type": "deepseek_v2"})
    attention = (4096 * 1536 + 1536 + 1536 * 32 * (128 + 64)  # q_a, q_a norm, q_b
                 + 4096 * (512 + 64) + 512 + 512 * 32 * (128 + 128)  # kv_a, kv_a norm, kv_b
                 + 32 * 128 * 4096)  # o_proj = 39,061,504
    moe = 64 * 3 * 4096 * 1407 + 4096 * 64 + 3 * 4096 * (2 * 1407)  # experts, router, 2 shared
    layer = attention + moe + 2 * 4096  # 1,180,420,096
    assert conv.parameters == 32 * layer + 2 * 102400 * 4096 + 4096 == 38_612_307_968
    f = conv.fields
    assert (f["num_hidden_layers"], f["num_attention_heads"], f["n_routed_experts"], f["n_shared_experts"]) == (32, 32, 64, 2)


def test_a_bare_llama4_text_is_llama4textconfig_defaults():
    """Llama4TextConfig: vocab 202048, hidden 5120, 48 layers, 40 heads, 8 KV heads, head_dim 128,
    16 experts (intermediate 8192), 1 per token, MoE in every layer (interleave_moe_layer_step 1), a shared
    expert per MoE layer, untied: Llama-4-Scout's text model (17B active)."""
    conv = convert_config({"model_type": "llama4_text"})
    attention = 2 * 5120 * (40 * 128) + 2 * 5120 * (8 * 128)  # q, o; k, v
    expert = 5120 * 2 * 8192 + 8192 * 5120  # gate_up, down = 125,829,120
    layer = attention + 16 * expert + 5120 * 16 + 3 * 5120 * 8192 + 2 * 5120  # + router, shared expert, norms
    assert conv.parameters == 48 * layer + 2 * 202048 * 5120 + 5120 == 107_769_861_120
    assert conv.parameters - conv.inactive_parameters == 107_769_861_120 - 48 * 15 * expert == 17_172_894_720


def test_llama4_moe_layers_outside_the_model_are_ignored():
    """modeling_llama4 Llama4TextDecoderLayer: is_moe_layer = layer_idx in config.moe_layers, for
    layer_idx in range(num_hidden_layers): entries -1 and 6 name no layer and change nothing."""
    cfg = dict(BASE, model_type="llama4_text", head_dim=16, intermediate_size_mlp=256, num_local_experts=2,
               num_experts_per_tok=1, attention_chunk_size=32, moe_layers=[-1, 1, 3, 5, 6])
    f = convert_config(cfg).fields
    assert (f["expert_layer_period"], f["expert_layer_offset"]) == (2, 1)  # layers 1, 3, 5
    assert convert_config(dict(cfg, moe_layers=[1, 3, 5])).parameters == convert_config(cfg).parameters


def test_falcon_hidden_not_a_multiple_of_heads_is_refused():
    """modeling_falcon FalconAttention: head_dim = hidden_size // num_heads, and a remainder is a ValueError."""
    with pytest.raises(ConfigError) as err:
        convert_config({"model_type": "falcon", "hidden_size": 100, "num_attention_heads": 3, "num_hidden_layers": 2,
                        "vocab_size": 10})
    assert str(err.value) == "config.json: hidden_size 100 is not a multiple of 3 heads"


def test_qwen_moe_sliding_layers_follow_transformers():
    """transformers 5.25: Qwen2MoeConfig.__post_init__ slides layer i when use_sliding_window and
    bool((i + 1) % 2) and i < max_window_layers; Qwen3MoeConfig has no layer_types nor max_window_layers
    and every Qwen3MoeAttention takes sliding_window."""
    qwen2_moe = dict(BASE, model_type="qwen2_moe", sliding_window=32, use_sliding_window=True, max_window_layers=4,
                     num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16, shared_expert_intermediate_size=16)
    assert kinds_list(qwen2_moe) == ["sliding_attention", "full_attention"] * 2 + ["full_attention"] * 2  # 0, 2
    qwen3_moe = dict(BASE, model_type="qwen3_moe", sliding_window=32, use_sliding_window=True, num_experts=2,
                     num_experts_per_tok=1, moe_intermediate_size=16)
    assert kinds_list(qwen3_moe) == ["sliding_attention"] * 6
    assert kinds_list(dict(qwen3_moe, max_window_layers=28)) == ["sliding_attention"] * 6  # not read
    assert kinds_list(dict(qwen3_moe, layer_types=["full_attention"] * 6)) == ["sliding_attention"] * 6  # not read
    assert kinds_list(dict(qwen3_moe, use_sliding_window=False)) == ["full_attention"] * 6
    assert spec_of({"model_type": "qwen3_moe", "use_sliding_window": True}).sliding_window == 4096  # the default


def test_a_bare_gemma3_text_is_gemma3textconfig_defaults():
    """Gemma3TextConfig (5.25): vocab 262208, hidden 2304, intermediate 9216, 26 layers, 8 heads, 4 KV
    heads, head_dim 256, window 4096, a full layer every 6th (layers 5, 11, 17, 23), tied embeddings;
    modeling_gemma3: q_norm and k_norm (head_dim each) and four RMSNorms per layer."""
    conv = convert_config({"model_type": "gemma3_text"})
    attention = 2304 * (8 * 256) + 2 * 2304 * (4 * 256) + (8 * 256) * 2304 + 2 * 256  # q, k, v, o, q/k norms
    layer = attention + 3 * 2304 * 9216 + 4 * 2304  # 77,866,496
    assert conv.parameters == 26 * layer + 262208 * 2304 + 2304 == 2_628_658_432
    spec = spec_of({"model_type": "gemma3_text"})
    assert kinds(spec) == {"sliding_attention": 22, "full_attention": 4}
    assert [i for i, k in enumerate(spec.layer_kinds) if k.value == "full_attention"] == [5, 11, 17, 23]
    assert spec.sliding_window == 4096


@pytest.mark.parametrize("config, message", [
    # MistralConfig: a set sliding_window makes every layer slide, so it must be a positive token count
    ({"model_type": "mistral", "sliding_window": 0}, "sliding layers need a positive sliding_window, not 0"),
    (dict(BASE, model_type="llama4_text", head_dim=16, intermediate_size_mlp=256, num_local_experts=2,
          num_experts_per_tok=1, attention_chunk_size=0),
     "chunked layers need a positive attention_chunk_size, not 0"),
])
def test_a_window_or_chunk_that_is_not_positive_is_refused_naming_the_file(config, message):
    with pytest.raises(ConfigError) as err:
        convert_config(config, where="model/config.json")
    assert str(err.value) == f"model/config.json: {message}"


def test_a_negative_count_where_zero_is_allowed_is_refused():
    """max_window_layers may be 0 (every layer slides) but not negative."""
    cfg = dict(BASE, model_type="qwen2", sliding_window=32, use_sliding_window=True, max_window_layers=-1)
    with pytest.raises(ConfigError) as err:
        convert_config(cfg)
    assert str(err.value) == "config.json: max_window_layers is -1, not a non-negative integer"
    assert kinds_list(dict(cfg, max_window_layers=0)) == ["sliding_attention"] * 6


def test_falcon_new_decoder_architecture_count():
    """modeling_falcon with new_decoder_architecture: query_key_value h -> (heads + 2 x kv) x head_dim,
    dense h -> h, MLP h -> 4h -> h (no biases); num_ln_in_parallel_attn None -> 2 (FalconDecoderLayer:
    ln_attn and ln_mlp, LayerNorms with bias); ln_f; tied embedding."""
    cfg = {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4, "num_kv_heads": 2,
           "num_hidden_layers": 2, "vocab_size": 100, "new_decoder_architecture": True, "bias": False}
    layer = 64 * (4 + 2 * 2) * 16 + 64 * 64 + 64 * 256 + 256 * 64 + 2 * (2 * 64)  # 45,312
    assert convert_config(cfg).parameters == 2 * layer + 100 * 64 + 2 * 64 == 97_152
    one_norm = 2 * (layer - 2 * 64) + 100 * 64 + 2 * 64  # num_ln_in_parallel_attn 1: input_layernorm only
    assert convert_config(dict(cfg, num_ln_in_parallel_attn=1)).parameters == one_norm == 96_896


def test_jamba_offsets_may_be_zero():
    """JambaConfig: layer i is attention when i % attn_layer_period == attn_layer_offset and MoE when
    i % expert_layer_period == expert_layer_offset; an offset of 0 puts layer 0 first in both."""
    cfg = dict(BASE, model_type="jamba", attn_layer_period=3, attn_layer_offset=0, expert_layer_period=2,
               expert_layer_offset=0, num_experts=2, num_experts_per_tok=1, mamba_d_state=4, mamba_d_conv=4,
               mamba_expand=2)
    assert kinds_list(cfg) == ["full_attention", "state", "state"] * 2
    f = convert_config(cfg).fields
    assert (f["expert_layer_period"], f["expert_layer_offset"]) == (2, 0)  # layers 0, 2, 4


def test_a_bare_gpt2_is_gpt2_small_124m():
    """GPT2Config defaults (n_embd 768, 12 layers, vocab 50257, 1,024 positions, tied): by hand, wte
    50,257 x 768 = 38,597,376; wpe 1,024 x 768 = 786,432; per block ln_1 and ln_2 (weight + bias) 2 x 1,536,
    c_attn 768 x 2,304 + 2,304, attn c_proj 768 x 768 + 768, c_fc 768 x 3,072 + 3,072, mlp c_proj
    3,072 x 768 + 768 = 7,087,872; ln_f 1,536. 124,439,808 is also what the `gpt2` checkpoint's tensors sum to."""
    conv = convert_config({"model_type": "gpt2"})
    block = 2 * 1_536 + 768 * 2_304 + 2_304 + 768 * 768 + 768 + 768 * 3_072 + 3_072 + 3_072 * 768 + 768
    assert block == 7_087_872
    assert conv.parameters == 38_597_376 + 786_432 + 12 * block + 1_536 == 124_439_808


def test_deepseek_q_lora_rank_counts_its_norm():
    """modeling_deepseek_v3 DeepseekV3Attention with q_lora_rank r: q_a_proj (hidden x r), q_a_layernorm (r),
    q_b_proj (r x heads x (nope + rope)). Raising r by 8 adds 8 x (hidden + 1 + q_dim) per layer."""
    base = {"model_type": "deepseek_v3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "vocab_size": 256,
            "intermediate_size": 128, "n_routed_experts": None, "first_k_dense_replace": 2}
    small = convert_config({**base, "q_lora_rank": 8}).parameters
    large = convert_config({**base, "q_lora_rank": 16}).parameters
    q_dim = 4 * (8 + 4)  # 48
    assert large - small == 2 * 8 * (64 + 1 + q_dim) == 1_808


def test_an_unknown_type_is_read_by_its_architecture_and_the_note_names_the_class_that_matched():
    conv = convert_config(dict(BASE, model_type="my_llama", architectures=["MyWrapper", "LlamaForCausalLM"]))
    assert "model_type 'my_llama' read as 'llama', from architectures 'LlamaForCausalLM'" in conv.notes


def test_architectures_that_is_not_a_list_is_refused_by_name():
    with pytest.raises(ConfigError) as err:
        convert_config(dict(BASE, model_type="my_llama", architectures=5))
    assert "architectures is 5; expected a list of class names" in err.value.message
