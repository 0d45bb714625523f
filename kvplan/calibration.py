"""Feeding `kvplan measure` results back into the planner (`--calibration report.json`)."""

from __future__ import annotations

import json
from pathlib import Path

from kvplan.errors import InputError


def bandwidth_efficiency_from_report(path: str) -> float:
    """The share of peak bandwidth a measured decode step reached.

    A `kvplan measure --json` report gives, per point, the bytes a decode step
    read and its measured time; efficiency = achieved GB/s / the device's peak
    (`peak_bandwidth_gbps`) when the report names it, else / its measured copy
    bandwidth. The median over the report's points is used.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--calibration {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--calibration {path}: not a kvplan measure JSON report ({exc})") from None
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list) or not points:
        points = [data] if isinstance(data, dict) else []
    values = []
    for point in points:
        if not isinstance(point, dict):
            continue
        eff = point.get("bandwidth_utilization")
        if isinstance(eff, (int, float)) and 0 < eff <= 1.5:
            values.append(float(eff))
    if not values:
        raise InputError(
            f"--calibration {path}: no 'bandwidth_utilization' reading found; "
            "pass a report written by `kvplan measure --json FILE`"
        )
    values.sort()
    median = values[len(values) // 2]
    return min(1.0, median)
