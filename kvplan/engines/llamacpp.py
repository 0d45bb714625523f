"""llama.cpp: the whole context allocated up front, in 256-cell steps, per sequence stream.

Rules (ggml-org/llama.cpp), read in the llama.cpp tree vendored by
llama-cpp-python 0.3.36 (upstream commit 0c1e570, 2026-10-01):

- `src/llama-context.cpp`, `llama_context::llama_context`: n_batch = min(n_ctx, -b)
  and n_ubatch = min(n_batch, -ub) are taken from the requested n_ctx; then
  n_ctx = GGML_PAD(n_ctx, 256) (ref PR #17046). With a unified KV cache
  n_ctx_seq = n_ctx; otherwise n_ctx_seq = GGML_PAD(n_ctx / n_seq_max, 256) and
  n_ctx = n_ctx_seq x n_seq_max, with the warning "n_ctx is not divisible by
  n_seq_max - rounding down to %u" when that changes n_ctx.
- `src/llama-model.cpp`, `llama_model::create_memory`: the cache is built with
  kv_size = n_ctx_seq cells per stream and n_pad = 1.
- `src/llama-kv-cache.cpp`, `llama_kv_cache::llama_kv_cache`: per layer
  K = [n_embd_k_gqa, kv_size, n_stream] of type_k and V = [n_embd_v_gqa, kv_size,
  n_stream] of type_v, n_stream = 1 if unified else n_seq_max; `has_v = !is_mla`,
  so an MLA model (DeepSeek-2/3: converted to one KV head of 576 =
  kv_lora_rank + qk_rope_head_dim) allocates no V at all. It logs
  "%s: size = %7.2f MiB (%6u cells, %3d layers, %2u/%u seqs), K (%s): %7.2f MiB,
  V (%s): %7.2f MiB" with (float) sizes / (1024 x 1024), kv_size, the layers in
  this cache, n_seq_max / n_stream.
- `src/llama-kv-cache-iswa.cpp`, `llama_kv_cache_iswa::llama_kv_cache_iswa`: two
  caches; sliding (and chunked) layers get
  size_swa = GGML_PAD(min(size_base, n_swa x (unified ? n_seq_max : 1) + n_ubatch), 256)
  cells ("the SWA cache is always padded to 256 for performance", issue #17037),
  or size_base with --swa-full ("using full-size SWA cache"). It logs "creating
  non-SWA KV cache, size = %u cells" and "creating     SWA KV cache, size = %u cells".
- `ggml/src/ggml-common.h` block structs: q8_0 = 34 B per 32 values, q4_0 18,
  q4_1 20, q5_0 22, q5_1 24, iq4_nl 18 (kvplan.model.formats holds them);
  row bytes = n / block x block bytes.
- `common/arg.cpp`, `kv_cache_type_from_str`: -ctk/-ctv accept f32, f16, bf16,
  q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1, else "Unsupported cache type: %s".
  `common/common.h`: swa_full = false, kv_unified = false; -ub 512, -b 2048.
- `src/llama-context.cpp`, `llama_init_from_model`: a quantized V cache with
  flash attention "auto" turns it on ("enabling flash_attn since it is required
  for quantized V cache"); with it off: "quantized V cache requires flash_attn
  to be enabled" (builds before the auto switch: "V cache quantization requires
  flash_attn"). With flash attention not off, a quantized K or V must divide every
  head dim by its block ("K cache type %s with block size %u does not divide
  n_embd_head_k=%u"). MLA models refuse different K and V types ("model does
  not support different K (%s) and V (%s) cache types"). A context that fails
  is reported as "failed to initialize the context: %s".
- `src/llama-model.cpp`, `create_memory` (hybrid models): recurrent (Mamba) state
  is kept in GGML_TYPE_F32, max(1, n_seq_max) cells (x (1 + n_rs_seq), 0 unless
  speculative rollback asks for more); per layer the conv state R is
  (d_conv - 1) x (d_inner + 2 n_group d_state) and the SSM state S d_state x d_inner
  (`llama_hparams::n_embd_r` / `n_embd_s`), the same element counts as kvplan's
  spec. `llama_memory_recurrent::llama_memory_recurrent` logs "%s: size = %7.2f MiB
  (%6u cells, %3d layers, %2u seqs %2u rs_seq), R (%s): ..., S (%s): ..., P (%s): ..."
  with every layer of the model counted. llama-server's default `-np auto` means
  4 slots with a unified cache (tools/server/server.cpp); kvplan's defaults are
  llama-cli's (one slot per --batch sequence, not unified).

- `tools/server/server-context.cpp` (read at 001d906): each slot has
  slot.n_ctx = llama_n_ctx_seq(ctx) cells (n_ctx with --kv-unified);
  `update_slots` refuses a prompt of slot.n_ctx tokens or more with "request (%d
  tokens) exceeds the available context size (%d tokens), try increasing it"
  (ERROR_TYPE_EXCEED_CONTEXT_SIZE), and generation stops at the slot's end (no
  context shift by default). kvplan refuses a sequence of --context tokens when
  context > n_ctx_seq, in those words.

Not modelled: the V padding to the widest layer when flash attention is off
(TAG_V_CACHE_VARIABLE; no catalog model has per-layer V widths), the older
iSWA sizing (n_swa x n_seq + n_batch), and older builds that padded n_ctx to 32
without flash attention. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvplan.model.kinds import KINDS, KINDS_BY_NAME, LayerKind
from kvplan.model.layout import ceil_div, last_fitting
from kvplan.engines import (MIB, EngineCache, EngineCapacity, KindCache, Ledger, MemoryInputs, f32, ideal_estimate,
                            kind_counts, window_of)
from kvplan.errors import InputError, require_at_least
from kvplan.model.formats import FIXED_FORMATS, KVFormat, KVFormatPair

ENGINE = "llama.cpp"

# common/arg.cpp kv_cache_types, in its order; kvplan's own names map onto them.
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
_KVPLAN_NAME = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
_ALIASES = {"fp32": "f32", "fp16": "f16", "float32": "f32", "float16": "f16", "half": "f16"}
FLASH_ATTN = ("on", "off", "auto")

PAD = 256  # GGML_PAD(n_ctx, 256) in llama_context and the SWA cache in llama_kv_cache_iswa
DEFAULT_UBATCH = 512  # common_params.n_ubatch (-ub)
DEFAULT_BATCH = 2048  # common_params.n_batch (-b)

SOURCES = (
    "ggml-org/llama.cpp src/llama-context.cpp llama_context::llama_context (n_ctx padding, n_ctx_seq)",
    "ggml-org/llama.cpp src/llama-kv-cache.cpp llama_kv_cache::llama_kv_cache (tensors, has_v = !is_mla, size log)",
    "ggml-org/llama.cpp src/llama-kv-cache-iswa.cpp llama_kv_cache_iswa::llama_kv_cache_iswa (size_swa)",
    "ggml-org/llama.cpp src/llama-context.cpp llama_init_from_model (flash-attention and cache-type checks)",
    "ggml-org/llama.cpp common/arg.cpp kv_cache_type_from_str (accepted cache types)",
    "ggml-org/llama.cpp ggml/src/ggml-common.h (block sizes)",
)
SLOT_SOURCE = ("ggml-org/llama.cpp tools/server/server-context.cpp update_slots (a prompt of n_ctx_seq tokens or more: "
               "\"request (%d tokens) exceeds the available context size (%d tokens), try increasing it\")")


def pad(n: int, to: int = PAD) -> int:
    """GGML_PAD(n, to): n rounded up to a multiple of `to`."""
    return ceil_div(n, to) * to


def cache_type(name: str) -> str:
    """A -ctk/-ctv value as llama.cpp names it ('fp16' is accepted as 'f16')."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def type_format(name: str) -> KVFormat:
    """kvplan's format for a llama.cpp cache type (its ggml block size and bytes)."""
    return FIXED_FORMATS[_KVPLAN_NAME.get(name, name)]


