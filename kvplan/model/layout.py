"""The analytic KV-cache calculator: a spec in, exact integer bytes out.

Pure functions, no I/O. Each layer kind's rules live once, in `kvplan.model.kinds`
(bytes per token per layer, tokens held per sequence at context L, paged slots,
fixed state, KV heads per tensor-parallel rank); this module sums them over a
spec's layers, its tensor-parallel ranks and its pipeline stages:

- paged blocks of `block_size` tokens round each layer's tokens up per sequence
  (a window that slides past a block boundary may straddle one block more, as
  vLLM's SlidingWindowSpec reserves: the sliding kind's rule);
- tensor parallelism: each rank holds its kind's KV heads per rank (vLLM
  `ModelConfig.get_num_kv_heads`: replicated when heads < tp; an MLA latent is
  whole on every rank) and its share of a state layer's channels; the total counts
  every rank, so replicated heads show as `replication_bytes`;
- pipeline parallelism: layers split over stages as vLLM's `get_pp_indices`
  does (L // pp each, the remainder one extra to the stages before the last);
  a layer's rule is the same on any stage, and a rank's cache is its largest stage's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from kvplan.errors import InputError
from kvplan.model.formats import FIXED_FORMATS, KVFormat, KVFormatPair
from kvplan.model.kinds import KINDS, Kind, LayerKind, StateFormats, as_state_formats, count_kinds, first_problem
from kvplan.model.shape import DTYPE_ALIASES
from kvplan.model.shape import SpecDerived as ModelSpec  # any validated spec (pydantic or not)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def last_fitting(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest n in [lo, hi) with fits(n), by bisection: fits holds at lo, fails at hi and is monotone
    between (bytes are a step function of context or batch, so a search, not a division)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def pp_partition(num_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage, as vLLM's get_pp_indices splits them (61 over 4 -> 15,15,16,15)."""
    if pp > num_layers:
        raise InputError(
            f"--pipeline-parallel-size {pp} is larger than the model's {num_layers} layers"
        )
    per_stage = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):  # the remainder goes to the stages before the last
        per_stage[-i] += 1
    return per_stage


def default_state_formats(spec: ModelSpec) -> StateFormats:
    """A state layer's formats when no flag sets them: the conv state in the model's dtype, the SSM /
    recurrent state in the dtype the config asks for (mamba_ssm_cache_dtype), else the model's too."""
    model = FIXED_FORMATS[spec.dtype]
    ssm = spec.mamba_ssm_cache_dtype
    return StateFormats(model, FIXED_FORMATS[DTYPE_ALIASES[ssm]] if ssm else model)


def state_formats(spec: ModelSpec, fmt: "KVFormat | StateFormats | None") -> StateFormats:
    """`fmt` as a state layer's formats: None -> the defaults; one format (--state-dtype) -> every tensor."""
    return default_state_formats(spec) if fmt is None else as_state_formats(fmt)


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads one tensor-parallel rank holds in the model's attention layers (its MLA or
    full-attention kind's rule: at least one, replicated when heads < tp; a latent is whole)."""
    return KINDS[LayerKind.MLA if spec.is_mla else LayerKind.FULL].kv_heads_per_rank(spec, tp)


def check_tensor_parallel(spec: ModelSpec, tp: int) -> None:
    """Raise InputError when the model's heads cannot be split over `tp` ranks (vLLM's rules)."""
    if tp == 1:
        return
    heads = spec.num_attention_heads
    if heads % tp:
        raise InputError(
            f"--tensor-parallel-size {tp} does not divide {spec.name}'s {heads} attention heads; "
            f"use a divisor of {heads}"
        )
    # each kind present states its own split (KV heads, state channels)
    problem = first_problem(spec.layer_kinds, lambda rule: rule.tensor_parallel_problem(spec, tp))
    if problem:
        raise InputError(problem)


@dataclass(frozen=True, slots=True)
class KindGroup:
    """All layers of one kind: the rules that size them."""

    kind: LayerKind
    rule: Kind  # KINDS[kind]: its tokens-held and bytes rules
    num_layers: int
    window: int | None  # sliding window or chunk size, tokens
    kv_heads: int  # KV heads of one copy (MLA: 1)
    kv_heads_per_rank: int
    bytes_per_token_per_layer: int  # one copy (all KV heads)
    bytes_per_token_per_layer_rank: int  # one tensor-parallel rank
    state_bytes_per_layer: int  # per sequence, one copy (state layers only)
    state_bytes_per_layer_rank: int


class KindBreakdown(NamedTuple):
    """One row of the breakdown by layer kind at a given context and batch.

    Immutable; a NamedTuple rather than a frozen dataclass because sweeps build
    hundreds of thousands of them (construction is ~5x cheaper).
    """

    kind: str
    layers: int
    kv_heads_per_rank: int
    tokens_held: int  # per sequence per layer, unpaged
    tokens_reserved: int  # per sequence per layer, paged
    bytes_per_token_per_layer: int  # one copy
    state_bytes_per_sequence_per_layer: int
    bytes_per_sequence: int  # all layers of this kind, one copy, unpaged
    bytes_total: int  # all sequences, paged, summed over ranks
    paging_bytes: int  # of bytes_total: lost to rounding up to whole blocks


