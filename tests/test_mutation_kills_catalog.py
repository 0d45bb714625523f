"""kvplan/sources/catalog.py: `python -m kvplan.sources.catalog` writes the index and names the file it wrote.

Found by `python tools/mutate.py kvplan/sources/catalog.py --sample 15 --seed 1` (docs/mutation.md): no test
ran `write_index`. Here it writes into a temporary folder; what it writes must be the shipped
model_specs/_index.json (tests/test_fast_path.py holds that file current), byte for byte.
"""

from __future__ import annotations

from kvplan.sources import catalog


def test_write_index_writes_the_shipped_index_and_returns_its_path(tmp_path, monkeypatch):
    shipped = catalog.INDEX_FILE.read_text(encoding="utf-8")
    target = tmp_path / "_index.json"
    monkeypatch.setattr(catalog, "INDEX_FILE", target)
    assert catalog.write_index() == target
    assert target.read_text(encoding="utf-8") == shipped
