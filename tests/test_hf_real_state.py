"""`--engine hf` against transformers itself for the state layers of issue #13: Mamba-2 (mamba2,
nemotron_h, granitemoehybrid) and Gated DeltaNet (qwen3_next, qwen3_5, qwen3_5_moe).

Each model is a tiny random-weight one built from transformers' own config class (tests/hf_real.py);
its cache is read back tensor by tensor after a forward pass (DynamicCache), after generate() and
after generate(cache_implementation="static"), and kvplan must give the same bytes for the same
config.json. The expected values are what transformers allocates, never kvplan's own arithmetic.
The counters a LinearAttentionLayer keeps (`cumulative_length_linear`, one int64 per layer) are
bookkeeping, not cache, and are left out on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import kvplan  # noqa: E402
from hf_real import forward_cache, generate_cache, prompt, tiny_model  # noqa: E402

BATCH, PROMPT, NEW = 2, 7, 3


def _real_readings() -> dict:
    """Every model below built and run by transformers in a child process (tests/hf_real.py), its readings
    as JSON: a Mamba-2 scan on the reference path leaves this process's heap in a state that
    tests/test_measure_allocator.py (which reads glibc's top chunk in the same process) cannot model."""
    code = (
        "import json, sys; sys.path.insert(0, %r); import test_hf_real_state as t; print(json.dumps(t._read_all()))"
        % str(Path(__file__).parent)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _read_all() -> dict:
    """In the child: each model's caches after a forward pass, generate() and generate(static), read back."""
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
                        any(t.layer_class == "LinearAttentionLayer" for t in forward.tensors)],
            "generate": [generated.cache_class, generated.total],
            "static": [static.cache_class, static.total,
                       sorted({t.shape[2] for t in static.tensors if t.name in ("keys", "values")})],
            "conv": sorted({(tuple(t.shape[1:]), t.dtype) for t in forward.tensors if t.name.startswith("conv_states")}),
            "ssm": sorted({(tuple(t.shape[1:]), t.dtype) for t in forward.tensors
                           if t.name.startswith("recurrent_states")}),
            # every tensor a checkpoint holds: parameters and persistent buffers (Nemotron-H's e_score_correction_bias)
            "weights": sum(t.numel() for t in model.state_dict().values()),
        }
    return out


@pytest.fixture(scope="module")
def real() -> dict:
    return _real_readings()


def _config_file(tmp_path, config) -> str:
    path = tmp_path / "config.json"
    path.write_text(config.to_json_string())
    return str(path)


def _mamba2():
    from transformers import Mamba2Config

    return Mamba2Config(hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16, state_size=16, n_groups=1,
                        expand=2, conv_kernel=4, vocab_size=128, dtype="bfloat16")


def _nemotron_h():
    from transformers import NemotronHConfig

    return NemotronHConfig(hidden_size=64, hybrid_override_pattern="M*M-E", num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, mamba_num_heads=8, mamba_head_dim=16,
                           ssm_state_size=16, n_groups=2, conv_kernel=4, vocab_size=128, intermediate_size=64,
                           n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                           moe_shared_expert_intermediate_size=48, dtype="bfloat16")


def _granite():
    from transformers import GraniteMoeHybridConfig

    return GraniteMoeHybridConfig(hidden_size=64, num_hidden_layers=3, layer_types=["mamba", "attention", "mamba"],
                                  num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=8, mamba_d_head=16,
                                  mamba_d_state=16, mamba_n_groups=1, mamba_expand=2, vocab_size=128,
                                  intermediate_size=64, shared_intermediate_size=48, num_local_experts=4,
                                  num_experts_per_tok=2, dtype="bfloat16")


_GDN = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=16,
            linear_conv_kernel_dim=4, vocab_size=128, dtype="bfloat16")


def _qwen3_next():
    from transformers import Qwen3NextConfig

    return Qwen3NextConfig(intermediate_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                           shared_expert_intermediate_size=32, **_GDN)


def _qwen3_5():
    from transformers import Qwen3_5TextConfig

    return Qwen3_5TextConfig(intermediate_size=64, **_GDN)


def _qwen3_5_moe():
    from transformers import Qwen3_5MoeTextConfig

    return Qwen3_5MoeTextConfig(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                shared_expert_intermediate_size=32, **_GDN)


MODELS = {"mamba2": _mamba2, "nemotron_h": _nemotron_h, "granitemoehybrid": _granite, "qwen3_next": _qwen3_next,
          "qwen3_5_text": _qwen3_5, "qwen3_5_moe_text": _qwen3_5_moe}


def _hf(path: str, **kw) -> int:
    return kvplan.estimate(path, engine="hf", batch=BATCH, **kw).to_dict()["kv_bytes_total"]


def _config_path(tmp_path, real, name) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(real[name]["config"]))
    return str(path)


@pytest.mark.parametrize("name", MODELS)
def test_dynamic_cache_matches_transformers(tmp_path, real, name):
    cache_class, total, has_state_layer = real[name]["forward"]
    assert cache_class == "DynamicCache" and has_state_layer
    assert _hf(_config_path(tmp_path, real, name), context=PROMPT) == total


@pytest.mark.parametrize("name", MODELS)
def test_generate_matches_transformers(tmp_path, real, name):
    # generate() never caches its last sampled token: 7 + 3 tokens, 9 cached by attention layers
    cache_class, total = real[name]["generate"]
    assert cache_class == "DynamicCache"
    assert _hf(_config_path(tmp_path, real, name), context=PROMPT + NEW, generate=True) == total


@pytest.mark.parametrize("name", MODELS)
def test_static_cache_matches_transformers(tmp_path, real, name):
    cache_class, total, slots = real[name]["static"]
    assert cache_class == "StaticCache"
    assert set(slots) <= {PROMPT + NEW - 1}  # generate()'s StaticCache holds max_length - 1 slots (read back: 9)
    answer = _hf(_config_path(tmp_path, real, name), context=PROMPT + NEW, generate=True, hf_cache="static",
                 max_cache_len=PROMPT + NEW - 1)
    assert answer == total


@pytest.mark.parametrize("name", MODELS)
def test_state_tensors_are_the_shapes_and_dtypes_transformers_keeps(tmp_path, real, name):
    # the conv state with all K kernel columns in the model's dtype, the SSM / recurrent state in float32
    [(conv_shape, conv_dtype)], [(ssm_shape, ssm_dtype)] = real[name]["conv"], real[name]["ssm"]
    assert conv_dtype == "bfloat16" and ssm_dtype == "float32"
    row = next(k for k in kvplan.estimate(_config_path(tmp_path, real, name), engine="hf", context=PROMPT,
                                          batch=BATCH).to_dict()["by_kind"] if k["kind"] == "state")
    assert row["note"] == (f"conv [{', '.join(map(str, conv_shape))}] torch.bfloat16 + "
                           f"{'recurrent' if 'qwen' in name else 'ssm'} [{', '.join(map(str, ssm_shape))}] "
                           "torch.float32 per sequence")


@pytest.mark.parametrize("name", MODELS)
def test_parameter_formula_matches_the_weights_transformers_builds(real, name):
    from kvplan.sources.hf_config import convert_config

    assert convert_config(real[name]["config"]).parameters == real[name]["weights"]
