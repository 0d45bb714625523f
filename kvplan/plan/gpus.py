"""Accelerators: the `GPU` model, the shipped catalog, and GPUs a user describes.

A `GPU` holds what capacity planning needs from a device: total memory exactly as
the runtime reports it (`memory_bytes`; NVML's total for NVIDIA, so an H100 80GB
is 81559 MiB, not 80 GB), peak DRAM bandwidth in GB/s (1e9 B/s), dense BF16 and
FP8 tensor TFLOPS, a default $ per device-hour, and where each figure came from.

The catalog is `kvplan/data/gpus.yaml`, shipped inside the package. A user adds a
GPU in a YAML file with the same fields, or overrides one with flags
(`--gpu-memory`, `--gpu-bandwidth`, `--usd-per-hour`, `--gpu-bf16-tflops`), which
`custom_gpu` turns into a new object; nothing is ever mutated.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvplan.sources.catalog import broken_link, did_you_mean, load_model, read_yaml
from kvplan.errors import InputError
from kvplan.model.spec import NonNegativeFloat, NotBoolean, PositiveFloat  # numbers that refuse a boolean
from kvplan.units import fmt_bytes, gpu_memory_problem, not_a_boolean, parse_bytes, parse_gpu_memory

GPU_CATALOG_PATH = Path(__file__).resolve().parent / "data" / "gpus.yaml"

SLUG_PATTERN = r"^[a-z0-9][a-z0-9.\-]*$"
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, max_length=60)]
Text = Annotated[str, Field(min_length=1)]


class GPU(BaseModel):
    """One accelerator as the runtime sees it: one entry = one device (an MI250X card is two)."""

    # allow_inf_nan: a `.inf` bandwidth or TFLOPS would make a decode step take no time
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: Slug
    display_name: Text
    vendor: Text
    memory_bytes: Annotated[int, Field(gt=0)]  # runtime total, exact bytes; YAML may write "81559MiB"
    memory_bandwidth_gbps: PositiveFloat  # peak DRAM, GB/s = 1e9 B/s
    bf16_tflops: NonNegativeFloat  # dense; FP16 where there are no BF16 tensor cores (see notes); 0 = unknown
    fp8_tflops: Optional[PositiveFloat]  # dense; None = no FP8 tensor support
    usd_per_hour: NonNegativeFloat  # per device-hour; 0 = not given
    memory_source: Text  # "nvml: ...", "rocm-smi: ...", or how the figure was derived
    sources: Annotated[tuple[Text, ...], Field(min_length=1)]
    confidence: Literal["high", "medium", "low"]
    notes: Optional[str] = None
    aliases: tuple[Slug, ...] = ()
    nvml_name: Optional[str] = None  # the name NVML / torch report, to match a detected device
    memory_label: Optional[str] = None  # marketing capacity, e.g. "80 GB HBM3" (a label, never used in sums)
    usd_per_hour_source: Optional[str] = None
    achieved_copy_gbps: Optional[PositiveFloat] = None  # measured large device-local copy, read + write bytes
    achieved_copy_source: Optional[str] = None
    interconnect: Optional[str] = None  # NVLink / NVSwitch, PCIe, Infinity Fabric
    link_gbps: Optional[PositiveFloat] = None  # GPU-to-GPU, per direction, GB/s
    link_latency_us: Optional[NonNegativeFloat] = None  # one ring step
    link_source: Optional[str] = None

    @field_validator("memory_bytes", mode="before")
    @classmethod
    def _size_string(cls, value: Any) -> Any:
        """Accept '81559MiB' or '80GB' as well as an integer count of bytes; refuse what no GPU has
        (below 1 GiB: a bare `45` is 45 bytes, most likely meant as 45GiB; see kvplan.units)."""
        not_a_boolean(value)
        nbytes = value
        if isinstance(value, str):
            try:
                nbytes = parse_bytes(value, "memory_bytes")
            except InputError as exc:
                raise ValueError(exc.message.removeprefix("memory_bytes ")) from None
        if isinstance(nbytes, int) and nbytes > 0:  # 0, negatives, floats: the field's own checks
            problem = gpu_memory_problem(value, nbytes)
            if problem:
                raise ValueError(f"{str(value).strip()}: {problem}")
        return nbytes

    @model_validator(mode="after")
    def _consistent(self) -> "GPU":
        if self.name in self.aliases:
            raise ValueError(f"aliases: {self.name!r} repeats the name")
        if self.link_gbps is not None and self.link_source is None:
            raise ValueError("link_source: say where link_gbps comes from")
        if self.achieved_copy_gbps is not None:
            if self.achieved_copy_source is None:
                raise ValueError("achieved_copy_source: say where achieved_copy_gbps was measured")
            if self.achieved_copy_gbps > self.memory_bandwidth_gbps:
                raise ValueError("achieved_copy_gbps is above memory_bandwidth_gbps, the peak")
        return self

    @property
    def lookup_keys(self) -> tuple[str, ...]:
        """Every lower-case name this GPU answers to: slug, aliases, NVML name."""
        names = (self.name, *self.aliases) + ((self.nvml_name,) if self.nvml_name else ())
        return tuple(n.lower() for n in names)


# ---------------------------------------------------------------- the catalog


class _CatalogFile(BaseModel):
    """The shape of gpus.yaml; errors come out as `file:line: gpus.3.field: message`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Annotated[Literal[1], NotBoolean] = 1  # `true` is not 1
    gpus: tuple[GPU, ...]