class StateTensorRow(NamedTuple):
    """One tensor of one state layer, one sequence, one copy (all tensor-parallel ranks' share together)."""

    name: str  # conv, ssm, recurrent, state
    dtype: str
    shape: tuple[int, ...]  # (channels, columns) or (heads, head dim, state)
    bytes_per_sequence_per_layer: int


class CacheEstimate(NamedTuple):
    """The KV cache of `batch` sequences of `context` tokens: exact bytes."""

    model: str
    context: int
    batch: int
    kv_cache_dtype: str
    k_cache_dtype: str
    v_cache_dtype: str
    state_dtype: str
    block_size: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    kv_bytes_per_token: int
    kv_bytes_per_sequence: int
    kv_bytes_total: int
    kv_bytes_per_rank: int
    paging_bytes: int
    replication_bytes: int
    quantisation_overhead_bytes_per_token: int
    layers_per_stage: tuple[int, ...]
    by_kind: tuple[KindBreakdown, ...] = ()
    state_tensors: tuple[StateTensorRow, ...] = ()  # a state layer's tensors (none without state layers)

    def to_dict(self) -> dict:
        """Plain data for JSON/CSV (hand-built: dataclasses.asdict is ~10x slower in sweeps); `state_tensors`
        only where the model has state layers."""
        out = self._asdict()
        out["layers_per_stage"] = list(self.layers_per_stage)
        out["by_kind"] = [row._asdict() for row in self.by_kind]
        if self.state_tensors:
            out["state_tensors"] = [dict(row._asdict(), shape=list(row.shape)) for row in self.state_tensors]
        else:
            del out["state_tensors"]
        return out


