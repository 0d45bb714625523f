"""`kvplan measure`: run a spec as a real torch decoder and print predicted beside measured.

torch is imported inside the command only (through `kvplan.measure.run`), so
importing this module (as `kvplan.cli.app` does) never loads it. No `from __future__
import annotations` here: the command's options are built inside `register` from
kvplan.cli.options' table, and typer must see them as objects, not strings.
"""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from kvplan.cli.options import O, hidden_alias
from kvplan.errors import InputError, KvplanError


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


class RunDtype(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class MeasureFormat(str, Enum):
    table = "table"
    json = "json"


def write_json_atomic(path: Path, data: object, flag: str = "--output") -> None:
    """Write the JSON report atomically (see kvplan.atomic): a reader never sees half a file."""
    from kvplan.atomic import write_text_atomically

    from kvplan.schema import stamped

    write_text_atomically(path, json.dumps(stamped(data), indent=2) + "\n", flag)


# `--json PATH`, measure's flag for its report file before -o/--output was every command's: kept, hidden.
OldJsonOpt = hidden_alias("--json", "output", "The old spelling of --output.")


def register(app: typer.Typer) -> None:
    """Add the `measure` command to `app`."""
    from kvplan.cli.app import ModelArg, one_value, parse_int_list, warn_beyond_positions

    from kvplan.cli.options import engine_flags

    @app.command()
    @engine_flags(after="timeout", engines=("llama.cpp",))  # --engine llama.cpp: the flags `estimate` plans with
    def measure(
        model: ModelArg,
        layers: Annotated[Optional[int], typer.Option("--layers", help="Run only the first K layers (the prediction is for the same K); default all.", show_default=False)] = None,
        context: O.context = "1024",
        batch: O.batch = "1",
        decode_steps: Annotated[int, typer.Option("--decode-steps", help="Timed cached decode steps after the prefill.")] = 32,
        warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Untimed decode steps before timing.")] = 4,
        max_rounds: Annotated[int, typer.Option("--max-rounds", help="Repeat the timed prefill + decode steps, at most this many rounds, until the last 3 agree within 5%; 1 = one round, stability not judged.")] = 5,
        dtype: Annotated[RunDtype, typer.Option("--dtype", help="Weights and activations; auto = the spec's torch_dtype.")] = RunDtype.auto,
        kv_cache_dtype: Annotated[str, typer.Option("--kv-cache-dtype", help="Cache element format: auto (= --dtype), bf16, fp16, fp32, fp8 (= fp8_e4m3), fp8_e5m2; K/V may differ, e.g. bf16/fp8.")] = "auto",
        device: Annotated[Device, typer.Option("--device", help="auto: CUDA when torch sees a GPU, else the CPU.")] = Device.auto,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights and tokens.")] = 0,
        cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="Time decode steps as a replayed CUDA graph (GPU only; falls back to eager if capture fails).")] = True,
        verify: Annotated[bool, typer.Option("--verify", help="Also check cached decode logits against recomputation without the cache (exit 1 if they differ beyond the dtype's tolerance).")] = False,
        output: O.output = None,
        json_path: OldJsonOpt = None,
        force: O.force = False,
        tolerance: Annotated[Optional[float], typer.Option("--tolerance", help="Exit 1 when a gated memory reading or the decode step is off by more than this fraction (0.05 = 5%).", show_default=False)] = None,
        fmt: O.format(MeasureFormat) = MeasureFormat.table,
        exact: O.bytes = False,
        tp: O.tp = "1",
        pp: O.pp = "1",
        timeout: Annotated[float, typer.Option("--timeout", help="With --tp/--pp: seconds before a run that has not finished is stopped, every rank torn down, and the rank named (exit 1); with --engine: seconds for the server to start, and for each load level.")] = 600.0,
        engine: Annotated[Optional[str], typer.Option("--engine", help="Measure on the engine itself: llama.cpp starts llama-server with the plan's flags (estimate --emit llama.cpp) and compares what it decides with the prediction.", show_default=False)] = None,
        llama_server: Annotated[Optional[str], typer.Option("--llama-server", help="The llama-server executable (default: llama-server on PATH).", show_default=False)] = None,
        concurrency: Annotated[Optional[str], typer.Option("--concurrency", help="With --engine: load levels, requests sent at once (comma list, e.g. 1,4); none: the start-up check only.", show_default=False)] = None,
        prompt_tokens: O.prompt_tokens = None,
        output_tokens: O.output_tokens = None,
        port: Annotated[Optional[int], typer.Option("--port", help="With --engine: the server's port (default: a free one).", show_default=False)] = None,
        threads: Annotated[Optional[int], typer.Option("--threads", help="With --engine llama.cpp: llama-server's --threads (default: its own).", show_default=False)] = None,
        gpu_bandwidth: O.gpu_bandwidth = None,
        save_calibration: Annotated[Optional[Path], typer.Option("--save-calibration", help="With --engine and --concurrency: write the achieved decode bandwidth as a file estimate --calibration reads.", show_default=False, metavar="FILE")] = None,
        **engine_options: object,
    ) -> None:
        """Build MODEL with random weights, run a real prefill and cached decode, and compare with the prediction."""
        from kvplan.cli import render
        from kvplan.sources.catalog import resolve_spec

        if engine is not None:
            return _measure_engine(model, engine, context, batch, kv_cache_dtype, engine_options, llama_server,
                                   concurrency, prompt_tokens, output_tokens, timeout, port, threads, gpu_bandwidth,
                                   output or json_path, "--json" if json_path is not None else "--output", force,
                                   save_calibration, fmt, exact)
        given = [flag for flag, value in (("--llama-server", llama_server), ("--concurrency", concurrency),
                                          ("--port", port), ("--threads", threads),
                                          ("--save-calibration", save_calibration)) if value is not None]
        given += [f"--{k.replace('_', '-')}" for k, v in engine_options.items() if v is not None]
        if given:
            raise InputError(f"{given[0]} is for a run on the engine itself: add --engine llama.cpp")

        if tolerance is not None and not tolerance >= 0:
            raise InputError(f"--tolerance {tolerance}: give a fraction of 0 or more, e.g. 0.05")
        if json_path is not None and output is not None:
            raise InputError("--json is the old spelling of --output; give one of them")
        out_flag = "--json" if json_path is not None else "--output"  # errors name the flag the user typed
        out_path = Path(json_path or output) if (json_path or output) is not None else None
        if out_path is not None:  # before the model is built or run: a refusal after the run would lose it
            from kvplan.cli.outputs import MEASURE_JSON, check_output, model_inputs

            check_output(out_path, out_flag, MEASURE_JSON, inputs=model_inputs(model, "measured"), force=force)
        spec = resolve_spec(model)
        contexts = tuple(parse_int_list(context, "--context"))
        batches = tuple(parse_int_list(batch, "--batch"))
        warn_beyond_positions(
            spec, max(contexts) + decode_steps, "run as asked (the random-weight decoder has no position limit)",
            flag="--context + --decode-steps",
        )
        if layers is not None and not 1 <= layers <= spec.num_hidden_layers:
            raise InputError(f"--layers {layers}: {spec.name} has {spec.num_hidden_layers} layers; use 1 to {spec.num_hidden_layers}")

        try:
            from kvplan.cli.measure_report import report_tables
            from kvplan.measure.report import tolerance_failures
            from kvplan.measure.run import MeasureOptions, measure as run_measure
        except ImportError as exc:  # torch missing
            raise InputError(f"kvplan measure needs torch ({exc}); install it with `pip install 'kvplan[measure]'`") from None

        err = render.console(stderr=True)
        tp, pp = one_value("tp", tp, "measure"), one_value("pp", pp, "measure")
        if tp != 1 or pp != 1:
            _measure_parallel(spec, layers, contexts, batches, decode_steps, warmup_steps, dtype.value, kv_cache_dtype,
                              device.value, seed, verify, tp, pp, timeout, out_path, out_flag, fmt, exact, tolerance, err)
            return
        report = run_measure(
            MeasureOptions(
                spec=spec,
                layers=layers,
                contexts=contexts,
                batches=batches,
                decode_steps=decode_steps,
                warmup_steps=warmup_steps,
                max_rounds=max_rounds,
                dtype=dtype.value,
                kv_cache_dtype=kv_cache_dtype,
                device=device.value,
                seed=seed,
                cuda_graphs=cuda_graphs,
                verify=verify,
                progress=lambda message: err.print(message),
            )
        )
        _show(report.to_dict(), out_path, out_flag, fmt, lambda: report_tables(report, exact))
        failures = []
        if verify:
            failures += [
                f"context {r.context:,}, batch {r.batch}: cached decode differs from recomputation by "
                f"{r.verify_max_abs_logit_diff:.3g} (tolerance {r.verify_tolerance:g} x {max(r.verify_logit_scale or 0, 1.0):.2f})"
                for r in report.runs
                if r.verify_ok is False
            ]
        if tolerance is not None:
            failures += tolerance_failures(report, tolerance)
        if failures:
            limit = f" beyond --tolerance {tolerance:g}" if tolerance is not None else ""
            raise KvplanError(f"{len(failures)} reading(s){limit}: " + "; ".join(failures), exit_code=1)


