"""Model architecture specs: frozen, strict pydantic models.

A spec holds what sizes a KV cache, with field names taken from Hugging Face
`config.json` so each number can be checked against the model card. Defaults
(KV heads = heads, head_dim = hidden / heads, the layer pattern) are resolved in
validators; a spec is never mutated after construction.

The rules themselves (size bounds, defaults, cross-field checks) are plain data
and functions in `kvplan.model.spec_rules`, which `kvplan estimate` applies without
pydantic first; the validators here call them, so both refuse the same specs.

Pure: no I/O. `kvplan.sources.catalog` reads YAML files into these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kvplan.units import not_a_boolean
from kvplan.model.shape import DTYPE_ALIASES, LAYER_TYPE_ALIASES, LayerKind, ModelShape, SpecDerived  # noqa: F401
from kvplan.model.spec_rules import (  # noqa: F401  (re-exported: kvplan.model.spec has always offered them)
    EMPTY_PATTERN_PROBLEM, FILE_WEIGHT_SOURCES, MAX_EXPERTS, MAX_FFN, MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN, MAX_LAYERS,
    MAX_MAMBA, MAX_PARAMETERS, MAX_STATE_ELEMENTS, MAX_TOKENS, MAX_VOCAB, MAX_WEIGHT_BYTES, NAME_MAX_LENGTH,
    NAME_PATTERN, PATTERN_ENTRY_PROBLEM, SIZE_LIMITS, WEIGHTS_DTYPES, WEIGHTS_QUANTIZED, layer_type_problem,
    pattern_count_problem, resolve_defaults, size_limit_problem, slugify, spec_problem,
)

# Every number field refuses a boolean (kvplan.units.boolean_problem): pydantic's lax mode reads true as 1.
NotBoolean = BeforeValidator(not_a_boolean)
PositiveInt = Annotated[int, NotBoolean, Field(gt=0)]
NonNegativeInt = Annotated[int, NotBoolean, Field(ge=0)]
PositiveFloat = Annotated[float, NotBoolean, Field(gt=0)]
NonNegativeFloat = Annotated[float, NotBoolean, Field(ge=0)]

# The rules (bounds, defaults, cross-field checks) live in kvplan.model.spec_rules, without pydantic, so that
# `kvplan estimate` can check a spec cheaply first (spec_rules.shape_if_valid); this model enforces the same
# rules and words an error per field.


def _within(problem: Optional[str], value: Any) -> Any:
    if problem:
        raise ValueError(problem)
    return value


def _layer_type_name(name: str) -> str:
    return _within(layer_type_problem(name), name)


def _pattern_count(count: int) -> int:
    return _within(pattern_count_problem(count), count)


def _one_pattern_entry(entry: dict) -> dict:
    return _within(PATTERN_ENTRY_PROBLEM if len(entry) != 1 else None, entry)


# Checked item by item, so an error names the entry and its line (layer_pattern.1: unknown layer type ...).
LayerTypeName = Annotated[str, AfterValidator(_layer_type_name)]
PatternEntry = Annotated[
    dict[LayerTypeName, Annotated[int, NotBoolean, Field(gt=0), AfterValidator(_pattern_count)]], AfterValidator(_one_pattern_entry)
]


WeightBytes = Annotated[int, NotBoolean, Field(ge=0, le=MAX_WEIGHT_BYTES)]


class FileWeightBytes(BaseModel):
    """Weight bytes the model's own file headers declare (GGUF tensor types, safetensors dtypes),
    summed by where the planner places them (kvplan.sources.file_weights). `kvplan import` writes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal[FILE_WEIGHT_SOURCES]
    embedding: WeightBytes  # the input embedding table
    lm_head: WeightBytes = 0  # 0 when tied: the embedding serves as the lm_head
    body: WeightBytes  # every other tensor, routed experts excepted (norms, scales, shared experts, ...)
    routed_experts: WeightBytes = 0  # the routed experts' tensors (and their scales and biases)


