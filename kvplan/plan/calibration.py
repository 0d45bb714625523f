"""Feeding `kvplan measure` results back into the planner (`--calibration report.json`)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kvplan.errors import InputError
from kvplan.userfiles import loads_json, read_text


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a `kvplan measure -o` JSON report says about decode bandwidth."""

    path: str
    achieved_gbps: float  # median over the report's runs, 1e9 B/s
    device: str  # "cpu" or "cuda:N"
    device_name: str  # as torch names it (NVML's name on NVIDIA GPUs)


def read_calibration(path: str) -> Calibration:
    """The median achieved decode bandwidth and the device of a `kvplan measure -o` JSON report.

    Each run of the report carries `achieved_gbps`: the bytes a decode step read
    (weights + KV) over its measured median time. The planner divides it by the
    chosen GPU's peak to get the bandwidth efficiency it applies to decode.
    """
    file = Path(path)
    try:
        data = loads_json(read_text(file))
    except FileNotFoundError:
        from kvplan.sources.catalog import broken_link

        problem = broken_link(file)
        raise InputError(f"--calibration {path}: {problem}" if problem else f"--calibration {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"--calibration {path}: a folder, not a kvplan measure JSON report") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--calibration {path}: not a kvplan measure JSON report ({getattr(exc, 'strerror', None) or exc})") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    values = [
        float(run["achieved_gbps"])
        for run in (runs if isinstance(runs, list) else [])
        if isinstance(run, dict) and isinstance(run.get("achieved_gbps"), (int, float)) and run["achieved_gbps"] > 0
    ]
    if not values:
        raise InputError(
            f"--calibration {path}: no run with 'achieved_gbps' found; "
            "pass a report written by `kvplan measure -o FILE`"
        )
    assert isinstance(data, dict)
    device = str(data.get("device") or "")
    name = str(data.get("device_name") or device or "unknown device")
    return Calibration(path, statistics.median(values), device, name)


@dataclass(frozen=True, slots=True)
class LogCalibration:
    """What a `kvplan explain LOG --save-calibration FILE` file says: vLLM's measured budget terms (bytes)."""

    path: str
    activation_bytes: int
    non_torch_bytes: int


def read_log_calibration(path: str) -> Optional[LogCalibration]:
    """The activation peak and non-torch memory of an `explain --save-calibration` file; None for any other file
    (a `kvplan measure` report is read by `read_calibration`, which also words every unreadable file)."""
    try:
        data = loads_json(read_text(Path(path)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    from kvplan.plan.explain import CALIBRATION_KIND

    if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND:
        return None
    values = [data.get("activation_bytes"), data.get("non_torch_bytes")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise InputError(f"--calibration {path}: 'activation_bytes' and 'non_torch_bytes' must be whole bytes >= 0; "
                         "write it again with `kvplan explain LOG --save-calibration FILE`")
    return LogCalibration(path, values[0], values[1])


def bandwidth_efficiency(calibration: Calibration, gpu_name: str, peak_gbps: float, nvml_name: Optional[str]) -> float:
    """Achieved / peak on the GPU the report was measured on; InputError where the report
    cannot speak for `gpu_name`: measured on the CPU, on another GPU, or faster than its peak."""
    where = f"--calibration {calibration.path}"
    if calibration.device == "cpu":
        raise InputError(
            f"{where} was measured on the CPU ({calibration.device_name}), not on {gpu_name}: "
            f"run `kvplan measure MODEL --device cuda --json FILE` on that GPU"
        )
    efficiency = calibration.achieved_gbps / peak_gbps
    apply_anyway = f"pass --bandwidth-efficiency {min(efficiency, 1.0):.2f} to apply it anyway"
    if nvml_name is not None and calibration.device_name.strip().lower() != nvml_name.lower():
        raise InputError(
            f"{where} was measured on {calibration.device_name}, not on {gpu_name} ({nvml_name}); "
            f"its {calibration.achieved_gbps:,.0f} GB/s over {gpu_name}'s {peak_gbps:,.0f} GB/s peak is "
            f"{efficiency:.2f}: {apply_anyway}"
        )
    if efficiency > 1.0:
        raise InputError(
            f"{where}: {calibration.achieved_gbps:,.0f} GB/s achieved is above {gpu_name}'s "
            f"{peak_gbps:,.0f} GB/s peak, so the report is not from this GPU (or its peak is wrong)"
        )
    return efficiency
