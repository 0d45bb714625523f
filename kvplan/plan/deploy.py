"""One deployment (model, GPU, parallelism, formats, engine) turned into what the planner takes.

`kvplan estimate` flags and `kvplan check` plan entries describe the same thing;
both build a `Deployment` here, so a plan entry and the equivalent command line
give the same numbers. Errors name the estimate flag (`--kv-cache-dtype`, `--tp`
...); `kvplan check` rewrites a flag as its plan key. Resolving reads the spec and
GPU catalogs (and a `--calibration` report); the arithmetic stays in
`kvplan.model.layout` and `kvplan.plan.planner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from kvplan.model.layout import CacheLayout
from kvplan.errors import InputError, require_at_least
from kvplan.model.formats import KVFormat, KVFormatPair, UnknownFormatError, parse_format_pair, parse_state_format
from kvplan.model.shape import SpecDerived as ModelSpec  # a validated spec, pydantic or not
from kvplan.units import parse_bytes, parse_count_as

if TYPE_CHECKING:  # imported where used: a KV-only estimate needs neither the planner nor the GPU catalog
    from kvplan.plan.gpus import GPU
    from kvplan.plan.planner import Engine, GPUFigures, Planner, PlanOptions

from kvplan.options import CHOICES, PLANNED  # noqa: E402

ENGINES = tuple(e for e in CHOICES if e in PLANNED)  # kvplan.plan.planner.Engine's values, in --engine's order


def parse_token_count(text: Union[str, int], flag: str) -> int:
    """'32k' -> 32768, '1.5k' -> 1536, '131072' -> 131072 (tokens; k = 1024: kvplan.units.parse_count)."""
    if isinstance(text, bool):
        raise InputError(f"{flag} {text!r} is not a number of tokens")
    try:
        return parse_count_as(text, "a whole number of tokens (e.g. 32768 or 32k)")
    except ValueError as exc:
        raise InputError(f"{flag} {exc}") from None


def default_block_size(spec: ModelSpec, engine: Union[str, "Engine"], rules=None) -> int:
    """vLLM: 16 on CUDA, 64 for MLA (FlashMLA requires it), 128 on its CPU backend (`rules`); ideal: 1 (no paging)."""
    if engine == "ideal":  # Engine is a str Enum: Engine.ideal == "ideal"
        return 1
    from kvplan.engines.vllm_rules import default_block_size as vllm_default

    return vllm_default(spec, rules)


def gpu_figures(gpu: GPU, label: Optional[str] = None) -> GPUFigures:
    """The planner's view of a catalog, file or flag-built GPU; `label` names it in results (gpus.override_label)."""
    from kvplan.plan.planner import GPUFigures

    return GPUFigures(label or gpu.name, gpu.memory_bytes, gpu.memory_bandwidth_gbps, gpu.bf16_tflops, gpu.fp8_tflops,
                      gpu.usd_per_hour, getattr(gpu, "nvml_name", None) or gpu.name, gpu.link_gbps, gpu.link_latency_us,
                      gpu.interconnect)


def kv_formats(spec: ModelSpec, kv_cache_dtype: str = "auto", state_dtype: Optional[str] = None,
               dtype: Optional[str] = None) -> tuple[KVFormatPair, Optional[KVFormat]]:
    """The KV element formats ('auto' = the model's dtype as it runs: a float --dtype `dtype` moves it) and the
    SSM state format (None: the model's)."""
    from kvplan.engines.vllm_flags import auto_kv_dtype

    try:
        pair = parse_format_pair(kv_cache_dtype, auto_kv_dtype(spec.dtype, dtype))
    except UnknownFormatError as exc:
        raise InputError(f"--kv-cache-dtype: {exc}") from None
    try:
        state = parse_state_format(state_dtype) if state_dtype else None
    except UnknownFormatError as exc:
        raise InputError(f"--state-dtype: {exc}") from None
    return pair, state


