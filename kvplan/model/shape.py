"""A model's shape without pydantic: layer kinds and the sizes derived from spec fields.

`SpecDerived` holds every derived property of a spec (layer kinds, head sizes,
state size); `ModelSpec` (pydantic, in `kvplan.model.spec`) validates a YAML file and
inherits them, and `ModelShape` rebuilds an already validated spec from plain
data so that `kvplan estimate` on a catalog model never has to import pydantic
(its cold start is part of the product). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Optional

from kvplan.model.kinds import LAYER_TYPE_ALIASES, LayerKind  # noqa: F401  (re-exported)


DTYPE_ALIASES = {
    "float32": "fp32",
    "fp32": "fp32",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "bf16": "bf16",
}



class SpecDerived:
    """Derived sizes, computed from the HF-named fields of a spec (see ModelSpec)."""

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
    def has_layer_geometry(self) -> bool:
        """Whether full-attention layers have their own head size or KV heads (Gemma 4)."""
        return self.global_head_dim is not None or self.num_global_key_value_heads is not None

    @property
    def active_parameters(self) -> int:
        """Parameters read per token (all of them for a dense model)."""
        return self.num_active_parameters or self.num_parameters

    # -- routed experts (what `weights_quantized: experts` stores in weights_dtype) --

    @property
    def num_routed_experts(self) -> int:
        """Routed experts per MoE layer (num_local_experts, DeepSeek's n_routed_experts); 0 when dense."""
        return self.num_local_experts or self.n_routed_experts or 0

    @property
    def expert_intermediate_size(self) -> Optional[int]:
        """One expert's FFN width: moe_intermediate_size where the config has both widths."""
        return self.moe_intermediate_size or self.intermediate_size

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` (0-based) has routed experts: from first_k_dense_replace on,
        every expert_layer_period-th layer at expert_layer_offset (every layer by default)."""
        if not self.num_routed_experts or layer < (self.first_k_dense_replace or 0):
            return False
        return layer % (self.expert_layer_period or 1) == (self.expert_layer_offset or 0)

    def moe_layers_between(self, start: int, stop: int) -> int:
        """MoE layers among layers [start, stop)."""
        return sum(1 for layer in range(start, stop) if self.is_moe_layer(layer))

    @property
    def expert_weight_parameters(self) -> int:
        """Weights of one routed expert: gate and up (hidden -> width each) and down (width -> hidden).

        Biases are not counted: gpt-oss keeps its expert biases in bf16 beside the MXFP4 blocks.
        """
        width = self.expert_intermediate_size
        return 3 * self.hidden_size * width if width else 0

    @property
    def routed_expert_weight_parameters(self) -> int:
        """Weights of every routed expert the model holds: experts x MoE layers x one expert."""
        layers = self.moe_layers_between(0, self.num_hidden_layers)
        return self.num_routed_experts * layers * self.expert_weight_parameters

    @property
    def active_routed_experts(self) -> int:
        """Routed experts a token reads per MoE layer: num_experts_per_tok when the spec counts
        active parameters (they then hold only those experts), else every expert."""
        if self.num_active_parameters is not None and self.num_experts_per_tok:
            return min(self.num_experts_per_tok, self.num_routed_experts)
        return self.num_routed_experts

    @property
    def active_routed_expert_weight_parameters(self) -> int:
        """Routed-expert weights within active_parameters: active experts x MoE layers x one expert."""
        layers = self.moe_layers_between(0, self.num_hidden_layers)
        return self.active_routed_experts * layers * self.expert_weight_parameters

    @property
    def mamba_d_inner_resolved(self) -> Optional[int]:
        """The Mamba width: mamba_d_inner where the config names it (Nemotron-H: heads x head_dim;
        Falcon-H1: mamba_d_ssm), else mamba_expand x hidden_size (Jamba, Mamba-2, Granite-4.0-H)."""
        if self.mamba_d_inner is not None:
            return self.mamba_d_inner
        return self.mamba_expand * self.hidden_size if self.mamba_expand is not None else None

    @property
    def state_elements_per_layer_resolved(self) -> Optional[int]:
        """Elements of one sequence's fixed-size state in one state layer, every tensor (conv with
        K - 1 columns + SSM / recurrent), as `kvplan.model.kinds.State.tensors` lists them."""
        if self.state_elements_per_layer is not None:
            return self.state_elements_per_layer
        if self.linear_num_value_heads is not None:
            gdn = (self.linear_num_key_heads, self.linear_key_head_dim, self.linear_value_head_dim,
                   self.linear_conv_kernel_dim)
            if any(v is None for v in gdn):
                return None
        elif getattr(self, "linear_num_heads", None) is not None:  # Kimi Delta Attention
            if self.linear_head_dim is None or self.linear_conv_kernel_dim is None:
                return None
        elif getattr(self, "conv_L_cache", None) is not None:  # LFM2 short convolution
            pass
        elif self.mamba_d_state is None or self.mamba_d_conv is None or self.mamba_d_inner_resolved is None:
            return None
        from kvplan.model.kinds import KINDS

        return sum(t.elements for t in KINDS[LayerKind.STATE].tensors(self))

    def fields_that_apply(self, fields: dict[str, Any]) -> dict[str, Any]:
        """`fields` (a model_dump) without defaults that describe something this model lacks:
        mamba_n_groups outside Mamba-2 (mamba_n_heads), num_kv_shared_layers 0."""
        out = dict(fields)
        if self.mamba_n_heads is None:
            out.pop("mamba_n_groups", None)
        if not self.num_kv_shared_layers:
            out.pop("num_kv_shared_layers", None)
        return out

    @cached_property
    def layer_kinds(self) -> tuple[LayerKind, ...]:
        """The kind of every layer, in order, after patterns, MLA and sharing are applied."""
        count = self.num_hidden_layers
        if self.layer_types is not None:
            kinds = [LAYER_TYPE_ALIASES[t] for t in self.layer_types]
        elif self.layer_pattern is not None:
            cycle: list[LayerKind] = []  # one period, cut at `count` layers: a longer pattern costs nothing
            for item in self.layer_pattern:
                for name, n in item.items():
                    cycle.extend([LAYER_TYPE_ALIASES[name]] * min(n, count - len(cycle)))
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




@dataclass(frozen=True)
class FileWeights:
    """`file_weight_bytes` of a validated spec (kvplan.model.spec.FileWeightBytes), rebuilt without pydantic."""

    source: str
    embedding: int
    lm_head: int
    body: int
    routed_experts: int


# The spec fields that hold a boolean; every other field is a number, a string or a list of them.
# (A test holds this equal to ModelSpec's bool fields.)
BOOLEAN_FIELDS = frozenset({"tie_word_embeddings"})


def holds_stray_boolean(fields: dict[str, Any]) -> bool:
    """Whether a boolean stands anywhere but in BOOLEAN_FIELDS (nested lists and mappings included):
    Python would count it as the number 1."""
    def stray(value: Any) -> bool:
        if isinstance(value, bool):
            return True
        if isinstance(value, dict):
            return any(stray(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(stray(v) for v in value)
        return False

    return any(stray(v) for k, v in fields.items() if k not in BOOLEAN_FIELDS)


class ModelShape(SpecDerived):
    """A spec that was validated earlier, rebuilt from its field values (frozen)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        values = dict(fields)
        for key in ("layer_types", "layer_pattern"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        values.setdefault("file_weight_bytes", None)
        if isinstance(values["file_weight_bytes"], dict):
            values["file_weight_bytes"] = FileWeights(**values["file_weight_bytes"])
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ModelShape is frozen: cannot set {name}")

    def model_dump(self, exclude_none: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "layer_kinds"}
        if out.get("file_weight_bytes") is not None:
            out["file_weight_bytes"] = asdict(out["file_weight_bytes"])
        return {k: v for k, v in out.items() if v is not None} if exclude_none else out
