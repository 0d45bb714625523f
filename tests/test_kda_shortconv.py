"""Kimi Delta Attention (kimi_linear) and LFM2's short convolutions (lfm2, lfm2_moe): issue #13's last two state
layers, each a variant of kvplan.model.kinds.State.

Published configs (tests/fixtures/hf_configs_next, SOURCES.md): KV bytes per token, per sequence at 8k and 128k,
and the fixed state, worked by hand from the rule's source. Tiny random-weight models built with transformers'
own config classes (tests/hf_real.py): `--engine hf` equals the bytes transformers holds under DynamicCache,
generate() and generate(cache_implementation="static"). Every other engine gives its bytes or refuses.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

import kvplan
from kvplan.errors import InputError
from kvplan.sources.hf_config import convert_config

NEXT = Path(__file__).parent / "fixtures" / "hf_configs_next"
KIMI = NEXT / "kimi-linear-48b-a3b-instruct.json"
LFM2 = NEXT / "lfm2.5-1.2b-thinking-codex-w4a16.json"
K8, K128 = 8192, 131072


def _est(path, context: int, engine: str = "ideal", **kw) -> dict:
    return kvplan.estimate(str(path), engine=engine, context=context, batch=1, **kw).to_dict()


def _state_row(d: dict) -> dict:
    return next(k for k in d["by_kind"] if k["kind"] == "state")


def _state_bytes(d: dict) -> int:
    """One sequence's state over every state layer (and rank): the ideal / vLLM row's bytes_per_sequence, an
    engine row's bytes (batch 1)."""
    row = _state_row(d)
    return row["bytes_per_sequence"] if "bytes_per_sequence" in row else row["bytes"]


# ------------------------------------------------------------------ Kimi-Linear-48B-A3B, worked by hand

# linear_attn_config: kda_layers 1..26 without 4, 8, ..., 24 (20 layers), full_attn_layers 4, 8, 12, 16, 20, 24, 27
# (1-based: transformers 5.25 KimiLinearConfig.__post_init__ `layer_types[layer - 1]`; vLLM 0.32
# KimiLinearConfig.is_kda_layer `(layer_idx + 1) in kda_layers`): 7 MLA layers at 0-based 3, 7, ..., 23, 26.
KIMI_MLA_LAYERS, KIMI_KDA_LAYERS = 7, 20
# MLA (vLLM MLAAttentionSpec, one latent per token): kv_lora_rank 512 + qk_rope_head_dim 64, bf16
KIMI_PER_TOKEN = KIMI_MLA_LAYERS * (512 + 64) * 2  # 8,064 B
# vLLM 0.32 mamba_utils.py `kda_state_shape(tp=1, num_heads=32, head_dim=128, conv_kernel_size=4)`:
# conv_dim = 32 x 128 + 2 x 32 x 128 = 12,288, conv state (K - 1 = 3, 12,288) in the model dtype (bf16);
# recurrent (32, 128, 128) in `kda_state_dtype`'s "auto": float32
KIMI_CONV = 3 * 12_288 * 2  # 73,728 B
KIMI_RECURRENT = 32 * 128 * 128 * 4  # 2,097,152 B
KIMI_STATE = KIMI_KDA_LAYERS * (KIMI_CONV + KIMI_RECURRENT)  # 43,417,600 B per sequence


def test_kimi_linear_layers_are_read_one_based():
    f = convert_config(json.loads(KIMI.read_text())).fields
    kinds = f["layer_types"]
    assert [i for i, k in enumerate(kinds) if k == "full_attention"] == [3, 7, 11, 15, 19, 23, 26]
    assert kinds.count("state") == KIMI_KDA_LAYERS
    assert (f["linear_num_heads"], f["linear_head_dim"], f["linear_conv_kernel_dim"]) == (32, 128, 4)
    assert f["mamba_ssm_cache_dtype"] == "float32"


@pytest.mark.parametrize("engine", ["ideal", "vllm"])
@pytest.mark.parametrize("context", [K8, K128])
def test_kimi_linear_published_bytes(engine, context):
    d = _est(KIMI, context, engine)
    assert d["kv_bytes_per_token"] == KIMI_PER_TOKEN == 8_064
    assert _state_bytes(d) == KIMI_STATE == 43_417_600
    assert d["kv_bytes_per_sequence"] == KIMI_PER_TOKEN * context + KIMI_STATE
    assert d["kv_bytes_per_sequence"] == {K8: 109_477_888, K128: 1_100_382_208}[context]


