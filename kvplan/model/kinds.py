"""Layer kinds, each defined once: how one layer of that kind keeps its past.

One small frozen class per kind (the house model is vLLM's `kv_cache_interface.py`,
one spec class per attention kind), in a registry keyed by `LayerKind`. Each kind
states its ideal rule and nothing about any engine:

- its label, the `layer_types` name that rebuilds it, and the spec field that is its
  window (`sliding_window`, `attention_chunk_size`; None when it keeps every token);
- tokens held per sequence at context L, unpaged, and reserved in blocks of B tokens;
- bytes one more token adds to one layer (K + V heads x head dims, the kind's own:
  Gemma 4's full layers `global_head_dim` x `num_global_key_value_heads`, its sliding
  layers the base sizes; MLA's latent + RoPE key, plus DeepSeek sparse attention's
  indexer key in its own fp8 format; nothing for state and KV-shared layers), under a
  KV format whose group scale bytes `KVFormat.bytes_for` counts, and the raw bits beneath them;
- fixed state bytes per sequence per layer (state layers only), independent of L;
- its split under tensor parallelism (KV heads per rank, replicated when the heads are
  fewer than the ranks; an MLA latent whole on every rank; a state split by channels)
  and what it refuses there. Pipeline parallelism splits layers, not a layer: every
  kind's per-layer rule holds unchanged on each stage (`layout.pp_partition`).

`kvplan.model.layout` sums these rules over a spec's layers; engines (`kvplan.engines`)
and `kvplan measure` ask the kind object and state only where they differ from it.
Adding a kind: a `LayerKind` member, its alias names, a class here and a `KINDS` entry
(see the README's developer notes). Pure: no I/O, nothing imported but the enum.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Callable, ClassVar, NamedTuple, Optional

if TYPE_CHECKING:  # annotations only: the fast path imports nothing for them
    from kvplan.model.formats import KVFormat, KVFormatPair


class LayerKind(str, Enum):
    """How one layer keeps its past: each kind's rules live in its `KINDS` entry."""

    FULL = "full_attention"  # MHA / GQA / MQA: K and V of every token
    SLIDING = "sliding_attention"  # the last `sliding_window` tokens
    CHUNKED = "chunked_attention"  # tokens of the current `attention_chunk_size` chunk
    MLA = "mla"  # one compressed latent + decoupled RoPE key per token
    STATE = "state"  # Mamba / linear attention: fixed bytes per sequence
    SHARED = "kv_shared"  # reuses another layer's KV: holds nothing itself
    MLP = "mlp"  # a block with no token mixer (Nemotron-H's MLP and MoE blocks): holds nothing


