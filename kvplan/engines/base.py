"""The records every engine answers with (`EngineCache`, `EngineCapacity`, ...) and the helpers they share;
`kvplan.engines` re-exports them (its docstring says what an engine profile is)."""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from typing import Optional

from kvplan.model.kinds import KINDS, KINDS_BY_NAME, LayerKind, count_kinds
from kvplan.model.layout import CacheEstimate, CacheLayout
from kvplan.model.formats import KVFormat, KVFormatPair

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True, slots=True)
class KindCache:
    """One layer kind as an engine keeps it, for the whole batch."""

    kind: str  # LayerKind value
    layers: int  # layers of this kind that hold something in this engine
    tokens_per_sequence: int  # token slots one sequence has in one layer (0 for state)
    slots_per_layer: int  # token slots (or state cells) one layer allocates, all sequences
    bytes_per_slot: Optional[int]  # one slot of one layer, all tp ranks; None when slots differ (HF quantized)
    bytes: int  # all layers of this kind, all sequences (all tensor-parallel ranks)
    note: str = ""


@dataclass(frozen=True, slots=True)
class Difference:
    """Bytes the engine holds beyond (or short of) the ideal cache, for one named cause."""

    cause: str
    bytes: int


@dataclass(frozen=True, slots=True)
class EngineCache:
    """What one engine allocates for `batch` sequences of `context` tokens."""

    engine: str
    model: str
    context: int
    batch: int
    kv_cache_dtype: str  # as the engine names it (f16, q8_0/q4_0, bfloat16, fp8_e4m3, ...)
    settings: dict  # the engine options that move bytes, resolved (n_ctx, page size, ...)
    by_kind: tuple[KindCache, ...]
    kv_bytes_total: Optional[int]  # None when the engine refuses the configuration
    ideal_bytes_total: int  # kvplan.model.layout: exactly the tokens held, same formats, no paging
    differences: tuple[Difference, ...]  # sum == kv_bytes_total - ideal_bytes_total
    log_lines: tuple[str, ...] = ()
    refusals: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    @property
    def tokens_held_by_kind(self) -> dict[str, int]:
        """Token slots per sequence per layer, by layer kind (attention kinds only)."""
        return {k.kind: k.tokens_per_sequence for k in self.by_kind if not KINDS_BY_NAME[k.kind].has_state}

    @property
    def bytes_by_kind(self) -> dict[str, int]:
        return {k.kind: k.bytes for k in self.by_kind}

    @property
    def overhead_bytes(self) -> dict[str, int]:
        """The differences from the ideal cache, by cause (bytes; negative = the engine holds less)."""
        return {d.cause: d.bytes for d in self.differences}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tokens_held_by_kind"] = self.tokens_held_by_kind
        data["bytes_by_kind"] = self.bytes_by_kind
        data["overhead_bytes"] = self.overhead_bytes
        return data


@dataclass(frozen=True, slots=True)
class MemoryInputs:
    """One GPU and what sits on it besides the KV cache (per tensor-parallel rank)."""

    gpu: str
    gpu_memory_bytes: int  # as the runtime reports the device total
    weights_bytes: int
    non_torch_bytes: int  # CUDA context, cuBLAS workspaces, NCCL buffers
    activation_bytes: int  # peak activations of a forward pass (0 when not given and not estimated)
    activation_source: str
    weights_source: str = ""  # where weights_bytes came from (kvplan.plan.planner.weights_source)
    stage_weights_bytes: tuple[int, ...] = ()  # per pipeline stage (ideal, vllm at pp > 1); () : weights_bytes
    budget_memory_bytes: Optional[int] = None  # the total vLLM's budget starts from (cudaMemGetInfo); None: gpu_memory_bytes


@dataclass(frozen=True, slots=True)
class EngineCapacity:
    """How much KV one engine gives itself on one GPU, by its own budget rule."""

    engine: str
    gpu: str
    gpu_memory_bytes: int
    weights_bytes: int
    budget_rule: str  # the rule in words, with its source
    kv_budget_bytes: int  # per rank
    max_total_tokens: Optional[int]  # the engine's own pool size in tokens, when it has one
    max_concurrent_sequences: int  # sequences of `context` tokens that fit
    fits: bool  # `batch` sequences of `context` tokens fit
    log_lines: tuple[str, ...] = ()
    refusals: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)
    weights_source: str = ""  # where weights_bytes came from: file headers, --dtype, or the parameter formula
    # the longest context (<= max_position_embeddings) at which `batch` sequences fit, by the engine's own test
    # (kvplan.plan.capacity.engine_max_context; ideal / vllm: the planner's); None when the engine refuses
    max_context_tokens: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ helpers


