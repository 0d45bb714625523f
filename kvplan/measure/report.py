"""The result of `kvplan measure`: frozen records and the tolerance gate (rendered by kvplan.cli.measure_report).

Pure: no torch, no I/O. `run.measure` fills a `MeasureReport`; the CLI renders it
with `kvplan.cli.measure_report.report_tables` and writes `MeasureReport.to_dict()` as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kvplan.units import fmt_bytes, fmt_int

# Why a device-level reading differs from the cache tensors' exact bytes.
ALLOCATOR_NOTE = (
    "torch's CUDA caching allocator rounds every tensor up to a multiple of 512 B, and a tensor keeps a whole "
    "block when the rest would be under 512 B (blocks up to 1 MiB) or 1 MiB or less (larger blocks); it holds "
    "memory from the driver in segments (reserved): blocks up to 1 MiB share 2 MiB segments, 1-10 MiB blocks "
    "come from 20 MiB segments, larger ones are rounded up to 2 MiB, and a free block of a segment already held "
    "is reused first (best fit). kvplan applies these rules (at the allocator's default settings) to the cache "
    "tensors, from the free blocks the allocator held just before, to predict the allocated and reserved "
    "deltas; NVML's 'used' follows the reserved segments and counts every process and the CUDA context (taken "
    "out here: NVML before torch touched the GPU, then after context creation)"
)
RSS_NOTE = (
    "CPU: torch allocates with glibc malloc (no caching allocator) and asks for 64-byte alignment; with the mmap "
    "threshold pinned, a tensor whose aligned request is at least 128 KiB and does not fit the heap's top chunk "
    "gets its own mapping: its chunk + 64 + 32 B of alignment slack + an 8 B header, rounded up to a page. "
    "kvplan predicts malloc in-use, held and RSS from that rule; smaller tensors take a heap chunk (the tensor + "
    "8 B, in 16 B steps), which may reuse freed heap memory, so tiny caches can read low in RSS; torch's tensor "
    "objects add a few hundred bytes of heap each, and Python's own allocator maps and unmaps 256 KiB arenas, so "
    "RSS can move by that much beside the cache"
)


@dataclass(frozen=True, slots=True)
class KindReading:
    """Cache bytes of all layers of one kind: the calculator's, and the tensors' storage."""

    kind: str
    layers: int
    predicted_bytes: int
    measured_bytes: int


@dataclass(frozen=True, slots=True)
class ProbeReading:
    """One hardware probe of the run: its figure, its unit, and how it was taken."""

    name: str  # "read bandwidth", "copy bandwidth", "GEMV, batch 1", "GEMM, 2,048 prompt rows", …
    value: float
    unit: str  # "GB/s" (1e9 B/s) or "TFLOP/s"
    method: str


@dataclass(frozen=True, slots=True)
class RunReading:
    """One (context, batch): the cache, one timed prefill, and the timed decode steps."""

    context: int  # prompt tokens
    decode_steps: int  # timed decode steps; the cache holds context + decode_steps tokens
    total_tokens: int
    batch: int
    # memory, bytes
    predicted_kv_bytes: int  # the calculator at total_tokens x batch
    measured_kv_bytes: int  # the cache tensors' storage
    kv_by_kind: tuple[KindReading, ...]
    allocated_delta_bytes: int | None  # across the cache allocation: torch's CUDA allocator, or glibc malloc in use
    reserved_delta_bytes: int | None  # CUDA: torch reserved; CPU: malloc held (heap + mmapped)
    # the allocator's rules applied to the cache tensors (allocator.py); None where not modelled
    allocator_rounding_bytes: int | None  # allocated - storage: 512 B rounding, unsplit blocks (CUDA); chunk headers, pages (CPU)
    allocator_segment_bytes: int | None  # CUDA: segments cudaMalloc'd; CPU: bytes mmapped
    allocator_segments: int | None  # how many of them
    predicted_allocated_delta_bytes: int | None  # predicted_kv_bytes + allocator_rounding_bytes
    predicted_reserved_delta_bytes: int | None  # CUDA: the new segments; CPU: the chunks (heap or mmapped)
    nvml_used_before_bytes: int | None
    nvml_used_after_bytes: int | None
    nvml_used_delta_bytes: int | None
    rss_delta_bytes: int | None  # process resident set (CPU)
    peak_allocated_bytes: int | None  # torch allocator peak during prefill + decode (CUDA)
    predicted_peak_bytes: int  # weights + cache + the activation margin the refusal uses
    # decode
    weight_bytes_read_per_step: int
    kv_bytes_read_per_step: int
    bytes_read_per_step: int
    decode_flops_per_step: int  # projections + LM head + attention over the cache (predict.decode_flops)
    predicted_decode_memory_s: float  # bytes_read_per_step / read bandwidth
    predicted_decode_compute_s: float  # decode_flops_per_step / GEMV throughput
    decode_bound: str  # "memory" or "compute": the larger of the two times
    predicted_decode_step_s: float  # max(memory, compute) + scan_s_per_token
    gemv_tflops: float  # the GEMV probe at this batch, 1e12 FLOP/s
    measured_decode_step_s: float  # median of the judged rounds' median steps
    decode_step_min_s: float  # over every step of the judged rounds
    decode_step_max_s: float
    decode_mode: str  # "cuda-graph" or "eager" (with the reason a graph was not used)
    # rounds of (one prefill, the decode steps), repeated until the last ones agree (stability.py);
    # measured_decode_step_s and measured_prefill_s are the medians of the judged (last) rounds
    rounds: int
    stable: bool | None  # None: one round only (--max-rounds 1), stability not judged
    decode_round_medians_s: tuple[float, ...]  # every round's median step, in order
    prefill_rounds_s: tuple[float, ...]  # every round's prefill, in order
    decode_spread: float  # (max - min) / median of the judged rounds' medians
    prefill_spread: float
    achieved_gbps: float  # bytes_read_per_step / measured step, 1e9 B/s
    bandwidth_utilisation: float  # achieved / read bandwidth
    # the read bandwidth this run's prediction divides by; on the CPU the median of the probes taken after
    # each judged round's decode steps (probe_rounds of them), else the probe before the runs (probe_rounds 0)
    read_gbps: float
    probe_rounds: int
    # prefill
    prefill_flops: int
    gemm_tflops: float  # the GEMM probe at this run's prompt rows, 1e12 FLOP/s
    # (prefill_flops - prefill_attention_flops) / GEMM throughput + prefill_attention_flops / attention
    # throughput + context x scan_s_per_token
    predicted_prefill_s: float
    measured_prefill_s: float
    # state layers: their scan runs token by token, elementwise (not matmul work): the scan probe's
    # seconds per token for one layer at this batch, times the state layers; 0 without state layers
    state_layers: int = 0
    scan_s_per_token: float = 0.0
    # the prefill's causal attention, timed apart from the projections: its QK + PV FLOPs (inside
    # prefill_flops) and the attention probe at this run's batch and prompt (None without attention)
    prefill_attention_flops: int = 0
    attention_tflops: float | None = None
    # --verify: cached decode against recomputation without the cache
    verify_max_abs_logit_diff: float | None = None
    verify_logit_scale: float | None = None
    verify_tolerance: float | None = None

    @property
    def verify_ok(self) -> bool | None:
        if self.verify_max_abs_logit_diff is None:
            return None
        assert self.verify_tolerance is not None and self.verify_logit_scale is not None
        return self.verify_max_abs_logit_diff <= self.verify_tolerance * max(self.verify_logit_scale, 1.0)


@dataclass(frozen=True, slots=True)
class MeasureReport:
    """Everything one `kvplan measure` invocation read, beside what the calculator predicted."""

    kvplan_version: str
    model: str
    layers_run: int
    layers_total: int
    dtype: str
    kv_cache_dtype: str
    state_dtype: str
    device: str  # "cpu" or "cuda:N"
    allocator: str | None  # whose allocated / reserved deltas: torch's CUDA caching allocator, or glibc malloc
    device_name: str
    driver_version: str | None
    cuda_version: str | None
    torch_version: str
    seed: int
    read_bandwidth_gbps: float  # read-streaming: what the decode prediction divides by
    read_buffer_bytes: int
    copy_bandwidth_gbps: float  # read + write, beside it
    copy_buffer_bytes: int
    parameters_run: int
    predicted_weight_bytes: int
    measured_weight_bytes: int  # parameter storage
    weights_allocated_delta_bytes: int | None
    weights_predicted_allocated_delta_bytes: int | None  # predicted weights + the allocator model's rounding
    weights_nvml_delta_bytes: int | None
    weights_rss_delta_bytes: int | None
    nvml_used_before_torch_bytes: int | None
    cuda_context_bytes: int | None  # NVML used after context creation - before - torch reserved
    memory_needed_bytes: int
    memory_available_bytes: int
    probes: tuple[ProbeReading, ...]  # every probe with its method
    notes: tuple[str, ...]
    runs: tuple[RunReading, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the run's fields, and each run record carrying the device fields too."""
        data = asdict(self)
        shared = {k: data[k] for k in ("device", "device_name", "driver_version", "torch_version", "model", "layers_run", "dtype", "kv_cache_dtype", "read_bandwidth_gbps", "copy_bandwidth_gbps")}
        data["runs"] = [{**shared, **asdict(run), "verify_ok": run.verify_ok} for run in self.runs]
        return data


