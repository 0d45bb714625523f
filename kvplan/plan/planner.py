"""Capacity, latency and cost of a model on GPUs: pure arithmetic, every assumption named.

Memory (vLLM's semantics, `vllm/v1/worker/gpu_worker.py::determine_available_memory`):
    KV budget per GPU = ceil(total x gpu_memory_utilization) - weights per rank
                        - activation peak - non-torch memory
Capacity: `--engine vllm` counts blocks as vLLM does (`kvplan.engines.vllm_rules`);
`--engine ideal` counts exactly the tokens held (`kvplan.model.layout`), paged only when
`--block-size` > 1.
Latency (a roofline): a decode step reads the weights (the experts a batch
touches, for MoE) and every KV byte held, and does 2 x active parameters FLOPs per
token plus attention; its time is the larger of bytes / (bandwidth x efficiency)
and FLOPs / (peak x efficiency). Pipeline stages run one after another.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, make_dataclass
from dataclasses import fields as dataclass_fields
from enum import Enum
from typing import Any, Callable, Optional

from kvplan.model.kinds import KINDS, Kind
from kvplan.model.layout import CacheLayout, ceil_div
from kvplan.errors import InputError, require_at_least
from kvplan.model.formats import FIXED_FORMATS, KVFormatPair
from kvplan.model.shape import LayerKind, SpecDerived as ModelSpec  # any validated spec (pydantic or not)
from kvplan.engines.vllm_rules import (DEFAULT_MAX_NUM_BATCHED_TOKENS, Pool, context_limit, gpu_memory_utilization,
                                       stage_budgets, usable_bytes)
from kvplan.engines.vllm_flags import scheduler_limits, vllm_version
from kvplan.plan.comm import (
    NCCL_BASE_LATENCY_S, all_to_all_seconds, allreduces_per_stage, is_mamba1, mamba1_x_proj_width, mamba2_norm_collective,
    ring_allgather_seconds, ring_allreduce_seconds,
    send_seconds,
)
from kvplan.units import counted, fmt_bytes

GIB = 2**30
MIB = 2**20

# Defaults, each with its reason (all are flags).
# CUDA context + cuBLAS/cuDNN workspaces that torch does not count; vLLM logs
# "non-torch memory" of roughly 0.3-0.6 GiB on one H100; NCCL buffers add more at tp > 1.
DEFAULT_NON_TORCH_BYTES = 512 * MIB
DEFAULT_NON_TORCH_BYTES_TP = 1 * GIB
# The engine profiles' activation estimate (kvplan.plan.capacity.memory_inputs) is not a vLLM deployment: it keeps
# one fixed profile run of 8,192 tokens and 256 sequences' logits. ideal and vllm take vLLM's defaults for the GPU
# (kvplan.engines.vllm_flags.scheduler_limits).
DEFAULT_MAX_NUM_SEQS = 256
# Decode reaches ~80% of peak DRAM bandwidth: large device copies measure 83% (V100),
# 87% (A100), 77% (H100) of peak (kvplan/data/gpus.yaml achieved_copy_gbps). Calibrate with measure.
DEFAULT_BANDWIDTH_EFFICIENCY = 0.8
# Prefill model-FLOPs utilisation: an assumption (dense bf16 GEMMs at large token counts
# typically reach 40-60% of datasheet peak). Calibrate with `kvplan measure -o report.json`.
DEFAULT_COMPUTE_EFFICIENCY = 0.5
# Weights that stay 16-bit under fp8/int8/int4 checkpoints: embeddings and lm_head
# (vLLM's quantised linear methods skip them by default).
INT4_WEIGHT_GROUP = 128  # GPTQ/AWQ default group size: one fp16 scale per 128 weights

WEIGHT_DTYPES = ("bf16", "fp16", "fp32", "fp8", "int8", "int4", "mxfp4")
MXFP4_BLOCK_BYTES = 17  # OCP MX: 32 fp4 (e2m1) values = 16 B + one e8m0 scale byte (gpt-oss experts)


class Engine(str, Enum):
    vllm = "vllm"
    ideal = "ideal"


def weight_bytes(params: int, dtype: str) -> int:
    """Bytes of `params` weights stored as `dtype` (int4: +1 fp16 scale per 128)."""
    if dtype in ("bf16", "fp16"):
        return 2 * params
    if dtype == "fp32":
        return 4 * params
    if dtype in ("fp8", "int8"):
        return params
    if dtype == "int4":
        return ceil_div(params, INT4_WEIGHT_GROUP) * (INT4_WEIGHT_GROUP // 2 + 2)
    if dtype == "mxfp4":
        return ceil_div(params, 32) * MXFP4_BLOCK_BYTES
    raise InputError(f"--dtype {dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")


@dataclass(frozen=True, slots=True)
class GPUFigures:
    """What the planner needs of an accelerator (from the GPU catalog or flags)."""

    name: str
    memory_bytes: int
    memory_bandwidth_gbps: float
    bf16_tflops: float
    fp8_tflops: float | None
    usd_per_hour: float
    device_name: str = ""  # the name the runtime reports (nvml_name); vLLM's batch defaults read it (A100 or not)
    link_gbps: float | None = None  # GPU-to-GPU bandwidth per direction (NVLink, PCIe, Infinity Fabric), GB/s; None: unknown
    link_latency_us: float | None = None  # per ring step, µs
    interconnect: str | None = None


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """Every assumption that moves a number; each is a CLI flag."""

    context: int
    batch: int = 1
    tp: int = 1
    pp: int = 1
    engine: Engine = Engine.vllm
    block_size: int | None = None  # None: the engine's default
    weights_dtype: str | None = None  # None: the model's dtype
    weights_bytes: int | None = None  # --weights-bytes: the weights' total bytes, given (None: from the files or formula)
    gpu_memory_utilization: float | None = None  # None: vLLM's default at vllm_rules' version (0.32: 0.92, 0.10: 0.9)
    cuda_total_memory_bytes: int | None = None  # --cuda-total-memory: cudaMemGetInfo's total (None: the GPU's memory)
    activation_bytes: int | None = None  # None: estimated (see activation_estimate)
    non_torch_bytes: int | None = None  # None: DEFAULT_NON_TORCH_BYTES(_TP)
    max_num_batched_tokens: int | None = None  # None: vLLM's default for the GPU (vllm_flags.scheduler_limits)
    max_num_seqs: int | None = None  # None: vLLM's default for the GPU; caps the batch throughput and cost run at
    bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY
    compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY
    prompt_tokens: int | None = None  # None: what the context leaves beside the output tokens
    output_tokens: int | None = None
    requests_per_s: float | None = None
    shared_prefix_tokens: int = 0
    link_gbps: float | None = None  # --link-gbps: overrides the GPU catalog's interconnect bandwidth
    link_latency_us: float | None = None  # --link-latency-us: overrides its latency per ring step
    communication: bool = True  # --no-communication: leave the all-reduces and stage hand-offs out of the times
    expert_parallel: bool = False  # --expert-parallel: MoE experts whole, E / tp a rank; all-to-all instead of all-reduce
    dp: int = 1  # --data-parallel-size: engine instances of tp x pp GPUs, each its own pool and sequences (MoE only)
    vllm_rules: Any = None  # kvplan.engines.vllm_rules.VllmRules (engine vllm; None: its defaults)

    @property
    def prompt_len(self) -> int:
        """Prompt tokens of a request: --prompt-tokens, else the context less the output tokens
        (a request's prompt and output are one sequence of at most --context tokens)."""
        return self.prompt_tokens or max(1, self.context - (self.output_tokens or 0))


@dataclass(frozen=True, slots=True)
class StageMemory:
    """One tensor-parallel rank of one pipeline stage (every rank of a stage is alike)."""

    layers: int
    weights_bytes: int
    kv_budget_bytes: int
    kv_bytes_at_batch: int  # what --batch sequences of --context reserve on this rank


@dataclass(frozen=True, slots=True)
class Plan:
    """The answers for one model on one GPU type at one tp/pp."""

    model: str
    gpu: str
    engine: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int  # engine instances (--data-parallel-size); the memory and KV figures are one instance's GPU
    gpus: int  # tp x pp x dp
    context: int
    batch: int
    kv_cache_dtype: str
    weights_dtype: str
    weights_quantized: str  # which body weights weights_dtype covers: all_linear | experts
    weights_source: str  # where the weight bytes come from: file headers, --dtype, or the parameter formula
    block_size: int
    # memory, per GPU (the tightest rank)
    gpu_memory_bytes: int
    cuda_total_memory_bytes: int  # the total vLLM's budget starts from (--cuda-total-memory; default gpu_memory_bytes)
    gpu_memory_utilization: float
    usable_bytes_per_gpu: int
    weights_bytes_per_gpu: int
    activation_bytes_per_gpu: int
    activation_estimated: bool
    non_torch_bytes_per_gpu: int
    kv_budget_bytes_per_gpu: int
    kv_bytes_per_gpu_at_batch: int  # what --batch sequences of --context take on that rank
    # capacity
    fits: bool
    headroom_pct: float | None
    shortfall_bytes: int
    max_concurrent_sequences: int
    max_num_seqs: int  # vLLM's --max-num-seqs (given, or its default for this GPU): the most sequences one step runs
    max_context_tokens: int
    max_context_limited_by: str
    # vLLM's own log figures
    vllm_num_blocks: int | None
    vllm_kv_cache_tokens: int | None
    vllm_max_concurrency: float | None
    vllm_groups: int | None
    vllm_padding_layers: int | None
    vllm_log: list[str]
    vllm_starts: bool | None  # False when vLLM refuses these settings at start-up (its words end vllm_log); None: engine ideal
    vllm_block_size: int | None  # the attention block size vLLM pages with, after any hybrid adjustment
    vllm_refusal: str | None  # vLLM's message when it refuses to start, in its words (None: it starts)
    vllm_estimated_max_model_len: int | None  # the "estimated maximum model length" of a memory refusal
    # latency and cost; None when not one sequence fits (the model does not run on this GPU)
    decode_step_s: float | None
    decode_bound: str | None
    decode_bytes_per_step: int
    decode_flops_per_step: int
    prefill_tokens: int
    prefill_s: float | None
    tokens_per_s: float | None  # output tokens per second for the deployment at --batch
    tokens_per_s_per_gpu: float | None
    cost_batch: int  # the batch the costs are computed at (the largest that fits)
    tokens_per_s_at_cost_batch: float
    usd_per_hour: float | None  # None: no price for this GPU (--usd-per-hour)
    usd_per_million_output_tokens: float | None
    usd_per_million_input_tokens: float | None
    gpus_needed: int | None
    gpus_needed_without_prefix_sharing: int | None
    # communication (tp / pp > 1), seconds included in decode_step_s / prefill_s; None: not modelled (no link figure)
    decode_comm_s: float | None
    prefill_comm_s: float | None
    stages: list[StageMemory] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    assumptions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# How a decode step reads an engine's KV cache: `kv(sequences, context)` -> bytes per rank (None: the engine
# refuses that batch); None for the planner's own layout (the tokens held, unpaged).
KVRead = Optional[Callable[[int, int], Optional[int]]]


class _RooflineMethods:
    __slots__ = ()

    def fields(self) -> dict:
        """The figures, as `Plan` carries them (its notes and assumptions are its own)."""
        return {k: getattr(self, k) for k in ROOFLINE_FIELDS}

    def to_dict(self) -> dict:
        return asdict(self)


# Plan's latency, cost and workload fields, in its order (their types and comments are Plan's).
ROOFLINE_FIELDS = ("decode_step_s", "decode_bound", "decode_bytes_per_step", "decode_flops_per_step", "prefill_tokens",
                   "prefill_s", "tokens_per_s", "tokens_per_s_per_gpu", "cost_batch", "tokens_per_s_at_cost_batch",
                   "usd_per_hour", "usd_per_million_output_tokens", "usd_per_million_input_tokens", "gpus_needed",
                   "gpus_needed_without_prefix_sharing", "decode_comm_s", "prefill_comm_s")
# Latency, cost and workload of one deployment at one (context, batch): kvplan's roofline over the weights and the
# KV bytes its engine reads per decode step (`Planner.roofline`), Plan's fields plus its notes and assumptions (the
# efficiencies, and `kv_read`: what a step reads of a profile's cache). None where nothing runs or a figure has no
# input (no price, no bf16 peak).
Roofline = make_dataclass(
    "Roofline",
    [(f.name, f.type) for f in dataclass_fields(Plan) if f.name in ROOFLINE_FIELDS]
    + [("notes", "tuple[str, ...]", field(default=())), ("assumptions", "dict", field(default_factory=dict))],
    bases=(_RooflineMethods,), frozen=True, slots=True,
)
Roofline.__module__ = __name__
assert tuple(f.name for f in dataclass_fields(Roofline))[:-2] == ROOFLINE_FIELDS


# ----------------------------------------------------------------- weights


def _embedding_params(spec: ModelSpec) -> tuple[int, int]:
    """(input embedding, lm_head) parameters; lm_head is 0 when tied."""
    embed = spec.vocab_size * spec.hidden_size
    return embed, 0 if spec.tie_word_embeddings else embed


def expert_weight_bytes(spec: ModelSpec, dtype: str) -> int:
    """Bytes of one routed expert's gate, up and down weights stored as `dtype`, row by row.

    A quantised checkpoint blocks each output row along its input dimension, so
    rounding is per row: gpt-oss stores gate_up_proj as (experts, 2 x width, hidden / 32)
    blocks of 16 B plus one e8m0 scale byte each and down_proj as (experts, hidden,
    width / 32) (transformers integrations/mxfp4.py Mxfp4GptOssExperts; vLLM
    quantization/mxfp4.py Mxfp4MoEMethod.create_weights: w13 (E, 2 x width, hidden / 2)
    uint8 + (E, 2 x width, hidden / 32) scales, w2 likewise). gpt-oss: 2880 = 90 blocks,
    8640 rows x 90 x 17 B = 13,219,200 B per expert.
    """
    width = spec.expert_intermediate_size
    if not width:
        return 0
    hidden = spec.hidden_size
    return 2 * width * weight_bytes(hidden, dtype) + hidden * weight_bytes(width, dtype)


def body_parameters(spec: ModelSpec, *, active: bool, total: int | None = None) -> int:
    """Parameters of the layers, without the input embedding and the lm_head: the matmul
    work of every token (the embedding is a lookup; the lm_head runs only where logits are wanted).
    `total`: the parameters when the spec does not know them (flop_parameters)."""
    embed, head = _embedding_params(spec)
    if spec.num_parameters is None:
        assert total is not None
        return max(0, total - embed - head)
    return max(0, (spec.active_parameters if active else spec.num_parameters) - embed - head)


# Bytes a weight takes per dtype, to count parameters from given bytes (FLOPs only; the bytes stay exact).
_BYTES_PER_WEIGHT = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1, "int8": 1, "int4": 0.5, "mxfp4": 0.5}


