"""The kvplan command line: parse flags, call one core function, render.

torch is never imported here; `kvplan measure` imports it inside its command.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from kvplan.errors import InputError, KvplanError
from kvplan.render import OutputFormat

app = typer.Typer(
    name="kvplan",
    help="Size the KV cache of LLMs exactly, plan GPUs for it, and check it on hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}

# ------------------------------------------------------------ shared options
ModelArg = Annotated[str, typer.Argument(help="A catalog name (see `kvplan models`) or a path to a spec YAML.", show_default=False)]
ContextOpt = Annotated[str, typer.Option("--context", "-c", help="Tokens per sequence; a comma list sweeps.")]
BatchOpt = Annotated[str, typer.Option("--batch", "-b", help="Concurrent sequences; a comma list sweeps.")]
KVDtypeOpt = Annotated[
    str,
    typer.Option(
        "--kv-cache-dtype",
        help="KV element format: auto (the model's dtype), fp16, bf16, fp32, fp8, fp8_e4m3, fp8_e5m2, int8, "
        "fp8_per_token_head, int8_per_token_head, nvfp4, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, "
        "int4[_gN][_fp16|_bf16|_fp32][_sym]; K/V differ as q8_0/q4_0; a comma list sweeps.",
    ),
]
BlockOpt = Annotated[int, typer.Option("--block-size", help="Tokens per paged block (16 is vLLM's CUDA default); 1 = no paging.")]
TPOpt = Annotated[str, typer.Option("--tensor-parallel-size", "--tp", help="Tensor-parallel ranks.")]
PPOpt = Annotated[int, typer.Option("--pipeline-parallel-size", "--pp", help="Pipeline stages (uneven splits allowed).")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
BytesOpt = Annotated[bool, typer.Option("--bytes", help="Show exact byte counts beside binary units.")]
StateDtypeOpt = Annotated[Optional[str], typer.Option("--state-dtype", help="Element format of SSM state (default: the model's dtype).")]


def parse_int_list(text: str, flag: str, minimum: int = 1) -> list[int]:
    """'1024,8k,32768' -> [1024, 8192, 32768]; 'k' = 1024 for token counts."""
    values = []
    for part in str(text).split(","):
        part = part.strip().lower().replace("_", "")
        mult = 1
        if part.endswith("k"):
            part, mult = part[:-1], 1024
        elif part.endswith("m"):
            part, mult = part[:-1], 1024 * 1024
        try:
            value = int(part) * mult
        except ValueError:
            raise InputError(f"{flag} {text!r}: {part!r} is not a whole number") from None
        if value < minimum:
            raise InputError(f"{flag} {text!r}: values must be at least {minimum}")
        values.append(value)
    if not values:
        raise InputError(f"{flag} needs at least one value")
    return values


def parse_str_list(text: str) -> list[str]:
    return [p.strip() for p in str(text).split(",") if p.strip()]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


# ------------------------------------------------------------------ commands


@app.command()
def estimate(
    model: ModelArg,
    context: ContextOpt = "8192",
    batch: BatchOpt = "1",
    kv_cache_dtype: KVDtypeOpt = "auto",
    block_size: BlockOpt = 16,
    tp: TPOpt = "1",
    pp: PPOpt = 1,
    state_dtype: StateDtypeOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    exact: BytesOpt = False,
) -> None:
    """Size the KV cache of MODEL at a context and batch (comma lists sweep)."""
    from kvplan.catalog import resolve_spec
    from kvplan.formats import UnknownFormatError, parse_format, parse_format_pair
    from kvplan.calc import CacheLayout

    spec = resolve_spec(model)
    contexts = parse_int_list(context, "--context")
    batches = parse_int_list(batch, "--batch")
    tps = parse_int_list(tp, "--tensor-parallel-size")
    try:
        formats = [parse_format_pair(d, spec.dtype) for d in parse_str_list(kv_cache_dtype)]
        state_format = parse_format(state_dtype) if state_dtype else None
    except UnknownFormatError as exc:
        flag = "--state-dtype" if state_dtype and str(exc).find(state_dtype) >= 0 and state_dtype not in kv_cache_dtype else "--kv-cache-dtype"
        raise InputError(f"{flag}: {exc}") from None
    if not formats:
        raise InputError("--kv-cache-dtype needs at least one format")
    layouts = [
        CacheLayout(spec, f, block_size=block_size, tp=t, pp=pp, state_format=state_format)
        for f in formats
        for t in tps
    ]
    results = [layout.at(c, b).to_dict() for layout in layouts for c in contexts for b in batches]
    _render_estimates(results, fmt, exact)


def _render_estimates(results: list[dict], fmt: OutputFormat, exact: bool) -> None:
    from kvplan import render

    single = len(results) == 1
    if fmt is OutputFormat.json:
        render.write(render.to_json(results[0] if single else results))
    elif fmt is OutputFormat.csv:
        render.write(render.to_csv(results))
    elif fmt is OutputFormat.markdown:
        if single:
            est = results[0]
            text = f"**{render.estimate_header(est)}**\n\n"
            text += render.markdown_table(render.KIND_HEADERS, render.estimate_kind_rows(est, exact))
            text += "\n" + render.markdown_table(["", "value"], render.estimate_summary_lines(est, exact))
        else:
            text = render.markdown_table(render.SWEEP_HEADERS, [render.sweep_row(r, exact) for r in results])
        render.write(text)
    else:
        out = render.console()
        if single:
            est = results[0]
            out.print(render.rich_table(render.estimate_header(est), render.KIND_HEADERS, render.estimate_kind_rows(est, exact)))
            width = max(len(k) for k, _ in render.estimate_summary_lines(est, exact))
            for key, value in render.estimate_summary_lines(est, exact):
                out.print(f"{key:<{width}}  {value}")
        else:
            first = results[0]
            title = f"{first['model']} · {len(results)} combinations · {first['block_size']}-token blocks"
            out.print(render.rich_table(title, render.SWEEP_HEADERS, [render.sweep_row(r, exact) for r in results]))


@app.command()
def models(fmt: FormatOpt = OutputFormat.table) -> None:
    """List the shipped model catalog."""
    from kvplan import render
    from kvplan.catalog import SPECS_DIR, catalog_names, load_spec_file
    from kvplan.calc import CacheLayout
    from kvplan.formats import parse_format_pair

    records = []
    for name in catalog_names():
        spec = load_spec_file(SPECS_DIR / f"{name}.yaml")
        layout = CacheLayout(spec, parse_format_pair("bf16", spec.dtype))
        kinds = ", ".join(f"{g.num_layers} {render.KIND_LABEL[g.kind.value]}" for g in layout.groups)
        records.append(
            {
                "name": spec.name,
                "attention": kinds,
                "layers": spec.num_hidden_layers,
                "parameters": spec.num_parameters,
                "kv_bytes_per_token_bf16": layout.kv_bytes_per_token,
            }
        )
    if fmt is OutputFormat.json:
        render.write(render.to_json(records))
    elif fmt is OutputFormat.csv:
        render.write(render.to_csv(records))
    else:
        headers = ["model", "layer kinds", "layers", "parameters", "KV bytes/token (bf16)"]
        rows = [
            [r["name"], r["attention"], r["layers"], f"{r['parameters'] / 1e9:,.2f} B", fmt_int_(r["kv_bytes_per_token_bf16"])]
            for r in records
        ]
        if fmt is OutputFormat.markdown:
            render.write(render.markdown_table(headers, rows))
        else:
            render.console().print(render.rich_table(f"{len(records)} models", headers, rows, right_from=2))


def fmt_int_(n: int) -> str:
    return f"{n:,}"


@app.command()
def show(model: ModelArg, fmt: FormatOpt = OutputFormat.table) -> None:
    """Print one spec with its derived sizes."""
    from kvplan import render
    from kvplan.catalog import resolve_spec
    from kvplan.calc import CacheLayout
    from kvplan.formats import parse_format_pair

    spec = resolve_spec(model)
    layout = CacheLayout(spec, parse_format_pair("auto", spec.dtype))
    fields = spec.model_dump(exclude_none=True)
    derived = {
        "layer_kinds": {g.kind.value: g.num_layers for g in layout.groups},
        "kv_bytes_per_token": layout.kv_bytes_per_token,
        "kv_bytes_per_token_per_layer": {g.kind.value: g.bytes_per_token_per_layer for g in layout.groups},
        "k_head_dim": spec.k_head_dim,
        "v_head_dim": spec.v_head_dim_resolved,
        "active_parameters": spec.active_parameters,
    }
    if spec.state_elements_per_layer_resolved:
        derived["state_bytes_per_sequence_per_layer"] = layout.state_format.bytes_for(spec.state_elements_per_layer_resolved)
    if fmt is OutputFormat.json:
        render.write(render.to_json({"spec": fields, "derived": derived}))
        return
    rows = [[k, _compact(v)] for k, v in fields.items()] + [[f"derived: {k}", _compact(v)] for k, v in derived.items()]
    if fmt is OutputFormat.markdown:
        render.write(render.markdown_table(["field", "value"], rows))
    elif fmt is OutputFormat.csv:
        render.write(render.to_csv([{"field": r[0], "value": r[1]} for r in rows]))
    else:
        render.console().print(render.rich_table(spec.name, ["field", "value"], rows, right_from=9))


def _compact(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return f"[{len(value)}] " + ", ".join(str(v) for v in value[:8]) + (" …" if len(value) > 8 else "")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


# ------------------------------------------------------------------ entry


def main() -> None:
    """Console entry: expected errors print one line to stderr; exit 2 for bad input."""
    try:
        app(standalone_mode=False)
    except KvplanError as exc:
        if _state["debug"]:
            raise
        sys.stderr.write(f"error: {exc.message}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.stderr.write("aborted\n")
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
