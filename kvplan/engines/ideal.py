"""The ideal cache as an engine: exactly the tokens each layer needs, no paging, no pool.

`cache()` is `kvplan.model.layout` at block size 1 (windows hold min(context, W)
tokens), so it has no difference from itself by definition. `capacity()` applies
vLLM's budget rule on a GPU to exactly the tokens held (paged only with --block-size
above 1: `kvplan.engines.vllm_rules.Pool`). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvplan.engines import EngineCache, ideal_estimate, kind_rows
from kvplan.engines.vllm_rules import DEFAULT_MAX_NUM_BATCHED_TOKENS, pool_capacity
from kvplan.model.formats import KVFormat, KVFormatPair

NAME = "ideal"
SOURCES = ("kvplan.model.layout CacheLayout (no paging): the tokens each layer needs, windows min(context, W)",)


@dataclass(frozen=True, slots=True)
class IdealOptions:
    """Tensor-parallel ranks (bytes are for all ranks) and, on a GPU, vLLM's budget settings the planner applies."""

    tp: int = 1
    block_size: Optional[int] = None  # on a GPU: pages of this many tokens (None, 1: no paging)
    pp: int = 1
    gpu_memory_utilization: Optional[float] = None  # None: vLLM's default at its default version (vllm_rules)
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS  # on a GPU the pipeline gives vLLM's for it
    max_num_seqs: Optional[int] = None  # None: vLLM's default for the GPU (the planner's throughput cap)
    cuda_total_memory: Optional[int] = None  # --cuda-total-memory: the planner's MemoryInputs carry it


def cache(spec, context: int, batch: int, opts: IdealOptions, *, kv_cache_dtype: str = "auto",
          ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None) -> EngineCache:
    """The ideal cache as an engine row (no differences by definition)."""
    est = ideal_estimate(spec, ideal_format, context, batch, opts.tp, ideal_state)
    return EngineCache(NAME, spec.name, context, batch, ideal_format.name, {"tp": opts.tp}, kind_rows(est, False),
                       est.kv_bytes_total, est.kv_bytes_total, (), (), (), (), SOURCES)


def capacity(spec, context: int, batch: int, opts: IdealOptions, memory, *, kv_cache_dtype: str = "auto",
             ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None):
    """The ideal cache on a GPU: vLLM's budget rule, exactly the tokens held (`kvplan.engines.vllm_rules.Pool`)."""
    return pool_capacity(NAME, spec, context, batch, opts, memory, ideal_format, ideal_state)
