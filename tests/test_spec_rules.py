"""kvplan.model.spec_rules: the pydantic-free check accepts only what ModelSpec accepts, with the same values.

The reference is ModelSpec itself (pydantic): every test here compares the cheap path with it, over the
catalog, the config.json fixtures and generated inputs; and `estimate` on every kind of input loads
no pydantic (and no yaml but for a spec YAML).
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from annotated_types import Ge, Gt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import run_cli
from kvplan.model import spec_rules
from kvplan.model.layout import CacheLayout
from kvplan.sources.catalog import SPECS_DIR, catalog_names, read_yaml, resolve_spec
from kvplan.errors import InputError
from kvplan.model.formats import parse_format_pair
from kvplan.sources.resolve import spec_from_source
from kvplan.plan.planner import stage_weight_bytes
from kvplan.model.shape import BOOLEAN_FIELDS, ModelShape
from kvplan.model.spec import FileWeightBytes, ModelSpec
from kvplan.model.spec_rules import FILE_WEIGHT_FIELDS, REQUIRED, SPEC_FIELDS, shape_if_valid

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
CONFIGS = sorted(p.name for p in FIXTURES.glob("*.json"))


@functools.cache
def _catalog_data(name: str) -> dict:
    return read_yaml(SPECS_DIR / f"{name}.yaml")[0]


def catalog_data(name: str) -> dict:
    return copy.deepcopy(_catalog_data(name))


# ------------------------------------------------------------------ one table, held equal to ModelSpec


def _metadata(info) -> list:
    """Every constraint on a field, those inside Optional[Annotated[...]] included."""
    import typing

    from pydantic.fields import FieldInfo

    found, stack = list(info.metadata), [info.annotation]
    while stack:
        annotation = stack.pop()
        if hasattr(annotation, "__metadata__"):  # Annotated[T, ...]: its constraints, then T
            found += list(annotation.__metadata__)
            stack.append(annotation.__origin__)
        elif typing.get_origin(annotation) is typing.Union:  # Optional[T]: T (not a tuple's or dict's items)
            stack += typing.get_args(annotation)
    return [m for item in found for m in (item.metadata if isinstance(item, FieldInfo) else [item])]


def _kind(info) -> str:
    bounds = {(type(m), getattr(m, "gt", getattr(m, "ge", None))) for m in _metadata(info)}
    return "positive" if (Gt, 0) in bounds else "non_negative" if (Ge, 0) in bounds else "other"


def test_the_field_table_is_modelspecs_fields_in_order():
    assert list(SPEC_FIELDS) == list(ModelSpec.model_fields)
    for name, info in ModelSpec.model_fields.items():
        kind, default = SPEC_FIELDS[name]
        assert (default is REQUIRED) == info.is_required(), name
        if default is not REQUIRED:
            assert default == info.default and type(default) is type(info.default), name
        if kind in ("positive", "non_negative"):
            assert _kind(info) == kind, name
        else:
            assert _kind(info) == "other", name
    assert {n for n, (k, _) in SPEC_FIELDS.items() if k == "bool"} == BOOLEAN_FIELDS


def test_the_file_weight_table_is_file_weight_bytes_fields_in_order():
    assert list(FILE_WEIGHT_FIELDS) == list(FileWeightBytes.model_fields)
    for name, info in FileWeightBytes.model_fields.items():
        assert (FILE_WEIGHT_FIELDS[name] is REQUIRED) == info.is_required(), name
        if not info.is_required():
            assert FILE_WEIGHT_FIELDS[name] == info.default


# ------------------------------------------------------------------ same answer on every real input


def assert_same_spec(shape: ModelShape, spec: ModelSpec) -> None:
    assert isinstance(shape, ModelShape) and isinstance(spec, ModelSpec)
    dumped = spec.model_dump()
    assert list(shape.model_dump()) == list(dumped)  # same fields in the same order (`kvplan show`)
    assert shape.model_dump() == dumped
    assert shape.layer_kinds == spec.layer_kinds
    for attr in ("k_head_dim", "v_head_dim_resolved", "dtype", "active_parameters", "state_elements_per_layer_resolved",
                 "routed_expert_weight_parameters", "active_routed_expert_weight_parameters"):
        assert getattr(shape, attr) == getattr(spec, attr), attr
    fmt = parse_format_pair("auto", spec.dtype)
    assert CacheLayout(shape, fmt, block_size=16).at(40_000, 3) == CacheLayout(spec, fmt, block_size=16).at(40_000, 3)
    dtype = spec.weights_dtype or spec.dtype
    for active in (False, True):
        assert stage_weight_bytes(shape, [spec.num_hidden_layers], dtype, 1, active=active) == stage_weight_bytes(
            spec, [spec.num_hidden_layers], dtype, 1, active=active)


@pytest.mark.parametrize("name", catalog_names())
def test_every_catalog_spec_passes_the_cheap_check_unchanged(name):
    data = catalog_data(name)
    assert_same_spec(shape_if_valid(data), ModelSpec.model_validate(data))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_fixture_gives_the_same_spec_both_ways(config):
    path = str(FIXTURES / config)
    try:
        slow = spec_from_source(path)
    except InputError as exc:  # refused today: refused the same way on the fast path
        with pytest.raises(InputError) as fast_err:
            spec_from_source(path, fast=True)
        assert fast_err.value.message == exc.message
        return
    assert_same_spec(spec_from_source(path, fast=True), slow)


def _estimate_json(capsys, monkeypatch, ref: str, *, cheap: bool) -> str:
    import kvplan.sources.resolve

    if not cheap:  # the path every file took before the cheap check: ModelSpec validates
        monkeypatch.setattr(kvplan.sources.resolve, "shape_if_valid", lambda fields: None)
    r = run_cli(capsys, "estimate", ref, "-c", "4096,131072", "-b", "1,8", "--gpu", "h100-sxm", "-f", "json")
    monkeypatch.undo()
    assert r.exit_code == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("config", CONFIGS)
def test_estimate_json_is_byte_for_byte_the_same(config, capsys, monkeypatch):
    path = str(FIXTURES / config)
    assert _estimate_json(capsys, monkeypatch, path, cheap=True) == _estimate_json(capsys, monkeypatch, path, cheap=False)


# ------------------------------------------------------------------ never accepts what ModelSpec refuses

BASE = dict(name="tiny", source="test", num_parameters=10**7, hidden_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
MOE = dict(BASE, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32)

# (fields, why ModelSpec refuses them): one per field kind and one per cross-field rule in spec_problem
INVALID = [
    (dict(BASE, hidden_size=True), "a boolean as a number"),
    (dict(BASE, hidden_size=0), "zero where positive"),
    (dict(BASE, hidden_size=-64), "negative"),
    (dict(BASE, hidden_size=64.5), "a fraction"),
    (dict(BASE, hidden_size="sixty-four"), "a word"),
    (dict(BASE, num_hidden_layers=10_001), "above its bound"),
    (dict(BASE, num_kv_shared_layers=-1), "negative where non-negative"),
    (dict(BASE, mamba_n_groups=None), "None where a default is not None"),
    (dict(BASE, torch_dtype=None), "None for torch_dtype"),
    ({k: v for k, v in BASE.items() if k != "vocab_size"}, "a required field missing"),
    (dict(BASE, vocab=256), "an unknown field"),
    (dict(BASE, name="Tiny"), "a name with a capital"),
    (dict(BASE, name="tiny\n"), "a name with a final newline"),
    (dict(BASE, name="t" * 81), "a name over 80 characters"),
    (dict(BASE, source=""), "an empty source"),
    (dict(BASE, notes=3), "notes not a string"),
    (dict(BASE, tie_word_embeddings="maybe"), "not a boolean"),
    (dict(BASE, weights_dtype="fp4"), "an unknown weights_dtype"),
    (dict(BASE, weights_quantized="attention"), "an unknown weights_quantized"),
    (dict(BASE, torch_dtype="float8"), "an unknown torch_dtype"),
    (dict(BASE, num_key_value_heads=3), "heads not a multiple of KV heads"),
    (dict(BASE, kv_lora_rank=16), "MLA without qk_rope_head_dim"),
    (dict(BASE, hidden_size=66, num_key_value_heads=4), "no head_dim and hidden not a multiple of heads"),
    (dict(BASE, layer_types=["full_attention"] * 4, layer_pattern=[{"full_attention": 1}]), "both layer lists"),
    (dict(BASE, layer_types=["full_attention"] * 3), "layer_types of the wrong length"),
    (dict(BASE, layer_types=["full_attention", "windowed", "full_attention", "full_attention"]), "an unknown layer type"),
    (dict(BASE, layer_types="full_attention"), "layer_types as a string"),
    (dict(BASE, layer_pattern=[]), "an empty layer_pattern"),
    (dict(BASE, layer_pattern=[{"full_attention": 1, "sliding_attention": 1}]), "two types in one entry"),
    (dict(BASE, layer_pattern=[{"full_attention": 0}]), "a zero count"),
    (dict(BASE, layer_pattern=[{"full_attention": 10_001}]), "a count above the layer bound"),
    (dict(BASE, layer_pattern=[{"full_attention": True}]), "a boolean count"),
    (dict(BASE, layer_pattern=[{"sliding_attention": 1}]), "sliding layers without sliding_window"),
    (dict(BASE, layer_pattern=[{"chunked_attention": 1}]), "chunked layers without attention_chunk_size"),
    (dict(BASE, layer_pattern=[{"mamba": 1}]), "state layers without their sizes"),
    (dict(BASE, num_kv_shared_layers=4), "every layer shared"),
    (dict(BASE, num_parameters=256 * 64 * 2 - 1), "fewer parameters than the embeddings"),
    (dict(BASE, num_active_parameters=10**7 + 1), "more active than total parameters"),
    (dict(BASE, expert_layer_period=2), "an expert period without experts"),
    (dict(MOE, expert_layer_period=2, expert_layer_offset=2), "offset not below period"),
    (dict(BASE, weights_quantized="experts"), "expert quantisation without weights_dtype"),
    (dict(BASE, weights_quantized="experts", weights_dtype="mxfp4"), "expert quantisation without experts"),
    (dict(MOE, num_parameters=256 * 64 * 2 + 1, weights_quantized="experts", weights_dtype="mxfp4"),
     "expert weights above the body"),
    (dict(MOE, num_active_parameters=256 * 64 * 2 + 1, weights_quantized="experts", weights_dtype="mxfp4"),
     "active experts above the active body"),
    (dict(MOE, num_parameters=256 * 64 * 2 + 4 * 4 * 3 * 64 * 32, num_active_parameters=256 * 64 * 2 + 4 * 4 * 3 * 64 * 32,
          weights_quantized="experts", weights_dtype="mxfp4"), "skipped experts above the inactive parameters"),
    (dict(BASE, file_weight_bytes={"source": "gguf", "embedding": 1}), "file_weight_bytes without body"),
    (dict(BASE, file_weight_bytes={"source": "onnx", "embedding": 1, "body": 1}), "an unknown weights source"),
    (dict(BASE, file_weight_bytes={"source": "gguf", "embedding": 1, "body": 1, "scales": 1}), "an unknown part"),
    (dict(BASE, file_weight_bytes={"source": "gguf", "embedding": -1, "body": 1}), "negative bytes"),
    (dict(BASE, file_weight_bytes={"source": "gguf", "embedding": 8 * 10**15 + 1, "body": 1}), "bytes above the bound"),
    (dict(BASE, file_weight_bytes={"source": "gguf", "embedding": True, "body": 1}), "a boolean byte count"),
    (dict(BASE, tie_word_embeddings=True, file_weight_bytes={"source": "gguf", "embedding": 1, "lm_head": 1, "body": 1}),
     "lm_head bytes on a tied model"),
    (dict(BASE, file_weight_bytes={"source": "gguf", "embedding": 1, "body": 1, "routed_experts": 1}),
     "routed-expert bytes without experts"),
]


@pytest.mark.parametrize("fields, why", INVALID, ids=[w for _, w in INVALID])
def test_what_modelspec_refuses_the_cheap_check_does_not_accept(fields, why):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ModelSpec.model_validate(fields)
    assert shape_if_valid(fields) is None


def _as_yaml(fields: dict) -> str:
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items())  # JSON values are YAML flow values


@pytest.mark.parametrize("fields, why", INVALID, ids=[w for _, w in INVALID])
def test_a_refused_spec_file_gets_the_same_message_on_either_path(tmp_path, fields, why):
    path = tmp_path / "bad.yaml"
    path.write_text(_as_yaml(fields))
    messages = []
    for fast in (False, True):
        with pytest.raises(InputError) as err:
            resolve_spec(str(path), fast=fast)
        messages.append(err.value.message)
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{path}:")


def test_what_pydantic_would_coerce_still_goes_through_modelspec(tmp_path):
    # `vocab_size: 256.0` is no int to the cheap check; ModelSpec (lax) reads it as 256, as it always has
    fields = dict(BASE, vocab_size=256.0)
    assert shape_if_valid(fields) is None
    path = tmp_path / "float.yaml"
    path.write_text(_as_yaml(fields))
    spec = resolve_spec(str(path), fast=True)
    assert isinstance(spec, ModelSpec) and spec.vocab_size == 256 and type(spec.vocab_size) is int


# Values of every JSON/YAML type, around each bound: what a file can put in a field.
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(1, 300), st.integers(2**14, 2**40), st.sampled_from([10_000, 10_001, 2**20, 2**20 + 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([64.0, 1.5]), st.text(max_size=6),
    st.sampled_from(["bf16", "mxfp4", "experts", "gguf", "float16", "sliding_attention", "tiny", "4"]),
    st.lists(st.sampled_from(["full_attention", "sliding_attention", "mamba", "x"]), max_size=5),
    st.lists(st.dictionaries(st.sampled_from(["full_attention", "sliding_attention", "bogus"]), st.integers(-1, 3), max_size=2),
             max_size=3),
    st.fixed_dictionaries({"source": st.sampled_from(["gguf", "x"]), "embedding": st.integers(-1, 10**6),
                           "body": st.integers(0, 10**6)}, optional={"lm_head": st.integers(0, 9), "routed_experts": st.integers(0, 9)}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(["llama-3.1-8b", "gemma-3-27b", "deepseek-v3", "jamba-v0.1", "gpt-oss-20b", "llama-4-scout"]),
    edits=st.dictionaries(st.sampled_from(sorted(SPEC_FIELDS) + ["unknown_field"]), ANY_VALUE, min_size=1, max_size=3),
    drop=st.sets(st.sampled_from(sorted(SPEC_FIELDS)), max_size=1),
)
def test_the_cheap_check_never_accepts_what_modelspec_refuses(base, edits, drop):
    from pydantic import ValidationError

    fields = {k: v for k, v in {**catalog_data(base), **edits}.items() if k not in drop}
    shape = shape_if_valid(fields)
    try:
        spec = ModelSpec.model_validate(fields)
    except ValidationError:
        assert shape is None, fields
        return
    if shape is not None:
        assert shape.model_dump() == spec.model_dump()
        assert shape.layer_kinds == spec.layer_kinds


def test_the_generated_bases_are_catalog_specs():
    for name in ("llama-3.1-8b", "gemma-3-27b", "deepseek-v3", "jamba-v0.1", "gpt-oss-20b", "llama-4-scout"):
        assert (SPECS_DIR / f"{name}.yaml").is_file(), name


# ------------------------------------------------------------------ no pydantic on any input path


def _write_inputs(tmp_path: Path) -> dict[str, tuple[str, dict]]:
    """(reference, extra environment) of each input kind `estimate` takes."""
    config = FIXTURES / "llama-3.1-8b-instruct.json"
    spec = tmp_path / "my-llama.yaml"
    spec.write_text((SPECS_DIR / "llama-3.1-8b.yaml").read_text())
    folder = tmp_path / "Llama"
    folder.mkdir()
    shutil.copy(config, folder / "config.json")
    commit = "ab" * 20
    snapshot = tmp_path / "hub" / "models--acme--Llama" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(config, snapshot / "config.json")
    weights = tmp_path / "with-weights"
    weights.mkdir()
    shutil.copy(config, weights / "config.json")
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "BF16", "shape": [128256, 4096], "data_offsets": [0, 2 * 128256 * 4096]},
                         "model.layers.0.mlp.up_proj.weight": {"dtype": "BF16", "shape": [8 * 10**9 // 4096, 4096],
                                                               "data_offsets": [2 * 128256 * 4096, 2 * 128256 * 4096 + 2 * (8 * 10**9 // 4096) * 4096]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(weights / "model.safetensors", "wb") as f:  # header only; the data is a sparse hole
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 2 * 128256 * 4096 + 2 * (8 * 10**9 // 4096) * 4096)
    from test_import_gguf import EMBED, llama_metadata, write_gguf

    gguf = write_gguf(tmp_path / "tiny.gguf", llama_metadata(), EMBED)
    hub = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    return {"catalog": ("llama-3.1-8b", {}), "spec_yaml": (str(spec), {}), "config_file": (str(folder / "config.json"), {}), "config_folder": (str(folder), {}),
            "hf_cache_id": ("acme/Llama", hub), "gguf": (str(gguf), {}), "safetensors": (str(weights), {})}


@pytest.mark.parametrize("kind", ["catalog", "spec_yaml", "config_file", "config_folder", "hf_cache_id", "gguf", "safetensors"])
def test_estimate_json_on_every_input_kind_loads_no_pydantic_and_no_rich(tmp_path, kind):
    import os

    ref, env = _write_inputs(tmp_path)[kind]
    code = (
        f"import sys; sys.argv=['kvplan','estimate',{ref!r},'-f','json']\n"
        "from kvplan.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('torch', 'pydantic', 'pydantic_core', 'yaml', 'numpy', 'rich', 'kvplan.model.spec') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.strip().splitlines()[-1]
    assert loaded == ("['yaml']" if kind == "spec_yaml" else "[]")