def is_quantized(name: str) -> bool:
    """ggml_is_quantized: every accepted type but f32, f16, bf16."""
    return name not in ("f32", "f16", "bf16")


def row_bytes(name: str, n: int) -> int:
    """ggml_row_size(type, n): n / block x block bytes (n a multiple of the block)."""
    fmt = type_format(name)
    return n // fmt.group_size * fmt.group_bytes


@dataclass(frozen=True, slots=True)
class LlamaCppOptions:
    """llama.cpp's flags that move KV bytes (llama-server / llama-cli names)."""

    cache_type_k: str = "f16"  # -ctk; common's default
    cache_type_v: str = "f16"  # -ctv
    parallel: Optional[int] = None  # -np (n_seq_max); None: one slot per sequence of --batch
    ctx_size: Optional[int] = None  # -c, all slots together; None: --context x --parallel
    ubatch_size: int = DEFAULT_UBATCH  # -ub
    batch_size: int = DEFAULT_BATCH  # -b
    swa_full: bool = False  # --swa-full
    flash_attn: str = "auto"  # -fa on|off|auto
    kv_unified: bool = False  # --kv-unified


@dataclass(frozen=True, slots=True)
class Geometry:
    """The cell counts llama.cpp derives from its flags."""

    n_ctx_requested: int
    n_seq_max: int
    n_stream: int
    n_ubatch: int
    kv_size: int  # cells per stream of the base (non-SWA) cache
    n_ctx: int  # after padding and the per-stream rounding
    rounded_warning: bool


