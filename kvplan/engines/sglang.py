"""SGLang: one token pool sized by mem_fraction_static, one slot per token, a padding page per buffer.

Rules (sgl-project/sglang):

- `python/sglang/srt/model_executor/model_runner_kv_cache_mixin.py`,
  `ModelRunnerKVCacheMixin.get_cell_size_per_token` (older releases: inline in
  `model_runner.py::ModelRunner.profile_max_num_token`), bytes per token over this
  rank's layers:
  MLA: (kv_lora_rank + qk_rope_head_dim) x layers x esz (no factor 2, no head count,
  whole on every tensor-parallel rank); hybrid SWA: (F x n_full + S x n_swa) x esz
  with F = S = kv_heads(tp) x (head_dim + v_head_dim); else
  kv_heads(tp) x (head_dim + v_head_dim) x layers x esz. esz = 1 for fp8_e4m3/e5m2.
- `profile_max_num_token`: rest = free_after_weights - free_at_start x (1 -
  mem_fraction_static) (GiB floats), max_total_num_tokens = int(rest x 2^30) //
  cell. Activations are not profiled: they live in the (1 - fraction) left over.
- `_resolve_hybrid_swa_tokens`: with r = swa_full_tokens_ratio (default 0.8,
  `server_args.py`), full_tokens = page_align(int(tokens x (F n_full + S n_swa) /
  (F n_full + r S n_swa))), swa_tokens = page_align(int(full_tokens x r)); all-SWA
  models put every token in the SWA pool. The SWA pool is a memory split, not the
  window.
- `MemoryPoolConfig.__post_init__`: no tokens -> "Not enough memory. Please try to
  increase --mem-fraction-static." (+ " Current value: mem_fraction_static=...").
- `python/sglang/srt/mem_cache/memory_pool.py`, `MHATokenToKVPool._create_buffers`:
  per layer K [size + page_size, heads, head_dim] and V [size + page_size, heads,
  v_head_dim] ("The padded slot 0 is used for writing dummy outputs from padded
  tokens"). `KVCache._finalize_allocation_log` (sglang 0.5.23, read in its wheel)
  logs "KV Cache is allocated. dtype: {dtype}, #tokens: {size}, K size: {k:.2f}
  GB, V size: {v:.2f} GB" (MLA pool: "KV size") with GB = 1024 * 1024 * 1024.
- `server_args.py`, `ServerArgs.__post_init__` (releases up to 0.4): the default
  mem_fraction_static is 0.88 at tp 1, 0.87 at tp >= 2, 0.85 at tp >= 4, 0.81 at
  tp >= 8 (some releases 0.83), 0.79 at tp >= 16 — kvplan's default. 0.5.x
  (`arg_groups/memory_hook.py::handle_gpu_memory_settings`) derives it from GPU
  memory instead, (capacity - reserved) / capacity with reserved = 512 MiB +
  1.5 x chunked_prefill_size + CUDA-graph buffers + ..., and resizes the pool
  after CUDA-graph capture: pass the value your server logs as
  --mem-fraction-static. --kv-cache-dtype choices (0.5.23, arg_groups/fields/model.py):
  auto, fp8_e5m2, fp8_e4m3, mxfp8, bf16, bfloat16, nvfp4, fp4_mx_block16; kvplan
  sizes all but the block-scaled mxfp8 / nvfp4 / fp4_mx_block16 pools.
- `configs/model_config.py::ModelConfig.get_num_kv_heads` (0.5.23):
  max(1, H_kv // tp), heads replicated when fewer than ranks.

Not re-read: how many SWA-pool slots a running request keeps (kvplan: the
window, page-aligned); Mamba-state pools (kvplan: the ideal state size). Pure: no I/O.
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
from kvplan.model.formats import FIXED_FORMATS, KVFormat, KVFormatPair, element_pair

ENGINE = "sglang"
# --kv-cache-dtype choices (sglang 0.5.23, arg_groups/fields/model.py)
KV_DTYPES = ("auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4", "fp4_mx_block16")
UNMODELLED_DTYPES = ("mxfp8", "nvfp4", "fp4_mx_block16")  # block-scaled pools kvplan does not size
DEFAULT_SWA_FULL_TOKENS_RATIO = 0.8  # ServerArgs.swa_full_tokens_ratio

SOURCES = (
    "sgl-project/sglang python/sglang/srt/model_executor/model_runner_kv_cache_mixin.py "
    "ModelRunnerKVCacheMixin.get_cell_size_per_token / profile_max_num_token / _resolve_hybrid_swa_tokens",
    "sgl-project/sglang python/sglang/srt/mem_cache/memory_pool.py MHATokenToKVPool._create_buffers",
    "sgl-project/sglang python/sglang/srt/server_args.py ServerArgs.__post_init__ (mem_fraction_static)",
)


def default_mem_fraction_static(tp: int) -> float:
    """ServerArgs.__post_init__'s default by tensor-parallel size."""
    if tp >= 16:
        return 0.79
    if tp >= 8:
        return 0.81
    if tp >= 4:
        return 0.85
    if tp >= 2:
        return 0.87
    return 0.88


