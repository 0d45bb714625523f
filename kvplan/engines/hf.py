"""Hugging Face transformers: per-layer cache objects that grow, preallocate or quantise.

Rules, read at huggingface/transformers `src/transformers/cache_utils.py`
(commit 004999d, the v4.56-era layered cache; then 5.25.0's) and then measured on tiny random
models on CPU with transformers 4.57.1, 5.24.0 and 5.25.0 (torch 2.13, PyTorch Mamba
path, optimum-quanto 0.2.7, hqq 0.2.8.post1) — "measured" below. Every model type
kvplan reads from a config.json is checked against transformers 5.25 to the byte by
tests/test_hf_real_kinds.py (dynamic, generate(), static, generate static, fp8 quantized):

- `DynamicLayer.update`: K and V are `torch.cat`-grown `[B, H_kv, T, D]`; no
  padding, no preallocation.
- `DynamicSlidingWindowLayer.update`: "Only cache the last `self.sliding_window - 1`
  tokens": min(T, W - 1) stored per layer (measured: W = 8 keeps 7 in 4.57.1 and 5.24.0).
- `DynamicCache.__init__` (with the config, as `generate()` builds it): the window
  is `sliding_window or attention_chunk_size`; sliding and chunked layers both get
  `DynamicSlidingWindowLayer`; `num_kv_shared_layers` layers get no cache.
- `generate()` never feeds the last sampled token back: 20 prompt + 5 new tokens
  leave 24 cached (measured). `generate(cache_implementation="static")` builds its
  StaticCache for max_length - 1 slots, the tokens it caches (5.25 generation/utils.py;
  measured in tests/test_hf_real_geometry.py).
- Gemma 4 / Gemma-3n (5.25): each cache layer takes its own layer's head size and KV
  heads (full layers `global_head_dim`); KV-shared layers ("reuse" in `kv_sharing_modes`)
  get a dummy layer that holds nothing. DeepSeek-V3.2 (`indexed_attention`):
  `DynamicIndexedLayer` / `StaticIndexedLayer` add indexer keys [B, T, index_head_dim]
  in the model's dtype beside the MLA latents (measured, tests/test_hf_real_geometry.py).
- `StaticLayer`: zeros `[B, H, max_cache_len, D]` for K and V; `StaticSlidingWindowLayer`
  min(sliding_window, max_cache_len) slots — W, not W - 1 (measured: 8 and 32).
  generate(cache_implementation="static") builds its StaticCache with max_cache_len =
  max_length - 1 (generation/utils.py `generate`: `max_cache_length = generation_config.max_length
  - 1`), raised to generation_config.max_cache_len when set: `static_max_cache_len`.
  In 4.x the V buffer takes the *key* head dim, so a model whose V is narrower
  than K (MLA) fails at the first update with torch's index_copy_ error (measured,
  4.57.1, sdpa); 5.x sizes V by its own head dim (measured, 5.24.0).
- `QuantizedLayer.update` (quanto / hqq): the prefill is quantised whole; later
  one-token updates go to a full-precision residual which is re-quantised into the
  store when it would reach `residual_length`, so after n decode steps it holds
  n mod max(residual_length, 1) tokens in 5.x, n mod max(residual_length, 2) in 4.x
  (`residual_period`; measured: 100 prompt + 300 steps -> 44; 5.25, residual_length 1 -> 0).
  quanto stores nbits / 8 bytes per value plus a scale and a shift in the model's
  dtype per `q_group_size` values (measured: 356 tokens x 2 heads x 64 -> 22,784 +
  1,424 + 1,424 B); hqq packs each `q_group_size`-value column alone, 3-bit ten to
  an int32 with the column padded to a multiple of ten (`quantized_bytes`, measured
  5.25 + hqq 0.2.8.post1). A group size that does not divide a tensor quantised at
  the prefill or a flush fails in the backend (`_group_refusal`, measured). The fp8
  backend (5.25: `Fp8QuantizedLayer`) appends every token in float8_e4m3fn with one
  float32 scale per tensor, no residual (measured). `QuantizedCache` quantises every
  one of `num_hidden_layers` in 4.x (no window trimming); 5.x refuses models with any
  layer type but full attention ("`QuantizedCache` is only supported for models
  with only full attention layers ...", measured in 5.25 for sliding, chunked and
  Jamba's Mamba layers, which its config names "linear_attention").
- MLA (DeepSeek-V2/V3): 4.x `DeepseekV3Attention.forward`
  (models/deepseek_v3/modeling_deepseek_v3.py, read at f5a9ec5) caches the
  decompressed per-head K [H, qk_nope + qk_rope] and V [H, v_head_dim]; 5.x
  caches the latents, K [1, kv_lora_rank] and V [1, qk_rope_head_dim]
  (huggingface/transformers PR #47761; both measured).
- Mamba layers (Jamba): conv state [B, d_inner, d_conv] — all d_conv columns, one
  more than llama.cpp and vLLM keep — in the model's dtype, and SSM state
  [B, d_inner, d_state] in float32 whatever the model's dtype (measured:
  `HybridMambaAttentionDynamicCache` in 4.57.1, `LinearAttentionLayer` in 5.24.0;
  with the mamba-ssm CUDA kernels the SSM dtype was not checked).

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kvplan.model.kinds import KINDS, LayerKind
from kvplan.model.layout import CacheLayout, ceil_div, last_fitting
from kvplan.engines import (EngineCache, EngineCapacity, KindCache, Ledger, MemoryInputs, ideal_estimate, kind_counts,
                            window_of)
from kvplan.errors import InputError, require_at_least
from kvplan.model.formats import FIXED_FORMATS, KVFormat, KVFormatPair, element_pair

ENGINE = "hf"
CACHES = ("dynamic", "static", "quantized")
VERSIONS = ("4", "5")
BACKENDS = ("quanto", "hqq", "fp8")  # QuantizedCache.__init__ (5.25; 4.x: quanto, hqq)
FP8_SCALE_BYTES = 4  # Fp8QuantizedLayer._quantize: one float32 scale per tensor, frozen at the first update
GROUP_WISE_DEFAULTS = {"nbits": 4, "q_group_size": 64, "residual_length": 128}  # QuantizedLayer.__init__
# transformers 5.x's names for the layer types QuantizedCache refuses (get_layer_types_and_kwargs; a
# Jamba config's Mamba layers read "linear_attention" in JambaConfig.layer_types, measured 5.25)
HF_LAYER_TYPES = {LayerKind.SLIDING: "sliding_attention", LayerKind.CHUNKED: "chunked_attention",
                  LayerKind.STATE: "linear_attention", LayerKind.SHARED: "dummy"}
TORCH_DTYPES = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}
# torch's and llama.cpp's names for them, as --kv-cache-dtype may spell them
DTYPE_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "f16": "fp16", "f32": "fp32"}
QUANTO_NBITS = (2, 4)  # QuantoQuantizedLayer.__init__
HQQ_NBITS = (1, 2, 3, 4, 8)  # HQQQuantizedLayer.__init__

SOURCES = (
    "huggingface/transformers src/transformers/cache_utils.py DynamicLayer / DynamicSlidingWindowLayer.update",
    "huggingface/transformers src/transformers/cache_utils.py StaticLayer.lazy_initialization / StaticSlidingWindowLayer",
    "huggingface/transformers src/transformers/cache_utils.py DynamicCache.__init__ / StaticCache.__init__ / QuantizedCache",
    "huggingface/transformers src/transformers/generation/utils.py generate / _prepare_cache_for_generation",
    "huggingface/transformers src/transformers/models/deepseek_v3/modeling_deepseek_v3.py DeepseekV3Attention.forward",
    "huggingface/transformers src/transformers/models/jamba/modular_jamba.py HybridMambaAttentionDynamicCache",
)


@dataclass(frozen=True, slots=True)
class HFOptions:
    """How a transformers user sets up the cache."""

    cache: str = "dynamic"  # DynamicCache (generate()'s default) | StaticCache | QuantizedCache
    max_cache_len: Optional[int] = None  # StaticCache; None: --context
    generate: bool = False  # the sequence came from generate(): its last token is not cached
    transformers_version: str = "5"  # "4": 4.x layouts; "5": 5.x (MLA latent, V at its own width)
    quant_backend: str = "quanto"
    nbits: int = 4
    q_group_size: int = 64
    residual_length: int = 128
    prompt_tokens: Optional[int] = None  # quantized: tokens of the first (prefill) update; None: all


def cache_dtype(spec, kv_cache_dtype: str) -> tuple[Optional[str], Optional[str]]:
    """(the dtype transformers caches K/V in, a refusal) for --kv-cache-dtype."""
    name = kv_cache_dtype.strip().lower()
    if name == "auto":
        return spec.dtype, None
    name = DTYPE_ALIASES.get(name, name)
    if name in TORCH_DTYPES:
        return name, None
    return None, (
        f"transformers caches K and V in the dtype the model runs in (torch_dtype); there is no {kv_cache_dtype} "
        "KV cache (use --hf-cache quantized for quanto / hqq)"
    )


def static_max_cache_len(context: int, opts: HFOptions) -> int:
    """The slots a StaticCache gives each full-attention layer.

    A StaticCache you build yourself: its `max_cache_len` (--max-cache-len, default --context).
    generate(cache_implementation="static") builds it with `max_cache_len = generation_config.max_length - 1`
    (generation/utils.py `generate`, step 7: the last sampled token is never fed back), raised to
    `generation_config.max_cache_len` when that is set (`_prepare_cache_for_generation`, transformers 5.25);
    with --generate, --context is max_length (prompt + new tokens), so context - 1 slots (measured, 5.25).
    """
    if opts.generate:
        return max(context - 1, opts.max_cache_len or 0)
    return opts.max_cache_len or context


def _window(spec) -> Optional[int]:
    """DynamicCache's one window: sliding_window, else attention_chunk_size."""
    return spec.sliding_window or spec.attention_chunk_size


