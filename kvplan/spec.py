"""Model architecture specs: frozen, strict pydantic models.

A spec holds what sizes a KV cache, with field names taken from Hugging Face
`config.json` so each number can be checked against the model card. Defaults
(KV heads = heads, head_dim = hidden / heads, the layer pattern) are resolved in
validators; a spec is never mutated after construction.

Pure: no I/O. `kvplan.catalog` reads YAML files into these models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kvplan.units import not_a_boolean
from kvplan.shape import DTYPE_ALIASES, LAYER_TYPE_ALIASES, LayerKind, ModelShape, SpecDerived  # noqa: F401

# Every number field refuses a boolean (kvplan.units.boolean_problem): pydantic's lax mode reads true as 1.
NotBoolean = BeforeValidator(not_a_boolean)
PositiveInt = Annotated[int, NotBoolean, Field(gt=0)]
NonNegativeInt = Annotated[int, NotBoolean, Field(ge=0)]
PositiveFloat = Annotated[float, NotBoolean, Field(gt=0)]
NonNegativeFloat = Annotated[float, NotBoolean, Field(ge=0)]

NAME_PATTERN = r"^[a-z0-9][a-z0-9.\-]*$"

# ----------------------------------------------------------------- size bounds
#
# Every size has an upper bound far above any real model, so that a typo or a unit
# slip (num_hidden_layers: 100000000000) is refused naming the field and the bound,
# instead of exhausting memory or hanging in a per-layer loop. Each reason names the
# largest real value we know of; the bounds are 10x to 1000x above it. The importers
# (kvplan.hf_config, kvplan.gguf) check the same bounds before their per-layer loops.
MAX_LAYERS = 10_000  # per-layer lists and loops stay in the milliseconds
MAX_HEADS = 65_536
MAX_HEAD_DIM = 2**20  # = MAX_HIDDEN, so head_dim's default (hidden / heads) is always within it
MAX_HIDDEN = 2**20
MAX_FFN = 2**24
MAX_VOCAB = 2**24
MAX_TOKENS = 2**30
MAX_EXPERTS = 65_536
MAX_PARAMETERS = 10**15
MAX_STATE_ELEMENTS = 2**32
MAX_MAMBA = 65_536

_LAYERS_WHY = "DeepNet, the deepest transformer trained, has 1,000 layers"
_DIM_WHY = "DeepSeek-V3's q_lora_rank, 1,536, is the largest head size or latent released"
_TOKENS_WHY = "Llama-4 Scout's 10,485,760 tokens is the longest context released"
_EXPERTS_WHY = "Qwen3-Next's 512 routed experts is the most released"
_MAMBA_WHY = "Mamba sizes are at most a few hundred, e.g. d_state 128"
_PARAMETERS_WHY = "Switch-C's 1.6 trillion parameters is about the most published"
_FFN_WHY = "PaLM-540B's 73,728 is the widest MLP published"

# field -> (largest value accepted, why that is far above any real model)
SIZE_LIMITS: dict[str, tuple[int, str]] = {
    "num_parameters": (MAX_PARAMETERS, _PARAMETERS_WHY),
    "num_active_parameters": (MAX_PARAMETERS, _PARAMETERS_WHY),
    "hidden_size": (MAX_HIDDEN, "PaLM-540B's 18,432 is the widest published"),
    "num_hidden_layers": (MAX_LAYERS, _LAYERS_WHY),
    "num_attention_heads": (MAX_HEADS, "Llama-3.1-405B's and DeepSeek-V3's 128 heads are the most released"),
    "num_key_value_heads": (MAX_HEADS, "DeepSeek-V3's 128 KV heads are the most released"),
    "head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "v_head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "kv_lora_rank": (MAX_HEAD_DIM, _DIM_WHY),
    "q_lora_rank": (MAX_HEAD_DIM, _DIM_WHY),
    "qk_rope_head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "qk_nope_head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "intermediate_size": (MAX_FFN, _FFN_WHY),
    "moe_intermediate_size": (MAX_FFN, _FFN_WHY),
    "vocab_size": (MAX_VOCAB, "Gemma-3's 262,208 tokens is the largest vocabulary released"),
    "max_position_embeddings": (MAX_TOKENS, _TOKENS_WHY),
    "sliding_window": (MAX_TOKENS, _TOKENS_WHY),
    "attention_chunk_size": (MAX_TOKENS, _TOKENS_WHY),
    "num_kv_shared_layers": (MAX_LAYERS, _LAYERS_WHY),
    "mamba_d_state": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_d_conv": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_expand": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_n_groups": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_n_heads": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_head_dim": (MAX_MAMBA, _MAMBA_WHY),
    "state_elements_per_layer": (MAX_STATE_ELEMENTS, "a large Mamba-2 layer keeps about 10 million state elements per sequence"),
    "num_local_experts": (MAX_EXPERTS, _EXPERTS_WHY),
    "n_routed_experts": (MAX_EXPERTS, _EXPERTS_WHY),
    "n_shared_experts": (MAX_EXPERTS, _EXPERTS_WHY),
    "num_experts_per_tok": (MAX_EXPERTS, _EXPERTS_WHY),
    "first_k_dense_replace": (MAX_LAYERS, _LAYERS_WHY),
    "expert_layer_period": (MAX_LAYERS, _LAYERS_WHY),
    "expert_layer_offset": (MAX_LAYERS, _LAYERS_WHY),
}


def size_limit_problem(field: str, value: Any) -> Optional[str]:
    """Why `value` is too large for `field` (its bound, and why), or None."""
    limit, why = SIZE_LIMITS[field]
    if isinstance(value, int) and value > limit:
        return f"{value:,} is more than {limit:,}, kvplan's limit, far above any real model ({why}); check the value"
    return None


def _layer_type_name(name: str) -> str:
    if name not in LAYER_TYPE_ALIASES:
        raise ValueError(f"unknown layer type {name!r}; use one of {sorted(LAYER_TYPE_ALIASES)}")
    return name


def _pattern_count(count: int) -> int:
    limit, why = MAX_LAYERS, _LAYERS_WHY
    if count > limit:
        raise ValueError(f"{count:,} layers is more than {limit:,}, kvplan's limit, far above any real model ({why}); check the value")
    return count


def _one_pattern_entry(entry: dict) -> dict:
    if len(entry) != 1:
        raise ValueError("each layer_pattern entry maps one layer type to a count, e.g. {sliding_attention: 5}")
    return entry


# Checked item by item, so an error names the entry and its line (layer_pattern.1: unknown layer type ...).
LayerTypeName = Annotated[str, AfterValidator(_layer_type_name)]
PatternEntry = Annotated[
    dict[LayerTypeName, Annotated[int, NotBoolean, Field(gt=0), AfterValidator(_pattern_count)]], AfterValidator(_one_pattern_entry)
]


# A file's weight bytes: at most 8 bytes per parameter (fp64) of the largest model allowed.
MAX_WEIGHT_BYTES = 8 * MAX_PARAMETERS
WeightBytes = Annotated[int, NotBoolean, Field(ge=0, le=MAX_WEIGHT_BYTES)]


class FileWeightBytes(BaseModel):
    """Weight bytes the model's own file headers declare (GGUF tensor types, safetensors dtypes),
    summed by where the planner places them (kvplan.file_weights). `kvplan import` writes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["gguf", "safetensors"]
    embedding: WeightBytes  # the input embedding table
    lm_head: WeightBytes = 0  # 0 when tied: the embedding serves as the lm_head
    body: WeightBytes  # every other tensor, routed experts excepted (norms, scales, shared experts, ...)
    routed_experts: WeightBytes = 0  # the routed experts' tensors (and their scales and biases)