def flop_parameters(spec: ModelSpec, dtype: str, given_bytes: int | None) -> tuple[int | None, str]:
    """(parameters for the FLOP count, how they were had): the spec's own, else the weights' bytes
    (--weights-bytes, or the files' headers) over the bytes per weight of `dtype`."""
    if spec.num_parameters is not None:
        return spec.num_parameters, ""
    fw = getattr(spec, "file_weight_bytes", None)
    total_bytes = given_bytes if given_bytes is not None else (
        fw.embedding + fw.lm_head + fw.body + fw.routed_experts if fw is not None else None)
    if total_bytes is None:
        return None, ""
    per = _BYTES_PER_WEIGHT.get(dtype, 2)
    return int(total_bytes / per), f"FLOPs count weight bytes / {per:g} B per {dtype} weight as parameters (num_parameters unknown)"


def missing_weights_problem(spec: ModelSpec) -> str:
    """The refusal when a GPU question needs the weights and none of the three ways gives them."""
    return (
        f"{spec.name}: capacity on a GPU needs the weights' size, and kvplan has none (num_parameters unknown: "
        f"model_type {spec.model_type or 'unknown'!r} has no parameter formula in kvplan); "
        "put the weights' safetensors or GGUF headers beside config.json, give num_parameters in a spec YAML, "
        "or pass --weights-bytes (e.g. --weights-bytes 160GB)"
    )


def lm_head_flops(spec: ModelSpec) -> int:
    """FLOPs of one row of logits: hidden x vocab multiply-adds (tied or not)."""
    return 2 * spec.vocab_size * spec.hidden_size


# Where the weight bytes come from, as the output names it (Plan.weights_source).
FILE_WEIGHT_SOURCES = {"gguf": "file headers (GGUF tensor types)", "safetensors": "file headers (safetensors dtypes)"}


def weights_from_file(spec: ModelSpec, dtype_flag: str | None) -> bool:
    """Whether weight bytes come from the spec's file_weight_bytes: the file says them and no --dtype casts."""
    return dtype_flag is None and getattr(spec, "file_weight_bytes", None) is not None


def weights_source(spec: ModelSpec, dtype_flag: str | None, given_bytes: int | None = None) -> str:
    """Where the weight bytes come from: --weights-bytes, the file's headers, --dtype, or the parameter formula."""
    if given_bytes is not None:
        return "--weights-bytes"
    if dtype_flag is not None:
        return f"--dtype {dtype_flag}"
    if weights_from_file(spec, None):
        return FILE_WEIGHT_SOURCES[spec.file_weight_bytes.source]
    if spec.weights_dtype:
        return f"parameter formula (weights_dtype {spec.weights_dtype})"
    return f"parameter formula (torch_dtype {spec.dtype})"


