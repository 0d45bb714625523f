"""One pipeline: a model spec, an engine name and one frozen `Settings` in; frozen `Answer`s out.

`kvplan estimate` (every engine), `kvplan compare` (one run per engine), `kvplan check`
and `kvplan diff` all call `sweep` / `run` here, and `kvplan.estimate()` / `kvplan.compare()`
are the same calls; `Answer.to_dict()` is what `--format json` prints.

Every engine is a module of `kvplan.engines` (`kvplan.engines.get(name)`) that gives the
cache it allocates (`EngineCache`) and, with a GPU, its capacity by its own budget rule
(`capacity`, on `MemoryInputs`: `kvplan.plan.capacity.memory_inputs` for the profiles, the
planner's weights per stage for ideal and vllm). The planner (`kvplan.plan.planner`) adds
latency, cost and workload for every engine: ideal and vllm as its `Plan`, the profiles
as a `Roofline` over the KV bytes they allocate. Pure: reads GPU and calibration files only
through `kvplan.plan.gpus` / `kvplan.plan.deploy`; no printing.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

from kvplan.errors import InputError, require_at_least
from kvplan.options import PLANNED as PLANNED_NAMES

Size = Union[str, int, None]  # bytes, or a size with its unit ('2GiB')


class Settings(NamedTuple):
    """Every deployment and engine setting of one question (None: the engine's or kvplan's stated default).

    Immutable (`settings._replace(tp=2)` gives another); a NamedTuple rather than a frozen dataclass because
    `kvplan estimate` builds it on its cold-start path, where a 30-field dataclass costs a millisecond or two.

    The GPU is a catalog name or GPU YAML (`gpu`) with overrides; `engine_options`
    maps an engine's option keys (`kvplan.options.OPTION_KEYS`: `hf_cache`,
    `parallel`, `page_size`, ...) to values, and keys of other engines are skipped.
    """

    context: int = 8192
    batch: int = 1
    kv_cache_dtype: str = "auto"
    state_dtype: Optional[str] = None
    tp: int = 1
    pp: int = 1
    gpu: Optional[str] = None
    gpu_memory: Optional[str] = None
    gpu_bandwidth: Optional[float] = None
    usd_per_hour: Optional[float] = None
    gpu_bf16_tflops: Optional[float] = None
    gpu_label: Optional[str] = None  # the name results give the GPU (None: its name with the overrides named)
    dtype: Optional[str] = None  # weights
    weights_bytes: Size = None  # --weights-bytes: the weights' total bytes, for a model kvplan cannot size them for
    block_size: Optional[int] = None  # vllm / ideal
    gpu_memory_utilization: Optional[float] = None  # vllm / ideal
    max_num_batched_tokens: Optional[int] = None  # vllm / ideal (None: vLLM's default for the GPU)
    max_num_seqs: Optional[int] = None  # vllm / ideal (None: vLLM's default for the GPU)
    cuda_total_memory: Size = None  # vllm / ideal: cudaMemGetInfo's total (None: the GPU's memory)
    activation_memory: Size = None
    non_torch_memory: Size = None
    bandwidth_efficiency: Optional[float] = None
    compute_efficiency: Optional[float] = None
    calibration: Optional[str] = None  # a `kvplan measure --json` report: its bandwidth efficiency
    prompt_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    requests_per_s: Optional[float] = None
    shared_prefix_tokens: int = 0
    link_gbps: Optional[float] = None  # --link-gbps (None: the GPU catalog's interconnect)
    link_latency_us: Optional[float] = None
    communication: bool = True
    expert_parallel: bool = False
    dp: int = 1  # --data-parallel-size: engine instances (ideal, vllm with a GPU; MoE models)
    engine_options: Mapping[str, Any] = MappingProxyType({})
    concurrency_curve: bool = False  # vllm / ideal with a GPU: max sequences at 1k, 2k, 4k, ... (estimate's table)
    roofline: bool = True  # False: a profile's capacity only (a GPU given by its memory alone has no bandwidth)

    @property
    def has_gpu(self) -> bool:
        return any(v is not None for v in (self.gpu, self.gpu_memory, self.gpu_bandwidth, self.usd_per_hour,
                                            self.gpu_bf16_tflops))


class Answer(NamedTuple):
    """One engine's answer for one (context, batch): its cache and, with a GPU, its capacity.

    ideal and vllm also carry kvplan's layer table (`estimate`, a `CacheEstimate`) and,
    with a GPU, the planner's `plan` (latency, cost, workload); `cache` is their
    `EngineCache` row, filled when asked for (`sweep(..., engine_rows=True)`, as compare does).
    Immutable; a NamedTuple, not a frozen dataclass, because a 100,000-point sweep builds one per point.
    """

    engine: str
    model: str
    context: int
    batch: int
    cache: Any = None  # kvplan.engines.EngineCache
    capacity: Any = None  # kvplan.engines.EngineCapacity (with a GPU)
    estimate: Any = None  # kvplan.model.layout.CacheEstimate (ideal, vllm)
    plan: Any = None  # kvplan.plan.planner.Plan (ideal, vllm with a GPU)
    concurrency_by_context: Optional[tuple] = None
    memory: Any = None  # kvplan.engines.MemoryInputs the profiles' budget rules read (with a GPU)
    roofline: Any = None  # kvplan.plan.planner.Roofline of a profile (with a GPU; ideal and vllm: in `plan`)

    def to_dict(self) -> dict:
        """What `kvplan estimate --engine <engine> --format json` prints for this one answer."""
        if self.estimate is not None:
            record = self.estimate.to_dict()
            if self.plan is not None:
                record.update(self.plan.to_dict())
            if self.concurrency_by_context is not None:
                record["concurrency_by_context"] = list(self.concurrency_by_context)
            return record
        record = {**self.cache.to_dict(), "capacity": None if self.capacity is None else self.capacity.to_dict()}
        if self.roofline is not None:
            record["latency"] = self.roofline.to_dict()
        return record


# ------------------------------------------------------------------ inputs


def device(s: Settings):
    """(the GPU `s` names, with its overrides, and the label a row shows for it); (None, None) without one."""
    if not s.has_gpu:  # a KV-only question loads neither the GPU catalog nor pydantic
        return None, None
    from kvplan.plan.gpus import gpu_from_options, override_label

    memory = str(s.gpu_memory) if isinstance(s.gpu_memory, int) and not isinstance(s.gpu_memory, bool) else s.gpu_memory
    gpu = gpu_from_options(s.gpu, memory, s.gpu_bandwidth, s.usd_per_hour, s.gpu_bf16_tflops)
    if gpu is None:
        return None, None
    return gpu, s.gpu_label or override_label(gpu, memory, s.gpu_bandwidth, s.usd_per_hour, s.gpu_bf16_tflops)


def formats(spec, s: Settings):
    """(--kv-cache-dtype as kvplan's formats, --state-dtype): an engine-only name (f16) sizes the ideal in the
    model's dtype and the engine judges the name itself (`kvplan.engines.compare.ideal_format`)."""
    from kvplan.engines.vllm_flags import auto_kv_dtype
    from kvplan.model.formats import UnknownFormatError, parse_format_pair, parse_state_format

    model_dtype = auto_kv_dtype(spec.dtype, s.dtype)  # auto: the model's dtype as it runs (a float --dtype moves it)
    try:
        pair = parse_format_pair(s.kv_cache_dtype, model_dtype)
    except UnknownFormatError:  # an engine's own name, or a typo (the engines' names are loaded only now)
        from kvplan.engines.compare import ideal_format

        pair = ideal_format(s.kv_cache_dtype, model_dtype)
    try:
        state = parse_state_format(s.state_dtype) if s.state_dtype else None
    except UnknownFormatError as exc:
        raise InputError(f"--state-dtype: {exc}") from None
    return pair, state


def _bytes(value: Size, flag: str) -> Optional[int]:
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    from kvplan.units import parse_bytes

    return parse_bytes(value, flag)


def has_state_layers(spec) -> bool:
    """Whether the model has state layers (whose dtypes an engine may set apart)."""
    from kvplan.model.kinds import LayerKind

    return LayerKind.STATE in spec.layer_kinds


def planned_layout(spec, engine: str, pair, state, s: Settings):
    """ideal / vllm: the layout at the block size the engine pages with (vLLM raises it for a hybrid SSM model)."""
    from kvplan.plan.deploy import default_block_size

    if engine == "ideal" and (s.block_size or 1) == 1:  # a KV-only estimate's path: no vLLM rules to load
        from kvplan.model.layout import CacheLayout

        return CacheLayout(spec, pair, block_size=1, tp=s.tp, pp=s.pp, state_format=state)
    from kvplan.engines.vllm_rules import paged_layout

    rules = vllm_rules_of(s) if engine == "vllm" else None
    from kvplan.engines.vllm_rules import block_size_override

    block = block_size_override(spec, rules) or s.block_size or default_block_size(spec, engine, rules)
    return paged_layout(spec, pair, state, block, s.tp, s.pp,
                        engine == "vllm", rules)


def vllm_rules_of(s: Settings):
    """The vLLM version and flags of `s.engine_options` (`kvplan.engines.options.vllm_rules`)."""
    from kvplan.engines.options import vllm_rules

    return vllm_rules(s.engine_options)


# ------------------------------------------------------------------ what estimate refuses


def check_estimate(spec, engine: str, s: Settings, *, contexts: Sequence[int], tps: Sequence[int],
                   kv_cache_dtypes: Sequence[str], warn=None) -> None:
    """Raise InputError for what `kvplan estimate` (and `kvplan.estimate()`) refuses before sizing anything.

    `s` holds the single-valued settings; `contexts`, `tps` and `kv_cache_dtypes` the
    values a sweep takes (one each from the Python API). `warn(spec, tokens, what)`
    is told of a context past the model's max_position_embeddings (the CLI's stderr line).
    """
    from kvplan.options import CHOICES, OPTION_KEYS, PROFILES
    from kvplan.plan.deploy import check_workload

    if engine in PROFILES and s.max_num_seqs is not None:  # the profiles' own capacity rules have no such cap
        from kvplan.engines.options import KeyProblem

        raise InputError(KeyProblem("max_num_seqs", "planner").message(engine, "estimate"))
    if engine in PROFILES and s.dp > 1:
        raise InputError(f"--data-parallel-size is sized by kvplan's planner only (--engine vllm or ideal), "
                         f"not --engine {engine}")
    if engine in PROFILES and s.shared_prefix_tokens:  # before the workload's own checks: it is not sized here
        raise InputError(
            f"--shared-prefix-tokens: prefix caching is modelled in vLLM's blocks only (`--engine vllm` or `ideal`); "
            f"--engine {engine} sizes every request's prompt whole"
        )
    for c in sorted(contexts):  # the shortest context first: the first a workload may not fit
        check_workload(c, prompt_tokens=s.prompt_tokens, output_tokens=s.output_tokens,
                       requests_per_s=s.requests_per_s, shared_prefix_tokens=s.shared_prefix_tokens)
    if warn is not None:
        warn(spec, max(contexts), "sized as asked (engines refuse it without rope scaling)")
    if engine not in CHOICES:
        raise InputError(f"--engine {engine!r} is not one of {', '.join(CHOICES)}")
    known = {k for keys in OPTION_KEYS.values() for k in keys}
    unknown = sorted(k for k in s.engine_options if k not in known)
    if unknown:
        raise InputError(f"{unknown[0]!r} is no engine's option (one of {', '.join(sorted(known))})")
    planner_keys = {"block_size": s.block_size, "gpu_memory_utilization": s.gpu_memory_utilization,
                    "max_num_batched_tokens": s.max_num_batched_tokens, "max_num_seqs": s.max_num_seqs,
                    "cuda_total_memory": s.cuda_total_memory}
    given = [k for k, v in {**s.engine_options, **planner_keys}.items() if v is not None]
    if given or engine in PROFILES:  # vllm and ideal with no engine flag: nothing to refuse
        from kvplan.engines.options import check_flags

        check_flags(engine, given, tp=max(tps), pp=s.pp, command="estimate")
    if engine in PROFILES:
        return
    from kvplan.plan import deploy

    if s.block_size is not None and s.block_size < 1:
        raise InputError(f"--block-size must be a positive number of tokens, got {s.block_size}")
    from kvplan.engines.vllm_flags import CACHE_DTYPES_032

    for d in kv_cache_dtypes:  # (K/V pair, state format): refused up front as bad input
        if engine == "vllm" and d.strip().lower() in CACHE_DTYPES_032:
            continue  # one of vLLM's own values: judged below, in vLLM's terms (turboquant_k8v4: not sized)
        deploy.kv_formats(spec, d, s.state_dtype, s.dtype)
    if engine == "vllm":
        rules = vllm_rules_of(s)  # refuses a --vllm-version, --device, --mamba-cache-mode vLLM does not have
        from kvplan.engines.vllm_rules import block_size_refusal

        problem = block_size_refusal(s.block_size, rules, spec)
        if problem:
            raise InputError(problem)
        if rules.max_model_len is not None and max(contexts) > rules.max_model_len:
            raise InputError(f"--context {max(contexts):,} is longer than --max-model-len {rules.max_model_len:,}: "
                             "vLLM refuses a request past its max_model_len (raise --max-model-len)")
    if engine == "vllm":  # a format vLLM's argparse refuses is bad input there, and here
        for d in kv_cache_dtypes:
            problem = deploy.vllm_kv_dtype_problem(spec, d)
            if problem:
                raise InputError(problem)


# ------------------------------------------------------------------ the pipeline


def run(spec, engine: str, settings: Settings, *, engine_rows: bool = True) -> Answer:
    """ENGINE's answer for SPEC at `settings.context` x `settings.batch`."""
    return sweep(spec, engine, settings, engine_rows=engine_rows)[0]


def sweep(spec, engine: str, s: Settings, contexts: Optional[Sequence[int]] = None,
          batches: Optional[Sequence[int]] = None, *, engine_rows: bool = False) -> list[Answer]:
    """ENGINE's answers for every (context, batch) of `contexts` x `batches` (default: the settings' own),
    the engine's objects built once for them all. `engine_rows`: give ideal and vllm their `EngineCache` too."""
    from kvplan.options import NAMES, PLANNED

    if engine not in NAMES:
        raise InputError(f"--engine {engine!r} is not one of {', '.join(NAMES)}")
    contexts = [s.context] if contexts is None else contexts
    batches = [s.batch] if batches is None else batches
    s = with_log_calibration(s)
    pair, state = formats(spec, s)
    ideal_state = state
    if engine == "vllm" and has_state_layers(spec):
        from kvplan.engines.vllm_rules import state_formats

        state = state_formats(spec, state)  # vLLM's own state dtypes (its per-model SSM hooks)
    gpu, label = device(s)
    needs_gpu = {"--calibration": s.calibration, "--requests-per-s": s.requests_per_s,
                 "--bandwidth-efficiency": s.bandwidth_efficiency, "--compute-efficiency": s.compute_efficiency,
                 "--gpu-memory-utilization": s.gpu_memory_utilization, "--weights-bytes": s.weights_bytes,
                 "--max-num-seqs": s.max_num_seqs, "--cuda-total-memory": s.cuda_total_memory,
                 "--data-parallel-size": s.dp if s.dp > 1 else None,
                 "--output-tokens": None if engine in PLANNED else s.output_tokens,
                 "--kv-cache-memory-bytes": s.engine_options.get("kv_cache_memory_bytes"),
                 "--num-gpu-blocks-override": s.engine_options.get("num_gpu_blocks_override")}
    given = [flag for flag, value in needs_gpu.items() if value is not None]
    if gpu is None and given:  # never ignored in silence: it would change nothing
        raise InputError(f"{given[0]} needs a GPU: --gpu is needed for capacity, latency and cost "
                         "(or --gpu-memory and --gpu-bandwidth)")
    module = opts = None  # ideal and vllm in a plain estimate need no engine module or option object
    if engine_rows or gpu is not None or engine not in PLANNED:
        from kvplan.engines import get
        from kvplan.engines.options import engine_options

        module = get(engine)
        planner_keys = {"block_size": s.block_size, "gpu_memory_utilization": s.gpu_memory_utilization,
                        "max_num_batched_tokens": s.max_num_batched_tokens, "max_num_seqs": s.max_num_seqs,
                        "cuda_total_memory": None}  # read by the planner (its MemoryInputs), not the engine
        opts = engine_options(engine, s.kv_cache_dtype, {**s.engine_options, **planner_keys}, tp=s.tp, pp=s.pp,
                              prompt_tokens=s.prompt_tokens)
    kw = {"kv_cache_dtype": s.kv_cache_dtype, "ideal_format": pair, "ideal_state": ideal_state}
    out = []
    if engine in PLANNED:
        layout = planned_layout(spec, engine, pair, state, s)
        if gpu is None and not engine_rows:  # a KV-only sweep (100,000 points in a second or two): the layer tables
            at, name = layout.at, spec.name
            return [Answer(engine, name, c, b, None, None, at(c, b)) for c in contexts for b in batches]
        if gpu is not None:
            from dataclasses import replace

            from kvplan.plan.planner import Planner

            figures, bw_eff = roofline_inputs(gpu, label, s)
        base = None  # one planner for the sweep, copied to each point (`Planner.at`: its pool and answers shared)
        for c in contexts:
            popts = None
            for b in batches:
                # --data-parallel-size: the layer table is one instance's, its ⌈b / dp⌉ sequences (the plan says all)
                estimate = layout.at(c, -(-b // s.dp))
                cache = module.cache(spec, c, b, opts, **kw) if engine_rows else None
                if gpu is None:
                    out.append(Answer(engine, spec.name, c, b, cache, None, estimate))
                    continue
                if popts is None:  # the context's options, checked once; each batch checked as plan_options does
                    popts = plan_options(spec, engine, s, c, b, layout.block_size, bw_eff)
                else:
                    require_at_least("--batch", b, 1, "sequence")
                point = replace(popts, batch=b)
                planner = base = Planner(spec, figures, pair, point, state_format=state) if base is None else base.at(point)
                plan = planner.plan()
                curve = tuple(planner.concurrency_curve()) if s.concurrency_curve else None
                mem = planner.memory_inputs(label or gpu.name)
                # the engine's own, as for every engine, at the scheduler limits the planner settled for this GPU
                settled = replace(opts, max_num_batched_tokens=planner.max_num_batched_tokens,
                                  max_num_seqs=planner.max_num_seqs)
                cap = module.capacity(spec, c, b, settled, mem, **kw)
                out.append(Answer(engine, spec.name, c, b, cache, cap, estimate, plan, curve, mem))
        return out
    activation = _bytes(s.activation_memory, "--activation-memory")
    non_torch = _bytes(s.non_torch_memory, "--non-torch-memory")
    weights_bytes = _bytes(s.weights_bytes, "--weights-bytes")
    if gpu is None and weights_bytes is not None:  # never ignored in silence: it would change nothing
        raise InputError("--weights-bytes needs a GPU: --gpu is needed for capacity (or --gpu-memory)")
    if gpu is not None:
        from dataclasses import replace

        from kvplan.plan.capacity import engine_max_context, engine_roofline, memory_inputs
        from kvplan.engines.vllm_rules import context_limit

        figures, bw_eff = roofline_inputs(gpu, label, s)
    for c in contexts:
        for b in batches:
            cache = module.cache(spec, c, b, opts, **kw)
            if gpu is None:
                out.append(Answer(engine, spec.name, c, b, cache))
                continue
            mem = memory_inputs(spec, gpu, context=c, tp=s.tp, weights_dtype=s.dtype, activation=activation,
                                non_torch=non_torch, label=label, weights_bytes=weights_bytes)
            cap = module.capacity(spec, c, b, opts, mem, **kw)
            max_context = roof = None
            if cache.kv_bytes_total is not None:  # refused, or a pool kvplan does not size: no search, no roofline
                max_context = engine_max_context(module, spec, engine, opts, b, cap.kv_budget_bytes, mem, kw,
                                                 context_limit(spec)[0])
                if s.roofline:
                    popts = plan_options(spec, "ideal", s, c, b, 1, bw_eff)
                    roof = engine_roofline(module, spec, engine, opts, cache, cap, mem, kw, figures, pair, state, popts)
            cap = replace(cap, weights_source=mem.weights_source, max_context_tokens=max_context)
            out.append(Answer(engine, spec.name, c, b, cache, cap, memory=mem, roofline=roof))
    return out


def with_log_calibration(s: Settings) -> Settings:
    """`s` with an `explain --save-calibration` file's activation peak and non-torch memory in place of
    --calibration (a `kvplan measure` report stays --calibration: its bandwidth efficiency)."""
    if s.calibration is None:
        return s
    from kvplan.plan.calibration import read_log_calibration

    measured = read_log_calibration(s.calibration)
    if measured is None:
        return s
    for flag, value in (("--activation-memory", s.activation_memory), ("--non-torch-memory", s.non_torch_memory)):
        if value is not None:
            raise InputError(f"--calibration {s.calibration} and {flag} both set {flag[2:].replace('-', ' ')}; give one")
    if s.has_gpu:
        return s._replace(calibration=None, activation_memory=measured.activation_bytes,
                          non_torch_memory=measured.non_torch_bytes)
    return s  # no GPU: refused below as every --calibration is


def roofline_inputs(gpu, label: Optional[str], s: Settings):
    """(the planner's figures of the GPU, the decode bandwidth efficiency: --bandwidth-efficiency or --calibration's)."""
    from kvplan.plan import deploy

    bw_eff = s.bandwidth_efficiency
    if bw_eff is not None and s.calibration is not None:
        raise InputError("--calibration and --bandwidth-efficiency both set the decode bandwidth efficiency; give one")
    if bw_eff is None and s.calibration is not None:
        bw_eff = deploy.calibrated_efficiency(s.calibration, gpu)
    return deploy.gpu_figures(gpu, label), bw_eff


def plan_options(spec, engine: str, s: Settings, context: int, batch: int, block_size: int, bw_eff):
    """The planner's options for one point (an engine profile: ideal's, one stage; only its roofline is read)."""
    from kvplan.plan import deploy

    planned = engine in PLANNED_NAMES
    return deploy.plan_options(
        spec, context=context, batch=batch, tp=s.tp, pp=s.pp if planned else 1, engine=engine if planned else "ideal",
        block_size=block_size, dtype=s.dtype, weights_bytes=s.weights_bytes, gpu_memory_utilization=s.gpu_memory_utilization if planned else None,
        activation_memory=s.activation_memory, non_torch_memory=s.non_torch_memory,
        max_num_batched_tokens=s.max_num_batched_tokens if planned else None,
        max_num_seqs=s.max_num_seqs if planned else None,
        cuda_total_memory=s.cuda_total_memory if planned else None, bandwidth_efficiency=bw_eff,
        compute_efficiency=s.compute_efficiency, prompt_tokens=s.prompt_tokens,
        output_tokens=s.output_tokens, requests_per_s=s.requests_per_s,
        shared_prefix_tokens=s.shared_prefix_tokens, link_gbps=s.link_gbps, link_latency_us=s.link_latency_us,
        communication=s.communication, expert_parallel=s.expert_parallel, dp=s.dp if planned else 1,
        vllm_rules=vllm_rules_of(s) if engine == "vllm" else None,
    )


def compare(spec, settings: Settings, engines: Optional[Sequence[str]] = None):
    """Every engine of `engines` (default: all, `kvplan.engines.NAMES`) at the settings' context and batch,
    one `run` each, as `kvplan.engines.compare.Comparison` rows with the reason for each difference."""
    from kvplan.options import NAMES
    from kvplan.engines.compare import CompareRow, Comparison, explain, explain_capacity, single_device_problem

    from kvplan.plan.deploy import check_workload

    if settings.batch < 1:
        raise InputError(f"--batch must be at least 1, got {settings.batch}")
    if settings.tp < 1:
        raise InputError(f"--tensor-parallel-size must be at least 1, got {settings.tp}")
    check_workload(settings.context, prompt_tokens=settings.prompt_tokens)
    names = tuple(NAMES if engines is None else engines)
    unknown = [e for e in names if e not in NAMES]
    if unknown:
        raise InputError(f"--engines {unknown[0]!r} is not one of {', '.join(NAMES)}")
    pair, _ = formats(spec, settings)
    rows = []
    gpu_label = None
    if settings.pp < 1:
        raise InputError(f"--pipeline-parallel-size must be at least 1, got {settings.pp}")
    for name in names:
        problem = single_device_problem(name, settings.tp, settings.pp)
        if problem:
            raise InputError(problem)
        answer = run(spec, name, settings)
        cache, cap = answer.cache, answer.capacity
        if cap is not None:
            gpu_label = cap.gpu
        delta = None if cache.kv_bytes_total is None else cache.kv_bytes_total - cache.ideal_bytes_total
        ranks = settings.tp * settings.pp  # the budget is per rank; the bytes are all ranks'
        rows.append(CompareRow(name, cache, cap, delta, explain(cache), explain_capacity(cache, cap, ranks)))
    if settings.has_gpu and gpu_label is None:
        gpu_label = device(settings)[1]
    return Comparison(spec.name, settings.context, settings.batch, pair.name, settings.tp, gpu_label, tuple(rows),
                      settings.pp)
