"""Model architecture specs: frozen, strict pydantic models.

A spec holds what sizes a KV cache, with field names taken from Hugging Face
`config.json` so each number can be checked against the model card. Defaults
(KV heads = heads, head_dim = hidden / heads, the layer pattern) are resolved in
validators; a spec is never mutated after construction.

Pure: no I/O. `kvplan.catalog` reads YAML files into these models.
"""

from __future__ import annotations

import re
from enum import Enum
from functools import cached_property
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]

NAME_PATTERN = r"^[a-z0-9][a-z0-9.\-]*$"


class LayerKind(str, Enum):
    """How one layer keeps its past: each kind has its own tokens-held and bytes rule."""

    FULL = "full_attention"  # MHA / GQA / MQA: K and V of every token
    SLIDING = "sliding_attention"  # the last `sliding_window` tokens
    CHUNKED = "chunked_attention"  # tokens of the current `attention_chunk_size` chunk
    MLA = "mla"  # one compressed latent + decoupled RoPE key per token
    STATE = "state"  # Mamba / linear attention: fixed bytes per sequence
    SHARED = "kv_shared"  # reuses another layer's KV: holds nothing itself


# Names accepted in `layer_types` / `layer_pattern`, mapped to a kind. HF configs
# use the first three; Jamba writes "mamba", Qwen3-Next "linear_attention".
LAYER_TYPE_ALIASES: dict[str, LayerKind] = {
    "full_attention": LayerKind.FULL,
    "attention": LayerKind.FULL,
    "sliding_attention": LayerKind.SLIDING,
    "chunked_attention": LayerKind.CHUNKED,
    "mamba": LayerKind.STATE,
    "linear_attention": LayerKind.STATE,
    "state": LayerKind.STATE,
    "kv_shared": LayerKind.SHARED,
}

DTYPE_ALIASES = {
    "float32": "fp32",
    "fp32": "fp32",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "bf16": "bf16",
}