@lru_cache(maxsize=None)
def _read_catalog(path: Path) -> tuple[GPU, ...]:
    data, line_of = read_yaml(path)
    gpus = load_model(_CatalogFile, path, data, line_of).gpus
    seen: dict[str, str] = {}
    for i, gpu in enumerate(gpus):
        fields = [("name",), *(("aliases", j) for j in range(len(gpu.aliases))), ("nvml_name",)]
        for key, field in zip(gpu.lookup_keys, fields):
            if seen.get(key, gpu.name) != gpu.name:
                loc = ("gpus", i, *field)
                where = ".".join(str(p) for p in loc)
                raise InputError(f"{path}:{line_of(loc)}: {where}: {key!r} is already used by {seen[key]!r}")
            seen[key] = gpu.name
    return gpus


def load_gpu_catalog(path: Path = GPU_CATALOG_PATH) -> dict[str, GPU]:
    """The catalog, name -> GPU, in file order (read once per process)."""
    return {gpu.name: gpu for gpu in _read_catalog(Path(path))}


@lru_cache(maxsize=None)
def _index(path: Path) -> dict[str, GPU]:
    return {key: gpu for gpu in _read_catalog(path) for key in gpu.lookup_keys}


def load_gpu_file(path: Path) -> GPU:
    """A user's GPU: one mapping of GPU fields at the top level of a YAML file.

    `kvplan gpus NAME -f json` saved as a file reads back: its "schema_version" (kvplan.schema)
    is the document's, not a GPU field, and is checked, then set aside.
    """
    from kvplan.schema import SCHEMA_VERSION

    data, line_of = read_yaml(path)
    if isinstance(data, dict) and "schema_version" in data:
        version = data["schema_version"]
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise InputError(f"{path}:{line_of(('schema_version',))}: schema_version: {version!r} is not "
                             f"{SCHEMA_VERSION}, the version of kvplan's JSON this kvplan reads")
        data = {k: v for k, v in data.items() if k != "schema_version"}
    return load_model(GPU, path, data, line_of)


def resolve_gpu(name_or_path: str, catalog_path: Path = GPU_CATALOG_PATH) -> GPU:
    """A catalog name, alias or NVML name (any case), or a path to a YAML file holding one GPU."""
    ref = name_or_path.strip()
    path = Path(ref).expanduser()
    if ref.endswith((".yaml", ".yml")) or "/" in ref or "\\" in ref:
        if path.is_file():
            return load_gpu_file(path)
        if path.is_dir():
            raise InputError(f"{ref}: is a folder, not a GPU YAML file")
        if broken_link(path):
            raise InputError(f"{ref}: {broken_link(path)}; point it at a GPU YAML file")
        raise InputError(f"{ref}: no such GPU file")
    found = _index(Path(catalog_path)).get(ref.lower())
    if found is not None:
        return found
    if path.is_file():
        return load_gpu_file(path)
    if path.is_dir():
        raise InputError(f"{ref}: is a folder, not a GPU name or GPU YAML file (`kvplan gpus` lists the catalog)")
    choices = sorted({key for gpu in _read_catalog(Path(catalog_path)) for key in (gpu.name, *gpu.aliases)})
    # Names that start with what was typed come first: 'a100' should offer the A100s, not 'h100'.
    prefixed = [c for c in choices if c.startswith(ref.lower())]
    raise InputError(
        f"unknown GPU {ref!r}{did_you_mean(ref, prefixed or choices)} "
        "(`kvplan gpus` lists the catalog; a path to a GPU YAML file also works)"
    )


# ------------------------------------------------------------- user overrides


