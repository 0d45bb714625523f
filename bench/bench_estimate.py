"""Benchmarks for `kvplan estimate`: cold start and a 100,000-point sweep.

Cold start: the median wall time of `python -m kvplan estimate llama-3.1-8b
--format json` in fresh processes, against the median time of a process that
merely imports typer, rich, pydantic and yaml (goal: <= 1.25x). Sweep: the
time to compute 100,000 (context, batch) points of one layout (goal: <= 1 s).
Prints one JSON line last.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

RUNS = 15


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_wall(cmd: list[str]) -> float:
    wall(cmd)  # warm the file cache
    return statistics.median(wall(cmd) for _ in range(RUNS))


def sweep_seconds(points: int = 100_000) -> float:
    from kvplan.calc import CacheLayout
    from kvplan.catalog import resolve_spec
    from kvplan.formats import parse_format_pair

    spec = resolve_spec("llama-3.1-8b")
    start = time.perf_counter()
    layout = CacheLayout(spec, parse_format_pair("bf16", spec.dtype), block_size=16)
    contexts = range(1, points // 10 + 1)
    results = [layout.at(c, b) for c in contexts for b in range(1, 11)]
    elapsed = time.perf_counter() - start
    assert len(results) == points
    return elapsed


def main() -> None:
    baseline = median_wall([sys.executable, "-c", "import typer, rich, pydantic, yaml"])
    estimate = median_wall([sys.executable, "-m", "kvplan", "estimate", "llama-3.1-8b", "--format", "json"])
    table = median_wall([sys.executable, "-m", "kvplan", "estimate", "llama-3.1-8b"])
    sweep = sweep_seconds()
    print(
        json.dumps(
            {
                "baseline_import_s": round(baseline, 4),
                "estimate_json_s": round(estimate, 4),
                "estimate_table_s": round(table, 4),
                "cold_start_ratio_json": round(estimate / baseline, 3),
                "cold_start_ratio_table": round(table / baseline, 3),
                "cold_start_goal_ratio": 1.25,
                "sweep_100k_points_s": round(sweep, 4),
                "sweep_goal_s": 1.0,
            }
        )
    )


if __name__ == "__main__":
    main()