class ModelSpec(BaseModel, SpecDerived):
    """One model's architecture, as far as the KV cache, weights and FLOPs need it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]
    source: Annotated[str, Field(min_length=1)]
    notes: Optional[str] = None
    model_type: Optional[str] = None

    # Sizes (HF config.json names)
    # Total, every MoE expert counted. None: unknown (a config.json whose model_type has no parameter formula and
    # no weights beside it); the KV cache never needs it, capacity and latency on a GPU then refuse unless the
    # weights' bytes come from the files' headers or --weights-bytes.
    num_parameters: Optional[PositiveInt] = None
    num_active_parameters: Optional[PositiveInt] = None  # per token, MoE only
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: Optional[PositiveInt] = None
    head_dim: Optional[PositiveInt] = None
    v_head_dim: Optional[PositiveInt] = None
    intermediate_size: Optional[PositiveInt] = None
    vocab_size: PositiveInt
    max_position_embeddings: Optional[PositiveInt] = None
    torch_dtype: str = "bfloat16"
    # The stored dtype of the quantised weights when the checkpoint is quantised
    # (HF `quantization_config.quant_method`: DeepSeek-V3 fp8, gpt-oss mxfp4);
    # embeddings and lm_head stay in torch_dtype. None: every weight is torch_dtype.
    weights_dtype: Optional[Literal[WEIGHTS_DTYPES]] = None
    # Which body weights weights_dtype (or `--dtype`) covers. all_linear: every body
    # parameter (DeepSeek-V3's block-wise fp8, GPTQ/AWQ). experts: only the routed
    # experts' gate/up/down weights; attention, router, norms, shared experts and the
    # experts' biases stay torch_dtype (gpt-oss: vLLM's Mxfp4Config quantises only
    # FusedMoE layers, transformers' Mxfp4HfQuantizer only Mxfp4GptOssExperts' weights).
    weights_quantized: Literal[WEIGHTS_QUANTIZED] = "all_linear"
    tie_word_embeddings: bool = False
    # Weight bytes read from the checkpoint's headers; the planner uses them unless `--dtype` casts.
    file_weight_bytes: Optional[FileWeightBytes] = None

    # Layer pattern: explicit list, or a compact repeating pattern such as
    # [{sliding_attention: 5}, {full_attention: 1}] cycled to num_hidden_layers.
    layer_types: Optional[tuple[LayerTypeName, ...]] = None
    layer_pattern: Optional[tuple[PatternEntry, ...]] = None
    sliding_window: Optional[PositiveInt] = None
    attention_chunk_size: Optional[PositiveInt] = None
    num_kv_shared_layers: NonNegativeInt = 0  # Gemma-3n / Gemma 4: the last N layers reuse earlier KV
    # Per-layer geometry (Gemma 4): full_attention layers' own head size and KV heads; None = head_dim /
    # num_key_value_heads. Sliding layers keep the base ones (kvplan.model.kinds FullAttention.head_dims).
    global_head_dim: Optional[PositiveInt] = None
    num_global_key_value_heads: Optional[PositiveInt] = None

    # DeepSeek sparse attention (deepseek_v32): each MLA layer also caches one indexer key of
    # index_head_dim values per token (kinds.index_key_bytes); index_n_heads score it, and each query
    # attends to index_topk latents only.
    index_head_dim: Optional[PositiveInt] = None
    index_n_heads: Optional[PositiveInt] = None
    index_topk: Optional[PositiveInt] = None

    # MLA (DeepSeek-V2/V3)
    kv_lora_rank: Optional[PositiveInt] = None
    q_lora_rank: Optional[PositiveInt] = None
    qk_rope_head_dim: Optional[PositiveInt] = None
    qk_nope_head_dim: Optional[PositiveInt] = None

    # State layers (Mamba-1 as in Jamba; Mamba-2 when mamba_n_heads is set)
    mamba_d_state: Optional[PositiveInt] = None
    mamba_d_conv: Optional[PositiveInt] = None
    mamba_expand: Optional[PositiveInt] = None
    mamba_n_groups: PositiveInt = 1
    mamba_n_heads: Optional[PositiveInt] = None
    mamba_head_dim: Optional[PositiveInt] = None
    mamba_d_inner: Optional[PositiveInt] = None  # the Mamba width when it is not mamba_expand x hidden_size
    # The SSM / recurrent state's dtype the config asks for (Nemotron-H `mamba_ssm_cache_dtype`,
    # Qwen3.5 `mamba_ssm_dtype`); None: the model's dtype. Engines apply it by their own rules.
    mamba_ssm_cache_dtype: Optional[str] = None
    # Gated DeltaNet (linear attention: Qwen3-Next, Qwen3.5): conv over q, k, v + a recurrent state per value head
    linear_num_key_heads: Optional[PositiveInt] = None
    linear_num_value_heads: Optional[PositiveInt] = None
    linear_key_head_dim: Optional[PositiveInt] = None
    linear_value_head_dim: Optional[PositiveInt] = None
    linear_conv_kernel_dim: Optional[PositiveInt] = None  # also Kimi Delta Attention's short-conv kernel
    # Kimi Delta Attention (Kimi-Linear): H heads of d; short convs on q, k, v + a (H, d, d) recurrent state
    # (transformers 5.25 KimiLinearConfig linear_num_heads / linear_head_dim, from linear_attn_config)
    linear_num_heads: Optional[PositiveInt] = None
    linear_head_dim: Optional[PositiveInt] = None
    # LFM2 short convolution: each conv layer keeps the last conv_L_cache - 1 inputs, hidden_size wide
    conv_L_cache: Optional[PositiveInt] = None
    state_elements_per_layer: Optional[PositiveInt] = None  # any other fixed-size state

    # MoE: decode reads, the activation estimate, and with `weights_quantized: experts`
    # the routed experts' weights (experts x MoE layers x 3 x hidden x expert width)
    num_local_experts: Optional[PositiveInt] = None
    n_routed_experts: Optional[PositiveInt] = None
    n_shared_experts: Optional[NonNegativeInt] = None
    num_experts_per_tok: Optional[PositiveInt] = None
    moe_intermediate_size: Optional[PositiveInt] = None
    first_k_dense_replace: Optional[NonNegativeInt] = None
    # interleaved MoE: layer i (from first_k_dense_replace on) has experts when
    # i % expert_layer_period == expert_layer_offset (Jamba's names; Qwen-MoE's
    # decoder_sparse_step and Llama-4's interleave_moe_layer_step s are period s, offset s - 1)
    expert_layer_period: Optional[PositiveInt] = None
    expert_layer_offset: Optional[NonNegativeInt] = None

    @field_validator(*SIZE_LIMITS)
    @classmethod
    def _within_limits(cls, value: Any, info: ValidationInfo) -> Any:
        return _within(size_limit_problem(info.field_name, value), value)

    @field_validator("layer_pattern")
    @classmethod
    def _pattern_not_empty(cls, value: Optional[tuple]) -> Optional[tuple]:
        return _within(EMPTY_PATTERN_PROBLEM if value is not None and not value else None, value)

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        return resolve_defaults(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        return _within(spec_problem(self), self)
