"""Orchestration of `kvplan measure`: check memory, build, run, read, and report.

Order of one invocation:
1. the prediction (pure): the spec cut to `--layers`, the calculator's cache at
   context + decode steps tokens, weights, the memory a run needs;
2. on CUDA, NVML's used memory before torch touches the device, then the context;
3. refuse (exit 2) if weights + cache + activation margin exceed free memory;
4. probes: device read-streaming bandwidth (what a decode step's reads run at) and copy
   bandwidth beside it; the model's widest projection in the run dtype at batch rows (GEMV,
   decode) and at prompt rows (GEMM, prefill);
5. the decoder with random weights (memory read before and after);
6. per (context, batch): allocate the cache (memory read before and after), one
   short warm-up prefill, one timed prefill, warm-up decode steps, a CUDA graph of
   one step (GPU, unless disabled or capture fails), the timed decode steps;
   optionally `--verify`; then free everything.
Out of memory anyway, or Ctrl-C: the tensors are dropped and the allocator's cache
emptied before the error leaves.
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field, fields
from typing import Callable

import torch

import kvplan
from kvplan.model.layout import CacheEstimate, CacheLayout
from kvplan.errors import InputError, KvplanError
from kvplan.model.formats import UnknownFormatError, parse_format, parse_format_pair
from kvplan.interrupts import raise_if_interrupted
from kvplan.measure import readings as rd
from kvplan.measure.allocator import AllocatorDelta, cuda_allocations, glibc_allocations
from kvplan.measure.cache import (
    CACHE_DTYPE_NAMES,
    TORCH_DTYPES,
    allocate_caches,
    cache_dtype,
    cache_tensors,
    storage_bytes,
)
from kvplan.measure.model import Decoder, StateLayer
from kvplan.model.shape import LayerKind
from kvplan.measure.predict import (
    RunArch,
    activation_bytes,
    build_arch,
    cache_layout,
    decode_flops,
    decode_weight_bytes_read,
    kv_bytes_read_per_step,
    largest_fitting_layers,
    memory_need,
    prefill_attention_dims,
    prefill_attention_flops,
    prefill_flops,
    truncate_spec,
    weight_count,
    widest_projection,
)
from kvplan.measure.report import KindReading, MeasureReport, ProbeReading, RunReading
from kvplan.measure.stability import STABLE_ROUNDS, STABLE_TOLERANCE, is_stable, last_rounds, repeat_until_stable, spread
from kvplan.model.spec import ModelSpec
from kvplan.units import counted, fmt_bytes

# Copy-bandwidth buffer: well past the last-level cache (H100/H200 L2 is 50 MiB,
# server CPU L3 tens of MiB), small beside the free memory.
COPY_BUFFER_BYTES = {"cuda": 1 << 30, "cpu": 128 << 20}
COPY_REPEATS = {"cuda": 20, "cpu": 5}
# Read-streaming passes over the same buffer size; the best is kept (a 128 MiB pass takes ~10 ms on the CPU).
READ_REPEATS = {"cuda": 20, "cpu": 10}
GEMV_REPEATS = {"cuda": 20, "cpu": 10}
# On the CPU the probes run again after each round's decode steps, and a run's prediction takes the
# median of the probes of its judged rounds: a shared CPU's speed moves over minutes (other tenants),
# so probes taken minutes before a run predict it from another machine. A GPU is the run's alone, and
# its 1 GiB probe buffer would sit beside the cache: there the probes before the runs stand.
PROBE_EVERY_ROUND = {"cuda": False, "cpu": True}
WARMUP_PREFILL_TOKENS = 16  # a short prompt first: kernels loaded, cuBLAS handles made
# --verify: max |cached - recomputed| logit, as a fraction of the largest |logit| (at
# least 1): fp32 agrees to rounding; bf16/fp16 round K/V and partial sums differently
# in the cached and the recomputed paths (fp16/bf16 machine epsilon 2^-11 / 2^-8).
VERIFY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
VERIFY_STEPS = 2


@dataclass(frozen=True, slots=True)
class _RunProbes:
    """The probes one run's prediction divides by: read bandwidth, GEMV at its batch, GEMM at its prompt
    rows, one state layer's scan step (None without state layers), the prefill attention (None without
    attending layers)."""

    read_gbps: float
    gemv_flops_per_s: float
    gemm_flops_per_s: float
    scan_s: float | None
    attention_flops_per_s: float | None

    @classmethod
    def median_of(cls, rounds: "list[_RunProbes]") -> "_RunProbes":
        """Each figure's median over `rounds` (each figure apart: a round's probes are not one reading)."""
        def med(values):
            return statistics.median(values) if values and values[0] is not None else None
        return cls(*(med([getattr(r, f) for r in rounds]) for f in (x.name for x in fields(cls))))


@dataclass(frozen=True)
class MeasureOptions:
    """What to run: the CLI's flags, parsed."""

    spec: ModelSpec
    layers: int | None = None
    contexts: tuple[int, ...] = (1024,)
    batches: tuple[int, ...] = (1,)
    decode_steps: int = 32
    warmup_steps: int = 4
    dtype: str = "auto"  # bf16 | fp16 | fp32 | auto (the spec's torch_dtype)
    kv_cache_dtype: str = "auto"  # a format name, or K/V; auto = the run dtype
    device: str = "auto"  # auto | cuda | cpu
    seed: int = 0
    cuda_graphs: bool = True
    verify: bool = False
    max_rounds: int = 5  # prefill + decode rounds at most, until the last ones agree (stability.py)
    progress: Callable[[str], None] | None = field(default=None, compare=False)