# ------------------------------------------------------------------ comparison


def error_pct(measured: float, predicted: float) -> float:
    """(measured - predicted) / predicted; 0 when both are 0, inf when only the prediction is."""
    if predicted == 0:
        return 0.0 if measured == 0 else float("inf")
    return (measured - predicted) / predicted


def memory_comparisons(run: RunReading, cuda: bool) -> list[tuple[str, int, int | None]]:
    """(reading, predicted bytes, measured bytes) for every memory reading of a run."""
    rows: list[tuple[str, int, int | None]] = [("KV cache: tensor storage", run.predicted_kv_bytes, run.measured_kv_bytes)]
    # where the allocator is modelled, its readings are predicted with its rounding
    allocated_pred = _or(run.predicted_allocated_delta_bytes, run.predicted_kv_bytes)
    reserved_pred = _or(run.predicted_reserved_delta_bytes, run.predicted_kv_bytes)
    if run.allocated_delta_bytes is not None:
        allocated, reserved = ("torch allocated", "torch reserved") if cuda else ("malloc in-use", "malloc held")
        rows.append((f"KV cache: {allocated} Δ", allocated_pred, run.allocated_delta_bytes))
        rows.append((f"KV cache: {reserved} Δ", reserved_pred, run.reserved_delta_bytes))
    if run.nvml_used_delta_bytes is not None:
        rows.append(("KV cache: NVML used Δ", reserved_pred, run.nvml_used_delta_bytes))
    if run.rss_delta_bytes is not None:
        rows.append(("KV cache: process RSS Δ", allocated_pred, run.rss_delta_bytes))
    return rows


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


