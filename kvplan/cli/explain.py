"""`kvplan explain LOG [MODEL]`: a vLLM start-up log's budget and pool beside kvplan's prediction.

Reads the log (`kvplan.sources.vllm_log`), resolves the model (MODEL, else the log's model=
when kvplan can resolve it), reconstructs the budget term by term (`kvplan.plan.explain`) and
renders it; `--save-calibration FILE` writes the measured terms for `estimate --calibration`.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kvplan.cli.options import O
from kvplan.cli.render import OutputFormat
from kvplan.errors import InputError

FormatOpt = O.format(OutputFormat)
HEADERS = ["term", "vLLM logged", "kvplan", "difference", "why"]


def register(app: typer.Typer) -> None:
    """Add `explain` to the kvplan app."""
    app.command(name="explain")(explain)


def explain(
    log: Annotated[str, typer.Argument(metavar="LOG", help="A vLLM start-up log (what `vllm serve` prints while it starts).", show_default=False)],
    model: Annotated[Optional[str], typer.Argument(metavar="[MODEL]", help="The model kvplan sizes for it (default: the log's model= where kvplan resolves it).", show_default=False)] = None,
    # the table's options (one meaning everywhere); here each overrides what the log says (None: the log's)
    context: O.context = None,
    kv_cache_dtype: O.kv_cache_dtype = None,
    block_size: O.block_size = None,
    state_dtype: O.state_dtype = None,
    gpu: O.gpu = None,
    gpu_memory: O.gpu_memory = None,
    save_calibration: Annotated[Optional[str], typer.Option("--save-calibration", metavar="FILE", help="Write the measured terms (weights, activation peak, non-torch, CUDA graphs, total, utilisation) as JSON, atomically; `estimate --calibration FILE` uses its activation and non-torch terms.", show_default=False)] = None,
    force: O.force = False,
    fmt: FormatOpt = OutputFormat.table,
    exact: O.bytes = False,
) -> None:
    """Reconstruct a vLLM log's KV budget term by term beside kvplan's prediction."""
    from kvplan.plan.explain import calibration
    from kvplan.plan.explain import explain as reconstruct
    from kvplan.sources.vllm_log import read_vllm_log
    from kvplan.userfiles import read_user_text

    if save_calibration is not None:
        from kvplan.cli import outputs

        outputs.check_output(save_calibration, "--save-calibration", outputs.KVPLAN_JSON,
                             inputs=outputs.file_inputs([log], "the vLLM log being explained"), force=force)
    text = read_user_text(log, "a vLLM log", "; pass the vLLM log to explain")
    parsed = read_vllm_log(text, log)
    spec = _spec(model, parsed.model)
    from kvplan.options import one_value, one_word, parse_option

    tokens = None if context is None else one_value("context", context, "explain")
    kv_cache_dtype = one_word("kv_cache_dtype", kv_cache_dtype, "explain")
    gpu = one_word("gpu", gpu, "explain")
    parse_option("gpu_memory", gpu_memory)  # a bad size is refused as every command refuses it, prediction or not
    result = reconstruct(parsed, spec, gpu=gpu, gpu_memory=gpu_memory, context=tokens, kv_cache_dtype=kv_cache_dtype,
                         block_size=block_size, state_dtype=state_dtype)
    if save_calibration is not None:
        import json

        from kvplan.atomic import write_text_atomically

        write_text_atomically(save_calibration, json.dumps(calibration(parsed, log), indent=2) + "\n",
                              "--save-calibration")
    _render(log, parsed, result, fmt, exact)
    if save_calibration is not None:
        import sys

        sys.stderr.write(f"wrote {save_calibration}\n")


def _spec(model: Optional[str], logged: Optional[str]):
    """MODEL resolved (errors are the user's); else the log's model= if kvplan resolves it, else None."""
    from kvplan.sources.catalog import resolve_spec

    if model is not None:
        return resolve_spec(model, fast=True)
    if not logged:
        return None
    try:
        return resolve_spec(logged, fast=True)
    except InputError:  # a hub id not in the local cache, a path of another machine: explain without a prediction
        return None


def _cell(value, unit: str, exact: bool) -> str:
    from kvplan.units import fmt_bytes

    if value is None:
        return "—"
    if unit == "bytes":
        text = fmt_bytes(value)
        return f"{text} ({int(value):,} B)" if exact else text
    if unit == "share":
        return f"{value:.2f}"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{int(value):,}"


def _diff(term, exact: bool) -> str:
    from kvplan.units import fmt_bytes

    d = term.difference
    if d is None:
        return ""
    if term.unit == "bytes":
        sign = "+" if d >= 0 else "-"
        return f"{sign}{fmt_bytes(abs(d))}" + (f" ({int(d):+,} B)" if exact else "")
    if term.unit in ("share", "x"):
        return f"{d:+.2f}"
    return f"{int(d):+,}"


def _render(path: str, log, result, fmt: OutputFormat, exact: bool) -> None:
    from kvplan.cli import render

    if fmt is OutputFormat.json:
        render.write(render.to_json({"log": path, "parsed": {k: v for k, v in log.to_dict().items()},
                                     **result.to_dict()}))
        return
    rows = [[t.term, _cell(t.logged, t.unit, exact), _cell(t.kvplan, t.unit, exact), _diff(t, exact), t.note]
            for t in result.terms if t.logged is not None or t.kvplan is not None]
    if fmt is OutputFormat.csv:
        render.write(render.to_csv([dict(zip(HEADERS, r)) for r in rows]))
        return
    s = result.settings
    parts = [f"vLLM {s['vllm_version']}" if s["vllm_version"] else "vLLM (version not logged)",
             s["device"] or "device not logged",
             f"max_model_len {s['max_model_len']:,}" if s["max_model_len"] else "max_model_len not logged",
             f"tp {s['tensor_parallel_size']}", f"pp {s['pipeline_parallel_size']}",
             f"kv_cache_dtype {s['kv_cache_dtype']}"]
    title = f"{path} · {result.model or 'no model'} · " + " · ".join(parts)
    if fmt is OutputFormat.markdown:
        text = f"**{title}**\n\n" + render.markdown_table(HEADERS, rows)
        text += "".join(f"\n- {n}" for n in result.notes)
        render.write(text + ("\n" if result.notes else ""))
        return
    out = render.console()
    out.print(render.rich_table(title, HEADERS, rows, right_from=len(HEADERS), right=HEADERS[1:4]))
    for note in result.notes:
        out.print(f"note: {note}", highlight=False, markup=False)
