"""TensorRT-LLM (PyTorch backend): 32-token blocks, a fraction of the memory left after weights and activations.

Rules (NVIDIA/TensorRT-LLM):

- `tensorrt_llm/_torch/pyexecutor/_util.py`, `get_cache_size_per_token`
  (later `KVCacheManager.get_cache_size_per_token` in `resource_manager.py`):
  mem_per_token = 1 byte with an fp8 KV cache, else 2; MLA (config has
  kv_lora_rank): head_dim = kv_lora_rank + qk_rope_head_dim, kv_factor 1, no tp
  split; else head_dim = head_dim x num_key_value_heads // tp (the product divided:
  no max(1, .) replication floor), kv_factor 2 (V as wide as K); times the layers
  of this pipeline rank (every layer, windowed or not).
- `get_fraction_from_executor_config`: free_gpu_memory_fraction, 0.9 when unset.
- `cal_max_tokens`: available_kv = (total_gpu_memory - peak_memory +
  trial_cache) x fraction, max_tokens = available_kv // bytes_per_token, logged as
  "Peak memory during memory usage profiling (torch + non-torch): %.2f GiB,
  available KV cache memory when calculating max tokens: %.2f GiB, fraction is
  set %s, kv size is %d"; `estimate_max_kv_cache_tokens` logs "Estimated max tokens
  in KV cache : %d" and caps it by kv_cache_config.max_tokens. peak_memory is the
  profiled torch peak + non-torch memory, trial cache included (so it cancels).
- `tensorrt_llm/llmapi/llm_args.py`, `KvCacheConfig.tokens_per_block`: 32.
- `create_kv_cache_manager`: MLA uses CacheType SELFKONLY with one KV head of
  kv_lora_rank + qk_rope_head_dim (no V).

Not re-read: how the block pool is split among layers of different windows
(the docs say separate pools, split statically); kvplan gives a windowed layer
ceil(min(context, W) / tokens_per_block) blocks and counts capacity with the
estimator above (all layers at full cost). Mamba-hybrid state
(`MambaHybridCacheManager`, nemotron-H): the ideal state size. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvplan.model.kinds import KINDS, KINDS_BY_NAME, LayerKind
from kvplan.model.layout import ceil_div, kv_heads_per_rank
from kvplan.engines import (GIB, EngineCache, EngineCapacity, KindCache, Ledger, MemoryInputs, ideal_estimate,
                            ideal_state_row, kind_counts, window_of)
from kvplan.engines.base import unread_geometry_refusal
from kvplan.errors import InputError, require_at_least
from kvplan.model.formats import KVFormat, KVFormatPair

ENGINE = "trtllm"
DEFAULT_TOKENS_PER_BLOCK = 32  # KvCacheConfig.tokens_per_block
DEFAULT_FREE_GPU_MEMORY_FRACTION = 0.9  # get_fraction_from_executor_config
KV_DTYPES = ("auto", "fp8")

SOURCES = (
    "NVIDIA/TensorRT-LLM tensorrt_llm/_torch/pyexecutor/_util.py get_cache_size_per_token / cal_max_tokens",
    "NVIDIA/TensorRT-LLM tensorrt_llm/_torch/pyexecutor/_util.py get_fraction_from_executor_config",
    "NVIDIA/TensorRT-LLM tensorrt_llm/llmapi/llm_args.py KvCacheConfig.tokens_per_block",
)


@dataclass(frozen=True, slots=True)
class TrtllmOptions:
    """TensorRT-LLM KvCacheConfig fields that move bytes."""

    tokens_per_block: int = DEFAULT_TOKENS_PER_BLOCK
    free_gpu_memory_fraction: float = DEFAULT_FREE_GPU_MEMORY_FRACTION
    max_tokens: Optional[int] = None  # KvCacheConfig.max_tokens
    tp: int = 1


def kv_dtype(kv_cache_dtype: str, model_dtype: str) -> tuple[Optional[str], Optional[str]]:
    """(TensorRT-LLM's KV dtype, a refusal): auto (2 bytes in the estimator) or fp8."""
    name = kv_cache_dtype.strip().lower()
    if name in ("auto", model_dtype, "bf16", "fp16"):
        return "auto", None
    if name in ("fp8", "fp8_e4m3"):
        return "fp8", None
    return None, (f"TensorRT-LLM's KV cache dtype is auto or fp8 (kv_cache_config.dtype); "
                  f"{kv_cache_dtype} is not a TensorRT-LLM KV cache dtype")


def layer_token_bytes(spec, mem_per_token: int, tp: int) -> int:
    """get_cache_size_per_token for one layer: esz x kv_factor x (head_dim x H_kv // tp), or the MLA latent."""
    if spec.is_mla:
        return mem_per_token * spec.mla_latent_dim
    return mem_per_token * 2 * (spec.k_head_dim * spec.num_key_value_heads // tp)


def bytes_per_token(spec, mem_per_token: int, tp: int) -> int:
    """get_cache_size_per_token: every layer of the model (pp = 1), windowed or not."""
    counts = kind_counts(spec)
    layers = sum(n for k, n in counts.items() if KINDS[k].has_kv)
    return max(layers, 1) * layer_token_bytes(spec, mem_per_token, tp)


def cache(spec, context: int, batch: int, opts: TrtllmOptions, *, kv_cache_dtype: str = "auto",
          ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None) -> EngineCache:
    """The blocks TensorRT-LLM gives `batch` sequences of `context` tokens."""
    require_at_least("--context", context, 1, "token")
    require_at_least("--batch", batch, 1, "sequence")
    bs = opts.tokens_per_block
    if bs < 1 or bs & (bs - 1):
        raise InputError(f"--tokens-per-block {bs} must be a power of two")
    tp = opts.tp
    ideal = ideal_estimate(spec, ideal_format, context, batch, tp, ideal_state)
    dtype, refusal = kv_dtype(kv_cache_dtype, spec.dtype)
    refusal = refusal or unread_geometry_refusal(spec, "TensorRT-LLM")
    settings = {"kv_cache_dtype": dtype, "tokens_per_block": bs, "tp": tp}
    if refusal:
        return EngineCache(ENGINE, spec.name, context, batch, kv_cache_dtype, settings, (), None,
                           ideal.kv_bytes_total, (), (), (refusal,), (), SOURCES)
    mem_per_token = 1 if dtype == "fp8" else 2
    counts = kind_counts(spec)
    ledger = Ledger(ideal.kv_bytes_total)
    state_total = sum(k.bytes_total for k in ideal.by_kind if KINDS_BY_NAME[k.kind].has_state)
    attention = [k for k in counts if KINDS[k].has_kv]

    def total(per_token_fn, tokens_fn) -> int:
        out = state_total
        for kind in attention:
            out += tp * counts[kind] * per_token_fn(kind) * batch * tokens_fn(kind)
        return out

    def held(kind):
        return KINDS[kind].tokens_held(context, window_of(spec, kind))

    def blocks(kind):
        return ceil_div(held(kind), bs) * bs

    # 1. the estimator's element size: 2 bytes, 1 for fp8 (V as wide as K)
    if spec.is_mla:
        typed = {k: mem_per_token * spec.mla_latent_dim for k in attention}
    else:
        typed = {k: mem_per_token * 2 * spec.k_head_dim * kv_heads_per_rank(spec, tp) for k in attention}
    ledger.step(f"{'fp8' if dtype == 'fp8' else '2-byte'} elements, K and V of head_dim each", total(typed.get, held))
    # 2. tensor parallelism: head_dim x H_kv // tp per rank, no replication floor
    ours = {k: layer_token_bytes(spec, mem_per_token, tp) for k in attention}
    if ours != typed:
        ledger.step(f"head_dim x {spec.num_key_value_heads} KV heads // tp {tp} per rank (no replication)",
                    total(ours.get, held))
    # 3. whole blocks of tokens_per_block tokens per sequence
    ledger.step(f"{bs}-token blocks", total(ours.get, blocks))
    kv_total = ledger.total

    rows = []
    for kind, n in counts.items():
        if KINDS[kind].has_state:
            rows.append(ideal_state_row(ideal, kind, n, "Mamba state (MambaHybridCacheManager) not re-read: the ideal state size"))
        elif kind in attention:
            note = "no V (CacheType SELFKONLY)" if kind is LayerKind.MLA else ""
            rows.append(KindCache(kind.value, n, blocks(kind), batch * blocks(kind), tp * ours[kind],
                                  tp * n * ours[kind] * batch * blocks(kind), note))
    notes = []
    if any(KINDS[k].windowed for k in counts):
        notes.append("Windowed layers get their own pools (docs); kvplan gives them ceil(min(context, W) / "
                     f"{bs}) blocks. The capacity estimator counts them at full cost.")
    settings["bytes_per_token"] = bytes_per_token(spec, mem_per_token, tp)
    return EngineCache(ENGINE, spec.name, context, batch, dtype if dtype == "fp8" else f"auto ({spec.dtype})",
                       settings, tuple(rows), kv_total, ideal.kv_bytes_total, ledger.differences, (), (),
                       tuple(notes), SOURCES)


def capacity(spec, context: int, batch: int, opts: TrtllmOptions, mem: MemoryInputs, *,
             kv_cache_dtype: str = "auto", ideal_format: KVFormatPair,
             ideal_state: Optional[KVFormat] = None) -> EngineCapacity:
    """max_tokens = (GPU memory - profiled peak) x free_gpu_memory_fraction // bytes per token."""
    fraction = opts.free_gpu_memory_fraction
    if not 0 < fraction <= 1:
        raise InputError(f"--free-gpu-memory-fraction {fraction} must be in (0, 1]")
    rule = ("TensorRT-LLM cal_max_tokens: KV = (GPU memory - peak of the profiling run) x "
            "free_gpu_memory_fraction; peak = weights + activations + non-torch")
    dtype, refusal = kv_dtype(kv_cache_dtype, spec.dtype)
    refusal = refusal or unread_geometry_refusal(spec, "TensorRT-LLM")
    peak = mem.weights_bytes + mem.activation_bytes + mem.non_torch_bytes
    available = (mem.gpu_memory_bytes - peak) * fraction
    settings = {"free_gpu_memory_fraction": fraction, "peak_memory_bytes": peak}
    if refusal:
        return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, int(available), None,
                              0, False, (), (refusal,), (), settings)
    mem_per_token = 1 if dtype == "fp8" else 2
    per_token = bytes_per_token(spec, mem_per_token, opts.tp)
    max_tokens = max(int(available // per_token), 0)
    if opts.max_tokens is not None:
        max_tokens = min(max_tokens, opts.max_tokens)
    bs = opts.tokens_per_block
    seqs = (max_tokens // bs) // ceil_div(context, bs)
    logs = (
        f"Peak memory during memory usage profiling (torch + non-torch): {peak / GIB:.2f} GiB, available KV cache "
        f"memory when calculating max tokens: {available / GIB:.2f} GiB, fraction is set {fraction}, "
        f"kv size is {per_token}",
        f"Estimated max tokens in KV cache : {max_tokens}",
    )
    notes = (f"activations: {mem.activation_source}",
             "The printed peak also holds the profiling run's trial KV cache; it cancels in the available memory.")
    settings.update(bytes_per_token=per_token, max_tokens=max_tokens, blocks=max_tokens // bs)
    return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, int(available),
                          max_tokens, seqs, seqs >= batch, logs, (), notes, settings)


# What a decode step reads of this cache (kvplan's roofline, `kvplan.plan.capacity.engine_roofline`).
KV_READ = "the batch's blocks, read whole each step (the last block of a sequence too); the pool's free blocks are not"
