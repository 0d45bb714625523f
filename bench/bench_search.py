"""Benchmark for `kvplan search`: 100,000 candidate deployments evaluated in under 1 s of CPU.

The space: Llama-3.1-70B at 10 requests/s of 2,048 + 256 tokens, TTFT <= 500 ms, TPOT <= 50 ms, over every GPU
of the catalog x tp 1, 2, 4, 8 x pp 1, 2 x KV auto, fp8 x --max-num-seqs 1 .. 240 (26 x 4 x 2 x 2 x 240 =
99,840 candidates). Timed: `kvplan.plan.search.search`, the whole search (the numpy screen of every
candidate, then the Pareto front's rows recomputed through estimate's pipeline), in CPU seconds
(`time.process_time`, less disturbed by other processes than the wall clock), the median of ROUNDS runs after
one warm-up (the spec and GPU catalogs read, the modules imported); the screen alone beside it. Then the same
search end to end through the CLI as JSON, one fresh process (wall and CPU seconds), as a user runs it.
Prints one JSON line last.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from _child import child_seconds

ROUNDS = 5
MODEL = "llama-3.1-70b"
SEQS = tuple(range(1, 241))
TPS, PPS, DTYPES = (1, 2, 4, 8), (1, 2), ("auto", "fp8")


def _inputs():
    from kvplan.plan import search as core
    from kvplan.plan.gpus import load_gpu_catalog
    from kvplan.plan.pipeline import Settings
    from kvplan.sources.catalog import resolve_spec

    spec = resolve_spec(MODEL, fast=True)
    workload = core.fixed_workload(2048, 256, 10.0)
    space = core.Space(tuple(load_gpu_catalog().items()), TPS, PPS, DTYPES, SEQS)
    settings = Settings(context=None, prompt_tokens=2048, output_tokens=256, requests_per_s=10.0)
    return core, spec, workload, core.Targets(0.5, 0.05), space, settings


def search_cpu_seconds() -> dict:
    core, spec, workload, targets, space, settings = _inputs()
    result = core.search(spec, "vllm", workload, targets, space, settings)  # warm-up
    full, screen = [], []
    for _ in range(ROUNDS):
        start = time.process_time()
        result = core.search(spec, "vllm", workload, targets, space, settings)
        full.append(time.process_time() - start)
        start = time.process_time()
        core.screen(spec, "vllm", workload, targets, space, settings)
        screen.append(time.process_time() - start)
    first = result.rows[0]
    return {
        "candidates": space.size,
        "feasible": result.feasible,
        "front_rows": len(result.rows),
        "search_cpu_s": round(statistics.median(full), 4),
        "screen_cpu_s": round(statistics.median(screen), 4),
        "candidates_per_cpu_s": round(space.size / statistics.median(full)),
        "chosen": f"{first.gpu} tp {first.tensor_parallel_size} pp {first.pipeline_parallel_size} "
                  f"KV {first.kv_cache_dtype} --max-num-seqs {first.max_num_seqs}: {first.gpus} GPUs, "
                  f"${first.usd_per_million_tokens:.4f} / 1M tokens",
    }


def cli_seconds() -> tuple[float, float]:
    """(wall, CPU) seconds of the same search as one `python -m kvplan search ... -f json` process."""
    cmd = [sys.executable, "-m", "kvplan", "search", MODEL, "--requests-per-s", "10", "--prompt-tokens", "2048",
           "--output-tokens", "256", "--ttft-ms", "500", "--tpot-ms", "50", "--tp", "1,2,4,8", "--pp", "1,2",
           "--kv-cache-dtype", "auto,fp8", "--max-num-seqs", ",".join(map(str, SEQS)), "-f", "json"]
    return child_seconds(cmd)


def main() -> None:
    result = search_cpu_seconds()
    result["goal_cpu_s"] = 1.0
    wall, cpu = cli_seconds()
    result["cli_wall_s"], result["cli_cpu_s"] = round(wall, 3), round(cpu, 3)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
