"""Record what the real llama-server decides for a grid of plans, and compare kvplan's llama.cpp rules with it.

    python tools/llamacpp_models.py tests/fixtures/llamacpp_real        # the tiny GGUF models (needs gguf)
    python tools/llamacpp_validate.py run --llama-server /tmp/lcpp-build/bin/llama-server   # ~2 min on 2 cores
    python tools/llamacpp_validate.py compare                           # kvplan now vs the recorded engine

`run` starts llama-server once per grid point with exactly the flags `kvplan estimate MODEL.gguf --engine
llama.cpp --emit llama.cpp` prints (`kvplan.measure.llamacpp_run.plan`), plus --host/--port and one thread,
waits for /health (or its exit: a refused start), reads /props and /slots, stops it, and writes
tests/fixtures/llamacpp_real/<model>.json: per point the plan, the command, the whole start-up log, /props and
/slots. tests/test_llamacpp_real.py recomputes kvplan's prediction for every record and expects every figure to
equal the engine's (`differences`), except those KNOWN_DIFFERENCES lists there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures" / "llamacpp_real"
MODELS = ("llama-gqa", "llama-hd32", "gemma2-swa", "jamba-hybrid")

# (id, context, batch, kv_cache_dtype, llama.cpp options): each point moves one rule
GRID = (
    ("default", 1024, 2, "auto", {}),
    ("one-slot", 4096, 1, "auto", {}),
    ("unified-4", 512, 4, "auto", {"kv_unified": True}),
    ("rounded-3", 700, 3, "auto", {"ctx_size": 2000}),
    ("ubatch-128", 1024, 2, "auto", {"ubatch_size": 128, "n_batch": 256}),
    ("swa-full", 1024, 2, "auto", {"swa_full": True}),
    ("f32-cache", 1024, 2, "auto", {"cache_type_k": "f32", "cache_type_v": "f32"}),
    ("beyond-train", 12288, 1, "auto", {}),
    ("q8-cache", 1024, 2, "auto", {"cache_type_k": "q8_0", "cache_type_v": "q8_0"}),  # refused on heads of 16
    ("q4k-q8v", 1024, 2, "auto", {"cache_type_k": "q4_0", "cache_type_v": "q8_0", "flash_attn": "on"}),
    ("qv-fa-off-refused", 1024, 2, "auto", {"cache_type_v": "q8_0", "flash_attn": "off"}),
)


def gguf(model: str) -> Path:
    return FIXTURES / f"{model}.gguf"


def record(server: str, model: str, point: tuple) -> dict:
    from kvplan.measure.llamacpp_run import LOG_ARGS, get_json, plan, request_error
    from kvplan.measure.server import EngineExited, EngineServer, free_port

    pid, context, batch, kv, options = point
    p = plan(str(gguf(model)), context=context, batch=batch, kv_cache_dtype=kv, engine_options=options)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [server, *p.args, *LOG_ARGS, "--host", "127.0.0.1", "--port", str(port), "--threads", "1"]
    rec = {"id": pid, "context": context, "batch": batch, "kv_cache_dtype": kv, "options": options,
           "args": list(p.args), "ready": False, "props": None, "slots": None, "exit_status": None,
           "request_error": None}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with EngineServer(argv, log_path=log, ready_url=f"{base}/health", name="llama-server", poll_s=0.2) as srv:
            try:
                srv.wait_ready(120)
                rec["ready"] = True
                rec["props"] = get_json(f"{base}/props")
                rec["slots"] = get_json(f"{base}/slots")
                rec["request_error"] = request_error(base, context - 1)  # a sequence of the whole context
            except EngineExited as exc:
                rec["exit_status"] = exc.returncode
        rec["log"] = log.read_text(encoding="utf-8", errors="replace")
    return rec


def run(server: str, models) -> None:
    version = None
    for model in models:
        records = []
        for point in GRID:
            t = time.monotonic()
            rec = record(server, model, point)
            records.append(rec)
            print(f"{model}/{rec['id']}: {'ready' if rec['ready'] else 'refused'} in {time.monotonic() - t:.1f} s",
                  flush=True)
            if rec["props"] and version is None:
                version = rec["props"].get("build_info")
        out = FIXTURES / f"{model}.json"
        out.write_text(json.dumps({"model": model, "llama_server_build": version, "records": records}, indent=1) + "\n")
        print(f"wrote {out}")


def load_fixtures() -> list[dict]:
    return [json.loads((FIXTURES / f"{m}.json").read_text()) for m in MODELS if (FIXTURES / f"{m}.json").exists()]


def checks(fx: dict, rec: dict):
    """kvplan's prediction for one record, recomputed now, beside the recorded engine."""
    from kvplan.measure.llamacpp import compare_refusal, compare_request_refusal, compare_start, predict
    from kvplan.measure.llamacpp_run import plan
    from kvplan.sources.llamacpp_log import parse_llamacpp_log

    p = plan(str(gguf(fx["model"])), context=rec["context"], batch=rec["batch"], kv_cache_dtype=rec["kv_cache_dtype"],
             engine_options=rec["options"])
    predicted = predict(p.spec, p.cache, p.opts)
    log = parse_llamacpp_log(rec["log"])
    if not rec["ready"] or "refusal" in predicted:
        return p, [compare_refusal(predicted, log)] + ([] if not rec["ready"] else compare_start(predicted, log))
    return p, compare_start(predicted, log, rec["props"], rec["slots"]) + compare_request_refusal(
        predicted, rec["request_error"])


def differences(fx: dict, rec: dict) -> dict:
    _, found = checks(fx, rec)
    return {c.figure: (c.observed, c.predicted) for c in found if not c.agrees}


def compare() -> int:
    bad = 0
    for fx in load_fixtures():
        for rec in fx["records"]:
            diff = differences(fx, rec)
            bad += bool(diff)
            print(f"{fx['model']}/{rec['id']}: {'agrees' if not diff else diff}")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--llama-server", default="llama-server")
    r.add_argument("--model", action="append", choices=MODELS)
    sub.add_parser("compare")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        run(a.llama_server, a.model or MODELS)
        return 0
    return compare()


if __name__ == "__main__":
    sys.exit(main())
