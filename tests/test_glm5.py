"""GLM-5 / GLM-5.1 (`glm_moe_dsa`, issue 13): DeepSeek-V3.2's MLA latent and sparse-attention indexer keys with
GLM's sizes, sized from the published config.json alone (tests/fixtures/hf_configs_next/glm-5.1.json, SOURCES.md).

The rule, at its sources:
- transformers 5.25 models/glm_moe_dsa: `GlmMoeDsaConfig.__post_init__` makes every layer "indexed_attention";
  `GlmMoeDsaAttention` caches the latent (kv_lora_rank) and the RoPE key (qk_rope_head_dim) through
  `cache.update`, and its `GlmMoeDsaIndexer` one [B, T, index_head_dim] key through `cache.update_indexer`, in the
  model's dtype; a layer whose `indexer_types` entry is "shared" builds no indexer and caches no indexer key.
- vLLM 0.32 model_executor/models/deepseek_v2.py: `GlmMoeDsaForCausalLM(DeepseekV2ForCausalLM)`; an indexer on
  every layer when the config has index_topk (`is_v32`), unless index_topk_pattern / index_topk_freq skip it;
  its key cache is `index_head_dim` fp8 values + one fp32 scale per 128 (kvplan.model.kinds.index_key_bytes).
- llama.cpp src/llama-model.cpp `LLM_ARCH_GLM_DSA`: `llama_kv_cache_dsa`, indexer keys on `is_indexer_full` layers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import kvplan
from kvplan.errors import InputError
from kvplan.sources.hf_config import ConfigError, convert_config

FIXTURE = Path(__file__).parent / "fixtures" / "hf_configs_next" / "glm-5.1.json"
K8, K128 = 8192, 131072
LAYERS = 78
LATENT = 512 + 64  # kv_lora_rank + qk_rope_head_dim, per token and layer
INDEX = 128  # index_head_dim


def load() -> dict:
    return json.loads(FIXTURE.read_text())


def estimate(path, engine: str, context: int, **kw) -> dict:
    return kvplan.estimate(str(path), engine=engine, context=context, batch=1, **kw).to_dict()


# ------------------------------------------------------------------ the published config, by hand

# vLLM and ideal: latent in bf16 (2 B) + the indexer key as 128 fp8 bytes and one fp32 scale (4 B) per 128 values
VLLM_PER_TOKEN = LAYERS * (LATENT * 2 + INDEX + INDEX // 128 * 4)
# transformers 5 and llama.cpp (f16 K cache): latent and indexer key both 2 B per value
HF_PER_TOKEN = LAYERS * (LATENT + INDEX) * 2


def test_the_worked_figures():
    assert VLLM_PER_TOKEN == 78 * 1_284 == 100_152
    assert HF_PER_TOKEN == 78 * 1_408 == 109_824
    # the indexer's share of the vLLM figure: 78 x 132 B
    assert VLLM_PER_TOKEN - LAYERS * LATENT * 2 == 10_296


@pytest.mark.parametrize("engine", ["ideal", "vllm"])
def test_kv_bytes_per_token_and_per_sequence(engine):
    for context in (K8, K128):
        d = estimate(FIXTURE, engine, context)
        assert d["kv_bytes_per_token"] == VLLM_PER_TOKEN
        assert d["kv_bytes_per_sequence"] == VLLM_PER_TOKEN * context  # every layer holds every token
    assert estimate(FIXTURE, "ideal", K8)["kv_bytes_per_sequence"] == 820_445_184
    assert estimate(FIXTURE, "ideal", K128)["kv_bytes_per_sequence"] == 13_127_122_944


@pytest.mark.parametrize("engine", ["hf", "llama.cpp"])
def test_hf_and_llama_cpp_keep_the_indexer_key_in_16_bits(engine):
    for context in (K8, K128):
        assert estimate(FIXTURE, engine, context)["kv_bytes_total"] == HF_PER_TOKEN * context
    assert estimate(FIXTURE, "hf", K8)["kv_bytes_total"] == 899_678_208


@pytest.mark.parametrize("engine, name", [("sglang", "SGLang"), ("trtllm", "TensorRT-LLM")])
def test_sglang_and_trtllm_refuse_in_their_words(engine, name):
    d = estimate(FIXTURE, engine, K8)
    assert d["kv_bytes_total"] is None
    assert list(d["refusals"]) == [
        f"kvplan does not model how {name} allocates a sparse-attention indexer key cache (index_head_dim 128) "
        f"(its rules for them are not built into kvplan yet), so it does not size glm-5.1 for {name} "
        "(use --engine vllm, hf, llama.cpp or ideal)"]


def test_parameters_match_the_safetensors_less_the_mtp_layer():
    """753,864,139,008 elements in GLM-5.1's 282 safetensors (SOURCES.md) include the MTP layer 78: a whole MoE
    decoder layer with its indexer, eh_proj (2h -> h), enorm, hnorm and shared_head.norm (no own embedding or
    head in this checkpoint's tensor list). By hand, one MoE layer:"""
    h = 6144
    attention = (h * 2048 + 2048 + 2048 * 64 * 256  # q_a_proj, q_a_layernorm, q_b_proj (64 heads x (192 + 64))
                 + h * 576 + 512 + 512 * 64 * (192 + 256)  # kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj
                 + 64 * 256 * h)  # o_proj
    indexer = 2048 * 32 * 128 + h * 128 + 2 * 128 + h * 32  # wq_b, wk, k_norm (weight, bias), weights_proj
    moe = 256 * 3 * h * 2048 + 256 * h + 256 + 3 * h * 2048  # experts, router, e_score_correction_bias, shared
    mtp = attention + indexer + moe + 2 * h + 2 * h * h + 3 * h
    conv = convert_config(load())
    assert conv.parameters == 753_864_139_008 - mtp == 743_911_218_432
    assert conv.inactive_parameters == 75 * 248 * 3 * h * 2048  # 248 of 256 experts unread, 75 MoE layers
    assert conv.mtp_layers == 1


def test_the_catalog_entry_equals_the_import(tmp_path):
    from kvplan.sources.catalog import SPECS_DIR, load_spec_file
    from kvplan.sources.resolve import spec_from_source

    (tmp_path / "config.json").write_text(FIXTURE.read_text())
    imported = spec_from_source(str(tmp_path), "glm-5.1").model_dump(exclude={"source", "notes"})
    shipped = load_spec_file(SPECS_DIR / "glm-5.1.yaml").model_dump(exclude={"source", "notes"})
    assert imported == shipped


# ------------------------------------------------------------------ layers that reuse another's top-k

def test_index_cache_layouts_are_refused_by_name():
    # GLM-5.2's IndexCache (index_topk_freq 4, index_skip_topk_offset 3): 57 layers reuse, see the count below
    config = dict(load(), index_topk_freq=4, index_skip_topk_offset=3)
    with pytest.raises(ConfigError, match=re.escape("index_topk_freq is 4, which makes 57 of 78 layers (first: 3) "
                                                    "reuse another layer's top-k and cache no indexer keys")):
        convert_config(config)
    types = ["full"] * 78
    types[5] = "shared"
    with pytest.raises(ConfigError, match=re.escape("which makes 1 of 78 layers (first: 5) reuse")):
        convert_config(dict(load(), indexer_types=types))
    with pytest.raises(ConfigError, match=r"index_topk_pattern is .*1 of 78 layers \(first: 1\)"):
        convert_config(dict(load(), index_topk_pattern="FS" + "F" * 76))
    with pytest.raises(ConfigError, match="indexer_types is .*expected 78 entries"):
        convert_config(dict(load(), indexer_types=["full"] * 77))


def test_every_layer_indexing_is_the_same_cache_however_it_is_written():
    base = convert_config(load()).fields
    for extra in (dict(indexer_types=["full"] * 78), dict(index_topk_pattern="F" * 78),
                  dict(index_topk_freq=1, index_skip_topk_offset=5), dict(index_share_for_mtp_iteration=True)):
        assert convert_config(dict(load(), **extra)).fields == base


def test_freq_4_layer_count_by_hand():
    # the refusal's count, offset 3: layer i indexes when max(i - 2, 0) % 4 == 0: layers 0, 1, 2 (max 0) and
    # those with i - 2 in 4, 8, ..., 72 (18 layers); the other 75 - 18 = 57 of layers 3..77 reuse a top-k
    assert [i for i in range(78) if max(i - 3 + 1, 0) % 4 == 0][:5] == [0, 1, 2, 6, 10]
    assert sum(1 for i in range(78) if max(i - 3 + 1, 0) % 4) == 75 - 18 == 57


# ------------------------------------------------------------------ against transformers itself

def _glm_config(**kw):
    from transformers import GlmMoeDsaConfig

    return GlmMoeDsaConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
        q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, index_head_dim=128,
        index_n_heads=2, index_topk=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        intermediate_size=64, first_k_dense_replace=1, vocab_size=128, n_group=1, topk_group=1, dtype="bfloat16",
        **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from hf_real import tiny_model

    config = _glm_config()
    model = tiny_model(config)
    folder = tmp_path_factory.mktemp("glm_moe_dsa")
    model.save_pretrained(folder)
    return config, model, str(folder)


def _hf(folder: str, context: int, batch: int, **options) -> int:
    return kvplan.estimate(folder, engine="hf", context=context, batch=batch, **options).to_dict()["kv_bytes_total"]


def test_the_oracle_holds_latent_rope_key_and_indexer_key(saved):
    from hf_real import forward_cache, prompt

    config, model, folder = saved
    shapes = {(t.layer, t.name): (t.shape, t.dtype) for t in forward_cache(model, prompt(config, 2, 10)).tensors}
    assert shapes[(0, "keys")] == ((2, 1, 10, 32), "bfloat16")  # the latent, kv_lora_rank 32
    assert shapes[(0, "values")] == ((2, 1, 10, 8), "bfloat16")  # the RoPE key, qk_rope_head_dim 8
    assert shapes[(0, "indexer_keys")] == ((2, 10, 128), "bfloat16")  # [B, T, index_head_dim]
    # by hand: 3 layers x (32 + 8 + 128) x 2 B x batch 2 x 10 tokens
    assert _hf(folder, 10, 2) == 3 * (32 + 8 + 128) * 2 * 2 * 10 == 20_160


@pytest.mark.parametrize("batch, tokens", [(1, 7), (2, 10)])
def test_dynamic_cache_matches_transformers(saved, batch, tokens):
    from hf_real import forward_cache, prompt

    config, model, folder = saved
    real = forward_cache(model, prompt(config, batch, tokens))
    assert real.cache_class == "DynamicCache"
    assert _hf(folder, tokens, batch) == real.total


def test_generate_matches_transformers(saved):
    from hf_real import generate_cache, prompt

    config, model, folder = saved
    real = generate_cache(model, prompt(config, 2, 10), 3)
    assert _hf(folder, 13, 2, generate=True) == real.total


def test_generate_static_matches_transformers(saved):
    from hf_real import generate_cache, prompt

    config, model, folder = saved
    real = generate_cache(model, prompt(config, 2, 10), 3, cache_implementation="static")
    assert real.cache_class == "StaticCache"
    assert _hf(folder, 13, 2, generate=True, hf_cache="static") == real.total


def test_a_shared_indexer_layer_holds_no_indexer_keys_so_kvplan_refuses(tmp_path):
    """The refusal's premise, read from transformers: with indexer_types full, shared, full the middle layer
    caches its latent but no indexer key (20,160 - 2 x 10 x 128 x 2 B = 15,040 B)."""
    from hf_real import forward_cache, prompt, tiny_model

    config = _glm_config(indexer_types=["full", "shared", "full"])
    real = forward_cache(tiny_model(config), prompt(config, 2, 10))
    assert {(t.layer, t.name) for t in real.tensors if t.name == "indexer_keys"} == {(0, "indexer_keys"),
                                                                                   (2, "indexer_keys")}
    assert real.total == 20_160 - 2 * 10 * 128 * 2 == 15_040
    path = tmp_path / "config.json"
    path.write_text(config.to_json_string())
    with pytest.raises(InputError, match="indexer_types is .*1 of 3 layers \\(first: 1\\)"):
        kvplan.estimate(str(path), engine="hf", context=10, batch=2)


def test_parameter_formula_counts_what_transformers_builds(saved):
    from hf_real import parameter_count

    config, model, _ = saved
    assert convert_config(json.loads(config.to_json_string())).parameters == parameter_count(model)


# ------------------------------------------------------------------ the neighbours kvplan cannot size yet

@pytest.mark.parametrize("config, words", [
    # transformers 5.25 models/minimax: MiniMaxLightningAttention keeps MiniMaxCache.linear_cache [B, H, d, d]
    ({"model_type": "minimax"}, "model_type 'minimax' (MiniMax-Text-01 / MiniMax-M1: lightning-attention layers"),
    # the published MiniMax-Text-01 / M1 configs name their own type and the architecture
    ({"model_type": "minimax_text_01", "architectures": ["MiniMaxText01ForCausalLM"]}, "model_type 'minimax_text_01'"),
    ({"model_type": "minimax_m1", "architectures": ["MiniMaxM1ForCausalLM"]}, "model_type 'minimax_m1'"),
    # transformers 5.25 models/deepseek_v4: compressed sparse / heavily compressed attention layers
    ({"model_type": "deepseek_v4"}, "model_type 'deepseek_v4' (compressed sparse and heavily compressed attention"),
    ({"model_type": "dsv4", "architectures": ["DeepseekV4ForCausalLM"]}, "model_type 'dsv4' (compressed sparse"),
    # transformers 5.25 models/glm5_next: KDA beside MLA with a pooled indexer, flat or as a text_config
    ({"model_type": "glm5_next"}, "model_type 'glm5_next' (KDA linear attention"),
    ({"model_type": "glm5_next", "text_config": {}}, "text_config: model_type 'glm5_next' (KDA linear attention"),
])
def test_types_with_other_caches_are_refused_by_name_not_sized_as_attention(config, words):
    # every generic field present: without the refusal the generic path would size plain attention layers
    generic = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128}
    if "text_config" in config:
        config = dict(config, text_config=generic)
    else:
        config = dict(config, **generic)
    with pytest.raises(ConfigError, match=re.escape(words)) as raised:
        convert_config(config)
    assert "has no rule in kvplan yet; kvplan refuses it rather than size it as attention alone" in str(raised.value)
