"""vLLM as an engine: its blocks for a batch, its start-up refusals (rules in `kvplan.engines.vllm_rules`).

`cache()` pages `kvplan.model.layout` in vLLM's blocks (16 tokens on CUDA, 64 for
MLA, as FlashMLA requires): whole blocks per sequence, and a sliding window that
may start mid-block holds ceil((W - 1) / bs) + 1 blocks (vllm/v1/kv_cache_interface.py,
SlidingWindowSpec). `capacity()` applies its budget rule on a GPU: pool, groups and
log lines (`kvplan.engines.vllm_rules.Pool`, which the planner's searches use too). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvplan.engines import EngineCache, Ledger, kind_rows
from kvplan.engines.vllm_rules import (DEFAULT_MAX_NUM_BATCHED_TOKENS,
                                       block_size_override, default_block_size, kv_cache_dtype_refusal, max_model_len_refusal, platform_refusal, pool_capacity,
                                       state_formats, VllmRules)
from kvplan.model.formats import KVFormat, KVFormatPair
from kvplan.model.layout import CacheLayout, LayerKind

NAME = "vllm"
SOURCES = (
    "vllm-project/vllm vllm/v1/kv_cache_interface.py AttentionSpec / SlidingWindowSpec / MLAAttentionSpec",
    "vllm-project/vllm vllm/v1/core/kv_cache_utils.py (groups, blocks; see kvplan.engines.vllm_rules)",
)


@dataclass(frozen=True, slots=True)
class VllmOptions:
    """vLLM's settings that move the batch's bytes and its budget on a GPU."""

    block_size: Optional[int] = None  # None: default_block_size(spec)
    tp: int = 1
    pp: int = 1
    gpu_memory_utilization: Optional[float] = None  # None: the default of rules.version (0.32: 0.92, 0.10: 0.9)
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS  # on a GPU the pipeline gives vLLM's for it
    max_num_seqs: Optional[int] = None  # None: vLLM's default for the GPU (the planner's throughput cap)
    cuda_total_memory: Optional[int] = None  # --cuda-total-memory: the planner's MemoryInputs carry it
    rules: VllmRules = VllmRules()  # the version and vLLM's own flags that move the pool


def cache(spec, context: int, batch: int, opts: VllmOptions, *, kv_cache_dtype: str = "auto",
          ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None) -> EngineCache:
    """vLLM's blocks for `batch` sequences of `context` tokens (per-request, before the pool is sized)."""
    fmt, state, tp = ideal_format, ideal_state, opts.tp
    bs = block_size_override(spec, opts.rules) or opts.block_size or default_block_size(spec, opts.rules)
    base = CacheLayout(spec, fmt, block_size=1, tp=tp, state_format=state).at(context, batch)
    settings = {"block_size": bs, "tp": tp}
    # vLLM's start-up refusals, as `kvplan estimate`, `check` and `diff` apply them (kvplan.engines.vllm_rules)
    mml = opts.rules.max_model_len
    refusal = (platform_refusal(spec, opts.rules) or kv_cache_dtype_refusal(spec, kv_cache_dtype)
               or max_model_len_refusal(spec, max(context, mml or 0)))
    if not refusal and mml is not None and context > mml:  # vLLM refuses such a request
        refusal = (f"kvplan: --context {context:,} is longer than --max-model-len {mml:,}: vLLM refuses a request "
                   "past its max_model_len")
    if refusal:
        return EngineCache(NAME, spec.name, context, batch, kv_cache_dtype, settings, (), None,
                           base.kv_bytes_total, (), (), (refusal,), (), SOURCES)
    vstate = state_formats(spec, state)
    est = CacheLayout(spec, fmt, block_size=bs, tp=tp, state_format=vstate).at(context, batch)
    ledger = Ledger(base.kv_bytes_total)
    running = base.kv_bytes_total
    if est.state_dtype != base.state_dtype:  # a model hook's SSM dtype (NemotronH, Qwen3.5) where the ideal has none
        running = CacheLayout(spec, fmt, block_size=1, tp=tp, state_format=vstate).at(context, batch).kv_bytes_total
        ledger.step(f"state dtypes {vstate.name} (conv/ssm: --mamba-cache-dtype, --mamba-ssm-cache-dtype as vLLM "
                    "resolves them for this model)", running)
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
    return EngineCache(NAME, spec.name, context, batch, fmt.name, settings, kind_rows(est, True), est.kv_bytes_total,
                       base.kv_bytes_total, ledger.differences, (), (), notes, SOURCES)


def capacity(spec, context: int, batch: int, opts: VllmOptions, memory, *, kv_cache_dtype: str = "auto",
             ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None):
    """vLLM on a GPU: its budget (determine_available_memory) over every stage's weights, its blocks, groups and
    pool, the lines it would log (`kvplan.engines.vllm_rules.Pool`)."""
    return pool_capacity(NAME, spec, context, batch, opts, memory, ideal_format, ideal_state)
