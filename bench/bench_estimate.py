"""Benchmarks for `kvplan estimate`: cold start and a 100,000-point sweep.

Cold start: `python -m kvplan estimate llama-3.1-8b` (JSON and table) in fresh
processes against a process that merely imports typer, rich, pydantic and yaml
(goal: <= 1.25x). Runs are interleaved so that load on the machine hits both
sides alike; each side reports the median wall time and the median CPU time
(user + system of the child, less disturbed by other processes). The ratio
uses CPU time. Sweep: computing 100,000 (context, batch) points of one layout
(goal: <= 1 s of CPU), and the same sweep end to end through the CLI as CSV.
Prints one JSON line last. The children run with bytecode caching on (PYTHONDONTWRITEBYTECODE removed from
their environment), as an installed kvplan runs: without .pyc files every start compiles kvplan's source,
which measures the source's length, not the start-up a user sees.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

from _child import child_seconds

ROUNDS = 21
# bytecode cached in a folder of its own (as bench/bench_inputs.py does), never beside the checkout's source
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
CHILD_ENV["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "kvplan-bench-pycache")
BASELINE = [sys.executable, "-c", "import typer, rich, pydantic, yaml"]
ESTIMATE_JSON = [sys.executable, "-m", "kvplan", "estimate", "llama-3.1-8b", "--format", "json"]
ESTIMATE_TABLE = [sys.executable, "-m", "kvplan", "estimate", "llama-3.1-8b"]


def run_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run."""
    return child_seconds(cmd, CHILD_ENV)


def cold_start() -> dict:
    commands = {"baseline": BASELINE, "json": ESTIMATE_JSON, "table": ESTIMATE_TABLE}
    for cmd in commands.values():
        run_once(cmd)  # warm the file cache
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    for _ in range(ROUNDS):
        for key, cmd in commands.items():
            samples[key].append(run_once(cmd))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in samples.items()}
    return {
        "baseline_wall_s": round(med["baseline"][0], 4),
        "baseline_cpu_s": round(med["baseline"][1], 4),
        "estimate_json_wall_s": round(med["json"][0], 4),
        "estimate_json_cpu_s": round(med["json"][1], 4),
        "estimate_table_wall_s": round(med["table"][0], 4),
        "estimate_table_cpu_s": round(med["table"][1], 4),
        "cold_start_ratio_json": round(med["json"][1] / med["baseline"][1], 3),
        "cold_start_ratio_table": round(med["table"][1] / med["baseline"][1], 3),
        "cold_start_goal_ratio": 1.25,
    }


def sweep_cpu_seconds(points: int = 100_000) -> float:
    from kvplan.model.layout import CacheLayout
    from kvplan.sources.catalog import resolve_spec
    from kvplan.model.formats import parse_format_pair

    spec = resolve_spec("gemma-3-27b", fast=True)  # a hybrid: two layer kinds per point
    start = time.process_time()
    layout = CacheLayout(spec, parse_format_pair("bf16", spec.dtype), block_size=16)
    results = [layout.at(c, b) for c in range(1, points // 10 + 1) for b in range(1, 11)]
    elapsed = time.process_time() - start
    assert len(results) == points
    return elapsed


def cli_sweep_wall_seconds(points: int = 100_000) -> float:
    contexts = ",".join(str(c) for c in range(1, points // 10 + 1))
    cmd = [sys.executable, "-m", "kvplan", "estimate", "gemma-3-27b", "-c", contexts, "-b", "1,2,3,4,5,6,7,8,9,10", "-f", "csv"]
    return run_once(cmd)[0]


def main() -> None:
    result = cold_start()
    result["sweep_100k_points_cpu_s"] = round(sweep_cpu_seconds(), 4)
    result["sweep_goal_s"] = 1.0
    result["cli_sweep_100k_csv_wall_s"] = round(cli_sweep_wall_seconds(), 3)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
