"""A boolean where a number is expected is refused naming the file, line and field, in every file kind.

Python counts True as 1 and YAML reads `true`, `yes` and `on` as True: before this rule
`num_hidden_layers: true` sized a one-layer model, `num_key_value_heads: on` one KV head, and a GPU
file's `bf16_tflops: yes` gave 1 TFLOPS.
"""

from __future__ import annotations

import json
import textwrap

from cli_helpers import run_cli
from test_check import TINY_SPEC, write_plan

YAML_WHY = "is a boolean, not a number (YAML reads true/false, yes/no and on/off as booleans); write the number"


def test_spec_yaml(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SPEC.replace("num_hidden_layers: 4", "num_hidden_layers: true")
                    .replace("num_key_value_heads: 2", "num_key_value_heads: on"))
    r = run_cli(capsys, "estimate", str(spec))
    assert r.exit_code == 2
    assert r.stderr == (f"error: {spec}:5: num_hidden_layers: true {YAML_WHY}\n"
                        f"{spec}:7: num_key_value_heads: true {YAML_WHY}\n")


def test_spec_yaml_layer_pattern_count(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SPEC + "sliding_window: 16\nlayer_pattern:\n  - sliding_attention: yes\n")
    r = run_cli(capsys, "show", str(spec))
    assert r.exit_code == 2
    assert r.stderr == f"error: {spec}:12: layer_pattern.0.sliding_attention: true {YAML_WHY}\n"


GPU_YAML = """\
name: my-gpu
display_name: My GPU
vendor: test
memory_bytes: 80GiB
memory_bandwidth_gbps: 1000
bf16_tflops: yes
fp8_tflops: null
usd_per_hour: off
memory_source: test
sources: [test]
confidence: low
"""


def test_gpu_yaml(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    gpu = tmp_path / "g.yaml"
    gpu.write_text(GPU_YAML)
    r = run_cli(capsys, "estimate", str(tmp_path / "tiny.yaml"), "--gpu", str(gpu))
    assert r.exit_code == 2
    assert r.stderr == f"error: {gpu}:6: bf16_tflops: true {YAML_WHY}\n{gpu}:8: usd_per_hour: false {YAML_WHY}\n"


def test_plan_yaml(tmp_path, capsys):
    deployment = textwrap.dedent("""\
        model: tiny.yaml
        gpu_memory: 1GiB
        gpu_bandwidth: 1000
        engine: ideal
        context: 1k
        batch: on
    """)
    plan = write_plan(tmp_path, "max_decode_step_ms: yes\n", textwrap.indent(deployment, "    "))
    text = plan.read_text().replace("version: 1", "version: true")
    plan.write_text(text)
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    # line 1 version; 3 "- name"; 4-9 the deployment (batch on 9); 10 budgets; 11 its limit
    assert r.stderr == (f"error: {plan}:1: version: true {YAML_WHY}\n"
                        f"{plan}:9: deployments.0.batch: true {YAML_WHY}\n"
                        f"{plan}:11: deployments.0.budgets.max_decode_step_ms: true {YAML_WHY}\n")


def _config(tmp_path, **fields) -> str:
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 256, "intermediate_size": 128, **fields}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, indent=2))  # one key per line: line 1 is "{", key i is on line i + 2
    return str(path)


def test_config_json(tmp_path, capsys):
    path = _config(tmp_path, num_key_value_heads=True)
    r = run_cli(capsys, "estimate", path)
    assert r.exit_code == 2
    assert r.stderr == f"error: {path}:6: num_key_value_heads: true is a boolean, not a number; write the number\n"


def test_config_json_nested_and_in_a_list(tmp_path, capsys):
    path = _config(tmp_path, text_config={"num_hidden_layers": False})
    r = run_cli(capsys, "estimate", path)
    assert r.exit_code == 2
    assert r.stderr == (f"error: {path}:10: text_config.num_hidden_layers: false is a boolean, not a number; "
                        "write the number\n")
    path = _config(tmp_path, mlp_only_layers=[0, True])
    r = run_cli(capsys, "estimate", path)
    assert r.exit_code == 2
    assert r.stderr == f"error: {path}:9: mlp_only_layers: true is a boolean, not a number; write the number\n"


def test_a_boolean_config_field_is_still_read(tmp_path, capsys):
    r = run_cli(capsys, "estimate", _config(tmp_path, tie_word_embeddings=True, torch_dtype="bfloat16"), "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["kv_bytes_per_token"] == 4 * 2 * 2 * 16 * 2  # layers x K,V x heads x dim 64/4 x 2 B


def test_the_fast_path_never_serves_a_boolean_as_a_number(monkeypatch):
    # an index entry holding a boolean is not what validation writes: the YAML is validated instead
    from kvplan.sources import catalog

    catalog._indexed_shape("qwen2.5-7b", catalog.SPECS_DIR / "qwen2.5-7b.yaml")  # fills the cache
    entry = dict(catalog._index_cache["qwen2.5-7b"])
    entry["fields"] = {**entry["fields"], "num_hidden_layers": True}
    monkeypatch.setitem(catalog._index_cache, "qwen2.5-7b", entry)
    assert catalog._indexed_shape("qwen2.5-7b", catalog.SPECS_DIR / "qwen2.5-7b.yaml") is None
    spec = catalog.resolve_spec("qwen2.5-7b", fast=True)
    assert spec.num_hidden_layers == 28  # Qwen2.5-7B config.json: num_hidden_layers 28


def test_boolean_fields_list_matches_the_spec_model():
    from kvplan.model.shape import BOOLEAN_FIELDS
    from kvplan.model.spec import ModelSpec

    assert BOOLEAN_FIELDS == {k for k, f in ModelSpec.model_fields.items() if f.annotation is bool}


def test_spec_yaml_file_weight_bytes(tmp_path, capsys):
    # file_weight_bytes (kvplan import writes it) holds byte counts: `body: true` would be 1 byte
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SPEC + "file_weight_bytes: {source: safetensors, embedding: 32768, body: true}\n")
    r = run_cli(capsys, "show", str(spec))
    assert r.exit_code == 2
    assert r.stderr == f"error: {spec}:10: file_weight_bytes.body: true {YAML_WHY}\n"