class Ledger:
    """Walks from the ideal total to an engine's total one rule at a time.

    Each `step(cause, total)` records the change that one rule makes, so the
    differences always add up to engine total - ideal total exactly.
    """

    def __init__(self, ideal_total: int) -> None:
        self.ideal_total = ideal_total
        self.total = ideal_total
        self._steps: list[Difference] = []

    def step(self, cause: str, new_total: int) -> None:
        delta = new_total - self.total
        if delta:
            self._steps.append(Difference(cause, delta))
        self.total = new_total

    @property
    def differences(self) -> tuple[Difference, ...]:
        return tuple(self._steps)


def ideal_estimate(spec, fmt: KVFormatPair, context: int, batch: int, tp: int = 1,
                   state_format: Optional[KVFormat] = None) -> CacheEstimate:
    """The ideal cache: exactly the tokens each layer needs, no paging (kvplan.model.layout)."""
    return CacheLayout(spec, fmt, block_size=1, tp=tp, state_format=state_format).at(context, batch)


def window_of(spec, kind: LayerKind) -> Optional[int]:
    """The window a sliding (sliding_window) or chunked (attention_chunk_size) layer keeps (the kind's field)."""
    return KINDS[kind].window(spec)


def kind_counts(spec) -> dict[LayerKind, int]:
    """Layers of each kind, in kvplan.model.kinds' order."""
    return count_kinds(spec.layer_kinds)


def f32(x: float) -> float:
    """`x` rounded to a C float, as llama.cpp's `(float)` casts do before printing."""
    return struct.unpack("f", struct.pack("f", x))[0]


def ideal_state_row(ideal: CacheEstimate, kind: LayerKind, layers: int, note: str) -> KindCache:
    """The row of a state (SSM) kind taken from the ideal estimate, for an engine whose state pool kvplan does not
    re-read: `note` names that pool."""
    st = next(k for k in ideal.by_kind if k.kind == kind.value)
    return KindCache(kind.value, layers, 0, ideal.batch, st.state_bytes_per_sequence_per_layer, st.bytes_total, note)


def kind_rows(est: CacheEstimate, paged: bool) -> tuple[KindCache, ...]:
    """A `kvplan.model.layout` estimate as an engine's rows (ideal: tokens held; vLLM: tokens its blocks reserve)."""
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


_MODULES = {"ideal": "ideal", "vllm": "vllm", "hf": "hf", "llama.cpp": "llamacpp", "sglang": "sglang",
            "trtllm": "trtllm"}


def get(name: str):
    """The module of engine `name` (one of NAMES); each answers the same questions:

    - `cache(spec, context, batch, opts, *, kv_cache_dtype, ideal_format, ideal_state) -> EngineCache`
    - `capacity(spec, context, batch, opts, memory, *, ...) -> EngineCapacity`: its budget rule on `memory`
      (`MemoryInputs`; ideal and vllm: vLLM's, `kvplan.engines.vllm_rules.pool_capacity`)
    - its option object (`kvplan.engines.options.engine_options(name, ...)` builds it).

    KeyError for a name not in NAMES (callers check the name against NAMES with their flag's words).
    """
    import importlib

    return importlib.import_module(f"kvplan.engines.{_MODULES[name]}")


def unread_geometry_refusal(spec, engine: str) -> Optional[str]:
    """kvplan's refusal for an engine whose rules for issue #13's per-layer attention were not read at its source:
    KV-shared layers (num_kv_shared_layers), full layers with their own head size or KV heads (Gemma 4), the
    DeepSeek sparse-attention indexer (index_head_dim). None when the spec has none of them."""
    what = []
    if getattr(spec, "num_kv_shared_layers", 0):
        what.append(f"KV-shared layers (num_kv_shared_layers {spec.num_kv_shared_layers})")
    if getattr(spec, "has_layer_geometry", False):
        what.append("full-attention layers with their own head size or KV heads (global_head_dim / "
                    "num_global_key_value_heads)")
    if getattr(spec, "index_head_dim", None):
        what.append(f"a sparse-attention indexer key cache (index_head_dim {spec.index_head_dim})")
    if getattr(spec, "linear_num_heads", None) and LayerKind.STATE in spec.layer_kinds:
        what.append("Kimi Delta Attention state (linear_num_heads)")
    if getattr(spec, "conv_L_cache", None) and LayerKind.STATE in spec.layer_kinds:
        what.append("LFM2 short-convolution state (conv_L_cache)")
    if not what:
        return None
    return (f"kvplan does not model how {engine} allocates {' and '.join(what)} (its rules for them are not "
            f"built into kvplan yet), so it does not size {spec.name} for {engine} (use --engine vllm, hf, llama.cpp or ideal)")
