"""Render a `kvplan measure` report: one table per run, the summary and the notes (rich)."""

from __future__ import annotations

from typing import Any

from kvplan.cli.render import KIND_LABEL, rich_table, size
from kvplan.measure.report import ALLOCATOR_NOTE, MeasureReport, ProbeReading, RSS_NOTE, RunReading, error_pct, fmt_seconds, memory_comparisons
from kvplan.units import fmt_bytes, fmt_flops, fmt_int

def _signed_bytes(n: int, exact: bool) -> str:
    text = fmt_bytes(n) if abs(n) >= 1024 else f"{n:,} B"
    if exact and abs(n) >= 1024:
        text += f" ({n:,} B)"
    return ("+" if n > 0 else "") + text


def _pct(err: float) -> str:
    return "—" if err == float("inf") else f"{err:+.2%}"


HEADERS = ["reading", "predicted", "measured", "error", "error %"]


def run_rows(run: RunReading, exact: bool, cuda: bool) -> list[list[str]]:
    rows = []
    for name, predicted, measured in memory_comparisons(run, cuda):
        if measured is None:
            continue
        rows.append([name, size(predicted, exact), size(measured, exact), _signed_bytes(measured - predicted, exact), _pct(error_pct(measured, predicted))])
        if name.endswith(("torch allocated Δ", "malloc in-use Δ")) and run.allocator_rounding_bytes is not None:
            excess = measured - run.measured_kv_bytes
            rows.append([
                "  of which allocator rounding (modelled)",
                _signed_bytes(run.allocator_rounding_bytes, exact),
                _signed_bytes(excess, exact),
                _signed_bytes(excess - run.allocator_rounding_bytes, exact),
                "",
            ])
        if name == "KV cache: tensor storage" and len(run.kv_by_kind) > 1:
            for k in run.kv_by_kind:
                label = f"  {KIND_LABEL.get(k.kind, k.kind)} ({k.layers} layer{'s' if k.layers != 1 else ''})"
                rows.append([label, size(k.predicted_bytes, exact), size(k.measured_bytes, exact), _signed_bytes(k.measured_bytes - k.predicted_bytes, exact), _pct(error_pct(k.measured_bytes, k.predicted_bytes))])
    if run.peak_allocated_bytes is not None:
        rows.append(["peak allocated (prefill + decode)", size(run.predicted_peak_bytes, exact) + " (margin)", size(run.peak_allocated_bytes, exact), _signed_bytes(run.peak_allocated_bytes - run.predicted_peak_bytes, exact), _pct(error_pct(run.peak_allocated_bytes, run.predicted_peak_bytes))])
    step_err = run.measured_decode_step_s - run.predicted_decode_step_s
    rows.append([
        f"decode step (median of rounds, {run.decode_mode}), {run.decode_bound}-bound",
        fmt_seconds(run.predicted_decode_step_s),
        fmt_seconds(run.measured_decode_step_s),
        ("+" if step_err > 0 else "-") + fmt_seconds(abs(step_err)),
        _pct(error_pct(run.measured_decode_step_s, run.predicted_decode_step_s)),
    ])
    rows.append([
        "decode bytes read per step",
        size(run.bytes_read_per_step, exact),
        f"{run.achieved_gbps:,.1f} GB/s achieved",
        "",
        f"{run.bandwidth_utilisation:.1%} of read",
    ])
    rows.append(["  weights read", size(run.weight_bytes_read_per_step, exact), "", "", ""])
    rows.append(["  KV cache read", size(run.kv_bytes_read_per_step, exact), "", "", ""])
    rows.append([f"  memory time (bytes / read {run.read_gbps:,.1f} GB/s{probe_source(run)})",
                 fmt_seconds(run.predicted_decode_memory_s), "", "", ""])
    rows.append([
        f"  compute time ({fmt_flops(run.decode_flops_per_step)} / GEMV {run.gemv_tflops * 1e3:,.1f} GFLOP/s)",
        fmt_seconds(run.predicted_decode_compute_s), "", "", "",
    ])
    if run.state_layers:
        rows.append([
            f"  scan time ({run.state_layers} state layer{'s' if run.state_layers != 1 else ''} x "
            f"{fmt_seconds(run.scan_s_per_token / run.state_layers)} per token)",
            fmt_seconds(run.scan_s_per_token), "", "", "",
        ])
    rows.append(["  spread of the judged rounds", "", f"{run.decode_spread:.1%} (range / median)", "", ""])
    prefill_err = run.measured_prefill_s - run.predicted_prefill_s
    rows.append([
        f"prefill, median of rounds ({fmt_flops(run.prefill_flops - run.prefill_attention_flops)} / GEMM "
        f"{run.gemm_tflops * 1e3:,.1f} GFLOP/s"
        + (f" + attention {fmt_flops(run.prefill_attention_flops)} / {fmt_flops(run.attention_tflops * 1e12)}/s"
           if run.attention_tflops else "")
        + (f" + {run.context:,} x scan)" if run.state_layers else ")"),
        fmt_seconds(run.predicted_prefill_s),
        fmt_seconds(run.measured_prefill_s),
        ("+" if prefill_err > 0 else "-") + fmt_seconds(abs(prefill_err)),
        _pct(error_pct(run.measured_prefill_s, run.predicted_prefill_s)),
    ])
    rows.append(["  spread of the judged rounds", "", f"{run.prefill_spread:.1%} (range / median)", "", ""])
    rows.append(["timing rounds", "", stability_text(run), "", ""])
    if run.verify_max_abs_logit_diff is not None:
        rows.append([
            "cached decode vs recompute",
            f"max |Δlogit| ≤ {run.verify_tolerance:g} × {max(run.verify_logit_scale or 0, 1.0):.2f}",
            f"{run.verify_max_abs_logit_diff:.3g}",
            "",
            "pass" if run.verify_ok else "FAIL",
        ])
    return rows