def _measure_engine(model, engine, context, batch, kv_cache_dtype, engine_options, llama_server, concurrency,
                    prompt_tokens, output_tokens, timeout, port, threads, gpu_bandwidth, output, out_flag, force,
                    save_calibration, fmt, exact) -> None:
    """`measure --engine llama.cpp`: the plan on the real llama-server (kvplan.cli.measure_llamacpp)."""
    from kvplan.cli import render
    from kvplan.cli.parsing import parse_int_list, token_flag
    from kvplan.options import given_engine_options, one_value

    if engine != "llama.cpp":
        raise InputError(f"--engine {engine!r}: measure runs llama.cpp (llama-server) on the engine itself")
    out_path = Path(output) if output is not None else None
    if out_path is not None:
        from kvplan.cli.outputs import MEASURE_JSON, check_output, model_inputs

        check_output(out_path, out_flag, MEASURE_JSON, inputs=model_inputs(model, "measured"), force=force)
    if save_calibration is not None:
        from kvplan.cli.outputs import MEASURE_JSON, check_output, model_inputs

        check_output(save_calibration, "--save-calibration", MEASURE_JSON, inputs=model_inputs(model, "measured"),
                     force=force)
    levels = parse_int_list(concurrency, "--concurrency") if concurrency is not None else []
    if any(c < 1 for c in levels):
        raise InputError(f"--concurrency {concurrency}: each level is at least 1 request")
    err = render.console(stderr=True)
    from kvplan.cli.measure_llamacpp import measure_llamacpp

    measure_llamacpp(model, context=one_value("context", context, "measure --engine"),
                     batch=one_value("batch", batch, "measure --engine"), kv_cache_dtype=kv_cache_dtype,
                     engine_options=dict(given_engine_options(engine_options)),
                     llama_server=llama_server, concurrency=levels,
                     prompt_tokens=token_flag(prompt_tokens, "--prompt-tokens") or 128,
                     output_tokens=token_flag(output_tokens, "--output-tokens") or 32, timeout=timeout, port=port,
                     threads=threads, gpu_bandwidth=gpu_bandwidth, out_path=out_path, out_flag=out_flag,
                     save_calibration=save_calibration, fmt=fmt, exact=exact, progress=lambda m: err.print(m))


