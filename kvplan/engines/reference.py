"""The ideal cache and vLLM as `EngineCache` rows, so `kvplan compare` can set them beside the others.

ideal: `kvplan.model.layout` with no paging: exactly the tokens each layer needs.
vllm: `kvplan.model.layout` paged in vLLM's blocks (16 tokens on CUDA, 64 for MLA, as
FlashMLA requires): whole blocks per sequence, and a sliding window that may
start mid-block holds ceil((W - 1) / bs) + 1 blocks (vllm/v1/kv_cache_interface.py,
SlidingWindowSpec; see kvplan.engines.vllm_rules for groups, budget and log lines,
which `kvplan.plan.planner` applies when a GPU is given). Pure: no I/O.
"""

from __future__ import annotations

from typing import Optional

from kvplan.model.kinds import KINDS_BY_NAME, LayerKind
from kvplan.model.layout import CacheEstimate, CacheLayout
from kvplan.engines import EngineCache, KindCache, Ledger
from kvplan.model.formats import KVFormat, KVFormatPair
from kvplan.engines.vllm_rules import kv_cache_dtype_refusal, max_model_len_refusal

IDEAL_SOURCES = ("kvplan.model.layout CacheLayout (no paging): the tokens each layer needs, windows min(context, W)",)
VLLM_SOURCES = (
    "vllm-project/vllm vllm/v1/kv_cache_interface.py AttentionSpec / SlidingWindowSpec / MLAAttentionSpec",
    "vllm-project/vllm vllm/v1/core/kv_cache_utils.py (groups, blocks; see kvplan.engines.vllm_rules)",
)


def default_vllm_block_size(spec) -> int:
    """16 on CUDA; 64 for MLA (FlashMLA requires it)."""
    return 64 if spec.is_mla else 16


def _rows(est: CacheEstimate, paged: bool) -> tuple[KindCache, ...]:
    rows = []
    for k in est.by_kind:
        rule = KINDS_BY_NAME[k.kind]
        if not rule.holds_anything:
            continue
        if rule.has_state:
            rows.append(KindCache(k.kind, k.layers, 0, est.batch, k.state_bytes_per_sequence_per_layer, k.bytes_total))
            continue
        held = k.tokens_reserved if paged else k.tokens_held
        per_slot = k.bytes_total // (k.layers * held * est.batch) if held else 0  # all tp ranks
        rows.append(KindCache(k.kind, k.layers, held, est.batch * held, per_slot, k.bytes_total,
                              "per rank x tp ranks" if est.tensor_parallel_size > 1 else ""))
    return tuple(rows)


def ideal(spec, context: int, batch: int, fmt: KVFormatPair, *, tp: int = 1,
          state_format: Optional[KVFormat] = None) -> EngineCache:
    """The ideal cache as an engine row (no differences by definition)."""
    est = CacheLayout(spec, fmt, block_size=1, tp=tp, state_format=state_format).at(context, batch)
    return EngineCache("ideal", spec.name, context, batch, fmt.name, {"tp": tp}, _rows(est, False),
                       est.kv_bytes_total, est.kv_bytes_total, (), (), (), (), IDEAL_SOURCES)


def vllm(spec, context: int, batch: int, fmt: KVFormatPair, *, kv_cache_dtype: str = "auto", tp: int = 1,
         block_size: Optional[int] = None, state_format: Optional[KVFormat] = None) -> EngineCache:
    """vLLM's blocks for `batch` sequences of `context` tokens (per-request, before the pool is sized)."""
    bs = block_size or default_vllm_block_size(spec)
    base = CacheLayout(spec, fmt, block_size=1, tp=tp, state_format=state_format).at(context, batch)
    settings = {"block_size": bs, "tp": tp}
    # vLLM's start-up refusals, as `kvplan estimate`, `check` and `diff` apply them (kvplan.engines.vllm_rules)
    refusal = kv_cache_dtype_refusal(spec, kv_cache_dtype) or max_model_len_refusal(spec, context)
    if refusal:
        return EngineCache("vllm", spec.name, context, batch, kv_cache_dtype, settings, (), None,
                           base.kv_bytes_total, (), (), (refusal,), (), VLLM_SOURCES)
    est = CacheLayout(spec, fmt, block_size=bs, tp=tp, state_format=state_format).at(context, batch)
    ledger = Ledger(base.kv_bytes_total)
    running = base.kv_bytes_total
    for k in est.by_kind:
        if not k.paging_bytes:
            continue
        running += k.paging_bytes
        if k.kind == LayerKind.SLIDING.value and k.tokens_held < context:
            cause = (f"sliding layers: ceil((W - 1) / {bs}) + 1 = {k.tokens_reserved // bs} blocks "
                     "(a window that starts mid-block)")
        elif k.kind == LayerKind.CHUNKED.value and k.tokens_held < context:
            cause = f"chunked layers: {k.tokens_reserved // bs} blocks of {bs}"
        else:
            cause = f"{bs}-token blocks ({k.kind.replace('_', ' ')})"
        ledger.step(cause, running)
    assert ledger.total == est.kv_bytes_total
    notes = ("With --gpu, vLLM's groups, pool and log lines come from kvplan.plan.planner; without one the "
             "window layers are paged as a running sequence holds them.",)
    return EngineCache("vllm", spec.name, context, batch, fmt.name, settings, _rows(est, True), est.kv_bytes_total,
                       base.kv_bytes_total, ledger.differences, (), (), notes, VLLM_SOURCES)