class ModelSpec(BaseModel, SpecDerived):
    """One model's architecture, as far as the KV cache, weights and FLOPs need it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=80)]
    source: Annotated[str, Field(min_length=1)]
    notes: Optional[str] = None
    model_type: Optional[str] = None

    # Sizes (HF config.json names)
    num_parameters: PositiveInt  # total, every MoE expert counted
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
    weights_dtype: Optional[Literal["bf16", "fp16", "fp32", "fp8", "int8", "int4", "mxfp4"]] = None
    # Which body weights weights_dtype (or `--dtype`) covers. all_linear: every body
    # parameter (DeepSeek-V3's block-wise fp8, GPTQ/AWQ). experts: only the routed
    # experts' gate/up/down weights; attention, router, norms, shared experts and the
    # experts' biases stay torch_dtype (gpt-oss: vLLM's Mxfp4Config quantises only
    # FusedMoE layers, transformers' Mxfp4HfQuantizer only Mxfp4GptOssExperts' weights).
    weights_quantized: Literal["all_linear", "experts"] = "all_linear"
    tie_word_embeddings: bool = False
    # Weight bytes read from the checkpoint's headers; the planner uses them unless `--dtype` casts.
    file_weight_bytes: Optional[FileWeightBytes] = None

    # Layer pattern: explicit list, or a compact repeating pattern such as
    # [{sliding_attention: 5}, {full_attention: 1}] cycled to num_hidden_layers.
    layer_types: Optional[tuple[LayerTypeName, ...]] = None
    layer_pattern: Optional[tuple[PatternEntry, ...]] = None
    sliding_window: Optional[PositiveInt] = None
    attention_chunk_size: Optional[PositiveInt] = None
    num_kv_shared_layers: NonNegativeInt = 0  # Gemma-3n: the last N layers reuse earlier KV

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
        problem = size_limit_problem(info.field_name, value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("layer_pattern")
    @classmethod
    def _pattern_not_empty(cls, value: Optional[tuple]) -> Optional[tuple]:
        if value is not None and not value:
            raise ValueError(
                "is empty; give at least one {layer type: count} entry, e.g. [{full_attention: 1}], or leave it out"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        heads = data.get("num_attention_heads")
        # defaults only from values within bounds: a huge one gets its own error, not a second one here
        if data.get("num_key_value_heads") is None and isinstance(heads, int) and heads <= MAX_HEADS:
            data["num_key_value_heads"] = heads
        hidden = data.get("hidden_size")
        if (
            data.get("head_dim") is None
            and data.get("kv_lora_rank") is None
            and isinstance(hidden, int)
            and hidden <= MAX_HIDDEN
            and isinstance(heads, int)
            and heads > 0
            and hidden % heads == 0
        ):
            data["head_dim"] = hidden // heads
        return data

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.torch_dtype not in DTYPE_ALIASES:
            raise ValueError(
                f"torch_dtype {self.torch_dtype!r} is not one of {sorted(set(DTYPE_ALIASES))}"
            )
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        assert kv_heads is not None
        if heads % kv_heads:
            raise ValueError(
                f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )
        if self.is_mla:
            if self.kv_lora_rank is None or self.qk_rope_head_dim is None:
                raise ValueError("MLA needs both kv_lora_rank and qk_rope_head_dim")
        elif self.head_dim is None:
            raise ValueError(
                f"head_dim is missing and hidden_size ({self.hidden_size}) is not a multiple "
                f"of num_attention_heads ({heads})"
            )
        if self.layer_types is not None and self.layer_pattern is not None:
            raise ValueError("give layer_types or layer_pattern, not both")
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}"
            )
        kinds = self.layer_kinds
        where = "layer_types" if self.layer_types is not None else "layer_pattern"
        if LayerKind.SLIDING in kinds and self.sliding_window is None:
            raise ValueError(f"{where} has sliding_attention layers but sliding_window is not set")
        if LayerKind.CHUNKED in kinds and self.attention_chunk_size is None:
            raise ValueError(f"{where} has chunked_attention layers but attention_chunk_size is not set")
        if LayerKind.STATE in kinds and self.state_elements_per_layer_resolved is None:
            raise ValueError(
                f"{where} has state layers but mamba_d_state, mamba_d_conv and mamba_expand "
                "(or state_elements_per_layer) are not all set"
            )
        if self.num_kv_shared_layers >= self.num_hidden_layers:
            raise ValueError("num_kv_shared_layers must leave at least one layer that owns its KV")
        embedding = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        if self.num_parameters < embedding:
            raise ValueError(
                f"num_parameters ({self.num_parameters:,}) is smaller than the embedding and lm_head alone "
                f"(vocab_size x hidden_size{' x 2' if not self.tie_word_embeddings else ''} = {embedding:,})"
            )
        if self.num_active_parameters is not None and self.num_active_parameters > self.num_parameters:
            raise ValueError("num_active_parameters cannot exceed num_parameters")
        if self.expert_layer_period is not None or self.expert_layer_offset is not None:
            if not self.num_routed_experts:
                raise ValueError("expert_layer_period / expert_layer_offset need routed experts (num_local_experts or n_routed_experts)")
            period, offset = self.expert_layer_period or 1, self.expert_layer_offset or 0
            if offset >= period:
                raise ValueError(f"expert_layer_offset ({offset}) must be smaller than expert_layer_period ({period})")
        if self.weights_quantized == "experts":
            self._check_expert_quantization(embedding)
        if self.file_weight_bytes is not None:
            self._check_file_weight_bytes()
        return self

    def _check_file_weight_bytes(self) -> None:
        """A tied model has no lm_head bytes of its own; routed-expert bytes need routed experts to place them."""
        fw = self.file_weight_bytes
        assert fw is not None
        if self.tie_word_embeddings and fw.lm_head:
            raise ValueError(
                f"file_weight_bytes.lm_head is {fw.lm_head:,} but tie_word_embeddings is true (the embedding is the "
                "lm_head); set lm_head to 0 or tie_word_embeddings to false"
            )
        if fw.routed_experts and not self.num_routed_experts:
            raise ValueError(
                f"file_weight_bytes.routed_experts is {fw.routed_experts:,} but the spec has no routed experts; "
                "set num_local_experts (or n_routed_experts) and num_experts_per_tok, or count those bytes in body"
            )

    def _check_expert_quantization(self, embedding: int) -> None:
        """`weights_quantized: experts` needs a dtype, routed experts, and expert weights that fit the counts."""
        if self.weights_dtype is None:
            raise ValueError(
                "weights_quantized 'experts' says which weights weights_dtype covers, but weights_dtype is not set; "
                "set weights_dtype (e.g. mxfp4)"
            )
        if not self.num_routed_experts or self.num_experts_per_tok is None or self.expert_intermediate_size is None:
            raise ValueError(
                "weights_quantized 'experts' needs routed experts: set num_local_experts (or n_routed_experts), "
                "num_experts_per_tok and intermediate_size (or moe_intermediate_size)"
            )
        layers = self.moe_layers_between(0, self.num_hidden_layers)
        what = (
            f"{self.num_routed_experts} experts x {layers} MoE layers x 3 x hidden_size x "
            f"{self.expert_intermediate_size}"
        )
        body = self.num_parameters - embedding
        if self.routed_expert_weight_parameters > body:
            raise ValueError(
                f"weights_quantized 'experts': the routed experts' weights ({what} = "
                f"{self.routed_expert_weight_parameters:,}) exceed num_parameters less the embeddings ({body:,}); "
                "check the MoE layers (first_k_dense_replace, expert_layer_period, expert_layer_offset)"
            )
        if self.num_active_parameters is not None:
            active_body = self.num_active_parameters - embedding
            if self.active_routed_expert_weight_parameters > active_body:
                raise ValueError(
                    f"weights_quantized 'experts': the {self.active_routed_experts} active experts' weights "
                    f"({self.active_routed_expert_weight_parameters:,}) exceed num_active_parameters less the "
                    f"embeddings ({active_body:,}); check num_active_parameters"
                )
            unread = self.num_parameters - self.num_active_parameters
            skipped = self.routed_expert_weight_parameters - self.active_routed_expert_weight_parameters
            if skipped > unread:
                raise ValueError(
                    f"weights_quantized 'experts': the experts a token skips hold {skipped:,} weights, more than "
                    f"num_parameters - num_active_parameters ({unread:,}); check num_experts_per_tok and the expert width"
                )

_SLUG = re.compile(r"[^a-z0-9.\-]+")


def slugify(text: str) -> str:
    """A catalog-style name: lowercase, hyphens (e.g. 'Llama-3.1-8B' -> 'llama-3.1-8b')."""
    return _SLUG.sub("-", text.lower()).strip("-")