def file_stage_weight_bytes(
    spec: ModelSpec, layers_per_stage: list[int], tp: int, *, active: bool = False, lookup_tokens: int | None = None,
) -> list[int]:
    """stage_weight_bytes from the bytes the file's headers declare (spec.file_weight_bytes).

    Placed as the formula places parameters: the body split evenly per layer, the
    routed experts by the MoE layers each stage holds (`active`: the share
    active_routed_experts / routed experts of them), the embedding on the first stage
    (`lookup_tokens` rows of it when only looked up), the lm_head on the last (a tied
    one copied there when the stages differ); each stage sharded over tp.
    """
    fw = spec.file_weight_bytes
    layers, vocab, last = spec.num_hidden_layers, spec.vocab_size, len(layers_per_stage) - 1
    experts = fw.routed_experts
    if active and spec.num_routed_experts:
        experts = experts * spec.active_routed_experts // spec.num_routed_experts
    moe_layers = spec.moe_layers_between(0, layers)
    out, start = [], 0
    for i, n in enumerate(layers_per_stage):
        stage = fw.body * n // layers
        if moe_layers:
            stage += experts * spec.moe_layers_between(start, start + n) // moe_layers
        else:  # no MoE layer to place them by: split evenly per layer
            stage += experts * n // layers
        if i == 0:
            lookup_only = lookup_tokens is not None and (fw.lm_head or last > 0)
            stage += ceil_div(fw.embedding * min(lookup_tokens, vocab), vocab) if lookup_only else fw.embedding
        if i == last:
            stage += fw.lm_head if fw.lm_head or last == 0 else fw.embedding
        out.append(ceil_div(stage, tp))
        start += n
    return out