def test_kimi_linear_hf_keeps_every_kernel_column():
    # transformers 5.25 cache_utils.LinearAttentionLayer.lazy_initialization: conv (B, conv_dim, K) in the model's
    # dtype; chunk_kimi_delta_attention returns the recurrent state (B, H, dk, dv) in float32
    d = _est(KIMI, K8, "hf")
    assert _state_bytes(d) == KIMI_KDA_LAYERS * (4 * 12_288 * 2 + KIMI_RECURRENT)
    assert _state_row(d)["note"] == "conv [12288, 4] torch.bfloat16 + recurrent [32, 128, 128] torch.float32 per sequence"


def test_kimi_linear_llama_cpp_state_in_f32():
    # llama.cpp src/llama-hparams.cpp: n_embd_r = 3 (ssm_d_conv - 1) n_head() n_embd_head_kda = 36,864 floats,
    # n_embd_s = n_embd_head_kda^2 n_head() = 524,288 floats, both f32 (llama_memory_recurrent)
    d = _est(KIMI, K8, "llama.cpp")
    assert _state_bytes(d) == KIMI_KDA_LAYERS * (3 * 3 * 32 * 128 + 128 * 128 * 32) * 4


def test_kimi_linear_vllm_tensor_parallel_splits_the_heads():
    # kda_state_shape(tp=4): conv (3, 12,288 / 4), recurrent (32 / 4, 128, 128) per rank
    d = kvplan.estimate(str(KIMI), engine="vllm", context=K8, batch=1, tp=4).to_dict()
    assert _state_bytes(d) == KIMI_KDA_LAYERS * (3 * 3_072 * 2 + 8 * 128 * 128 * 4) * 4


@pytest.mark.parametrize("engine", ["sglang", "trtllm"])
def test_kimi_linear_engines_without_a_read_rule_refuse(engine):
    d = _est(KIMI, K8, engine)
    assert d["kv_bytes_total"] is None
    assert "Kimi Delta Attention state (linear_num_heads)" in " ".join(d["refusals"])


# ------------------------------------------------------------------ LFM2.5-1.2B, worked by hand

# layer_types: 6 "full_attention" (0-based 2, 5, 8, 10, 12, 14), 10 "conv"; 8 KV heads x 2048 / 32 = 64;
# dtype float32 (this checkpoint's config.json says so: 4 B)
LFM2_PER_TOKEN = 6 * 2 * 8 * 64 * 4  # 24,576 B
# vLLM 0.32 mamba_utils.py `short_conv_state_shape(tp=1, conv_dim=2048, conv_kernel=conv_L_cache=3)`:
# (K - 1 = 2, 2,048) in the model dtype; no SSM tensor
LFM2_CONV = 2 * 2_048 * 4  # 16,384 B
LFM2_STATE = 10 * LFM2_CONV  # 163,840 B per sequence


@pytest.mark.parametrize("engine", ["ideal", "vllm"])
@pytest.mark.parametrize("context", [K8, 128_000])  # 128k: the model's max_position_embeddings 128,000
def test_lfm2_published_bytes(engine, context):
    d = _est(LFM2, context, engine)
    assert d["kv_bytes_per_token"] == LFM2_PER_TOKEN
    assert _state_bytes(d) == LFM2_STATE
    assert d["kv_bytes_per_sequence"] == LFM2_PER_TOKEN * context + LFM2_STATE
    assert d["kv_bytes_per_sequence"] == {K8: 201_490_432, 128_000: 3_145_891_840}[context]


def test_lfm2_at_131072_tokens_in_the_ideal_cache():
    d = _est(LFM2, K128, "ideal")
    assert d["kv_bytes_per_sequence"] == LFM2_PER_TOKEN * K128 + LFM2_STATE == 3_221_389_312


def test_lfm2_hf_and_llama_cpp_state():
    # transformers 5.25: Lfm2ShortConv's "conv" layer keeps (B, hidden_size, conv_L_cache) in the model's dtype
    hf = _state_row(_est(LFM2, K8, "hf"))
    assert hf["bytes"] == 10 * 2_048 * 3 * 4
    assert hf["note"] == "conv [2048, 3] torch.float32 per sequence"
    # llama.cpp n_embd_r = n_embd x (n_shortconv_l_cache - 1), f32; n_embd_s = 0
    assert _state_bytes(_est(LFM2, K8, "llama.cpp")) == 10 * 2_048 * 2 * 4