# Names accepted in `layer_types` / `layer_pattern`, mapped to a kind. HF configs
# use the first three; Jamba writes "mamba", Qwen3-Next and Kimi-Linear "linear_attention", LFM2 "conv".
LAYER_TYPE_ALIASES: dict[str, LayerKind] = {
    "full_attention": LayerKind.FULL,
    "attention": LayerKind.FULL,
    "sliding_attention": LayerKind.SLIDING,
    "chunked_attention": LayerKind.CHUNKED,
    "mamba": LayerKind.STATE,
    "linear_attention": LayerKind.STATE,
    "conv": LayerKind.STATE,  # LFM2's short-convolution layers (transformers 5.25 Lfm2Config.layer_types)
    "state": LayerKind.STATE,
    "kv_shared": LayerKind.SHARED,
    "mlp": LayerKind.MLP,  # Nemotron-H `-` (transformers 5 layers_block_type "mlp")
    "moe": LayerKind.MLP,  # Nemotron-H `E`
}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Kind:
    """The rules of one layer kind; the base holds nothing (a kind overrides what it keeps)."""

    kind: ClassVar[LayerKind]
    label: ClassVar[str]  # how tables name it
    layer_type: ClassVar[str]  # the layer_types name that rebuilds it in a spec (MLA: full_attention)
    window_field: ClassVar[Optional[str]] = None  # the spec field that bounds the tokens it keeps
    has_kv: ClassVar[bool] = False  # caches something per token (K/V or a latent): an attention kind
    has_state: ClassVar[bool] = False  # keeps fixed bytes per sequence

    @property
    def holds_anything(self) -> bool:
        """False for a layer that keeps nothing of its own (KV-shared)."""
        return self.has_kv or self.has_state

    @property
    def windowed(self) -> bool:
        return self.window_field is not None

    def window(self, spec) -> Optional[int]:
        """Tokens the window (or chunk) keeps, from the spec; None for a kind without one."""
        return getattr(spec, self.window_field) if self.window_field else None

    def spec_problem(self, spec, where: str) -> Optional[str]:
        """The spec field this kind needs and the spec lacks, as ModelSpec's message; else None."""
        return None

    # -- tokens -------------------------------------------------------------

    def tokens_held(self, context: int, window: Optional[int]) -> int:
        """Tokens one layer keeps for one sequence of `context` tokens (the peak, unpaged)."""
        return 0

    def paged_tokens(self, context: int, window: Optional[int], block_size: int) -> int:
        """Token slots one layer reserves for one sequence in blocks of `block_size`."""
        return 0

    def prefill_pairs(self, context: int, window: Optional[int]) -> int:
        """(query, key) pairs a causal prefill of `context` tokens scores in one head (0: no attention)."""
        return 0

    def in_window(self, query, key, window: Optional[int]):
        """Whether a query at position `query` may see the key at position `key` <= query, beyond
        causality; ints or torch tensors alike (`kvplan measure` builds its masks with it)."""
        return True

    def first_key(self, query: int, window: Optional[int]) -> int:
        """The earliest position a query at `query` may see (where a blocked prefill starts its keys)."""
        return 0

    # -- bytes ------------------------------------------------------------

    def kv_heads(self, spec) -> int:
        """KV heads of one copy of one layer (MLA: its one latent)."""
        return 0

    def kv_heads_per_rank(self, spec, tp: int) -> int:
        """KV heads one of `tp` tensor-parallel ranks holds."""
        return 0

    def bytes_per_token_per_layer(self, spec, fmt: KVFormatPair, kv_heads: int) -> int:
        """Bytes one more token adds to one layer holding `kv_heads` heads, scale bytes included."""
        return 0

    def raw_bits_per_token_per_layer(self, spec, fmt: KVFormatPair, kv_heads: int) -> int:
        """The same token's values alone, bits (no scale, zero point or group padding)."""
        return 0

    def state_bytes_per_layer(self, spec, state_format: KVFormat, tp: int = 1) -> int:
        """Fixed bytes one sequence keeps in one layer on one of `tp` ranks, at any context."""
        return 0

    # -- refusals -----------------------------------------------------------

    def tensor_parallel_problem(self, spec, tp: int) -> Optional[str]:
        """Why this kind's layers cannot split over `tp` ranks (vLLM's rules), else None."""
        return None

    def format_problem(self, spec, fmt: KVFormatPair) -> Optional[str]:
        """Why this kind cannot store its cache in `fmt`, else None."""
        return None


