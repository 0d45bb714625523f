"""The ideal cache as an engine: exactly the tokens each layer needs, no paging, no pool.

`cache()` is `kvplan.model.layout` at block size 1 (windows hold min(context, W)
tokens), so it has no difference from itself by definition. Its memory budget is
vLLM's rule without the paging (`kvplan.plan.planner`, engine ideal), which the
pipeline (`kvplan.plan.pipeline`) applies with a GPU. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvplan.engines import EngineCache, ideal_estimate, kind_rows
from kvplan.model.formats import KVFormat, KVFormatPair

NAME = "ideal"
SOURCES = ("kvplan.model.layout CacheLayout (no paging): the tokens each layer needs, windows min(context, W)",)


@dataclass(frozen=True, slots=True)
class IdealOptions:
    """The ideal cache's one setting: tensor-parallel ranks (bytes are for all ranks)."""

    tp: int = 1


def cache(spec, context: int, batch: int, opts: IdealOptions, *, kv_cache_dtype: str = "auto",
          ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None) -> EngineCache:
    """The ideal cache as an engine row (no differences by definition)."""
    est = ideal_estimate(spec, ideal_format, context, batch, opts.tp, ideal_state)
    return EngineCache(NAME, spec.name, context, batch, ideal_format.name, {"tp": opts.tp}, kind_rows(est, False),
                       est.kv_bytes_total, est.kv_bytes_total, (), (), (), (), SOURCES)