@dataclass(frozen=True, slots=True)
class SGLangOptions:
    """SGLang's server flags that move KV bytes."""

    mem_fraction_static: Optional[float] = None  # None: the default for the tp size
    page_size: int = 1  # --page-size
    swa_full_tokens_ratio: float = DEFAULT_SWA_FULL_TOKENS_RATIO
    max_total_tokens: Optional[int] = None  # --max-total-tokens caps the pool
    tp: int = 1


def kv_dtype(spec, kv_cache_dtype: str) -> tuple[Optional[str], Optional[str]]:
    """(SGLang's --kv-cache-dtype value, argparse's refusal)."""
    name = kv_cache_dtype.strip().lower()
    if name in ("auto", spec.dtype):
        return "auto", None
    if name == "fp8":
        return "fp8_e4m3", None  # vLLM's "fp8" is e4m3
    if name in ("bf16", "bfloat16"):
        return "bf16", None
    if name in KV_DTYPES:
        return name, None
    choices = ", ".join(f"'{c}'" for c in KV_DTYPES)
    return None, f"error: argument --kv-cache-dtype: invalid choice: '{kv_cache_dtype}' (choose from {choices})"


def _unmodelled(dtype: str) -> str:
    return f"kvplan does not size SGLang's {dtype} KV pool (block-scaled); no bytes are given for it"


def _esz(spec, dtype: str) -> int:
    if dtype.startswith("fp8"):
        return 1
    return FIXED_FORMATS["bf16" if dtype == "bf16" else spec.dtype].bytes_for(1)


def _align(n: int, page: int) -> int:
    return n // page * page


def _page_up(n: int, page: int) -> int:
    return ceil_div(n, page) * page


def per_token_layer_bytes(spec, esz: int, tp: int) -> dict[LayerKind, int]:
    """Bytes one token costs one layer of each kind on one rank (get_cell_size_per_token's terms):
    the kind's own rule in plain `esz`-byte elements (the pool keeps no scales)."""
    fmt = element_pair(esz)
    out = {}
    for kind in kind_counts(spec):
        rule = KINDS[kind]
        if rule.has_kv:
            out[kind] = rule.bytes_per_token_per_layer(spec, fmt, rule.kv_heads_per_rank(spec, tp))
    return out


def cell_size(spec, esz: int, tp: int) -> int:
    """get_cell_size_per_token: bytes per token over every attention layer of one rank."""
    counts = kind_counts(spec)
    return sum(counts[k] * b for k, b in per_token_layer_bytes(spec, esz, tp).items())


def _swa_kinds(counts) -> list[LayerKind]:
    """The windowed kinds present (sliding, chunked): SGLang pools them apart."""
    return [k for k in counts if KINDS[k].windowed]


TORCH_DTYPE = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32",
               "fp8_e4m3": "torch.float8_e4m3fn", "fp8_e5m2": "torch.float8_e5m2"}


