"""The version of kvplan's JSON documents: one constant, in every JSON document kvplan writes.

`"schema_version"` is the first key of each object kvplan prints or saves as JSON
(`estimate`, `compare`, `check`, `diff`, `measure`, `gpus`, `show`, `models`; a
sweep or catalog prints an array of objects, each stamped). It grows when a field
is renamed, removed or changes meaning; a new field does not change it (README:
"JSON output (stable)"). No imports: the fast path reads it.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1


def stamped(data: Any) -> Any:
    """`data` with "schema_version" first in the object, or in each object of a list (others unchanged)."""
    if isinstance(data, dict):
        return {"schema_version": SCHEMA_VERSION, **{k: v for k, v in data.items() if k != "schema_version"}}
    if isinstance(data, list):
        return [stamped(x) if isinstance(x, dict) else x for x in data]
    return data