def test_lfm2_tensor_parallel_splits_the_channels():
    d = kvplan.estimate(str(LFM2), engine="vllm", context=K8, batch=1, tp=2).to_dict()
    assert _state_bytes(d) == 10 * (2 * 1_024 * 4) * 2


# ------------------------------------------------------------------ fail closed: what the handlers refuse

def _kimi_variant(edit) -> dict:
    config = json.loads(KIMI.read_text())
    edit(config)
    return config


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["linear_attn_config"].update(gate_lower_bound=-5.0), "linear_attn_config.gate_lower_bound"),
    (lambda c: c["linear_attn_config"].update(num_k_heads=16), "linear_attn_config.num_k_heads"),
    (lambda c: c["linear_attn_config"]["kda_layers"].remove(26), "kda_layers and full_attn_layers"),
    (lambda c: c["linear_attn_config"]["kda_layers"].append(4), "kda_layers and full_attn_layers"),
    (lambda c: c["linear_attn_config"].update(num_heads=0), "linear_attn_config.num_heads"),
    (lambda c: c["linear_attn_config"].update(head_dim=None), "linear_attn_config.head_dim"),
    (lambda c: c["linear_attn_config"].update(short_conv_kernel_size=True), "linear_attn_config.short_conv_kernel_size"),
    (lambda c: c.pop("linear_attn_config"), "linear_attn_config"),
    (lambda c: c.update(layer_types=["full_attention"] * 27), "layer_types and linear_attn_config"),
])
def test_kimi_linear_refuses_what_it_cannot_size(edit, named):
    with pytest.raises(InputError, match=named.replace(".", r"\.")):
        convert_config(_kimi_variant(edit))


@pytest.mark.parametrize("key, value, kind_sizes", [
    ("num_heads", 16, (3 * (3 * 16 * 128) * 2, 16 * 128 * 128 * 4)),
    ("head_dim", 64, (3 * (3 * 32 * 64) * 2, 32 * 64 * 64 * 4)),
    ("short_conv_kernel_size", 3, (2 * 12_288 * 2, KIMI_RECURRENT)),
])
def test_kimi_linear_each_kda_size_is_read(tmp_path, key, value, kind_sizes):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_kimi_variant(lambda c: c["linear_attn_config"].update({key: value}))))
    assert _state_bytes(_est(path, K8)) == KIMI_KDA_LAYERS * sum(kind_sizes)


@pytest.mark.parametrize("edit, named", [
    (lambda c: c.update(conv_dim=1024), "conv_dim"),
    (lambda c: c.update(layer_types=["conv", "mamba"] * 8), "layer_types"),
    (lambda c: c.update(full_attn_idxs=[0, 1]), "layer_types and full_attn_idxs"),
    (lambda c: c.update(conv_L_cache=0), "conv_L_cache"),
])
def test_lfm2_refuses_what_it_cannot_size(edit, named):
    config = json.loads(LFM2.read_text())
    edit(config)
    with pytest.raises(InputError, match=named):
        convert_config(config)


def test_lfm2_full_attn_idxs_builds_the_layers():
    # Lfm2Config.__post_init__: no layer_types -> "full_attention" at full_attn_idxs, "conv" elsewhere
    config = json.loads(LFM2.read_text())
    config.pop("layer_types")
    config["full_attn_idxs"] = [2, 5, 8, 10, 12, 14]
    assert convert_config(config).fields == convert_config(json.loads(LFM2.read_text())).fields
    moe = dict(config, model_type="lfm2_moe", architectures=["Lfm2MoeForCausalLM"])
    with pytest.raises(InputError, match="no layer_types"):  # Lfm2MoeConfig has no full_attn_idxs rule
        convert_config(moe)


# ------------------------------------------------------------------ against transformers itself

BATCH, PROMPT, NEW = 2, 7, 3


def _kimi():
    from transformers import KimiLinearConfig

    return KimiLinearConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, q_lora_rank=None, intermediate_size=64,
        moe_intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, vocab_size=128, dtype="bfloat16",
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
        linear_attn_config={"kda_layers": [1, 2, 4], "full_attn_layers": [3], "num_heads": 2, "head_dim": 16,
                            "short_conv_kernel_size": 4})