def n_batch(n_ctx_requested: int, opts: LlamaCppOptions) -> int:
    """llama_context's n_batch: -b, limited by the requested context (causal attention), before n_ctx is padded."""
    return min(n_ctx_requested, opts.batch_size)


def geometry(n_ctx_requested: int, opts: LlamaCppOptions, n_seq_max: int) -> Geometry:
    """llama_context's n_ctx / n_ctx_seq and the micro-batch (llama-context.cpp)."""
    n_ubatch = min(n_batch(n_ctx_requested, opts), opts.ubatch_size)
    n_ctx = pad(n_ctx_requested)
    if opts.kv_unified:
        return Geometry(n_ctx_requested, n_seq_max, 1, n_ubatch, n_ctx, n_ctx, False)
    n_ctx_seq = pad(n_ctx // n_seq_max)
    if n_ctx_seq == 0:
        raise InputError("llama.cpp: n_ctx_seq == 0 (the context is smaller than one cell per sequence)")
    return Geometry(n_ctx_requested, n_seq_max, n_seq_max, n_ubatch, n_ctx_seq, n_ctx_seq * n_seq_max,
                    n_ctx_seq * n_seq_max != n_ctx)


def slot_cells(n_ctx_seq: int, n_ctx_train: Optional[int]) -> int:
    """The cells one llama-server slot may fill: tools/server/server-context.cpp `n_ctx_slot()` =
    min(llama_n_ctx_seq, llama_model_n_ctx_train), the training context being the GGUF's `{arch}.context_length`
    (kvplan's max_position_embeddings); --kv-unified-per-slot, which kvplan does not model, caps it too."""
    return min(n_ctx_seq, n_ctx_train) if n_ctx_train else n_ctx_seq


def swa_cells(g: Geometry, window: int, swa_full: bool) -> int:
    """Cells per stream of the SWA cache (llama_kv_cache_iswa)."""
    if swa_full:
        return g.kv_size
    return pad(min(g.kv_size, window * (g.n_seq_max if g.n_stream == 1 else 1) + g.n_ubatch))


def _mib(n: int) -> str:
    """'%7.2f' of (float)n / (1024 x 1024), as llama.cpp prints it."""
    return f"{f32(float(n)) / MIB:7.2f}"


def size_line(total_k: int, total_v: int, cells: int, layers: int, g: Geometry, type_k: str, type_v: str) -> str:
    """llama_kv_cache's summary line for one cache object."""
    return (
        f"llama_kv_cache: size = {_mib(total_k + total_v)} MiB ({cells:6d} cells, {layers:3d} layers, "
        f"{g.n_seq_max:2d}/{g.n_stream} seqs), K ({type_k}): {_mib(total_k)} MiB, V ({type_v}): {_mib(total_v)} MiB"
    )


def recurrent_elements(spec) -> tuple[int, int]:
    """(n_embd_r, n_embd_s): one cell's conv (R) and SSM / recurrent (S) elements in one layer
    (src/llama-hparams.cpp `n_embd_r` = (ssm_d_conv - 1) x (ssm_d_inner + 2 ssm_n_group ssm_d_state),
    `n_embd_s` = ssm_d_state x ssm_d_inner: the K - 1 column geometry of kvplan.model.kinds.State, which
    for Gated DeltaNet is convert_hf_to_gguf's mapping ssm_d_inner = Hv x dv, ssm_d_state = dk,
    ssm_n_group = Hk); a state given as one count stays whole in R."""
    from kvplan.model.kinds import KINDS

    tensors = KINDS[LayerKind.STATE].tensors(spec)
    r = sum(t.elements for t in tensors if t.role == "conv")
    return r, sum(t.elements for t in tensors if t.role == "ssm")


def recurrent_line(spec, layers: int, mem_size: int, n_seq_max: int) -> str:
    """llama_memory_recurrent's summary line: R (conv) and S (SSM) in f32, every model layer counted."""
    n_embd_r, n_embd_s = recurrent_elements(spec)
    r = layers * n_embd_r * 4 * mem_size
    s = layers * n_embd_s * 4 * mem_size
    return (
        f"llama_memory_recurrent: size = {_mib(r + s)} MiB ({mem_size:6d} cells, {spec.num_hidden_layers:3d} layers, "
        f"{n_seq_max:2d} seqs {0:2d} rs_seq), R (f32): {_mib(r)} MiB, S (f32): {_mib(s)} MiB, P (f32): {_mib(0)} MiB"
    )


def refusals(spec, opts: LlamaCppOptions) -> tuple[list[str], list[str]]:
    """What llama.cpp refuses, as it says it, and the log lines its checks print."""
    out: list[str] = []
    logs: list[str] = []
    for t in (opts.cache_type_k, opts.cache_type_v):
        if t not in CACHE_TYPES:  # the argument parser stops at the first bad value (-ctk before -ctv)
            return [f"Unsupported cache type: {t}"], logs
    if opts.flash_attn not in FLASH_ATTN:
        raise InputError(f"--flash-attn {opts.flash_attn!r} is not one of on, off, auto")
    fa = opts.flash_attn
    if spec.is_mla and opts.cache_type_k != opts.cache_type_v:
        out.append(
            f"llama_init_from_model: model does not support different K ({opts.cache_type_k}) "
            f"and V ({opts.cache_type_v}) cache types"
        )
        return out, logs
    if is_quantized(opts.cache_type_v) and fa != "on":
        if fa == "auto":
            logs.append("llama_init_from_model: enabling flash_attn since it is required for quantized V cache")
            fa = "on"
        else:
            out.append("llama_init_from_model: quantized V cache requires flash_attn to be enabled")
            return out, logs
    if fa != "off":
        if spec.is_mla:
            dims = [(spec.mla_latent_dim, spec.kv_lora_rank)]
        else:  # each attention kind's own head sizes (Gemma 4: n_embd_head_k_swa on sliding layers)
            dims = sorted({KINDS[k].head_dims(spec) for k in kind_counts(spec) if KINDS[k].has_kv})
        for head_k, head_v in dims:
            for side, t, dim in (("K", opts.cache_type_k, head_k), ("V", opts.cache_type_v, head_v)):
                block = type_format(t).group_size
                if is_quantized(t) and dim % block:
                    which = "n_embd_head_k" if side == "K" else "n_embd_head_v"
                    out.append(
                        f"llama_init_from_model: {side} cache type {t} with block size {block} does not divide {which}={dim}"
                    )
            if out:
                break
    kda_heads = getattr(spec, "linear_num_heads", None)
    if kda_heads is not None and kda_heads != spec.num_attention_heads:
        # src/llama-hparams.cpp n_embd_r / n_embd_s size a KDA layer by n_head() (the attention heads):
        # 3 (ssm_d_conv - 1) n_head() n_embd_head_kda and n_embd_head_kda^2 n_head()
        out.append(
            f"kvplan: llama.cpp sizes Kimi Delta Attention state by the attention heads (n_head() = "
            f"{spec.num_attention_heads}), but {spec.name} has linear_num_heads {kda_heads}; kvplan does not size "
            "that mismatch"
        )
    shared = getattr(spec, "num_kv_shared_layers", 0)
    if shared and spec.model_type in GEMMA3N_TYPES and spec.num_hidden_layers - shared != GEMMA3N_KV_LAYERS:
        out.append(
            f"kvplan: llama.cpp's gemma3n loader fixes n_layer_kv_from_start = {GEMMA3N_KV_LAYERS} "
            f"(src/models/gemma3n.cpp), but {spec.name} keeps KV in its first {spec.num_hidden_layers - shared} layers; "
            "kvplan does not size that mismatch"
        )
    return out, logs


# llama.cpp src/models/gemma3n.cpp `load_arch_hparams`: hparams.n_layer_kv_from_start = 20 whatever the GGUF says
# (gemma4.cpp takes n_layer - shared_kv_layers from the GGUF instead); layers from it on have no KV (`has_kv`).
GEMMA3N_KV_LAYERS = 20
GEMMA3N_TYPES = ("gemma3n", "gemma3n_text")


def cache(spec, context: int, batch: int, opts: LlamaCppOptions, *, kv_cache_dtype: Optional[str] = None,
          ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None) -> EngineCache:
    """The cells and bytes llama.cpp allocates for `batch` sequences of `context` tokens.

    `ideal_format` / `ideal_state` are the formats the ideal cache is sized in
    (the user's --kv-cache-dtype), so the differences show what llama.cpp's own
    types change. `kv_cache_dtype` is taken for the engines' common signature and
    not read: llama.cpp's types are -ctk / -ctv (`opts`).
    """
    require_at_least("--context", context, 1, "token")
    require_at_least("--batch", batch, 1, "sequence")
    require_at_least("--ubatch-size", opts.ubatch_size)
    require_at_least("--n-batch", opts.batch_size)
    if opts.parallel is not None and opts.parallel < 1:  # -np 0 is not "one per sequence": it is no slot at all
        raise InputError(f"--parallel {opts.parallel} must be at least 1 (llama.cpp's -np, its sequence slots; "
                         "leave it out for one slot per --batch sequence)")
    n_seq_max = opts.parallel or batch
    n_ctx_requested = opts.ctx_size if opts.ctx_size is not None else context * n_seq_max
    if n_ctx_requested < 1:
        # llama.cpp's -c 0 means the model's training context, which kvplan does not take from a GGUF here
        raise InputError(f"--ctx-size {n_ctx_requested} must be at least 1 (llama.cpp's -c 0, the training "
                         "context, is not modelled: give the cells, or leave it out for --context x --parallel)")
    ideal = ideal_estimate(spec, ideal_format, context, batch, state_format=ideal_state)
    type_k, type_v = opts.cache_type_k, opts.cache_type_v
    kv_name = type_k if type_k == type_v else f"{type_k}/{type_v}"
    settings = {
        "n_ctx_requested": n_ctx_requested,
        "n_seq_max": n_seq_max,
        "kv_unified": opts.kv_unified,
        "n_ubatch": None,
        "swa_full": opts.swa_full,
        "flash_attn": opts.flash_attn,
        "cache_type_k": type_k,
        "cache_type_v": type_v,
    }
    refused, check_logs = refusals(spec, opts)
    notes: list[str] = []
    if opts.parallel is not None and opts.parallel != batch:
        notes.append(
            f"llama.cpp sizes its cache by -c and --parallel ({opts.parallel}), not by --batch ({batch})."
        )
    if refused:
        return EngineCache(ENGINE, spec.name, context, batch, kv_name, settings, (), None, ideal.kv_bytes_total,
                           (), tuple(check_logs), tuple(refused), tuple(notes), SOURCES)

    g = geometry(n_ctx_requested, opts, n_seq_max)
    settings.update(n_ctx=g.n_ctx, n_ctx_seq=g.kv_size if g.n_stream > 1 else g.n_ctx, kv_size=g.kv_size,
                    n_stream=g.n_stream, n_ubatch=g.n_ubatch)
    counts = kind_counts(spec)
    ledger = Ledger(ideal.kv_bytes_total)

    rows: list[KindCache] = []
    base_k = base_v = base_layers = 0
    swa_k = swa_v = swa_layers = 0
    swa_size = None
    per_slot: dict[LayerKind, int] = {}
    for kind, n in counts.items():
        if kind in (LayerKind.FULL, LayerKind.SLIDING, LayerKind.CHUNKED):
            # the kind's own geometry: llama_hparams n_embd_k_gqa(il) per layer (Gemma 4: n_embd_head_k_swa and
            # n_head_kv(il) on sliding layers, the full-attention sizes elsewhere)
            heads = KINDS[kind].kv_heads(spec)
            head_k, head_v = KINDS[kind].head_dims(spec)
            k_row = row_bytes(type_k, heads * head_k)
            v_row = row_bytes(type_v, heads * head_v)
        elif kind is LayerKind.MLA:
            k_row, v_row = row_bytes(type_k, spec.mla_latent_dim), 0  # one KV head of 576; has_v = !is_mla
            index_dim = getattr(spec, "index_head_dim", None)
            if index_dim:
                # src/llama-kv-cache-dsa.cpp: the indexer keys are a second llama_kv_cache of one K head of
                # indexer_head_size in type_k, the same cells, every layer whose indexer is "full" (DeepSeek-V3.2: all)
                k_row += row_bytes(type_k, index_dim)
        else:
            continue
        per_slot[kind] = k_row + v_row
        if KINDS[kind].windowed:
            cells = swa_cells(g, window_of(spec, kind), opts.swa_full)
            swa_size = cells
            swa_k += n * k_row * cells * g.n_stream
            swa_v += n * v_row * cells * g.n_stream
            swa_layers += n
        else:
            cells = g.kv_size
            base_k += n * k_row * cells * g.n_stream
            base_v += n * v_row * cells * g.n_stream
            base_layers += n
        per_seq = cells if g.n_stream > 1 else cells // g.n_seq_max
        note = "cells shared by all sequences (unified KV)" if g.n_stream == 1 and g.n_seq_max > 1 else ""
        if kind is LayerKind.MLA:
            note = "no V cache: V is read from the latent in K (has_v = !is_mla)"
            if getattr(spec, "index_head_dim", None):
                note += f"; + indexer keys of {spec.index_head_dim} values in {type_k} (llama_kv_cache_dsa)"
        rows.append(KindCache(kind.value, n, per_seq, cells * g.n_stream, k_row + v_row,
                              n * (k_row + v_row) * cells * g.n_stream, note))

    # 2. full-attention (and MLA) layers: the whole padded context, every stream, up front
    def attention_total(full_cells: int, sliding_cells: Optional[int]) -> int:
        total = 0
        for kind, n in counts.items():
            rule = KINDS[kind]
            if not rule.has_kv:
                continue
            if not rule.windowed:
                total += n * per_slot[kind] * full_cells
            else:
                held = sliding_cells if sliding_cells is not None else batch * rule.tokens_held(context, window_of(spec, kind))
                total += n * per_slot[kind] * held
        return total

    # 1. the same tokens, in llama.cpp's cache types (f16 unless -ctk/-ctv say otherwise;
    #    rows of n_embd_k_gqa values, so only the row is block-padded)
    state_ideal = sum(k.bytes_total for k in ideal.by_kind if KINDS_BY_NAME[k.kind].has_state)
    ledger.step(f"cache types K {type_k} / V {type_v}", state_ideal + attention_total(batch * context, None))
    full_cells = g.kv_size * g.n_stream
    if g.n_stream > 1:
        why = f"n_ctx {n_ctx_requested:,} -> {g.kv_size:,} cells per sequence stream (padded to {PAD}) x {g.n_stream} streams"
    else:
        shared = f", one stream shared by {g.n_seq_max} sequences" if g.n_seq_max > 1 else ""
        why = f"n_ctx {n_ctx_requested:,} -> {g.kv_size:,} cells (padded to {PAD}){shared}"
    if any(KINDS[k].has_kv and not KINDS[k].windowed for k in counts):
        ledger.step(f"whole context allocated up front: {why}", state_ideal + attention_total(full_cells, None))
    if swa_size is not None:
        if opts.swa_full:
            why = f"--swa-full: sliding layers get the full {swa_size:,} cells"
        else:
            w = next(window_of(spec, k) for k in counts if KINDS[k].windowed)
            seqs = f"{w:,} x {g.n_seq_max} seqs" if g.n_stream == 1 and g.n_seq_max > 1 else f"{w:,}"
            why = f"sliding layers: pad({seqs} window + {g.n_ubatch} ubatch, {PAD}) = {swa_size:,} cells per stream"
        ledger.step(why, state_ideal + attention_total(full_cells, swa_size * g.n_stream))

    # 3. recurrent state: f32, max(1, n_seq_max) cells
    state_bytes = 0
    if LayerKind.STATE in counts:
        n = counts[LayerKind.STATE]
        elements = spec.state_elements_per_layer_resolved or 0
        mem_size = max(1, n_seq_max)
        per_cell = FIXED_FORMATS["fp32"].bytes_for(elements)
        state_bytes = n * per_cell * mem_size
        rows.append(KindCache(LayerKind.STATE.value, n, 0, mem_size, per_cell, state_bytes,
                              "recurrent state in f32, one cell per sequence slot"))
        ledger.step(f"recurrent state kept in f32, {mem_size} cell(s) per layer",
                    attention_total(full_cells, swa_size * g.n_stream if swa_size is not None else None) + state_bytes)
    total = base_k + base_v + swa_k + swa_v + state_bytes
    assert ledger.total == total, (ledger.total, total)

    logs = list(check_logs)
    if g.rounded_warning:
        logs.append(f"llama_context: n_ctx is not divisible by n_seq_max - rounding down to {g.n_ctx}")
    if swa_size is not None:
        if opts.swa_full:
            logs.append("llama_kv_cache_iswa: using full-size SWA cache (ref: "
                        "https://github.com/ggml-org/llama.cpp/pull/13194#issuecomment-2868343055)")
        logs.append(f"llama_kv_cache_iswa: creating non-SWA KV cache, size = {g.kv_size} cells")
        logs.append(size_line(base_k, base_v, g.kv_size, base_layers, g, type_k, type_v))
        logs.append(f"llama_kv_cache_iswa: creating     SWA KV cache, size = {swa_size} cells")
        logs.append(size_line(swa_k, swa_v, swa_size, swa_layers, g, type_k, type_v))
    elif base_layers:
        logs.append(size_line(base_k, base_v, g.kv_size, base_layers, g, type_k, type_v))
    if LayerKind.STATE in counts:
        logs.append(recurrent_line(spec, counts[LayerKind.STATE], max(1, n_seq_max), n_seq_max))
    if spec.is_mla:
        notes.append("MLA: one 576-wide K row per cell and no V (current llama_kv_cache); builds from spring "
                     "to autumn 2025 also allocated a 512-wide V, and pre-MLA GGUFs store full per-head K/V.")
    if any(KINDS[k].windowed for k in counts):
        notes.append("llama.cpp windows only the layers its architecture loader marks SWA; kvplan takes them "
                     "from the spec's layer types.")
    settings["swa_cells"] = swa_size
    train = getattr(spec, "max_position_embeddings", None)
    slot = slot_cells(settings["n_ctx_seq"], train)
    if context > slot:
        # A slot holds n_ctx_seq = llama_n_ctx_seq(ctx) cells (tools/server/server-context.cpp: slot.n_ctx =
        # n_ctx_slot; the whole n_ctx with --kv-unified), at most the training context (slot_cells). llama-server
        # refuses a prompt of slot.n_ctx tokens or more (update_slots: `if (slot.task->n_tokens() >= slot.n_ctx)` ->
        # ERROR_TYPE_EXCEED_CONTEXT_SIZE, ggml-org/llama.cpp at 001d906) and, context shift being off by default,
        # stops generating at the slot's end: a sequence of `context` tokens (a prompt of context - 1 and one token
        # out) needs context <= the slot's cells.
        if slot < settings["n_ctx_seq"]:
            notes.append(f"A sequence of {context:,} tokens needs a slot of as many cells, and llama-server caps each "
                         f"slot at the model's training context, {slot:,} tokens (n_ctx_slot(), "
                         "tools/server/server-context.cpp), whatever -c gives it.")
        else:
            where = (f"the {g.n_seq_max} slots share {slot:,} cells (-c {n_ctx_requested:,}, --kv-unified)"
                     if g.n_stream == 1 else f"each of the {g.n_seq_max} slots holds {slot:,} cells (-c {n_ctx_requested:,})")
            need = context if g.n_stream == 1 else context * g.n_seq_max
            notes.append(f"A sequence of {context:,} tokens needs a slot of as many cells, and {where}: "
                         f"give -c (--ctx-size) of at least {need:,}.")
        refusal = f"request ({context} tokens) exceeds the available context size ({slot} tokens), try increasing it"
        return EngineCache(ENGINE, spec.name, context, batch, kv_name, settings, tuple(rows), None,
                           ideal.kv_bytes_total, (), tuple(logs), (refusal,), tuple(notes), SOURCES + (SLOT_SOURCE,))
    return EngineCache(ENGINE, spec.name, context, batch, kv_name, settings, tuple(rows), total,
                       ideal.kv_bytes_total, ledger.differences, tuple(logs), (), tuple(notes), SOURCES)


def capacity(spec, context: int, batch: int, opts: LlamaCppOptions, mem: MemoryInputs, *,
             kv_cache_dtype: Optional[str] = None, ideal_format: KVFormatPair,
             ideal_state: Optional[KVFormat] = None) -> EngineCapacity:
    """llama.cpp has no KV budget: it allocates the padded -c and fails if the buffer does not fit.

    `max_concurrent_sequences` is the largest --parallel whose cache (each slot
    `context` tokens) fits, found by trying slot counts; compute buffers count
    only as --activation-memory.
    """
    budget = mem.gpu_memory_bytes - mem.weights_bytes - mem.non_torch_bytes - mem.activation_bytes
    rule = ("no budget: llama.cpp allocates the padded -c up front (llama_kv_cache) and stops with "
            "\"failed to allocate buffer for kv cache\" when it does not fit; room = GPU memory - weights "
            "- non-torch - activations")

    def need(slots: int) -> Optional[int]:
        o = LlamaCppOptions(opts.cache_type_k, opts.cache_type_v, slots, None, opts.ubatch_size, opts.batch_size,
                            opts.swa_full, opts.flash_attn, opts.kv_unified)
        return cache(spec, context, slots, o, ideal_format=ideal_format, ideal_state=ideal_state).kv_bytes_total

    this = cache(spec, context, batch, opts, ideal_format=ideal_format, ideal_state=ideal_state)
    here = this.kv_bytes_total
    if here is None:
        return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, budget, None, 0,
                              False, (), this.refusals)
    best = 0
    if budget > 0 and (need(1) or 0) <= budget:
        lo, hi = 1, 2
        while (need(hi) or 0) <= budget and hi < 2**20:
            lo, hi = hi, hi * 2
        best = last_fitting(lambda n: (need(n) or 0) <= budget, lo, hi)
    fits = here <= budget
    # llama_kv_cache throws "failed to allocate buffer for kv cache"; llama_init_from_model reports it
    refusals = () if fits else (
        "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",)
    notes = (f"activations / compute buffer: {mem.activation_source}",)
    return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, budget, None, best, fits,
                          (), refusals, notes, {"kv_bytes": here})


# What a decode step reads of this cache (kvplan's roofline, `kvplan.plan.capacity.engine_roofline`).
KV_READ = ("every cell llama.cpp allocates, read each step: llama.cpp attends to the cells up to the highest one in "
           "use, padded to 256 (llama-kv-cache.cpp get_n_kv), so this is exact for a slot filled to its context and "
           "an upper bound where --ctx-size holds more")
