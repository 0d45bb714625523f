"""The kvplan command line: parse flags, call one core function, render.

torch is never imported here; `kvplan measure` imports it inside its command.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from kvplan.cli.options import O, engine_flags, flag_group, tees_output
from kvplan.options import BUDGET, GPU_FIGURES, WEIGHTS, given_engine_options, one_value, read_group
from kvplan.errors import InputError, KvplanError
from kvplan.cli.parsing import parse_int_list, parse_str_list, token_flag, warn_beyond_positions  # noqa: F401 (shared)
from kvplan.cli.render import OutputFormat

app = typer.Typer(
    name="kvplan",
    help="Size the KV cache of LLMs exactly, plan GPUs for it, and check it on hardware.",
    no_args_is_help=True,
    add_completion=True,  # typer's --install-completion / --show-completion (README "Installing as a tool")
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    suggest_commands=False,  # click itself already says "Did you mean ...?"; typer's would repeat it
)

_state = {"debug": False}

# ------------------------------------------------------------ shared options
# Every deployment, engine and output flag comes from the one table (kvplan.options.OPTIONS)
# through kvplan.cli.options: `O.context` is --context / -c with its help and type, in every command.
ModelArg = Annotated[str, typer.Argument(help="A catalog name (see `kvplan models`), a spec YAML, a config.json, a model folder, a .gguf file, or a hub id org/name in the local Hugging Face cache.", show_default=False)]
FormatOpt = O.format(OutputFormat)


def _print_version(value: bool) -> None:
    if value:
        from kvplan import __version__

        sys.stdout.write(f"kvplan {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors (the exit status stays the same).")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print kvplan's version and exit.", is_eager=True, callback=_print_version)] = False,
) -> None:
    _state["debug"] = debug


# ------------------------------------------------------------------ commands


def _estimate_inputs(params: dict):
    """What `estimate` reads, never to be replaced by its -o: the model, --gpu files, the --calibration report."""
    from kvplan.cli import outputs

    gpu, calibration = params.get("gpu"), params.get("calibration")
    yield from outputs.model_inputs(params["model"], "estimated")
    yield from outputs.file_inputs(parse_str_list(gpu, "--gpu") if gpu is not None else [], "the --gpu file")
    yield from outputs.file_inputs([calibration], "the --calibration report")


@app.command()
@tees_output(_estimate_inputs)
# An engine's own flags default to None, "not given": the engine's default then applies
# (kvplan.engines.options), and a flag given to another engine is refused, not ignored.
@engine_flags(after="engine")
@flag_group("budget", BUDGET, after="weights_bytes")
@flag_group("weights", WEIGHTS, after="gpu_bf16_tflops")
@flag_group("gpu_figures", GPU_FIGURES, after="gpu")
def estimate(
    model: ModelArg,
    context: O.context = "8192",
    batch: O.batch = "1",
    kv_cache_dtype: O.kv_cache_dtype = "auto",
    block_size: O.block_size = None,
    tp: O.tp = "1",
    pp: O.pp = "1",
    dp: O.dp = 1,
    state_dtype: O.state_dtype = None,
    engine: O.engine = "vllm",
    gpu: O.gpu = None,
    gpu_figures: dict = None,  # GPU_FIGURES: --gpu-memory, --gpu-bandwidth, --usd-per-hour, --gpu-bf16-tflops
    weights: dict = None,  # WEIGHTS: --dtype, --weights-bytes
    budget: dict = None,  # BUDGET: --gpu-memory-utilization ... --cuda-total-memory
    bandwidth_efficiency: O.bandwidth_efficiency = None,
    compute_efficiency: O.compute_efficiency = None,
    calibration: O.calibration = None,
    link_gbps: O.link_gbps = None,
    link_latency_us: O.link_latency_us = None,
    no_communication: O.no_communication = False,
    expert_parallel: O.expert_parallel = False,
    prompt_tokens: O.prompt_tokens = None,
    output_tokens: O.output_tokens = None,
    requests_per_s: O.requests_per_s = None,
    shared_prefix_tokens: O.shared_prefix_tokens = "0",
    emit: O.emit = None,
    output: O.output = None,
    svg: O.svg = None,
    plot: O.plot = None,
    force: O.force = False,
    fmt: FormatOpt = OutputFormat.table,
    exact: O.bytes = False,
    **engine_options: object,
) -> None:
    """Size the KV cache of MODEL; with --gpu, also capacity, latency and cost (comma lists sweep)."""
    from kvplan.sources.catalog import resolve_spec

    if svg is not None:  # before any work: nothing is printed and then refused, nothing the user wrote replaced
        _check_svg(svg, fmt, force, model, gpu, calibration)
    if plot is not None:
        from kvplan.cli.plot import check_plot

        check_plot(plot, inputs=_estimate_inputs({"model": model, "gpu": gpu, "calibration": calibration}), force=force)
    spec = resolve_spec(model, fast=True)
    contexts = parse_int_list(context, "--context")
    batches = parse_int_list(batch, "--batch")
    tps = parse_int_list(tp, "--tensor-parallel-size")
    pp = one_value("pp", pp, "estimate")
    budget = read_group(budget, "estimate")
    prompt_tokens, output_tokens = token_flag(prompt_tokens, "--prompt-tokens"), token_flag(output_tokens, "--output-tokens")
    shared_prefix_tokens = token_flag(shared_prefix_tokens, "--shared-prefix-tokens") or 0
    from kvplan.options import PROFILES
    from kvplan.plan.pipeline import Settings, check_estimate, sweep

    engine_flags = given_engine_options(engine_options)
    dtypes = parse_str_list(kv_cache_dtype, "--kv-cache-dtype")
    gpu_names = parse_str_list(gpu, "--gpu") if gpu is not None else []
    given = Settings(state_dtype=state_dtype, pp=pp, **gpu_figures, **read_group(weights, "estimate"),
                     block_size=block_size, **budget,
                     bandwidth_efficiency=bandwidth_efficiency, compute_efficiency=compute_efficiency,
                     calibration=calibration, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                     requests_per_s=requests_per_s, shared_prefix_tokens=shared_prefix_tokens,
                     link_gbps=link_gbps, link_latency_us=link_latency_us, communication=not no_communication, expert_parallel=expert_parallel,
                     dp=dp, engine_options=engine_flags)
    check_estimate(spec, engine, given, contexts=contexts, tps=tps, kv_cache_dtypes=dtypes, warn=warn_beyond_positions)
    if emit is not None:  # the engine's launch command, not the report (kvplan.plan.emit)
        return _emit(model, spec, engine, emit, given, contexts, batches, tps, dtypes, gpu_names, svg)
    if engine in PROFILES:  # the engine's own allocation and budget rules (kvplan.engines)
        # compare's order: each format, each tp, each GPU (a flag-built one needs no bandwidth: nothing reads it)
        # a GPU given by --gpu-memory alone has no bandwidth: its capacity, no latency (nothing to time a step with)
        no_bandwidth = not gpu_names and given.gpu_memory is not None and given.gpu_bandwidth is None
        base = given._replace(gpu_bandwidth=1.0 if no_bandwidth else given.gpu_bandwidth, roofline=not no_bandwidth)
        answers = [a for d in dtypes for t in tps for g in (gpu_names or [None])
                   for a in sweep(spec, engine, base._replace(kv_cache_dtype=d, tp=t, gpu=g), contexts, batches)]
        from kvplan.cli.compare import render_engine  # the engine profiles' table (hf, llama.cpp, sglang, trtllm)

        render_engine(answers, fmt, exact, svg)
        if plot is not None:
            _plot_estimate(plot, spec, engine, base, answers, dtypes, tps, gpu_names, contexts, batches)
        return
    plan_flags = any(
        v is not None
        for v in (*gpu_figures.values(), requests_per_s, calibration,
                  prompt_tokens, output_tokens, bandwidth_efficiency, compute_efficiency)
    )
    if not gpu_names and not plan_flags:
        answers = [a for d in dtypes for t in tps
                   for a in sweep(spec, engine, given._replace(kv_cache_dtype=d, tp=t), contexts, batches)]
        _render_estimates([a.to_dict() for a in answers], fmt, exact, svg)
        if plot is not None:
            _plot_estimate(plot, spec, engine, given, answers, dtypes, tps, gpu_names, contexts, batches)
        return
    from kvplan.plan.gpus import gpu_from_options

    gpus = [gpu_from_options(g, **gpu_figures) for g in (gpu_names or [None])]
    if any(g is None for g in gpus):
        raise InputError("--gpu is needed for capacity, latency and cost (or --gpu-memory and --gpu-bandwidth)")
    single = len(gpus) * len(dtypes) * len(tps) * len(contexts) * len(batches) == 1
    base = given._replace(concurrency_curve=single and fmt is OutputFormat.table)
    answers = [a for g in (gpu_names or [None]) for d in dtypes for t in tps
               for a in sweep(spec, engine, base._replace(gpu=g, kv_cache_dtype=d, tp=t), contexts, batches)]
    _render_plans([a.to_dict() for a in answers], fmt, exact, svg, workload=requests_per_s is not None)
    if plot is not None:
        _plot_estimate(plot, spec, engine, base, answers, dtypes, tps, gpu_names, contexts, batches)


def _plot_estimate(path: str, spec, engine: str, base, answers: list, dtypes, tps, gpu_names, contexts, batches) -> None:
    """--plot: the charts of this estimate (kvplan.plan.charts), drawn into `path` (kvplan.cli.plot)."""
    from kvplan.cli.plot import save_plot
    from kvplan.plan.charts import MAX_BARS, estimate_charts

    if any(a.capacity is not None for a in answers) and len(answers) > MAX_BARS:
        raise InputError(f"--plot draws one memory bar per deployment, at most {MAX_BARS}; this sweep has "
                         f"{len(answers):,} (give fewer --context, --batch, --gpu, --kv-cache-dtype or --tp values)")
    charts = estimate_charts(spec, engine, base, answers, dtypes=dtypes, tps=tps, gpus=gpu_names or [None],
                             contexts=contexts, batches=batches)
    save_plot(path, charts)


# vLLM's budget flags: emitted, but a plan without a GPU (the refusal check below) cannot read them
GPU_ENGINE_OPTIONS = ("kv_cache_memory_bytes", "num_gpu_blocks_override")


def _emit(model: str, spec, engine: str, target: str, given, contexts, batches, tps, dtypes, gpu_names, svg) -> None:
    """`estimate --emit ENGINE`: one plan's launch command on stdout (a sweep has one command per point: refused)."""
    from kvplan.plan.emit import EMIT_ENGINES, emit, plan_settings
    from kvplan.plan.pipeline import run

    if target not in EMIT_ENGINES:
        raise InputError(f"--emit {target!r} is not one of {', '.join(EMIT_ENGINES)}")
    if target != engine:
        raise InputError(f"--emit {target} writes the command of an --engine {target} plan; this plan's engine is "
                         f"{engine}: add --engine {target}")
    if svg is not None:
        raise InputError("--emit prints a command line, not the table --svg saves; give one of them")
    for flag, values in (("--context", contexts), ("--batch", batches), ("--tensor-parallel-size", tps),
                         ("--kv-cache-dtype", dtypes), ("--gpu", gpu_names)):
        if len(values) > 1:
            raise InputError(f"{flag}: --emit writes one plan's command, not a sweep's; give one value")
    s = given._replace(context=contexts[0], batch=batches[0], tp=tps[0], kv_cache_dtype=dtypes[0])
    refusals = run(spec, engine, s._replace(gpu=None, gpu_memory=None, gpu_bandwidth=None, usd_per_hour=None,
                                            gpu_bf16_tflops=None, calibration=None, requests_per_s=None,
                                            bandwidth_efficiency=None, compute_efficiency=None, weights_bytes=None,
                                            gpu_memory_utilization=None, output_tokens=None, max_num_seqs=None,
                                            cuda_total_memory=None, dp=1,
                                            engine_options={k: v for k, v in s.engine_options.items()
                                                            if k not in GPU_ENGINE_OPTIONS})).cache.refusals
    if refusals:
        raise InputError(f"--emit {target}: {engine} would refuse this plan: {refusals[0]}")
    settings = plan_settings(context=s.context, batch=s.batch, kv_cache_dtype=s.kv_cache_dtype, tp=s.tp, pp=s.pp,
                             block_size=s.block_size, state_dtype=s.state_dtype, dtype=s.dtype,
                             gpu_memory_utilization=s.gpu_memory_utilization,
                             max_num_batched_tokens=s.max_num_batched_tokens, engine_options=s.engine_options,
                             others={"cuda_total_memory": s.cuda_total_memory, "dp": s.dp if s.dp > 1 else None,
                                     "expert_parallel": True if s.expert_parallel else None},
                             max_num_seqs=s.max_num_seqs)
    sys.stdout.write(emit(target, spec, model, settings) + "\n")


