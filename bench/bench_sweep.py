"""Benchmark for `kvplan estimate`'s own sweeps with --gpu: 29,952 points, each a full plan.

The sweep: Llama-3.1-8B on every GPU of the catalog (26) x --tp 1,2,4,8 x --kv-cache-dtype auto,fp8 x 12 contexts
x 12 batches = 29,952 (GPU, tp, KV dtype, context, batch) points, each with estimate's every figure (capacity,
vLLM's pool and log lines, decode step, prefill, cost). Timed: the points as `kvplan estimate` computes them
(`kvplan.plan.pipeline.sweep` per GPU, KV dtype and tp, as the CLI loops), in CPU seconds (`time.process_time`),
the median of ROUNDS runs after one warm-up; then their records (`Answer.to_dict`, what --format json prints);
then the same sweep as one CLI process (`--format csv`, wall and CPU seconds), as a user runs it.
Prints one JSON line last.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from _child import child_seconds

ROUNDS = 3
MODEL = "llama-3.1-8b"
TPS, DTYPES = (1, 2, 4, 8), ("auto", "fp8")
CONTEXTS = (1024, 2048, 3000, 4096, 5000, 6000, 7000, 8192, 16384, 32768, 65536, 131072)
BATCHES = (1, 2, 3, 4, 5, 7, 8, 16, 32, 64, 128, 256)


def _points():
    from kvplan.plan.gpus import load_gpu_catalog
    from kvplan.plan.pipeline import Settings, sweep
    from kvplan.sources.catalog import resolve_spec

    spec = resolve_spec(MODEL, fast=True)
    gpus = list(load_gpu_catalog())
    base = Settings()
    return gpus, lambda: [a for g in gpus for d in DTYPES for t in TPS
                          for a in sweep(spec, "vllm", base._replace(gpu=g, kv_cache_dtype=d, tp=t), CONTEXTS, BATCHES)]


def sweep_cpu_seconds() -> dict:
    gpus, run = _points()
    answers = run()  # warm-up: the catalogs read, the modules imported
    sweep_s, records_s = [], []
    for _ in range(ROUNDS):
        start = time.process_time()
        answers = run()
        sweep_s.append(time.process_time() - start)
        start = time.process_time()
        for a in answers:
            a.to_dict()
        records_s.append(time.process_time() - start)
    points = len(answers)
    return {"points": points, "gpus": len(gpus), "sweep_cpu_s": round(statistics.median(sweep_s), 3),
            "records_cpu_s": round(statistics.median(records_s), 3),
            "us_per_point": round(statistics.median(sweep_s) / points * 1e6, 1)}


def cli_seconds(gpus: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of the same sweep as one `python -m kvplan estimate ... -f csv` process."""
    cmd = [sys.executable, "-m", "kvplan", "estimate", MODEL, "--gpu", ",".join(gpus), "--tp", ",".join(map(str, TPS)),
           "--kv-cache-dtype", ",".join(DTYPES), "--context", ",".join(map(str, CONTEXTS)),
           "--batch", ",".join(map(str, BATCHES)), "-f", "csv"]
    return child_seconds(cmd)


def main() -> None:
    result = sweep_cpu_seconds()
    wall, cpu = cli_seconds(_points()[0])
    result.update({"cli_wall_s": round(wall, 3), "cli_cpu_s": round(cpu, 3), "python": sys.version.split()[0]})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