def state_tensors(spec, esz: int) -> tuple[tuple[str, tuple[int, ...], int], ...]:
    """(name, shape, bytes) of each tensor one sequence's state holds in one layer, as transformers 5.25's
    `LinearAttentionLayer` keeps them (cache_utils.py): the conv state with all K kernel columns (prefill
    pads to K: `lazy_initialization` allocates `(*conv_states.shape[:-1], conv_kernel_size)`) in the
    model's dtype, the SSM / recurrent state as the scan returns it: float32 (the reference paths compute
    it in float32: modeling_mamba2 `A = -torch.exp(A_log.float())`, modeling_qwen3_next
    `torch_chunk_gated_delta_rule` casts to float32; `torch.zeros_like` keeps that dtype). A state the
    spec gives as one count is taken in the model's dtype."""
    from kvplan.model.kinds import KINDS

    rule = KINDS[LayerKind.STATE]
    if spec.state_elements_per_layer is not None:
        n = spec.state_elements_per_layer
        return (("state", (n,), n * esz),)
    gdn = spec.linear_num_value_heads is not None
    if gdn or getattr(spec, "linear_num_heads", None) is not None:
        # Gated DeltaNet, Kimi Delta Attention (modeling_kimi_linear: one conv1d over q, k, v of the kernel's K
        # columns, the recurrent state (B, H, dk, dv) in float32: chunk_kimi_delta_attention casts it)
        kernel = spec.linear_conv_kernel_dim
    elif getattr(spec, "conv_L_cache", None) is not None:
        kernel = spec.conv_L_cache  # LFM2: Lfm2ShortConv.conv of kernel conv_L_cache, its "conv" layer all K columns
    else:
        kernel = spec.mamba_d_conv
    out = []
    for t in rule.tensors(spec, columns=kernel):
        # transformers keeps the Gated DeltaNet state as (B, Hv, dk, dv) (modeling_qwen3_next
        # torch_chunk_gated_delta_rule's recurrent_state_shape, read back by tests/test_hf_real_state.py);
        # vLLM as (Hv, dv, dk): the same bytes
        shape = (t.shape[0], t.shape[2], t.shape[1]) if gdn and t.role == "ssm" else t.shape
        out.append((t.name, shape, t.elements * (esz if t.role == "conv" else 4)))
    return tuple(out)