def _check_svg(svg: str, fmt: OutputFormat, force: bool, model: str, gpu: Optional[str], calibration: Optional[str]) -> None:
    """--svg saves what the table shows (with or without --gpu); refused where it could not, or must not, write."""
    from kvplan.cli import outputs

    if fmt is not OutputFormat.table:
        raise InputError(f"--svg saves the table; it cannot be used with --format {fmt.value} (drop one of them)")

    def inputs():  # read only when --svg names an existing file
        yield from outputs.model_inputs(model, "estimated")
        yield from outputs.file_inputs(parse_str_list(gpu, "--gpu") if gpu is not None else [], "the --gpu file")
        yield from outputs.file_inputs([calibration], "the --calibration report")

    outputs.check_output(svg, "--svg", outputs.SVG, inputs=inputs(), force=force)


def _render_estimates(results: list[dict], fmt: OutputFormat, exact: bool, svg: str | None = None) -> None:
    from kvplan.cli import render

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
        out = render.console(record=svg is not None)
        if single:
            est = results[0]
            out.print(render.rich_table(render.estimate_header(est), render.KIND_HEADERS, render.estimate_kind_rows(est, exact)))
            render.print_pairs(out, render.estimate_summary_lines(est, exact))
        else:
            first = results[0]
            title = f"{first['model']} · {len(results)} combinations · {first['block_size']}-token blocks"
            out.print(render.rich_table(title, render.SWEEP_HEADERS, [render.sweep_row(r, exact) for r in results]))
        if svg:
            render.save_svg(out, svg)


