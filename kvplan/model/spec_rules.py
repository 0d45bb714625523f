"""The rules a model spec obeys, without pydantic: fields, bounds, defaults, cross-field checks.

`kvplan.model.spec.ModelSpec` (pydantic) enforces these rules and words an error per
field; `shape_if_valid` applies the same rules to a plain field dict with no
pydantic import, so that `kvplan estimate` on a spec YAML, a config.json or a GGUF
starts as fast as on a catalog name. It accepts only what ModelSpec accepts, with
the same values: anything it does not fully accept (a float where an int goes, a
string that pydantic might coerce, any rule broken) returns None, and the caller
validates with ModelSpec instead, so every error message is ModelSpec's own.
(tests/test_spec_rules.py holds the field table equal to ModelSpec's fields and
checks both ways over the catalog, the config fixtures and generated inputs.)

Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from kvplan.model.kinds import first_problem
from kvplan.model.shape import DTYPE_ALIASES, LAYER_TYPE_ALIASES, ModelShape, SpecDerived

NAME_PATTERN = r"^[a-z0-9][a-z0-9.\-]*$"
NAME_MAX_LENGTH = 80
# pydantic checks `pattern` with Rust's regex, where `$` matches only at the very end
# (Python's `$` also matches before a final newline): fullmatch is the Rust reading.
_NAME = re.compile(NAME_PATTERN.removeprefix("^").removesuffix("$"))
_SLUG = re.compile(r"[^a-z0-9.\-]+")


def slugify(text: str) -> str:
    """A catalog-style name: lowercase, hyphens (e.g. 'Llama-3.1-8B' -> 'llama-3.1-8b')."""
    return _SLUG.sub("-", text.lower()).strip("-")

# ----------------------------------------------------------------- size bounds
#
# Every size has an upper bound far above any real model, so that a typo or a unit
# slip (num_hidden_layers: 100000000000) is refused naming the field and the bound,
# instead of exhausting memory or hanging in a per-layer loop. Each reason names the
# largest real value we know of; the bounds are 10x to 1000x above it. The importers
# (kvplan.sources.hf_config, kvplan.sources.gguf) check the same bounds before their per-layer loops.
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
# A file's weight bytes: at most 8 bytes per parameter (fp64) of the largest model allowed.
MAX_WEIGHT_BYTES = 8 * MAX_PARAMETERS

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
    "global_head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "num_global_key_value_heads": (MAX_HEADS, "DeepSeek-V3's 128 KV heads are the most released"),
    "index_head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "index_n_heads": (MAX_HEADS, "Llama-3.1-405B's and DeepSeek-V3's 128 heads are the most released"),
    "index_topk": (MAX_TOKENS, _TOKENS_WHY),
    "mamba_d_state": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_d_conv": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_expand": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_n_groups": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_n_heads": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_head_dim": (MAX_MAMBA, _MAMBA_WHY),
    "mamba_d_inner": (MAX_FFN, _FFN_WHY),
    "linear_num_key_heads": (MAX_HEADS, "Qwen3.5-397B's 64 linear-attention value heads are the most released"),
    "linear_num_value_heads": (MAX_HEADS, "Qwen3.5-397B's 64 linear-attention value heads are the most released"),
    "linear_key_head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "linear_value_head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "linear_conv_kernel_dim": (MAX_MAMBA, _MAMBA_WHY),
    "linear_num_heads": (MAX_HEADS, "Qwen3.5-397B's 64 linear-attention value heads are the most released"),
    "linear_head_dim": (MAX_HEAD_DIM, _DIM_WHY),
    "conv_L_cache": (MAX_MAMBA, _MAMBA_WHY),
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
        return _over_limit(f"{value:,}", limit, why)
    return None


def _over_limit(shown: str, limit: int, why: str) -> str:
    """The one wording of a size above kvplan's sanity limit: the value, the limit, the largest real model."""
    return f"{shown} is more than {limit:,}, kvplan's limit, far above any real model ({why}); check the value"


def layer_type_problem(name: str) -> Optional[str]:
    """Why `name` is not a layer type (layer_types, layer_pattern), or None."""
    if name not in LAYER_TYPE_ALIASES:
        return f"unknown layer type {name!r}; use one of {sorted(LAYER_TYPE_ALIASES)}"
    return None


