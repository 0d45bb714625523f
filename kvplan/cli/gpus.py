"""`kvplan gpus`: list the accelerator catalog, or show one GPU as kvplan will use it.

The override options (`--gpu-memory`, `--gpu-bandwidth`, `--usd-per-hour`,
`--gpu-bf16-tflops`) are the ones `kvplan estimate --gpu` takes; both pass them to
`kvplan.plan.gpus.gpu_from_options`, so `kvplan gpus NAME --usd-per-hour 2` shows the
GPU a plan would use.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kvplan.cli.options import O, flag_group
from kvplan.cli.render import OutputFormat
from kvplan.options import GPU_FIGURES

# ------------------------------------------------------------ options
FormatOpt = O.format(OutputFormat)


# The list is a summary: `kvplan gpus NAME` shows every field with its sources.
LIST_HEADERS = ["name", "memory", "GB/s", "bf16 TF", "fp8 TF", "$/h", "conf"]


def register(app: typer.Typer) -> None:
    """Add `gpus` to the kvplan app."""
    app.command(name="gpus")(gpus)


@flag_group("gpu_figures", GPU_FIGURES, after="gpu")
def gpus(
    gpu: Annotated[
        Optional[str],
        typer.Argument(metavar="GPU", help="Show one GPU: a catalog name, alias, NVML name or GPU YAML path.", show_default=False),
    ] = None,
    gpu_figures: dict = None,  # GPU_FIGURES: --gpu-memory, --gpu-bandwidth, --usd-per-hour, --gpu-bf16-tflops
    fmt: FormatOpt = OutputFormat.table,
    exact: O.bytes = False,
) -> None:
    """List the GPU catalog; with GPU or override flags, show that one GPU in full."""
    from kvplan.plan.gpus import gpu_from_options, load_gpu_catalog

    chosen = gpu_from_options(gpu, **gpu_figures)
    if chosen is None:
        _render_list(list(load_gpu_catalog().values()), fmt, exact)
    else:
        _render_one(chosen, fmt)


# ------------------------------------------------------------------ rendering


def _record(gpu) -> dict:
    """JSON-ready fields of a GPU (lists stay lists)."""
    return gpu.model_dump(mode="json")


def _flat(gpu) -> dict:
    """One CSV row: lists joined with '; '."""
    return {k: "; ".join(v) if isinstance(v, list) else v for k, v in _record(gpu).items()}


def _number(x: Optional[float]) -> str:
    """989.0 -> '989', 1638.4 -> '1,638.4', None -> '—'."""
    if x is None:
        return "—"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,}"


def _row(gpu, exact: bool) -> list[str]:
    from kvplan.cli import render

    return [
        gpu.name,
        render.size(gpu.memory_bytes, exact),
        _number(gpu.memory_bandwidth_gbps),
        _number(gpu.bf16_tflops),
        _number(gpu.fp8_tflops),
        f"{gpu.usd_per_hour:.2f}",
        gpu.confidence,
    ]


def _render_list(gpus: list, fmt: OutputFormat, exact: bool) -> None:
    from kvplan.cli import render

    if fmt is OutputFormat.json:
        render.write(render.to_json([_record(g) for g in gpus]))
    elif fmt is OutputFormat.csv:
        render.write(render.to_csv([_flat(g) for g in gpus]))
    elif fmt is OutputFormat.markdown:
        render.write(render.markdown_table(LIST_HEADERS, [_row(g, exact) for g in gpus]))
    else:
        title = f"{len(gpus)} accelerators · dense TFLOPS · `kvplan gpus NAME` for sources"
        render.console().print(render.rich_table(title, LIST_HEADERS, [_row(g, exact) for g in gpus], right_from=1))


def _render_one(gpu, fmt: OutputFormat) -> None:
    """Every field; memory always with exact bytes and MiB."""
    from kvplan.cli import render
    from kvplan.units import fmt_int

    if fmt is OutputFormat.json:
        render.write(render.to_json(_record(gpu)))
        return
    if fmt is OutputFormat.csv:
        render.write(render.to_csv([_flat(gpu)]))
        return
    fields = _record(gpu)
    rows = []
    for key, value in fields.items():
        if value is None or value == []:
            continue
        if key == "memory_bytes":
            mib = f" = {value // 2**20:,} MiB" if value % 2**20 == 0 else ""  # nvidia-smi's unit
            value = f"{fmt_int(value)} B = {render.size(value, False)}{mib}"
        elif isinstance(value, list):
            value = "\n".join(value)
        elif isinstance(value, float):
            value = _number(value)
        rows.append([key, str(value)])
    if fmt is OutputFormat.markdown:
        render.write(render.markdown_table(["field", "value"], [[k, v.replace("\n", "<br>")] for k, v in rows]))
    else:
        render.console().print(render.rich_table(gpu.display_name, ["field", "value"], rows, right_from=9))
