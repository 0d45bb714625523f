"""Feeding `kvplan measure` results back into the planner (`--calibration report.json`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from kvplan.errors import InputError


def measured_bandwidth(path: str) -> tuple[float, str]:
    """(median achieved decode bandwidth in GB/s, device name) from a `kvplan measure --json` report.

    Each run of the report carries `achieved_gbps`: the bytes a decode step read
    (weights + KV) over its measured median time. The planner divides it by the
    chosen GPU's peak to get the bandwidth efficiency it applies to decode.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--calibration {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--calibration {path}: not a kvplan measure JSON report ({exc})") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    values = [
        float(run["achieved_gbps"])
        for run in (runs if isinstance(runs, list) else [])
        if isinstance(run, dict) and isinstance(run.get("achieved_gbps"), (int, float)) and run["achieved_gbps"] > 0
    ]
    if not values:
        raise InputError(
            f"--calibration {path}: no run with 'achieved_gbps' found; "
            "pass a report written by `kvplan measure --json FILE`"
        )
    device = str(data.get("device_name") or data.get("device") or "unknown device")
    return statistics.median(values), device


def bandwidth_efficiency(achieved_gbps: float, peak_gbps: float) -> float:
    """Achieved / peak, capped at 1 (a report from a faster device cannot exceed this GPU's peak)."""
    return min(1.0, achieved_gbps / peak_gbps)
