"""The catalog fast path: validated specs from model_specs/_index.json, no pydantic at start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvplan.model.layout import CacheLayout
from kvplan.sources.catalog import INDEX_FILE, SPECS_DIR, _sha256, build_index, catalog_names, load_spec_file, resolve_spec
from kvplan.model.formats import parse_format_pair
from kvplan.plan.planner import stage_weight_bytes
from kvplan.model.shape import ModelShape


def test_index_is_current():
    shipped = json.loads(INDEX_FILE.read_text())
    assert shipped == json.loads(json.dumps(build_index())), (
        "model_specs/_index.json is stale: run `python -m kvplan.sources.catalog` after editing a spec"
    )


@pytest.mark.parametrize("name", catalog_names())
def test_shape_from_index_equals_the_validated_spec(name):
    shape = resolve_spec(name, fast=True)
    spec = load_spec_file(SPECS_DIR / f"{name}.yaml")
    assert isinstance(shape, ModelShape)
    assert shape.layer_kinds == spec.layer_kinds
    for attr in ("k_head_dim", "v_head_dim_resolved", "dtype", "active_parameters", "state_elements_per_layer_resolved", "is_mla",
                 "weights_dtype", "weights_quantized", "routed_expert_weight_parameters",
                 "active_routed_expert_weight_parameters"):
        assert getattr(shape, attr) == getattr(spec, attr), attr
    dtype = spec.weights_dtype or spec.dtype
    for active in (False, True):
        assert stage_weight_bytes(shape, [spec.num_hidden_layers], dtype, 1, active=active) == stage_weight_bytes(
            spec, [spec.num_hidden_layers], dtype, 1, active=active)
    fmt = parse_format_pair("auto", spec.dtype)
    assert CacheLayout(shape, fmt, block_size=16).at(40_000, 3) == CacheLayout(spec, fmt, block_size=16).at(40_000, 3)


def test_an_edited_spec_is_validated_again(tmp_path, monkeypatch):
    import kvplan.sources.catalog as catalog

    (tmp_path / "llama-3.1-8b.yaml").write_text((SPECS_DIR / "llama-3.1-8b.yaml").read_text().replace("num_key_value_heads: 8", "num_key_value_heads: 4"))
    monkeypatch.setattr(catalog, "SPECS_DIR", tmp_path)
    spec = catalog.resolve_spec("llama-3.1-8b", fast=True)
    assert not isinstance(spec, ModelShape) and spec.num_key_value_heads == 4
    assert catalog._sha256(tmp_path / "llama-3.1-8b.yaml") != _sha256(SPECS_DIR / "llama-3.1-8b.yaml")


def test_shape_is_frozen():
    shape = resolve_spec("llama-3.1-8b", fast=True)
    with pytest.raises(AttributeError):
        shape.num_hidden_layers = 3


def test_estimate_on_a_catalog_model_loads_neither_pydantic_nor_yaml():
    code = (
        "import sys; sys.argv=['kvplan','estimate','gemma-3-27b','-c','32768','-f','json'];"
        "from kvplan.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'pydantic', 'pydantic_core', 'yaml', 'numpy', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
