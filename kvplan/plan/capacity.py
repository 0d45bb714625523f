"""Capacity on a GPU, engine by engine: what sits beside the KV cache, and the answers the pipeline adds.

`memory_inputs` is the GPU and what besides the KV cache sits on it, for the
profiles' budget rules (ideal and vllm: `Planner.memory_inputs`, every stage's
weights); every engine's capacity is its module's `capacity()`. `engine_max_context`
searches the longest context at which a profile's batch fits by its own test
(ideal and vllm search their pool, `kvplan.engines.vllm_rules.Pool.max_context`);
`engine_roofline` is the planner's latency and cost on a profile's answer. Used by
`kvplan.plan.pipeline` with a GPU only (a KV-only estimate never imports this).
"""

from __future__ import annotations

from typing import Any, Optional

from kvplan.errors import InputError


def memory_inputs(spec, gpu, *, context: int, tp: int, weights_dtype: Optional[str], activation: Optional[int],
                  non_torch: Optional[int], label: Optional[str] = None, weights_bytes: Optional[int] = None):
    """The GPU and what besides the KV cache sits on it (per rank), for the profiles' budget rules."""
    from kvplan.engines import MemoryInputs
    from kvplan.plan.planner import (
        DEFAULT_NON_TORCH_BYTES,
        DEFAULT_NON_TORCH_BYTES_TP,
        WEIGHT_DTYPES,
        DEFAULT_MAX_NUM_SEQS,
        activation_estimate,
        stage_weight_bytes,
        weights_from_file,
        weights_source,
    )

    from kvplan.engines.vllm_flags import DTYPE_WORDS, weights_dtype as read_dtype

    given_dtype, weights_dtype = weights_dtype, read_dtype(weights_dtype)  # vLLM's spellings (bfloat16, half, auto)
    dtype = weights_dtype or spec.weights_dtype or spec.dtype
    if dtype not in WEIGHT_DTYPES:
        raise InputError(f"--dtype {given_dtype or dtype!r} is not one of {DTYPE_WORDS}")
    if weights_bytes is not None and weights_dtype is not None:
        raise InputError("--weights-bytes gives the weights' bytes and --dtype casts them; give one of the two")
    weights = stage_weight_bytes(spec, [spec.num_hidden_layers], dtype, tp, from_file=weights_from_file(spec, weights_dtype),
                                 given_bytes=weights_bytes)[0]
    if activation is None:
        from kvplan.engines.vllm_rules import DEFAULT_MAX_NUM_BATCHED_TOKENS

        act = activation_estimate(spec, DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, 4 if dtype == "fp32" else 2, tp)
        source = ("estimated: one forward pass of 8,192 tokens (kvplan's vLLM profile-run estimate); "
                  "--activation-memory sets it")
    else:
        act, source = activation, "--activation-memory"
    if non_torch is None:
        non_torch = DEFAULT_NON_TORCH_BYTES_TP if tp > 1 else DEFAULT_NON_TORCH_BYTES
    return MemoryInputs(label or gpu.name, gpu.memory_bytes, weights, non_torch, act, source,
                        weights_source(spec, weights_dtype, weights_bytes))


def slots_for(engine: str, opts: Any) -> Any:
    """llama.cpp at another batch: one slot per sequence and -c to match, as llamacpp.capacity counts slots."""
    if engine == "llama.cpp":
        from dataclasses import replace

        return replace(opts, parallel=None, ctx_size=None)
    return opts


def engine_max_context(module: Any, spec: Any, engine: str, opts: Any, batch: int, budget: int, memory: Any,
                        kw: dict, limit: int) -> int:
    """The longest context (<= `limit`, the model's max_position_embeddings) at which `batch` sequences fit.

    A search, not a division: pages, 256-cell padding and windows make bytes a
    step function of the context (fit is monotone in it). Fit is the engine's own
    test: SGLang and TensorRT-LLM divide their token pool (`capacity(...).fits`);
    hf and llama.cpp have no pool, so their `fits` is the cache bytes <= room,
    tested here without the slot search their `capacity` also runs.
    """
    from kvplan.model.layout import last_fitting

    if engine == "hf" and opts.cache == "static" and opts.max_cache_len is not None:
        # a StaticCache cannot grow past max_cache_len (generate() leaves one token uncached)
        limit = min(limit, opts.max_cache_len + (1 if opts.generate else 0))
    fixed_cells = engine == "llama.cpp" and opts.ctx_size is not None

    def fits(context: int) -> bool:
        if engine in ("sglang", "trtllm"):
            return module.capacity(spec, context, batch, opts, memory, **kw).fits
        cache = module.cache(spec, context, batch, opts, **kw)
        if cache.kv_bytes_total is None or cache.kv_bytes_total > budget:
            return False
        if fixed_cells:  # -c fixes the cells: a sequence gets its slot's (or its share of the unified pool)
            s = cache.settings
            return context <= s["kv_size"] if s["n_stream"] > 1 else context * batch <= s["n_ctx"]
        return True

    if fits(limit):
        return limit
    if not fits(1):
        return 0
    return last_fitting(fits, 1, limit)  # fits at 1, not at limit


def engine_roofline(module: Any, spec: Any, engine: str, opts: Any, cache: Any, capacity: Any, memory: Any, kw: dict,
                    figures: Any, kv_format: Any, state_format: Any, plan_opts: Any):
    """The planner's roofline (`Planner.roofline`: latency, cost, workload) on an engine profile's answer.

    A decode step reads the weights and the KV bytes the engine allocates for the batch (per rank,
    `cache(...).kv_bytes_total // tp`; the module's `KV_READ` says how far that is what its kernels
    read); the batches it runs at are the engine's own capacity (`capacity` at this context, the
    engine's `capacity()` at a workload's). One pipeline stage, as every profile models.
    """
    from kvplan.plan.planner import Planner

    planner = Planner(spec, figures, kv_format, plan_opts, state_format=state_format)
    tp, context, batch = plan_opts.tp, plan_opts.context, plan_opts.batch
    other = slots_for(engine, opts)  # another batch: llama.cpp's slots follow it

    def kv(sequences: int, at: int) -> Optional[int]:
        this = (sequences, at) == (batch, context)  # the answer's own cache (`cache`), else the engine's at that point
        nbytes = (cache if this else module.cache(spec, at, sequences, other, **kw)).kv_bytes_total
        return None if nbytes is None else nbytes // tp

    def seqs_at(at: int) -> int:
        return module.capacity(spec, at, 1, other, memory, **kw).max_concurrent_sequences

    return planner.roofline(batch, context, capacity.max_concurrent_sequences, kv, seqs_at, module.KV_READ)
