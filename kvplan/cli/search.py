"""`kvplan search MODEL`: the cheapest deployments that meet a workload's latency targets.

Parses the flags, calls `kvplan.plan.search.search` once, renders its `SearchResult` as a table, JSON,
CSV or Markdown. The first row's `estimate_args` is the hook an `--emit` of the chosen deployment reads
(`Row.estimate_args`: the settings `kvplan estimate` takes for it).
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Optional

import typer

from kvplan.cli.options import O, flag_group, tees_output
from kvplan.cli.render import OutputFormat
from kvplan.errors import InputError
from kvplan.options import BUDGET, WEIGHTS, read_group

FormatOpt = O.format(OutputFormat)
ModelArg = Annotated[str, typer.Argument(help="A catalog name (see `kvplan models`), a spec YAML, a config.json, a model folder, a .gguf file, or a hub id org/name in the local Hugging Face cache.", show_default=False)]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Print at most this many rows of the front (default: all).", show_default=False)]


def register(app: typer.Typer) -> None:
    """Add `search` to the kvplan app."""
    app.command(name="search")(search)


def _inputs(params: dict):
    from kvplan.cli import outputs
    from kvplan.cli.parsing import parse_str_list

    gpu = params.get("gpu")
    yield from outputs.model_inputs(params["model"], "searched")
    yield from outputs.file_inputs(parse_str_list(gpu, "--gpu") if gpu else [], "the --gpu file")
    yield from outputs.file_inputs([params.get("workload")], "the --workload file")


@tees_output(_inputs)
@flag_group("budget", BUDGET[:4], after="block_size")  # not --max-num-seqs (a space to search), --cuda-total-memory
@flag_group("weights", WEIGHTS, after="context")
def search(
    model: ModelArg,
    requests_per_s: O.requests_per_s = None,
    prompt_tokens: O.prompt_tokens = None,
    output_tokens: O.output_tokens = None,
    workload: O.workload = None,
    ttft_ms: O.ttft_ms = None,
    tpot_ms: O.tpot_ms = None,
    gpu: O.gpu = None,
    tp: O.tp = "1,2,4,8",
    pp: O.pp = "1",
    kv_cache_dtype: O.kv_cache_dtype = None,
    max_num_seqs: O.max_num_seqs = None,
    engine: O.engine = "vllm",
    context: O.context = None,
    weights: dict = None,  # WEIGHTS: --dtype, --weights-bytes
    state_dtype: O.state_dtype = None,
    block_size: O.block_size = None,
    budget: dict = None,  # BUDGET[:4]: --gpu-memory-utilization ... --max-num-batched-tokens, read as estimate reads them
    bandwidth_efficiency: O.bandwidth_efficiency = None,
    compute_efficiency: O.compute_efficiency = None,
    limit: LimitOpt = None,
    no_queueing: O.no_queueing = False,
    emit: O.emit = None,
    plot: O.plot = None,
    output: O.output = None,
    force: O.force = False,
    fmt: FormatOpt = OutputFormat.table,
    exact: O.bytes = False,
) -> None:
    """Find the cheapest deployments (GPU, tp, pp, KV dtype, --max-num-seqs) that meet --ttft-ms and --tpot-ms."""
    from kvplan.cli.parsing import parse_int_list, parse_str_list, token_flag
    from kvplan.plan import search as core
    from kvplan.plan.pipeline import Settings
    from kvplan.sources.catalog import resolve_spec

    if plot is not None:  # before any work: nothing computed and then refused, nothing the user wrote replaced
        from kvplan.cli.plot import check_plot

        check_plot(plot, inputs=_inputs({"model": model, "gpu": gpu, "workload": workload}), force=force)
    if requests_per_s is None:
        raise InputError("--requests-per-s is needed: the workload's rate sizes the replicas and the cost")
    if not (math.isfinite(requests_per_s) and requests_per_s > 0):
        raise InputError(f"--requests-per-s {requests_per_s:g} must be a finite number of requests per second above 0")
    for flag, value in (("--ttft-ms", ttft_ms), ("--tpot-ms", tpot_ms)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{flag} {value:g} must be a finite number of milliseconds above 0")
    if ttft_ms is None and tpot_ms is None:
        raise InputError("give --ttft-ms, --tpot-ms or both: the search finds the cheapest deployment that meets them")
    prompt = token_flag(prompt_tokens, "--prompt-tokens")
    output_n = token_flag(output_tokens, "--output-tokens")
    if workload is not None and (prompt is not None or output_n is not None):
        raise InputError("--workload gives every request's prompt and output tokens; leave out --prompt-tokens and "
                         "--output-tokens (or the file)")
    if workload is None:
        if prompt is None or output_n is None:
            raise InputError("give --prompt-tokens and --output-tokens (every request alike), or --workload FILE "
                             "(a JSONL trace or histogram)")
        for flag, value in (("--prompt-tokens", prompt), ("--output-tokens", output_n)):
            if value < 1:
                raise InputError(f"{flag} {value} must be at least 1")
        load = core.fixed_workload(prompt, output_n, requests_per_s)
    else:
        load = core.read_workload(workload, requests_per_s)
    spec = resolve_spec(model, fast=True)
    space = _space(spec, engine, gpu, tp, pp, kv_cache_dtype, max_num_seqs)
    max_model_len = None if context is None else parse_int_list(context, "--context")
    if max_model_len is not None and len(max_model_len) > 1:
        raise InputError(f"--context {context!r}: search takes one context (vLLM's max_model_len), not a list")
    settings = Settings(
        context=None if max_model_len is None else max_model_len[0], state_dtype=state_dtype, **read_group(weights, "search"),
        block_size=block_size, **read_group(budget, "search"),
        bandwidth_efficiency=bandwidth_efficiency, compute_efficiency=compute_efficiency,
        prompt_tokens=load.prompt_mean, output_tokens=load.output_mean, requests_per_s=requests_per_s)
    targets = core.Targets(None if ttft_ms is None else ttft_ms / 1000, None if tpot_ms is None else tpot_ms / 1000)
    if emit is not None and emit != engine:
        raise InputError(f"--emit {emit}: search plans under --engine {engine}; only --emit vllm launches what it "
                         "finds" if engine == "vllm" else f"--emit {emit}: --engine {engine} is kvplan's ideal "
                         "cache, which no engine launches; search with --engine vllm to --emit vllm")
    result = core.search(spec, engine, load, targets, space, settings, limit=limit, queueing=not no_queueing,
                         keep_cloud=plot is not None)
    if plot is not None:  # the cost / latency front (kvplan.plan.charts.search_charts), drawn by kvplan.cli.plot
        from kvplan.cli.plot import save_plot
        from kvplan.plan.charts import search_charts

        save_plot(plot, search_charts(result, result.cloud))
    if emit is not None:  # row 1's launch command instead of the report (kvplan.plan.emit, as estimate --emit)
        sys.stdout.write(_emit_row(result, spec, model, settings) + "\n")
        return
    _render(result, fmt, exact, model)


def _emit_row(result, spec, model: str, settings) -> str:
    """`vllm serve` for the cheapest row: max_model_len the longest request, its tp, pp, KV dtype, --max-num-seqs
    and the --max-num-batched-tokens the search fixed (its estimate command states the same)."""
    from kvplan.plan.emit import emit, plan_settings

    if not result.rows:
        raise InputError("--emit: no deployment meets the targets, so there is no command to print")
    row = result.rows[0]
    args = list(row.estimate_args)
    tokens = int(args[args.index("--max-num-batched-tokens") + 1])
    words = plan_settings(context=result.workload["max_model_len"], batch=row.batch, kv_cache_dtype=row.kv_cache_dtype,
                          tp=row.tensor_parallel_size, pp=row.pipeline_parallel_size, block_size=settings.block_size,
                          state_dtype=settings.state_dtype, dtype=settings.dtype,
                          gpu_memory_utilization=settings.gpu_memory_utilization, max_num_batched_tokens=tokens,
                          engine_options={}, others={}, max_num_seqs=row.max_num_seqs)
    return emit("vllm", spec, model, words)


def _space(spec, engine: str, gpu: Optional[str], tp: str, pp: str, kv_cache_dtype: Optional[str],
           max_num_seqs: Optional[str]):
    from kvplan.cli.parsing import parse_int_list, parse_str_list
    from kvplan.plan import search as core
    from kvplan.plan.gpus import load_gpu_catalog, resolve_gpu

    if gpu is not None and not gpu.strip():
        raise InputError("--gpu '': the list of GPUs to search is empty; name at least one (`kvplan gpus` lists them)")
    names = parse_str_list(gpu, "--gpu") if gpu is not None else None
    gpus = tuple((n, resolve_gpu(n)) for n in names) if names else tuple(load_gpu_catalog().items())
    tps = tuple(parse_int_list(tp, "--tensor-parallel-size"))
    pps = tuple(parse_int_list(pp, "--pipeline-parallel-size"))
    if kv_cache_dtype is None:
        dtypes = core.DEFAULT_VLLM_KV_DTYPES if engine == "vllm" else ("auto",)
    else:
        dtypes = tuple(parse_str_list(kv_cache_dtype, "--kv-cache-dtype"))
    seqs = core.DEFAULT_MAX_NUM_SEQS if max_num_seqs is None else tuple(parse_int_list(max_num_seqs, "--max-num-seqs"))
    return core.Space(gpus, tps, pps, dtypes, seqs)


# ------------------------------------------------------------------ rendering

# (--bytes: the KV columns in bytes)
HEADERS = ["#", "GPU", "tp×pp", "KV", "max seqs", "batch", "GPUs", "util %", "TTFT ms p50/p99", "TPOT ms",
           "latency s", "$/1M tok", "KV GiB/GPU avg", "p99", "worst"]


def _ms(s: float) -> str:
    return f"{s * 1000:,.1f} ms"


def _gib(n: int, exact: bool) -> str:
    return f"{n:,}" if exact else f"{n / 2**30:,.2f}"


def _row_cells(i: int, r: dict, exact: bool) -> list[str]:
    return [str(i), r["gpu"], f"{r['tensor_parallel_size']}×{r['pipeline_parallel_size']}", r["kv_cache_dtype"],
            f"{r['max_num_seqs']:,}", f"{r['batch']:,}", f"{r['gpus']:,}", f"{r['utilization'] * 100:,.1f}",
            f"{r['ttft_p50_s'] * 1000:,.0f}/{r['ttft_s'] * 1000:,.0f}",
            f"{r['tpot_s'] * 1000:,.2f}", f"{r['request_latency_s']:,.2f}", f"{r['usd_per_million_tokens']:,.4f}",
            _gib(r["kv_bytes_per_gpu_avg"], exact), _gib(r["kv_bytes_per_gpu_p99"], exact),
            _gib(r["kv_bytes_per_gpu_worst"], exact)]


def _title(d: dict) -> str:
    w, t = d["workload"], d["targets"]
    aims = [f"{k} ≤ {_ms(v)}" for k, v in (("TTFT", t["ttft_s"]), ("TPOT", t["tpot_s"])) if v is not None]
    load = (f"{w['requests_per_s']:g} req/s × {w['prompt_tokens_mean']:,} + {w['output_tokens_mean']:,} tokens"
            if w["requests"] == 1 or w["source"].startswith("--") else
            f"{w['requests_per_s']:g} req/s, {w['requests']:,} requests from {w['source']} (mean "
            f"{w['prompt_tokens_mean']:,} + {w['output_tokens_mean']:,} tokens, p99 prompt {w['prompt_tokens_p99']:,})")
    return f"{d['model']} · {d['engine']} · {load} · {', '.join(aims)}"


def _family_lines(d: dict) -> list[tuple[str, str]]:
    lines = []
    for f in d["families"]:
        label = {"gpu": "", "tp": "tp ", "pp": "pp ", "kv_cache_dtype": "KV "}[f["dimension"]] + f["value"]
        if f["feasible"]:
            text = f"{f['feasible']:,} feasible, from ${f['cheapest_usd_per_million_tokens']:,.4f} / 1M tokens"
        else:
            text = f"none: {f['reason']}"
        if f["note"]:
            text += f" ({f['note']})"
        lines.append((label, text))
    return lines


def _render(result, fmt: OutputFormat, exact: bool, model: str) -> None:
    from kvplan.cli import render

    d = result.to_dict()
    rows = d["rows"]
    command = "kvplan estimate " + model + " " + " ".join(rows[0]["estimate_args"])
    if fmt is OutputFormat.json:
        render.write(render.to_json(d))
        return
    if fmt is OutputFormat.csv:
        render.write(render.to_csv([{**r, "estimate_args": " ".join(r["estimate_args"])} for r in rows]))
        return
    summary = f"{d['feasible']:,} of {d['candidates']:,} candidates meet the targets; the Pareto front of cost and latency, cheapest first"
    if fmt is OutputFormat.markdown:
        text = f"**{_title(d)}**\n\n{summary}\n\n"
        text += render.markdown_table(HEADERS, [_row_cells(i, r, exact) for i, r in enumerate(rows, 1)])
        text += "\n" + render.markdown_table(["", "why"], _family_lines(d))
        text += f"\nrow 1 under estimate: `{command}`\n"
        render.write(text)
        return
    out = render.console()
    out.print(render.rich_table(_title(d), HEADERS, [_row_cells(i, r, exact) for i, r in enumerate(rows, 1)]))
    render.print_text(out, summary)
    render.print_pairs(out, _family_lines(d))
    render.print_text(out, f"row 1 under estimate: {command}")
