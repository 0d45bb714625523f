"""One model, one context and batch, every engine side by side, with the reason for each difference.

The rows (`CompareRow`, `Comparison`) and the words: `explain` gives the reason
for each difference from the ideal cache; --kv-cache-dtype is translated to each
engine's own name for it (llama.cpp: auto -> f16; an engine without the format
refuses it as that engine would). `kvplan.plan.pipeline.compare` builds them,
one `kvplan.plan.pipeline.run` per engine. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from kvplan.engines import EngineCache, EngineCapacity, hf, llamacpp, sglang, trtllm
from kvplan.errors import InputError
from kvplan.model.formats import KVFormatPair


@dataclass(frozen=True, slots=True)
class CompareRow:
    engine: str
    cache: EngineCache
    capacity: Optional[EngineCapacity]
    delta_bytes: Optional[int]  # cache.kv_bytes_total - ideal
    why: tuple[str, ...]  # one sentence per difference, with its bytes
    capacity_why: tuple[str, ...] = ()  # with a GPU: why max sequences is not budget / bytes (explain_capacity)

    def to_dict(self) -> dict:
        data = {
            "engine": self.engine,
            "delta_bytes": self.delta_bytes,
            "why": list(self.why),
            "cache": self.cache.to_dict(),
            "capacity": None if self.capacity is None else self.capacity.to_dict(),
        }
        if self.capacity is not None:
            data["capacity_why"] = list(self.capacity_why)
        return data


@dataclass(frozen=True, slots=True)
class Comparison:
    model: str
    context: int
    batch: int
    kv_cache_dtype: str
    tensor_parallel_size: int
    gpu: Optional[str]
    rows: tuple[CompareRow, ...]
    pipeline_parallel_size: int = 1  # ideal and vllm rows only (every profile models one stage)

    def to_dict(self) -> dict:
        """The record `compare --format json` prints; `pipeline_parallel_size` only when above 1 (after tp)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("rows", "pipeline_parallel_size")}
        if self.pipeline_parallel_size > 1:
            data = {**{k: v for k, v in data.items() if k != "gpu"}, "pipeline_parallel_size": self.pipeline_parallel_size,
                    "gpu": self.gpu}
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


def explain_capacity(cache: EngineCache, capacity: Optional[EngineCapacity], tp: int) -> tuple[str, ...]:
    """Why an engine's max sequences is not its KV budget over the KV bytes a sequence holds (empty when it is).

    The bytes are what `batch` sequences hold at the context (all ranks; the budget is
    per rank); an engine's pool can reserve more per sequence than that (vLLM: a
    sliding window's max_num_batched_tokens; SGLang: split pools; TensorRT-LLM:
    windows at full cost), and then its notes give the reason.
    """
    if capacity is None or not cache.kv_bytes_total:
        return ()
    by_bytes = max(0, capacity.kv_budget_bytes) * cache.batch * tp // cache.kv_bytes_total
    if by_bytes == capacity.max_concurrent_sequences:
        return ()
    head = (f"max seqs {capacity.max_concurrent_sequences:,} is {cache.engine}'s own capacity rule, not KV budget / "
            f"KV bytes per sequence ({by_bytes:,})")
    return (head,) + tuple(capacity.notes) + tuple(cache.notes)


def single_device_problem(name: str, tp: int, pp: int = 1) -> Optional[str]:
    """Why a profile cannot take --tp `tp` / --pp `pp` in `compare` (None: it can): hf and llama.cpp run on one
    device, and every profile models one pipeline stage."""
    if pp > 1 and name not in ("ideal", "vllm"):
        return (f"--pp {pp}: kvplan's {name} profile models one pipeline stage; drop {name} from --engines "
                "or use --pp 1")
    if tp <= 1 or name not in ("hf", "llama.cpp"):
        return None
    why = "llama.cpp splits layers, not heads" if name == "llama.cpp" else "transformers tp_plan sharding is not modelled"
    return f"--tp {tp}: kvplan's {name} profile is for one device ({why}); drop {name} from --engines or use --tp 1"