def pattern_count_problem(count: int) -> Optional[str]:
    """Why a layer_pattern count is too large, or None."""
    if count > MAX_LAYERS:
        return _over_limit(f"{count:,} layers", MAX_LAYERS, _LAYERS_WHY)
    return None


PATTERN_ENTRY_PROBLEM = "each layer_pattern entry maps one layer type to a count, e.g. {sliding_attention: 5}"
EMPTY_PATTERN_PROBLEM = "is empty; give at least one {layer type: count} entry, e.g. [{full_attention: 1}], or leave it out"

# ----------------------------------------------------------------- the fields
#
# ModelSpec's fields in its order: name -> (kind, default). REQUIRED has no default;
# a default of None makes the field optional (None allowed). The kinds:
#   str: a string; name: NAME_PATTERN, at most 80 characters; source: a non-empty string;
#   positive / non_negative: an int (never a bool) > 0 / >= 0, within SIZE_LIMITS;
#   bool; one of a literal tuple below; file_weight_bytes; layer_types; layer_pattern.
REQUIRED = object()
WEIGHTS_DTYPES = ("bf16", "fp16", "fp32", "fp8", "int8", "int4", "mxfp4")
WEIGHTS_QUANTIZED = ("all_linear", "experts")
FILE_WEIGHT_SOURCES = ("gguf", "safetensors")

SPEC_FIELDS: dict[str, tuple[Any, Any]] = {
    "name": ("name", REQUIRED),
    "source": ("source", REQUIRED),
    "notes": ("str", None),
    "model_type": ("str", None),
    "num_parameters": ("positive", None),
    "num_active_parameters": ("positive", None),
    "hidden_size": ("positive", REQUIRED),
    "num_hidden_layers": ("positive", REQUIRED),
    "num_attention_heads": ("positive", REQUIRED),
    "num_key_value_heads": ("positive", None),
    "head_dim": ("positive", None),
    "v_head_dim": ("positive", None),
    "intermediate_size": ("positive", None),
    "vocab_size": ("positive", REQUIRED),
    "max_position_embeddings": ("positive", None),
    "torch_dtype": ("str", "bfloat16"),
    "weights_dtype": (WEIGHTS_DTYPES, None),
    "weights_quantized": (WEIGHTS_QUANTIZED, "all_linear"),
    "tie_word_embeddings": ("bool", False),
    "file_weight_bytes": ("file_weight_bytes", None),
    "layer_types": ("layer_types", None),
    "layer_pattern": ("layer_pattern", None),
    "sliding_window": ("positive", None),
    "attention_chunk_size": ("positive", None),
    "num_kv_shared_layers": ("non_negative", 0),
    "global_head_dim": ("positive", None),
    "num_global_key_value_heads": ("positive", None),
    "index_head_dim": ("positive", None),
    "index_n_heads": ("positive", None),
    "index_topk": ("positive", None),
    "kv_lora_rank": ("positive", None),
    "q_lora_rank": ("positive", None),
    "qk_rope_head_dim": ("positive", None),
    "qk_nope_head_dim": ("positive", None),
    "mamba_d_state": ("positive", None),
    "mamba_d_conv": ("positive", None),
    "mamba_expand": ("positive", None),
    "mamba_n_groups": ("positive", 1),
    "mamba_n_heads": ("positive", None),
    "mamba_head_dim": ("positive", None),
    "mamba_d_inner": ("positive", None),
    "mamba_ssm_cache_dtype": ("str", None),
    "linear_num_key_heads": ("positive", None),
    "linear_num_value_heads": ("positive", None),
    "linear_key_head_dim": ("positive", None),
    "linear_value_head_dim": ("positive", None),
    "linear_conv_kernel_dim": ("positive", None),
    "linear_num_heads": ("positive", None),
    "linear_head_dim": ("positive", None),
    "conv_L_cache": ("positive", None),
    "state_elements_per_layer": ("positive", None),
    "num_local_experts": ("positive", None),
    "n_routed_experts": ("positive", None),
    "n_shared_experts": ("non_negative", None),
    "num_experts_per_tok": ("positive", None),
    "moe_intermediate_size": ("positive", None),
    "first_k_dense_replace": ("non_negative", None),
    "expert_layer_period": ("positive", None),
    "expert_layer_offset": ("non_negative", None),
}

# FileWeightBytes' fields in its order: name -> default (REQUIRED or 0).
FILE_WEIGHT_FIELDS: dict[str, Any] = {"source": REQUIRED, "embedding": REQUIRED, "lm_head": 0, "body": REQUIRED, "routed_experts": 0}