def _pool_lines(spec, counts, per_layer: dict[LayerKind, int], full_tokens: int, swa_tokens: Optional[int],
                page: int, tp_heads: int, esz: int, dtype: str) -> list[str]:
    """The "KV Cache is allocated" lines, one per pool (per rank)."""
    lines = []
    torch_dtype = TORCH_DTYPE[spec.dtype if dtype == "auto" else dtype]
    if spec.is_mla:
        n = counts[LayerKind.MLA]
        kv = n * (full_tokens + page) * spec.mla_latent_dim * esz
        lines.append(f"KV Cache is allocated. dtype: {torch_dtype}, #tokens: {full_tokens}, KV size: {kv / GIB:.2f} GB")
        return lines
    pools = [((LayerKind.FULL,), full_tokens)]
    if swa_tokens is not None:
        pools = [((LayerKind.FULL,), full_tokens), (tuple(_swa_kinds(counts)), swa_tokens)]
    else:
        pools = [((LayerKind.FULL, LayerKind.SLIDING, LayerKind.CHUNKED), full_tokens)]
    for kinds, size in pools:
        layers = sum(counts.get(k, 0) for k in kinds)
        if not layers:
            continue
        k_bytes = layers * (size + page) * tp_heads * spec.k_head_dim * esz
        v_bytes = layers * (size + page) * tp_heads * spec.v_head_dim_resolved * esz
        lines.append(f"KV Cache is allocated. dtype: {torch_dtype}, #tokens: {size}, K size: {k_bytes / GIB:.2f} GB, "
                     f"V size: {v_bytes / GIB:.2f} GB")
    return lines


def state_formats() -> "StateFormats":
    """SGLang's state dtypes: the conv state always bf16 (`CONV_DTYPE = torch.bfloat16`), the SSM / recurrent
    state --mamba-ssm-dtype, default "float32" (server_args.py `mamba_ssm_dtype`; `mamba2_state_dtype` reads it
    back from SGLANG_MAMBA_SSM_DTYPE). Shapes as vLLM's (`Mamba2StateShape.create`: conv (conv_dim / tp,
    K - 1), temporal (H / tp, head_dim, state), groups replicated to tp). Read in copies of
    python/sglang/srt/configs/mamba_utils.py (stored-file ids 114456752, 90950305, 38422068647), not at
    sgl-project/sglang; the pool's slot count (max_mamba_cache_size) is not modelled."""
    from kvplan.model.formats import FIXED_FORMATS
    from kvplan.model.kinds import StateFormats

    return StateFormats(FIXED_FORMATS["bf16"], FIXED_FORMATS["fp32"])


