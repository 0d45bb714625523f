"""Render a `kvplan measure --tp/--pp` report: one table per (context, batch) with a row per rank, then
the communication table, the verify line and the notes (rich)."""

from __future__ import annotations

from typing import Any

from kvplan.cli.render import rich_table, size
from kvplan.measure.report import fmt_seconds
from kvplan.units import fmt_int

CACHE_HEADERS = ["rank", "stage", "layers", "predicted KV", "measured KV", "Δ", "stage replication", "memory Δ", "prefill", "decode step"]
COMM_HEADERS = ["rank", "all-reduces / step", "message bytes / step", "ring wire bytes", "all-reduce time / step", "to next stage / step"]


def _pred_meas(predicted, measured, fmt) -> str:
    return fmt(measured) if predicted == measured else f"{fmt(measured)} (predicted {fmt(predicted)})"


def parallel_tables(report, exact: bool) -> list[Any]:
    out: list[Any] = []
    head = (
        f"model {report.model} · {report.layers} layers · {report.dtype} · KV {report.kv_cache_dtype} · "
        f"--tp {report.tensor_parallel_size} --pp {report.pipeline_parallel_size} = {report.ranks} ranks "
        f"({report.launch}, {report.backend}, {report.device}) · layers per stage "
        f"{', '.join(map(str, report.layers_per_stage))}"
    )
    if report.link_gbps is not None:
        head += f"\nlink (fitted by the probes): {report.link_gbps:,.2f} GB/s, {fmt_seconds(report.link_latency_s)} per ring step"
    out.append(head)
    keys = sorted({(r.context, r.batch) for r in report.runs})
    for context, batch in keys:
        runs = [r for r in report.runs if (r.context, r.batch) == (context, batch)]
        title = f"context {fmt_int(context)} + decode steps = {fmt_int(runs[0].total_tokens)} tokens · batch {fmt_int(batch)}"
        rows = []
        for r in runs:
            memory = r.allocated_delta_bytes if r.allocated_delta_bytes is not None else r.rss_delta_bytes
            rows.append([
                str(r.rank), str(r.stage), f"{r.first_layer}-{r.first_layer + r.layers - 1}",
                size(r.predicted_kv_bytes, exact), size(r.measured_kv_bytes, exact),
                f"{r.measured_kv_bytes - r.predicted_kv_bytes:+,} B", size(r.stage_replication_bytes, exact),
                "—" if memory is None else size(memory, exact),
                fmt_seconds(r.prefill_s), fmt_seconds(r.decode_step_s),
            ])
        out.append(rich_table(title, CACHE_HEADERS, rows))
        comm = []
        for r in runs:
            comm.append([
                str(r.rank),
                _pred_meas(r.predicted_allreduces_per_step, r.allreduces_per_step, str),
                _pred_meas(r.predicted_allreduce_bytes_per_step, r.allreduce_bytes_per_step, lambda n: size(n, exact)),
                size(r.predicted_allreduce_wire_bytes_per_step, exact),
                fmt_seconds(r.allreduce_s_per_step) + (
                    f" (predicted {fmt_seconds(r.predicted_allreduce_s_per_step)})" if r.predicted_allreduce_s_per_step else ""),
                _pred_meas(r.predicted_p2p_bytes_per_step, r.p2p_bytes_per_step, lambda n: size(n, exact)),
            ])
        out.append(rich_table("communication per decode step (measured; predicted where it differs)", COMM_HEADERS, comm))
    if report.verify_ok is not None:
        out.append(
            f"verify (rank {report.checker_rank}): cached decode vs recompute max |Δlogit| "
            f"{report.verify_max_abs_logit_diff:.3g}; sharded vs one-process {report.one_process_max_abs_logit_diff:.3g} "
            f"(tolerance {report.verify_tolerance:g} × {max(report.verify_logit_scale or 0, 1.0):.2f}): "
            + ("pass" if report.verify_ok else "FAIL")
        )
    out.append("\n".join(f"note: {n}" for n in report.notes))
    return out
