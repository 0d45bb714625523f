"""Benchmark for `kvplan check`: a 50-deployment plan in a fresh process (goal: <= 0.5 s).

The plan crosses 10 catalog models (dense, GQA, sliding-window, MoE, MLA,
hybrid SSM) with 5 GPUs, every deployment carrying all seven budgets. Reports the
median wall time of `python -m kvplan check PLAN --format json` over fresh
processes (what a CI step pays) and of the default table, the in-process time of reading, validating and
evaluating the plan, the median time of a process that only imports typer, rich,
pydantic and yaml (the floor), and whether torch was imported. Prints one JSON
line last.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 15
GOAL_S = 0.5

# (model, tp, pp, weights dtype): each split is one vLLM accepts for the model.
MODELS = [
    ("llama-3.1-8b", 1, 1, None),
    ("qwen3-8b", 1, 1, None),
    ("mistral-7b-v0.1", 1, 1, None),
    ("gemma-3-27b", 2, 1, None),
    ("qwen3-32b", 2, 1, None),
    ("llama-3.1-70b", 4, 1, None),
    ("mixtral-8x7b", 2, 1, None),
    ("deepseek-v3", 8, 1, "fp8"),
    ("gpt-oss-120b", 2, 1, "mxfp4"),
    ("jamba-v0.1", 2, 1, None),
]
GPUS = ["h100-sxm", "h200", "a100-80gb-sxm", "l40s", "b200"]


PROFILE_ENGINES = ["hf", "llama.cpp", "sglang", "trtllm"]


def plan_text(profiles: bool = False) -> str:
    """50 deployments; `profiles`: each under one of the engine profiles in turn (tp only where it has one)."""
    lines = ["version: 1", "deployments:"]
    n = 0
    for model, tp, pp, dtype in MODELS:
        for gpu in GPUS:
            entry = [f"  - name: {model}-{gpu}", f"    model: {model}", f"    gpu: {gpu}"]
            if profiles:
                engine = PROFILE_ENGINES[n % len(PROFILE_ENGINES)]
                entry += [f"    engine: {engine}", f"    tp: {tp if engine in ('sglang', 'trtllm') else 1}"]
            else:
                entry += [f"    tp: {tp}", f"    pp: {pp}"]
            n += 1
            lines += entry + [
                "    context: 8k",
                "    batch: 4",
            ]
            if dtype:
                lines.append(f"    dtype: {dtype}")
            lines += [
                "    budgets:",
                "      min_concurrent_sequences: 1",
                "      max_kv_bytes_per_token: 2MiB",
                "      min_headroom_pct: 0",
                "      max_decode_step_ms: 1000",
                "      max_usd_per_million_output_tokens: 1000",
                "      max_usd_per_million_input_tokens: 1000",
                "      min_max_context_tokens: 1k",
            ]
    return "\n".join(lines) + "\n"


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1 = a budget failed: still a full evaluation
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def median_wall(cmd: list[str]) -> float:
    wall(cmd)  # warm the file cache
    return statistics.median(wall(cmd) for _ in range(RUNS))


def in_process_s(plan: Path) -> float:
    from kvplan.cli.gate import run_check

    run_check(plan, str(plan))  # warm: catalogs read, modules imported
    start = time.perf_counter()
    report = run_check(plan, str(plan))
    elapsed = time.perf_counter() - start
    assert len(report.deployments) == len(MODELS) * len(GPUS)
    return elapsed


def torch_imported(plan: Path) -> bool:
    probe = (
        "import sys; from kvplan.cli.app import main; sys.argv = ['kvplan', 'check', sys.argv[1], '-f', 'json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(str('torch' in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(plan)], capture_output=True, text=True)
    return done.stderr.strip().endswith("True")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        plan = Path(folder) / "plan.yaml"
        plan.write_text(plan_text(), encoding="utf-8")
        baseline = median_wall([sys.executable, "-c", "import typer, rich, pydantic, yaml"])
        check = median_wall([sys.executable, "-m", "kvplan", "check", str(plan), "--format", "json"])
        table = median_wall([sys.executable, "-m", "kvplan", "check", str(plan)])
        inside = in_process_s(plan)
        torch = torch_imported(plan)
        profile_plan = Path(folder) / "profiles.yaml"
        profile_plan.write_text(plan_text(profiles=True), encoding="utf-8")
        profile_json = median_wall([sys.executable, "-m", "kvplan", "check", str(profile_plan), "--format", "json"])
        profile_table = median_wall([sys.executable, "-m", "kvplan", "check", str(profile_plan)])
    print(
        json.dumps(
            {
                "deployments": len(MODELS) * len(GPUS),
                "check_50_json_s": round(check, 4),
                "check_goal_s": GOAL_S,
                "meets_goal": check <= GOAL_S,
                "check_50_table_s": round(table, 4),
                "check_50_engine_profiles_json_s": round(profile_json, 4),
                "check_50_engine_profiles_table_s": round(profile_table, 4),
                "in_process_evaluation_s": round(inside, 4),
                "baseline_import_s": round(baseline, 4),
                "torch_imported": torch,
            }
        )
    )


if __name__ == "__main__":
    main()