# Readings the --tolerance gate holds to. Reserved / held are shown but not gated:
# NVML and RSS already stand for the device-level cost, and the CUDA allocator's
# 20 MiB segments dominate small caches.
GATED_MEMORY = (
    "KV cache: tensor storage",
    "KV cache: torch allocated Δ",
    "KV cache: malloc in-use Δ",
    "KV cache: NVML used Δ",
    "KV cache: process RSS Δ",
)


def tolerance_failures(report: MeasureReport, tolerance: float) -> list[str]:
    """One line per gated reading whose relative error exceeds `tolerance` (0.05 = 5%)."""
    failures = []
    for run in report.runs:
        where = f"context {fmt_int(run.context)}, batch {run.batch}"
        for name, predicted, measured in memory_comparisons(run, report.device.startswith("cuda")):
            if name in GATED_MEMORY and measured is not None:
                err = error_pct(measured, predicted)
                if abs(err) > tolerance:
                    failures.append(f"{where}: {name} {fmt_bytes(measured)} vs {fmt_bytes(predicted)} predicted ({err:+.2%})")
        err = error_pct(run.measured_decode_step_s, run.predicted_decode_step_s)
        if abs(err) > tolerance:
            failures.append(
                f"{where}: decode step {fmt_seconds(run.measured_decode_step_s)} vs "
                f"{fmt_seconds(run.predicted_decode_step_s)} predicted ({err:+.2%})"
                + ("; the timings were not stable (machine loaded)" if run.stable is False else "")
            )
    return failures


def fmt_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:,.1f} µs"
    if s < 1:
        return f"{s * 1e3:,.3f} ms"
    return f"{s:,.3f} s"
