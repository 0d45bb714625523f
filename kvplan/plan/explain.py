"""A vLLM start-up log beside kvplan's prediction: its budget term by term, its pool, and each difference.

`explain(log, spec, ...)` takes a parsed log (`kvplan.sources.vllm_log.VllmLog`) and the model
kvplan sizes for it, runs kvplan's vLLM plan for the same settings (the log's max_model_len,
tensor / pipeline sizes, KV dtype, block size, utilisation and device total), and returns an
`Explanation`: one `Term` per budget term (total, usable, weights, activation peak, non-torch,
CUDA graphs, KV budget) and per pool figure (blocks, KV cache tokens, maximum concurrency).
The pool is computed twice: on kvplan's own budget, and on the budget vLLM logged, which
separates a difference in the budget from a difference in the paging rules.

`calibration(log, where)` gives the measured terms `--save-calibration` writes and
`estimate --calibration` reads back (`kvplan.plan.calibration.read_log_calibration`).
Pure: reads only GPU files through the pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from kvplan.errors import InputError

GIB = 2**30
# vLLM prints GiB to two decimals (format_gib: round(b / GiB, 2); "%.2f" before): a figure is
# within half a hundredth of a GiB of the bytes behind it.
HALF_CENTI_GIB = GIB // 200
# what `--save-calibration` writes, and how `estimate --calibration` tells it from a measure report
CALIBRATION_KIND = "kvplan vllm-log calibration"
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


def gib_bytes(gib: Optional[float]) -> Optional[int]:
    """A two-decimal GiB figure as bytes (the figure's own value; the bytes behind it lie within +-GiB/200)."""
    return None if gib is None else round(gib * GIB)


@dataclass(frozen=True, slots=True)
class Term:
    """One line of the reconstruction: what vLLM logged, what kvplan predicts, and why they differ."""

    term: str
    logged: Optional[float] = None  # bytes for a memory term, a count or a ratio otherwise (None: not logged)
    kvplan: Optional[float] = None
    unit: str = "bytes"  # "bytes", "blocks", "tokens", "x" (concurrency) or "share"
    note: str = ""

    @property
    def difference(self) -> Optional[float]:
        if self.logged is None or self.kvplan is None:
            return None
        return self.kvplan - self.logged

    def to_dict(self) -> dict:
        return {**asdict(self), "difference": self.difference}


@dataclass(frozen=True, slots=True)
class Explanation:
    """The log's settings, its budget and pool beside kvplan's, and what kvplan could not predict."""

    model: Optional[str]  # the spec kvplan sized (None: no MODEL resolved)
    settings: dict  # max_model_len, tp, pp, kv_cache_dtype, block_size, gpu_memory_utilization, device, ...
    terms: tuple[Term, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"model": self.model, "settings": self.settings, "terms": [t.to_dict() for t in self.terms],
                "notes": list(self.notes)}


def logged_terms(log) -> dict:
    """The budget terms the log gives, in bytes, with how each was read: {name: (bytes, how)}.

    0.6.0-0.6.4 print the torch peak with the weights in it (activation = peak - weights, vllm
    worker.py determine_num_available_blocks); 0.2x prints weights + non-torch as one "consumed"
    figure (non-torch = consumed - weights); elsewhere each term is printed alone.
    """
    out: dict = {}
    if log.total_memory_gib is not None:
        out["total"] = (gib_bytes(log.total_memory_gib), "logged")
    if log.requested_gib is not None:
        out["usable"] = (gib_bytes(log.requested_gib), "logged")
    elif log.total_memory_gib is not None and log.gpu_memory_utilization is not None:
        out["usable"] = (round(log.total_memory_gib * log.gpu_memory_utilization * GIB), "total x utilisation")
    if log.weights_gib is not None:
        out["weights"] = (gib_bytes(log.weights_gib), "logged")
    if log.activation_gib is not None:
        out["activation"] = (gib_bytes(log.activation_gib), "logged")
    elif log.peak_torch_gib is not None and log.weights_gib is not None:
        out["activation"] = (gib_bytes(log.peak_torch_gib) - gib_bytes(log.weights_gib),
                             "torch peak - weights (0.6.x logs the peak with the weights in it)")
    if log.non_torch_gib is not None:
        out["non_torch"] = (gib_bytes(log.non_torch_gib), "logged")
    elif log.consumed_gib is not None and log.weights_gib is not None:
        out["non_torch"] = (gib_bytes(log.consumed_gib) - gib_bytes(log.weights_gib),
                            "consumed (weights + non-torch) - weights")
    if log.cuda_graph_gib is not None:
        out["cuda_graphs"] = (gib_bytes(log.cuda_graph_gib), "logged")
    if log.available_kv_gib is not None:
        out["kv_budget"] = (gib_bytes(log.available_kv_gib), "logged")
    return out


def log_settings(log, *, context: Optional[int] = None, kv_cache_dtype: Optional[str] = None,
                 block_size: Optional[int] = None, gpu_memory_utilization: Optional[float] = None) -> dict:
    """The deployment the log describes (a flag given to explain overrides the log's value)."""
    max_model_len = context or log.max_model_len or log.concurrency_tokens
    return {
        "max_model_len": max_model_len,
        "tensor_parallel_size": log.tensor_parallel_size or 1,
        "pipeline_parallel_size": log.pipeline_parallel_size or 1,
        "kv_cache_dtype": kv_cache_dtype or log.kv_cache_dtype or "auto",
        "block_size": block_size or log.block_size,
        "gpu_memory_utilization": gpu_memory_utilization or log.gpu_memory_utilization,
        "max_num_batched_tokens": log.max_num_batched_tokens,
        "enable_prefix_caching": log.enable_prefix_caching,
        "dtype": log.dtype,
        "device": log.device,
        "vllm_version": log.version,
    }


def log_rules(settings: dict):
    """The vLLM rules of the log's release and platform (`VllmRules`): 0.10's for a release before 0.11 (the
    rules kvplan transcribed around 0.10), else 0.32's; the log's device and its prefix-caching switch."""
    from kvplan.engines.vllm_rules import VLLM_DEVICES, VllmRules

    version = "0.32"
    named = settings.get("vllm_version") or ""
    parts = named.split(".")
    if len(parts) >= 2 and parts[0] == "0" and parts[1].isdigit() and int(parts[1]) <= 10:
        version = "0.10"
    device = settings.get("device") or "cuda"
    if version == "0.10" or device not in VLLM_DEVICES:
        return VllmRules(version=version)
    return VllmRules(version=version, device=device, enable_prefix_caching=settings.get("enable_prefix_caching"))


def _pool(spec, settings: dict, budget: int, state_dtype: Optional[str]):
    """vLLM's pool as kvplan builds it for `settings` on a KV budget of `budget` bytes per rank (every stage)."""
    from kvplan.engines.vllm_rules import DEFAULT_MAX_NUM_BATCHED_TOKENS, Pool, default_block_size, paged_layout
    from kvplan.plan.pipeline import Settings, formats, has_state_layers

    s = Settings(kv_cache_dtype=settings["kv_cache_dtype"], state_dtype=state_dtype)
    pair, state = formats(spec, s)
    if has_state_layers(spec):
        from kvplan.engines.vllm_rules import state_formats

        state = state_formats(spec, state)
    block = settings["block_size"] or default_block_size(spec)
    layout = paged_layout(spec, pair, state, block, settings["tensor_parallel_size"],
                          settings["pipeline_parallel_size"], True)
    pool = Pool(layout, [budget] * settings["pipeline_parallel_size"], vllm=True,
                max_num_batched_tokens=settings["max_num_batched_tokens"] or DEFAULT_MAX_NUM_BATCHED_TOKENS,
                rules=log_rules(settings))
    context = settings["max_model_len"]
    return pool.report(context, pool.max_sequences(context)), layout.block_size


def explain(log, spec=None, *, gpu: Optional[str] = None, gpu_memory=None, context: Optional[int] = None,
            kv_cache_dtype: Optional[str] = None, block_size: Optional[int] = None,
            gpu_memory_utilization: Optional[float] = None, state_dtype: Optional[str] = None) -> Explanation:
    """The log's budget and pool beside kvplan's for the same model and settings (see the module docstring)."""
    settings = log_settings(log, context=context, kv_cache_dtype=kv_cache_dtype, block_size=block_size,
                            gpu_memory_utilization=gpu_memory_utilization)
    if state_dtype is None and log.ssm_cache_dtype and spec is not None and _has_state(spec):
        # the log says vLLM reset the SSM state's dtype (the CPU platform: float32); the conv state keeps the model's
        conv = _DTYPES.get(log.dtype or "", spec.dtype)
        state_dtype = f"{conv}/{_DTYPES.get(log.ssm_cache_dtype, log.ssm_cache_dtype)}"
        settings["state_dtype"] = state_dtype
    logged = logged_terms(log)
    notes: list[str] = []

    def got(name: str) -> Optional[int]:
        return logged[name][0] if name in logged else None

    def how(name: str) -> str:
        return "" if name not in logged or logged[name][1] == "logged" else logged[name][1]

    predicted: dict = {}
    report = on_logged = None
    attention_block = None
    if spec is None:
        notes.append("no prediction: pass MODEL (a catalog name, spec, config.json or folder) when kvplan cannot "
                     "resolve the log's model=")
    elif not settings["max_model_len"]:
        notes.append("no prediction: the log gives no max_model_len (no engine config or concurrency line); "
                     "pass --context")
    else:
        predicted, report, attention_block = _predict(spec, log, settings, gpu, gpu_memory, state_dtype, notes)
        if got("kv_budget") is not None:
            on_logged, _ = _pool(spec, settings, got("kv_budget"), state_dtype)
    terms = [
        Term("total memory", got("total"), predicted.get("total"),
             note=predicted.get("total_note", "") if "total" in predicted else ""),
        Term("gpu_memory_utilization", log.gpu_memory_utilization, predicted.get("gpu_memory_utilization"), "share"),
        Term("usable (total x utilisation)", got("usable"), predicted.get("usable"), note=how("usable")),
        Term("weights", got("weights"), predicted.get("weights"), note=how("weights") or predicted.get("weights_note", "")),
        Term("activation peak", got("activation"), predicted.get("activation"),
             note=how("activation") or predicted.get("activation_note", "")),
        Term("non-torch", got("non_torch"), predicted.get("non_torch"),
             note=how("non_torch") or predicted.get("non_torch_note", "")),
        Term("CUDA graphs", got("cuda_graphs"), None,
             note="captured after the KV cache is sized: not in this budget (kvplan does not model it)"
             if got("cuda_graphs") is not None else ""),
        Term("KV budget", got("kv_budget"), predicted.get("kv_budget"), note=_closure(logged)),
    ]
    block_note = f"{attention_block}-token attention blocks" if attention_block else ""
    if report is not None or on_logged is not None or any(v is not None for v in (log.num_blocks, log.kv_cache_tokens,
                                                                                 log.max_concurrency)):
        pair = (report, on_logged)
        terms += [
            Term("blocks", log.num_blocks, _get(pair, "num_blocks"), "blocks",
                 note=_on_logged(on_logged, "num_blocks", block_note)),
            Term("KV cache tokens", log.kv_cache_tokens, _get(pair, "kv_cache_tokens"), "tokens",
                 note=_on_logged(on_logged, "kv_cache_tokens", "")),
            Term("maximum concurrency", log.max_concurrency, _get(pair, "max_concurrency"), "x",
                 note=_on_logged(on_logged, "max_concurrency", "")),
        ]
    if log.refusal:
        notes.append(f"vLLM refused to start: {log.refusal}")
    rules = log_rules(settings)
    notes.append(f"kvplan's pool follows vLLM {rules.version}'s rules" + (
        f" on its {rules.device.upper()} platform" if rules.version != "0.10" else " (the log's release is older)"))
    if log.device == "cpu" and spec is not None:
        notes.append("vLLM's CPU backend sets the KV budget itself (VLLM_CPU_KVCACHE_SPACE or "
                     "--kv-cache-memory-bytes); kvplan's pool is shown on that budget" + (
                         ". On CPUs with AVX512-BF16 it keeps SSM state in float32 (platforms/cpu.py; the log's "
                         "'Reset SSM cache type' line, which kvplan follows)" if _has_state(spec) else ""))
    tokens = next((t for t in terms if t.term == "KV cache tokens"), None)
    length = settings["max_model_len"]
    if (tokens is not None and tokens.difference and log.max_concurrency is not None and length
            and log.kv_cache_tokens is not None
            and abs(log.kv_cache_tokens - log.max_concurrency * length) <= 0.005 * length):
        # vllm 0.32 v1/core/kv_cache_utils.py get_kv_cache_capacity: int(max_concurrency * max_model_len)
        notes.append(f"this vLLM logs \"KV cache size\" as max concurrency x max_model_len ({log.max_concurrency:.2f} x "
                     f"{length:,}; vllm 0.32 kv_cache_utils.get_kv_cache_capacity), not as blocks x block size, the "
                     "rule of the releases kvplan's figure follows (<= 0.10)")
    return Explanation(None if spec is None else spec.name, settings, tuple(terms), tuple(notes))


def _has_state(spec) -> bool:
    from kvplan.plan.pipeline import has_state_layers

    return has_state_layers(spec)


def _get(pair, name: str):
    """kvplan's own pool figure (on its budget), else the one on vLLM's logged budget."""
    own, on_logged = pair
    if own is not None:
        return getattr(own, name)
    return None if on_logged is None else getattr(on_logged, name)


def _on_logged(report, name: str, extra: str) -> str:
    if report is None:
        return extra
    value = getattr(report, name)
    shown = f"{value:,}" if isinstance(value, int) else f"{value:.2f}x"
    text = f"{shown} on vLLM's logged budget (a two-decimal GiB figure)"
    return f"{text}; {extra}" if extra else text


def _closure(logged: dict) -> str:
    """Whether the logged terms add up to the logged KV budget: usable - weights - activation - non-torch."""
    names = ("usable", "weights", "activation", "non_torch", "kv_budget")
    if not all(n in logged for n in names):
        return ""
    usable, weights, activation, non_torch, kv = (logged[n][0] for n in names)
    gap = usable - weights - activation - non_torch - kv
    slack = HALF_CENTI_GIB * 5  # five two-decimal figures, each within GiB/200
    if abs(gap) <= slack:
        return "vLLM's terms add up to it (within the two-decimal rounding)"
    return f"vLLM's terms leave {gap / GIB:+.2f} GiB unexplained (a term this log does not print)"


def _predict(spec, log, settings: dict, gpu, gpu_memory, state_dtype, notes: list):
    """kvplan's budget terms and pool for the log's settings on the log's device (or --gpu / --gpu-memory)."""
    from kvplan.plan.pipeline import Settings, run

    if log.device == "cpu" and gpu is None and gpu_memory is None:
        return {}, None, None
    total = gib_bytes(log.total_memory_gib)
    if gpu is None and gpu_memory is None:
        if total is None:
            notes.append("no budget prediction: the log gives no device total; pass --gpu or --gpu-memory")
            return {}, None, None
        gpu_memory = total
        total_note = "the log's total (kvplan budgets from it as vLLM does: torch's figure, not NVML's)"
    else:
        total_note = f"--gpu {gpu}" if gpu_memory is None else "--gpu-memory"
    dtype = _DTYPES.get(settings["dtype"] or "")
    weights_dtype = dtype if dtype and dtype != spec.dtype else None
    from kvplan.engines.vllm_rules import gpu_memory_utilization, usable_bytes

    # the log's (or --gpu-memory-utilization's) share, else the default of the log's vLLM release (0.9 before 0.11)
    util = gpu_memory_utilization(settings["gpu_memory_utilization"], log_rules(settings))
    s = Settings(context=settings["max_model_len"], batch=1, kv_cache_dtype=settings["kv_cache_dtype"],
                 state_dtype=state_dtype, tp=settings["tensor_parallel_size"], pp=settings["pipeline_parallel_size"],
                 gpu=gpu, gpu_memory=gpu_memory, gpu_bandwidth=1.0 if gpu is None else None, dtype=weights_dtype,
                 block_size=settings["block_size"], gpu_memory_utilization=util,
                 max_num_batched_tokens=settings["max_num_batched_tokens"], roofline=False)
    answer = run(spec, "vllm", s, engine_rows=False)
    mem, cap = answer.memory, answer.capacity
    weights = cap.weights_bytes
    predicted = {
        "total": mem.gpu_memory_bytes, "total_note": total_note, "gpu_memory_utilization": util,
        "usable": usable_bytes(mem.gpu_memory_bytes, util),
        "weights": weights, "weights_note": f"kvplan: {mem.weights_source}" if mem.weights_source else "",
        "activation": mem.activation_bytes, "activation_note": f"kvplan: {mem.activation_source or 'estimated'}",
        "non_torch": mem.non_torch_bytes, "non_torch_note": "kvplan's default (512 MiB; 1 GiB with tp/pp > 1)",
        "kv_budget": cap.kv_budget_bytes,
    }
    report, block = _pool(spec, settings, cap.kv_budget_bytes, state_dtype)
    return predicted, report, block


def calibration(log, where: str) -> dict:
    """The measured terms `--save-calibration` writes (bytes from the log's two-decimal GiB figures)."""
    logged = logged_terms(log)
    missing = [name for name in ("activation", "non_torch") if name not in logged]
    if missing:
        words = {"activation": "the activation peak", "non_torch": "non-torch memory"}
        raise InputError(
            f"{where}: the log does not give {' or '.join(words[m] for m in missing)}, so there is no calibration to "
            "save (vLLM prints them from 0.6 to 0.10 at INFO, and from ~0.11 in its 'Free memory on device' line)"
        )
    from kvplan.schema import stamped

    def value(name: str) -> Optional[int]:
        return logged[name][0] if name in logged else None

    return stamped({
        "kind": CALIBRATION_KIND,
        "log": where,
        "vllm_version": log.version,
        "device": log.device,
        "model": log.model,
        "gpu_memory_bytes": value("total"),
        "gpu_memory_utilization": log.gpu_memory_utilization,
        "weights_bytes": value("weights"),
        "activation_bytes": value("activation"),
        "non_torch_bytes": value("non_torch"),
        "cuda_graph_bytes": value("cuda_graphs"),
        "kv_budget_bytes": value("kv_budget"),
        "note": "bytes read from vLLM's two-decimal GiB figures (each within GiB/200 of the bytes behind it)",
    })