def given_stage_weight_bytes(spec: ModelSpec, layers_per_stage: list[int], given_bytes: int, tp: int, *,
                             active: bool = False) -> list[int]:
    """stage_weight_bytes from --weights-bytes: the given total split evenly per layer, each stage sharded over tp.

    Nothing says where its embedding or experts lie, so it is placed as a body; `active` reads the share
    num_active_parameters / num_parameters of it when the spec knows both (MoE), else all of it.
    """
    total = given_bytes
    if active and spec.num_parameters and spec.num_active_parameters:
        total = given_bytes * spec.num_active_parameters // spec.num_parameters
    layers = spec.num_hidden_layers
    return [ceil_div(total * n // layers, tp) for n in layers_per_stage]


def stage_weight_bytes(
    spec: ModelSpec, layers_per_stage: list[int], dtype: str, tp: int, *, active: bool = False, lookup_tokens: int | None = None,
    from_file: bool = False, given_bytes: int | None = None,
) -> list[int]:
    """Weight bytes one tensor-parallel rank of each stage holds (or reads, `active`).

    `given_bytes`: --weights-bytes (given_stage_weight_bytes); `from_file`: the bytes the file's headers
    declare (file_stage_weight_bytes); `dtype` is then unused. Neither, and no num_parameters: refused
    (missing_weights_problem).

    `lookup_tokens`: what a forward pass of that many tokens reads of the input
    embedding: one row per token, not the table (a tied table on a single stage is
    still read whole, by the lm_head).

    `dtype` covers the quantisable body: every body parameter (`weights_quantized:
    all_linear`, split evenly per layer) or the routed experts' weights only
    (`experts`: counted per MoE layer of the stage, the rest of the body split evenly
    per layer in the unquantised dtype). The embedding sits on the first stage, the
    lm_head on the last; both are vocab-sharded over tp and stay 16-bit when the body
    is quantised. MoE: all experts are held (`active` counts the routed ones a token uses).
    """
    if given_bytes is not None:
        return given_stage_weight_bytes(spec, layers_per_stage, given_bytes, tp, active=active)
    if from_file:
        return file_stage_weight_bytes(spec, layers_per_stage, tp, active=active, lookup_tokens=lookup_tokens)
    if spec.num_parameters is None:
        raise InputError(missing_weights_problem(spec))
    total = spec.active_parameters if active else spec.num_parameters
    embed, head = _embedding_params(spec)
    body = max(0, total - embed - head)
    # unquantised weights: the model's own dtype, or --dtype when that is a float cast
    plain_dtype = dtype if dtype in ("bf16", "fp16", "fp32") else spec.dtype
    experts_only = spec.weights_quantized == "experts"
    if experts_only:
        experts = spec.active_routed_experts if active else spec.num_routed_experts
        per_expert = expert_weight_bytes(spec, dtype)
        body -= spec.active_routed_expert_weight_parameters if active else spec.routed_expert_weight_parameters
    out = []
    layers = spec.num_hidden_layers
    start = 0
    for i, n in enumerate(layers_per_stage):
        params_body = body * n // layers
        if experts_only:
            stage = experts * spec.moe_layers_between(start, start + n) * per_expert + weight_bytes(params_body, plain_dtype)
        else:
            stage = weight_bytes(params_body, dtype)
        if i == 0:
            lookup_only = lookup_tokens is not None and (head or len(layers_per_stage) > 1)
            stage += weight_bytes(min(lookup_tokens, spec.vocab_size) * spec.hidden_size if lookup_only else embed, plain_dtype)
        if i == len(layers_per_stage) - 1:
            # a tied lm_head on a separate last stage needs its own copy
            stage += weight_bytes(head if head or len(layers_per_stage) == 1 else embed, plain_dtype)
        out.append(ceil_div(stage, tp))
        start += n
    return out


def routed_expert_bytes(spec: ModelSpec, dtype: str, *, active: bool = False, from_file: bool = False) -> int:
    """Bytes of every routed expert of the whole model (one stage, tp 1), as stage_weight_bytes counts them:
    the file's routed_experts, or the formula's experts in `dtype` (`active`: the active_routed_experts of them)."""
    if from_file:
        experts = spec.file_weight_bytes.routed_experts
        return experts * spec.active_routed_experts // spec.num_routed_experts if active and spec.num_routed_experts else experts
    if spec.weights_quantized == "experts":
        count = spec.active_routed_experts if active else spec.num_routed_experts
        return count * spec.moe_layers_between(0, spec.num_hidden_layers) * expert_weight_bytes(spec, dtype)
    params = spec.active_routed_expert_weight_parameters if active else spec.routed_expert_weight_parameters
    return weight_bytes(params, dtype)


def data_parallel_weight_bytes(spec: ModelSpec, dtype: str, tp: int, dp: int, *, active: bool = False,
                               lookup_tokens: int | None = None, from_file: bool = False) -> list[int]:
    """Weight bytes one GPU of a --data-parallel-size `dp` deployment holds (or reads, `active`), one stage.

    vLLM 0.32 shards the routed experts over all tp x dp GPUs (FusedMoEParallelConfig.make flattens tp across
    dp: MoE tensor parallelism over tp x dp, or with --enable-expert-parallel E / (tp x dp) whole experts, the
    same bytes), and everything else (attention, dense MLPs, shared experts, embedding, lm_head) over the tp
    GPUs of each instance: the whole stage less its experts over tp, the experts over tp x dp.
    """
    whole = stage_weight_bytes(spec, [spec.num_hidden_layers], dtype, 1, active=active, lookup_tokens=lookup_tokens,
                               from_file=from_file)[0]
    experts = routed_expert_bytes(spec, dtype, active=active, from_file=from_file)
    return [ceil_div(whole - experts, tp) + ceil_div(experts, tp * dp)]


def moe_experts(spec: ModelSpec) -> tuple[int, int] | None:
    experts = spec.num_local_experts or spec.n_routed_experts
    if experts and spec.num_experts_per_tok and spec.num_active_parameters:
        return experts, spec.num_experts_per_tok
    return None


def decode_weight_fraction(spec: ModelSpec, batch: int) -> float:
    """Share of the non-active routed-expert weights a decode step of `batch` tokens reads.

    With E experts, k per token and uniform routing, a batch touches a fraction
    1 - (1 - k/E)^batch of the experts; 0 for a dense model.
    """
    moe = moe_experts(spec)
    if moe is None:
        return 0.0
    experts, k = moe
    touched = 1 - (1 - k / experts) ** batch
    # active parameters already include k experts' worth; the rest scales in
    return max(0.0, (touched - k / experts) / (1 - k / experts))


# ----------------------------------------------------------------- activations


def activation_estimate(spec: ModelSpec, tokens: int, seqs: int, dtype_bytes: int, tp: int) -> int:
    """Peak activation bytes of vLLM's profile run (a stated estimate; override with a flag).

    The profile run is one forward pass of max_num_batched_tokens tokens: the
    largest live tensors are the MLP's gate+up output and a few hidden-size
    buffers per token, plus the sampler's fp32 logits for max_num_seqs sequences (`tokens`, `seqs`).
    """
    width = spec.moe_intermediate_size if (spec.moe_intermediate_size and moe_experts(spec)) else spec.intermediate_size
    width = width or 4 * spec.hidden_size
    per_token = (2 * width // tp + 4 * spec.hidden_size) * dtype_bytes
    logits = seqs * ceil_div(spec.vocab_size, tp) * 4
    return tokens * per_token + logits


# ----------------------------------------------------------------- FLOPs


def _attention_dims(spec: ModelSpec) -> tuple[int, int]:
    """(score dim, value dim) per head for attention FLOPs; MLA in the absorbed form."""
    if spec.is_mla:
        assert spec.kv_lora_rank is not None
        return spec.mla_latent_dim, spec.kv_lora_rank
    return spec.k_head_dim, spec.v_head_dim_resolved


def _kind_attention_dims(spec: ModelSpec, kind: LayerKind) -> tuple[int, int]:
    """(score dim, value dim) per head of one kind: MLA absorbed, else the kind's own head sizes (Gemma 4's
    full layers global_head_dim, its sliding layers head_dim)."""
    if spec.is_mla:
        return _attention_dims(spec)
    return KINDS[kind].head_dims(spec)


def _attention_flops(spec: ModelSpec, kinds: dict[LayerKind, int], layout: CacheLayout, tp: int,
                     pairs: Callable[[Kind, Optional[int]], int]) -> int:
    """2 x heads x (d_k + d_v) FLOPs per query-key pair, over the `pairs(rule, window)` of every KV kind (per rank)."""
    heads = spec.num_attention_heads // tp
    windows = {g.kind: g.window for g in layout.groups}
    return sum(n * 2 * heads * sum(_kind_attention_dims(spec, kind)) * pairs(KINDS[kind], windows.get(kind))
               for kind, n in kinds.items() if KINDS[kind].has_kv)


# DeepSeek sparse attention (deepseek_v32, index_topk set): each query's indexer scores every earlier key
# (index_n_heads dot products of index_head_dim: 2 x heads x dim FLOPs per pair, the indexer's heads whole on
# every rank: vLLM 0.32 Indexer's wq_b / weights_proj are ReplicatedLinear), then MLA attends to
# min(keys, index_topk) selected latents only (transformers 5.25 DeepseekV32Indexer: topk = min(index_topk, keys)).


def _sparse_pairs(spec: ModelSpec, keys: int) -> int:
    """Latents one query attends to when `keys` are visible: all of them, or index_topk under sparse attention."""
    return min(keys, spec.index_topk) if spec.index_topk else keys


def _indexer_flops(spec: ModelSpec, kinds: dict[LayerKind, int], pairs: int) -> int:
    if not spec.index_topk or LayerKind.MLA not in kinds:
        return 0
    assert spec.index_n_heads is not None and spec.index_head_dim is not None
    return kinds[LayerKind.MLA] * 2 * spec.index_n_heads * spec.index_head_dim * pairs


def attention_flops_decode(spec: ModelSpec, kinds: dict[LayerKind, int], layout: CacheLayout, context: int, tp: int) -> int:
    """FLOPs of attention for one new token attending to the tokens held (per rank); under DeepSeek sparse
    attention, index_topk latents plus the indexer's scores over every key."""
    dense = _attention_flops(spec, kinds, layout, tp,
                             lambda rule, window: _sparse_pairs(spec, rule.tokens_held(context, window)))
    return dense + _indexer_flops(spec, kinds, context)


def attention_flops_prefill(spec: ModelSpec, kinds: dict[LayerKind, int], layout: CacheLayout, prompt: int, tp: int) -> int:
    # the kind's causal pairs: a sliding token sees its window, a chunked one only its own chunk
    if spec.index_topk:
        k = spec.index_topk  # query i (1-based) attends min(i, k) latents: a triangle up to k, then k each
        sparse = prompt * (prompt + 1) // 2 if prompt <= k else k * (k + 1) // 2 + (prompt - k) * k
        attn = _attention_flops(spec, kinds, layout, tp,
                                lambda rule, window: sparse if rule.kind is LayerKind.MLA else rule.prefill_pairs(prompt, window))
        return attn + _indexer_flops(spec, kinds, prompt * (prompt + 1) // 2)
    return _attention_flops(spec, kinds, layout, tp, lambda rule, window: rule.prefill_pairs(prompt, window))


def sparse_kv_read_bytes(layout: CacheLayout, counts: dict[LayerKind, int], context: int) -> int:
    """Bytes of one sequence's cache a decode step on one rank of one stage does NOT read under DeepSeek sparse
    attention: the latents beyond the index_topk selected ones (every indexer key is still read)."""
    spec = layout.spec
    n = counts.get(LayerKind.MLA, 0)
    if not spec.index_topk or not n:
        return 0
    group = next(g for g in layout.groups if g.kind is LayerKind.MLA)
    latent = group.bytes_per_token_per_layer_rank - KINDS[LayerKind.MLA].index_bytes_per_token_per_layer(spec)
    return n * latent * max(0, context - spec.index_topk)


class Planner:
    """One model, one GPU, one layout; answers capacity, latency and cost questions."""

    def __init__(self, spec: ModelSpec, gpu: GPUFigures, kv_format: KVFormatPair, opts: PlanOptions, state_format=None) -> None:
        # the share vLLM budgets with: as given, else the default of the vLLM version (ideal: the default version's)
        self.gpu_memory_utilization = gpu_memory_utilization(opts.gpu_memory_utilization, opts.vllm_rules)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise InputError(
                f"--gpu-memory-utilization {self.gpu_memory_utilization} must be in (0, 1]"
            )
        for flag, value in (("--bandwidth-efficiency", opts.bandwidth_efficiency), ("--compute-efficiency", opts.compute_efficiency)):
            if not 0 < value <= 1:
                raise InputError(f"{flag} {value} must be in (0, 1]")
        for flag, given in (("--max-num-batched-tokens", opts.max_num_batched_tokens), ("--max-num-seqs", opts.max_num_seqs)):
            if given is not None and given < 1:
                raise InputError(f"{flag} must be at least 1")
        self.spec, self.gpu, self.kv_format, self.opts = spec, gpu, kv_format, opts
        self.state_format = state_format
        # answers that do not depend on the context or batch, shared by every `at` copy (a sweep asks each often)
        self._memo: dict = {}
        # vLLM's scheduler limits: as given, else its defaults for this GPU and --context (max_model_len)
        self.vllm_version = vllm_version(opts)
        self.max_num_batched_tokens, self.max_num_seqs = scheduler_limits(
            gpu.memory_bytes, gpu.device_name or gpu.name,
            getattr(opts.vllm_rules, "max_model_len", None) or opts.context, max_num_batched_tokens=opts.max_num_batched_tokens,
            max_num_seqs=opts.max_num_seqs, version=self.vllm_version)
        if opts.dp < 1:
            raise InputError(f"--data-parallel-size must be at least 1, got {opts.dp}")
        if opts.dp > 1:
            _check_data_parallel(spec, opts)
        if opts.expert_parallel:
            experts = spec.num_routed_experts
            ranks = opts.tp * opts.dp  # vLLM's EP group: every GPU of every data-parallel instance
            if not experts:
                raise InputError(f"--expert-parallel: {spec.name} has no routed experts; drop the flag")
            if ranks < 2:
                raise InputError("--expert-parallel spreads the experts over the tensor-parallel ranks: give --tp 2 or more")
            if experts % ranks:
                raise InputError(
                    f"--expert-parallel over {ranks} ranks does not divide {spec.name}'s {experts} routed experts "
                    "(kvplan sizes an even split only); use a --tp" + (" x --dp" if opts.dp > 1 else "") + " that divides them"
                )
        from kvplan.plan.deploy import default_block_size

        self.block_size = opts.block_size or default_block_size(spec, opts.engine, opts.vllm_rules)
        self.layout = CacheLayout(spec, kv_format, block_size=self.block_size, tp=opts.tp, pp=opts.pp, state_format=state_format)
        self.weights_dtype = opts.weights_dtype or spec.weights_dtype or spec.dtype
        self.dtype_bytes = 4 if self.weights_dtype == "fp32" else 2
        if opts.weights_bytes is not None and opts.weights_dtype is not None:
            raise InputError("--weights-bytes gives the weights' bytes and --dtype casts them; give one of the two")
        self.weights_from_file = weights_from_file(spec, opts.weights_dtype)
        self.stage_weights = self._stage_weights()
        # vLLM budgets from the total cudaMemGetInfo reports (vllm/utils/mem_utils.py MemorySnapshot, v1/worker/
        # utils.py request_memory: ceil(total x gpu_memory_utilization)), below NVML's; --cuda-total-memory gives it
        self.budget_total = opts.cuda_total_memory_bytes or gpu.memory_bytes
        if self.budget_total > gpu.memory_bytes:
            raise InputError(f"--cuda-total-memory {self.budget_total:,} B is more than the GPU's memory "
                             f"({gpu.memory_bytes:,} B, NVML's total); CUDA reports at most that")
        self.usable = usable_bytes(self.budget_total, self.gpu_memory_utilization)  # ceil, as vLLM
        self.flop_parameters, self.flop_parameters_note = flop_parameters(spec, self.weights_dtype, opts.weights_bytes)
        self.activation_estimated = opts.activation_bytes is None
        self.activation = (
            activation_estimate(spec, self.max_num_batched_tokens, self.max_num_seqs, self.dtype_bytes, opts.tp)
            if opts.activation_bytes is None else opts.activation_bytes
        )
        if opts.non_torch_bytes is not None:
            self.non_torch = opts.non_torch_bytes
        else:
            self.non_torch = DEFAULT_NON_TORCH_BYTES_TP if opts.tp * opts.pp * opts.dp > 1 else DEFAULT_NON_TORCH_BYTES
        self.stage_budgets = stage_budgets(self.budget_total, self.gpu_memory_utilization, self.stage_weights,
                                           self.activation, self.non_torch)
        # the capacity rule ideal's and vllm's `capacity()` apply (kvplan.engines.vllm_rules.Pool)
        self.pool = Pool(self.layout, self.stage_budgets, vllm=opts.engine is Engine.vllm,
                         max_num_batched_tokens=self.max_num_batched_tokens, rules=opts.vllm_rules)
        self.stage_budgets = self.pool.budgets  # --kv-cache-memory-bytes replaces the budget rule
        self.vllm_stages = self.pool.stages

    def at(self, opts: PlanOptions) -> "Planner":
        """This planner under `opts`, which differ from its own in the context and batch only (a sweep's points).

        The constructor reads the context only through vLLM's scheduler limits (a defaulted
        --max-num-batched-tokens follows max_model_len): where they come out the same, the copy shares the layout,
        weights, budgets, pool and kept answers; otherwise a new planner is built.
        """
        if any(getattr(opts, f) != getattr(self.opts, f) for f in _POINT_FREE_OPTIONS):
            raise ValueError("Planner.at changes the context and batch only")
        limits = scheduler_limits(
            self.gpu.memory_bytes, self.gpu.device_name or self.gpu.name,
            getattr(opts.vllm_rules, "max_model_len", None) or opts.context,
            max_num_batched_tokens=opts.max_num_batched_tokens, max_num_seqs=opts.max_num_seqs,
            version=self.vllm_version)
        if limits != (self.max_num_batched_tokens, self.max_num_seqs):
            return Planner(self.spec, self.gpu, self.kv_format, opts, self.state_format)
        other = copy.copy(self)
        other.opts = opts
        return other

    def _stage_weights(self, *, active: bool = False, lookup_tokens: int | None = None) -> list[int]:
        """Weight bytes per rank of each stage: from the file's headers, or the formula in weights_dtype."""
        if self.opts.dp > 1:
            return data_parallel_weight_bytes(self.spec, self.weights_dtype, self.opts.tp, self.opts.dp, active=active,
                                              lookup_tokens=lookup_tokens, from_file=self.weights_from_file)
        return stage_weight_bytes(self.spec, self.layout.layers_per_stage, self.weights_dtype, self.opts.tp, active=active,
                                  lookup_tokens=lookup_tokens, from_file=self.weights_from_file,
                                  given_bytes=self.opts.weights_bytes)

    # -- capacity ---------------------------------------------------------

    def max_sequences(self, context: int, prefix: int = 0) -> int:
        """Concurrent sequences of `context` tokens that fit (the tightest stage; `Pool.max_sequences`)."""
        return self.pool.max_sequences(context, prefix)

    def reserved_bytes(self, stage: int, context: int, batch: int) -> int:
        """Bytes `batch` sequences of `context` tokens reserve on one rank of `stage`, as the engine counts."""
        return self.pool.reserved_bytes(stage, context, batch)

    def concurrency_curve(self) -> list[dict]:
        """Max concurrent sequences at contexts 1k, 2k, 4k, ... up to the model's limit (and --context)."""
        limit, _ = self.context_limit()
        points = sorted({c for c in (2**k for k in range(10, 25)) if c <= limit} | {self.opts.context})
        return [{"context": c, "max_concurrent_sequences": self.max_sequences(c) * self.opts.dp} for c in points]

    def context_limit(self) -> tuple[int, str]:
        """The longest context the engine accepts: max_position_embeddings, else 2**24."""
        return context_limit(self.spec)

    def max_context(self, batch: int) -> tuple[int, str]:
        """The longest context at which `batch` sequences fit: a search, not a division (`Pool.max_context`)."""
        return self.pool.max_context(batch)

    def memory_inputs(self, label: str, activation_source: str = ""):
        """What sits on each GPU besides the KV cache, as an engine's `capacity()` reads it (`MemoryInputs`)."""
        from kvplan.engines.base import MemoryInputs

        tight = self.pool.tight
        return MemoryInputs(label, self.gpu.memory_bytes, self.stage_weights[tight], self.non_torch, self.activation,
                            activation_source, weights_source(self.spec, self.opts.weights_dtype, self.opts.weights_bytes),
                            tuple(self.stage_weights), self.budget_total)

    # -- latency ---------------------------------------------------------

    def decode_step(self, batch: int, context: int, kv_bytes_per_rank: int | None = None) -> tuple[float, str, int, int]:
        """(seconds, bound, bytes per step, FLOPs per step) for one decode step, all stages.

        The KV read is the tokens held (unpaged); `kv_bytes_per_rank` replaces it
        with another engine's bytes (`kvplan check` under an engine profile, pp 1).
        """
        if kv_bytes_per_rank is not None and self.opts.pp > 1:
            raise ValueError("kv_bytes_per_rank is for one pipeline stage")
        key = ("decode_step", batch, context, kv_bytes_per_rank)
        if key not in self._memo:
            self._memo[key] = self._decode_step(batch, context, kv_bytes_per_rank)
        return self._memo[key]

    def _decode_step(self, batch: int, context: int, kv_bytes_per_rank: int | None) -> tuple[float, str, int, int]:
        spec, tp = self.spec, self.opts.tp
        # the input embedding is a lookup: one row per token in the batch is read, not the table
        held_weights = self._stage_weights(lookup_tokens=batch)
        active_weights = self._stage_weights(active=True, lookup_tokens=batch)
        # under --data-parallel-size every GPU's experts see all instances' tokens (gathered before the MoE)
        share = decode_weight_fraction(spec, batch * self.opts.dp)
        bandwidth = self.gpu.memory_bandwidth_gbps * 1e9 * self.opts.bandwidth_efficiency
        peak = self._peak_flops() * self.opts.compute_efficiency
        seconds, total_bytes, total_flops, bounds = 0.0, 0, 0, set()
        layers = spec.num_hidden_layers
        for i, counts in enumerate(self.layout.stage_kind_counts):
            read_weights = active_weights[i] + int((held_weights[i] - active_weights[i]) * share)
            if kv_bytes_per_rank is None:  # sparse attention reads index_topk latents, not every one it holds
                held_bytes = self.layout.stage_rank_bytes(counts, context, paged=False)
                kv = batch * (held_bytes - sparse_kv_read_bytes(self.layout, counts, context))
            else:
                kv = kv_bytes_per_rank
            step_bytes = read_weights + kv
            body_stage = body_parameters(spec, active=True, total=self.flop_parameters) * self.layout.layers_per_stage[i] // layers
            logits = lm_head_flops(spec) if i == len(self.layout.layers_per_stage) - 1 else 0
            flops = batch * ((2 * body_stage + logits) // tp + attention_flops_decode(spec, counts, self.layout, context, tp))
            t_mem, t_compute = step_bytes / bandwidth, (flops / peak if peak else 0.0)
            bounds.add("memory" if t_mem >= t_compute else "compute")
            seconds += max(t_mem, t_compute) + (self.stage_comm_s(i, batch, batch * self.opts.dp) or 0.0)
            total_bytes += step_bytes
            total_flops += flops
        bound = bounds.pop() if len(bounds) == 1 else "mixed"
        return seconds, bound, total_bytes, total_flops

    def _peak_flops(self) -> float:
        if self.weights_dtype == "fp8" and self.gpu.fp8_tflops:
            return self.gpu.fp8_tflops * 1e12
        return self.gpu.bf16_tflops * 1e12

    def prefill(self, prompt: int, cached_prefix: int = 0) -> float | None:
        """Seconds to prefill one prompt (compute-bound, at the stated efficiency); None if TFLOPS unknown."""
        key = ("prefill", prompt, cached_prefix)
        if key not in self._memo:
            self._memo[key] = self._prefill(prompt, cached_prefix)
        return self._memo[key]

    def _prefill(self, prompt: int, cached_prefix: int) -> float | None:
        spec, tp = self.spec, self.opts.tp
        if not self._peak_flops():
            return None
        new = max(0, prompt - cached_prefix)
        peak = self._peak_flops() * self.opts.compute_efficiency
        bandwidth = self.gpu.memory_bandwidth_gbps * 1e9 * self.opts.bandwidth_efficiency
        weights = self.stage_weights
        seconds = 0.0
        for i, counts in enumerate(self.layout.stage_kind_counts):
            params = body_parameters(spec, active=True, total=self.flop_parameters) * self.layout.layers_per_stage[i] // spec.num_hidden_layers
            attn = attention_flops_prefill(spec, counts, self.layout, prompt, tp) - attention_flops_prefill(
                spec, counts, self.layout, cached_prefix, tp
            ) if cached_prefix else attention_flops_prefill(spec, counts, self.layout, prompt, tp)
            # logits for the prompt's last token only (engines prune the others before the lm_head)
            logits = lm_head_flops(spec) if i == len(self.layout.layers_per_stage) - 1 else 0
            flops = (2 * params * new + logits) // tp + attn
            seconds += max(flops / peak, weights[i] / bandwidth) + (self.stage_comm_s(i, new) or 0.0)
        return seconds

    # -- communication -----------------------------------------------------

    def link(self) -> tuple[float, float] | None:
        """(GB/s per direction, latency s per ring step) between this replica's GPUs: the flags, else the GPU
        catalog's interconnect; None where neither gives a bandwidth or --no-communication."""
        opts, gpu = self.opts, self.gpu
        gbps = opts.link_gbps if opts.link_gbps is not None else gpu.link_gbps
        latency_us = opts.link_latency_us if opts.link_latency_us is not None else gpu.link_latency_us
        if not opts.communication or not gbps:
            return None
        return gbps, (latency_us or 0.0) * 1e-6

    def stage_comm_s(self, stage: int, tokens: int, gathered: int | None = None) -> float | None:
        """Seconds one forward of `tokens` tokens (all sequences together) spends communicating on one rank of
        `stage` (kvplan.plan.comm): 2 ring all-reduces per layer (+1 on the first stage, the vocab-parallel
        embedding) of tokens x hidden activations, and on every stage but the last the hand-off of the same
        activations to the next stage. 0 at tp = pp = dp = 1; None: not modelled (no link figure).

        --data-parallel-size: a MoE layer gathers every instance's tokens (`gathered`, default `tokens`: a
        prefill runs on one instance) over the dp group before its experts and reduce-scatters their outputs after
        (vLLM 0.32's default all2all backend, allgather_reducescatter: AgRsAll2AllManager over the DP group),
        each a ring of dp - 1 steps moving (dp - 1)/dp of gathered x hidden x activation bytes; the tp
        all-reduces stay (none at tp 1: attention runs whole on each GPU)."""
        opts = self.opts
        if opts.tp * opts.pp * opts.dp == 1:
            return 0.0
        link = self.link()
        if link is None:
            return None
        gbps, latency = link
        message = tokens * self.spec.hidden_size * self.dtype_bytes
        counts = self.layout.stage_kind_counts[stage]
        mamba1 = counts.get(LayerKind.STATE, 0) if is_mamba1(self.spec) else 0
        # Nemotron-H's layers are one block each (a mixer or an MLP / MoE alone: NemotronHBlock), so one
        # row-parallel output, one all-reduce; every other model's layer has a mixer and an MLP
        blocks = 1 if LayerKind.MLP in self.spec.layer_kinds else 2
        count = allreduces_per_stage(self.layout.layers_per_stage[stage], mamba1, stage == 0, blocks)
        allreduces = count.hidden_messages
        # Mamba-1's row-parallel x_proj (vLLM 0.32 MambaMixer: RowParallelLinear(d_inner, dt_rank + 2 d_state),
        # reduce_results on) sums its partial dt, B, C once per forward of the tokens (_ssm_transform runs once
        # for the decode tokens, once for the prefill tokens): a message of tokens x (dt_rank + 2 d_state)
        seconds = count.extra_state * ring_allreduce_seconds(
            tokens * mamba1_x_proj_width(self.spec) * self.dtype_bytes, opts.tp, gbps, latency, NCCL_BASE_LATENCY_S,
        ) if count.extra_state else 0.0
        norm = mamba2_norm_collective(self.spec, opts.tp)
        if norm == "all_reduce":  # n_groups 1: each token's fp32 sum of squares, one per Mamba-2 layer
            seconds += counts.get(LayerKind.STATE, 0) * ring_allreduce_seconds(tokens * 4, opts.tp, gbps, latency, NCCL_BASE_LATENCY_S)
        elif norm == "all_gather":  # tp does not divide n_groups: the fp32 gated activations, tokens x d_inner
            total = tokens * self.spec.mamba_d_inner_resolved * 4
            seconds += counts.get(LayerKind.STATE, 0) * ring_allgather_seconds(total, opts.tp, gbps, latency, NCCL_BASE_LATENCY_S)
        if opts.dp > 1:  # a MoE layer: all-gather + reduce-scatter of every instance's tokens over the dp group
            moe = self.spec.moe_layers_between(0, self.spec.num_hidden_layers)  # one stage under --dp
            total = (tokens if gathered is None else gathered) * self.spec.hidden_size * self.dtype_bytes
            seconds += 2 * moe * ring_allgather_seconds(total, opts.dp, gbps, latency, NCCL_BASE_LATENCY_S)
        elif opts.expert_parallel:  # a MoE layer's MLP: dispatch + combine all-to-alls of top_k rows a token, no all-reduce
            start = sum(self.layout.layers_per_stage[:stage])
            moe = self.spec.moe_layers_between(start, start + self.layout.layers_per_stage[stage])
            allreduces -= moe
            routed = message * (self.spec.num_experts_per_tok or 1)
            seconds += 2 * moe * all_to_all_seconds(routed, opts.tp, gbps, latency, NCCL_BASE_LATENCY_S)
        seconds += allreduces * ring_allreduce_seconds(message, opts.tp, gbps, latency, NCCL_BASE_LATENCY_S)
        if stage < opts.pp - 1:
            seconds += send_seconds(message, gbps, latency)
        return seconds

    def comm_s(self, tokens: int, gathered: int | None = None) -> float | None:
        """All stages' communication for one forward of `tokens` tokens (None: not modelled)."""
        parts = [self.stage_comm_s(i, tokens, gathered) for i in range(self.opts.pp)]
        return None if None in parts else sum(parts)

    # -- everything -------------------------------------------------------

    def plan(self) -> Plan:
        spec, gpu, opts = self.spec, self.gpu, self.opts
        context, batch = opts.context, opts.batch
        require_at_least("--context", context, 1, "token")
        require_at_least("--batch", batch, 1, "sequence")
        n_gpus = opts.tp * opts.pp * opts.dp
        # --data-parallel-size: each instance holds its own ⌈batch / dp⌉ sequences in its own pool; what follows
        # is one instance's (its GPUs' memory, its max sequences), the deployment's totals dp x that
        batch = per_instance(batch, opts.dp)
        tight = min(range(len(self.stage_budgets)), key=lambda i: self.stage_budgets[i])
        budget = self.stage_budgets[tight]
        max_seqs = self.max_sequences(context)
        max_ctx, ctx_why = self.max_context(batch)
        stage_need = [self.reserved_bytes(i, context, batch) for i in range(len(self.stage_budgets))]
        need = stage_need[tight]
        stages = [
            StageMemory(n, w, b, r)
            for n, w, b, r in zip(self.layout.layers_per_stage, self.stage_weights, self.stage_budgets, stage_need)
        ]
        fits = max_seqs >= batch
        headroom = (budget - need) / budget * 100 if budget > 0 else None
        shortfall = max(0, need - budget)  # memory missing per GPU: more than the KV when the weights leave none

        pool = self.pool.report(context, max_seqs)  # vLLM's blocks, log lines and notes (ideal: none)
        refusal = pool.refusal
        notes: list[str] = list(pool.notes)
        if spec.index_topk:
            notes.append(
                f"DeepSeek sparse attention: a decode step reads every indexer key but only index_topk = "
                f"{spec.index_topk:,} latents per layer, and attends to those alone (prefill: min(position, "
                f"{spec.index_topk:,}) per query); the cache still holds every latent"
            )
        runs = max_seqs >= 1 and refusal is None and pool.memory_refusal is None  # a refusing vLLM runs nothing
        # vLLM's scheduler runs at most max_num_seqs sequences a step: throughput and cost are at no more
        mns = self.max_num_seqs
        roof = self.roofline(min(batch, mns), context, min(max_seqs, mns) if runs else 0,
                             sequences=min(opts.batch, opts.dp * mns))
        notes += self._max_num_seqs_notes(batch, max_seqs if runs else 0)
        if opts.dp > 1:
            notes.append(
                f"data parallel: {opts.dp} instances of tp {opts.tp}, each with its own KV pool and scheduler; "
                f"--batch {opts.batch:,} puts {batch:,} sequences on the busiest; the memory, KV and vLLM figures are "
                f"one instance's GPU, max_concurrent_sequences all {opts.dp} instances'")
        notes += roof.notes
        suggestions = [] if fits else self.suggestions(need, budget)
        if refusal is not None:
            # vLLM will not start at this context at all: only a shorter context helps
            suggestions = [s for s in suggestions if s.startswith("--context")]
        return Plan(
            model=spec.name,
            gpu=gpu.name,
            engine=opts.engine.value,
            tensor_parallel_size=opts.tp,
            pipeline_parallel_size=opts.pp,
            data_parallel_size=opts.dp,
            gpus=n_gpus,
            context=context,
            batch=opts.batch,
            kv_cache_dtype=self.kv_format.name,
            weights_dtype=self.weights_dtype,
            weights_quantized=spec.weights_quantized,
            weights_source=weights_source(spec, opts.weights_dtype, opts.weights_bytes),
            block_size=self.block_size,
            gpu_memory_bytes=gpu.memory_bytes,
            cuda_total_memory_bytes=self.budget_total,
            gpu_memory_utilization=self.gpu_memory_utilization,
            usable_bytes_per_gpu=self.usable,
            weights_bytes_per_gpu=self.stage_weights[tight],
            activation_bytes_per_gpu=self.activation,
            activation_estimated=self.activation_estimated,
            non_torch_bytes_per_gpu=self.non_torch,
            kv_budget_bytes_per_gpu=budget,
            kv_bytes_per_gpu_at_batch=need,
            fits=fits,
            headroom_pct=None if headroom is None else round(headroom, 3),
            shortfall_bytes=shortfall,
            max_concurrent_sequences=max_seqs * opts.dp,
            max_num_seqs=mns,
            max_context_tokens=max_ctx,
            max_context_limited_by=ctx_why,
            vllm_num_blocks=pool.num_blocks,
            vllm_kv_cache_tokens=pool.kv_cache_tokens,
            vllm_max_concurrency=pool.max_concurrency,
            vllm_groups=pool.groups,
            vllm_padding_layers=pool.padding_layers,
            vllm_log=list(pool.log),
            vllm_starts=None if self.vllm_stages is None else not (refusal is not None or max_seqs < 1
                                                                   or pool.memory_refusal is not None),
            vllm_block_size=pool.block_size,
            vllm_refusal=refusal or pool.memory_refusal,
            vllm_estimated_max_model_len=pool.estimated_max_model_len,
            **roof.fields(),
            stages=stages,
            suggestions=suggestions,
            assumptions=self.assumptions(),
            notes=notes,
        )

    def gpus_for_workload(self, prefix: int, kv: KVRead = None, seqs_at: Optional[Callable[[int], int]] = None) -> int | None:
        """GPUs for --requests-per-s of --prompt-tokens + --output-tokens, at the largest batch that fits.

        One replica (tp x pp GPUs) spends, per request, its prefill time plus
        output_tokens decode steps shared by the batch: requests/s per replica =
        1 / (prefill_s + output_tokens x step_s / batch). `kv` and `seqs_at` give another
        engine's KV read and max sequences at a context (no prefix sharing: `prefix` is 0).
        """
        opts = self.opts
        prompt = opts.prompt_len
        output = opts.output_tokens or 0
        context = prompt + output
        if seqs_at is None:  # ideal's and vllm's own pool, run max_num_seqs at a time at most
            batch = min(self.max_sequences(context, prefix=min(prefix, prompt)), self.max_num_seqs)
        else:
            batch = seqs_at(context)
        prefill_s = self.prefill(prompt, cached_prefix=min(prefix, prompt))
        if batch < 1 or prefill_s is None:  # no replica runs, or no peak FLOPS to time the prefill with
            return None
        step = self._step(batch, context, kv) if output else (0.0,)
        if step is None:  # the engine refuses that batch
            return None
        per_request = prefill_s + output * step[0] / batch
        replicas = max(1, ceil_div(int(opts.requests_per_s * per_request * 10**6), 10**6))
        if opts.dp > 1:  # instances come dp at a time (one data-parallel deployment shares its experts)
            replicas = ceil_div(replicas, opts.dp) * opts.dp
        return replicas * opts.tp * opts.pp

    def _step(self, batch: int, context: int, kv: KVRead) -> tuple[float, str, int, int] | None:
        """decode_step with the KV bytes `kv` says (None: the engine refuses that batch)."""
        if kv is None:
            return self.decode_step(batch, context)
        nbytes = kv(batch, context)
        return None if nbytes is None else self.decode_step(batch, context, kv_bytes_per_rank=nbytes)

    def roofline(self, batch: int, context: int, max_seqs: int, kv: KVRead = None,
                 seqs_at: Optional[Callable[[int], int]] = None, kv_read: str = "",
                 sequences: Optional[int] = None) -> Roofline:
        """Decode step, prefill, throughput, cost and workload of `batch` sequences of `context` tokens.

        One path for every engine: `max_seqs` is the engine's own capacity (0: nothing
        runs, so no step, prefill or throughput is given; the bytes a step would read
        stay); `kv` and `seqs_at` are the engine's KV read and capacity at another batch
        or context (None: this planner's own, the tokens held). Costs are at the largest
        batch that fits; `kv_read` says what a step reads of the engine's cache. Under --data-parallel-size
        `batch` and `max_seqs` are one instance's and `sequences` all instances' (default dp x batch).
        """
        opts, gpu = self.opts, self.gpu
        n_gpus = opts.tp * opts.pp * opts.dp
        notes: list[str] = []
        prompt = opts.prompt_len
        decode_s, bound, step_bytes, step_flops = self._step(batch, context, kv)  # the caller's batch is not refused
        prefill_s = self.prefill(prompt)
        tokens_per_s = (batch * opts.dp if sequences is None else sequences) / decode_s
        runs = max_seqs >= 1
        if not runs:  # nothing runs: no step, prefill or throughput to report (the bytes a step would read stay)
            decode_s = bound = prefill_s = tokens_per_s = None
        cost_batch = max_seqs if runs else 0
        usd_per_s = gpu.usd_per_hour * n_gpus / 3600
        cost_tps = 0.0
        usd_out = usd_in = None
        if cost_batch and gpu.usd_per_hour <= 0:
            notes.append("no price for this GPU: give --usd-per-hour for costs")
        if cost_batch:
            at_cost = self._step(cost_batch, context, kv)
            cost_tps = 0.0 if at_cost is None else cost_batch * opts.dp / at_cost[0]
        if cost_batch and gpu.usd_per_hour > 0:
            usd_out = usd_per_s / cost_tps * 1e6 if cost_tps else None
            usd_in = usd_per_s * prefill_s / prompt * 1e6 if prefill_s is not None else None
        gpus_needed = gpus_no_prefix = None
        if opts.requests_per_s is not None and prefill_s is None and runs:
            notes.append("no bf16 peak for this GPU: give --gpu-bf16-tflops to size the workload (prefill is compute-bound)")
        if opts.requests_per_s is not None and runs:
            gpus_needed = self.gpus_for_workload(opts.shared_prefix_tokens, kv, seqs_at)
            gpus_no_prefix = self.gpus_for_workload(0, kv, seqs_at) if opts.shared_prefix_tokens else gpus_needed
        if opts.requests_per_s is not None and not runs:
            notes.append("no workload figure: nothing runs on this GPU at these settings")
        assumptions = {"bandwidth_efficiency": opts.bandwidth_efficiency,
                       "compute_efficiency": opts.compute_efficiency}
        decode_comm = prefill_comm = 0.0 if runs else None
        if n_gpus > 1 and runs:
            link = self.link()
            decode_comm, prefill_comm = self.comm_s(batch, opts.dp * batch), self.comm_s(prompt)
            if link is None:
                notes.append("communication left out: " + ("--no-communication" if not opts.communication else
                             "no interconnect figure for this GPU; give --link-gbps (and --link-latency-us)"))
            else:
                assumptions["link_gbps"], assumptions["link_latency_us"] = link[0], link[1] * 1e6
                notes.append(f"communication: {fmt_seconds_short(decode_comm)} of the decode step and "
                             f"{fmt_seconds_short(prefill_comm)} of the prefill are tp all-reduces"
                             + (" and pp hand-offs" if opts.pp > 1 else "")
                             + (" and the MoE layers' dp all-gathers and reduce-scatters" if opts.dp > 1 else "")
                             + f" over {link[0]:g} GB/s, {link[1] * 1e6:g} µs a ring step")
                if opts.pp > 1:
                    notes.append(
                        f"pipeline: one micro-batch passes the {opts.pp} stages in turn, so a step is the sum of the "
                        f"stages and each GPU idles about {(opts.pp - 1) / opts.pp:.0%} of it (the bubble)")
        if kv_read:
            assumptions["kv_read"] = kv_read
        return Roofline(decode_s, bound, step_bytes, step_flops, prompt, prefill_s, tokens_per_s,
                        None if tokens_per_s is None else tokens_per_s / n_gpus, cost_batch, cost_tps,
                        gpu.usd_per_hour * n_gpus or None, usd_out, usd_in, gpus_needed, gpus_no_prefix,
                        decode_comm, prefill_comm, tuple(notes), assumptions)

    def _limits_source(self) -> str:
        """Where max_num_batched_tokens and max_num_seqs come from: the flags, or vLLM's defaults for the GPU."""
        from kvplan.engines.vllm_flags import defaults_rule

        o = self.opts
        if o.max_num_batched_tokens is not None and o.max_num_seqs is not None:
            return "--max-num-batched-tokens, --max-num-seqs"
        given = [f for f, v in (("--max-num-batched-tokens", o.max_num_batched_tokens),
                                ("--max-num-seqs", o.max_num_seqs)) if v is not None]
        rule = f"vLLM {self.vllm_version} " + defaults_rule(self.vllm_version).removeprefix("vLLM ")
        return rule + (f"; {given[0]} given" if given else "")

    def _max_num_seqs_notes(self, batch: int, kv_seqs: int) -> list[str]:
        """What max_num_seqs changes: a --batch above it queues, a pool holding more runs no more at once."""
        mns = self.max_num_seqs
        whose = "--max-num-seqs" if self.opts.max_num_seqs is not None else "vLLM's default on this GPU"
        if batch > mns:
            return [f"--batch {batch:,} is more than max_num_seqs {mns:,} ({whose}): vLLM runs at most {mns:,} "
                    f"sequences a step and queues the rest: throughput is at batch {mns:,}"]
        if kv_seqs > mns:
            return [f"KV memory holds {kv_seqs:,} sequences, but max_num_seqs {mns:,} ({whose}) runs at most "
                    f"{mns:,} a step: costs are at batch {mns:,} (--max-num-seqs raises it)"]
        return []

    def suggestions(self, need: int, budget: int) -> list[str]:
        """What would fit instead: fp8 KV, more tensor parallelism, a shorter context."""
        out = []
        opts, spec = self.opts, self.spec
        # --data-parallel-size: an instance must hold its ⌈batch / dp⌉; the counts said are all instances'
        want, dp = per_instance(opts.batch, opts.dp), opts.dp
        if self.kv_format.k.bits > 8:
            fp8 = KVFormatPair(FIXED_FORMATS["fp8"], FIXED_FORMATS["fp8"])
            alt = self._alternative(fp8, opts)
            n = alt.max_sequences(opts.context)
            if n >= want:
                out.append(f"--kv-cache-dtype fp8 fits {counted(n * dp, 'sequence')} of {opts.context:,} tokens")
        for tp in (2, 4, 8, 16):
            if tp <= opts.tp:
                continue
            alt = self._alternative(self.kv_format, _replace(opts, tp=tp))
            if alt is None:
                continue
            n = alt.max_sequences(opts.context)
            if n >= want:
                out.append(f"--tp {tp} fits {counted(n * dp, 'sequence')} of {opts.context:,} tokens")
                break
        if min(self.stage_budgets) <= 0:
            out.append(f"at --tp {opts.tp} the weights alone leave no room for KV: use a larger GPU, more tp or a quantised --dtype")
            return out
        ctx, _ = self.max_context(want)
        if ctx > 0:
            out.append(f"--context {ctx} is the longest that fits {counted(opts.batch, 'sequence')}")
            return out
        # The budget is there, but the batch is too large for any context: each sequence
        # holds at least one token (one block when paged), so name the batch that fits.
        fit_here = self.max_sequences(opts.context) * dp
        if fit_here >= 1:
            out.append(f"--batch {fit_here:,} is the most that fits at {opts.context:,} tokens")
        out.append(
            f"{counted(opts.batch, 'sequence')} fit at no context: the {fmt_bytes(budget)} KV budget holds at most "
            f"{counted(self.max_sequences(1), 'sequence')} even of 1 token each"
            + (" (one instance's)" if dp > 1 else "")
        )
        return out

    def _alternative(self, kv_format: KVFormatPair, opts: PlanOptions) -> "Planner | None":
        """A planner of another KV format or tp for `suggestions` (None: that tp is refused), the one built for an
        earlier context or batch of a sweep reused through `at` (built without --state-dtype's format, as ever)."""
        key = ("alternative", kv_format, opts.tp)
        if key not in self._memo:
            try:
                self._memo[key] = Planner(self.spec, self.gpu, kv_format, opts)
            except InputError:
                self._memo[key] = None
        alt = self._memo[key]
        return None if alt is None else alt.at(opts)

    def _weights_assumption(self) -> str:
        where = "embeddings on the first stage, lm_head on the last, vocab-sharded over tp"
        if self.opts.weights_bytes is not None:
            moe = self.spec.num_parameters and self.spec.num_active_parameters
            return ("--weights-bytes split evenly per layer over the stages, sharded over tp"
                    + ("; a decode step reads num_active_parameters / num_parameters of it" if moe else "")
                    + (f"; {self.flop_parameters_note}" if self.flop_parameters_note else ""))
        if self.flop_parameters_note:
            return f"bytes as the file's headers declare them; {where}; {self.flop_parameters_note}"
        if self.weights_from_file:
            return (f"bytes as the file's headers declare them; body split evenly per layer, routed experts by the "
                    f"MoE layers each stage holds; {where}")
        if self.spec.weights_quantized == "experts":
            plain = self.weights_dtype if self.weights_dtype in ("bf16", "fp16", "fp32") else self.spec.dtype
            return (f"routed experts' weights in {self.weights_dtype} (rows rounded to whole blocks), counted per MoE "
                    f"layer; the rest of the body in {plain}, split evenly per layer; {where}, in {plain}")
        return f"body split evenly per layer; {where}; 16-bit when the body is quantised"

    def assumptions(self) -> dict:
        o = self.opts
        link = self.link() if o.tp * o.pp * o.dp > 1 else None
        ep = {} if not o.expert_parallel else {
            "expert_parallel": "experts whole, routed experts / tp a rank (the same weight bytes per rank as tp's "
                               "1/tp of each); a MoE layer's MLP all-reduce becomes 2 all-to-alls of tokens x top_k x hidden",
        }
        if o.dp > 1:
            ep["data_parallel"] = (
                f"{o.dp} engine instances of tp {o.tp} (vLLM --data-parallel-size): attention, dense MLPs, shared experts "
                f"and embeddings whole per instance (sharded over tp), routed experts over tp x dp = {o.tp * o.dp} GPUs; "
                "each instance its own KV pool and max_num_seqs; --batch spread evenly, the busiest instance ⌈batch / dp⌉; "
                "a MoE layer all-gathers every instance's tokens x hidden over the dp group and reduce-scatters the "
                "outputs (vLLM's allgather_reducescatter backend; the top-k ids and weights beside them left out)")
        comm = {} if link is None else {
            "link_gbps": link[0], "link_latency_us": link[1] * 1e6,
            "link": self.gpu.interconnect if o.link_gbps is None and self.gpu.interconnect else "--link-gbps",
            "communication": "ring all-reduce: NCCL base 3.6 us + 2(tp-1) x latency + 2(tp-1)/tp x message / link, "
                             "2 per layer + 1 (embedding), message = tokens x hidden x activation bytes; pp: one hand-off per stage boundary"
                             + ("; Mamba-1: 1 more per state layer and forward (x_proj row-parallel), message = tokens x "
                                "(dt_rank + 2 d_state) x activation bytes" if is_mamba1(self.spec) and o.tp > 1 else ""),
        }
        return {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "activation_bytes": self.activation,
            "activation_source": "estimated: max_num_batched_tokens x (2 x MLP width / tp + 4 x hidden) x dtype bytes + max_num_seqs x vocab / tp x 4 B logits"
            if self.activation_estimated
            else "--activation-memory",
            "non_torch_bytes": self.non_torch,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_num_seqs": self.max_num_seqs,
            "scheduler_limits": self._limits_source(),
            "block_size": self.block_size,
            "bandwidth_efficiency": o.bandwidth_efficiency,
            "compute_efficiency": o.compute_efficiency,
            "weights": self._weights_assumption(),
            **comm,
            **ep,
        }


def _check_data_parallel(spec: ModelSpec, opts: PlanOptions) -> None:
    """What kvplan refuses under --data-parallel-size > 1 (vLLM 0.32 config/parallel.py, fused_moe/config.py)."""
    dp = opts.dp
    if not spec.num_routed_experts:
        raise InputError(  # ParallelConfig: "Offline data parallel mode is not supported/useful for dense models"
            f"--data-parallel-size {dp}: {spec.name} has no routed experts, so its data-parallel ranks share nothing "
            "(vLLM runs them as independent replicas); plan one replica without --data-parallel-size")
    if opts.pp > 1:
        raise InputError(f"--data-parallel-size {dp} with --pipeline-parallel-size {opts.pp}: kvplan sizes data "
                         "parallelism with one pipeline stage; give --pp 1")
    if opts.weights_bytes is not None:
        raise InputError(f"--data-parallel-size {dp} splits the routed experts over tp x dp GPUs and the rest over tp; "
                         "--weights-bytes does not say which bytes are experts: drop it (kvplan counts the weights)")
    width, ranks = spec.expert_intermediate_size, opts.tp * dp
    if not opts.expert_parallel and width and width % ranks:  # FusedMoE: intermediate_size % tp_size == 0
        raise InputError(f"--data-parallel-size {dp}: vLLM splits each expert's {width:,} intermediate columns over "
                         f"tp x dp = {ranks} GPUs, which does not divide them; add --expert-parallel or change --tp/--dp")


def per_instance(batch: int, dp: int) -> int:
    """Sequences one data-parallel instance runs when `batch` are spread over `dp` of them: ⌈batch / dp⌉ (vLLM's
    DP coordinator balances requests over the engines; the busiest holds the ceiling)."""
    return -(-batch // dp)


def fmt_seconds_short(s: float) -> str:
    return f"{s * 1e6:,.1f} µs" if s < 1e-3 else f"{s * 1e3:,.3f} ms"


# PlanOptions' fields but the point's own (context, batch): those `Planner.at` keeps
_POINT_FREE_OPTIONS = tuple(f for f in PlanOptions.__dataclass_fields__ if f not in ("context", "batch"))


def _replace(opts: PlanOptions, **changes) -> PlanOptions:
    fields = {k: getattr(opts, k) for k in opts.__dataclass_fields__}
    fields.update(changes)
    return PlanOptions(**fields)