def custom_gpu(
    base: Optional[GPU],
    memory_bytes: Optional[int],
    bandwidth_gbps: Optional[float],
    usd_per_hour: Optional[float],
    bf16_tflops: Optional[float] = None,
) -> GPU:
    """Apply --gpu-memory / --gpu-bandwidth / --usd-per-hour / --gpu-bf16-tflops to `base` (a new GPU).

    With no base, memory and bandwidth are required; TFLOPS and price not given
    are 0 ("unknown"), and the notes say so.
    """
    _check_flag("--gpu-memory", memory_bytes, allow_zero=False)
    if memory_bytes is not None:
        parse_gpu_memory(memory_bytes, "--gpu-memory")  # 1 GiB .. 1 PiB, or an InputError saying why
    _check_flag("--gpu-bandwidth", bandwidth_gbps, allow_zero=False)
    _check_flag("--usd-per-hour", usd_per_hour, allow_zero=True)
    _check_flag("--gpu-bf16-tflops", bf16_tflops, allow_zero=False)
    given = {
        "--gpu-memory": memory_bytes,
        "--gpu-bandwidth": bandwidth_gbps,
        "--usd-per-hour": usd_per_hour,
        "--gpu-bf16-tflops": bf16_tflops,
    }
    flags = [flag for flag, value in given.items() if value is not None]
    if base is None:
        missing = [flag for flag in ("--gpu-memory", "--gpu-bandwidth") if given[flag] is None]
        if missing:
            raise InputError(
                f"a GPU not in the catalog needs {' and '.join(missing)}; or start from a catalog GPU "
                "(`kvplan gpus` lists them) and override only what differs"
            )
        unknown = [
            what for what, flag in (("bf16 TFLOPS", "--gpu-bf16-tflops"), ("price", "--usd-per-hour")) if given[flag] is None
        ]
        return GPU(
            name="custom",
            display_name="custom GPU (" + ", ".join(flags) + ")",
            vendor="unknown",
            memory_bytes=memory_bytes,
            memory_bandwidth_gbps=bandwidth_gbps,
            bf16_tflops=bf16_tflops or 0.0,
            fp8_tflops=None,
            usd_per_hour=usd_per_hour or 0.0,
            usd_per_hour_source="--usd-per-hour" if usd_per_hour is not None else None,
            memory_source="--gpu-memory",
            sources=("command-line flags",),
            confidence="low",
            notes=("not given, taken as 0: " + ", ".join(unknown)) if unknown else None,
        )
    if not flags:
        return base
    update: dict[str, Any] = {"display_name": f"{base.display_name} [overridden: {', '.join(flags)}]"}
    if memory_bytes is not None:
        update.update(memory_bytes=memory_bytes, memory_source="--gpu-memory", memory_label=None)
    if bandwidth_gbps is not None:
        update["memory_bandwidth_gbps"] = bandwidth_gbps
        if base.achieved_copy_gbps is not None:  # measured against the old peak: no longer meaningful
            update.update(achieved_copy_gbps=None, achieved_copy_source=None)
    if usd_per_hour is not None:
        update.update(usd_per_hour=usd_per_hour, usd_per_hour_source="--usd-per-hour")
    if bf16_tflops is not None:
        update["bf16_tflops"] = bf16_tflops
    return GPU.model_validate({**base.model_dump(), **update})


def override_label(gpu: GPU, gpu_memory: Optional[str], gpu_bandwidth: Optional[float], usd_per_hour: Optional[float],
                   gpu_bf16_tflops: Optional[float] = None) -> str:
    """The name a row shows for `gpu` with the flags that changed it: 'h100-sxm (40.00 GiB)'.

    A catalog name alone would claim the catalog's figures; the overridden ones are
    named beside it. A GPU made from flags only is 'custom', as before.
    """
    if gpu.name == "custom":
        return gpu.name
    changed = []
    if gpu_memory is not None:
        changed.append(fmt_bytes(gpu.memory_bytes))
    if gpu_bandwidth is not None:
        changed.append(f"{gpu.memory_bandwidth_gbps:,g} GB/s")
    if gpu_bf16_tflops is not None:
        changed.append(f"{gpu.bf16_tflops:,g} bf16 TFLOPS")
    if usd_per_hour is not None:
        changed.append(f"${gpu.usd_per_hour:,.2f}/h")
    return f"{gpu.name} ({', '.join(changed)})" if changed else gpu.name


def _check_flag(flag: str, value: Optional[float], allow_zero: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not math.isfinite(value):
        raise InputError(f"{flag} {value!r} is not a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{flag} {value!r} must be {'0 or more' if allow_zero else 'more than 0'}")


def gpu_from_options(
    gpu: Optional[str],
    gpu_memory: Optional[str],
    gpu_bandwidth: Optional[float],
    usd_per_hour: Optional[float],
    gpu_bf16_tflops: Optional[float] = None,
) -> Optional[GPU]:
    """The GPU the CLI flags describe: --gpu NAME|FILE plus overrides; None if no flag was given.

    --gpu-memory takes a size with its unit ("24GiB", "80GB", "81559MiB") or bytes, at least 1 GiB.
    """
    memory = parse_gpu_memory(gpu_memory, "--gpu-memory") if gpu_memory is not None else None
    base = resolve_gpu(gpu) if gpu is not None else None
    if base is None and all(v is None for v in (memory, gpu_bandwidth, usd_per_hour, gpu_bf16_tflops)):
        return None
    return custom_gpu(base, memory, gpu_bandwidth, usd_per_hour, gpu_bf16_tflops)
