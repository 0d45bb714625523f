"""Attention that varies by layer (issue #13): Gemma 4's full layers with their own head size and KV heads,
Gemma-3n / Gemma 4 KV sharing, DeepSeek-V3.2's sparse-attention indexer keys.

Every expected value is worked by hand here from the rule's source (cited at each number), never taken from
kvplan. Fixtures: tests/fixtures/hf_configs_next/ (SOURCES.md says where each comes from).

The Gemma types have no parameter formula (their weights are the headers' business, issue #13's task I): their
config.json is converted with `convert_config` and given the number of parameters a tiny stand-in needs, which
moves no KV byte; DeepSeek-V3.2 is sized from config.json alone through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kvplan
from cli_helpers import run_cli
from kvplan.model.kinds import KINDS, LayerKind, index_key_bytes
from kvplan.model.spec import ModelSpec
from kvplan.sources.hf_config import ConfigError, convert_config

NEXT = Path(__file__).parent / "fixtures" / "hf_configs_next"
K8, K128 = 8192, 131072


def _config(name: str) -> dict:
    return json.loads((NEXT / f"{name}.json").read_text())


def _spec(config: dict, name: str = "toy") -> ModelSpec:
    fields = convert_config(config).fields
    # num_parameters: the embedding table (the least a spec accepts); no KV byte depends on it
    return ModelSpec(name=name, source="test", num_parameters=fields["vocab_size"] * fields["hidden_size"] * 2, **fields)


def _ideal(spec, context: int, **options) -> dict:
    return kvplan.estimate(spec, engine="ideal", context=context, **options).to_dict()


# ------------------------------------------------------------------ DeepSeek-V3.2 (deepseek_v32)


def test_index_key_bytes_is_fp8_plus_one_fp32_scale_per_128():
    # vLLM 0.32 deepseek_v2.py Indexer: head_dim + head_dim // quant_block_size (128) * 4, uint8
    assert index_key_bytes(128) == 128 + 4 == 132
    assert index_key_bytes(256) == 256 + 8


def test_deepseek_v32_sized_from_config_json_alone(capsys):
    # 61 MLA layers x (latent (512 + 64) x 2 B bf16 = 1,152 + indexer key 132) = 61 x 1,284 = 78,324 B per token
    per_token = 61 * ((512 + 64) * 2 + 128 + 4)
    assert per_token == 78324
    for context in (K8, K128):
        res = run_cli(capsys, "estimate", str(NEXT / "deepseek-v3.2.json"), "--engine", "ideal",
                      "--context", str(context), "-f", "json")
        assert res.exit_code == 0, res.stderr
        data = json.loads(res.stdout)
        assert data["kv_bytes_per_token"] == per_token
        assert data["kv_bytes_per_sequence"] == per_token * context
    assert per_token * K8 == 641630208 and per_token * K128 == 10266083328  # docs/architectures.md section 3
    # the indexer's fp32 scales are scale bytes: 61 x 4
    assert data["quantisation_overhead_bytes_per_token"] == 61 * 4


def test_deepseek_v32_fields_and_parameters():
    conv = convert_config(_config("deepseek-v3.2"))
    assert conv.model_type == "deepseek_v32"
    assert (conv.fields["index_head_dim"], conv.fields["index_n_heads"], conv.fields["index_topk"]) == (128, 64, 2048)
    plain = {k: v for k, v in _config("deepseek-v3.2").items() if not k.startswith("index_")}
    v3 = convert_config({**plain, "model_type": "deepseek_v3"})
    # transformers 5.25 DeepseekV32Indexer per layer: wq_b 1536 x (64 x 128), wk 7168 x 128,
    # k_norm LayerNorm weight + bias 2 x 128, weights_proj 7168 x 64
    indexer = 1536 * 64 * 128 + 7168 * 128 + 2 * 128 + 7168 * 64
    assert conv.parameters - v3.parameters == 61 * indexer


def test_deepseek_v32_engines():
    spec = _spec(_config("deepseek-v3.2"), "deepseek-v3.2")
    per_token = 61 * 1284
    # vLLM: 64-token blocks (FlashMLA); 8,192 tokens fill 128 blocks exactly
    assert kvplan.estimate(spec, engine="vllm", context=K8).to_dict()["kv_bytes_total"] == per_token * K8
    # transformers 5.25: DynamicIndexedLayer keeps indexer keys [B, T, 128] in bf16: (512 + 64 + 128) x 2 B
    assert kvplan.estimate(spec, engine="hf", context=K8).to_dict()["kv_bytes_total"] == 61 * (576 + 128) * 2 * K8
    # llama.cpp: llama_kv_cache_dsa's indexer cache is one K head of 128 in type_k (f16), no V (MLA);
    # n_ctx 8,192 is already a multiple of the 256-cell padding
    cpp = kvplan.estimate(spec, engine="llama.cpp", context=K8).to_dict()
    assert cpp["kv_bytes_total"] == 61 * (576 + 128) * 2 * K8


def test_deepseek_v32_vllm_refuses_fp8_it_would_store_as_fp8_ds_mla(capsys):
    res = run_cli(capsys, "estimate", str(NEXT / "deepseek-v3.2.json"), "--kv-cache-dtype", "fp8")
    assert res.exit_code == 2
    assert "fp8_ds_mla (656 bytes per token" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("engine", ["sglang", "trtllm"])
def test_unmodelled_engines_refuse_by_name(engine):
    for name, field in (("deepseek-v3.2", "index_head_dim"), ("gemma-4-31b-it", "global_head_dim"),
                        ("gemma-3n-e4b", "num_kv_shared_layers")):
        cache = kvplan.estimate(_spec(_config(name)), engine=engine, context=K8).to_dict()
        assert cache["kv_bytes_total"] is None
        assert field in cache["refusals"][0]


def test_sparse_attention_decode_reads_topk_latents():
    from kvplan.model.formats import parse_format_pair
    from kvplan.model.layout import CacheLayout
    from kvplan.plan.planner import sparse_kv_read_bytes

    spec = _spec(_config("deepseek-v3.2"))
    layout = CacheLayout(spec, parse_format_pair("auto", "bf16"))
    # at 8,192 tokens a decode step skips 8,192 - 2,048 latents of 1,152 B in each of 61 layers
    assert sparse_kv_read_bytes(layout, {LayerKind.MLA: 61}, K8) == 61 * 1152 * (K8 - 2048)
    assert sparse_kv_read_bytes(layout, {LayerKind.MLA: 61}, 1000) == 0


def test_deepseek_v32_refusals():
    base = _config("deepseek-v3.2")
    with pytest.raises(ConfigError, match="layer_types has 'full_attention'"):
        convert_config({**base, "layer_types": ["full_attention"] * 61})
    with pytest.raises(ValueError, match="index_head_dim \\(100\\) must be a multiple of 128"):
        ModelSpec(name="x", source="x", num_parameters=10**9, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, vocab_size=10, kv_lora_rank=32, qk_rope_head_dim=8, index_head_dim=100)
    with pytest.raises(ValueError, match="index_head_dim is the DeepSeek sparse-attention indexer of MLA layers"):
        ModelSpec(name="x", source="x", num_parameters=10**9, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, vocab_size=10, index_head_dim=128)


# ------------------------------------------------------------------ Gemma 4 (gemma4 / gemma4_text)


def test_gemma4_31b_fields():
    fields = convert_config(_config("gemma-4-31b-it")).fields
    assert fields["global_head_dim"] == 512 and fields["num_global_key_value_heads"] == 4  # attention_k_eq_v true
    assert fields["head_dim"] == 256 and fields["num_key_value_heads"] == 16 and fields["sliding_window"] == 1024
    assert fields["layer_pattern"] == ({"sliding_attention": 5}, {"full_attention": 1})


def test_gemma4_31b_by_hand():
    # 60 layers, every 6th full (10 full, 50 sliding), bf16:
    # sliding: 16 KV heads x (256 + 256) x 2 B = 16,384 B per token per layer, window 1,024
    # full: 4 KV heads x (512 + 512) x 2 B = 8,192 B (global_head_dim, num_global_key_value_heads: K and V both
    # cached, attention_k_eq_v notwithstanding: transformers 5.25 Gemma4TextAttention keeps k_norm(K)+RoPE and v_norm(V))
    sliding, full = 16 * 512 * 2, 4 * 1024 * 2
    spec = _spec(_config("gemma-4-31b-it"))
    assert _ideal(spec, K8)["kv_bytes_per_token"] == 50 * sliding + 10 * full == 901120
    assert _ideal(spec, K8)["kv_bytes_per_sequence"] == 50 * sliding * 1024 + 10 * full * K8 == 1509949440
    assert _ideal(spec, K128)["kv_bytes_per_sequence"] == 50 * sliding * 1024 + 10 * full * K128 == 11576279040


def test_gemma4_read_as_one_geometry_would_be_the_issue_s_error():
    # issue #13 measured +44% at 8k on Gemma-4-26B-A4B when the global layers take the sliding sizes: here the
    # 31B's full layers would be 16 x 512 x 2 = 16,384 B, not 8,192: 10 x 8,192 x 8,192 more bytes at 8k
    spec = _spec(_config("gemma-4-31b-it"))
    wrong = ModelSpec(**{**spec.model_dump(), "global_head_dim": None, "num_global_key_value_heads": None})
    assert _ideal(wrong, K8)["kv_bytes_per_sequence"] - _ideal(spec, K8)["kv_bytes_per_sequence"] == 10 * 8192 * K8


def test_gemma4_global_kv_heads_need_attention_k_eq_v():
    text = {**_config("gemma-4-31b-it")["text_config"], "attention_k_eq_v": False}
    conv = convert_config({"model_type": "gemma4", "text_config": text})
    assert "num_global_key_value_heads" not in conv.fields and conv.fields["global_head_dim"] == 512
    assert any("attention_k_eq_v is false" in n for n in conv.notes)


def test_gemma4_global_head_dim_defaults_to_512():
    # Gemma4TextConfig.__post_init__: kwargs.pop("global_head_dim", 512)
    text = {k: v for k, v in _config("gemma-4-31b-it")["text_config"].items() if k != "global_head_dim"}
    conv = convert_config({"model_type": "gemma4", "text_config": text})
    assert conv.fields["global_head_dim"] == 512
    assert any("global_head_dim" in n for n in conv.notes)  # the default is named


def test_gemma4_tensor_parallel_per_layer_group():
    spec = _spec(_config("gemma-4-31b-it"))
    # tp 8: sliding 16 // 8 = 2 heads per rank, full 4 < 8 heads replicated: max(1, 4 // 8) = 1 per rank
    assert KINDS[LayerKind.SLIDING].kv_heads_per_rank(spec, 8) == 2
    assert KINDS[LayerKind.FULL].kv_heads_per_rank(spec, 8) == 1
    # tp 32 divides the 32 attention heads; the full layers' 4 KV heads replicate evenly; sliding 16 too
    assert kvplan.estimate(spec, engine="ideal", context=K8, tp=32).to_dict()["kv_bytes_total"] > 0
    # a refusal names the layer group: 16 KV heads over 6 ranks
    with pytest.raises(Exception, match="attention heads"):
        kvplan.estimate(spec, engine="ideal", context=K8, tp=6)
    bad = ModelSpec(**{**spec.model_dump(), "num_global_key_value_heads": 8, "num_attention_heads": 48})
    # 8 full-layer KV heads over 12 ranks cannot replicate evenly; the refusal says which layers
    assert KINDS[LayerKind.FULL].tensor_parallel_problem(bad, 12) == (
        "--tensor-parallel-size 12 is not a multiple of toy's 8 KV heads (full attention layers), "
        "so they cannot be replicated evenly"
    )


def test_gemma4_per_layer_config_refusals():
    text = {k: v for k, v in _config("gemma-4-31b-it")["text_config"].items()
            if k not in ("global_head_dim", "num_global_key_value_heads")}
    good = {f"{i:02d}": {"head_dim": 512, "num_key_value_heads": 4} for i in range(5, 60, 6)}
    conv = convert_config({"model_type": "gemma4", "text_config": {**text, "per_layer_config": good}})
    assert (conv.fields["global_head_dim"], conv.fields["num_global_key_value_heads"]) == (512, 4)
    uneven = {**good, "11": {"head_dim": 256, "num_key_value_heads": 4}}
    with pytest.raises(ConfigError, match="per_layer_config overrides layers"):
        convert_config({"model_type": "gemma4", "text_config": {**text, "per_layer_config": uneven}})
    other = {**good, "05": {"head_dim": 512, "sliding_window": 8}}
    with pytest.raises(ConfigError, match="per_layer_config.05"):
        convert_config({"model_type": "gemma4", "text_config": {**text, "per_layer_config": other}})
    with pytest.raises(ConfigError, match="use_bidirectional_attention is 'all'"):
        convert_config({"model_type": "gemma4", "text_config": {**text, "use_bidirectional_attention": "all"}})


# ------------------------------------------------------------------ Gemma-3n (gemma3n / gemma3n_text)


def test_gemma3n_e4b_by_hand():
    # Gemma3nTextConfig (the E4B sizes): 35 layers, one full in five ((i + 1) % 5 == 0), the last 15 share KV:
    # layers 0-19 own KV, 4 of them full (4, 9, 14, 19) and 16 sliding (window 512);
    # 2 KV heads x (256 + 256) x 2 B = 2,048 B per token per layer
    per_layer = 2 * 512 * 2
    spec = _spec(_config("gemma-3n-e4b"))
    assert _ideal(spec, K8)["kv_bytes_per_token"] == 20 * per_layer == 40960
    assert _ideal(spec, K8)["kv_bytes_per_sequence"] == 16 * per_layer * 512 + 4 * per_layer * K8 == 83886080
    assert _ideal(spec, K128)["kv_bytes_per_sequence"] == 16 * per_layer * 512 + 4 * per_layer * K128 == 1090519040


def test_gemma3n_sharing_saves_in_vllm_and_transformers():
    spec = _spec(_config("gemma-3n-e4b"))
    unshared = ModelSpec(**{**spec.model_dump(), "num_kv_shared_layers": 0})
    # vLLM 0.32 gpu_model_runner.get_kv_cache_spec skips a layer with kv_sharing_target_layer_name: the 15 shared
    # layers (12 sliding, 3 full) hold nothing; 16-token blocks: 8,192 is whole blocks, the window 512 holds
    # ceil(511 / 16) + 1 = 33 blocks = 528 slots
    vllm = kvplan.estimate(spec, engine="vllm", context=K8).to_dict()["kv_bytes_total"]
    assert vllm == 16 * 2048 * 528 + 4 * 2048 * K8
    more = kvplan.estimate(unshared, engine="vllm", context=K8).to_dict()["kv_bytes_total"]
    assert more - vllm == 12 * 2048 * 528 + 3 * 2048 * K8
    # transformers 5.25: the shared layers' cache entries are dummy layers; a sliding layer keeps W - 1 = 511
    hf = kvplan.estimate(spec, engine="hf", context=K8).to_dict()["kv_bytes_total"]
    assert hf == 16 * 2048 * 511 + 4 * 2048 * K8


def test_gemma3n_llamacpp_refuses_a_split_its_loader_does_not_make():
    # llama.cpp src/models/gemma3n.cpp fixes n_layer_kv_from_start = 20: E4B (35 - 15) and E2B (30 - 10) match
    spec = _spec(_config("gemma-3n-e4b"))
    assert kvplan.estimate(spec, engine="llama.cpp", context=K8).to_dict()["kv_bytes_total"] is not None
    other = ModelSpec(**{**spec.model_dump(), "num_kv_shared_layers": 10})
    cache = kvplan.estimate(other, engine="llama.cpp", context=K8).to_dict()
    assert cache["kv_bytes_total"] is None and "n_layer_kv_from_start = 20" in cache["refusals"][0]


def test_gemma3n_shared_layers_need_an_owner_of_their_type():
    text = {**_config("gemma-3n-e4b")["text_config"], "layer_types": ["sliding_attention"] * 30 + ["full_attention"] * 5,
            "num_kv_shared_layers": 5}
    with pytest.raises(ConfigError, match="leaves no full_attention layer before layer 30"):
        convert_config({"model_type": "gemma3n", "text_config": text})


def test_gemma3n_notes_where_vllm_reads_another_layer():
    # transformers: the last owning layer of the type; vLLM gemma3n.py: first_shared - 2 (sliding), - 1 (full)
    text = {**_config("gemma-3n-e4b")["text_config"],
            "layer_types": ["sliding_attention", "full_attention"] * 5, "num_hidden_layers": 10,
            "num_kv_shared_layers": 4}
    conv = convert_config({"model_type": "gemma3n", "text_config": text})
    # first shared layer 6: transformers reads 4 (sliding) and 5 (full); vLLM 4 and 5 too: no note
    assert not any("vLLM and llama.cpp" in n for n in conv.notes)
    text["num_kv_shared_layers"] = 3  # first shared 7 (full): transformers 6 / 5, vLLM 5 (sliding), 6 (full)
    conv = convert_config({"model_type": "gemma3n", "text_config": text})
    assert any("read layer 6 in transformers but layer 5" in n for n in conv.notes)


# ------------------------------------------------------------------ fail closed


@pytest.mark.parametrize("key, value", [
    ("num_kv_shared_layers", 4), ("global_head_dim", 512), ("num_global_key_value_heads", 2),
    ("attention_k_eq_v", True), ("per_layer_config", {"1": {"head_dim": 8}}), ("index_head_dim", 128),
    ("index_topk", 2048), ("indexer_types", ["full", "shared"]),
])
@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "some_new_type"])
def test_geometry_fields_are_refused_where_unread(key, value, model_type):
    config = {"model_type": model_type, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 128, "intermediate_size": 64, key: value}
    with pytest.raises(ConfigError, match=f"{key} is "):
        convert_config(config)


def test_measure_refuses_what_it_cannot_build():
    from kvplan.errors import InputError
    from kvplan.measure.predict import build_arch

    for name, field in (("gemma-4-31b-it", "global_head_dim"), ("deepseek-v3.2", "index_head_dim")):
        with pytest.raises(InputError, match=field):
            build_arch(_spec(_config(name)))


# ------------------------------------------------------------------ the planner's attention FLOPs


def _flops(name: str, context: int, decode: bool) -> int:
    from kvplan.model.formats import parse_format_pair
    from kvplan.model.kinds import count_kinds
    from kvplan.model.layout import CacheLayout
    from kvplan.plan.planner import attention_flops_decode, attention_flops_prefill

    spec = _spec(_config(name))
    layout = CacheLayout(spec, parse_format_pair("auto", "bf16"))
    counts = count_kinds(spec.layer_kinds)
    fn = attention_flops_decode if decode else attention_flops_prefill
    return fn(spec, counts, layout, context, 1)


def test_gemma4_attention_flops_use_each_kind_s_head_size():
    # 2 x 32 query heads x (d_k + d_v) per query-key pair: full layers 512 + 512 over every token, sliding
    # layers 256 + 256 over the last 1,024
    assert _flops("gemma-4-31b-it", K8, True) == 10 * 2 * 32 * 1024 * K8 + 50 * 2 * 32 * 512 * 1024


def test_sparse_attention_flops_attend_index_topk_latents():
    # MLA absorbed: 128 heads x (576 + 512) per pair, over min(context, 2,048) selected latents, plus the
    # indexer: 64 heads x 128 x 2 per key over every key, in each of 61 layers
    mla, indexer = 2 * 128 * (576 + 512), 2 * 64 * 128
    assert _flops("deepseek-v3.2", K8, True) == 61 * (mla * 2048 + indexer * K8)
    # prefill of 4,096: query i attends min(i, 2,048) latents (2,048 x 2,049 / 2 + 2,048 x 2,048 pairs); the
    # indexer scores the causal triangle 4,096 x 4,097 / 2
    pairs = 2048 * 2049 // 2 + (4096 - 2048) * 2048
    assert _flops("deepseek-v3.2", 4096, False) == 61 * (mla * pairs + indexer * (4096 * 4097 // 2))