def probe_source(run: RunReading) -> str:
    """Where the run's probe figures come from, when not from the probes before the runs."""
    if run.probe_rounds == 1:
        return ", probed after its round"
    return f", median of the probes after its {run.probe_rounds} judged rounds" if run.probe_rounds else ""


def stability_text(run: RunReading) -> str:
    """How many rounds ran and whether the judged ones agreed."""
    if run.stable is None:
        return "1 round, stability not judged"
    verdict = "stable" if run.stable else "not stable (machine loaded)"
    return f"{run.rounds} round{'s' if run.rounds != 1 else ''}, {verdict}"


def run_title(run: RunReading) -> str:
    return (
        f"context {fmt_int(run.context)} + {fmt_int(run.decode_steps)} decode steps = "
        f"{fmt_int(run.total_tokens)} tokens · batch {fmt_int(run.batch)}"
    )


def summary_lines(report: MeasureReport, exact: bool) -> list[tuple[str, str]]:
    lines = [
        ("model", f"{report.model} · {report.layers_run} of {report.layers_total} layers · {report.dtype} weights · KV {report.kv_cache_dtype} · state {report.state_dtype} · seed {report.seed}"),
        ("device", f"{report.device} · {report.device_name}"),
        ("software", f"torch {report.torch_version}" + (f" · CUDA {report.cuda_version}" if report.cuda_version else "") + (f" · driver {report.driver_version}" if report.driver_version else "")),
        *((p.name, f"{_probe_value(p)} · {p.method}") for p in report.probes),
        ("weights", f"{fmt_int(report.parameters_run)} parameters · predicted {size(report.predicted_weight_bytes, exact)} · tensor storage {size(report.measured_weight_bytes, exact)}"),
    ]
    cuda = report.device.startswith("cuda")
    modelled = (
        f" (predicted with the allocator's rounding {size(report.weights_predicted_allocated_delta_bytes, exact)})"
        if report.weights_predicted_allocated_delta_bytes is not None else ""
    )
    if cuda and report.weights_allocated_delta_bytes is not None:
        lines.append(("  weights, device", f"torch allocated Δ {size(report.weights_allocated_delta_bytes, exact)}{modelled}" + (f" · NVML used Δ {size(report.weights_nvml_delta_bytes, exact)}" if report.weights_nvml_delta_bytes is not None else "")))
    if report.weights_rss_delta_bytes is not None:
        malloc = f" · malloc in-use Δ {size(report.weights_allocated_delta_bytes, exact)}{modelled}" if report.weights_allocated_delta_bytes is not None else ""
        lines.append(("  weights, process", f"RSS Δ {size(report.weights_rss_delta_bytes, exact)}{malloc}"))
    if report.cuda_context_bytes is not None:
        lines.append(("CUDA context", f"{size(report.cuda_context_bytes, exact)} (NVML, before torch: {size(report.nvml_used_before_torch_bytes or 0, exact)} used)"))
    lines.append(("memory check", f"needs {size(report.memory_needed_bytes, exact)} of {size(report.memory_available_bytes, exact)} available"))
    return lines


def _probe_value(probe: ProbeReading) -> str:
    if probe.unit == "TFLOP/s":  # a CPU's GEMV reads 0.01 TFLOP/s: below 1, GFLOP/s keeps three figures
        return f"{probe.value:,.2f} TFLOP/s" if probe.value >= 1 else f"{fmt_flops(probe.value * 1e12)}/s"
    if probe.unit == "ms":  # a scan step: µs on a GPU, a fraction of a ms on a CPU
        return fmt_seconds(probe.value / 1e3)
    return f"{probe.value:,.1f} {probe.unit}"


def report_tables(report: MeasureReport, exact: bool) -> list[Any]:
    """rich renderables: one table per run, then the summary and the notes."""
    from rich.table import Table

    out: list[Any] = []
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    for key, value in summary_lines(report, exact):
        summary.add_row(key, value)
    out.append(summary)
    for run in report.runs:
        out.append(rich_table(run_title(run), HEADERS, run_rows(run, exact, report.device.startswith("cuda"))))
    notes = list(report.notes)
    notes.append(ALLOCATOR_NOTE if report.device.startswith("cuda") else RSS_NOTE)
    out.append("\n".join(f"note: {n}" for n in notes))
    return out