def _lfm2():
    from transformers import Lfm2Config

    return Lfm2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=128, layer_types=["conv", "full_attention", "conv", "conv"],
                      dtype="bfloat16")


def _lfm2_moe():
    from transformers import Lfm2MoeConfig

    return Lfm2MoeConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                         num_dense_layers=1, vocab_size=128, layer_types=["conv", "full_attention", "conv", "conv"],
                         dtype="bfloat16")


MODELS = {"kimi_linear": _kimi, "lfm2": _lfm2, "lfm2_moe": _lfm2_moe}


def _read_all() -> dict:
    """In a child process (as tests/test_hf_real_state.py does): each model's caches after a forward pass,
    generate() and generate(static), read back tensor by tensor."""
    from hf_real import forward_cache, generate_cache, prompt, tiny_model

    out = {}
    for name, make in MODELS.items():
        config = make()
        model = tiny_model(config)
        ids = prompt(config, BATCH, PROMPT)
        forward = forward_cache(model, ids)
        generated = generate_cache(model, ids, NEW)
        static = generate_cache(model, ids, NEW, cache_implementation="static")
        out[name] = {
            "config": json.loads(config.to_json_string()),
            "forward": [forward.cache_class, forward.total,
                        sorted({(t.name.split("[")[0], tuple(t.shape[1:]), t.dtype) for t in forward.tensors})],
            "generate": [generated.cache_class, generated.total],
            "static": [static.cache_class, static.total],
            "quantized_refusal": _quantized_refusal(model, ids),
            # every tensor a checkpoint holds: parameters and persistent buffers (e_score_correction_bias,
            # expert_bias), a tied weight once
            "weights": sum(t.numel() for t in {(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)): t
                                                for t in model.state_dict().values()}.values()),
        }
    return out


def _quantized_refusal(model, ids) -> str:
    from hf_real import quantized_generate_cache

    try:
        quantized_generate_cache(model, ids, NEW, backend="fp8")
    except ValueError as exc:
        return str(exc)
    return "no refusal"


@pytest.fixture(scope="module")
def real() -> dict:
    code = ("import json, sys; sys.path.insert(0, %r); import test_kda_shortconv as t; print(json.dumps(t._read_all()))"
            % str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _path(tmp_path, real, name) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(real[name]["config"]))
    return str(path)


def _hf(path: str, **kw) -> int:
    return kvplan.estimate(path, engine="hf", batch=BATCH, **kw).to_dict()["kv_bytes_total"]


def test_transformers_keeps_the_tensors_the_rules_say(real):
    # the read-back itself, against the rules the engines state (not kvplan's arithmetic): KDA conv (B, 3 H d, K)
    # bf16 + recurrent (B, H, d, d) fp32; MLA latents K [1, kv_lora_rank], V [1, qk_rope_head_dim]; LFM2 conv
    # (B, hidden, conv_L_cache) bf16 on the conv layers only
    assert real["kimi_linear"]["forward"][2] == [
        ["conv_states", [96, 4], "bfloat16"], ["keys", [1, PROMPT, 32], "bfloat16"],
        ["recurrent_states", [2, 16, 16], "float32"], ["values", [1, PROMPT, 8], "bfloat16"]]
    for name in ("lfm2", "lfm2_moe"):
        assert real[name]["forward"][2] == [["conv_states", [64, 3], "bfloat16"], ["keys", [2, PROMPT, 16], "bfloat16"],
                                            ["values", [2, PROMPT, 16], "bfloat16"]]


@pytest.mark.parametrize("name", MODELS)
def test_dynamic_cache_matches_transformers(tmp_path, real, name):
    cache_class, total, _ = real[name]["forward"]
    assert cache_class == "DynamicCache"
    assert _hf(_path(tmp_path, real, name), context=PROMPT) == total


@pytest.mark.parametrize("name", MODELS)
def test_generate_matches_transformers(tmp_path, real, name):
    cache_class, total = real[name]["generate"]
    assert cache_class == "DynamicCache"
    assert _hf(_path(tmp_path, real, name), context=PROMPT + NEW, generate=True) == total


@pytest.mark.parametrize("name", MODELS)
def test_static_cache_matches_transformers(tmp_path, real, name):
    cache_class, total = real[name]["static"]
    assert cache_class == "StaticCache"
    assert _hf(_path(tmp_path, real, name), context=PROMPT + NEW, generate=True, hf_cache="static",
               max_cache_len=PROMPT + NEW - 1) == total


