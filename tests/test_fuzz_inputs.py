"""Generated hostile input for every loader and every command that reads a file.

The only outcomes allowed: a result, or kvplan's own error (a KvplanError, exit 2; a failed
`check` gate, exit 1). Never another exception (exit 70, a traceback), never a hang (each call
runs under an alarm), never a file written anywhere but the named output.

Each kind is built from a valid file with generated fields swapped in (so the deep checks run,
not only the parser), plus raw generated text or bytes. Loaders are driven in-process for speed;
a few whole commands go through run_cli. Examples are derandomised: the same cases every run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import traceback
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import run_cli
from test_booleans import GPU_YAML
from test_check import TINY_DEPLOYMENT, TINY_SPEC
from test_import_gguf import ARRAY, BOOL, F32, F64, I32, I64, STRING, U8, U32, U64, gguf_string, gguf_value, llama_metadata
from kvplan.errors import KvplanError

# KVPLAN_FUZZ_EXAMPLES=2000 hunts longer (randomised) by hand; the suite runs the fixed 40 per kind.
_HUNT = int(os.environ.get("KVPLAN_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_HUNT or 40, derandomize=not _HUNT, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ALARM_S = 10  # one call: far above any loader's milliseconds, far below a hang


@contextmanager
def _alarm():
    def hung(signum, frame):
        raise AssertionError(f"no answer within {ALARM_S} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, ALARM_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def loads_or_refuses(folder: Path, call, *, may_write: tuple[str, ...] = ()):
    """Run `call()`: its result, or None for a KvplanError with exit 2; anything else fails the test.
    Nothing in `folder` may change but the files named in `may_write`."""
    before = _files(folder)
    try:
        with _alarm():
            result = call()
    except KvplanError as exc:
        assert exc.exit_code == 2, exc.message
        assert exc.message and "\n" not in exc.message.split(": ", 1)[0], exc.message
        result = None
    except AssertionError:
        raise
    except BaseException:
        pytest.fail(f"not kvplan's own error:\n{traceback.format_exc()}")
    after = _files(folder)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)} - set(may_write)
    assert not changed, f"wrote outside the named output: {sorted(changed)}"
    return result


def command_answers(capsys, folder: Path, *args: str, may_write: tuple[str, ...] = ()) -> None:
    """A whole command: exit 0, 1 (a failed gate) or 2 with one `error:` line; no traceback, no 70."""
    before = _files(folder)
    with _alarm():
        r = run_cli(capsys, *args)
    assert r.exit_code in (0, 1, 2), (r.exit_code, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-2000:]
    if r.exit_code == 2:  # (check --output first says it wrote the invalid-plan report)
        assert any(line.startswith("error: ") for line in r.stderr.splitlines()), r.stderr
    after = _files(folder)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)} - set(may_write)
    assert not changed, f"wrote outside the named output: {sorted(changed)}"


# ------------------------------------------------------------------ values

INTS = st.one_of(st.integers(-3, 70_000), st.sampled_from([0, -1, 2**31, 2**63, 10**30]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
SCALARS = st.one_of(INTS, FLOATS, st.booleans(), st.none(), st.text(max_size=12),
                    st.sampled_from(["32k", "1.5k", "80GiB", "auto", "bf16", "fp8", "full_attention", "", "-1", "1e9"]))
# YAML and JSON values: scalars, lists and mappings of them, a few levels deep
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=10)
YAML_TEXT = st.text(alphabet=st.sampled_from(list("ab01:-[]{},'\"&*!|>#%@`? \n\t.e+~")), max_size=120)


def _overrides(keys: list[str]):
    """A few fields of a valid file replaced (or added: an unknown key) with generated values."""
    return st.dictionaries(st.sampled_from(keys + ["junk_field"]), VALUES, min_size=1, max_size=4)


def _dump_yaml(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


# ------------------------------------------------------------------ spec, GPU, plan YAML

SPEC = yaml.safe_load(TINY_SPEC)
SPEC_KEYS = list(SPEC) + ["num_active_parameters", "head_dim", "v_head_dim", "max_position_embeddings", "torch_dtype",
                          "weights_dtype", "weights_quantized", "tie_word_embeddings", "layer_types", "layer_pattern",
                          "sliding_window", "attention_chunk_size", "num_kv_shared_layers", "kv_lora_rank",
                          "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "mamba_d_state", "mamba_d_conv",
                          "mamba_expand", "mamba_n_groups", "mamba_n_heads", "mamba_head_dim",
                          "state_elements_per_layer", "num_local_experts", "n_routed_experts", "n_shared_experts",
                          "num_experts_per_tok", "moe_intermediate_size", "first_k_dense_replace",
                          "expert_layer_period", "expert_layer_offset"]


@FUZZ
@given(fields=_overrides(SPEC_KEYS))
def test_spec_yaml_fields(tmp_path, fields):
    from kvplan.model.layout import CacheLayout
    from kvplan.sources.catalog import resolve_spec
    from kvplan.model.formats import parse_format_pair

    path = tmp_path / "spec.yaml"
    path.write_text(_dump_yaml({**SPEC, **fields}))

    def load_and_size():
        spec = resolve_spec(str(path))
        return CacheLayout(spec, parse_format_pair("auto", spec.dtype)).at(1024, 2).kv_bytes_total

    loads_or_refuses(tmp_path, load_and_size)


@FUZZ
@given(text=YAML_TEXT)
def test_yaml_text_for_every_yaml_loader(tmp_path, text):
    from kvplan.sources.catalog import load_spec_file
    from kvplan.cli.gate import run_check
    from kvplan.plan.gpus import load_gpu_file

    path = tmp_path / "any.yaml"
    path.write_text(text)
    loads_or_refuses(tmp_path, lambda: load_spec_file(path))
    loads_or_refuses(tmp_path, lambda: load_gpu_file(path))
    loads_or_refuses(tmp_path, lambda: run_check(path, str(path)))


GPU = yaml.safe_load(GPU_YAML) | {"bf16_tflops": 100, "usd_per_hour": 2}


@FUZZ
@given(fields=_overrides(list(GPU) + ["aliases", "nvml_name", "achieved_copy_gbps", "achieved_copy_source"]))
def test_gpu_yaml_fields(tmp_path, capsys, fields):
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(_dump_yaml({**GPU, **fields}))
    command_answers(capsys, tmp_path, "estimate", str(tmp_path / "tiny.yaml"), "--gpu", str(gpu), "-f", "json")


DEPLOYMENT = yaml.safe_load(TINY_DEPLOYMENT.replace("    ", ""))
PLAN_KEYS = list(DEPLOYMENT) + ["tp", "pp", "kv_cache_dtype", "dtype", "block_size", "prompt_tokens", "output_tokens",
                                "requests_per_s", "gpu", "bandwidth_efficiency", "max_num_batched_tokens", "generate",
                                "swa_full", "parallel", "ctx_size", "mem_fraction_static", "tokens_per_block"]
BUDGET_KEYS = ["min_concurrent_sequences", "max_kv_bytes_per_token", "min_headroom_pct", "max_decode_step_ms",
               "max_usd_per_million_output_tokens", "max_usd_per_million_input_tokens", "min_max_context_tokens"]


@FUZZ
@given(fields=_overrides(PLAN_KEYS), budgets=_overrides(BUDGET_KEYS), top=st.sampled_from([{}, {"version": 2}]))
def test_plan_yaml_fields(tmp_path, capsys, fields, budgets, top):
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    entry = {"name": "tiny", **DEPLOYMENT, **fields, "budgets": budgets}
    plan = tmp_path / "plan.yaml"
    plan.write_text(_dump_yaml({"version": 1, **top, "deployments": [entry]}))
    command_answers(capsys, tmp_path, "check", str(plan), "-f", "json", "--output", str(tmp_path / "report.json"),
                    may_write=("report.json",))


# ------------------------------------------------------------------ config.json, calibration, reports

CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2, "vocab_size": 256, "intermediate_size": 128, "torch_dtype": "bfloat16"}


def _config_keys() -> list[str]:
    from kvplan.sources.hf_config import NUMBER_KEYS

    return sorted(NUMBER_KEYS) + ["layer_types", "rope_scaling", "quantization_config", "text_config",
                                  "use_sliding_window", "tie_word_embeddings", "architectures", "torch_dtype", "dtype"]


# Real config.json files of every model type kvplan converts (tests/fixtures/hf_configs, each with its source)
REAL_CONFIGS = sorted((Path(__file__).parent / "fixtures" / "hf_configs").glob("*.json"))


def _config_fields(base: dict) -> list[str]:
    return sorted(set(base) | set(base.get("text_config") or {}))


@FUZZ
@given(data=st.data(), base=st.sampled_from(REAL_CONFIGS),
       model_type=st.sampled_from([None, "llama", "mistral", "qwen2_moe", "deepseek_v3", "jamba", "unknown-type"]))
def test_config_json_fields(tmp_path, data, base, model_type):
    from kvplan.model.layout import CacheLayout
    from kvplan.model.formats import parse_format_pair
    from kvplan.sources.resolve import spec_from_source

    config = json.loads(base.read_text())
    fields = data.draw(_overrides(_config_fields(config) + _config_keys()))
    if model_type is not None and data.draw(st.booleans()):  # another type's converter on this type's fields
        config["model_type"] = model_type
    if isinstance(config.get("text_config"), dict) and data.draw(st.booleans()):
        config["text_config"] = {**config["text_config"], **fields}
    else:
        config.update(fields)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, allow_nan=True))

    def load_and_size():
        spec = spec_from_source(str(path))
        return CacheLayout(spec, parse_format_pair("auto", spec.dtype)).at(512, 1).kv_bytes_total

    loads_or_refuses(tmp_path, load_and_size)


@FUZZ
@given(data=VALUES, raw=st.binary(max_size=64))
def test_json_reports(tmp_path, capsys, data, raw):
    from kvplan.plan.calibration import read_calibration
    from kvplan.cli.outputs import MEASURE_JSON, check_output

    report = tmp_path / "report.json"
    for content in (json.dumps({"kvplan_version": "0", "model": "m", "runs": data}, allow_nan=True).encode(),
                    json.dumps(data, allow_nan=True).encode(), raw):
        report.write_bytes(content)
        loads_or_refuses(tmp_path, lambda: read_calibration(str(report)))
        loads_or_refuses(tmp_path, lambda: check_output(report, "--json", MEASURE_JSON))


@FUZZ
@given(runs=st.lists(st.dictionaries(st.sampled_from(["achieved_gbps", "device", "device_name", "context"]), VALUES,
                                     max_size=4), max_size=3),
       device=SCALARS)
def test_calibration_command(tmp_path, capsys, runs, device):
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"kvplan_version": "0", "model": "m", "device": device, "device_name": device,
                               "runs": runs}, allow_nan=True))
    command_answers(capsys, tmp_path, "estimate", str(tmp_path / "tiny.yaml"), "--gpu", "h100-sxm",
                    "--calibration", str(cal), "-f", "json")


# ------------------------------------------------------------------ GGUF

GGUF_SCALAR_TYPES = {U8: st.integers(0, 255), I32: st.integers(-2**31, 2**31 - 1), U32: st.integers(0, 2**32 - 1),
                     U64: st.integers(0, 2**64 - 1), I64: st.integers(-2**63, 2**63 - 1),
                     F32: st.floats(width=32), F64: st.floats(), BOOL: st.booleans(), STRING: st.text(max_size=10)}


@st.composite
def gguf_entries(draw):
    """(key, type, value) with a type-correct value, or an array of one."""
    arch = "llama"
    key = draw(st.sampled_from([k for k, _, _ in llama_metadata(arch)] + [
        f"{arch}.attention.sliding_window", f"{arch}.rope.dimension_count", f"{arch}.attention.key_length",
        f"{arch}.attention.value_length", f"{arch}.expert_count", f"{arch}.expert_used_count",
        f"{arch}.attention.kv_lora_rank", "general.alignment", "general.file_type", "tokenizer.ggml.tokens",
        "gemma3.attention.sliding_window_pattern", f"{arch}.ssm.state_size"]))
    vtype = draw(st.sampled_from(sorted(GGUF_SCALAR_TYPES) + [ARRAY]))
    if vtype == ARRAY:
        item = draw(st.sampled_from(sorted(GGUF_SCALAR_TYPES)))
        return key, ARRAY, (item, draw(st.lists(GGUF_SCALAR_TYPES[item], max_size=5)))
    return key, vtype, draw(GGUF_SCALAR_TYPES[vtype])


def _gguf_bytes(metadata, tensors) -> bytes:
    body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, vtype, value in metadata:
        body += gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)
    for name, shape, ggml_type, offset in tensors:
        body += gguf_string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        body += struct.pack("<IQ", ggml_type, offset)
    return body + bytes(-len(body) % 32) + bytes(256)


TENSORS = st.lists(st.tuples(st.sampled_from(["token_embd.weight", "output.weight", "blk.0.attn_q.weight", "x"]),
                             st.lists(st.integers(0, 2**40), max_size=4), st.integers(0, 50), st.integers(0, 2**40)),
                   max_size=3)


@FUZZ
@given(entries=st.lists(gguf_entries(), max_size=4), tensors=TENSORS, cut=st.integers(0, 2000),
       flip=st.tuples(st.integers(0, 2000), st.integers(0, 255)))
def test_gguf_headers(tmp_path, entries, tensors, cut, flip):
    from kvplan.sources.resolve import spec_from_source

    metadata = {k: (k, t, v) for k, t, v in llama_metadata()}
    metadata.update({k: (k, t, v) for k, t, v in entries})
    whole = _gguf_bytes(list(metadata.values()), tensors)
    path = tmp_path / "model.gguf"
    at, byte = flip
    flipped = whole[:at] + bytes([byte]) + whole[at + 1:] if at < len(whole) else whole
    for content in (whole, whole[:cut], flipped):
        path.write_bytes(content)
        loads_or_refuses(tmp_path, lambda: spec_from_source(str(path)))


# ------------------------------------------------------------------ safetensors

SAFETENSORS_ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "BF16", "F16", "I8", "U8", "F8_E4M3", "I64", "BOOL", "F4", "junk"]),
                       SCALARS),
    "shape": st.one_of(st.lists(st.one_of(st.integers(-1, 2**40), st.booleans()), max_size=3), SCALARS),
    "data_offsets": st.one_of(st.lists(st.one_of(st.integers(-1, 2**40), FLOATS), max_size=3), SCALARS),
})


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["a.weight", "b.weight", "__metadata__"]),
                              st.one_of(SAFETENSORS_ENTRY, VALUES), max_size=3),
       declared=st.one_of(st.none(), st.integers(0, 2**64 - 1)), data=st.integers(0, 64),
       index=st.fixed_dictionaries({}, optional={
           "weight_map": st.one_of(VALUES, st.dictionaries(
               st.sampled_from(["a.weight", "b.weight", "x"]),
               st.one_of(SCALARS, st.sampled_from(["model.safetensors", "other.safetensors", "../x.safetensors"])),
               max_size=3)),
           "metadata": st.one_of(VALUES, st.fixed_dictionaries({}, optional={"total_size": SCALARS,
                                                                              "total_parameters": SCALARS}))}),
       )
def test_safetensors_headers_and_index(tmp_path, header, declared, data, index):
    from kvplan.sources.safetensors_header import find_weights, summarize_file, summarize_index

    raw = json.dumps(header, allow_nan=True).encode()
    prefix = struct.pack("<Q", len(raw) if declared is None else declared)
    model = tmp_path / "model.safetensors"
    model.write_bytes(prefix + raw + bytes(data))
    loads_or_refuses(tmp_path, lambda: summarize_file(model))
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(index, allow_nan=True))
    loads_or_refuses(tmp_path, lambda: summarize_index(path))
    loads_or_refuses(tmp_path, lambda: find_weights(tmp_path))
    path.unlink()


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["model.embed_tokens.weight", "lm_head.weight", "__metadata__"]),
                              SAFETENSORS_ENTRY, max_size=3))
def test_config_with_safetensors_command(tmp_path, capsys, header):
    # a model folder: config.json and its weights' header, through the whole `estimate --gpu` path
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    raw = json.dumps(header, allow_nan=True).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(1 << 16))
    command_answers(capsys, tmp_path, "estimate", str(folder), "--gpu", "h100-sxm", "-f", "json")


def test_the_harness_catches_what_it_must():
    # the checks above would pass vacuously if loads_or_refuses let other errors or writes through
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with pytest.raises(pytest.fail.Exception, match="not kvplan's own error"):
            loads_or_refuses(folder, lambda: math.log(-1))
        with pytest.raises(AssertionError, match="wrote outside the named output"):
            loads_or_refuses(folder, lambda: (folder / "stray").write_text("x"))
        assert loads_or_refuses(folder, lambda: 7) == 7
        assert os.listdir(folder) == ["stray"]


FEW = settings(FUZZ, max_examples=_HUNT or 12)  # whole commands: slower per example


@FEW
@given(fields=_overrides(SPEC_KEYS))
def test_spec_yaml_commands(tmp_path, capsys, fields):
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    spec = tmp_path / "spec.yaml"
    spec.write_text(_dump_yaml({**SPEC, **fields}))
    command_answers(capsys, tmp_path, "estimate", str(spec), "--gpu", "h100-sxm", "-c", "4k,8k", "-b", "1,4", "-f", "json")
    command_answers(capsys, tmp_path, "show", str(spec), "-f", "json")
    command_answers(capsys, tmp_path, "diff", str(tmp_path / "tiny.yaml"), str(spec), "-f", "json")
    command_answers(capsys, tmp_path, "compare", str(spec), "-c", "4k")


@FEW
@given(data=st.data(), base=st.sampled_from(REAL_CONFIGS))
def test_import_command(tmp_path, capsys, data, base):
    config = json.loads(base.read_text())
    config.update(data.draw(_overrides(_config_fields(config))))
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, allow_nan=True))
    out = tmp_path / "out.yaml"
    out.unlink(missing_ok=True)
    command_answers(capsys, tmp_path, "import", str(folder / "config.json"), "-o", str(out), may_write=("out.yaml",))


# ------------------------------------------------------------------ crashes the fuzz found, each pinned


def test_layer_types_holding_a_non_string(tmp_path, capsys):
    # was TypeError (sorting None beside 0), exit 70; now the first entry that is not a layer type
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**CONFIG, "model_type": "mistral", "layer_types": [0, 0, None, 0]}))
    r = run_cli(capsys, "estimate", str(path))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {path}: layer_types has 0, not one of ['attention', ")
    path.write_text(json.dumps({**CONFIG, "model_type": "mistral", "layer_types": ["full_attention", [], {}, "full_attention"]}))
    r = run_cli(capsys, "estimate", str(path))  # was TypeError: unhashable type: 'list'
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {path}: layer_types has [], not one of ['attention', ")


def test_an_index_total_size_of_infinity(tmp_path):
    # `Infinity` is valid to Python's json; int(inf) raised OverflowError (exit 70). An index count that
    # is not a whole number is treated as absent; a float with no fraction is that integer.
    from kvplan.sources.safetensors_header import summarize_index

    raw = json.dumps({"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    index = tmp_path / "model.safetensors.index.json"
    for total, expected in (("Infinity", None), ("NaN", None), ("1e400", None), ("true", None), ("8.0", 8), ("8", 8),
                            ("8.5", None)):
        index.write_text('{"weight_map": {"a.weight": "model.safetensors"}, "metadata": {"total_size": %s}}' % total)
        assert summarize_index(index).index_total_bytes == expected, total
