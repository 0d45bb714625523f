"""Benchmark: how close `kvplan measure`'s timing predictions come on this CPU (issue 20's check).

Runs `kvplan measure MODEL --layers 2 --context 2048 --device cpu` for a GQA model (llama-3.1-8b),
an MLA model (deepseek-v2-lite) and a hybrid Mamba model (jamba-v0.1), one after another, and prints
one JSON line per model: the predicted and measured decode step and prefill, their errors, whether
the rounds were stable, the probes behind the prediction, and whether each error is inside the goal
(decode within +-15%, prefill within +-25%), then a summary line. It records; it does not fail on
noise: timings on a shared machine vary run to run, so compare runs taken on a quiet machine
(`load_average_1m` is printed). About 2-4 minutes on 2 idle cores; needs torch.

    python bench/bench_measure_cpu.py [--models a,b,c] [--context N] [--layers N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = ("llama-3.1-8b", "deepseek-v2-lite", "jamba-v0.1")
DECODE_GOAL, PREFILL_GOAL = 0.15, 0.25


def _error(measured: float, predicted: float) -> float:
    return measured / predicted - 1


def run(model: str, context: int, layers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        proc = subprocess.run(
            [sys.executable, "-m", "kvplan", "measure", model, "--layers", str(layers), "--context", str(context),
             "--device", "cpu", "-o", str(out)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            return {"model": model, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        report = json.loads(out.read_text())
    (r,) = report["runs"]
    decode = _error(r["measured_decode_step_s"], r["predicted_decode_step_s"])
    prefill = _error(r["measured_prefill_s"], r["predicted_prefill_s"])
    return {
        "model": model, "layers": layers, "context": context,
        "predicted_decode_step_ms": round(r["predicted_decode_step_s"] * 1e3, 3),
        "measured_decode_step_ms": round(r["measured_decode_step_s"] * 1e3, 3),
        "decode_error": round(decode, 4), "decode_bound": r["decode_bound"],
        "predicted_prefill_s": round(r["predicted_prefill_s"], 4), "measured_prefill_s": round(r["measured_prefill_s"], 4),
        "prefill_error": round(prefill, 4), "rounds": r["rounds"], "stable": r["stable"],
        "decode_spread": round(r["decode_spread"], 4), "prefill_spread": round(r["prefill_spread"], 4),
        "probes": {p["name"]: f"{p['value']:.4g} {p['unit']}" for p in report["probes"]},
        "decode_within_goal": abs(decode) <= DECODE_GOAL, "prefill_within_goal": abs(prefill) <= PREFILL_GOAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    lines = [run(m, args.context, args.layers) for m in args.models.split(",")]
    for line in lines:
        print(json.dumps(line))
    ok = [x for x in lines if "error" not in x]
    print(json.dumps({
        "models": len(lines), "decode_goal": DECODE_GOAL, "prefill_goal": PREFILL_GOAL,
        "all_within_goal": len(ok) == len(lines) and all(x["decode_within_goal"] and x["prefill_within_goal"] for x in ok),
        "all_stable": all(x.get("stable") for x in ok), "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