def resolve_device(choice: str) -> torch.device:
    """auto: CUDA when torch sees a GPU, else the CPU."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu (or auto)"
            )
        return torch.device("cuda", torch.cuda.current_device())
    if choice == "cpu":
        return torch.device("cpu")
    raise InputError(f"--device {choice!r}: use auto, cuda or cpu")


def _formats(opts: MeasureOptions, run_dtype: str):
    try:
        pair = parse_format_pair(opts.kv_cache_dtype, run_dtype)
    except UnknownFormatError as exc:
        raise InputError(f"--kv-cache-dtype: {exc}") from None
    for fmt in (pair.k, pair.v):
        if cache_dtype(fmt.name) is None:
            raise InputError(
                f"--kv-cache-dtype {opts.kv_cache_dtype}: kvplan measure stores {', '.join(CACHE_DTYPE_NAMES)}; "
                f"{fmt.name} is sized by `kvplan estimate` only"
            )
    return pair, parse_format(run_dtype)


def _check_storable(dtype: torch.dtype, compute: torch.dtype, device: torch.device, flag_value: str) -> None:
    """fp8 needs a torch with the dtype and a device that converts to and from it."""
    try:
        t = torch.zeros(4, dtype=dtype, device=device)
        t.view(torch.uint8).index_copy_(0, torch.arange(2, device=device), torch.ones(2, device=device, dtype=compute).to(dtype).view(torch.uint8))
        t.to(compute)
        rd.sync(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(
            f"--kv-cache-dtype {flag_value}: torch {torch.__version__} on {device} cannot store {dtype} ({exc}); "
            "use bf16, fp16 or fp32"
        ) from None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _refusal(
    opts: MeasureOptions, spec: ModelSpec, arch: RunArch, need, available: int, device: torch.device,
    kv_pair, state_format, param_bytes: int, totals: list[int], where: str,
) -> InputError:
    layers = arch.spec.num_hidden_layers
    head = (
        f"kvplan measure {spec.name} ({layers} of {spec.num_hidden_layers} layers) needs {fmt_bytes(need.total_bytes)} "
        f"(weights {fmt_bytes(need.weights_bytes)} + KV cache {fmt_bytes(need.kv_bytes)} + activations "
        f"{fmt_bytes(need.activation_bytes)}) but {device} has {fmt_bytes(available)} free ({where})"
    )
    fits = largest_fitting_layers(spec, kv_pair, state_format, param_bytes, totals, list(opts.batches), available)
    if fits >= 1:
        return InputError(f"{head}; try --layers {fits}" + (" or a smaller --batch" if max(opts.batches) > 1 else ""))
    one = build_arch(truncate_spec(spec, 1))
    lo, hi = 0, max(opts.batches) - 1
    while lo < hi:  # the need grows with the batch: bisect for the largest batch that fits
        mid = (lo + hi + 1) // 2
        if memory_need(one, kv_pair, state_format, param_bytes, totals, [mid]).total_bytes <= available:
            lo = mid
        else:
            hi = mid - 1
    if lo >= 1:
        return InputError(f"{head}; try --layers 1 --batch {lo}")
    return InputError(f"{head}; even --layers 1 at batch 1 does not fit: try a shorter --context")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class _Session:
    """Holds every tensor of one invocation so they can all be dropped on any exit."""

    def __init__(self) -> None:
        self.model: Decoder | None = None
        self.caches: list | None = None
        self.graph = None
        self.nvml: rd.Nvml | None = None
        self.malloc: rd.GlibcMalloc | None = None
        self.mmap_pinned = False  # glibc's mmap threshold fixed, so its rounding can be modelled
        self.model_cuda_allocator = False  # the caching allocator runs at its default settings

    def drop_run(self) -> None:
        """Drop one run's tensors; the next run settles the allocator before its reading."""
        self.caches = None
        self.graph = None

    def close(self, device: torch.device) -> None:
        self.caches = None
        self.graph = None
        self.model = None
        rd.settle(device)
        if self.nvml is not None:
            self.nvml.close()
            self.nvml = None