def vllm_kv_dtype_problem(spec: ModelSpec, kv_cache_dtype: str) -> Optional[str]:
    """Why vLLM refuses --kv-cache-dtype, in its words and with the engine that would run it (None: it runs it).

    The rule is `kvplan.engines.vllm_rules.kv_cache_dtype_refusal`, the one `kvplan compare`'s
    vllm row applies; `estimate` turns this into bad input (vLLM's argparse exits 2
    too) and `check` into failed budgets.
    """
    if kv_cache_dtype.strip().lower() == "auto":  # the default, every vLLM takes it (and its cold start skips vllm_rules)
        return None
    from kvplan.engines.vllm_rules import kv_cache_dtype_refusal

    refusal = kv_cache_dtype_refusal(spec, kv_cache_dtype)
    if refusal is None:
        return None
    from kvplan.engines.llamacpp import CACHE_TYPES, cache_type

    fix = "--engine ideal sizes any format"
    if all(cache_type(p) in CACHE_TYPES for p in kv_cache_dtype.split("/")):
        fix += f", --engine llama.cpp runs {kv_cache_dtype}"
    return f"--kv-cache-dtype {kv_cache_dtype}: vllm refuses: {refusal}; {fix}"


def vllm_refusal(spec: ModelSpec, kv_cache_dtype: str, context: int) -> Optional[str]:
    """vLLM's words when it will not start: a --kv-cache-dtype it lacks, or --context past the model (None: it starts).

    `check` fails a vllm deployment's budgets with them, as under the engine
    profiles; `estimate` refuses the format as bad input and shows the context
    refusal among the lines vLLM would log (`Planner.plan`); `diff` stops on the
    format only.
    """
    from kvplan.engines.vllm_rules import kv_cache_dtype_refusal, max_model_len_refusal

    return kv_cache_dtype_refusal(spec, kv_cache_dtype) or max_model_len_refusal(spec, context)


def check_workload(
    context: int,
    *,
    prompt_tokens: Optional[int] = None,
    output_tokens: Optional[int] = None,
    requests_per_s: Optional[float] = None,
    shared_prefix_tokens: int = 0,
) -> None:
    """Bounds of the workload flags; InputError naming the flag, its value and the bound.

    A request is one sequence: its prompt and output tokens together are at most
    --context tokens, the longest sequence the deployment serves (vLLM's
    max_model_len, which refuses a longer request); a shared prefix is part of each
    prompt. None means not given (the prompt is then what --context leaves beside the output).
    """
    import math

    if prompt_tokens is not None and prompt_tokens < 1:
        raise InputError(f"--prompt-tokens {prompt_tokens} must be at least 1 (leave it out to prefill what --context leaves beside --output-tokens)")
    if output_tokens is not None and output_tokens < 1:
        raise InputError(f"--output-tokens {output_tokens} must be at least 1 (a request generates at least one token)")
    if requests_per_s is not None and not (math.isfinite(requests_per_s) and requests_per_s > 0):
        raise InputError(f"--requests-per-s {requests_per_s:g} must be a finite number of requests per second above 0")
    if shared_prefix_tokens < 0:
        raise InputError(f"--shared-prefix-tokens {shared_prefix_tokens} must be 0 or more")
    why = "(a request's prompt and output tokens are one sequence of at most --context tokens)"
    if prompt_tokens is not None and prompt_tokens > context:
        room = context - (output_tokens or 0)  # what the context leaves beside the output
        raise InputError(f"--prompt-tokens {prompt_tokens:,} does not fit --context {context:,} {why}; "
                         f"give --prompt-tokens {max(room, 1):,} or less, or a longer --context")
    # without --prompt-tokens the prompt is what the context leaves beside the output
    prompt = context - (output_tokens or 0) if prompt_tokens is None else prompt_tokens
    if output_tokens is not None and output_tokens >= context:  # not even a one-token prompt fits beside it
        raise InputError(f"--output-tokens {output_tokens:,} leaves no room for a prompt in --context {context:,} "
                         f"{why}; give fewer output tokens or a longer --context")
    if output_tokens is not None and prompt + output_tokens > context:
        raise InputError(
            f"--prompt-tokens {prompt:,} + --output-tokens {output_tokens:,} = {prompt + output_tokens:,} tokens does "
            f"not fit --context {context:,} {why}; shorten them or give a longer --context"
        )
    if shared_prefix_tokens > prompt:
        raise InputError(
            f"--shared-prefix-tokens {shared_prefix_tokens:,} is more than the {prompt:,} prompt tokens "
            + ("(--prompt-tokens)" if prompt_tokens is not None else "(--context less --output-tokens)")
            + ": a shared prefix is part of each prompt"
        )
    if requests_per_s is not None and output_tokens is None:
        raise InputError("--requests-per-s needs --output-tokens: a request's decode steps are most of its time "
                         "(give the tokens each request generates)")
    if shared_prefix_tokens and requests_per_s is None:
        raise InputError("--shared-prefix-tokens sizes a workload: give it with --requests-per-s and --output-tokens")