class ModelSpec(BaseModel):
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
    # The stored dtype of the linear weights when the checkpoint is quantised
    # (HF `quantization_config.quant_method`: DeepSeek-V3 fp8, gpt-oss mxfp4);
    # embeddings stay in torch_dtype. None: every weight is torch_dtype.
    weights_dtype: Optional[Literal["bf16", "fp16", "fp32", "fp8", "int8", "int4", "mxfp4"]] = None
    tie_word_embeddings: bool = False

    # Layer pattern: explicit list, or a compact repeating pattern such as
    # [{sliding_attention: 5}, {full_attention: 1}] cycled to num_hidden_layers.
    layer_types: Optional[tuple[str, ...]] = None
    layer_pattern: Optional[tuple[dict[str, PositiveInt], ...]] = None
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

    # MoE (informational; weights use num_parameters / num_active_parameters)
    num_local_experts: Optional[PositiveInt] = None
    n_routed_experts: Optional[PositiveInt] = None
    n_shared_experts: Optional[NonNegativeInt] = None
    num_experts_per_tok: Optional[PositiveInt] = None
    moe_intermediate_size: Optional[PositiveInt] = None
    first_k_dense_replace: Optional[NonNegativeInt] = None

    @model_validator(mode="before")
    @classmethod
    def _resolve_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        heads = data.get("num_attention_heads")
        if data.get("num_key_value_heads") is None and isinstance(heads, int):
            data["num_key_value_heads"] = heads
        hidden = data.get("hidden_size")
        if (
            data.get("head_dim") is None
            and data.get("kv_lora_rank") is None
            and isinstance(hidden, int)
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
        for entry in self._raw_layer_names():
            if entry not in LAYER_TYPE_ALIASES:
                raise ValueError(
                    f"unknown layer type {entry!r}; use one of {sorted(LAYER_TYPE_ALIASES)}"
                )
        if self.layer_pattern is not None:
            for item in self.layer_pattern:
                if len(item) != 1:
                    raise ValueError(
                        "each layer_pattern entry maps one layer type to a count, "
                        "e.g. {sliding_attention: 5}"
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
        return self

    # ----------------------------------------------------------------- derived

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def dtype(self) -> str:
        """The weights' dtype in kvplan's short form (bf16, fp16, fp32)."""
        return DTYPE_ALIASES[self.torch_dtype]

    @property
    def k_head_dim(self) -> int:
        """Elements of one cached K vector per KV head (MLA: the latent + RoPE key)."""
        if self.is_mla:
            return self.mla_latent_dim
        assert self.head_dim is not None
        return self.head_dim

    @property
    def v_head_dim_resolved(self) -> int:
        """Elements of one cached V vector per KV head (MLA caches no separate V)."""
        if self.is_mla:
            return 0
        assert self.head_dim is not None
        return self.v_head_dim or self.head_dim

    @property
    def mla_latent_dim(self) -> int:
        """kv_lora_rank + qk_rope_head_dim: the one vector MLA caches per token and layer."""
        assert self.kv_lora_rank is not None and self.qk_rope_head_dim is not None
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def active_parameters(self) -> int:
        """Parameters read per token (all of them for a dense model)."""
        return self.num_active_parameters or self.num_parameters

    @property
    def state_elements_per_layer_resolved(self) -> Optional[int]:
        """Elements of one sequence's fixed-size state in one state layer (conv + SSM)."""
        if self.state_elements_per_layer is not None:
            return self.state_elements_per_layer
        if self.mamba_d_state is None or self.mamba_d_conv is None or self.mamba_expand is None:
            return None
        d_inner = self.mamba_expand * self.hidden_size
        if self.mamba_n_heads is not None:
            # Mamba-2: conv over x, B and C; SSM state per head is head_dim x d_state.
            head_dim = self.mamba_head_dim or d_inner // self.mamba_n_heads
            conv_dim = d_inner + 2 * self.mamba_n_groups * self.mamba_d_state
            return conv_dim * (self.mamba_d_conv - 1) + self.mamba_n_heads * head_dim * self.mamba_d_state
        # Mamba-1: conv state d_inner x (d_conv - 1), SSM state d_inner x d_state.
        return d_inner * (self.mamba_d_conv - 1) + d_inner * self.mamba_d_state

    def _raw_layer_names(self) -> list[str]:
        if self.layer_types is not None:
            return list(self.layer_types)
        if self.layer_pattern is not None:
            return [name for item in self.layer_pattern for name in item]
        return []

    @cached_property
    def layer_kinds(self) -> tuple[LayerKind, ...]:
        """The kind of every layer, in order, after patterns, MLA and sharing are applied."""
        count = self.num_hidden_layers
        if self.layer_types is not None:
            kinds = [LAYER_TYPE_ALIASES[t] for t in self.layer_types]
        elif self.layer_pattern is not None:
            cycle = [LAYER_TYPE_ALIASES[n] for item in self.layer_pattern for n, c in item.items() for _ in range(c)]
            kinds = [cycle[i % len(cycle)] for i in range(count)]
        elif self.sliding_window is not None:
            kinds = [LayerKind.SLIDING] * count  # e.g. Mistral-7B-v0.1: every layer slides
        else:
            kinds = [LayerKind.FULL] * count
        if self.is_mla:
            kinds = [LayerKind.MLA if k is LayerKind.FULL else k for k in kinds]
        if self.num_kv_shared_layers:
            first_shared = count - self.num_kv_shared_layers
            kinds = kinds[:first_shared] + [LayerKind.SHARED] * self.num_kv_shared_layers
        return tuple(kinds)


def parse_layer_kind(text: str) -> LayerKind:
    return LAYER_TYPE_ALIASES[text]


_SLUG = re.compile(r"[^a-z0-9.\-]+")


def slugify(text: str) -> str:
    """A catalog-style name: lowercase, hyphens (e.g. 'Llama-3.1-8B' -> 'llama-3.1-8b')."""
    return _SLUG.sub("-", text.lower()).strip("-")