def test_kimi_top_level_copies_of_the_kda_sizes_are_not_a_second_source(real):
    # KimiLinearConfig saves linear_num_heads / linear_head_dim / linear_conv_kernel_dim beside linear_attn_config,
    # which wins on load: a copy that disagrees changes nothing in transformers or vLLM
    config = copy.deepcopy(real["kimi_linear"]["config"])
    config["linear_num_heads"] = 99
    assert convert_config(config).fields == convert_config(real["kimi_linear"]["config"]).fields


@pytest.mark.parametrize("name", MODELS)
def test_parameter_formula_matches_the_weights_transformers_builds(real, name):
    assert convert_config(real[name]["config"]).parameters == real[name]["weights"]


def test_parameter_formulas_on_the_published_configs():
    # Kimi-Linear-48B-A3B: its 20 safetensors files hold 49,122,681,728 elements (SOURCES.md)
    assert convert_config(json.loads(KIMI.read_text())).parameters == 49_122_681_728
    # LFM2.5-1.2B: the MLP is 2/3 of intermediate_size 12,288 = 8,192 (a multiple of 256) wide: by hand,
    # embeddings 65,536 x 2,048 (tied) + embedding_norm 2,048; 10 conv layers (in_proj 2,048 x 6,144, conv
    # 2,048 x 3, out_proj 2,048 x 2,048); 6 attention layers (q, out 2,048 x 2,048; k, v 2,048 x 512; two
    # 64-wide norms); 16 MLPs 3 x 2,048 x 8,192 and 16 x 2 norms of 2,048
    conv = 2_048 * 6_144 + 2_048 * 3 + 2_048 * 2_048
    attention = 2 * 2_048 * 2_048 + 2 * 2_048 * 512 + 2 * 64
    total = 65_536 * 2_048 + 2_048 + 10 * conv + 6 * attention + 16 * (3 * 2_048 * 8_192 + 2 * 2_048)
    assert convert_config(json.loads(LFM2.read_text())).parameters == total == 1_170_340_608


# ------------------------------------------------------------------ the catalog entries

@pytest.mark.parametrize("fixture, name", [(KIMI, "kimi-linear-48b-a3b"), (LFM2, "lfm2.5-1.2b")])
def test_import_of_the_published_config_equals_its_catalog_entry(tmp_path, fixture, name):
    from kvplan.sources.catalog import SPECS_DIR, load_spec_file
    from kvplan.sources.resolve import spec_from_source

    folder = tmp_path / fixture.stem
    folder.mkdir()
    (folder / "config.json").write_text(fixture.read_text())
    imported = spec_from_source(str(folder), name).model_dump(exclude={"source", "notes"})
    shipped = load_spec_file(SPECS_DIR / f"{name}.yaml").model_dump(exclude={"source", "notes"})
    assert imported == shipped


# ------------------------------------------------------------------ kvplan measure: one step against a reference
# The cached-decode check (tests/test_measure_model.py, kinds "kda" and "shortconv") runs the same step on both
# paths; these hold one step to the model's own rule, written out per channel in plain Python:
# transformers 5.25 Lfm2ShortConv (causal_conv1d_update with no activation, the output gated by C) and
# recurrent_kimi_delta_attention (q, k L2-normed, q x head_dim^-0.5; S <- S exp(g); S <- S + k (beta (v - S^T k))^T;
# o = S^T q), with KimiLinearForgetGate's g = -exp(A_log) softplus(f + dt_bias).

def _step_layer(**fields):
    torch = pytest.importorskip("torch")
    import conftest
    from kvplan.measure import model as model_module
    from kvplan.measure.predict import build_arch

    arch = build_arch(conftest.make_spec(num_hidden_layers=2, **fields))
    layer = model_module.StateLayer(arch, arch.layers[0], model_module._Init(torch.device("cpu"), torch.float32))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return torch, layer, gen