def state_bytes(spec, esz: int) -> int:
    """Bytes of one sequence's state in one layer (`state_tensors`, summed)."""
    return sum(b for _, _, b in state_tensors(spec, esz))


def _state_note(spec, esz: int, run_dtype: str) -> str:
    """The state row's note: each tensor's shape and dtype (conv: the model's; SSM / recurrent: float32)."""
    parts = []
    for name, shape, _ in state_tensors(spec, esz):
        dtype = run_dtype if name in ("conv", "state") else "torch.float32"
        parts.append(f"{name} [{', '.join(map(str, shape))}] {dtype}")
    return " + ".join(parts) + " per sequence"


def quantized_bytes(values: int, nbits: int, group: int, backend: str, scale_bytes: int) -> int:
    """Bytes of one quantised K or V tensor of `values` values: packed data + a scale and zero-point per group.

    quanto: nbits / 8 bytes per value (WeightQBitsTensor's PackedTensor: two int4 or four int2 per uint8), a
    scale and a shift per `group` values in the model's dtype. hqq: the tensor is cut into `group`-row columns
    (Quantizer.quantize, `W.reshape([group_size, -1])`) and each column packed alone (BitPack.pack_*): 8, 4, 2,
    1 bits into uint8 rows, 3 bits ten to an int32 row with the column padded to a multiple of 10 rows
    (pack_3bit_32), and a scale and a zero per column in the model's dtype. fp8 (5.x): one byte per value
    (float8_e4m3fn) and one float32 scale for the whole tensor. quanto and hqq refuse a `values` count the
    group does not divide (see `_group_refusal`); all measured with transformers 5.25, optimum-quanto 0.2.7,
    hqq 0.2.8.post1.
    """
    if values == 0:
        return 0
    if backend == "fp8":
        return values + FP8_SCALE_BYTES
    groups = ceil_div(values, group)
    if backend == "hqq" and nbits == 3:
        data = groups * ceil_div(group, 10) * 4  # a 64-value column: 7 int32 words, not 6.4
    else:
        data = ceil_div(values * nbits, 8)
    return data + groups * 2 * scale_bytes


