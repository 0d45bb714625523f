"""`kvplan compare`, the engine flags it shares with `estimate`, and the renderers of engine answers
(`compare`'s table and `estimate --engine hf|llama.cpp|sglang|trtllm`'s).

Parses flags, calls `kvplan.plan.pipeline`, renders. Imports no other command module
(`kvplan.cli.app` imports this one for the engine flags). torch is never imported.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kvplan.errors import InputError
from kvplan.cli.render import OutputFormat
from kvplan.units import counted

# ------------------------------------------------------------ engine flags (shared with estimate)
HFCacheOpt = Annotated[str, typer.Option("--hf-cache", help="hf: dynamic (DynamicCache, generate()'s default), static (StaticCache) or quantized (QuantizedCache).")]
MaxCacheLenOpt = Annotated[Optional[int], typer.Option("--max-cache-len", help="hf static: slots preallocated per layer (default: --context).")]
GenerateOpt = Annotated[bool, typer.Option("--generate", help="hf: the sequence came from generate(), whose last sampled token is never cached.")]
TfVersionOpt = Annotated[str, typer.Option("--transformers-version", help="hf: 4 (4.x: MLA cached decompressed; StaticCache fails when V is narrower than K) or 5 (5.x: MLA latent; QuantizedCache full-attention models only).")]
QuantBackendOpt = Annotated[str, typer.Option("--quant-backend", help="hf quantized: quanto or hqq.")]
NbitsOpt = Annotated[int, typer.Option("--nbits", help="hf quantized: bits per value (quanto 2, 4; hqq 1, 2, 3, 4, 8).")]
QGroupOpt = Annotated[int, typer.Option("--q-group-size", help="hf quantized: values per scale / zero-point.")]
ResidualOpt = Annotated[int, typer.Option("--residual-length", help="hf quantized: recent tokens kept in full precision.")]
PromptTokensOpt = Annotated[Optional[str], typer.Option("--prompt-tokens", help="Prompt tokens per request (hf quantized: the prefill quantised at once; default: --context).")]
ParallelOpt = Annotated[Optional[int], typer.Option("--parallel", help="llama.cpp -np: sequence slots (default: --batch).")]
CtxSizeOpt = Annotated[Optional[int], typer.Option("--ctx-size", help="llama.cpp -c: cells of all slots together (default: --context x --parallel).")]
UbatchOpt = Annotated[int, typer.Option("--ubatch-size", help="llama.cpp -ub: micro-batch; sliding layers get window + ubatch cells.")]
NBatchOpt = Annotated[int, typer.Option("--n-batch", help="llama.cpp -b: logical batch (caps the micro-batch).")]
SwaFullOpt = Annotated[bool, typer.Option("--swa-full", help="llama.cpp: sliding layers get the full context.")]
FlashAttnOpt = Annotated[str, typer.Option("--flash-attn", help="llama.cpp -fa: on, off or auto (a quantized V cache needs it on).")]
CacheTypeKOpt = Annotated[Optional[str], typer.Option("--cache-type-k", help="llama.cpp -ctk: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1 (default: from --kv-cache-dtype, auto = f16).")]
CacheTypeVOpt = Annotated[Optional[str], typer.Option("--cache-type-v", help="llama.cpp -ctv (default: from --kv-cache-dtype, auto = f16).")]
KvUnifiedOpt = Annotated[bool, typer.Option("--kv-unified", help="llama.cpp: one cell pool shared by all slots.")]
MemFracOpt = Annotated[Optional[float], typer.Option("--mem-fraction-static", help="sglang: share of free memory for weights + KV (default: the tp table of SGLang <= 0.4: 0.88, 0.87 at tp>=2, 0.85 at >=4, 0.81 at >=8, 0.79 at >=16; 0.5.x derives it from GPU memory and logs it).")]
PageSizeOpt = Annotated[int, typer.Option("--page-size", help="sglang: tokens per page.")]
SwaRatioOpt = Annotated[float, typer.Option("--swa-full-tokens-ratio", help="sglang: SWA pool tokens / full pool tokens.")]
MaxTotalTokensOpt = Annotated[Optional[int], typer.Option("--max-total-tokens", help="sglang: cap on the token pool.")]
TokensPerBlockOpt = Annotated[int, typer.Option("--tokens-per-block", help="trtllm: tokens per KV block.")]
FreeFracOpt = Annotated[float, typer.Option("--free-gpu-memory-fraction", help="trtllm: share of the memory left after the profiling peak.")]


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


def engine_report_lines(cache, capacity, exact: bool) -> list[tuple[str, str]]:
    """Summary lines under the per-kind table of `estimate --engine <profile>`."""
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


def render_engine(results: list[tuple], fmt: OutputFormat, exact: bool, svg: Optional[str] = None) -> None:
    """`estimate --engine <profile>`: one (cache, capacity) per combination; `svg` saves the table too."""
    from kvplan.cli import render

    if fmt is OutputFormat.json:
        data = [{**c.to_dict(), "capacity": None if cap is None else cap.to_dict()} for c, cap in results]
        render.write(render.to_json(data[0] if len(data) == 1 else data))
        return
    if fmt is OutputFormat.csv:
        recs = []
        for c, cap in results:
            rec = {"model": c.model, "engine": c.engine, "context": c.context, "batch": c.batch,
                   "kv_cache_dtype": c.kv_cache_dtype, "kv_bytes_total": c.kv_bytes_total,
                   "ideal_bytes_total": c.ideal_bytes_total, "refusals": " | ".join(c.refusals),
                   "log": " | ".join(c.log_lines)}
            if cap is not None:
                rec.update(gpu=cap.gpu, kv_budget_bytes=cap.kv_budget_bytes, max_total_tokens=cap.max_total_tokens,
                           max_concurrent_sequences=cap.max_concurrent_sequences,
                           max_context_tokens=cap.max_context_tokens, fits=cap.fits)
            recs.append(rec)
        render.write(render.to_csv(recs))
        return
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
    lines = engine_report_lines(cache, capacity, exact)
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


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(
        model: Annotated[str, typer.Argument(help="A catalog name (see `kvplan models`) or a path to a spec YAML.", show_default=False)],
        context: Annotated[str, typer.Option("--context", "-c", help="Tokens per sequence (8k = 8192).")] = "8192",
        batch: Annotated[int, typer.Option("--batch", "-b", help="Concurrent sequences.")] = 1,
        kv_cache_dtype: Annotated[str, typer.Option("--kv-cache-dtype", help="KV format for every engine (auto = the model's dtype; llama.cpp: f16); an engine without it refuses. K/V differ as q8_0/q4_0.")] = "auto",
        tp: Annotated[int, typer.Option("--tensor-parallel-size", "--tp", help="Tensor-parallel ranks (vllm, sglang, trtllm; hf and llama.cpp need 1).")] = 1,
        engines: Annotated[str, typer.Option("--engines", help="Comma list of rows: ideal, vllm, hf, llama.cpp, sglang, trtllm.")] = "ideal,vllm,hf,llama.cpp,sglang,trtllm",
        state_dtype: Annotated[Optional[str], typer.Option("--state-dtype", help="Ideal / vLLM SSM state format (default: the model's dtype).")] = None,
        block_size: Annotated[Optional[int], typer.Option("--block-size", help="vllm: tokens per block (default 16; 64 for MLA).")] = None,
        hf_cache: HFCacheOpt = "dynamic",
        max_cache_len: MaxCacheLenOpt = None,
        generate: GenerateOpt = False,
        transformers_version: TfVersionOpt = "5",
        quant_backend: QuantBackendOpt = "quanto",
        nbits: NbitsOpt = 4,
        q_group_size: QGroupOpt = 64,
        residual_length: ResidualOpt = 128,
        prompt_tokens: PromptTokensOpt = None,
        parallel: ParallelOpt = None,
        ctx_size: CtxSizeOpt = None,
        ubatch_size: UbatchOpt = 512,
        n_batch: NBatchOpt = 2048,
        swa_full: SwaFullOpt = False,
        flash_attn: FlashAttnOpt = "auto",
        cache_type_k: CacheTypeKOpt = None,
        cache_type_v: CacheTypeVOpt = None,
        kv_unified: KvUnifiedOpt = False,
        mem_fraction_static: MemFracOpt = None,
        page_size: PageSizeOpt = 1,
        swa_full_tokens_ratio: SwaRatioOpt = 0.8,
        max_total_tokens: MaxTotalTokensOpt = None,
        tokens_per_block: TokensPerBlockOpt = 32,
        free_gpu_memory_fraction: FreeFracOpt = 0.9,
        gpu: Annotated[Optional[str], typer.Option("--gpu", help="A catalog GPU or GPU YAML: adds each engine's KV budget and capacity.")] = None,
        gpu_memory: Annotated[Optional[str], typer.Option("--gpu-memory", help="GPU memory, e.g. 24GiB (overrides --gpu's).")] = None,
        dtype: Annotated[Optional[str], typer.Option("--dtype", help="Weights dtype (default: the model's).")] = None,
        activation_memory: Annotated[Optional[str], typer.Option("--activation-memory", help="Peak activations per GPU, e.g. 2GiB (default: estimated).")] = None,
        non_torch_memory: Annotated[Optional[str], typer.Option("--non-torch-memory", help="CUDA context etc. per GPU (default 512MiB; 1GiB at tp > 1).")] = None,
        fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.table,
        exact: Annotated[bool, typer.Option("--bytes", help="Show exact byte counts beside binary units.")] = False,
    ) -> None:
        """MODEL in every engine side by side: tokens held, KV bytes, why each differs, log lines, refusals."""
        from kvplan.sources.catalog import resolve_spec
        from kvplan.cli.parsing import parse_int_list, parse_str_list, token_flag
        from kvplan.engines import NAMES
        from kvplan.engines.keys import given_engine_options
        from kvplan.plan.pipeline import Settings, compare as run_compare

        spec = resolve_spec(model, fast=True)
        contexts = parse_int_list(context, "--context")
        if len(contexts) > 1:
            raise InputError("--context: compare takes one context (use estimate for sweeps)")
        prompt_tokens = token_flag(prompt_tokens, "--prompt-tokens")
        names = tuple(parse_str_list(engines, "--engines", tuple(NAMES)))
        has_gpu = gpu is not None or gpu_memory is not None
        # compare reports memory only: a flag-built GPU needs a bandwidth, which nothing here reads
        settings = Settings(context=contexts[0], batch=batch, kv_cache_dtype=kv_cache_dtype, state_dtype=state_dtype,
                            tp=tp, gpu=gpu, gpu_memory=gpu_memory,
                            gpu_bandwidth=1.0 if has_gpu and gpu is None else None, dtype=dtype,
                            block_size=block_size, activation_memory=activation_memory,
                            non_torch_memory=non_torch_memory, prompt_tokens=prompt_tokens,
                            engine_options=given_engine_options(locals()))
        result = run_compare(spec, settings, names)
        render_comparison(result, fmt, exact)