def cache(spec, context: int, batch: int, opts: SGLangOptions, *, kv_cache_dtype: str = "auto",
          ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None) -> EngineCache:
    """The token slots SGLang gives `batch` sequences of `context` tokens, in a pool sized to hold them."""
    require_at_least("--context", context, 1, "token")
    require_at_least("--batch", batch, 1, "sequence")
    if opts.page_size < 1:
        raise InputError(f"--page-size must be at least 1, got {opts.page_size}")
    tp = opts.tp
    ideal = ideal_estimate(spec, ideal_format, context, batch, tp, ideal_state)
    dtype, refusal = kv_dtype(spec, kv_cache_dtype)
    refusal = refusal or unread_geometry_refusal(spec, "SGLang")
    page = opts.page_size
    settings = {"kv_cache_dtype": dtype, "page_size": page, "tp": tp}
    if refusal:
        return EngineCache(ENGINE, spec.name, context, batch, kv_cache_dtype, settings, (), None,
                           ideal.kv_bytes_total, (), (), (refusal,), (), SOURCES)
    if dtype in UNMODELLED_DTYPES:
        return EngineCache(ENGINE, spec.name, context, batch, dtype, settings, (), None,
                           ideal.kv_bytes_total, (), (), (), (_unmodelled(dtype),), SOURCES)
    esz = _esz(spec, dtype)
    counts = kind_counts(spec)
    per_layer = per_token_layer_bytes(spec, esz, tp)
    heads = kv_heads_per_rank(spec, tp)
    ledger = Ledger(ideal.kv_bytes_total)
    state_total = sum(k.bytes_total for k in ideal.by_kind if KINDS_BY_NAME[k.kind].has_state)
    state_layer = 0  # one sequence, one state layer, one rank, in SGLang's dtypes
    # SGLang's Mamba2CacheParams (Mamba-2 and Gated DeltaNet); a Mamba-1 state keeps the ideal size (not re-read)
    sglang_rule = spec.mamba_n_heads is not None or spec.linear_num_value_heads is not None
    if LayerKind.STATE in counts and sglang_rule:
        state_layer = KINDS[LayerKind.STATE].state_bytes_per_layer(spec, state_formats(), tp)
        sglang_state = tp * counts[LayerKind.STATE] * batch * state_layer
        if sglang_state != state_total:
            ledger.step("state: conv bf16, SSM / recurrent fp32 (SGLang's MambaPool dtypes)",
                        ledger.total - state_total + sglang_state)
        state_total = sglang_state
    notes: list[str] = []

    def total(full_per_seq: int, window_per_seq, pool_pad: bool) -> int:
        out = state_total
        for kind, n in counts.items():
            if kind not in per_layer:
                continue
            w = window_of(spec, kind)
            slots = batch * (full_per_seq if w is None else window_per_seq(w))
            if pool_pad:
                slots += page
            out += tp * n * per_layer[kind] * slots
        return out

    # 1. SGLang's element size (fp8: 1 byte, no scales in the pool)
    ledger.step(f"kv cache dtype {dtype} ({esz} B per element)", total(context, lambda w: min(context, w), False))
    # 2. token slots in whole pages
    full_seq = _page_up(context, page)
    ledger.step(f"{page}-token pages", total(full_seq, lambda w: _page_up(min(context, w), page), False))
    # 3. one padding page (slot 0 for padded tokens) in every pool buffer
    ledger.step(f"one {page}-slot padding page per K/V buffer (slot 0 takes padded tokens' writes)",
                total(full_seq, lambda w: _page_up(min(context, w), page), True))
    kv_total = ledger.total

    swa_kinds = _swa_kinds(counts)
    rows = []
    for kind, n in counts.items():
        if KINDS[kind].has_state and not sglang_rule:
            rows.append(ideal_state_row(ideal, kind, n, "Mamba state pool not re-read: the ideal state size"))
            continue
        if KINDS[kind].has_state:
            rows.append(KindCache(kind.value, n, 0, batch, tp * state_layer, tp * n * batch * state_layer,
                                  "MambaPool: conv bf16, SSM / recurrent fp32 (--mamba-ssm-dtype default)"))
            continue
        if kind not in per_layer:
            continue
        w = window_of(spec, kind)
        seq = full_seq if w is None else _page_up(min(context, w), page)
        slots = batch * seq + page
        rows.append(KindCache(kind.value, n, seq, slots, tp * per_layer[kind], tp * n * per_layer[kind] * slots,
                              "per rank x tp ranks" if tp > 1 else ""))
    swa_pool = batch * _page_up(min(context, window_of(spec, swa_kinds[0])), page) if swa_kinds else None
    full_pool = batch * full_seq
    only_swa = swa_kinds and not any(KINDS[k].has_kv and not KINDS[k].windowed for k in counts)
    logs = _pool_lines(spec, counts, per_layer, swa_pool if only_swa else full_pool,
                       swa_pool if swa_kinds and not only_swa else None, page, heads, esz, dtype)
    notes.append(f"Pool sized to hold exactly the batch (--max-total-tokens {full_pool:,}); with --gpu the pool "
                 "is SGLang's own size from --mem-fraction-static.")
    if swa_kinds:
        notes.append("SWA layers: a request keeps only its window in the SWA pool; the pool itself is a memory "
                     "split by --swa-full-tokens-ratio, not the window (see capacity).")
    if tp > 1 and spec.is_mla:
        notes.append("MLA latent whole on every tensor-parallel rank (no head split).")
    settings.update(pool_tokens=full_pool, swa_pool_tokens=swa_pool if swa_kinds and not only_swa else None,
                    cell_size_bytes=cell_size(spec, esz, tp))
    return EngineCache(ENGINE, spec.name, context, batch, dtype if dtype != "auto" else f"auto ({spec.dtype})",
                       settings, tuple(rows), kv_total, ideal.kv_bytes_total, ledger.differences, tuple(logs), (),
                       tuple(notes), SOURCES)