def _show(data: dict, out_path, out_flag, fmt, tables) -> None:
    """A measure report: its JSON written to -o atomically, then stdout as --format asks (`tables()`: the table)."""
    from kvplan.cli import render

    if out_path is not None:
        write_json_atomic(out_path, data, out_flag)
    if fmt is MeasureFormat.json:
        render.write(render.to_json(data))
    else:
        out = render.console()
        for item in tables():
            out.print(item)


def _measure_parallel(spec, layers, contexts, batches, decode_steps, warmup_steps, dtype, kv_cache_dtype, device, seed,
                      verify, tp, pp, timeout, out_path, out_flag, fmt, exact, tolerance, err) -> None:
    """`measure --tp/--pp`: launch the ranks (or join torchrun), render on rank 0; exit 1 when a rank's cache
    bytes differ from the prediction or --verify fails."""
    if tolerance is not None:
        raise InputError("--tolerance gates the one-process run; with --tp/--pp every rank's cache bytes must equal the prediction exactly")
    try:
        from kvplan.cli.measure_parallel import parallel_tables
        from kvplan.measure.parallel import ParallelOptions, measure_parallel
        from kvplan.measure.run import MeasureOptions
    except ImportError as exc:  # torch missing
        raise InputError(f"kvplan measure needs torch ({exc}); install it with `pip install 'kvplan[measure]'`") from None
    report = measure_parallel(
        MeasureOptions(spec=spec, layers=layers, contexts=contexts, batches=batches, decode_steps=decode_steps,
                       warmup_steps=warmup_steps, dtype=dtype, kv_cache_dtype=kv_cache_dtype, device=device, seed=seed,
                       verify=verify, progress=lambda message: err.print(message)),
        ParallelOptions(tp=tp, pp=pp, timeout_s=timeout),
    )
    if report is None:  # a torchrun rank other than 0: rank 0 prints
        return
    _show(report.to_dict(), out_path, out_flag, fmt, lambda: parallel_tables(report, exact))
    failures = [
        f"rank {r.rank} (context {r.context:,}, batch {r.batch}): cache {r.measured_kv_bytes:,} B, predicted {r.predicted_kv_bytes:,} B"
        for r in report.runs if r.measured_kv_bytes != r.predicted_kv_bytes
    ]
    if report.verify_ok is False:
        failures.append(
            f"rank {report.checker_rank}: cached decode differs from recomputation by {report.verify_max_abs_logit_diff:.3g} "
            f"(sharded vs one-process {report.one_process_max_abs_logit_diff:.3g})"
        )
    if failures:
        raise KvplanError(f"{len(failures)} reading(s) off: " + "; ".join(failures), exit_code=1)
