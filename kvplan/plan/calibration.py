"""Feeding `kvplan measure` results back into the planner (`--calibration report.json`).

Three kinds of file: a `kvplan measure -o` report (kvplan's own torch decode: `read_calibration`), an
`explain --save-calibration` file (vLLM's logged budget terms: `read_log_calibration`) and a
`measure --engine vllm --save-calibration` file (the real engine's decode bandwidth: `read_engine_calibration`)."""

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


# what `measure --engine vllm --save-calibration` writes (kvplan.measure.engine_vllm.calibration)
ENGINE_CALIBRATION_KIND = "kvplan engine calibration"


@dataclass(frozen=True, slots=True)
class EngineCalibration:
    """The decode bandwidth a real engine achieved: kvplan's bytes per decode step over its measured TPOT."""

    path: str
    decode_bandwidth_gbps: float  # 1e9 B/s
    engine: str
    device: str


def read_engine_calibration(path: str) -> Optional[EngineCalibration]:
    """A `measure --engine ... --save-calibration` file; None for any other file (read by the other readers)."""
    try:
        data = loads_json(read_text(Path(path)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("kind") != ENGINE_CALIBRATION_KIND:
        return None
    value = data.get("decode_bandwidth_gbps")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(f"--calibration {path}: 'decode_bandwidth_gbps' must be a number above 0; write it again "
                         "with `kvplan measure MODEL --engine vllm --concurrency N --save-calibration FILE`")
    return EngineCalibration(path, float(value), str(data.get("engine") or "?"), str(data.get("device") or "?"))


def engine_bandwidth_efficiency(calibration: EngineCalibration, gpu_name: str, peak_gbps: float) -> float:
    """Measured / peak: the efficiency that makes the planner's decode step the engine's measured one on a
    device of `peak_gbps` (the machine it ran on, as --gpu or --gpu-bandwidth describes it). Above 1 is refused:
    the engine read faster than the device's peak, so the file is not from this device."""
    efficiency = calibration.decode_bandwidth_gbps / peak_gbps
    if efficiency > 1.0:
        raise InputError(
            f"--calibration {calibration.path}: {calibration.engine} decoded at {calibration.decode_bandwidth_gbps:,.3g} "
            f"GB/s, above {gpu_name}'s {peak_gbps:,.3g} GB/s peak, so it was not measured on this device"
        )
    return efficiency
