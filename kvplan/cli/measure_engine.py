"""`kvplan measure MODEL --engine vllm`: the real engine started with the plan's flags, its figures beside kvplan's.

The command (`kvplan.cli.measure`) parses the flags and calls `run_engine`; the work is
`kvplan.measure.engine_vllm.measure_vllm`, the rendering here. Exit 0 when the engine agrees with the plan;
1 when a start-up figure differs, a start or refusal disagrees, a level admits a different concurrency or holds
KV beyond one block per request of the prediction, or requests fail; 2 for bad input (vLLM not found, a port in
use); 130 on Ctrl-C (the engine torn down first).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from kvplan.errors import InputError, KvplanError


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}{unit}"
    return f"{int(value):,}{unit}"


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.2f}"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.2f}%"


def report_tables(report) -> list:
    """The start-up figures and, per level, the load's beside kvplan's, as rich renderables."""
    from kvplan.cli import render

    items: list = []
    head = [f"vLLM {report.vllm_version or '?'} on {report.device}: {report.model}",
            f"command (as --emit vllm): {report.command}",
            f"engine log: {report.log_path}"]
    if report.started:
        head.append(f"ready in {report.ready_s:.1f} s")
    items += head
    rows = [(f.name, _fmt(f.predicted), _fmt(f.measured), _fmt(f.error), _pct(f.error_pct), f.source)
            for f in report.figures]
    items.append(render.rich_table("start-up: kvplan vs vLLM", ["figure", "kvplan", "vLLM", "error", "error %", "read from"],
                                   rows, right_from=1))
    p = report.prediction
    if not report.started or not p.starts:
        items.append(f"kvplan predicted: {'starts' if p.starts else 'refused: ' + (p.refusal or '?')}")
        items.append(f"vLLM: {'started' if report.started else 'refused: ' + (report.refusal or '?')}")
        items.append(f"estimated maximum model length: kvplan {_fmt(p.estimated_max_model_len)}, "
                     f"vLLM {_fmt(report.estimated_max_model_len)}")
    if report.levels:
        rows = []
        for lv in report.levels:
            rows.append((str(lv.concurrency), f"{lv.requests - lv.failed}/{lv.requests}",
                         f"{_fmt(lv.admitted_measured)} / {lv.admitted_predicted}",
                         f"{_fmt(lv.kv_blocks_measured)} / {_fmt(lv.kv_blocks_predicted)}",
                         _fmt(lv.preemptions),
                         f"{_ms(lv.times.ttft_p50_s)} / {_ms(lv.times.ttft_p99_s)}", _ms(lv.ttft_roofline_s),
                         f"{_ms(lv.times.tpot_p50_s)} / {_ms(lv.times.tpot_p99_s)}", _ms(lv.engine_tpot_p50_s),
                         _ms(lv.tpot_roofline_s)))
        items.append(render.rich_table(
            "under load (measured / kvplan)",
            ["level", "done", "admitted", "peak KV blocks", "preempted", "TTFT p50 / p99 ms", "roofline",
             "TPOT p50 / p99 ms", "vLLM TPOT p50", "roofline"], rows, right_from=0))
    items += [f"note: {n}" for n in report.notes]
    return items


def failures(report) -> list[str]:
    out = []
    for f in report.figures:
        if report.started and f.error not in (None, 0, 0.0):
            out.append(f"{f.name}: vLLM {_fmt(f.measured)}, kvplan {_fmt(f.predicted)}")
    if report.refusal_agrees is False:
        out.append("start-up: vLLM " + ("started" if report.started else f"refused ({report.refusal})")
                   + ", kvplan predicted " + ("a start" if report.prediction.starts else "a refusal"))
    for lv in report.levels:
        if lv.failed:
            out.append(f"level {lv.concurrency}: {lv.failed} of {lv.requests} requests failed ({'; '.join(lv.errors)})")
        if lv.admitted_measured is not None and lv.admitted_measured != lv.admitted_predicted:
            out.append(f"level {lv.concurrency}: {lv.admitted_measured} admitted, {lv.admitted_predicted} predicted")
        if lv.kv_within_tolerance is False:
            out.append(f"level {lv.concurrency}: peak KV {lv.kv_blocks_measured} blocks, {lv.kv_blocks_predicted} "
                       f"predicted (beyond one block per request)")
    return out


def run_engine(*, model: str, engine: str, context: str, batch: str, kv_cache_dtype: str, dtype: str, device: str,
               seed: int, timeout: float, out_path: Optional[Path], out_flag: str, fmt, force: bool,
               vllm_python: Optional[str], vllm: Optional[str], vllm_args: list[str], port: Optional[int],
               concurrency: Optional[str], requests: Optional[int], prompt_tokens: Optional[str],
               output_tokens: Optional[str], workload: Optional[str], block_size: Optional[int],
               max_num_batched_tokens: Optional[str], kv_cache_memory_bytes: Optional[str],
               enable_prefix_caching: Optional[bool], gpu_memory_utilization: Optional[float],
               state_dtype: Optional[str], gpu: Optional[str], gpu_memory: Optional[str],
               gpu_bandwidth: Optional[float], gpu_bf16_tflops: Optional[float], save_calibration: Optional[str],
               engine_log: Optional[str]) -> None:
    from kvplan.cli import outputs, render
    from kvplan.cli.app import one_value, parse_int_list
    from kvplan.measure.engine_vllm import VllmRun, calibration, checkpoint_folder, measure_vllm
    from kvplan.options import parse_option, read_group
    from kvplan.plan.search import fixed_workload, read_workload
    from kvplan.sources.catalog import resolve_spec

    if engine != "vllm":
        raise InputError(f"--engine {engine!r}: measure runs kvplan's own torch decoder (torch) or starts vllm")
    # the flag group's sizes and token counts are refused as every command refuses them, before the model is read
    read_group({"gpu_memory": gpu_memory, "max_num_batched_tokens": max_num_batched_tokens}, "measure")
    if out_path is not None:
        outputs.check_output(out_path, out_flag, outputs.ENGINE_JSON, inputs=outputs.model_inputs(model, "measured"),
                             force=force)
    if save_calibration is not None:
        outputs.check_output(save_calibration, "--save-calibration", outputs.KVPLAN_JSON,
                             inputs=outputs.model_inputs(model, "measured"), force=force)
    checkpoint_folder(model)
    spec = resolve_spec(model)
    contexts = parse_int_list(context, "--context")
    if len(contexts) != 1:
        raise InputError("--context: measure --engine vllm starts one engine at one max_model_len; give one value")
    batches = parse_int_list(batch, "--batch")
    if len(batches) != 1:
        raise InputError("--batch: measure --engine vllm starts one engine (its --max-num-seqs); give one value")
    levels = tuple(parse_int_list(concurrency, "--concurrency")) if concurrency else ()
    if workload is not None and (prompt_tokens is not None or output_tokens is not None):
        raise InputError("--workload gives the requests' lengths; drop --prompt-tokens / --output-tokens")
    if workload is not None:
        wl = read_workload(workload, 1.0)
    else:
        p = parse_option("prompt_tokens", prompt_tokens) or 128
        o = parse_option("output_tokens", output_tokens) or 32
        wl = fixed_workload(p, o, 1.0)
    if levels and wl.longest > contexts[0]:
        raise InputError(f"the workload's longest request ({wl.longest:,} tokens) is longer than --context "
                         f"{contexts[0]:,} (vLLM's max_model_len); give a longer --context")
    if requests is not None and requests < 1:
        raise InputError(f"--requests must be at least 1, got {requests}")
    if device == "auto":
        import shutil

        device = "cuda" if shutil.which("nvidia-smi") else "cpu"
    engine_options = {}
    if kv_cache_memory_bytes is not None:
        engine_options["kv_cache_memory_bytes"] = parse_option("kv_cache_memory_bytes", kv_cache_memory_bytes)
    if enable_prefix_caching is not None:
        engine_options["enable_prefix_caching"] = enable_prefix_caching
    if device == "cuda" and gpu is None and gpu_memory is None and kv_cache_memory_bytes is None:
        raise InputError("measure --engine vllm on a GPU: give --gpu (or --gpu-memory) so kvplan can predict vLLM's "
                         "budget, or --kv-cache-memory-bytes")
    run = VllmRun(
        model=model, spec=spec, context=contexts[0], batch=batches[0] if batches[0] > 1 else None,
        kv_cache_dtype=kv_cache_dtype, dtype=None if dtype == "auto" else dtype, block_size=block_size,
        max_num_batched_tokens=parse_option("max_num_batched_tokens", max_num_batched_tokens),
        state_dtype=state_dtype, device=device, engine_options=engine_options,
        gpu=one_value("gpu", gpu, "measure") if gpu else None, gpu_memory=gpu_memory, gpu_bandwidth=gpu_bandwidth,
        gpu_bf16_tflops=gpu_bf16_tflops, gpu_memory_utilization=gpu_memory_utilization, concurrency=levels,
        workload=wl, requests_per_level=requests, vllm_python=vllm_python, vllm=vllm, vllm_args=tuple(vllm_args),
        port=port, timeout_s=timeout, log_path=Path(engine_log) if engine_log else None, seed=seed,
    )
    err = render.console(stderr=True)
    report = measure_vllm(run, say=lambda text: err.print(text, markup=False, highlight=False))
    data = report.to_dict()
    if out_path is not None:
        from kvplan.cli.measure import write_json_atomic

        write_json_atomic(out_path, data, out_flag)
    if save_calibration is not None:
        from kvplan.atomic import write_text_atomically

        write_text_atomically(save_calibration, json.dumps(calibration(report, "--save-calibration"), indent=2) + "\n",
                              "--save-calibration")
        sys.stderr.write(f"wrote {save_calibration}\n")
    if fmt.value == "json":
        from kvplan.schema import stamped

        render.write(render.to_json(stamped(data)))
    else:
        out = render.console()
        for item in report_tables(report):
            if isinstance(item, str):
                render.print_text(out, item)
            else:
                out.print(item)
    bad = failures(report)
    if bad:
        raise KvplanError(f"{len(bad)} figure(s) off the plan: " + "; ".join(bad), exit_code=1)
