"""The simpler new model types of issue 13 (existing layer kinds only): gpt_bigcode, minimax_m2, cohere2,
smollm3, glm4_moe, glm4_moe_lite, and kimi_k2 (read as deepseek_v3).

Published configs (tests/fixtures/hf_configs_next, SOURCES.md): KV bytes per token and per sequence at 8k
and 128k, and the parameter count, worked by hand from the rule's source. Tiny random-weight models built
with transformers' own config classes (tests/hf_real.py): `--engine hf` equals the bytes transformers holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kvplan
from kvplan.sources.hf_config import ConfigError, convert_config

NEXT = Path(__file__).parent / "fixtures" / "hf_configs_next"
K8, K128 = 8192, 131072


def load(name: str) -> dict:
    return json.loads((NEXT / f"{name}.json").read_text())


def ideal(path, context: int, **kw) -> dict:
    return kvplan.estimate(str(path), engine="ideal", context=context, batch=1, **kw).to_dict()


# (fixture, KV bytes per token worked by hand, the rule)
PUBLISHED = [
    # T-BC GPTBigCodeAttention: multi_query -> 1 KV head; head_dim 2048 / 16 = 128; 24 layers; config.json names no
    # torch_dtype, so transformers loads float32 (4 B): 24 x 2 x 1 x 128 x 4
    ("gpt-bigcode-santacoder", 24 * 2 * 1 * 128 * 4),
    # MiniMax-M2: 62 full-attention layers (attn_type_list all 1), 8 KV heads x head_dim 128, bfloat16
    ("minimax-m2.7", 62 * 2 * 8 * 128 * 2),
    # GLM-4.7-Flash: MLA, kv_lora_rank 512 + qk_rope_head_dim 64 per token and layer, 47 layers, bfloat16
    ("glm-4.7-flash", 47 * (512 + 64) * 2),
    # Kimi-K2: DeepSeek-V3's MLA, 61 layers x (512 + 64) x 2 B
    ("kimi-k2-instruct", 61 * (512 + 64) * 2),
    # SmolLM3-3B (T-S3): 36 layers, NoPE ones included, x 4 KV heads x 2048 / 16 = 128 x 2 B
    ("smollm3-3b", 36 * 2 * 4 * 128 * 2),
]


@pytest.mark.parametrize("name, per_token", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_config_kv_bytes(name, per_token):
    path = NEXT / f"{name}.json"
    for context in (K8, K128):
        d = ideal(path, context)
        assert d["kv_bytes_per_token"] == per_token
        assert d["kv_bytes_per_sequence"] == per_token * context  # every layer holds every token


def test_santacoder_in_bf16_and_its_parameters():
    d = ideal(NEXT / "gpt-bigcode-santacoder.json", K8, kv_cache_dtype="bf16")
    assert d["kv_bytes_per_token"] == 24 * 2 * 1 * 128 * 2 == 12_288
    # modeling_gpt_bigcode: wte 49280 x 2048, wpe 2048 x 2048; per layer c_attn 2048 -> 2048 + 2 x 128 (bias),
    # c_proj 2048 -> 2048 (bias), c_fc 2048 -> 8192 (bias), c_proj 8192 -> 2048 (bias), ln_1 / ln_2 (weight +
    # bias); ln_f; tied lm_head. The checkpoint's c_attn.weight is [2304, 2048] (SOURCES.md).
    layer = (2048 * 2304 + 2304) + (2048 * 2048 + 2048) + (2048 * 8192 + 8192) + (8192 * 2048 + 2048) + 4 * 2048
    total = 24 * layer + 49280 * 2048 + 2048 * 2048 + 2 * 2048
    assert convert_config(load("gpt-bigcode-santacoder")).parameters == total == 1_124_886_528


def test_minimax_m2_parameters_match_the_safetensors_less_their_fp8_scales():
    """The report counts 228,703,644,928 elements in MiniMax-M2.7's safetensors: the weights plus one fp32
    scale per 128 x 128 block of every fp8 linear (quantization_config.weight_block_size; gate and lm_head
    are not converted). By hand, per layer: experts 256 x 3 matrices of 12 x 24 blocks; q 48 x 24,
    k 8 x 24, v 8 x 24, o 24 x 48."""
    conv = convert_config(load("minimax-m2.7"))
    scales = 62 * (256 * 3 * 12 * 24 + 48 * 24 + 8 * 24 + 8 * 24 + 24 * 48)
    assert scales == 13_880_064
    assert conv.parameters == 228_703_644_928 - scales == 228_689_764_864
    # a token reads 8 of the 256 experts: 248 x 3 x 3072 x 1536 per layer skipped
    assert conv.inactive_parameters == 62 * 248 * 3 * 3072 * 1536


def test_glm_47_flash_parameters_match_the_safetensors_less_the_mtp_layer():
    """31,221,488,576 elements in GLM-4.7-Flash's safetensors include the MTP layer 47 (num_nextn_predict_layers
    1), which holds a whole MoE decoder layer, eh_proj (2h -> h), enorm / hnorm / shared_head.norm, and its own
    embed_tokens and shared_head.head (vocab x hidden each). By hand, one MoE layer:"""
    h, vocab = 2048, 154880
    attention = (h * 768 + 768 + 768 * 20 * 256  # q_a, q_a_layernorm, q_b (20 heads x (192 + 64))
                 + h * 576 + 512 + 512 * 20 * (192 + 256)  # kv_a_proj_with_mqa, kv_a_layernorm, kv_b
                 + 20 * 256 * h)  # o_proj
    moe = 64 * 3 * h * 1536 + 64 * h + 64 + 3 * h * 1536  # experts, router, e_score_correction_bias, shared expert
    layer = attention + moe + 2 * h
    mtp = layer + 2 * h * h + 3 * h + 2 * vocab * h
    assert convert_config(load("glm-4.7-flash")).parameters == 31_221_488_576 - mtp == 29_943_393_920


def test_smollm3_parameters():
    # modeling_smollm3: tied embedding 128256 x 2048; per layer q, o 2048 x 2048, k, v 2048 x 512, MLP 3 x 2048 x
    # 11008, two RMSNorms; the final norm. HuggingFaceTB/SmolLM3-3B's model card: "3B".
    layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 11008 + 2 * 2048
    assert convert_config(load("smollm3-3b")).parameters == 36 * layer + 128256 * 2048 + 2048 == 3_075_098_624


def test_kimi_k2_is_read_as_deepseek_v3():
    conv = convert_config(load("kimi-k2-instruct"))
    assert conv.model_type == "deepseek_v3"
    assert "model_type 'kimi_k2' read as 'deepseek_v3', from architectures 'DeepseekV3ForCausalLM'" in conv.notes
    assert conv.fields["kv_lora_rank"] == 512 and conv.fields["qk_rope_head_dim"] == 64


def test_minimax_attn_type_list_other_than_full_is_refused():
    config = load("minimax-m2.7")
    config["attn_type_list"] = [0] + [1] * 61
    with pytest.raises(ConfigError, match="attn_type_list has 0: MiniMax-M2 runs every layer as full attention"):
        convert_config(config)
    config["attn_type_list"] = [1] * 61
    with pytest.raises(ConfigError, match="attn_type_list has 61 entries but num_hidden_layers is 62"):
        convert_config(config)


# ------------------------------------------------------------------ tiny configs, by hand

def kinds(config: dict) -> list[str]:
    from kvplan.model.spec import ModelSpec

    conv = convert_config(config)
    spec = ModelSpec(name="t", source="t", **{"torch_dtype": "bfloat16", **conv.fields})
    return [k.value for k in spec.layer_kinds]


TINY = dict(hidden_size=64, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            vocab_size=128)


def test_cohere2_sliding_pattern_and_head_dim():
    # Cohere2Config.__post_init__: sliding unless (i + 1) % sliding_window_pattern == 0 (default 4); head_dim is
    # hidden / heads whatever config.json says
    config = dict(TINY, model_type="cohere2", sliding_window=16, head_dim=7)
    assert kinds(config) == (["sliding_attention"] * 3 + ["full_attention"]) * 2
    assert convert_config(config).fields["head_dim"] == 16
    assert kinds(dict(config, sliding_window_pattern=2)) == ["sliding_attention", "full_attention"] * 4
    assert kinds(dict(config, sliding_window=None)) == ["full_attention"] * 8


def test_smollm3_nope_layers_still_cache():
    # SmolLM3Config: no_rope_layers default int((i + 1) % 4 != 0); NoPE layers cache K and V like the others
    config = dict(TINY, model_type="smollm3")
    assert kinds(config) == ["full_attention"] * 8
    # with use_sliding_window and a window, the NoPE layers (3, 7) slide
    slid = dict(config, use_sliding_window=True, sliding_window=16)
    assert kinds(slid) == (["full_attention"] * 3 + ["sliding_attention"]) * 2
    with pytest.raises(ConfigError, match="no_rope_layers is"):
        convert_config(dict(config, no_rope_layers=[1, 1]))
    with pytest.raises(ConfigError, match="layer_types names sliding layers but use_sliding_window is false"):
        convert_config(dict(config, layer_types=["sliding_attention"] * 8, sliding_window=16))


def test_gpt_bigcode_multi_query_false_caches_every_head():
    config = {"model_type": "gpt_bigcode", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32,
              "vocab_size": 128, "multi_query": False}
    assert convert_config(config).fields["num_key_value_heads"] == 4
    assert convert_config(dict(config, multi_query=True)).fields["num_key_value_heads"] == 1
    assert convert_config({k: v for k, v in config.items() if k != "multi_query"}).fields["num_key_value_heads"] == 1


# ------------------------------------------------------------------ against transformers itself

def _transformers_configs():
    from transformers import (Cohere2Config, GPTBigCodeConfig, Glm4MoeConfig, Glm4MoeLiteConfig, MiniMaxM2Config,
                              SmolLM3Config)

    small = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=128,
                 dtype="bfloat16")
    return {
        "cohere2": Cohere2Config(**small, num_hidden_layers=4, sliding_window=6, sliding_window_pattern=2),
        "smollm3": SmolLM3Config(**small, num_hidden_layers=4, use_sliding_window=True, sliding_window=6,
                                 pad_token_id=0),
        "gpt_bigcode": GPTBigCodeConfig(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=128,
                                        multi_query=True, dtype="bfloat16"),
        "gpt_bigcode_mha": GPTBigCodeConfig(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=128,
                                            multi_query=False, dtype="bfloat16"),
        "minimax_m2": MiniMaxM2Config(**small, num_hidden_layers=2, head_dim=16, num_local_experts=4,
                                      num_experts_per_tok=2, attn_type_list=[1, 1]),
        "glm4_moe": Glm4MoeConfig(**small, num_hidden_layers=2, moe_intermediate_size=32, n_routed_experts=4,
                                  num_experts_per_tok=2, first_k_dense_replace=1, use_qk_norm=True),
        "glm4_moe_lite": Glm4MoeLiteConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                                           intermediate_size=64, moe_intermediate_size=32, vocab_size=128,
                                           num_hidden_layers=2, n_routed_experts=4, num_experts_per_tok=2,
                                           kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
                                           qk_nope_head_dim=16, v_head_dim=16, dtype="bfloat16"),
    }


@pytest.mark.parametrize("name", ["cohere2", "smollm3", "gpt_bigcode", "gpt_bigcode_mha", "minimax_m2", "glm4_moe",
                                  "glm4_moe_lite"])
@pytest.mark.parametrize("batch, tokens", [(1, 5), (2, 11)])
def test_hf_engine_matches_transformers(tmp_path, name, batch, tokens):
    from hf_real import forward_cache, prompt, tiny_model

    config = _transformers_configs()[name]
    real = forward_cache(tiny_model(config), prompt(config, batch, tokens)).total
    path = tmp_path / "config.json"
    path.write_text(config.to_json_string())
    answer = kvplan.estimate(str(path), engine="hf", context=tokens, batch=batch)
    assert answer.to_dict()["kv_bytes_total"] == real


# ------------------------------------------------------------------ the catalog entries

CATALOG = [("kimi-k2-instruct", "kimi-k2"), ("glm-4.7-flash", "glm-4.7-flash"), ("minimax-m2.7", "minimax-m2.7"),
           ("gpt-bigcode-santacoder", "santacoder"), ("smollm3-3b", "smollm3-3b")]


@pytest.mark.parametrize("fixture, name", CATALOG, ids=[c[1] for c in CATALOG])
def test_import_of_the_published_config_equals_its_catalog_entry(tmp_path, fixture, name):
    from kvplan.sources.catalog import SPECS_DIR, load_spec_file
    from kvplan.sources.resolve import spec_from_source

    folder = tmp_path / fixture
    folder.mkdir()
    (folder / "config.json").write_text((NEXT / f"{fixture}.json").read_text())
    imported = spec_from_source(str(folder), name).model_dump(exclude={"source", "notes"})
    shipped = load_spec_file(SPECS_DIR / f"{name}.yaml").model_dump(exclude={"source", "notes"})
    assert imported == shipped


@pytest.mark.parametrize("name", ["cohere2", "smollm3", "gpt_bigcode", "gpt_bigcode_mha", "minimax_m2", "glm4_moe",
                                  "glm4_moe_lite"])
def test_parameter_formula_counts_what_transformers_builds(name):
    """The formula against the model transformers builds from the same config: every tensor of its state dict
    (persistent buffers such as e_score_correction_bias included, a tied weight once)."""
    from hf_real import parameter_count, tiny_model

    config = _transformers_configs()[name]
    model = tiny_model(config)
    assert convert_config(json.loads(config.to_json_string())).parameters == parameter_count(model)