class FullAttention(Kind):
    """K and V of every token, in KV heads of head_dim (K) and v_head_dim (V) elements."""

    kind = LayerKind.FULL
    label = "full attention"
    layer_type = "full_attention"
    has_kv = True

    def tokens_held(self, context: int, window: Optional[int]) -> int:
        return context

    def paged_tokens(self, context: int, window: Optional[int], block_size: int) -> int:
        return _ceil_div(context, block_size) * block_size

    def prefill_pairs(self, context: int, window: Optional[int]) -> int:
        return context * (context + 1) // 2

    # -- geometry: a full-attention layer may have its own head size and KV heads (Gemma 4's
    # global_head_dim and num_global_key_value_heads); the windowed kinds keep the spec's base ones.

    def head_dims(self, spec) -> tuple[int, int]:
        """(K, V) elements per KV head of one layer of this kind.

        Gemma 4 (transformers 5.25 `Gemma4TextConfig.__post_init__`: per_layer_config gives every
        full_attention layer head_dim = global_head_dim; vLLM 0.32 `Gemma4DecoderLayer` the same):
        K and V both global_head_dim wide on full layers."""
        global_dim = getattr(spec, "global_head_dim", None)  # any spec-like object: absent = None
        if global_dim is not None:
            return global_dim, global_dim
        return spec.k_head_dim, spec.v_head_dim_resolved

    def kv_heads(self, spec) -> int:
        # Gemma 4: num_global_key_value_heads on full layers (the importer sets it only where
        # attention_k_eq_v gates it in, as Gemma4TextConfig does)
        return getattr(spec, "num_global_key_value_heads", None) or spec.num_key_value_heads or 0

    def kv_heads_per_rank(self, spec, tp: int) -> int:
        # vLLM `ModelConfig.get_num_kv_heads`: at least one; replicated when heads < tp
        # (vLLM 0.32 Gemma4Attention: max(1, total_num_kv_heads // tp_size) per layer)
        kv_heads = self.kv_heads(spec)
        assert kv_heads
        return max(1, kv_heads // tp)

    def bytes_per_token_per_layer(self, spec, fmt: KVFormatPair, kv_heads: int) -> int:
        k_dim, v_dim = self.head_dims(spec)
        return kv_heads * (fmt.k.bytes_for(k_dim) + fmt.v.bytes_for(v_dim))

    def raw_bits_per_token_per_layer(self, spec, fmt: KVFormatPair, kv_heads: int) -> int:
        k_dim, v_dim = self.head_dims(spec)
        return kv_heads * (k_dim * fmt.k.bits + v_dim * fmt.v.bits)

    def tensor_parallel_problem(self, spec, tp: int) -> Optional[str]:
        kv_heads = self.kv_heads(spec)
        assert kv_heads
        # a model whose layers differ in KV heads names the layers the refusal is about
        which = f" KV heads ({self.label} layers)" if getattr(spec, "has_layer_geometry", False) else " KV heads"
        if kv_heads >= tp and kv_heads % tp:
            return f"--tensor-parallel-size {tp} does not divide {spec.name}'s {kv_heads}{which}"
        if kv_heads < tp and tp % kv_heads:
            return (
                f"--tensor-parallel-size {tp} is not a multiple of {spec.name}'s {kv_heads}{which}, "
                "so they cannot be replicated evenly"
            )
        return None


class SlidingWindow(FullAttention):
    """K and V of the last `sliding_window` tokens."""

    kind = LayerKind.SLIDING
    label = "sliding window"
    layer_type = "sliding_attention"
    window_field = "sliding_window"

    def spec_problem(self, spec, where: str) -> Optional[str]:
        if self.window(spec) is None:
            return f"{where} has {self.layer_type} layers but {self.window_field} is not set"
        return None

    def tokens_held(self, context: int, window: Optional[int]) -> int:
        assert window is not None
        return min(context, window)

    def _window_blocks(self, window: int, block_size: int) -> int:
        # a window past the start may begin mid-block: one block more than it fills
        # (vLLM SlidingWindowSpec: ceil((W - 1) / bs) + 1)
        return _ceil_div(window - 1, block_size) + 1

    def paged_tokens(self, context: int, window: Optional[int], block_size: int) -> int:
        assert window is not None
        blocks = _ceil_div(context, block_size)
        if context > window:
            blocks = min(blocks, self._window_blocks(window, block_size))
        return blocks * block_size

    def prefill_pairs(self, context: int, window: Optional[int]) -> int:
        if window is None or context <= window:
            return context * (context + 1) // 2
        # the first W tokens see 1..W keys, every later one W
        return window * (window + 1) // 2 + (context - window) * window

    def in_window(self, query, key, window: Optional[int]):
        return query - key < window  # the last W tokens, the query's own included

    def first_key(self, query: int, window: Optional[int]) -> int:
        assert window is not None
        return max(0, query - window + 1)

    def head_dims(self, spec) -> tuple[int, int]:
        return spec.k_head_dim, spec.v_head_dim_resolved  # a window layer keeps the base geometry (Gemma 4)

    def kv_heads(self, spec) -> int:
        return spec.num_key_value_heads or 0


class ChunkedAttention(SlidingWindow):
    """K and V of the current `attention_chunk_size` chunk (its peak: a whole chunk)."""

    kind = LayerKind.CHUNKED
    label = "chunked local"
    layer_type = "chunked_attention"
    window_field = "attention_chunk_size"

    def _window_blocks(self, window: int, block_size: int) -> int:
        # chunks start at multiples of C: block-aligned when bs divides C, else one block more
        if window % block_size == 0:
            return _ceil_div(window, block_size)
        return _ceil_div(window - 1, block_size) + 1

    def prefill_pairs(self, context: int, window: Optional[int]) -> int:
        if window is None or context <= window:
            return context * (context + 1) // 2
        # each whole chunk is a causal triangle; the last partial chunk a smaller one
        full, rest = divmod(context, window)
        return full * window * (window + 1) // 2 + rest * (rest + 1) // 2

    def in_window(self, query, key, window: Optional[int]):
        return key // window == query // window  # the same chunk (floor division: tensors too)

    def first_key(self, query: int, window: Optional[int]) -> int:
        assert window is not None
        return query // window * window


def index_key_bytes(index_head_dim: int) -> int:
    """Bytes of one DeepSeek sparse-attention indexer key: fp8 values plus one fp32 scale per 128.

    vLLM 0.32 model_executor/models/deepseek_v2.py `Indexer.__init__` ("we use fp8 naive cache, where we
    store value in fp8 and scale in fp32 per self.quant_block_size element", quant_block_size = 128):
    `DeepseekV32IndexerCache(head_dim=index_head_dim + index_head_dim // 128 * 4, dtype=torch.uint8)`;
    SGLang's `NSATokenToKVPool` the same (docs/architectures.md section 3). 128 values -> 132 bytes.
    """
    return index_head_dim + index_head_dim // INDEX_QUANT_BLOCK * 4


INDEX_QUANT_BLOCK = 128  # values per fp32 scale in the indexer's fp8 key cache (vLLM Indexer.quant_block_size)


class LatentAttention(FullAttention):
    """MLA: one latent (kv_lora_rank + qk_rope_head_dim) per token, no V, no head factor; with DeepSeek
    sparse attention (index_head_dim) also one indexer key per token, in its own fp8 format
    (`index_key_bytes`), whatever the latent's format."""

    kind = LayerKind.MLA
    label = "MLA latent"
    layer_type = "full_attention"  # the spec turns it back into MLA because kv_lora_rank is set

    def kv_heads(self, spec) -> int:
        return 1

    def kv_heads_per_rank(self, spec, tp: int) -> int:
        return 1  # the latent is not split by heads: every rank holds all of it

    def bytes_per_token_per_layer(self, spec, fmt: KVFormatPair, kv_heads: int) -> int:
        return fmt.k.bytes_for(spec.mla_latent_dim) + self.index_bytes_per_token_per_layer(spec)

    def raw_bits_per_token_per_layer(self, spec, fmt: KVFormatPair, kv_heads: int) -> int:
        # the indexer key's values are 8-bit; its fp32 scales count as scale bytes
        return spec.mla_latent_dim * fmt.k.bits + (getattr(spec, "index_head_dim", None) or 0) * 8

    def index_bytes_per_token_per_layer(self, spec) -> int:
        """The sparse-attention indexer key one more token adds to one layer (0 without an indexer)."""
        index_dim = getattr(spec, "index_head_dim", None)
        return index_key_bytes(index_dim) if index_dim else 0

    def tensor_parallel_problem(self, spec, tp: int) -> Optional[str]:
        return None  # replicated: any tp that divides the attention heads

    def format_problem(self, spec, fmt: KVFormatPair) -> Optional[str]:
        if fmt.k != fmt.v:
            return (
                f"--kv-cache-dtype {fmt.name}: {spec.name} uses MLA, which caches one latent "
                "vector, so K and V cannot take different formats"
            )
        return None


class StateTensor(NamedTuple):
    """One tensor a state layer keeps per sequence: `elements` on one tensor-parallel rank.

    `role` names the dtype knob that sets it: "conv" (vLLM `--mamba-cache-dtype`, the
    model's dtype by default) or "ssm" (vLLM `--mamba-ssm-cache-dtype`: the SSM / recurrent
    state); `shape` is (channels, columns) or (heads, head dim, state) for the tables."""

    name: str  # conv, ssm (Mamba), recurrent (Gated DeltaNet), state (one opaque count)
    role: str  # conv | ssm: which of StateFormats it takes
    elements: int
    shape: tuple[int, ...]


class State(Kind):
    """Mamba / linear attention: a few tensors of fixed size per sequence, split by channels.

    A state layer is a small tuple of named tensors (`tensors`), each with its element count
    per sequence and its own dtype (`StateFormats`: conv and SSM apart). The geometries, as
    vLLM's `MambaStateShapeCalculator` (vllm 0.32 model_executor/layers/mamba/mamba_utils.py)
    states them, with `columns` = the conv kernel's K - 1 columns unless an engine keeps all K
    (transformers' `LinearAttentionLayer` does):

    - Mamba-1 (`mamba1_state_shape`): conv (d_inner / tp, K - 1), ssm (d_inner / tp, d_state);
    - Mamba-2 (`mamba2_state_shape`, set when mamba_n_heads is): groups G replicated to tp when
      G % tp (`extra_groups_for_head_shards`: tp - G more), conv ((d_inner + 2 G' N) / tp, K - 1),
      ssm (H / tp, head_dim, N);
    - Gated DeltaNet (`gated_delta_net_state_shape`, set when linear_num_value_heads is): conv
      ((2 Hk dk + Hv dv) / tp, K - 1), recurrent (Hv / tp, dv, dk);
    - Kimi Delta Attention (`kda_state_shape`, set when linear_num_heads is): separate short convs on
      q, k and v, conv (3 H d / tp, K - 1), recurrent (H / tp, d, d) (its dtype: float32 unless set,
      `kda_state_dtype`; the importer states it as mamba_ssm_cache_dtype);
    - short convolution (LFM2, `short_conv_state_shape`, set when conv_L_cache is): conv only,
      (hidden_size / tp, K - 1) with K = conv_L_cache, no SSM / recurrent tensor;
    - `state_elements_per_layer`: one opaque tensor in the conv (model) dtype, split by tp.
    """

    kind = LayerKind.STATE
    label = "state (SSM)"
    layer_type = "state"
    has_state = True

    def spec_problem(self, spec, where: str) -> Optional[str]:
        if spec.state_elements_per_layer_resolved is None:
            return (
                f"{where} has state layers but mamba_d_state, mamba_d_conv and mamba_expand "
                "(or state_elements_per_layer, the linear_* Gated DeltaNet or KDA sizes, or conv_L_cache) are not all set"
            )
        return None

    def tensors(self, spec, tp: int = 1, columns: Optional[int] = None) -> tuple[StateTensor, ...]:
        """The tensors one sequence keeps in one state layer on one of `tp` ranks. `columns`: conv
        columns kept (default the kernel's K - 1, as vLLM and llama.cpp keep; transformers keeps K)."""
        if spec.state_elements_per_layer is not None:
            n = spec.state_elements_per_layer // tp
            return (StateTensor("state", "conv", n, (n,)),)
        if spec.linear_num_value_heads is not None:  # Gated DeltaNet
            hk, hv = spec.linear_num_key_heads, spec.linear_num_value_heads
            dk, dv = spec.linear_key_head_dim, spec.linear_value_head_dim
            cols = spec.linear_conv_kernel_dim - 1 if columns is None else columns
            conv_dim = (2 * hk * dk + hv * dv) // tp
            return (
                StateTensor("conv", "conv", conv_dim * cols, (conv_dim, cols)),
                StateTensor("recurrent", "ssm", hv // tp * dv * dk, (hv // tp, dv, dk)),
            )
        if getattr(spec, "linear_num_heads", None) is not None:  # Kimi Delta Attention
            heads, dim = spec.linear_num_heads, spec.linear_head_dim
            cols = spec.linear_conv_kernel_dim - 1 if columns is None else columns
            conv_dim = 3 * heads * dim // tp  # q, k and v convolved apart: H d + 2 Hk dk with Hk dk = H d
            return (
                StateTensor("conv", "conv", conv_dim * cols, (conv_dim, cols)),
                StateTensor("recurrent", "ssm", heads // tp * dim * dim, (heads // tp, dim, dim)),
            )
        if getattr(spec, "conv_L_cache", None) is not None:  # LFM2 short convolution
            width = spec.hidden_size // tp
            cols = spec.conv_L_cache - 1 if columns is None else columns
            return (StateTensor("conv", "conv", width * cols, (width, cols)),)
        d_inner = spec.mamba_d_inner_resolved
        n_state = spec.mamba_d_state
        cols = spec.mamba_d_conv - 1 if columns is None else columns
        if spec.mamba_n_heads is not None:  # Mamba-2
            groups = spec.mamba_n_groups
            groups += 0 if groups % tp == 0 else tp - groups  # extra_groups_for_head_shards
            conv_dim = (d_inner + 2 * groups * n_state) // tp
            heads = spec.mamba_n_heads // tp
            head_dim = spec.mamba_head_dim or d_inner // spec.mamba_n_heads
            return (
                StateTensor("conv", "conv", conv_dim * cols, (conv_dim, cols)),
                StateTensor("ssm", "ssm", heads * head_dim * n_state, (heads, head_dim, n_state)),
            )
        width = d_inner // tp  # Mamba-1
        return (
            StateTensor("conv", "conv", width * cols, (width, cols)),
            StateTensor("ssm", "ssm", width * n_state, (width, n_state)),
        )

    def state_bytes_per_layer(self, spec, state_format, tp: int = 1) -> int:
        formats = as_state_formats(state_format)
        return sum(formats.of(t.role).bytes_for(t.elements) for t in self.tensors(spec, tp))

    def tensor_parallel_problem(self, spec, tp: int) -> Optional[str]:
        if getattr(spec, "state_elements_per_layer", None) is None and spec.linear_num_value_heads is not None:
            for field in ("linear_num_value_heads", "linear_num_key_heads"):
                heads = getattr(spec, field)
                if heads % tp:
                    return f"--tensor-parallel-size {tp} does not divide {spec.name}'s {field} {heads}"
            return None
        if getattr(spec, "state_elements_per_layer", None) is None and getattr(spec, "linear_num_heads", None) is not None:
            if spec.linear_num_heads % tp:  # vLLM kda_state_shape: divide(num_heads, tp)
                return f"--tensor-parallel-size {tp} does not divide {spec.name}'s linear_num_heads {spec.linear_num_heads}"
            return None
        if getattr(spec, "state_elements_per_layer", None) is None and getattr(spec, "conv_L_cache", None) is not None:
            if spec.hidden_size % tp:  # vLLM short_conv_state_shape: divide(dim, tp)
                return f"--tensor-parallel-size {tp} does not divide {spec.name}'s short-convolution width {spec.hidden_size}"
            return None
        if getattr(spec, "state_elements_per_layer", None) is None and spec.mamba_n_heads is not None:
            if spec.mamba_n_heads % tp:
                return f"--tensor-parallel-size {tp} does not divide {spec.name}'s {spec.mamba_n_heads} Mamba heads"
            if spec.mamba_d_inner_resolved % tp:
                return f"--tensor-parallel-size {tp} does not divide {spec.name}'s Mamba width {spec.mamba_d_inner_resolved}"
            return None
        state = spec.state_elements_per_layer_resolved
        if state is not None and state % tp:
            return f"--tensor-parallel-size {tp} does not divide {spec.name}'s state of {state} elements per layer"
        return None


class StateFormats(NamedTuple):
    """The formats of a state layer's tensors: `conv` (conv state, opaque state) and `ssm`
    (the SSM / recurrent state). Named as one dtype when both agree, else "conv/ssm"."""

    conv: "KVFormat"
    ssm: "KVFormat"

    @property
    def name(self) -> str:
        return self.conv.name if self.conv.name == self.ssm.name else f"{self.conv.name}/{self.ssm.name}"

    def of(self, role: str) -> "KVFormat":
        return self.ssm if role == "ssm" else self.conv


def as_state_formats(fmt) -> StateFormats:
    """One format for every state tensor (`--state-dtype bf16`), or the pair as given."""
    return fmt if isinstance(fmt, StateFormats) else StateFormats(fmt, fmt)


class Shared(Kind):
    """Reads an earlier layer's KV (num_kv_shared_layers): holds nothing itself."""

    kind = LayerKind.SHARED
    label = "KV shared"
    layer_type = "kv_shared"


class MlpOnly(Kind):
    """A layer with no attention and no state (Nemotron-H's `-` MLP and `E` MoE blocks): holds nothing."""

    kind = LayerKind.MLP
    label = "MLP / MoE only"
    layer_type = "mlp"


# The registry, in the order tables list kinds.
KINDS: dict[LayerKind, Kind] = {
    rule.kind: rule
    for rule in (FullAttention(), LatentAttention(), SlidingWindow(), ChunkedAttention(), State(), Shared(), MlpOnly())
}
KIND_ORDER: tuple[LayerKind, ...] = tuple(KINDS)
# by the kind's value, as results (`KindBreakdown.kind`, JSON) carry it
KINDS_BY_NAME: dict[str, Kind] = {k.value: rule for k, rule in KINDS.items()}


def first_problem(layer_kinds, ask: Callable[[Kind], Optional[str]]) -> Optional[str]:
    """The first problem `ask(rule)` names over the kinds present, in KIND_ORDER; None if none does."""
    for kind in KIND_ORDER:
        problem = ask(KINDS[kind]) if kind in layer_kinds else None
        if problem:
            return problem
    return None


def count_kinds(layer_kinds: tuple[LayerKind, ...] | list[LayerKind]) -> dict[LayerKind, int]:
    """Layers of each kind present, in KIND_ORDER."""
    return {k: layer_kinds.count(k) for k in KIND_ORDER if k in layer_kinds}
