"""One model, one context and batch, every engine side by side, with the reason for each difference.

`compare()` builds one `EngineCache` per engine (ideal, vllm, hf, llama.cpp,
sglang, trtllm) from the same --kv-cache-dtype, translated to each engine's own
name for it (llama.cpp: auto -> f16; SGLang: fp8 -> fp8_e4m3; an engine without
the format refuses it as that engine would). With a GPU it adds each engine's
capacity by its own budget rule. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from kvplan.engines import (
    ALL_ENGINES,
    EngineCache,
    EngineCapacity,
    MemoryInputs,
    hf,
    llamacpp,
    reference,
    sglang,
    trtllm,
)
from kvplan.errors import InputError
from kvplan.model.formats import KVFormat, KVFormatPair


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """Everything that moves a number in `kvplan compare` (each is a flag)."""

    context: int
    batch: int = 1
    kv_cache_dtype: str = "auto"
    tp: int = 1
    engines: tuple[str, ...] = ALL_ENGINES
    vllm_block_size: Optional[int] = None
    hf: hf.HFOptions = field(default_factory=hf.HFOptions)
    llamacpp: Optional[llamacpp.LlamaCppOptions] = None  # None: types from kv_cache_dtype
    sglang: sglang.SGLangOptions = field(default_factory=sglang.SGLangOptions)
    trtllm: trtllm.TrtllmOptions = field(default_factory=trtllm.TrtllmOptions)


@dataclass(frozen=True, slots=True)
class CompareRow:
    engine: str
    cache: EngineCache
    capacity: Optional[EngineCapacity]
    delta_bytes: Optional[int]  # cache.kv_bytes_total - ideal
    why: tuple[str, ...]  # one sentence per difference, with its bytes

    def to_dict(self) -> dict:
        return {
            "engine": self.engine,
            "delta_bytes": self.delta_bytes,
            "why": list(self.why),
            "cache": self.cache.to_dict(),
            "capacity": None if self.capacity is None else self.capacity.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    model: str
    context: int
    batch: int
    kv_cache_dtype: str
    tensor_parallel_size: int
    gpu: Optional[str]
    rows: tuple[CompareRow, ...]

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "rows"}
        data["rows"] = [r.to_dict() for r in self.rows]
        return data


def llamacpp_types(kv_cache_dtype: str) -> tuple[str, str]:
    """--kv-cache-dtype as llama.cpp's -ctk / -ctv (auto -> f16, common's default)."""
    parts = [p.strip().lower() for p in kv_cache_dtype.split("/")]
    names = [("f16" if p == "auto" else llamacpp.cache_type(p)) for p in parts]
    return names[0], names[-1]


def engine_only_names() -> frozenset[str]:
    """--kv-cache-dtype names an engine profile takes that are not kvplan formats (f16, bfloat16, mxfp8, ...)."""
    names = set(llamacpp.CACHE_TYPES) | set(llamacpp._ALIASES) | set(sglang.KV_DTYPES) | set(trtllm.KV_DTYPES)
    return frozenset(names | set(hf.DTYPE_ALIASES))


def check_kv_dtype(kv_cache_dtype: str) -> None:
    """Raise UnknownFormatError (kvplan.model.formats' words) unless each part is a kvplan format or some engine's name.

    A name no engine and no kvplan format knows ('fp4') is a typo, refused up front as
    `estimate` refuses it, not passed on for every engine to refuse; a name only some
    engines know (f16, mxfp8) goes on, and the others refuse it in their own words.
    """
    from kvplan.model.formats import parse_format, parse_format_pair

    parts = [p.strip() for p in kv_cache_dtype.split("/")]
    if len(parts) > 2 or not all(parts):
        parse_format_pair(kv_cache_dtype, "bf16")  # raises its own words for the shape ('a/b/c', 'q8_0/')
    known = engine_only_names() | {"auto"}
    for part in parts:
        if part.lower() not in known:
            parse_format(part)


def ideal_format(kv_cache_dtype: str, model_dtype: str) -> KVFormatPair:
    """--kv-cache-dtype as kvplan's formats for the ideal row; an engine-only name (f16) sizes it in the model's dtype.

    A name no engine takes is bad input: InputError naming --kv-cache-dtype (`check_kv_dtype`).
    """
    from kvplan.model.formats import UnknownFormatError, parse_format_pair

    try:
        return parse_format_pair(kv_cache_dtype, model_dtype)
    except UnknownFormatError:
        pass
    try:
        check_kv_dtype(kv_cache_dtype)
    except UnknownFormatError as exc:
        raise InputError(f"--kv-cache-dtype: {exc}") from None
    return parse_format_pair("auto", model_dtype)


def _signed(n: int) -> str:
    from kvplan.units import fmt_bytes

    return ("+" if n > 0 else "-") + fmt_bytes(abs(n))


def explain(cache: EngineCache) -> tuple[str, ...]:
    """The reason for every difference from the ideal cache, one line each."""
    if cache.refused:
        return tuple(f"refused: {r}" for r in cache.refusals)
    if cache.kv_bytes_total is None:
        return tuple(f"not modelled: {n}" for n in cache.notes[:1])
    if cache.engine == "ideal":
        return ("the tokens each layer needs, nothing more",)
    if not cache.differences:
        return ("same bytes as the ideal cache",)
    return tuple(f"{_signed(d.bytes)}: {d.cause}" for d in cache.differences)


def _cache(name: str, spec, opts: CompareOptions, fmt: KVFormatPair, state: Optional[KVFormat]) -> EngineCache:
    c, b = opts.context, opts.batch
    if name == "ideal":
        return reference.ideal(spec, c, b, fmt, tp=opts.tp, state_format=state)
    if name == "vllm":
        return reference.vllm(spec, c, b, fmt, kv_cache_dtype=opts.kv_cache_dtype, tp=opts.tp,
                              block_size=opts.vllm_block_size, state_format=state)
    if name == "hf":
        _single_device(name, opts.tp)
        return hf.cache(spec, c, b, opts.hf, kv_cache_dtype=opts.kv_cache_dtype, ideal_format=fmt, ideal_state=state)
    if name == "llama.cpp":
        _single_device(name, opts.tp)
        return llamacpp.cache(spec, c, b, _llama_opts(opts), ideal_format=fmt, ideal_state=state)
    if name == "sglang":
        return sglang.cache(spec, c, b, replace(opts.sglang, tp=opts.tp), kv_cache_dtype=opts.kv_cache_dtype,
                            ideal_format=fmt, ideal_state=state)
    if name == "trtllm":
        return trtllm.cache(spec, c, b, replace(opts.trtllm, tp=opts.tp), kv_cache_dtype=opts.kv_cache_dtype,
                            ideal_format=fmt, ideal_state=state)
    raise InputError(f"--engines {name!r} is not one of {', '.join(ALL_ENGINES)}")


def _single_device(name: str, tp: int) -> None:
    if tp > 1:
        raise InputError(
            f"--tp {tp}: kvplan's {name} profile is for one device ({'llama.cpp splits layers, not heads' if name == 'llama.cpp' else 'transformers tp_plan sharding is not modelled'}); "
            f"drop {name} from --engines or use --tp 1"
        )


def _llama_opts(opts: CompareOptions) -> llamacpp.LlamaCppOptions:
    if opts.llamacpp is not None:
        return opts.llamacpp
    k, v = llamacpp_types(opts.kv_cache_dtype)
    return llamacpp.LlamaCppOptions(cache_type_k=k, cache_type_v=v)


def _capacity(name: str, spec, opts: CompareOptions, fmt: KVFormatPair, state: Optional[KVFormat],
              mem: MemoryInputs, planner_factory) -> EngineCapacity:
    c, b = opts.context, opts.batch
    if name in ("ideal", "vllm"):
        return planner_factory(name)
    if name == "hf":
        return hf.capacity(spec, c, b, opts.hf, mem, kv_cache_dtype=opts.kv_cache_dtype, ideal_format=fmt,
                           ideal_state=state)
    if name == "llama.cpp":
        return llamacpp.capacity(spec, c, b, _llama_opts(opts), mem, ideal_format=fmt, ideal_state=state)
    if name == "sglang":
        return sglang.capacity(spec, c, b, replace(opts.sglang, tp=opts.tp), mem,
                               kv_cache_dtype=opts.kv_cache_dtype, ideal_format=fmt, ideal_state=state)
    return trtllm.capacity(spec, c, b, replace(opts.trtllm, tp=opts.tp), mem, kv_cache_dtype=opts.kv_cache_dtype,
                           ideal_format=fmt, ideal_state=state)


def compare(spec, opts: CompareOptions, fmt: KVFormatPair, state: Optional[KVFormat] = None, *,
            memory: Optional[MemoryInputs] = None, planner_factory=None) -> Comparison:
    """Every engine in `opts.engines` at `opts.context` x `opts.batch`.

    `fmt` is --kv-cache-dtype resolved to kvplan's formats (the ideal's); with
    `memory` (and `planner_factory`, which returns the ideal / vLLM capacity from
    kvplan.plan.planner) each row also gets its engine's capacity on that GPU.
    """
    unknown = [e for e in opts.engines if e not in ALL_ENGINES]
    if unknown:
        raise InputError(f"--engines {unknown[0]!r} is not one of {', '.join(ALL_ENGINES)}")
    rows = []
    for name in opts.engines:
        cache = _cache(name, spec, opts, fmt, state)
        cap = None
        if memory is not None:
            cap = _capacity(name, spec, opts, fmt, state, memory, planner_factory)
            if cap is not None:  # every engine holds the same weights; say where their bytes came from
                cap = replace(cap, weights_source=memory.weights_source)
        delta = None if cache.kv_bytes_total is None else cache.kv_bytes_total - cache.ideal_bytes_total
        rows.append(CompareRow(name, cache, cap, delta, explain(cache)))
    return Comparison(spec.name, opts.context, opts.batch, fmt.name, opts.tp,
                      memory.gpu if memory is not None else None, tuple(rows))