class CacheLayout:
    """Everything about a spec's cache that does not depend on context or batch.

    Built once per (spec, formats, block size, tp, pp); `at(context, batch)` is
    then a few integer operations, so sweeps stay fast.
    """

    def __init__(
        self,
        spec: ModelSpec,
        kv_format: KVFormatPair,
        *,
        block_size: int = 1,
        tp: int = 1,
        pp: int = 1,
        state_format: KVFormat | StateFormats | None = None,
    ) -> None:
        if block_size < 1:
            raise InputError(f"--block-size must be a positive number of tokens, got {block_size}")
        if tp < 1:
            raise InputError(f"--tensor-parallel-size must be at least 1, got {tp}")
        if pp < 1:
            raise InputError(f"--pipeline-parallel-size must be at least 1, got {pp}")
        kinds = spec.layer_kinds
        problem = first_problem(kinds, lambda rule: rule.format_problem(spec, kv_format))  # MLA: one K/V format
        if problem:
            raise InputError(problem)
        check_tensor_parallel(spec, tp)
        self.spec = spec
        self.kv_format = kv_format
        self.state_format = state_formats(spec, state_format)
        self.block_size = block_size
        self.tp = tp
        self.pp = pp
        self.layers_per_stage = pp_partition(spec.num_hidden_layers, pp)
        self.layers_per_stage_tuple = tuple(self.layers_per_stage)
        self._format_name = kv_format.name
        # kind counts per stage, in layer order
        self.stage_kind_counts: list[dict[LayerKind, int]] = []
        start = 0
        for n in self.layers_per_stage:
            counts: dict[LayerKind, int] = {}
            for kind in kinds[start : start + n]:
                counts[kind] = counts.get(kind, 0) + 1
            self.stage_kind_counts.append(counts)
            start += n
        total_counts = count_kinds(kinds)
        self.groups: list[KindGroup] = []
        for kind, count in total_counts.items():
            rule = KINDS[kind]
            heads, rank_heads = rule.kv_heads(spec), rule.kv_heads_per_rank(spec, tp)
            self.groups.append(
                KindGroup(
                    kind=kind,
                    rule=rule,
                    num_layers=count,
                    window=rule.window(spec),
                    kv_heads=heads,
                    kv_heads_per_rank=rank_heads,
                    bytes_per_token_per_layer=rule.bytes_per_token_per_layer(spec, kv_format, heads),
                    bytes_per_token_per_layer_rank=rule.bytes_per_token_per_layer(spec, kv_format, rank_heads),
                    state_bytes_per_layer=rule.state_bytes_per_layer(spec, self.state_format),
                    state_bytes_per_layer_rank=rule.state_bytes_per_layer(spec, self.state_format, tp),
                )
            )
        # per stage: (group index, layers, bytes per token per layer on a rank, state bytes on a rank)
        self._stage_terms = [
            [
                (i, counts[g.kind], g.bytes_per_token_per_layer_rank, g.state_bytes_per_layer_rank)
                for i, g in enumerate(self.groups)
                if counts.get(g.kind)
            ]
            for counts in self.stage_kind_counts
        ]
        self._kind_values = [g.kind.value for g in self.groups]
        self.state_tensors: tuple[StateTensorRow, ...] = ()
        if LayerKind.STATE in total_counts:
            fmts = self.state_format
            self.state_tensors = tuple(
                StateTensorRow(t.name, fmts.of(t.role).name, t.shape, fmts.of(t.role).bytes_for(t.elements))
                for t in KINDS[LayerKind.STATE].tensors(spec)
            )
        self.kv_bytes_per_token = sum(g.num_layers * g.bytes_per_token_per_layer for g in self.groups)
        # scale / zero-point / group padding bytes inside one token's worth, all layers
        raw_bits = sum(
            g.num_layers * g.rule.raw_bits_per_token_per_layer(spec, kv_format, g.kv_heads) for g in self.groups
        )
        self.quantisation_overhead_bytes_per_token = self.kv_bytes_per_token - raw_bits // 8

    def kv_bytes_per_sequence(self, context: int) -> int:
        """One sequence at `context`, windows and state applied, one copy, unpaged."""
        return sum(
            g.num_layers * (g.bytes_per_token_per_layer * g.rule.tokens_held(context, g.window) + g.state_bytes_per_layer)
            for g in self.groups
        )

    def stage_rank_bytes(self, counts: dict[LayerKind, int], context: int, paged: bool) -> int:
        """One rank of one stage, one sequence."""
        total = 0
        for g in self.groups:
            n = counts.get(g.kind, 0)
            if not n:
                continue
            tokens = (
                g.rule.paged_tokens(context, g.window, self.block_size)
                if paged
                else g.rule.tokens_held(context, g.window)
            )
            total += n * (g.bytes_per_token_per_layer_rank * tokens + g.state_bytes_per_layer_rank)
        return total

    def at(self, context: int, batch: int) -> CacheEstimate:
        if context < 1:
            raise InputError(f"--context must be at least 1 token, got {context}")
        if batch < 1:
            raise InputError(f"--batch must be at least 1 sequence, got {batch}")
        spec, bs, tp = self.spec, self.block_size, self.tp
        # tokens held (unpaged) and reserved (paged) per layer of each kind: once per point
        held = [g.rule.tokens_held(context, g.window) for g in self.groups]
        reserved = [g.rule.paged_tokens(context, g.window, bs) for g in self.groups]
        rows = []
        per_sequence = total = paging = 0
        for i, g in enumerate(self.groups):
            h, r = held[i], reserved[i]
            rank_bytes = g.bytes_per_token_per_layer_rank
            kind_sequence = g.num_layers * (g.bytes_per_token_per_layer * h + g.state_bytes_per_layer)
            kind_total = batch * tp * g.num_layers * (rank_bytes * r + g.state_bytes_per_layer_rank)
            kind_paging = batch * tp * g.num_layers * rank_bytes * (r - h)
            per_sequence += kind_sequence
            total += kind_total
            paging += kind_paging
            rows.append(
                KindBreakdown(
                    self._kind_values[i], g.num_layers, g.kv_heads_per_rank, h, r, g.bytes_per_token_per_layer,
                    g.state_bytes_per_layer, kind_sequence, kind_total, kind_paging,
                )
            )
        if self.pp == 1:
            per_rank = total // tp  # every tensor-parallel rank holds the same
        else:  # the largest pipeline stage, one rank
            per_rank = batch * max(
                sum(n * (rank_bytes * reserved[i] + state) for i, n, rank_bytes, state in terms)
                for terms in self._stage_terms
            )
        return CacheEstimate(
            model=spec.name,
            context=context,
            batch=batch,
            kv_cache_dtype=self._format_name,
            k_cache_dtype=self.kv_format.k.name,
            v_cache_dtype=self.kv_format.v.name,
            state_dtype=self.state_format.name,
            block_size=bs,
            tensor_parallel_size=tp,
            pipeline_parallel_size=self.pp,
            kv_bytes_per_token=self.kv_bytes_per_token,
            kv_bytes_per_sequence=per_sequence,
            kv_bytes_total=total,
            kv_bytes_per_rank=per_rank,
            paging_bytes=paging,
            replication_bytes=total - paging - batch * per_sequence,
            quantisation_overhead_bytes_per_token=self.quantisation_overhead_bytes_per_token,
            layers_per_stage=self.layers_per_stage_tuple,
            by_kind=tuple(rows),
            state_tensors=self.state_tensors,
        )


def estimate_cache(spec: ModelSpec, *, context: int, batch: int = 1, kv_format: KVFormatPair, **layout: Any) -> CacheEstimate:
    """The cache of `batch` sequences of `context` tokens (see the module docstring for the rules); `layout` are
    CacheLayout's keywords (block_size, tp, pp, state_format), declared there once."""
    return CacheLayout(spec, kv_format, **layout).at(context, batch)