def run_dtype_of(opts: MeasureOptions) -> str:
    """The dtype the run uses (auto: the spec's), after the checks every measure run shares (InputError, exit 2)."""
    run_dtype = opts.spec.dtype if opts.dtype == "auto" else opts.dtype
    if run_dtype not in TORCH_DTYPES:
        raise InputError(f"--dtype {opts.dtype!r}: use auto, bf16, fp16 or fp32")
    if opts.decode_steps < 1:
        raise InputError(f"--decode-steps must be at least 1, got {opts.decode_steps}")
    if opts.warmup_steps < 0:
        raise InputError(f"--warmup-steps must be 0 or more, got {opts.warmup_steps}")
    return run_dtype


def measure(opts: MeasureOptions) -> MeasureReport:
    """Run the measurement described by `opts`; InputError (exit 2) when it cannot run or fit."""
    say = opts.progress or (lambda message: None)
    spec = opts.spec
    run_dtype = run_dtype_of(opts)
    if opts.max_rounds < 1:
        raise InputError(f"--max-rounds must be at least 1, got {opts.max_rounds}")
    kv_pair, state_format = _formats(opts, run_dtype)
    spec_run = truncate_spec(spec, opts.layers)
    arch = build_arch(spec_run)
    layout = cache_layout(arch, kv_pair, state_format)
    param_bytes = parse_format(run_dtype).bytes_for(1)
    totals = [c + opts.decode_steps for c in opts.contexts]
    need = memory_need(arch, kv_pair, state_format, param_bytes, totals, list(opts.batches))

    compute = TORCH_DTYPES[run_dtype]
    session = _Session()
    notes = list(arch.notes)
    if spec.weights_dtype and spec.weights_dtype != run_dtype:
        notes.append(f"the checkpoint stores linear weights as {spec.weights_dtype}; this run holds them in {run_dtype}")
    nvml_before_torch = cuda_context = driver = None
    phase = "starting"
    device = torch.device("cpu")  # until resolve_device picks one; cleanup needs a device
    try:
        if opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available()):
            cuda_was_up = torch.cuda.is_initialized()  # then NVML's "before" already holds our context
            try:
                session.nvml = rd.Nvml()  # before torch picks a device, so no context is counted yet
            except ImportError:
                notes.append("NVML readings skipped: nvidia-ml-py is not installed (pip install nvidia-ml-py)")
            except Exception as exc:  # pynvml.NVMLError and friends: no NVML on this machine
                raise_if_interrupted(exc)
                notes.append(f"NVML readings skipped: {exc}")
        device = resolve_device(opts.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.empty(1, device=device)  # creates the CUDA context
            rd.sync(device)
            if session.nvml is not None:
                try:
                    attached = session.nvml.attach(device)
                except Exception as exc:  # pynvml.NVMLError: an NVML that answers some queries and not others
                    raise_if_interrupted(exc)
                    attached = False
                    notes.append(f"NVML readings skipped: {type(exc).__name__}: {exc}")
                if attached:
                    driver = session.nvml.driver_version()
                    nvml_before_torch = session.nvml.baseline_used
                    if cuda_was_up:
                        notes.append("CUDA was initialised before kvplan measure began: the context is not separated")
                    elif nvml_before_torch is not None and (used_now := session.nvml.used()) is not None:
                        cuda_context = used_now - nvml_before_torch - torch.cuda.memory_reserved(device)
                else:
                    if not any(n.startswith("NVML readings skipped") for n in notes):
                        notes.append("NVML readings skipped: no NVML device matches torch's device UUID or PCI bus id")
                    session.nvml.close()
                    session.nvml = None
            available, where = torch.cuda.mem_get_info(device)[0], "torch.cuda.mem_get_info"
            settings = rd.allocator_settings()
            session.model_cuda_allocator = settings is None
            if settings is not None:
                notes.append(f"{settings}: the caching allocator's rounding is modelled at its defaults only, so it is not predicted here")
        else:
            available, where = rd.mem_available_bytes(), "MemAvailable"
            try:
                session.malloc = rd.GlibcMalloc()
                session.mmap_pinned = session.malloc.pin_mmap_threshold()
                if session.mmap_pinned:
                    notes.append(
                        f"glibc's mmap threshold is pinned at {rd.MMAP_THRESHOLD_BYTES // 1024} KiB (mallopt), so each "
                        "cache tensor above it gets fresh pages, and the chunk header and page rounding it adds are modelled"
                    )
            except OSError as exc:
                notes.append(f"malloc readings skipped: {exc}")
        if need.total_bytes > available:
            raise _refusal(opts, spec, arch, need, available, device, kv_pair, state_format, param_bytes, totals, where)
        for fmt in {kv_pair.k.name, kv_pair.v.name}:
            dt = cache_dtype(fmt)
            assert dt is not None
            if dt not in TORCH_DTYPES.values():
                _check_storable(dt, compute, device, opts.kv_cache_dtype)

        with torch.no_grad():
            phase = "probing bandwidth"
            say(f"probing read and copy bandwidth and {run_dtype} GEMV / GEMM throughput on {device} …")
            buffer = min(COPY_BUFFER_BYTES[device.type], max(1 << 20, available // 16))
            read = rd.read_bandwidth(device, buffer, READ_REPEATS[device.type])
            bandwidth = rd.copy_bandwidth(device, buffer, COPY_REPEATS[device.type])
            features = widest_projection(arch)
            # a decode step reads each weight once: the GEMV probe cycles through copies of its weight that
            # together fill the read probe's buffer (past the last-level cache), so none is read from the cache
            gemv = {b: rd.linear_throughput(device, compute, b, *features, GEMV_REPEATS[device.type], rotate_bytes=buffer)
                    for b in opts.batches}
            gemm = {b * c: rd.gemm_throughput(device, compute, b * c, *features) for b in opts.batches for c in opts.contexts}
            attention = {}  # (batch, context) -> the prefill attention probe, for models with attending layers
            qk = v = v_kernel = 0
            if any(layer.attends_as is not None for layer in arch.layers):
                qk, v, v_kernel = prefill_attention_dims(arch)
                attention = {(b, c): rd.attention_throughput(device, compute, b, arch.heads, c, qk, v, v_kernel)
                             for b in opts.batches for c in opts.contexts}

            phase = "building the model"
            say(f"building {spec.name}: {arch.spec.num_hidden_layers} of {spec.num_hidden_layers} layers, random {run_dtype} weights …")
            wc = weight_count(arch)
            rd.settle(device)
            before = _memory(device, session)
            allocator_state = _allocator_state(device, session)
            session.model = Decoder(arch, device, compute, opts.seed)
            rd.sync(device)
            after = _memory(device, session)
            measured_weights = storage_bytes(session.model.parameter_tensors())
            scan = _scan_probes(session.model, opts.batches, cache_dtype(state_format.name), device, buffer)
            if scan:
                notes.append(
                    "state layers scan token by token (elementwise work, not in the FLOP counts): the predicted decode "
                    "step adds state layers x the scan probe's one-token time, and the predicted prefill adds "
                    "context x that"
                )
            weights_modelled = _allocator_model(device, allocator_state, list(session.model.allocation_sizes))

            scan_layer = _first_state_layer(session.model)

            def probes_now(batch: int, context: int) -> _RunProbes:
                """The run's probes again, at the shapes of the probes before it (the same GEMM rows)."""
                g = gemm[batch * context]
                a = attention.get((batch, context))
                scan_s = None
                if scan_layer is not None:
                    scan_s = _scan_step(scan_layer, batch, cache_dtype(state_format.name), device, buffer).seconds
                return _RunProbes(
                    rd.read_bandwidth(device, buffer, READ_REPEATS[device.type]).gbps,
                    rd.linear_throughput(device, compute, batch, *features, GEMV_REPEATS[device.type],
                                         rotate_bytes=buffer).flops_per_s,
                    rd.linear_throughput(device, compute, g.rows, *features, g.repeats).flops_per_s,
                    scan_s,
                    rd.attention_throughput(device, compute, batch, arch.heads, context, qk, v, v_kernel).flops_per_s
                    if a is not None else None,
                )

            runs = []
            for context, total in zip(opts.contexts, totals):
                for batch in opts.batches:
                    phase = f"running context {context:,}, batch {batch}"
                    say(f"context {context:,} + {opts.decode_steps} decode steps, batch {batch} …")
                    est = layout.at(total, batch)
                    before_run = _RunProbes(
                        read.gbps, gemv[batch].flops_per_s, gemm[batch * context].flops_per_s,
                        scan[batch].seconds if batch in scan else None,
                        attention[(batch, context)].flops_per_s if (batch, context) in attention else None,
                    )
                    reprobe = (lambda b=batch, c=context: probes_now(b, c)) if PROBE_EVERY_ROUND[device.type] else None
                    runs.append(_run_one(opts, session, arch, layout, est, context, batch, device, compute, kv_pair,
                                         state_format, before_run, reprobe, param_bytes, run_dtype))
                    session.drop_run()
    except KvplanError:
        raise
    except BaseException as exc:
        if _is_oom(exc):
            session.close(device)
            raise KvplanError(
                f"out of memory on {device} while {phase} ({str(exc).splitlines()[0][:160]}); "
                "try fewer --layers, a smaller --batch or a shorter --context"
            ) from None
        raise
    finally:
        session.close(device)

    return MeasureReport(
        kvplan_version=kvplan.__version__,
        model=spec.name,
        layers_run=arch.spec.num_hidden_layers,
        layers_total=spec.num_hidden_layers,
        dtype=run_dtype,
        kv_cache_dtype=kv_pair.name,
        state_dtype=state_format.name,
        device=str(device) if device.type == "cpu" else f"cuda:{device.index}",
        allocator=("torch CUDA caching allocator" if device.type == "cuda" else "glibc malloc (mallinfo2)" if session.malloc is not None else None),
        device_name=_device_name(device),
        driver_version=driver,
        cuda_version=torch.version.cuda if device.type == "cuda" else None,
        torch_version=torch.__version__,
        seed=opts.seed,
        read_bandwidth_gbps=read.gbps,
        read_buffer_bytes=read.buffer_bytes,
        copy_bandwidth_gbps=bandwidth.gbps,
        copy_buffer_bytes=bandwidth.buffer_bytes,
        parameters_run=wc.total,
        predicted_weight_bytes=wc.total * param_bytes,
        measured_weight_bytes=measured_weights,
        weights_allocated_delta_bytes=_delta(after.allocated, before.allocated),
        weights_predicted_allocated_delta_bytes=wc.total * param_bytes + weights_modelled.rounding_bytes if weights_modelled else None,
        weights_nvml_delta_bytes=_delta(after.nvml, before.nvml),
        weights_rss_delta_bytes=_delta(after.rss, before.rss),
        nvml_used_before_torch_bytes=nvml_before_torch,
        cuda_context_bytes=cuda_context,
        memory_needed_bytes=need.total_bytes,
        memory_available_bytes=available,
        probes=(
            ProbeReading("read bandwidth", read.gbps, "GB/s", read.method),
            ProbeReading("copy bandwidth", bandwidth.gbps, "GB/s", bandwidth.method),
            *(ProbeReading(f"GEMV, batch {b}", g.flops_per_s / 1e12, "TFLOP/s", g.method) for b, g in gemv.items()),
            *(ProbeReading(f"GEMM, {rows:,} prompt rows", g.flops_per_s / 1e12, "TFLOP/s", g.method) for rows, g in gemm.items()),
            *(ProbeReading(f"attention, batch {b}, {a.tokens:,} tokens", a.flops_per_s / 1e12, "TFLOP/s", a.method)
              for (b, _), a in attention.items()),
            *(ProbeReading(f"scan step, batch {b}", r.seconds * 1e3, "ms", r.method) for b, r in scan.items()),
        ),
        notes=tuple(notes + _run_notes(opts, device)),
        runs=tuple(runs),
    )


SCAN_REPEATS = 10
SCAN_COPIES_MAX = 16


def _first_state_layer(model: Decoder) -> StateLayer | None:
    return next((b.mixer for b in model.layers if isinstance(b.mixer, StateLayer)), None)


def _scan_step(layer: StateLayer, batch: int, state_dtype: torch.dtype, device: torch.device,
               rotate_bytes: int) -> rd.StepReading:
    """One token of `layer`'s scan at `batch`, cycling through copies of its fp32 step parameters that together
    hold `rotate_bytes` (at least one copy): a prefill's loop streams the prompt's activations beside them, so
    each token reads its step weights (Mamba-1's x_proj and dt_proj: 17.9 MB a Jamba layer) from memory, where a
    probe that repeats one set would read them from the last-level cache (docs/validation)."""
    params, states, dtypes, u, dt_in = layer.scan_inputs(batch, state_dtype, device)
    per_copy = sum(t.numel() * t.element_size() for t in params.values())
    # at most SCAN_COPIES_MAX: parameters that small sit in the cache whatever a prefill streams beside them
    copies = max(1, min(SCAN_COPIES_MAX, -(-rotate_bytes // per_copy)))
    sets = [params] + [{k: v.clone() for k, v in params.items()} for _ in range(copies - 1)]
    turn = iter(range(1 << 62))
    try:
        rotation = (f", cycling through {len(sets)} copies of its fp32 step parameters ({fmt_bytes(len(sets) * per_copy)} "
                    "in all), as a prefill's loop reads them past the prompt's activations" if len(sets) > 1 else "")
        return rd.step_time(device, lambda: layer.scan_token(sets[next(turn) % len(sets)], states, dtypes, u, dt_in),
                            SCAN_REPEATS, f"one token of the first state layer's scan ({layer.s.variant}), batch "
                            f"{batch}{rotation}")
    finally:
        del sets, params


def _scan_probes(model: Decoder, batches, state_dtype: torch.dtype, device: torch.device,
                 rotate_bytes: int) -> dict[int, rd.StepReading]:
    """batch -> one state layer's scan step (every state layer has the same shapes), timed on the
    model's own first state layer; empty without state layers."""
    layer = _first_state_layer(model)
    if layer is None:
        return {}
    return {b: _scan_step(layer, b, state_dtype, device, rotate_bytes) for b in batches}


def _run_notes(opts: MeasureOptions, device: torch.device) -> list[str]:
    return [
        f"the cache holds context + {opts.decode_steps} decode-step tokens and is predicted at that count; "
        "decode attends over every pre-allocated slot with a mask (static shapes, as CUDA graphs need), "
        "so a step reads the whole cache",
        "predicted decode step = the larger of memory time = (weights read + KV read) / measured read bandwidth "
        "(a step streams reads; the copy figure, read + write, is shown beside it) and compute time = the step's "
        "FLOPs / the GEMV throughput measured at the model's widest projection, batch rows, run dtype; predicted "
        "prefill = the projections' and the last token's LM head FLOPs / the GEMM throughput at the same "
        "projection with prompt rows, plus the causal attention's FLOPs / the attention probe's throughput "
        "(scaled_dot_product_attention at the model's heads and head sizes over the prompt; windowed layers "
        "are counted at their pairs but timed at the full causal rate); norms and activations are left out",
        ("the probes run again after each round's decode steps, and each run is predicted from the medians of "
         "its judged rounds' probes (a shared CPU's speed moves over minutes); the probe table shows the probes "
         "taken before the runs" if PROBE_EVERY_ROUND[device.type] else
         "the probes run once, before the runs (the GPU is the run's alone)"),
        f"decode feeds fixed random token ids (no sampling); a round is one prefill (after a "
        f"{WARMUP_PREFILL_TOKENS}-token warm-up before the first) and {counted(opts.decode_steps, 'decode step')} "
        f"(after {counted(opts.warmup_steps, 'warm-up step')} before the first); "
        + (f"rounds repeat, at most {opts.max_rounds}, until the last {min(STABLE_ROUNDS, opts.max_rounds)} agree "
           f"within {STABLE_TOLERANCE:.0%} (range / median); the measured figures are the medians of those rounds, "
           "and the error is judged against them" if opts.max_rounds > 1 else
           "one round only (--max-rounds 1): its figures are the measured ones, and their stability is not judged"),
    ]


@dataclass(frozen=True, slots=True)
class _Memory:
    rss: int | None
    allocated: int | None
    reserved: int | None
    nvml: int | None


def _memory(device: torch.device, session: _Session) -> _Memory:
    if device.type == "cuda":
        alloc = rd.allocator_reading(device)
        assert alloc is not None
        nvml = session.nvml.used() if session.nvml is not None else None
        return _Memory(None, alloc.allocated, alloc.reserved, nvml)
    malloc = session.malloc.reading() if session.malloc is not None else None
    return _Memory(rd.rss_bytes(), malloc.allocated if malloc else None, malloc.reserved if malloc else None, None)


def _delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def _allocator_state(device: torch.device, session: _Session):
    """What the allocator model starts from, read just before the cache is allocated:
    CUDA, the free blocks the caching allocator holds; CPU, the heap's top chunk.
    None where the rules are not modelled (allocator settings, no glibc)."""
    if device.type == "cuda":
        return rd.cuda_free_blocks(device) if session.model_cuda_allocator else None
    if session.malloc is not None and session.mmap_pinned:
        return session.malloc.heap_top_bytes()
    return None


def _allocator_model(device: torch.device, state, sizes: list[int]) -> AllocatorDelta | None:
    """The allocator's rules applied to tensors of `sizes` storage bytes, in allocation order."""
    if state is None:
        return None
    if device.type == "cuda":
        return cuda_allocations(sizes, state)
    return glibc_allocations(sizes, rd.MMAP_THRESHOLD_BYTES, state, os.sysconf("SC_PAGE_SIZE"))


def _predicted_reserved(device: torch.device, est: CacheEstimate, measured_kv: int, modelled: AllocatorDelta | None) -> int | None:
    """CUDA: the segments the model cudaMallocs (a reused free block costs none); CPU: every
    chunk, from the heap or mmapped. Both shifted by any miss of the storage against the calculator."""
    if modelled is None:
        return None
    if device.type == "cuda":
        return modelled.reserved_bytes + est.kv_bytes_total - measured_kv
    return est.kv_bytes_total + modelled.rounding_bytes


def _kind_readings(arch: RunArch, est: CacheEstimate, caches: list) -> tuple[KindReading, ...]:
    measured: dict[str, int] = {}
    for layer, cache in zip(arch.layers, caches):
        if cache is not None:
            measured[layer.kind.value] = measured.get(layer.kind.value, 0) + storage_bytes(cache.tensors())
    return tuple(
        KindReading(row.kind, row.layers, row.bytes_total, measured.get(row.kind, 0)) for row in est.by_kind
    )


def _capture_graph(step: Callable[[], torch.Tensor], device: torch.device):
    """A CUDA graph of one decode step, warmed up on a side stream as torch.cuda.graphs asks."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def _run_one(
    opts: MeasureOptions, session: _Session, arch: RunArch, layout: CacheLayout, est: CacheEstimate,
    context: int, batch: int, device: torch.device, compute: torch.dtype, kv_pair, state_format,
    before_run: _RunProbes, reprobe: Callable[[], _RunProbes] | None, param_bytes: int, run_dtype: str,
) -> RunReading:
    """One (context, batch): allocate its cache, run rounds until stable, predict from the probes
    (`reprobe`, where given, probes again after each round's decode steps: the judged rounds' medians
    are used; else `before_run`, the probes taken before every run)."""
    model = session.model
    assert model is not None
    steps = opts.decode_steps
    total = context + steps
    k_dtype, v_dtype = cache_dtype(kv_pair.k.name), cache_dtype(kv_pair.v.name)
    state_dtype = cache_dtype(state_format.name)
    assert k_dtype is not None and v_dtype is not None and state_dtype is not None

    rd.settle(device)
    before = _memory(device, session)
    allocator_state = _allocator_state(device, session)
    session.caches = allocate_caches(arch, total, batch, k_dtype, v_dtype, state_dtype, device)
    rd.sync(device)
    after = _memory(device, session)
    caches = session.caches
    measured_kv = storage_bytes(cache_tensors(caches))
    modelled = _allocator_model(device, allocator_state, [t.untyped_storage().nbytes() for t in cache_tensors(caches)])

    gen = torch.Generator(device=device).manual_seed(opts.seed + 1)
    tokens = torch.randint(0, arch.vocab, (batch, total), device=device, generator=gen)
    prompt = tokens[:, :context]
    model.prefill(prompt[:, : min(context, WARMUP_PREFILL_TOKENS)], caches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_tokens = tokens[:, context : context + 1].clone()  # (B, 1), fixed
    pos = torch.zeros(1, dtype=torch.long, device=device)

    def step() -> torch.Tensor:
        return model.decode(step_tokens, pos, caches)

    # rounds of (one timed prefill, `steps` timed decode steps) until the last rounds agree (stability.py)
    round_steps: list[list[float]] = []
    round_probes: list[_RunProbes] = []
    mode: str = "eager"
    run_step: Callable[[], object] = step

    def run_round(index: int) -> tuple[float, float]:
        nonlocal mode, run_step
        prefill_s = rd.timed_once(device, lambda: model.prefill(prompt, caches))
        if index == 0:  # warm-up steps and the CUDA graph after the first prefill, as before rounds existed
            mode, run_step = _prepare_decode(opts, session, step, pos, context, device)
        timer = rd.StepTimer(device)
        for i in range(steps):
            pos.fill_(context + i)
            timer.time(run_step)
        round_steps.append(timer.seconds())
        if reprobe is not None:
            round_probes.append(reprobe())
        return prefill_s, statistics.median(round_steps[-1])

    prefill_rounds, decode_rounds = repeat_until_stable(run_round, opts.max_rounds)
    judged = last_rounds(decode_rounds, opts.max_rounds)
    seconds = [s for r in round_steps[-len(judged):] for s in r]
    stable = None if opts.max_rounds < 2 else bool(
        is_stable(decode_rounds, opts.max_rounds) and is_stable(prefill_rounds, opts.max_rounds)
    )
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    verify = {}
    if opts.verify:
        verify = _verify(model, caches, tokens, context, min(steps, VERIFY_STEPS), run_dtype)

    probes = _RunProbes.median_of(round_probes[-len(judged):]) if round_probes else before_run
    weight_read = decode_weight_bytes_read(arch, batch, param_bytes)
    kv_read = kv_bytes_read_per_step(arch, est)
    bytes_read = weight_read + kv_read
    measured_step = statistics.median(judged)  # the median of the judged rounds' medians
    prefill_s = statistics.median(last_rounds(prefill_rounds, opts.max_rounds))
    achieved = bytes_read / measured_step / 1e9
    flops = prefill_flops(arch, context, batch)
    attends = probes.attention_flops_per_s is not None
    attention_flops = prefill_attention_flops(arch, context, batch) if attends else 0
    attention_s = attention_flops / probes.attention_flops_per_s if attends else 0.0
    step_flops = decode_flops(arch, total, batch)
    memory_s = bytes_read / (probes.read_gbps * 1e9)
    compute_s = step_flops / probes.gemv_flops_per_s
    state_layers = sum(1 for layer in arch.layers if layer.kind is LayerKind.STATE)
    scan_s = state_layers * probes.scan_s if probes.scan_s is not None else 0.0
    nvml_before, nvml_after = before.nvml, after.nvml
    return RunReading(
        context=context,
        decode_steps=steps,
        total_tokens=total,
        batch=batch,
        predicted_kv_bytes=est.kv_bytes_total,
        measured_kv_bytes=measured_kv,
        kv_by_kind=_kind_readings(arch, est, caches),
        allocated_delta_bytes=_delta(after.allocated, before.allocated),
        reserved_delta_bytes=_delta(after.reserved, before.reserved),
        allocator_rounding_bytes=modelled.rounding_bytes if modelled else None,
        allocator_segment_bytes=modelled.reserved_bytes if modelled else None,
        allocator_segments=modelled.segments if modelled else None,
        predicted_allocated_delta_bytes=est.kv_bytes_total + modelled.rounding_bytes if modelled else None,
        predicted_reserved_delta_bytes=_predicted_reserved(device, est, measured_kv, modelled),
        nvml_used_before_bytes=nvml_before,
        nvml_used_after_bytes=nvml_after,
        nvml_used_delta_bytes=_delta(nvml_after, nvml_before),
        rss_delta_bytes=_delta(after.rss, before.rss),
        peak_allocated_bytes=peak,
        predicted_peak_bytes=weight_count(arch).total * param_bytes + est.kv_bytes_total + activation_bytes(arch, total, batch, param_bytes),
        weight_bytes_read_per_step=weight_read,
        kv_bytes_read_per_step=kv_read,
        bytes_read_per_step=bytes_read,
        decode_flops_per_step=step_flops,
        predicted_decode_memory_s=memory_s,
        predicted_decode_compute_s=compute_s,
        decode_bound="memory" if memory_s >= compute_s else "compute",
        predicted_decode_step_s=max(memory_s, compute_s) + scan_s,
        gemv_tflops=probes.gemv_flops_per_s / 1e12,
        measured_decode_step_s=measured_step,
        decode_step_min_s=min(seconds),
        decode_step_max_s=max(seconds),
        rounds=len(decode_rounds),
        stable=stable,
        decode_round_medians_s=tuple(decode_rounds),
        prefill_rounds_s=tuple(prefill_rounds),
        decode_spread=spread(judged),
        prefill_spread=spread(last_rounds(prefill_rounds, opts.max_rounds)),
        decode_mode=mode,
        achieved_gbps=achieved,
        bandwidth_utilisation=achieved / probes.read_gbps,
        read_gbps=probes.read_gbps,
        probe_rounds=len(round_probes[-len(judged):]) if round_probes else 0,
        prefill_flops=flops,
        gemm_tflops=probes.gemm_flops_per_s / 1e12,
        predicted_prefill_s=(flops - attention_flops) / probes.gemm_flops_per_s + attention_s + context * scan_s,
        prefill_attention_flops=attention_flops,
        attention_tflops=probes.attention_flops_per_s / 1e12 if attends else None,
        measured_prefill_s=prefill_s,
        state_layers=state_layers,
        scan_s_per_token=scan_s,
        **verify,
    )


def _prepare_decode(
    opts: MeasureOptions, session: _Session, step: Callable[[], torch.Tensor], pos: torch.Tensor, context: int,
    device: torch.device,
) -> tuple[str, Callable[[], object]]:
    """Untimed warm-up steps, then a CUDA graph of one step where asked; (mode, what to time)."""
    for i in range(opts.warmup_steps):
        pos.fill_(context + i % opts.decode_steps)
        step()
    mode = "eager"
    if device.type == "cuda":
        if opts.cuda_graphs:
            pos.fill_(context)
            try:
                session.graph = _capture_graph(step, device)
                mode = "cuda-graph"
            except Exception as exc:  # capture is best-effort: time the eager step instead
                raise_if_interrupted(exc)  # a Ctrl-C during capture surfaces as capture_end's error
                torch.cuda.synchronize(device)
                session.graph = None
                mode = f"eager (graph capture failed: {type(exc).__name__})"
        else:
            mode = "eager (--no-cuda-graphs)"
    return mode, session.graph.replay if session.graph is not None else step


def check_cached_decode(model: Decoder, caches: list, tokens: torch.Tensor, context: int, steps: int) -> tuple[float, float]:
    """Prefill `context` tokens into `caches`, decode `steps` more one at a time, and compare
    every step's logits with a recomputation of the whole prefix without a cache.

    Returns (max |cached - recomputed| logit, max |recomputed logit|)."""
    model.prefill(tokens[:, :context], caches)
    worst = scale = 0.0
    pos = torch.zeros(1, dtype=torch.long, device=tokens.device)
    for i in range(steps):
        p = context + i
        pos.fill_(p)
        cached = model.decode(tokens[:, p : p + 1], pos, caches).float()
        recomputed = model.prefill(tokens[:, : p + 1]).float()
        worst = max(worst, (cached - recomputed).abs().max().item())
        scale = max(scale, recomputed.abs().max().item())
    return worst, scale


def _verify(model: Decoder, caches: list, tokens: torch.Tensor, context: int, steps: int, run_dtype: str) -> dict:
    worst, scale = check_cached_decode(model, caches, tokens, context, steps)
    return {
        "verify_max_abs_logit_diff": worst,
        "verify_logit_scale": scale,
        "verify_tolerance": VERIFY_TOLERANCE[run_dtype],
    }