def capacity(spec, context: int, batch: int, opts: SGLangOptions, mem: MemoryInputs, *,
             kv_cache_dtype: str = "auto", ideal_format: KVFormatPair,
             ideal_state: Optional[KVFormat] = None) -> EngineCapacity:
    """max_total_num_tokens from mem_fraction_static, split into full / SWA pools, and what fits."""
    tp = opts.tp
    fraction = opts.mem_fraction_static if opts.mem_fraction_static is not None else default_mem_fraction_static(tp)
    if not 0 < fraction <= 1:
        raise InputError(f"--mem-fraction-static {fraction} must be in (0, 1]")
    if not 0 < opts.swa_full_tokens_ratio <= 1:
        raise InputError(f"--swa-full-tokens-ratio {opts.swa_full_tokens_ratio} must be in (0, 1]")
    rule = ("SGLang profile_max_num_token: KV = free_after_weights - free_at_start x (1 - mem_fraction_static), "
            "free_at_start = GPU memory - non-torch; activations live in the (1 - fraction) left over")
    dtype, refusal = kv_dtype(spec, kv_cache_dtype)
    refusal = refusal or unread_geometry_refusal(spec, "SGLang")
    pre = mem.gpu_memory_bytes - mem.non_torch_bytes  # free when the distributed group starts, before weights
    post = pre - mem.weights_bytes
    rest_gib = post / GIB - pre / GIB * (1 - fraction)  # GiB floats, as get_available_gpu_memory returns them
    budget = int(rest_gib * GIB)
    settings = {"mem_fraction_static": fraction, "free_at_start_bytes": pre, "free_after_weights_bytes": post}
    if refusal or dtype in UNMODELLED_DTYPES:
        return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, budget, None, 0,
                              False, (), (refusal,) if refusal else (), () if refusal else (_unmodelled(dtype),),
                              settings)
    esz = _esz(spec, dtype)
    page = opts.page_size
    counts = kind_counts(spec)
    per_layer = per_token_layer_bytes(spec, esz, tp)
    cell = cell_size(spec, esz, tp)
    tokens = max(0, budget) // cell if cell else 0
    if opts.max_total_tokens is not None:
        tokens = min(tokens, opts.max_total_tokens)
    tokens = tokens // page * page
    swa_kinds = _swa_kinds(counts)
    full_layers = sum(n for k, n in counts.items() if KINDS[k].has_kv and not KINDS[k].windowed)
    full_tokens, swa_tokens = tokens, None
    logs: list[str] = []
    if swa_kinds:
        swa_layers = sum(counts[k] for k in swa_kinds)
        if full_layers == 0:
            full_tokens, swa_tokens = 0, _align(tokens, page)
        else:
            f_bytes = per_layer.get(LayerKind.FULL) or per_layer[LayerKind.MLA]
            s_bytes = per_layer[swa_kinds[0]]
            r = opts.swa_full_tokens_ratio
            total_memory = tokens * (f_bytes * full_layers + s_bytes * swa_layers)
            denominator = f_bytes * full_layers + r * s_bytes * swa_layers
            full_tokens = _align(int(total_memory / denominator), page)
            swa_tokens = _align(int(full_tokens * r), page)
        logs.append(f"Use sliding window memory pool. full_layer_tokens={full_tokens}, swa_layer_tokens={swa_tokens}")
        settings.update(full_layer_tokens=full_tokens, swa_layer_tokens=swa_tokens)
    settings["max_total_num_tokens"] = tokens
    refusals: tuple[str, ...] = ()
    if tokens <= 0:
        refusals = ("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
                    f"Current value: mem_fraction_static={fraction}",)
        return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, budget, tokens, 0,
                              False, tuple(logs), refusals, (), settings)
    heads = kv_heads_per_rank(spec, tp)
    full_seq = _page_up(context, page)
    limits = []
    if full_layers:
        limits.append(full_tokens // full_seq)
    if swa_kinds:
        limits.append(swa_tokens // _page_up(min(context, window_of(spec, swa_kinds[0])), page))
    seqs = min(limits) if limits else 0
    only_swa = bool(swa_kinds) and full_layers == 0
    logs += _pool_lines(spec, counts, per_layer, swa_tokens if only_swa else full_tokens,
                        swa_tokens if swa_kinds and not only_swa else None, page, heads, esz, dtype)
    notes = ("Activations are not subtracted: SGLang leaves them the (1 - mem_fraction_static) share.",)
    return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, budget, tokens, seqs,
                          seqs >= batch, tuple(logs), refusals, notes, settings)


# What a decode step reads of this cache (kvplan's roofline, `kvplan.plan.capacity.engine_roofline`).
KV_READ = ("the batch's slots in SGLang's token pool (one per token) and the padding page, read each step; the "
           "pool's free slots are not read")
