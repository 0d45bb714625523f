"""The data of `--plot`'s charts: pure functions from the pipeline's answers to labelled series.

Three kinds of chart, each a `Chart` (its series or bars, its axis labels, its title):

- `memory`: the memory map of one GPU (one rank of one pipeline stage) per deployment: weights,
  KV in use (what `--batch` x `--context` reserves), KV free (the rest of the engine's KV budget),
  activations, non-torch memory, reserved (what the engine leaves unused: 1 - gpu_memory_utilization
  for vLLM, 1 - mem_fraction_static for SGLang, ...) and, where the KV does not fit, the overflow;
- `concurrency`: max concurrent sequences against context, one series per engine / KV dtype / GPU /
  tp, each point the engine's own capacity at that context (`sweep`), so a sliding-window or hybrid
  model's curve bends where its windows fill;
- `kv`: KV bytes of one sequence against context, one series per engine / KV dtype / tp, and for a
  model whose layers do not all hold every token (sliding, chunked, state, shared), a dense reference:
  every layer a full-attention layer.

`kvplan search --plot` draws a fourth kind, `front`, twice: cost per million tokens against TPOT and against
TTFT p99, every feasible candidate a faint point (the screen's figures), the Pareto front's rows a line with
each row labelled (GPU x count, tp, KV dtype, --max-num-seqs: estimate's figures), and the dimensions' values
that no candidate of meets the targets named, with why, beside them (`search_charts`).

Series are labelled by what varies between them; what all share is in the title. No I/O, no
plotting library: `kvplan.cli.plot` draws these.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

MAX_BARS = 24  # a memory map with more rows than this is unreadable on one page; the CLI refuses past it

# Settings that only a GPU reads: cleared for the KV chart, which sizes the cache alone
_GPU_FIELDS = dict(gpu=None, gpu_memory=None, gpu_bandwidth=None, usd_per_hour=None, gpu_bf16_tflops=None,
                   gpu_label=None, weights_bytes=None, gpu_memory_utilization=None, activation_memory=None,
                   non_torch_memory=None, bandwidth_efficiency=None, compute_efficiency=None, calibration=None,
                   requests_per_s=None, output_tokens=None, concurrency_curve=False)


class Series(NamedTuple):
    label: str
    x: tuple[int, ...]  # context, tokens
    y: tuple[Optional[int], ...]  # sequences or bytes; None where the engine refuses that context
    reference: bool = False  # a reference line (drawn dashed), not an engine's answer


class MemoryBar(NamedTuple):
    label: str
    gpu_memory_bytes: int
    segments: tuple[tuple[str, int], ...]  # (MEMORY_SEGMENTS name, bytes), in that order


class Chart(NamedTuple):
    kind: str  # "memory", "concurrency" or "kv"
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...] = ()
    bars: tuple[MemoryBar, ...] = ()
    marks: tuple[tuple[int, str], ...] = ()  # (context, label): the contexts asked, drawn as vertical lines
    # front: every feasible candidate (x, $/1M tokens), the front's rows (x, $/1M tokens, label), the rejected values
    cloud: tuple[tuple[float, float], ...] = ()
    front: tuple[tuple[float, float, str], ...] = ()
    notes: tuple[str, ...] = ()


MEMORY_SEGMENTS = ("weights", "KV in use", "KV free", "activations", "non-torch", "reserved", "over")
CHART_KINDS = ("memory", "concurrency", "kv")


# ------------------------------------------------------------------ the memory map


def memory_segments(r: dict, stage: dict) -> list[tuple[str, int]]:
    """Bytes of each memory-map segment for one rank of one stage of a plan (`Plan.to_dict()`)."""
    total = r["gpu_memory_bytes"]
    budget = stage["kv_budget_bytes"]
    used = min(stage["kv_bytes_at_batch"], max(budget, 0))
    over = max(0, stage["kv_bytes_at_batch"] - max(budget, 0)) + max(0, -budget)
    reserved = max(0, total - r["usable_bytes_per_gpu"])
    return [
        ("weights", stage["weights_bytes"]),
        ("KV in use", used),
        ("KV free", max(0, budget - used)),
        ("activations", r["activation_bytes_per_gpu"]),
        ("non-torch", r["non_torch_bytes_per_gpu"]),
        ("reserved", reserved),
        ("over", over),
    ]


def profile_segments(cache, capacity, memory, ranks: int) -> list[tuple[str, int]]:
    """The same segments for an engine profile (hf, llama.cpp, sglang, trtllm): its `EngineCapacity` and the
    `MemoryInputs` it read. KV in use per rank is the engine's total over its ranks, rounded up (the
    profiles split KV heads evenly); reserved is what the engine's budget rule leaves out of the GPU."""
    total, budget = capacity.gpu_memory_bytes, capacity.kv_budget_bytes
    need = -(-(cache.kv_bytes_total or 0) // ranks)
    used = min(need, max(budget, 0))
    over = max(0, need - max(budget, 0)) + max(0, -budget)
    held = capacity.weights_bytes + max(budget, 0) + memory.activation_bytes + memory.non_torch_bytes
    return [
        ("weights", capacity.weights_bytes),
        ("KV in use", used),
        ("KV free", max(0, budget - used)),
        ("activations", memory.activation_bytes),
        ("non-torch", memory.non_torch_bytes),
        ("reserved", max(0, total - held)),
        ("over", over),
    ]


def answer_bars(answer, label: str, tp: int) -> list[MemoryBar]:
    """One bar per pipeline stage of one answer with a GPU (`kvplan.plan.pipeline.Answer`)."""
    if answer.plan is not None:
        r = answer.plan.to_dict()
        stages = r["stages"]
        return [MemoryBar(label if len(stages) == 1 else f"{label} · stage {i}".lstrip(" ·"), r["gpu_memory_bytes"],
                          tuple(memory_segments(r, st)))
                for i, st in enumerate(stages)]
    cap = answer.capacity
    return [MemoryBar(label, cap.gpu_memory_bytes, tuple(profile_segments(answer.cache, cap, answer.memory, tp)))]


def memory_chart(bars: Sequence[MemoryBar], title: str) -> Chart:
    return Chart("memory", title, "GiB per GPU", "", bars=tuple(bars))


# ------------------------------------------------------------------ labels


def label_of(parts: Sequence[tuple[str, str]], varying: set[str], fallback: str) -> str:
    """`parts` (dimension, text) joined with ' · ', only the dimensions in `varying`; `fallback` if none."""
    shown = [text for dim, text in parts if dim in varying]
    return " · ".join(shown) or fallback


def varying_dims(values: dict[str, Sequence]) -> set[str]:
    return {dim for dim, vs in values.items() if len(set(vs)) > 1}


def shared_text(parts: Sequence[tuple[str, str]], varying: set[str]) -> str:
    return " · ".join(text for dim, text in parts if dim not in varying)


# ------------------------------------------------------------------ the context axis


def context_points(spec, contexts: Sequence[int] = ()) -> list[int]:
    """The contexts a curve is drawn at: 1k, 1.5k, 2k, 3k, 4k, ... (each power of two and the midpoint above it)
    up to the model's limit, every context asked, and each sliding window or chunk (where a curve bends)."""
    from kvplan.engines.vllm_rules import context_limit

    limit, _ = context_limit(spec)
    grid = {2**k for k in range(10, 25)} | {3 * 2**k for k in range(9, 24)}
    points = {p for p in grid if p <= limit} | set(contexts) | {w for w, _ in windows(spec) if w <= limit}
    return sorted(p for p in points if p >= 1)


def windows(spec) -> list[tuple[int, str]]:
    """(tokens, 'sliding window 4,096' / 'chunk 8,192') of each windowed layer kind: where a curve bends."""
    from kvplan.model.formats import parse_format_pair
    from kvplan.model.kinds import LayerKind
    from kvplan.model.layout import CacheLayout

    layout = CacheLayout(spec, parse_format_pair("auto", spec.dtype))
    names = {LayerKind.SLIDING: "sliding window", LayerKind.CHUNKED: "chunk"}
    found = {(g.window, f"{names[g.kind]} {g.window:,}") for g in layout.groups if g.window and g.kind in names}
    return sorted(found)


def curve_marks(spec, contexts: Sequence[int]) -> tuple[tuple[int, str], ...]:
    """The vertical lines of a curve: each context asked and each window the model's layers have."""
    from kvplan.engines.vllm_rules import context_limit

    reach = max([context_limit(spec)[0], *contexts])  # the curve's last point
    marks = [(c, f"--context {c:,}") for c in sorted(set(contexts))]
    return tuple(marks + [(w, text) for w, text in windows(spec) if w <= reach])


def dense_reference(spec, kv_cache_dtype: str, points: Sequence[int]) -> Optional[Series]:
    """KV bytes of one sequence if every layer were a full-attention layer holding every token (the model's
    own full-attention, or else windowed, layer geometry, in the same KV format); None when every layer
    already holds every token, or no layer holds KV per token (a pure state model)."""
    from kvplan.model.kinds import LayerKind
    from kvplan.plan.pipeline import Settings, formats

    pair, _ = formats(spec, Settings(kv_cache_dtype=kv_cache_dtype))
    from kvplan.model.layout import CacheLayout

    groups = CacheLayout(spec, pair).groups
    every_token = (LayerKind.FULL, LayerKind.MLA)
    if all(g.kind in every_token for g in groups):
        return None
    per_layer = [g.bytes_per_token_per_layer for g in groups if g.kind in every_token]
    per_layer = per_layer or [g.bytes_per_token_per_layer for g in groups
                              if g.kind in (LayerKind.SLIDING, LayerKind.CHUNKED)]
    if not per_layer or not per_layer[0]:
        return None
    layers = sum(g.num_layers for g in groups if g.kind is not LayerKind.MLP)  # an MLP-only block holds nothing either way
    label = f"dense reference: {layers:,} layers of full attention ({per_layer[0]:,} B / token / layer)"
    return Series(label, tuple(points), tuple(layers * per_layer[0] * c for c in points), reference=True)


# ------------------------------------------------------------------ estimate's and compare's charts


def dtype_text(spec, kv_cache_dtype: str) -> str:
    """'KV bf16' for --kv-cache-dtype auto on a bf16 model: the format it resolves to, as the tables name it."""
    if kv_cache_dtype != "auto":
        return f"KV {kv_cache_dtype}"
    from kvplan.plan.pipeline import Settings, formats

    return f"KV {formats(spec, Settings(kv_cache_dtype='auto'))[0].name}"


def kv_series(spec, engine: str, settings, points: Sequence[int], label: str) -> Series:
    """KV bytes of one sequence at each context of `points`, as ENGINE allocates them (all ranks, paged)."""
    from kvplan.plan.pipeline import sweep

    s = settings._replace(batch=1, **_GPU_FIELDS)
    ys = []
    for a in sweep(spec, engine, s, points, [1]):
        ys.append(a.estimate.kv_bytes_total if a.estimate is not None else a.cache.kv_bytes_total)
    return Series(label, tuple(points), tuple(ys))


def concurrency_series(spec, engine: str, settings, points: Sequence[int], label: str) -> Series:
    """ENGINE's max concurrent sequences of each context of `points` on the settings' GPU (its own capacity)."""
    from kvplan.plan.pipeline import sweep

    s = settings._replace(batch=1, roofline=False, concurrency_curve=False, requests_per_s=None)
    ys = []
    for a in sweep(spec, engine, s, points, [1]):
        refused = a.cache is not None and a.cache.kv_bytes_total is None
        ys.append(None if refused else a.capacity.max_concurrent_sequences)
    return Series(label, tuple(points), tuple(ys))


def _kv_chart(spec, series: list[Series], kv_dtype: str, points: Sequence[int], subtitle: str,
              marks: Sequence[int]) -> Chart:
    reference = dense_reference(spec, kv_dtype, points)
    if reference is not None:
        series = series + [reference]
    return Chart("kv", f"KV cache of one sequence vs context · {subtitle}", "context, tokens",
                 "KV bytes per sequence, all ranks", tuple(series), marks=curve_marks(spec, marks))


def estimate_charts(spec, engine: str, base, answers: Sequence, *, dtypes: Sequence[str], tps: Sequence[int],
                    gpus: Sequence[Optional[str]], contexts: Sequence[int], batches: Sequence[int]) -> list[Chart]:
    """`kvplan estimate --plot`: the KV chart always; with a GPU, the memory map of every deployment in
    `answers` (the estimate's own sweep, in its order) and the concurrency chart per GPU x KV dtype x tp."""
    points = context_points(spec, contexts)
    has_gpu = any(a.capacity is not None for a in answers)
    varying = varying_dims({"dtype": dtypes, "tp": tps, "gpu": gpus, "context": contexts, "batch": batches})
    charts = []
    kv = []
    for d in dtypes:
        for t in tps:
            parts = [("dtype", dtype_text(spec, d)), ("tp", f"tp {t}")]
            kv.append(kv_series(spec, engine, base._replace(kv_cache_dtype=d, tp=t), points,
                                label_of(parts, varying, engine)))
    kv_shared = [("model", spec.name), ("engine", engine)] + ([("dtype", dtype_text(spec, dtypes[0]))] if len(dtypes) == 1 else [])
    kv_shared += [("tp", f"tp {tps[0]}")] if len(tps) == 1 else []
    pp = [("pp", f"pp {base.pp}")] if base.pp > 1 else []  # one value: in every title
    kv_shared += pp
    if has_gpu:
        gpu_label: dict = {}  # each --gpu as its answers name it (with any override)
        bars = []
        for a, (g, d, t, c, b) in zip(answers, _estimate_order(engine, gpus, dtypes, tps, contexts, batches)):
            gpu_label[g] = a.capacity.gpu
            parts = [("gpu", a.capacity.gpu), ("dtype", dtype_text(spec, d)), ("tp", f"tp {t}"),
                     ("context", f"{c:,} tokens"), ("batch", f"batch {b:,}")]
            bars += answer_bars(a, label_of(parts, varying, f"batch {b:,} × {c:,} tokens"), t)
        shared = [("model", spec.name), ("engine", engine)] + [
            (dim, text) for dim, text in (("gpu", answers[0].capacity.gpu), ("dtype", dtype_text(spec, dtypes[0])),
                                          ("tp", f"tp {tps[0]}"), ("context", f"context {contexts[0]:,}"),
                                          ("batch", f"batch {batches[0]:,}")) if dim not in varying] + pp
        charts.append(memory_chart(bars, "Memory per GPU · " + " · ".join(text for _, text in shared)))
        conc = []
        cv = varying & {"gpu", "dtype", "tp"}
        for g in gpus:
            for d in dtypes:
                for t in tps:
                    parts = [("gpu", gpu_label.get(g, g or "")), ("dtype", dtype_text(spec, d)), ("tp", f"tp {t}")]
                    conc.append(concurrency_series(spec, engine, base._replace(gpu=g, kv_cache_dtype=d, tp=t), points,
                                                   label_of(parts, cv, engine)))
        cshared = [("model", spec.name), ("engine", engine)] + [
            (dim, text) for dim, text in (("gpu", answers[0].capacity.gpu), ("dtype", dtype_text(spec, dtypes[0])),
                                          ("tp", f"tp {tps[0]}")) if dim not in cv] + pp
        charts.append(Chart("concurrency", "Max concurrent sequences vs context · " + " · ".join(t for _, t in cshared),
                            "context, tokens", "max concurrent sequences", tuple(conc),
                            marks=curve_marks(spec, contexts)))
    charts.append(_kv_chart(spec, kv, dtypes[0], points, " · ".join(t for _, t in kv_shared), contexts))
    return charts


def _estimate_order(engine: str, gpus, dtypes, tps, contexts, batches):
    """(gpu, dtype, tp, context, batch) in the order `kvplan estimate` sweeps with a GPU: the profiles
    each dtype, tp, GPU; ideal and vllm each GPU, dtype, tp; then each context, each batch."""
    from kvplan.options import PROFILES

    if engine in PROFILES:
        outer = [(g, d, t) for d in dtypes for t in tps for g in gpus]
    else:
        outer = [(g, d, t) for g in gpus for d in dtypes for t in tps]
    return [(g, d, t, c, b) for g, d, t in outer for c in contexts for b in batches]


def compare_charts(spec, settings, engines: Sequence[str]) -> list[Chart]:
    """`kvplan compare --plot`: one series (and, with a GPU, one memory bar) per engine, at the settings' KV
    dtype, tp and GPU; the KV chart always."""
    from kvplan.plan.pipeline import run

    points = context_points(spec, [settings.context])
    subtitle = f"{spec.name} · {dtype_text(spec, settings.kv_cache_dtype)} · tp {settings.tp}" + (
        f" · pp {settings.pp}" if settings.pp > 1 else "")
    charts = []
    if settings.has_gpu:
        answers = [run(spec, e, settings) for e in engines]
        gpu = answers[0].capacity.gpu
        bars = [bar for e, a in zip(engines, answers) for bar in answer_bars(a, e, settings.tp * settings.pp)]
        charts.append(memory_chart(bars, f"Memory per GPU · {subtitle} · {gpu} · batch {settings.batch:,} × "
                                         f"{settings.context:,} tokens"))
        conc = [concurrency_series(spec, e, settings, points, e) for e in engines]
        charts.append(Chart("concurrency", f"Max concurrent sequences vs context · {subtitle} · {gpu}",
                            "context, tokens", "max concurrent sequences", tuple(conc),
                            marks=curve_marks(spec, [settings.context])))
    kv = [kv_series(spec, e, settings, points, e) for e in engines]
    charts.append(_kv_chart(spec, kv, settings.kv_cache_dtype, points, subtitle, [settings.context]))
    return charts


# ------------------------------------------------------------------ search's cost / latency front

FRONT_AXES = (("tpot_s", "TPOT, ms (a decode step at the row's batch)"),
              ("ttft_s", "TTFT p99, ms (the queue's p99 wait + the p99 prompt's prefill)"))
MAX_CLOUD_POINTS = 4000  # more faint points than this add nothing a reader sees (and megabytes to an SVG)


def front_label(row) -> str:
    """A front row as the chart names it: GPU x count, tp (x pp), KV dtype, --max-num-seqs."""
    pp = f"×{row.pipeline_parallel_size}" if row.pipeline_parallel_size > 1 else ""
    return (f"{row.gpu} × {row.gpus:,}, tp {row.tensor_parallel_size}{pp}, KV {row.kv_cache_dtype}, "
            f"{row.max_num_seqs:,} seqs")


def rejected_notes(result) -> tuple[str, ...]:
    """'tp 1: none: why' for each value of a dimension that no candidate of meets the targets."""
    prefix = {"gpu": "", "tp": "tp ", "pp": "pp ", "kv_cache_dtype": "KV "}
    return tuple(f"{prefix[f.dimension]}{f.value}: {f.reason}" for f in result.families if not f.feasible)


def search_charts(result, cloud: Sequence[tuple[float, float, float]]) -> list[Chart]:
    """Two `front` charts of a `SearchResult`: $/1M tokens against TPOT and against TTFT p99 (ms). `cloud`:
    (usd_per_million_tokens, tpot_s, ttft_s) of every feasible candidate, thinned evenly to MAX_CLOUD_POINTS."""
    step = max(1, -(-len(cloud) // MAX_CLOUD_POINTS))
    kept = list(cloud)[::step]
    w, t = result.workload, result.targets
    aims = ", ".join(f"{k} ≤ {v * 1000:g} ms" for k, v in (("TTFT", t["ttft_s"]), ("TPOT", t["tpot_s"]))
                     if v is not None)
    drawn = f"{len(kept):,} of them drawn" if step > 1 else "each drawn"
    charts = []
    for i, (field, x_label) in enumerate(FRONT_AXES):
        front = tuple((getattr(r, field) * 1000, r.usd_per_million_tokens, front_label(r)) for r in result.rows)
        title = (f"Cost vs {x_label.split(',')[0]} · {result.model} · {result.engine} · {w['requests_per_s']:g} req/s · "
                 f"{aims} · {result.feasible:,} of {result.candidates:,} candidates feasible ({drawn})")
        charts.append(Chart("front", title, x_label, "$ per 1M tokens (prompt + output)",
                            cloud=tuple((c[1 + i] * 1000, c[0]) for c in kept), front=front,
                            notes=rejected_notes(result)))
    return charts