def fmt_gpus(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _render_plans(rows: list[dict], fmt: OutputFormat, exact: bool, svg: str | None, workload: bool = False) -> None:
    from kvplan.cli import render

    if fmt is OutputFormat.json:
        render.write(render.to_json(rows[0] if len(rows) == 1 else rows))
        return
    if fmt is OutputFormat.csv:
        render.write(render.to_csv(rows))
        return
    if fmt is OutputFormat.markdown:
        render.write(render.plan_markdown(rows, exact))
        return
    out = render.console(record=svg is not None)
    if len(rows) == 1:
        render.print_plan(out, rows[0], exact)
    else:
        workload = workload or any(r["gpus_needed"] is not None for r in rows)  # its GPU count per row ("—": none)
        headers = render.GRID_HEADERS + (["GPUs for workload"] if workload else [])
        table_rows = [render.grid_row(r) + ([fmt_gpus(r["gpus_needed"])] if workload else []) for r in rows]
        out.print(render.rich_table(f"{rows[0]['model']} · {len(rows):,} deployments", headers, table_rows))
    if svg:
        render.save_svg(out, svg)


@app.command()
def models(fmt: FormatOpt = OutputFormat.table) -> None:
    """List the shipped model catalog."""
    from kvplan.cli import render
    from kvplan.sources.catalog import catalog_names, resolve_spec
    from kvplan.model.layout import CacheLayout
    from kvplan.model.formats import parse_format_pair

    records = []
    for name in catalog_names():
        spec = resolve_spec(name, fast=True)
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
            [r["name"], r["attention"], r["layers"], "unknown" if r["parameters"] is None else f"{r['parameters'] / 1e9:,.2f} B", fmt_int_(r["kv_bytes_per_token_bf16"])]
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
    from kvplan.cli import render
    from kvplan.sources.catalog import resolve_spec
    from kvplan.model.layout import CacheLayout
    from kvplan.model.formats import parse_format_pair

    spec = resolve_spec(model, fast=True)
    layout = CacheLayout(spec, parse_format_pair("auto", spec.dtype))
    fields = spec.fields_that_apply(spec.model_dump(exclude_none=True))
    derived = {
        "layer_kinds": {g.kind.value: g.num_layers for g in layout.groups},
        "kv_bytes_per_token": layout.kv_bytes_per_token,
        "kv_bytes_per_token_per_layer": {g.kind.value: g.bytes_per_token_per_layer for g in layout.groups},
    }
    if spec.is_mla:  # one latent per token and layer, no per-head K or V (v_head_dim is the attention's, not cached)
        derived["mla_latent_dim"] = spec.mla_latent_dim
        if spec.index_head_dim:  # DeepSeek sparse attention: one indexer key beside the latent (kinds.index_key_bytes)
            from kvplan.model.kinds import index_key_bytes

            derived["index_key_bytes"] = index_key_bytes(spec.index_head_dim)
    else:  # the K and V vector cached per KV head
        derived.update(k_head_dim=spec.k_head_dim, v_head_dim=spec.v_head_dim_resolved)
        if spec.has_layer_geometry:  # Gemma 4: the full-attention layers' own sizes
            from kvplan.model.kinds import KINDS, LayerKind

            full = KINDS[LayerKind.FULL]
            k_dim, v_dim = full.head_dims(spec)  # equal: K and V both global_head_dim wide
            derived.update(full_attention_kv_heads=full.kv_heads(spec), full_attention_head_dim=k_dim)
    derived["active_parameters"] = spec.active_parameters
    if spec.state_elements_per_layer_resolved:
        derived["state_bytes_per_sequence_per_layer"] = sum(t.bytes_per_sequence_per_layer for t in layout.state_tensors)
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


# The other commands live in their own modules and are registered on demand: building
# a command's options costs start-up time, so `kvplan estimate` builds only its own.
# `--help`, no command or an unknown one registers them all (in this order).
SUBCOMMAND_MODULES = {
    "gpus": "gpus",
    "import": "import_",
    "check": "gate",
    "diff": "gate",
    "measure": "measure",
    "compare": "compare",
    "search": "search",
    "explain": "explain",
}
_registered: set[str] = set()


def _register(module_name: str) -> None:
    if module_name not in _registered:
        import importlib

        importlib.import_module(f"kvplan.cli.{module_name}").register(app)
        _registered.add(module_name)


def register_commands(argv: list[str]) -> None:
    """Register the subcommand modules that `argv` needs (all of them for help or a typo)."""
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    if command in ("estimate", "models", "show"):
        return
    if command in SUBCOMMAND_MODULES:
        _register(SUBCOMMAND_MODULES[command])
        return
    for module_name in dict.fromkeys(SUBCOMMAND_MODULES.values()):
        _register(module_name)

# ------------------------------------------------------------------ entry


def main() -> None:
    """Console entry: expected errors print one line to stderr; exit 2 for bad input."""
    from kvplan.interrupts import Interrupted, handled

    try:
        with handled():
            register_commands(sys.argv[1:])
            code = app(standalone_mode=False)
        # Without standalone mode click *returns* the status of a `typer.Exit(n)` (typer's Exit(130)
        # for a KeyboardInterrupt among them) instead of exiting with it: exit with it here.
        if code == 130:
            sys.stderr.write("interrupted (SIGINT)\n")
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            sys.exit(code)
    except Interrupted as exc:  # SIGINT or SIGTERM (kvplan.interrupts): 130 or 143, one line, no traceback
        sys.stderr.write(f"{exc}\n")
        sys.exit(exc.exit_code)
    except KvplanError as exc:
        if _state["debug"]:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: {exc.message}\n")
        sys.exit(exc.exit_code)  # --debug adds the traceback, never changes the status
    except OSError as exc:
        if exc.filename is None:  # not about a path: an internal error below
            _internal_error(exc)
        # The file system refused a path the user gave, or one under it (a Hugging Face cache another
        # user owns, a FIFO, a file where a folder should be): bad input naming the path, not a bug.
        # The loaders that read a file say more themselves (kvplan.sources.catalog.read_yaml, read_config …).
        if _state["debug"]:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: {exc.filename}: {exc.strerror or exc}; check the path and that you may read it\n")
        sys.exit(2)
    except KeyboardInterrupt:  # raised before the handler was in place, or by code that raises it itself
        sys.stderr.write("interrupted (SIGINT)\n")
        sys.exit(130)
    except Exception as exc:  # usage errors (unknown option, missing argument) and the like
        exceptions = _click_exceptions()
        if isinstance(exc, exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if type(exc).__name__ == "Abort":
            sys.stderr.write("aborted\n")
            sys.exit(1)
        _internal_error(exc)


def _internal_error(exc: BaseException) -> None:
    """A bug: one line (the traceback with --debug), exit 70."""
    if _state["debug"]:
        import traceback

        traceback.print_exc()
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n")
    else:
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)\n")
    sys.exit(70)


def _click_exceptions():
    """typer >= 0.26 vendors click as typer._click; older typer uses click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - depends on the typer release
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


if __name__ == "__main__":
    main()
