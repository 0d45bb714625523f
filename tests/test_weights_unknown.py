"""KV answers never wait for the weights (issue 13): a spec without num_parameters is sized; capacity on a GPU
needs the weights from the files, a parameter formula, or --weights-bytes, and the output names which."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import run_cli

# A Llama-shaped config.json under a model_type kvplan has no parameter formula for: the generic path sizes it.
CONFIG = {
    "model_type": "brand_new", "architectures": ["BrandNewForCausalLM"], "hidden_size": 4096,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
}
# By hand: 32 layers x 8 KV heads x head_dim 128 x (K + V) x 2 B = 131,072 B per token.
KV_PER_TOKEN = 32 * 8 * 128 * 2 * 2


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "brand-new" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(CONFIG))
    return str(path)


def _json(capsys, *args):
    r = run_cli(capsys, *args, "--format", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    return data[0] if isinstance(data, list) else data


def test_kv_answers_without_weights(capsys, config):
    d = _json(capsys, "estimate", config, "--context", "8192")
    assert d["kv_bytes_per_token"] == KV_PER_TOKEN
    assert d["kv_bytes_per_sequence"] == KV_PER_TOKEN * 8192
    r = run_cli(capsys, "compare", config)
    assert r.exit_code == 0, r.stderr


def test_capacity_without_weights_is_refused_naming_the_three_ways(capsys, config):
    r = run_cli(capsys, "estimate", config, "--gpu", "h100-sxm")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    for way in ("safetensors or GGUF headers", "num_parameters in a spec YAML", "--weights-bytes"):
        assert way in r.stderr
    r = run_cli(capsys, "estimate", config, "--gpu", "h100-sxm", "--engine", "llama.cpp")
    assert r.exit_code == 2 and "--weights-bytes" in r.stderr


def test_weights_bytes_placed_per_stage_and_rank(capsys, config):
    d = _json(capsys, "estimate", config, "--gpu", "h100-sxm", "--weights-bytes", "16GB")
    assert d["weights_bytes_per_gpu"] == 16 * 10**9
    assert d["weights_source"] == "--weights-bytes"
    # tp 2 shards it: 8e9 per rank; pp 2 of 32 layers: 16 layers x 16e9 / 32 per stage, then / tp
    d = _json(capsys, "estimate", config, "--gpu", "h100-sxm", "--weights-bytes", "16GB", "--tp", "2", "--pp", "2")
    assert d["weights_bytes_per_gpu"] == 16 * 10**9 * 16 // 32 // 2 == 4 * 10**9
    r = run_cli(capsys, "estimate", config, "--gpu", "h100-sxm", "--weights-bytes", "16GB")
    assert "from --weights-bytes" in r.stdout


def test_weights_bytes_under_an_engine_profile_and_compare(capsys, config):
    d = _json(capsys, "estimate", config, "--gpu", "h100-sxm", "--weights-bytes", "16GB", "--engine", "sglang")
    assert d["capacity"]["weights_bytes"] == 16 * 10**9
    assert d["capacity"]["weights_source"] == "--weights-bytes"
    r = run_cli(capsys, "compare", config, "--gpu", "h100-sxm", "--weights-bytes", "16GB")
    assert r.exit_code == 0, r.stderr


def test_weights_bytes_refusals(capsys, config):
    r = run_cli(capsys, "estimate", config, "--weights-bytes", "16GB")
    assert r.exit_code == 2 and "--weights-bytes needs a GPU" in r.stderr
    r = run_cli(capsys, "estimate", config, "--gpu", "h100-sxm", "--weights-bytes", "16GB", "--dtype", "fp8")
    assert r.exit_code == 2 and "give one of the two" in r.stderr


def test_check_plan_key(capsys, config, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "deployments:\n"
        f"  - model: {config}\n    gpu: h100-sxm\n    context: 8192\n    weights_bytes: 16GB\n"
        "    budgets:\n      min_concurrent_sequences: 4\n"
        f"  - model: {config}\n    context: 8192\n    budgets:\n      max_kv_bytes_per_token: {KV_PER_TOKEN}\n"
    )
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 0, r.stderr
    plan.write_text(f"deployments:\n  - model: {config}\n    gpu: h100-sxm\n    context: 8192\n"
                    "    budgets:\n      min_concurrent_sequences: 4\n")
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2 and "weights_bytes" in r.stderr


def test_diff_answers_the_kv_figures_and_says_why_capacity_is_not_sized(capsys, config):
    r = run_cli(capsys, "diff", "llama-3.1-8b", config, "--format", "json", "--fail-on-increase", "0")
    assert r.exit_code == 0, r.stderr
    metrics = json.loads(r.stdout)["metrics"]
    # llama-3.1-8b caches what CONFIG does: 32 layers x 8 KV heads x 128 x 2 x 2 B
    assert metrics["kv_bytes_per_token"] == {"before": KV_PER_TOKEN, "after": KV_PER_TOKEN, "delta": 0, "delta_pct": 0.0}
    assert metrics["max_concurrent_sequences"]["after"] is None and metrics["max_concurrent_sequences"]["delta"] is None
    assert r.stderr.count("\n") == 1 and "not sized" in r.stderr and "--weights-bytes" in r.stderr
    r = run_cli(capsys, "diff", "llama-3.1-8b", config, "--format", "json", "--weights-bytes", "16GB")
    assert r.exit_code == 0 and r.stderr == ""
    assert json.loads(r.stdout)["metrics"]["max_concurrent_sequences"]["after"] >= 1


def test_the_api_and_the_fast_path_take_a_spec_without_parameters(config):
    import kvplan
    from kvplan.model.spec import ModelSpec
    from kvplan.model.spec_rules import shape_if_valid

    d = kvplan.estimate(config, gpu="h100-sxm", weights_bytes=16 * 10**9).to_dict()
    assert d["weights_bytes_per_gpu"] == 16 * 10**9 and d["weights_source"] == "--weights-bytes"
    fields = dict(name="no-params", source="https://huggingface.co/x/y/blob/main/config.json", hidden_size=4096,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    shape = shape_if_valid(fields)  # the catalog's and config.json's fast path, no pydantic
    assert shape is not None and shape.num_parameters is None
    assert ModelSpec(**fields).num_parameters is None
    # a count of active parameters means nothing without the total: both refuse it alike
    assert shape_if_valid(dict(fields, num_active_parameters=10**9)) is None
    with pytest.raises(ValueError, match="num_active_parameters needs num_parameters"):
        ModelSpec(**fields, num_active_parameters=10**9)