def residual_period(residual_length: int, v4: bool) -> int:
    """One-token decode steps from one re-quantisation of the whole cache to the next (`QuantizedLayer.update`).

    5.x flushes when `residual + new >= residual_length`, an emptied residual (a 1-d tensor) counting 0: every
    max(R, 1) steps. 4.x flushes when `self.keys.dim() == 4 and self.keys.shape[-2] + 1 >= residual_length`: the
    step right after a flush finds the 1-d tensor and appends, so every max(R, 2) steps.
    """
    return max(residual_length, 2 if v4 else 1)


def _group_refusal(backend: str, group: int, batch: int, heads: int, width: int, prompt: int, held: int,
                   period: int) -> Optional[str]:
    """The error quanto or hqq raises when `group` does not divide a tensor the cache quantises, else None.

    The cache quantises [batch, heads, T, width] at the prefill (T = prompt) and at every flush (T = prompt +
    k x period). quanto groups within each batch row (optimum/quanto/tensor/grouped.py `group`, axis 0: axis_numel
    = heads x T x width); hqq over the whole tensor (hqq/core/quantize.py Quantizer.quantize's assert). If the
    prefill and the first flush divide, every later one does (T grows by `period` each time), so two are checked.
    """
    counts = [prompt] + ([prompt + period] if prompt + period <= held else [])
    for t in counts:
        if t == 0:
            continue
        if backend == "quanto":
            axis_numel = heads * t * width
            if group > axis_numel or axis_numel % group:
                return f"ValueError: Group size ({group}) must be a divisor of ({axis_numel})"
        elif backend == "hqq" and (batch * heads * t * width) % group:
            return ("AssertionError: group_size should be divisble by the total tensor dimensions. shape: "
                    f"torch.Size([{batch}, {heads}, {t}, {width}]), group_size: {group}")
    return None


class _Plan:
    """Per-kind slots and slot sizes, changed one rule at a time."""

    def __init__(self, counts: dict[LayerKind, int]) -> None:
        self.counts = counts
        self.slots: dict[LayerKind, int] = {}  # all sequences, one layer
        self.slot_bytes: dict[LayerKind, int] = {}
        self.fixed: dict[LayerKind, int] = {}  # bytes not of the form slots x slot_bytes (per layer)

    def total(self) -> int:
        out = 0
        for kind, n in self.counts.items():
            if kind in self.fixed:
                out += n * self.fixed[kind]
            elif kind in self.slots:
                out += n * self.slots[kind] * self.slot_bytes[kind]
        return out


