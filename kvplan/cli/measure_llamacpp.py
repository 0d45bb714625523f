"""`kvplan measure MODEL.gguf --engine llama.cpp`: start the real llama-server with the plan's flags and compare.

The run (`measure_llamacpp`): size the plan with kvplan's llama.cpp rules and build its command as `estimate
--emit llama.cpp` does; start llama-server on a free port (or `--port`); wait for /health; read its start-up log,
/props and /slots; print each figure beside the prediction; then, for each `--concurrency` level, send that many
streaming completions at once and report TTFT and TPOT (client-side p50/p99), the slots busy and the tokens they
held against the prediction. The server is stopped on every way out. Exit 1 when a figure differs from the
prediction or the engine refused a start kvplan did not predict; exit 0 when both refused in the same words.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from kvplan.errors import InputError, KvplanError


def measure_llamacpp(model: str, *, context: int, batch: int, kv_cache_dtype: str, engine_options: dict,
                     llama_server: Optional[str], concurrency: list[int], prompt_tokens: int, output_tokens: int,
                     timeout: float, port: Optional[int], threads: Optional[int], gpu_bandwidth: Optional[float],
                     out_path: Optional[Path], out_flag: str, save_calibration: Optional[Path], fmt, exact: bool,
                     progress) -> None:
    from kvplan.measure import load
    from kvplan.measure.llamacpp import (Level, achieved_gbps, compare_refusal, compare_request_refusal,
                                         compare_start, held_per_request, predict)
    from kvplan.measure.llamacpp_run import LOG_ARGS, SlotsPoller, find_server, get_json, plan, request_error
    from kvplan.measure.server import EngineExited, EngineFailed, EngineServer, free_port, port_in_use
    from kvplan.sources.llamacpp_log import parse_llamacpp_log

    if not model.lower().endswith(".gguf"):
        raise InputError(f"--engine llama.cpp: llama-server loads a GGUF file; {model!r} is not one: pass the .gguf")
    binary = find_server(llama_server)
    p = plan(model, context=context, batch=batch, kv_cache_dtype=kv_cache_dtype, engine_options=engine_options)
    predicted = predict(p.spec, p.cache, p.opts)
    host = "127.0.0.1"
    if port is not None and port_in_use(host, port):
        raise InputError(f"--port {port} is in use: give another, or leave --port out for a free one")
    port = port or free_port(host)
    base = f"http://{host}:{port}"
    argv = [binary, *p.args, *LOG_ARGS, "--host", host, "--port", str(port)] + (["--threads", str(threads)] if threads else [])
    progress(f"starting: {' '.join(argv)}")
    report: dict[str, Any] = {"model": p.spec.name, "engine": "llama.cpp", "command": argv, "context": context,
                              "batch": batch, "predicted": predicted}
    levels: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="kvplan-llama-") as tmp:
        log_path = Path(tmp) / "llama-server.log"
        with EngineServer(argv, log_path=log_path, ready_url=f"{base}/health", name="llama-server",
                          poll_s=0.2) as srv:
            try:
                srv.wait_ready(timeout)
                ready = True
            except EngineExited as exc:
                ready = False
                report["exit_status"], report["log_tail"] = exc.returncode, list(exc.log_tail)
            if ready:
                props, slots = get_json(f"{base}/props"), get_json(f"{base}/slots")
                log = parse_llamacpp_log(log_path.read_text(encoding="utf-8", errors="replace"))
                checks = compare_start(predicted, log, props, slots)
                if "refusal" in predicted:
                    checks.insert(0, compare_refusal(predicted, log))
                checks += compare_request_refusal(predicted, request_error(base, context - 1, timeout))
                for c in concurrency:
                    progress(f"load: {c} request(s) at once, {prompt_tokens} + {output_tokens} tokens each")
                    poller = SlotsPoller(base).start()
                    try:
                        results = _interruptible(lambda: load.run_level(
                            base, p.spec.name, [(prompt_tokens, output_tokens)] * c, c, vocab_size=p.spec.vocab_size,
                            timeout_s=timeout))
                    finally:
                        poller.stop()
                    failed = [r.error for r in results if r.error]
                    if failed:  # a server killed mid-level drops its connections just before it is seen to exit
                        try:
                            srv.proc.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            pass
                    srv.check_alive()  # EngineExited with its last log lines: killed or crashed mid-level
                    if failed:
                        raise EngineFailed(f"{len(failed)} of {c} request(s) failed at concurrency {c}: {failed[0]}",
                                           srv.tail())
                    admitted = min(c, predicted["n_slots"])
                    levels.append(Level(c, c, prompt_tokens, output_tokens,
                                        tuple(r.ttft_s for r in results if r.ttft_s is not None),
                                        tuple(r.tpot_s for r in results if r.tpot_s is not None),
                                        poller.peak_busy, poller.peak_tokens, admitted,
                                        admitted * held_per_request(prompt_tokens, output_tokens),
                                        _step_bytes(p, admitted, prompt_tokens + output_tokens) / (gpu_bandwidth * 1e9)
                                        if gpu_bandwidth else None, _bytes_per_token(p)))
                report["observed_log"] = {"n_ctx": log.n_ctx, "n_ctx_seq": log.n_ctx_seq,
                                          "compute_buffer_mib": log.compute_buffer_mib,
                                          "kv_buffer_mib": list(log.kv_buffer_mib),
                                          "rs_buffer_mib": list(log.rs_buffer_mib)}
                report["build"] = props.get("build_info")
            else:
                log = parse_llamacpp_log(log_path.read_text(encoding="utf-8", errors="replace"))
                checks = [compare_refusal(predicted, log)]
    report["checks"] = [c.to_dict() for c in checks]
    report["levels"] = [lv.to_dict() for lv in levels]
    report["runs"] = [{"concurrency": lv.concurrency,
                       "achieved_gbps": achieved_gbps(_step_bytes(p, lv.predicted_busy_slots,
                                                                  lv.prompt_tokens + lv.output_tokens), lv.tpot_s)}
                      for lv in levels]
    # the device its buffers are on (ggml's buffer names: CPU, CUDA0, ...): a calibration speaks for that device only
    # (kvplan.plan.calibration refuses a CPU one for a GPU plan)
    gpu = log.gpu_name if any(k.startswith("CUDA") for k in log.compute_buffer_mib) else None
    report["device"], report["device_name"] = ("cuda:0", gpu) if gpu else (
        "cpu", f"llama-server ({report.get('build') or 'unknown build'}) on the CPU")
    _write(report, out_path, out_flag, save_calibration)
    _render(report, fmt, exact)
    off = [c for c in checks if not c.agrees]
    if off:
        tail = "".join(f"\n  | {line}" for line in report.get("log_tail", ()))
        raise KvplanError(f"{len(off)} figure(s) differ from kvplan's llama.cpp prediction: "
                          + "; ".join(f"{c.figure}: predicted {c.predicted!r}, llama-server {c.observed!r}" for c in off)
                          + tail, exit_code=1)


def _interruptible(fn):
    """fn() on a worker thread, the main thread waiting in short joins: Ctrl-C (kvplan.interrupts raises it in the
    main thread) then unwinds at once to the server's teardown, which ends the requests still streaming, instead of
    waiting in the requests' thread pool for them to finish."""
    import threading

    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the main thread)
            box["error"] = exc

    worker = threading.Thread(target=target, name="kvplan-level", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _bytes_per_token(p) -> Optional[int]:
    """KV bytes of one token over every attention layer (kvplan's per-slot bytes of each kind x its layers)."""
    from kvplan.model.kinds import KINDS_BY_NAME

    rows = [k for k in p.cache.by_kind if not KINDS_BY_NAME[k.kind].has_state]
    return sum(k.layers * k.bytes_per_slot for k in rows) if rows else None


def _step_bytes(p, sequences: int, tokens: int) -> int:
    """What one decode step reads: the weights (the GGUF's tensor bytes: every layer and the output matrix; one
    embedding row, left out) and the KV of the busy slots' tokens."""
    w = getattr(p.spec, "file_weight_bytes", None)
    total_w = (w.body + w.lm_head + w.routed_experts) if w is not None else 0
    per_token = _bytes_per_token(p) or 0
    return total_w + per_token * tokens * sequences


def _write(report: dict, out_path, out_flag: str, save_calibration) -> None:
    from kvplan.cli.measure import write_json_atomic

    if out_path is not None:
        write_json_atomic(out_path, report, out_flag)
    if save_calibration is not None:
        if not any(r["achieved_gbps"] for r in report["runs"]):
            raise InputError("--save-calibration needs a load level that decoded (give --concurrency)")
        write_json_atomic(save_calibration, {k: report[k] for k in ("model", "engine", "device", "device_name", "runs")},
                          "--save-calibration")


def _render(report: dict, fmt, exact: bool) -> None:
    from rich.table import Table

    from kvplan.cli import render

    if getattr(fmt, "value", fmt) == "json":
        render.write(render.to_json(report))
        return
    out = render.console()
    t = Table(title=f"{report['model']} · llama-server · context {report['context']:,} · batch {report['batch']}")
    for col in ("figure", "kvplan", "llama-server", "source", "error"):
        t.add_column(col, overflow="fold")
    for c in report["checks"]:
        err = "equal" if c["agrees"] else ("differs" if c["error"] is None else f"{c['error']:+.2%}")
        t.add_row(c["figure"], _cell(c["predicted"]), _cell(c["observed"]), c["source"], err)
    out.print(t)
    if report["levels"]:
        lt = Table(title="under load (client-side; /slots polled)")
        for col in ("concurrency", "slots busy (kvplan)", "tokens held (kvplan)", "TTFT p50 / p99", "TPOT p50 / p99",
                    "TPOT roofline"):
            lt.add_column(col, justify="right")
        for lv in report["levels"]:
            roof = "—" if lv["predicted_tpot_s"] is None else f"{lv['predicted_tpot_s'] * 1e3:.3f} ms"
            lt.add_row(str(lv["concurrency"]), f"{lv['peak_busy_slots']} ({lv['predicted_busy_slots']})",
                       f"{lv['peak_tokens_held']:,} ({lv['predicted_tokens_held']:,})",
                       _ms(lv["ttft_p50_s"], lv["ttft_p99_s"]), _ms(lv["tpot_p50_s"], lv["tpot_p99_s"]), roof)
        out.print(lt)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) or "—"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _ms(p50: Optional[float], p99: Optional[float]) -> str:
    return "—" if p50 is None else f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f} ms"