def test_measure_shortconv_step_against_the_reference():
    torch, layer, gen = _step_layer(layer_types=["conv", "full_attention"], conv_L_cache=3)
    s = layer.s
    assert layer.s.state_shapes() == {"conv_state": (64, 2)}  # hidden 64 x (conv_L_cache - 1)
    conv = torch.randn(1, 64, 2, generator=gen)
    u = torch.randn(1, 64, generator=gen)
    new, y = layer._step(layer._fp32_params(), {"conv_state": conv}, u, None)
    w = layer.conv_weight.tolist()
    for c in range(s.d_inner):
        window = conv[0, c].tolist() + [u[0, c].item()]
        assert new["conv_state"][0, c].tolist() == pytest.approx(window[1:])
        assert y[0, c].item() == pytest.approx(sum(x * wk for x, wk in zip(window, w[c])), rel=1e-5, abs=1e-6)


def test_measure_kda_step_against_the_reference():
    import math

    torch, layer, gen = _step_layer(layer_types=["state", "full_attention"], linear_num_heads=2, linear_head_dim=4,
                                    linear_conv_kernel_dim=3)
    s = layer.s
    H, d = 2, 4
    assert s.state_shapes() == {"conv_state": (3 * H * d, 2), "ssm_state": (H, d, d)}
    conv = torch.randn(1, 3 * H * d, 2, generator=gen)
    S0 = torch.randn(1, H, d, d, generator=gen)
    u = torch.randn(1, 3 * H * d, generator=gen)
    gates = torch.randn(1, H * d + H, generator=gen)
    new, y = layer._step(layer._fp32_params(), {"conv_state": conv, "ssm_state": S0}, u, gates)

    silu = lambda x: x / (1 + math.exp(-x))  # noqa: E731
    w = layer.conv_weight.tolist()
    xc = []
    for c in range(3 * H * d):
        window = conv[0, c].tolist() + [u[0, c].item()]
        xc.append(silu(sum(x * wk for x, wk in zip(window, w[c]))))
    A_log, dt_bias = layer.A_log.tolist(), layer.dt_bias.tolist()
    f, beta_in = gates[0, : H * d].tolist(), gates[0, H * d:].tolist()
    for h in range(H):
        q = xc[h * d:(h + 1) * d]
        k = xc[H * d + h * d:H * d + (h + 1) * d]
        v = xc[2 * H * d + h * d:2 * H * d + (h + 1) * d]
        qn, kn = math.sqrt(sum(x * x for x in q)), math.sqrt(sum(x * x for x in k))
        q = [x / qn * d ** -0.5 for x in q]
        k = [x / kn for x in k]
        g = [-math.exp(A_log[h]) * math.log1p(math.exp(f[h * d + i] + dt_bias[h * d + i])) for i in range(d)]
        S = [[S0[0, h, i, j].item() * math.exp(g[i]) for j in range(d)] for i in range(d)]
        beta = 1 / (1 + math.exp(-beta_in[h]))
        delta = [(v[j] - sum(S[i][j] * k[i] for i in range(d))) * beta for j in range(d)]
        S = [[S[i][j] + k[i] * delta[j] for j in range(d)] for i in range(d)]
        out = [sum(S[i][j] * q[i] for i in range(d)) for j in range(d)]
        assert new["ssm_state"][0, h].flatten().tolist() == pytest.approx([x for row in S for x in row], rel=1e-4, abs=1e-5)
        assert y[0, h * d:(h + 1) * d].tolist() == pytest.approx(out, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("fields", [
    dict(layer_types=["state", "full_attention"], linear_num_heads=2, linear_head_dim=16, linear_conv_kernel_dim=4),
    dict(layer_types=["conv", "full_attention"], conv_L_cache=3),
])
def test_measure_tp_refuses_to_shard_kda_and_shortconv(fields):
    pytest.importorskip("torch")
    import conftest
    from kvplan.measure.parallel import rank_arch
    from kvplan.measure.predict import build_arch

    arch = build_arch(conftest.make_spec(num_hidden_layers=2, **fields))
    assert rank_arch(arch, 1, range(2)).state == arch.state
    with pytest.raises(InputError, match="--tp cannot shard (kda|shortconv) state layers"):
        rank_arch(arch, 2, range(2))


@pytest.mark.parametrize("name", MODELS)
def test_quantized_cache_refuses_what_transformers_refuses(tmp_path, real, name):
    answer = kvplan.estimate(_path(tmp_path, real, name), engine="hf", batch=BATCH, context=PROMPT + NEW,
                             generate=True, hf_cache="quantized", quant_backend="fp8").to_dict()
    assert answer["kv_bytes_total"] is None
    assert list(answer["refusals"]) == [real[name]["quantized_refusal"]]
