"""kvplan/sources/catalog.py: the index writer, the YAML depth count and resolve_spec's default.

Found by `python tools/mutate.py kvplan/sources/catalog.py --sample 15 --seed 1` (docs/mutation.md):
- no test ran `write_index` (`python -m kvplan.sources.catalog`). Here it writes into a temporary folder;
  what it writes must be the shipped model_specs/_index.json (tests/test_fast_path.py holds that file
  current), byte for byte, and it returns the path it wrote;
- the nesting depth of a long YAML file could fall by two per closed collection and no test noticed;
- `resolve_spec`'s `fast` could default to True and no test noticed.
"""

from __future__ import annotations

import pytest

from kvplan.sources import catalog


def test_write_index_writes_the_shipped_index_and_returns_its_path(tmp_path, monkeypatch):
    shipped = catalog.INDEX_FILE.read_text(encoding="utf-8")
    target = tmp_path / "_index.json"
    monkeypatch.setattr(catalog, "INDEX_FILE", target)
    assert catalog.write_index() == target
    assert target.read_text(encoding="utf-8") == shipped


def test_nesting_depth_counts_each_closed_collection_once(tmp_path):
    # ten empty lists opened and closed before a 501-deep list: the depth at the deep list's innermost
    # bracket is 501 (> MAX_YAML_DEPTH, 500), whatever came before it, so the file is refused at its line
    from kvplan.errors import InputError

    path = tmp_path / "deep.yaml"
    path.write_text("pre: [" + ", ".join(["[]"] * 10) + "]\ndeep: " + "[" * 501 + "]" * 501 + "\n")
    with pytest.raises(InputError) as err:
        catalog.resolve_spec(str(path))
    assert err.value.message == f"{path}:2: nested more than 500 levels deep; a kvplan file nests a few levels"


def test_resolve_spec_gives_the_pydantic_model_unless_asked_for_the_fast_path():
    # resolve_spec's contract: `fast` is opt-in, so a caller that needs ModelSpec's own methods
    # (model_dump(mode="json"), model_copy) gets a ModelSpec by default; fast=True may give the index's ModelShape
    from kvplan.model.shape import ModelShape
    from kvplan.model.spec import ModelSpec

    spec = catalog.resolve_spec("llama-3.1-8b")
    assert type(spec) is ModelSpec
    assert spec.model_copy(update={"name": "copy"}).name == "copy"
    assert type(catalog.resolve_spec("llama-3.1-8b", fast=True)) is ModelShape
