"""`kvplan compare`, the engine flags it shares with `estimate`, and the renderers of engine answers
(`compare`'s table and `estimate --engine hf|llama.cpp|sglang|trtllm`'s).

Parses flags, calls `kvplan.plan.pipeline`, renders. Imports no other command module
(`kvplan.cli.app` imports this one for the engine flags). torch is never imported.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kvplan.cli.options import O, engine_flags, flag_group, tees_output
from kvplan.cli.render import OutputFormat
from kvplan.options import BUDGET, WEIGHTS
from kvplan.units import counted



# ------------------------------------------------------------------ rendering


def _size(n: Optional[int], exact: bool) -> str:
    from kvplan.cli.render import size

    return "—" if n is None else size(n, exact)


TOKEN_LABEL = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked", "mla": "MLA"}


def _tokens(cache) -> str:
    if cache.kv_bytes_total is None:
        return "—"
    parts = []
    for k in cache.by_kind:
        if k.kind == "state":
            parts.append(f"state: {k.slots_per_layer:,} cell(s)/layer")
        else:
            parts.append(f"{TOKEN_LABEL.get(k.kind, k.kind)}: {k.tokens_per_sequence:,}")
    return "; ".join(parts)


def _delta(row, exact: bool) -> str:
    if row.delta_bytes is None:
        return "—"
    if row.delta_bytes == 0:
        return "0"
    sign = "+" if row.delta_bytes > 0 else "-"
    ideal = row.cache.ideal_bytes_total
    ratio = row.cache.kv_bytes_total / ideal if ideal else 0
    share = f" ({ratio:.1f}x)" if ratio >= 2 else (f" ({row.delta_bytes / ideal * 100:+.2f}%)" if ideal else "")
    return sign + _size(abs(row.delta_bytes), exact) + share


COMPARE_HEADERS = ["engine", "KV dtype", "tokens held / seq / layer", "KV bytes", "vs ideal", "why it differs",
                   "the engine logs", "refusals"]
CAPACITY_HEADERS = ["KV budget / GPU", "max seqs", "fits"]
WHY_CAPACITY_HEADER = "why max seqs"  # Markdown's last column; a terminal shows it as notes (compare_table_and_notes)
# The terminal table: the figures only; why, logs and refusals are notes under it (compare_notes),
# so the table reads at 100 columns (Markdown keeps every column: a review page scrolls sideways).
TABLE_HEADERS = ["engine", "KV dtype", "tokens held / seq / layer", "KV bytes", "vs ideal"]
TEXT_COLUMNS = (5, 6, 7)  # why, logs, refusals in compare_rows


def compare_rows(comparison, exact: bool) -> list[list[str]]:
    out = []
    for r in comparison.rows:
        c = r.cache
        row = [r.engine, c.kv_cache_dtype, _tokens(c), _size(c.kv_bytes_total, exact), _delta(r, exact),
               "\n".join(x for x in r.why if not x.startswith("refused")) or "—",
               "\n".join(c.log_lines) or "—", "\n".join(c.refusals) or "—"]
        if comparison.gpu is not None:
            cap = r.capacity
            row += [_size(cap.kv_budget_bytes, exact), f"{cap.max_concurrent_sequences:,}",
                    "yes" if cap.fits else "no", "\n".join(r.capacity_why) or "—"]
            if cap.log_lines:  # with a GPU the pool is the engine's own: its lines replace the batch-sized ones
                row[6] = "\n".join(cap.log_lines)
            if cap.refusals:
                row[7] = "\n".join(list(c.refusals) + list(cap.refusals))
        out.append(row)
    return out


def compare_table_and_notes(rows: list[list[str]]) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """compare_rows split for a terminal: the table's rows (figures only), and the notes under it,
    keyed by engine: why it differs from the ideal cache, each log line, each refusal, and with a GPU
    why its max sequences is not budget / bytes."""
    table, notes = [], []
    for row in rows:
        why, logs, refusals = (row[i] for i in TEXT_COLUMNS)
        table.append(row[:5] + row[8:11])
        notes.append((row[0], why))
        notes += [("", f"log: {line}") for line in logs.splitlines() if logs != "—"]
        notes += [("", f"refuses: {line}") for line in refusals.splitlines() if refusals != "—"]
        capacity_why = row[11] if len(row) > 11 else "—"
        notes += [("", f"capacity: {line}") for line in capacity_why.splitlines() if capacity_why != "—"]
    return table, notes


def csv_records(comparison) -> list[dict]:
    records = []
    for r in comparison.rows:
        c = r.cache
        rec = {
            "model": comparison.model, "engine": r.engine, "context": c.context, "batch": c.batch,
            "kv_cache_dtype": c.kv_cache_dtype,
            "tokens_held": ";".join(f"{k}={v}" for k, v in c.tokens_held_by_kind.items()),
            "kv_bytes_total": c.kv_bytes_total, "ideal_bytes_total": c.ideal_bytes_total, "delta_bytes": r.delta_bytes,
            "why": " | ".join(r.why), "log": " | ".join(c.log_lines), "refusals": " | ".join(c.refusals),
        }
        if r.capacity is not None:
            rec.update(gpu=r.capacity.gpu, kv_budget_bytes=r.capacity.kv_budget_bytes,
                       max_total_tokens=r.capacity.max_total_tokens,
                       max_concurrent_sequences=r.capacity.max_concurrent_sequences,
                       max_context_tokens=r.capacity.max_context_tokens, fits=r.capacity.fits,
                       capacity_why=" | ".join(r.capacity_why))
        records.append(rec)
    return records


def render_comparison(comparison, fmt: OutputFormat, exact: bool) -> None:
    from kvplan.cli import render

    if fmt is OutputFormat.json:
        render.write(render.to_json(comparison.to_dict()))
        return
    if fmt is OutputFormat.csv:
        render.write(render.to_csv(csv_records(comparison)))
        return
    headers = COMPARE_HEADERS + (CAPACITY_HEADERS + [WHY_CAPACITY_HEADER] if comparison.gpu else [])
    title = (f"{comparison.model} · context {comparison.context:,} · batch {comparison.batch:,} · "
             f"KV {comparison.kv_cache_dtype} · tp {comparison.tensor_parallel_size}"
             + (f" · pp {comparison.pipeline_parallel_size}" if comparison.pipeline_parallel_size > 1 else "")
             + (f" · {comparison.gpu}" if comparison.gpu else ""))
    rows = compare_rows(comparison, exact)
    if fmt is OutputFormat.markdown:
        md_rows = [[cell.replace("\n", "<br>") for cell in row] for row in rows]
        render.write(f"**{title}**\n\n" + render.markdown_table(headers, md_rows))
        return
    out = render.console()
    table_rows, notes = compare_table_and_notes(rows)
    right = ("KV bytes", "vs ideal", "KV budget / GPU", "max seqs")
    out.print(render.rich_table(title, TABLE_HEADERS + (CAPACITY_HEADERS if comparison.gpu else []), table_rows,
                                right_from=len(TABLE_HEADERS) + 9, right=right))
    out.print("Why each engine differs from the ideal cache, what it logs, what it refuses:", markup=False)
    render.print_pairs(out, notes)


def engine_report_lines(cache, capacity, exact: bool, roofline=None) -> list[tuple[str, str]]:
    """Summary lines under the per-kind table of `estimate --engine <profile>`; with a GPU, its capacity and
    kvplan's roofline over the engine's bytes (`kvplan.plan.planner.Roofline`), as `estimate --engine vllm` shows it."""
    from kvplan.engines.compare import explain

    seqs = "1 sequence" if cache.batch == 1 else f"{cache.batch:,} sequences"
    lines = [("KV bytes total", _size(cache.kv_bytes_total, exact) + f" for {seqs} of {cache.context:,} tokens"),
             ("ideal", _size(cache.ideal_bytes_total, exact) + " (exactly the tokens held, kvplan.model.layout)")]
    for why in explain(cache):
        lines.append(("why it differs", why))
    for k, v in cache.settings.items():
        if v is not None:
            lines.append(("setting", f"{k} = {v}"))
    for line in cache.log_lines:
        lines.append((f"{cache.engine} would log", line))
    for r in cache.refusals:
        lines.append((f"{cache.engine} refuses", r))
    if capacity is not None:
        source = f", from {capacity.weights_source}" if capacity.weights_source else ""
        lines.append(("GPU", f"{capacity.gpu}, {_size(capacity.gpu_memory_bytes, exact)}; weights {_size(capacity.weights_bytes, exact)}{source}"))
        lines.append(("budget rule", capacity.budget_rule))
        lines.append(("KV budget", _size(capacity.kv_budget_bytes, exact) + " per GPU"))
        if capacity.max_total_tokens is not None:
            lines.append(("pool", f"{capacity.max_total_tokens:,} tokens"))
        lines.append(("max concurrency", f"{counted(capacity.max_concurrent_sequences, 'sequence')} of {cache.context:,} tokens"))
        if capacity.max_context_tokens is not None:
            lines.append(("max context", f"{capacity.max_context_tokens:,} tokens at batch {cache.batch:,}"))
        lines.append(("verdict", "fits" if capacity.fits else "does NOT fit"))
        for line in capacity.log_lines:
            lines.append((f"{cache.engine} would log", line))
        for r in capacity.refusals:
            lines.append((f"{cache.engine} refuses", r))
        if roofline is not None:
            from kvplan.cli.render import roofline_lines

            n = capacity.max_concurrent_sequences
            stopped = None if n >= 1 else f"not one sequence of {cache.context:,} tokens fits"
            lines += roofline_lines(roofline.to_dict(), exact, batch=cache.batch, fits=capacity.fits, max_seqs=n,
                                    stopped=stopped)
            lines.append(("KV read", roofline.assumptions["kv_read"]))
            lines += [("note", n) for n in roofline.notes]
        for n in capacity.notes:
            lines.append(("note", n))
    for n in cache.notes:
        lines.append(("note", n))
    return lines


ENGINE_KIND_HEADERS = ["layer kind", "layers", "tokens held / seq", "slots / layer", "bytes / slot", "total"]


def engine_kind_rows(cache, exact: bool) -> list[list[str]]:
    from kvplan.cli.render import KIND_LABEL

    rows = []
    for k in cache.by_kind:
        rows.append([KIND_LABEL.get(k.kind, k.kind), f"{k.layers:,}",
                     "—" if k.kind == "state" else f"{k.tokens_per_sequence:,}", f"{k.slots_per_layer:,}",
                     "mixed" if k.bytes_per_slot is None else f"{k.bytes_per_slot:,} B", _size(k.bytes, exact)])
    return rows


def render_engine(answers: list, fmt: OutputFormat, exact: bool, svg: Optional[str] = None) -> None:
    """`estimate --engine <profile>`: one `kvplan.plan.pipeline.Answer` per combination (its cache, and with a GPU
    its capacity and roofline); `svg` saves the table too."""
    from kvplan.cli import render

    if fmt is OutputFormat.json:
        data = [a.to_dict() for a in answers]
        render.write(render.to_json(data[0] if len(data) == 1 else data))
        return
    if fmt is OutputFormat.csv:
        recs = []
        for a in answers:
            c, cap, roof = a.cache, a.capacity, a.roofline
            rec = {"model": c.model, "engine": c.engine, "context": c.context, "batch": c.batch,
                   "kv_cache_dtype": c.kv_cache_dtype, "kv_bytes_total": c.kv_bytes_total,
                   "ideal_bytes_total": c.ideal_bytes_total, "refusals": " | ".join(c.refusals),
                   "log": " | ".join(c.log_lines)}
            if cap is not None:
                rec.update(gpu=cap.gpu, kv_budget_bytes=cap.kv_budget_bytes, max_total_tokens=cap.max_total_tokens,
                           max_concurrent_sequences=cap.max_concurrent_sequences,
                           max_context_tokens=cap.max_context_tokens, fits=cap.fits)
            if roof is not None:
                rec.update(roof.fields())
            recs.append(rec)
        render.write(render.to_csv(recs))
        return
    results = [(a.cache, a.capacity) for a in answers]
    if len(results) > 1:
        headers = ["context", "batch", "KV dtype", "KV bytes", "ideal", "refusals"] + (
            ["max seqs", "fits"] if results[0][1] is not None else [])
        rows = []
        for c, cap in results:
            row = [f"{c.context:,}", f"{c.batch:,}", c.kv_cache_dtype, _size(c.kv_bytes_total, exact),
                   _size(c.ideal_bytes_total, exact), "; ".join(c.refusals) or "—"]
            if cap is not None:
                row += [f"{cap.max_concurrent_sequences:,}", "yes" if cap.fits else "no"]
            rows.append(row)
        title = f"{results[0][0].model} · {results[0][0].engine} · {len(results)} combinations"
        if fmt is OutputFormat.markdown:
            render.write(f"**{title}**\n\n" + render.markdown_table(headers, rows))
        else:
            out = render.console(record=svg is not None)
            out.print(render.rich_table(title, headers, rows))
            if svg:
                render.save_svg(out, svg)
        return
    cache, capacity = results[0]
    title = f"{cache.model} · {cache.engine} · context {cache.context:,} · batch {cache.batch:,} · KV {cache.kv_cache_dtype}"
    lines = engine_report_lines(cache, capacity, exact, answers[0].roofline)
    if fmt is OutputFormat.markdown:
        text = f"**{title}**\n\n" + render.markdown_table(ENGINE_KIND_HEADERS, engine_kind_rows(cache, exact))
        text += "\n" + render.markdown_table(["", "value"], lines)
        render.write(text)
        return
    out = render.console(record=svg is not None)
    if cache.by_kind:
        out.print(render.rich_table(title, ENGINE_KIND_HEADERS, engine_kind_rows(cache, exact)))
    else:
        out.print(title)
    render.print_pairs(out, lines)  # a long log line wraps at spaces, indented under its start
    if svg:
        render.save_svg(out, svg)


# ------------------------------------------------------------------ compare


def _compare_inputs(params: dict):
    """What `compare` reads, never to be replaced by its -o: the model and a --gpu file."""
    from kvplan.cli import outputs

    yield from outputs.model_inputs(params["model"], "compared")
    yield from outputs.file_inputs([params.get("gpu")], "the --gpu file")


def register(app: typer.Typer) -> None:
    @app.command()
    @tees_output(_compare_inputs)
    @engine_flags(after="prompt_tokens", engines=("llama.cpp", "sglang", "trtllm"), table_defaults=True)
    @engine_flags(after="block_size", engines=("hf",), table_defaults=True)  # each row takes its own engine's
    @engine_flags(after="max_num_batched_tokens", engines=("vllm",))  # None: vLLM's own defaults
    @flag_group("budget", BUDGET, after="weights_bytes")
    @flag_group("weights", WEIGHTS, after="gpu_memory")
    def compare(
        model: Annotated[str, typer.Argument(help="A catalog name (see `kvplan models`) or a path to a spec YAML.", show_default=False)],
        context: O.context = "8192",
        batch: O.batch = "1",
        kv_cache_dtype: O.kv_cache_dtype = "auto",
        tp: O.tp = "1",
        pp: O.pp = "1",
        engines: Annotated[str, typer.Option("--engines", help="Comma list of rows: ideal, vllm, hf, llama.cpp, sglang, trtllm.")] = "ideal,vllm,hf,llama.cpp,sglang,trtllm",
        state_dtype: O.state_dtype = None,
        block_size: O.block_size = None,
        prompt_tokens: O.prompt_tokens = None,
        gpu: O.gpu = None,
        gpu_memory: O.gpu_memory = None,
        weights: dict = None,  # WEIGHTS: --dtype, --weights-bytes
        budget: dict = None,  # BUDGET: --gpu-memory-utilization ... --cuda-total-memory
        output: O.output = None,
        plot: O.plot = None,
        force: O.force = False,
        fmt: O.format(OutputFormat) = OutputFormat.table,
        exact: O.bytes = False,
        **engine_options: object,
    ) -> None:
        """MODEL in every engine side by side: tokens held, KV bytes, why each differs, log lines, refusals."""
        from kvplan.sources.catalog import resolve_spec
        from kvplan.cli.parsing import parse_str_list, token_flag
        from kvplan.engines import NAMES
        from kvplan.options import given_engine_options, one_value, one_word, read_group
        from kvplan.plan.pipeline import Settings, compare as run_compare

        if plot is not None:  # before any work
            from kvplan.cli.plot import check_plot

            check_plot(plot, inputs=_compare_inputs({"model": model, "gpu": gpu}), force=force)
        spec = resolve_spec(model, fast=True)
        hint = " (`kvplan estimate` sweeps a comma list)"
        context = one_value("context", context, "compare", hint)
        batch = one_value("batch", batch, "compare", hint)
        tp = one_value("tp", tp, "compare", hint)
        pp = one_value("pp", pp, "compare", hint)
        gpu = one_word("gpu", gpu, "compare", hint)
        kv_cache_dtype = one_word("kv_cache_dtype", kv_cache_dtype, "compare", hint)
        prompt_tokens = token_flag(prompt_tokens, "--prompt-tokens")
        names = tuple(parse_str_list(engines, "--engines", tuple(NAMES)))
        has_gpu = gpu is not None or gpu_memory is not None
        # compare reports memory only: a flag-built GPU needs a bandwidth, which nothing here reads
        settings = Settings(context=context, batch=batch, kv_cache_dtype=kv_cache_dtype, state_dtype=state_dtype,
                            tp=tp, pp=pp, gpu=gpu, gpu_memory=gpu_memory, roofline=False,
                            gpu_bandwidth=1.0 if has_gpu and gpu is None else None, **read_group(weights, "compare"),
                            block_size=block_size, **read_group(budget, "compare"), prompt_tokens=prompt_tokens,
                            engine_options=given_engine_options(engine_options))
        result = run_compare(spec, settings, names)
        render_comparison(result, fmt, exact)
        if plot is not None:
            from kvplan.cli.plot import save_plot
            from kvplan.plan.charts import compare_charts

            save_plot(plot, compare_charts(spec, settings, names))