def resolve_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with num_key_value_heads (= heads) and head_dim (= hidden / heads) filled in when absent.

    Defaults come only from values within bounds: a huge one gets its own error, not a second one here.
    """
    data = dict(data)
    heads = data.get("num_attention_heads")
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


def spec_problem(spec: SpecDerived) -> Optional[str]:
    """The first cross-field rule a spec with valid fields breaks (ModelSpec's message), or None."""
    if spec.torch_dtype not in DTYPE_ALIASES:
        return f"torch_dtype {spec.torch_dtype!r} is not one of {sorted(set(DTYPE_ALIASES))}"
    ssm_dtype = spec.mamba_ssm_cache_dtype
    if ssm_dtype is not None and ssm_dtype not in DTYPE_ALIASES:
        return f"mamba_ssm_cache_dtype {ssm_dtype!r} is not one of {sorted(set(DTYPE_ALIASES))}"
    heads, kv_heads = spec.num_attention_heads, spec.num_key_value_heads
    assert kv_heads is not None
    if heads % kv_heads:
        return f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
    if spec.is_mla:
        if spec.kv_lora_rank is None or spec.qk_rope_head_dim is None:
            return "MLA needs both kv_lora_rank and qk_rope_head_dim"
    elif spec.head_dim is None:
        return (
            f"head_dim is missing and hidden_size ({spec.hidden_size}) is not a multiple "
            f"of num_attention_heads ({heads})"
        )
    problem = _geometry_problem(spec)
    if problem:
        return problem
    if spec.layer_types is not None and spec.layer_pattern is not None:
        return "give layer_types or layer_pattern, not both"
    if spec.layer_types is not None and len(spec.layer_types) != spec.num_hidden_layers:
        return f"layer_types has {len(spec.layer_types)} entries but num_hidden_layers is {spec.num_hidden_layers}"
    kinds = spec.layer_kinds
    where = "layer_types" if spec.layer_types is not None else "layer_pattern"
    problem = first_problem(kinds, lambda rule: rule.spec_problem(spec, where))  # a window, the state sizes
    if problem:
        return problem
    if spec.num_kv_shared_layers >= spec.num_hidden_layers:
        return "num_kv_shared_layers must leave at least one layer that owns its KV"
    embedding = spec.vocab_size * spec.hidden_size * (1 if spec.tie_word_embeddings else 2)
    if spec.num_parameters is None:
        if spec.num_active_parameters is not None:
            return "num_active_parameters needs num_parameters (the total, every expert counted)"
        if spec.weights_quantized == "experts":
            return "weights_quantized 'experts' needs num_parameters (the total, every expert counted)"
    elif spec.num_parameters < embedding:
        return (
            f"num_parameters ({spec.num_parameters:,}) is smaller than the embedding and lm_head alone "
            f"(vocab_size x hidden_size{' x 2' if not spec.tie_word_embeddings else ''} = {embedding:,})"
        )
    if spec.num_parameters is not None and spec.num_active_parameters is not None and spec.num_active_parameters > spec.num_parameters:
        return "num_active_parameters cannot exceed num_parameters"
    if spec.expert_layer_period is not None or spec.expert_layer_offset is not None:
        if not spec.num_routed_experts:
            return "expert_layer_period / expert_layer_offset need routed experts (num_local_experts or n_routed_experts)"
        period, offset = spec.expert_layer_period or 1, spec.expert_layer_offset or 0
        if offset >= period:
            return f"expert_layer_offset ({offset}) must be smaller than expert_layer_period ({period})"
    if spec.weights_quantized == "experts":
        problem = _expert_quantization_problem(spec, embedding)
        if problem:
            return problem
    if spec.file_weight_bytes is not None:
        return _file_weight_bytes_problem(spec)
    return None


def _geometry_problem(spec: SpecDerived) -> Optional[str]:
    """Per-layer geometry belongs to full-attention heads, the indexer to MLA layers."""
    if spec.has_layer_geometry:
        if spec.is_mla:
            return "global_head_dim / num_global_key_value_heads size attention heads; an MLA model (kv_lora_rank) has none"
        if spec.v_head_dim is not None and spec.global_head_dim is not None:
            return "give v_head_dim or global_head_dim, not both (no model kvplan knows has both)"
        global_kv = spec.num_global_key_value_heads
        if global_kv is not None and spec.num_attention_heads % global_kv:
            return (
                f"num_attention_heads ({spec.num_attention_heads}) must be a multiple of "
                f"num_global_key_value_heads ({global_kv})"
            )
    if spec.index_head_dim is not None:
        if not spec.is_mla:
            return "index_head_dim is the DeepSeek sparse-attention indexer of MLA layers; set kv_lora_rank too"
        if spec.index_head_dim % 128:
            return (
                f"index_head_dim ({spec.index_head_dim}) must be a multiple of 128: the indexer's fp8 key cache "
                "keeps one fp32 scale per 128 values (vLLM Indexer.quant_block_size)"
            )
    elif spec.index_n_heads is not None or spec.index_topk is not None:
        return "index_n_heads / index_topk describe the sparse-attention indexer; set index_head_dim too"
    return None


def _file_weight_bytes_problem(spec: SpecDerived) -> Optional[str]:
    """A tied model has no lm_head bytes of its own; routed-expert bytes need routed experts to place them."""
    fw = spec.file_weight_bytes
    if spec.tie_word_embeddings and fw.lm_head:
        return (
            f"file_weight_bytes.lm_head is {fw.lm_head:,} but tie_word_embeddings is true (the embedding is the "
            "lm_head); set lm_head to 0 or tie_word_embeddings to false"
        )
    if fw.routed_experts and not spec.num_routed_experts:
        return (
            f"file_weight_bytes.routed_experts is {fw.routed_experts:,} but the spec has no routed experts; "
            "set num_local_experts (or n_routed_experts) and num_experts_per_tok, or count those bytes in body"
        )
    return None


def _expert_quantization_problem(spec: SpecDerived, embedding: int) -> Optional[str]:
    """`weights_quantized: experts` needs a dtype, routed experts, and expert weights that fit the counts."""
    if spec.weights_dtype is None:
        return (
            "weights_quantized 'experts' says which weights weights_dtype covers, but weights_dtype is not set; "
            "set weights_dtype (e.g. mxfp4)"
        )
    if not spec.num_routed_experts or spec.num_experts_per_tok is None or spec.expert_intermediate_size is None:
        return (
            "weights_quantized 'experts' needs routed experts: set num_local_experts (or n_routed_experts), "
            "num_experts_per_tok and intermediate_size (or moe_intermediate_size)"
        )
    layers = spec.moe_layers_between(0, spec.num_hidden_layers)
    what = f"{spec.num_routed_experts} experts x {layers} MoE layers x 3 x hidden_size x {spec.expert_intermediate_size}"
    body = spec.num_parameters - embedding
    if spec.routed_expert_weight_parameters > body:
        return (
            f"weights_quantized 'experts': the routed experts' weights ({what} = "
            f"{spec.routed_expert_weight_parameters:,}) exceed num_parameters less the embeddings ({body:,}); "
            "check the MoE layers (first_k_dense_replace, expert_layer_period, expert_layer_offset)"
        )
    if spec.num_active_parameters is not None:
        active_body = spec.num_active_parameters - embedding
        if spec.active_routed_expert_weight_parameters > active_body:
            return (
                f"weights_quantized 'experts': the {spec.active_routed_experts} active experts' weights "
                f"({spec.active_routed_expert_weight_parameters:,}) exceed num_active_parameters less the "
                f"embeddings ({active_body:,}); check num_active_parameters"
            )
        unread = spec.num_parameters - spec.num_active_parameters
        skipped = spec.routed_expert_weight_parameters - spec.active_routed_expert_weight_parameters
        if skipped > unread:
            return (
                f"weights_quantized 'experts': the experts a token skips hold {skipped:,} weights, more than "
                f"num_parameters - num_active_parameters ({unread:,}); check num_experts_per_tok and the expert width"
            )
    return None


# ----------------------------------------------------------------- layer kinds as fields
# (here, not in kvplan.sources.hf_config: the GGUF importer writes them too and need not load the config rules)


def layer_fields(kinds: list[str]) -> dict[str, Any]:
    """`layer_types` / `layer_pattern` fields for a list of per-layer kind names, compactly.

    All full -> nothing (the default); all sliding -> nothing but the window (a spec
    with `sliding_window` and no pattern slides every layer); a repeating cycle ->
    `layer_pattern` (e.g. Gemma-3: [{sliding_attention: 5}, {full_attention: 1}]);
    otherwise the explicit list.
    """
    if not kinds or all(k == "full_attention" for k in kinds) or all(k == "sliding_attention" for k in kinds):
        return {}
    n = len(kinds)
    # The shortest period is n minus the longest proper border (a prefix that is also a
    # suffix): Knuth-Morris-Pratt's prefix function, linear in the layers where trying
    # each period in turn was quadratic (seconds for 10,000 layers).
    border = [0] * n
    for i in range(1, n):
        b = border[i - 1]
        while b and kinds[i] != kinds[b]:
            b = border[b - 1]
        border[i] = b + (kinds[i] == kinds[b])
    period = n - border[-1]
    if period < n:
        runs: list[dict[str, int]] = []
        for k in kinds[:period]:
            if runs and k in runs[-1]:
                runs[-1][k] += 1
            else:
                runs.append({k: 1})
        return {"layer_pattern": tuple(runs)}
    return {"layer_types": tuple(kinds)}


# ----------------------------------------------------------------- the fast check


def _int_ok(value: Any, minimum: int, field: str) -> bool:
    return type(value) is int and value >= minimum and (field not in SIZE_LIMITS or value <= SIZE_LIMITS[field][0])


def _file_weights(value: Any) -> Optional[dict[str, Any]]:
    """The file_weight_bytes mapping with defaults, in FileWeightBytes' order, when ModelSpec takes it as is."""
    if type(value) is not dict or not set(value) <= set(FILE_WEIGHT_FIELDS):
        return None
    out = {}
    for key, default in FILE_WEIGHT_FIELDS.items():
        item = value.get(key, default)
        if key == "source":
            ok = type(item) is str and item in FILE_WEIGHT_SOURCES
        else:
            ok = type(item) is int and 0 <= item <= MAX_WEIGHT_BYTES
        if item is REQUIRED or not ok:
            return None
        out[key] = item
    return out


def _layer_types(value: Any) -> Optional[tuple]:
    if type(value) not in (list, tuple):
        return None
    if not all(type(t) is str and layer_type_problem(t) is None for t in value):
        return None
    return tuple(value)


def _layer_pattern(value: Any) -> Optional[tuple]:
    if type(value) not in (list, tuple) or not value:
        return None
    entries = []
    for entry in value:
        if type(entry) is not dict or len(entry) != 1:
            return None
        ((name, count),) = entry.items()
        if type(name) is not str or layer_type_problem(name) or type(count) is not int or count < 1 or pattern_count_problem(count):
            return None
        entries.append({name: count})
    return tuple(entries)


def _field_value(kind: Any, field: str, value: Any) -> tuple[bool, Any]:
    """(whether ModelSpec takes `value` for `field` unchanged, the value it would hold)."""
    if kind == "positive":
        return _int_ok(value, 1, field), value
    if kind == "non_negative":
        return _int_ok(value, 0, field), value
    if kind == "str":
        return type(value) is str, value
    if kind == "name":
        return type(value) is str and len(value) <= NAME_MAX_LENGTH and _NAME.fullmatch(value) is not None, value
    if kind == "source":
        return type(value) is str and len(value) >= 1, value
    if kind == "bool":
        return type(value) is bool, value
    if isinstance(kind, tuple):
        return type(value) is str and value in kind, value
    converted = {"file_weight_bytes": _file_weights, "layer_types": _layer_types, "layer_pattern": _layer_pattern}[kind](value)
    return converted is not None, converted


def shape_if_valid(data: Any) -> Optional[ModelShape]:
    """The spec `data` describes, as a ModelShape, when ModelSpec would accept it as it stands; else None.

    None does not mean invalid: it means "validate with ModelSpec", which then accepts
    (e.g. after coercing a float) or refuses with its own message.
    """
    if type(data) is not dict or not set(data) <= set(SPEC_FIELDS):
        return None
    data = resolve_defaults(data)
    fields: dict[str, Any] = {}
    for field, (kind, default) in SPEC_FIELDS.items():
        if field not in data:
            if default is REQUIRED:
                return None
            fields[field] = default
            continue
        value = data[field]
        if value is None and default is None:  # Optional: None is the default
            fields[field] = None
            continue
        ok, fields[field] = _field_value(kind, field, value)
        if not ok:
            return None
    shape = ModelShape(fields)
    return None if spec_problem(shape) else shape
