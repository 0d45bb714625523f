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


class MeasureEngine(str, Enum):
    torch = "torch"
    vllm = "vllm"
    llamacpp = "llama.cpp"


def _help(key: str) -> str:
    from kvplan.options import BY_KEY

    return BY_KEY[key].help


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
        timeout: Annotated[float, typer.Option("--timeout", help="With --tp/--pp: seconds before a run that has not finished is stopped, every rank torn down, and the rank named (exit 1); with --engine: seconds the engine may take to be ready.")] = 600.0,
        engine: Annotated[MeasureEngine, typer.Option("--engine", help="torch: kvplan's own decoder; vllm: start the installed vLLM with the plan's flags (as --emit vllm prints them) and compare what it decides and how it serves with the plan; llama.cpp: the same with llama-server (as --emit llama.cpp prints its flags).")] = None,
        vllm_python: Annotated[Optional[str], typer.Option("--vllm-python", help="--engine vllm: the python of vLLM's virtualenv (default: --vllm, else vllm on PATH).", show_default=False)] = None,
        vllm: Annotated[Optional[str], typer.Option("--vllm", help="--engine vllm: vLLM's `vllm` script.", show_default=False)] = None,
        vllm_arg: Annotated[Optional[list[str]], typer.Option("--vllm-arg", help="--engine vllm: one more word for `vllm serve` (repeat it), e.g. --vllm-arg=--enforce-eager.", show_default=False)] = None,
        port: Annotated[Optional[int], typer.Option("--port", help="--engine: the engine's port (default: a free one).", show_default=False)] = None,
        concurrency: Annotated[Optional[str], typer.Option("--concurrency", help="--engine: requests in flight, one load level per value (1,4,16); none: start-up figures only.", show_default=False)] = None,
        requests: Annotated[Optional[int], typer.Option("--requests", help="--engine: requests sent per level (default: twice the level).", show_default=False)] = None,
        engine_log: Annotated[Optional[str], typer.Option("--engine-log", help="--engine: where the engine's log is written (default: a file in $TMPDIR, named on stderr).", show_default=False)] = None,
        save_calibration: Annotated[Optional[str], typer.Option("--save-calibration", metavar="FILE", help="--engine: write the measured decode bandwidth as JSON; `estimate --calibration FILE` then plans with it.", show_default=False)] = None,
        prompt_tokens: O.prompt_tokens = None,
        output_tokens: O.output_tokens = None,
        workload: O.workload = None,
        block_size: O.block_size = None,
        max_num_batched_tokens: O.max_num_batched_tokens = None,
        kv_cache_memory_bytes: O.kv_cache_memory_bytes = None,
        enable_prefix_caching: Annotated[Optional[bool], typer.Option("--enable-prefix-caching/--no-enable-prefix-caching", help=_help("enable_prefix_caching"), show_default=False)] = None,
        gpu_memory_utilization: O.gpu_memory_utilization = None,
        state_dtype: O.state_dtype = None,
        gpu: O.gpu = None,
        gpu_memory: O.gpu_memory = None,
        gpu_bandwidth: O.gpu_bandwidth = None,
        gpu_bf16_tflops: O.gpu_bf16_tflops = None,
        llama_server: Annotated[Optional[str], typer.Option("--llama-server", help="--engine llama.cpp: the llama-server executable (default: llama-server on PATH).", show_default=False)] = None,
        threads: Annotated[Optional[int], typer.Option("--threads", help="--engine llama.cpp: llama-server's --threads (default: its own).", show_default=False)] = None,
        **engine_options: object,
    ) -> None:
        """Build MODEL with random weights, run a real prefill and cached decode, and compare with the prediction."""
        from kvplan.cli import render
        from kvplan.sources.catalog import resolve_spec

        engine_flags = {"--vllm-python": vllm_python, "--vllm": vllm, "--vllm-arg": vllm_arg or None, "--port": port,
                        "--concurrency": concurrency, "--requests": requests, "--engine-log": engine_log,
                        "--save-calibration": save_calibration, "--prompt-tokens": prompt_tokens,
                        "--output-tokens": output_tokens, "--workload": workload, "--block-size": block_size,
                        "--max-num-batched-tokens": max_num_batched_tokens,
                        "--kv-cache-memory-bytes": kv_cache_memory_bytes,
                        "--enable-prefix-caching": enable_prefix_caching,
                        "--gpu-memory-utilization": gpu_memory_utilization, "--state-dtype": state_dtype,
                        "--gpu": gpu, "--gpu-memory": gpu_memory, "--gpu-bandwidth": gpu_bandwidth,
                        "--gpu-bf16-tflops": gpu_bf16_tflops}
        llama_flags = {"--llama-server": llama_server, "--threads": threads}
        llama_flags.update({f"--{k.replace('_', '-')}": v for k, v in engine_options.items()})
        shared = ("--port", "--concurrency", "--save-calibration", "--prompt-tokens", "--output-tokens",
                  "--gpu-bandwidth")  # a run on either engine reads these
        given_vllm = [flag for flag, value in engine_flags.items() if value is not None]
        given_llama = [flag for flag, value in llama_flags.items() if value is not None]
        if engine is None or engine is MeasureEngine.torch:
            given = given_vllm + given_llama
            if given:  # never ignored in silence
                flag = given[0]
                if flag in shared:
                    raise InputError(f"{flag} is for a run on the engine itself: add --engine vllm or --engine llama.cpp")
                if flag in llama_flags:
                    raise InputError(f"{flag} is for a run on the engine itself: add --engine llama.cpp")
                raise InputError(f"{flag} is a flag of `measure --engine vllm` (the real engine); add --engine vllm")
        elif engine is MeasureEngine.llamacpp:
            run_flags = {"--layers": layers, "--tolerance": tolerance, "--verify": verify or None,
                         "--tp": None if tp == "1" else tp, "--pp": None if pp == "1" else pp}
            given = [flag for flag, value in run_flags.items() if value is not None]
            if given:
                raise InputError(f"{given[0]} is a flag of kvplan's own torch run, not of --engine llama.cpp")
            given = [flag for flag in given_vllm if flag not in shared]
            if given:
                raise InputError(f"{given[0]} is a flag of `measure --engine vllm`, not of --engine llama.cpp")
            return _measure_engine(model, engine.value, context, batch, kv_cache_dtype, engine_options, llama_server,
                                   concurrency, prompt_tokens, output_tokens, timeout, port, threads, gpu_bandwidth,
                                   output or json_path, "--json" if json_path is not None else "--output", force,
                                   Path(save_calibration) if save_calibration is not None else None, fmt, exact)
        else:
            if given_llama:
                raise InputError(f"{given_llama[0]} is a flag of `measure --engine llama.cpp`, not of --engine vllm")
            if json_path is not None and output is not None:
                raise InputError("--json is the old spelling of --output; give one of them")
            run_flags = {"--layers": layers, "--tolerance": tolerance, "--verify": verify or None,
                         "--tp": None if tp == "1" else tp, "--pp": None if pp == "1" else pp}
            given = [flag for flag, value in run_flags.items() if value is not None]
            if given:
                raise InputError(f"{given[0]} is a flag of kvplan's own torch run, not of --engine {engine.value}")
            from kvplan.cli.measure_engine import run_engine

            run_engine(model=model, engine=engine.value, context=context, batch=batch, kv_cache_dtype=kv_cache_dtype,
                       dtype=dtype.value, device=device.value, seed=seed, timeout=timeout,
                       out_path=Path(json_path or output) if (json_path or output) else None,
                       out_flag="--json" if json_path is not None else "--output", fmt=fmt, force=force,
                       vllm_python=vllm_python, vllm=vllm, vllm_args=list(vllm_arg or ()), port=port,
                       concurrency=concurrency, requests=requests, prompt_tokens=prompt_tokens,
                       output_tokens=output_tokens, workload=workload, block_size=block_size,
                       max_num_batched_tokens=max_num_batched_tokens, kv_cache_memory_bytes=kv_cache_memory_bytes,
                       enable_prefix_caching=enable_prefix_caching, gpu_memory_utilization=gpu_memory_utilization,
                       state_dtype=state_dtype, gpu=gpu, gpu_memory=gpu_memory, gpu_bandwidth=gpu_bandwidth,
                       gpu_bf16_tflops=gpu_bf16_tflops, save_calibration=save_calibration, engine_log=engine_log)
            return

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
        # one set of run options for the one-process and the --tp/--pp runs (the ranks time no rounds, no graphs)
        opts = MeasureOptions(spec=spec, layers=layers, contexts=contexts, batches=batches, decode_steps=decode_steps,
                              warmup_steps=warmup_steps, max_rounds=max_rounds, dtype=dtype.value,
                              kv_cache_dtype=kv_cache_dtype, device=device.value, seed=seed, cuda_graphs=cuda_graphs,
                              verify=verify, progress=lambda message: err.print(message))
        if tp != 1 or pp != 1:
            _measure_parallel(opts, tp, pp, timeout, out_path, out_flag, fmt, exact, tolerance)
            return
        report = run_measure(opts)
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


def _measure_parallel(opts, tp, pp, timeout, out_path, out_flag, fmt, exact, tolerance) -> None:
    """`measure --tp/--pp`: launch the ranks (or join torchrun), render on rank 0; exit 1 when a rank's cache
    bytes differ from the prediction or --verify fails."""
    if tolerance is not None:
        raise InputError("--tolerance gates the one-process run; with --tp/--pp every rank's cache bytes must equal the prediction exactly")
    try:
        from kvplan.cli.measure_parallel import parallel_tables
        from kvplan.measure.parallel import ParallelOptions, measure_parallel
    except ImportError as exc:  # torch missing
        raise InputError(f"kvplan measure needs torch ({exc}); install it with `pip install 'kvplan[measure]'`") from None
    report = measure_parallel(opts, ParallelOptions(tp=tp, pp=pp, timeout_s=timeout))
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