def cache(spec, context: int, batch: int, opts: HFOptions, *, kv_cache_dtype: str = "auto",
          ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None) -> EngineCache:
    """What transformers holds for `batch` sequences of `context` tokens."""
    require_at_least("--context", context, 1, "token")
    require_at_least("--batch", batch, 1, "sequence")
    if opts.cache not in CACHES:
        raise InputError(f"--hf-cache {opts.cache!r} is not one of {', '.join(CACHES)}")
    if opts.transformers_version not in VERSIONS:
        raise InputError(f"--transformers-version {opts.transformers_version!r} is not one of 4, 5")
    ideal = ideal_estimate(spec, ideal_format, context, batch, state_format=ideal_state)
    run_dtype, refusal = cache_dtype(spec, kv_cache_dtype)
    held = context - 1 if opts.generate else context
    settings = {"cache": opts.cache, "transformers_version": opts.transformers_version, "generate": opts.generate,
                "tokens_cached": held, "dtype": TORCH_DTYPES.get(run_dtype or "", None)}
    refusals: list[str] = []
    if refusal:
        refusals.append(refusal)
    if opts.cache == "static":
        max_len = static_max_cache_len(context, opts)
        settings["max_cache_len"] = max_len
        if max_len < held:
            raise InputError(f"--max-cache-len {max_len} is smaller than the {held} tokens the cache must hold")
    if opts.cache == "quantized":
        if opts.quant_backend not in BACKENDS or (opts.quant_backend == "fp8" and opts.transformers_version == "4"):
            refusals.append(f"Unknown quantization backend `{opts.quant_backend}`")  # QuantizedCache.__init__
        elif opts.quant_backend == "fp8":
            # kvplan's defaults stand for "not given"; any other value is one transformers refuses by name
            given = [k for k, v in GROUP_WISE_DEFAULTS.items() if getattr(opts, k) != v]
            if given:
                refusals.append(f"The `fp8` backend quantizes per-tensor and does not support {given}. Use the "
                                "`quanto` or `hqq` backend to quantize group-wise.")
        elif opts.quant_backend == "quanto" and opts.nbits not in QUANTO_NBITS:
            refusals.append(f"`nbits` for `quanto` backend has to be one of [`2`, `4`] but got {opts.nbits}")
        elif opts.quant_backend == "hqq" and opts.nbits not in HQQ_NBITS:
            refusals.append(f"`nbits` for `HQQ` backend has to be one of [`1`, `2`, `3`, `4`, `8`] but got {opts.nbits}")
        require_at_least("--q-group-size", opts.q_group_size)
        require_at_least("--residual-length", opts.residual_length, 0)
        if opts.quant_backend == "fp8":
            settings.update(backend="fp8")
        else:
            settings.update(backend=opts.quant_backend, nbits=opts.nbits, q_group_size=opts.q_group_size,
                            residual_length=opts.residual_length)
    counts = kind_counts(spec)
    v4 = opts.transformers_version == "4"
    index_dim = getattr(spec, "index_head_dim", None)
    if v4 and (index_dim or getattr(spec, "has_layer_geometry", False)):
        # DeepseekV32 / Gemma4 configuration classes exist from transformers 5 on (models/deepseek_v32, models/gemma4)
        what = "DeepSeek sparse attention (deepseek_v32)" if index_dim else "per-layer head sizes (Gemma 4)"
        refusals.append(f"transformers 4.x has no model with {what}; use --transformers-version 5")
    if opts.cache == "quantized" and index_dim and not refusals:
        refusals.append(
            "kvplan does not size QuantizedCache for DeepSeek sparse attention: its layers are 'indexed_attention' "
            "(DynamicIndexedLayer), which QuantizedCache does not build"
        )
    if opts.cache == "static" and v4 and run_dtype is not None:
        k_width = spec.qk_nope_head_dim + spec.qk_rope_head_dim if spec.is_mla else spec.k_head_dim
        v_width = (spec.v_head_dim or spec.qk_nope_head_dim) if spec.is_mla else spec.v_head_dim_resolved
        if v_width != k_width:
            h = spec.num_attention_heads if spec.is_mla else spec.num_key_value_heads
            # StaticLayer sizes V by the key's head dim; the first update's index_copy_ then fails (torch's words)
            refusals.append(
                "RuntimeError: index_copy_(): Source/destination tensor must have same slice shapes. Destination "
                f"slice shape: {batch} {h} {k_width} at dimension 2 and source slice shape: {batch} {h} {v_width} "
                "at dimension 0."
            )
    if opts.cache == "quantized" and not v4:  # QuantizedCache.__init__: every layer type but full_attention
        names = dict(HF_LAYER_TYPES)
        if getattr(spec, "conv_L_cache", None) is not None:
            names[LayerKind.STATE] = "conv"  # LFM2's short-convolution layers (Lfm2Config.layer_types)
        invalid = sorted({names.get(k, k.value) for k in counts if k not in (LayerKind.FULL, LayerKind.MLA)})
        if invalid:
            refusals.append(
                "`QuantizedCache` is only supported for models with only full attention layers. We found the "
                "following invalid layer types: {" + ", ".join(f"'{t}'" for t in invalid) + "}"
            )
    name = TORCH_DTYPES.get(run_dtype or "", kv_cache_dtype)
    if opts.cache == "quantized" and opts.quant_backend == "fp8":
        name = "fp8 e4m3 (per-tensor float32 scale)"
    elif opts.cache == "quantized":
        name = f"{opts.quant_backend} int{opts.nbits} (residual {name})"
    if refusals:
        return EngineCache(ENGINE, spec.name, context, batch, name, settings, (), None, ideal.kv_bytes_total,
                           (), (), tuple(refusals), (), SOURCES)

    esz = FIXED_FORMATS[run_dtype].bytes_for(1)
    window = _window(spec)
    ledger = Ledger(ideal.kv_bytes_total)
    plan = _Plan(counts)
    notes: list[str] = []

    # Start from the ideal: context tokens (windows min(context, W)), the user's formats.
    state_ideal_layer = 0
    for g in CacheLayout(spec, ideal_format, block_size=1, state_format=ideal_state).groups:
        if g.rule.has_state:
            state_ideal_layer = g.state_bytes_per_layer
            plan.fixed[g.kind] = batch * g.state_bytes_per_layer
        elif g.rule.has_kv:
            plan.slots[g.kind] = batch * g.rule.tokens_held(context, g.window)
            plan.slot_bytes[g.kind] = g.bytes_per_token_per_layer

    def tokens(kind: LayerKind, n_tokens: int) -> int:
        return KINDS[kind].tokens_held(n_tokens, window_of(spec, kind))

    windowed = [k for k in plan.slots if KINDS[k].windowed]  # sliding, chunked: the kinds HF's caches trim

    # 1. generate(): the last sampled token is never fed back, so it is never cached
    if opts.generate:
        for kind in plan.slots:
            plan.slots[kind] = batch * tokens(kind, held)
        ledger.step("generate(): the last sampled token is not cached (one token fewer)", plan.total())

    # 2. K and V in the model's dtype (transformers has no separate KV dtype)
    heads = spec.num_key_value_heads
    for kind in plan.slots:  # the kind's own rule (MLA: the latent), in plain esz-byte elements
        plan.slot_bytes[kind] = KINDS[kind].bytes_per_token_per_layer(spec, element_pair(esz), KINDS[kind].kv_heads(spec))
    ledger.step(f"K/V stored in the model's dtype ({TORCH_DTYPES[run_dtype]})", plan.total())
    if index_dim and LayerKind.MLA in plan.slots:
        # cache_utils DynamicIndexedLayer / StaticIndexedLayer: indexer keys [B, T, index_head_dim] in the dtype
        # DeepseekV32Indexer computes them in (the model's), not vLLM's fp8 + fp32 scales
        plan.slot_bytes[LayerKind.MLA] = (spec.mla_latent_dim + index_dim) * esz
        ledger.step(f"indexer keys of {index_dim} values in {TORCH_DTYPES[run_dtype]} (DynamicIndexedLayer), "
                    "not fp8 + one fp32 scale per 128", plan.total())

    # 3. MLA under 4.x: the decompressed per-head K and V, not the latent
    mla_k = mla_v = None
    if LayerKind.MLA in plan.slots:
        if v4:
            h = spec.num_attention_heads
            mla_k = h * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
            mla_v = h * (spec.v_head_dim or spec.qk_nope_head_dim)
            plan.slot_bytes[LayerKind.MLA] = (mla_k + mla_v) * esz
            ledger.step(
                f"transformers 4.x caches MLA decompressed: {h} heads x ({spec.qk_nope_head_dim} + "
                f"{spec.qk_rope_head_dim}) K + {h} x {mla_v // h} V per token, not the {spec.mla_latent_dim}-wide latent",
                plan.total(),
            )
        else:
            mla_k, mla_v = spec.kv_lora_rank, spec.qk_rope_head_dim
            notes.append("transformers 5.x caches the MLA latents (K: kv_lora_rank, V: the RoPE key), "
                         "per huggingface/transformers PR #47761.")

    # 4. the cache class's own rule
    if opts.cache == "dynamic":
        for kind in windowed:
            if kind in plan.slots:
                plan.slots[kind] = batch * min(held, window - 1)
                ledger.step(f"DynamicSlidingWindowLayer keeps the last W - 1 = {window - 1:,} tokens", plan.total())
    elif opts.cache == "static":
        max_len = settings["max_cache_len"]
        for kind in plan.slots:
            if kind not in windowed:
                plan.slots[kind] = batch * max_len
        if max_len != held:
            ledger.step(f"StaticCache preallocates max_cache_len = {max_len:,} slots per layer", plan.total())
        for kind in windowed:
            w = window_of(spec, kind)
            if kind in plan.slots:
                plan.slots[kind] = batch * min(w, max_len)
                ledger.step(f"StaticSlidingWindowLayer preallocates min(W, max_cache_len) = {min(w, max_len):,} slots",
                            plan.total())
        if spec.is_mla:
            plan.slot_bytes[LayerKind.MLA] = (mla_k + mla_v + (index_dim or 0)) * esz  # StaticIndexedLayer too
    else:  # quantized: every layer, every token, quantised past the residual
        fp8 = opts.quant_backend == "fp8"
        period = residual_period(opts.residual_length, v4)
        prompt = held if opts.prompt_tokens is None else min(opts.prompt_tokens, held)
        # fp8 appends each step's tokens quantised with the frozen scale: no residual (Fp8QuantizedLayer.update)
        residual = 0 if fp8 else (held - prompt) % period
        quantised = held - residual
        if fp8:
            settings.update(prompt_tokens=prompt, quantised_tokens=quantised)
        else:
            settings.update(prompt_tokens=prompt, residual_tokens=residual, quantised_tokens=quantised)
        for kind in windowed:
            if kind in plan.slots:
                plan.slots[kind] = batch * held
                ledger.step("QuantizedCache keeps every token in sliding layers (no window trimming)", plan.total())
        for kind in list(plan.slots):
            if kind is LayerKind.MLA:
                k_width, v_width, kv_heads = mla_k, mla_v, 1  # widths already span every head
            else:
                k_width, v_width, kv_heads = spec.k_head_dim, spec.v_head_dim_resolved, heads
            per_layer = 0
            for width in (k_width, v_width):
                problem = None if fp8 else _group_refusal(opts.quant_backend, opts.q_group_size, batch, kv_heads,
                                                          width, prompt, held, period)
                if problem:
                    return EngineCache(ENGINE, spec.name, context, batch, name, settings, (), None,
                                       ideal.kv_bytes_total, (), (), (problem,), (), SOURCES)
                per_layer += quantized_bytes(batch * kv_heads * quantised * width, opts.nbits, opts.q_group_size,
                                             opts.quant_backend, esz)
                per_layer += batch * kv_heads * residual * width * esz
            plan.fixed[kind] = per_layer
        if fp8:
            ledger.step(f"fp8 store for all {quantised:,} tokens (1 byte per value, a float32 scale per tensor)",
                        plan.total())
        else:
            ledger.step(
                f"{opts.quant_backend} {opts.nbits}-bit store for {quantised:,} tokens (scale + zero-point per "
                f"{opts.q_group_size} values) and {residual:,} residual tokens in full precision",
                plan.total(),
            )

    # 5. the state as HF keeps it: all K conv columns in the model's dtype, the SSM / recurrent state in float32
    if LayerKind.STATE in counts:
        plan.fixed[LayerKind.STATE] = batch * state_bytes(spec, esz)
        if plan.fixed[LayerKind.STATE] != batch * state_ideal_layer:
            ledger.step(
                f"state layers: conv keeps all K kernel columns ({TORCH_DTYPES[run_dtype]}), SSM / recurrent "
                "state in float32",
                plan.total(),
            )
    total = plan.total()
    assert ledger.total == total

    rows = []
    for kind, n in counts.items():
        if not KINDS[kind].holds_anything:
            continue
        if KINDS[kind].has_state:
            rows.append(KindCache(kind.value, n, 0, batch, state_bytes(spec, esz), n * plan.fixed[kind],
                                  _state_note(spec, esz, TORCH_DTYPES[run_dtype])))
            continue
        slots = plan.slots[kind] if kind in plan.slots else batch * held
        per_slot = None if kind in plan.fixed else plan.slot_bytes[kind]
        layer_bytes = plan.fixed[kind] if kind in plan.fixed else slots * plan.slot_bytes[kind]
        note = f"K {mla_k} + V {mla_v} values per token" if kind is LayerKind.MLA else ""
        if kind is LayerKind.MLA and index_dim:
            note += f" + {index_dim} indexer-key values"
        rows.append(KindCache(kind.value, n, slots // batch, slots, per_slot, n * layer_bytes, note))
    if opts.cache == "static" and opts.generate:
        notes.append("generate() keeps the largest max_cache_len the model has used (_previous_max_cache_length): "
                     "after a longer call, a shorter one still gets the longer cache.")
    if LayerKind.SHARED in counts:
        notes.append(f"{counts[LayerKind.SHARED]} KV-shared layers get no cache (num_kv_shared_layers).")
    if opts.cache == "dynamic" and windowed:
        notes.append("During a prefill chunk a sliding layer briefly holds W - 1 + chunk tokens (the concatenation "
                     "returned for attention) before trimming.")
    if v4 and opts.cache != "quantized":
        notes.append("Releases before the layered cache (HybridCache / SlidingWindowCache era) differ; "
                     "kvplan's 4.x follows the v4.56 cache_utils.")
    return EngineCache(ENGINE, spec.name, context, batch, name, settings, tuple(rows), total,
                       ideal.kv_bytes_total, ledger.differences, (), (), tuple(notes), SOURCES)


def capacity(spec, context: int, batch: int, opts: HFOptions, mem: MemoryInputs, *, kv_cache_dtype: str = "auto",
             ideal_format: KVFormatPair, ideal_state: Optional[KVFormat] = None) -> EngineCapacity:
    """transformers has no KV budget: tensors are allocated as they grow (or at the first update, static)."""
    budget = mem.gpu_memory_bytes - mem.weights_bytes - mem.non_torch_bytes - mem.activation_bytes
    rule = ("no budget: the cache is allocated by torch as it grows (StaticCache: at the first update); "
            "room = GPU memory - weights - non-torch - activations")
    this = cache(spec, context, batch, opts, kv_cache_dtype=kv_cache_dtype, ideal_format=ideal_format,
                 ideal_state=ideal_state)
    if this.kv_bytes_total is None:
        return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, budget, None, 0, False,
                              (), this.refusals)
    one = cache(spec, context, 1, opts, kv_cache_dtype=kv_cache_dtype, ideal_format=ideal_format,
                ideal_state=ideal_state).kv_bytes_total or 0
    # the quantised store's groups can span sequences, so count sequences by trying, not dividing
    best = 0
    if budget > 0 and one and one <= budget:
        def fits(b: int) -> bool:
            return (cache(spec, context, b, opts, kv_cache_dtype=kv_cache_dtype, ideal_format=ideal_format,
                          ideal_state=ideal_state).kv_bytes_total or 0) <= budget

        lo, hi = 1, max(2, budget // one + 1)
        while fits(hi):
            lo, hi = hi, hi * 2
        best = last_fitting(fits, lo, hi)
    ok = this.kv_bytes_total <= budget
    refusals = () if ok else ("torch.OutOfMemoryError: CUDA out of memory.",)
    notes = (f"activations: {mem.activation_source}",)
    return EngineCapacity(ENGINE, mem.gpu, mem.gpu_memory_bytes, mem.weights_bytes, rule, budget, None, best, ok,
                          (), refusals, notes, {"kv_bytes": this.kv_bytes_total})


# What a decode step reads of this cache (kvplan's roofline, `kvplan.plan.capacity.engine_roofline`).
KV_READ = ("the cache as transformers holds it, read whole each step: DynamicCache's tokens, StaticCache's "
           "max_cache_len slots (attention runs over all of them, masked), QuantizedCache's packed values and "
           "residual (dequantising is not counted)")