def _size(value: Union[str, int, None], flag: str) -> Optional[int]:
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    return parse_bytes(value, flag)


def plan_options(
    spec: ModelSpec,
    *,
    context: int,
    batch: int = 1,
    tp: int = 1,
    pp: int = 1,
    engine: Union[str, "Engine"] = "vllm",
    block_size: Optional[int] = None,
    dtype: Optional[str] = None,
    weights_bytes: Union[str, int, None] = None,
    gpu_memory_utilization: Optional[float] = None,
    activation_memory: Union[str, int, None] = None,
    non_torch_memory: Union[str, int, None] = None,
    max_num_batched_tokens: Optional[int] = None,
    max_num_seqs: Optional[int] = None,
    cuda_total_memory: Union[str, int, None] = None,
    bandwidth_efficiency: Optional[float] = None,
    compute_efficiency: Optional[float] = None,
    prompt_tokens: Optional[int] = None,
    output_tokens: Optional[int] = None,
    requests_per_s: Optional[float] = None,
    shared_prefix_tokens: int = 0,
    link_gbps: Optional[float] = None,
    link_latency_us: Optional[float] = None,
    communication: bool = True,
    expert_parallel: bool = False,
    dp: int = 1,
    vllm_rules=None,
) -> PlanOptions:
    """estimate's flags (single values) -> PlanOptions; None keeps the planner's stated default.

    Sizes take bytes or a string with a unit ('2GiB'). A `--calibration` report
    becomes a bandwidth_efficiency once the GPU is known (`calibrated_efficiency`).
    """
    from kvplan.plan.planner import WEIGHT_DTYPES, Engine, PlanOptions

    # gpu_memory_utilization None: vLLM's default at the plan's version, which the Planner settles (vllm_rules)
    # max_num_batched_tokens, max_num_seqs: None is vLLM's default for the GPU (the Planner settles it)
    for flag, value in (("--max-num-batched-tokens", max_num_batched_tokens), ("--max-num-seqs", max_num_seqs)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1")
    if isinstance(engine, str) and not isinstance(engine, Engine):
        if engine not in ENGINES:
            raise InputError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
        engine = Engine(engine)
    if block_size is not None and block_size < 1:
        raise InputError(f"--block-size must be a positive number of tokens, got {block_size}")
    from kvplan.engines.vllm_flags import DTYPE_WORDS, weights_dtype

    given_dtype, dtype = dtype, weights_dtype(dtype)  # vLLM's spellings: bfloat16 -> bf16, auto -> the model's
    if dtype is not None and dtype not in WEIGHT_DTYPES:
        raise InputError(f"--dtype {given_dtype!r} is not one of {DTYPE_WORDS}")
    require_at_least("--context", context, 1, "token")
    require_at_least("--batch", batch, 1, "sequence")
    require_at_least("--tensor-parallel-size", tp)
    require_at_least("--pipeline-parallel-size", pp)
    check_workload(context, prompt_tokens=prompt_tokens, output_tokens=output_tokens, requests_per_s=requests_per_s,
                   shared_prefix_tokens=shared_prefix_tokens)
    optional = {"bandwidth_efficiency": bandwidth_efficiency, "compute_efficiency": compute_efficiency}
    return PlanOptions(
        context=context,
        batch=batch,
        tp=tp,
        pp=pp,
        engine=engine,
        block_size=block_size or default_block_size(spec, engine, vllm_rules),
        weights_dtype=dtype,
        weights_bytes=_size(weights_bytes, "--weights-bytes"),
        gpu_memory_utilization=gpu_memory_utilization,
        activation_bytes=_size(activation_memory, "--activation-memory"),
        non_torch_bytes=_size(non_torch_memory, "--non-torch-memory"),
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        cuda_total_memory_bytes=_size(cuda_total_memory, "--cuda-total-memory"),
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        requests_per_s=requests_per_s,
        shared_prefix_tokens=shared_prefix_tokens,
        link_gbps=link_gbps,
        link_latency_us=link_latency_us,
        communication=communication,
        expert_parallel=expert_parallel,
        dp=dp,
        vllm_rules=vllm_rules if engine == "vllm" else None,
        **{k: v for k, v in optional.items() if v is not None},
    )


def calibrated_efficiency(calibration: str, gpu: GPU) -> float:
    """The bandwidth efficiency a `kvplan measure -o` JSON report implies on `gpu`: achieved / peak
    (InputError when the report was measured elsewhere: see calibration.bandwidth_efficiency)."""
    from kvplan.plan.calibration import (bandwidth_efficiency, engine_bandwidth_efficiency, read_calibration,
                                         read_engine_calibration)

    engine = read_engine_calibration(calibration)
    if engine is not None:  # `measure --engine vllm --save-calibration`: the engine's decode on this machine
        return engine_bandwidth_efficiency(engine, gpu.name, gpu.memory_bandwidth_gbps)
    return bandwidth_efficiency(read_calibration(calibration), gpu.name, gpu.memory_bandwidth_gbps, gpu.nvml_name)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model on a GPU with every setting resolved; `gpu` is None for a KV-only sizing."""

    spec: ModelSpec
    gpu: Optional[GPU]
    kv_format: KVFormatPair
    state_format: Any  # Optional[KVFormat | StateFormats]: None = the spec's defaults
    options: PlanOptions

    def layout(self) -> CacheLayout:
        """The cache layout (checks tp/pp against the model's heads and layers)."""
        o = self.options
        return CacheLayout(self.spec, self.kv_format, block_size=o.block_size, tp=o.tp, pp=o.pp, state_format=self.state_format)

    def planner(self) -> Planner:
        from kvplan.plan.planner import Planner

        if self.gpu is None:
            raise InputError("--gpu is needed for capacity, latency and cost (or --gpu-memory and --gpu-bandwidth)")
        return Planner(self.spec, gpu_figures(self.gpu), self.kv_format, self.options, state_format=self.state_format)


def resolve_deployment(
    model: Union[str, ModelSpec],
    gpu: Optional[str] = None,
    *,
    gpu_memory: Union[str, int, None] = None,
    gpu_bandwidth: Optional[float] = None,
    usd_per_hour: Optional[float] = None,
    gpu_bf16_tflops: Optional[float] = None,
    kv_cache_dtype: str = "auto",
    state_dtype: Optional[str] = None,
    calibration: Optional[str] = None,
    **options,
) -> Deployment:
    """MODEL (a catalog name, a path `resolve_spec` accepts, or a spec) with estimate's flags.

    `options` are `plan_options`' keywords (context, batch, tp, pp, engine, ...).
    The GPU is `gpu_from_options`' (a name or file plus overrides; None when no
    GPU flag is given). `calibration` sets the bandwidth efficiency unless
    `bandwidth_efficiency` is given, as `estimate --calibration` does.
    """
    if isinstance(model, ModelSpec):
        spec = model
    else:
        from kvplan.sources.catalog import resolve_spec

        spec = resolve_spec(model, fast=True)
    from kvplan.plan.gpus import gpu_from_options

    memory = str(gpu_memory) if isinstance(gpu_memory, int) and not isinstance(gpu_memory, bool) else gpu_memory
    device = gpu_from_options(gpu, memory, gpu_bandwidth, usd_per_hour, gpu_bf16_tflops)
    pair, state = kv_formats(spec, kv_cache_dtype, state_dtype, options.get("dtype"))
    if calibration is not None and options.get("bandwidth_efficiency") is not None:
        raise InputError("--calibration and --bandwidth-efficiency both set the decode bandwidth efficiency; give one")
    if calibration is not None:
        if device is None:
            raise InputError("--calibration needs --gpu: the efficiency is the measured bandwidth over that GPU's peak")
        options["bandwidth_efficiency"] = calibrated_efficiency(calibration, device)
    popts = plan_options(spec, **options)
    if str(getattr(popts.engine, "value", popts.engine)) == "vllm" and any(k.value == "state" for k in spec.layer_kinds):
        from kvplan.engines.vllm_rules import state_formats

        state = state_formats(spec, state)  # vLLM's own state dtypes (its per-model SSM hooks)
    return Deployment(spec, device, pair, state, popts)
