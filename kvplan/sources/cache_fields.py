"""The config.json fields that can change a KV cache: the one list, and the fail-closed check.

A config.json may carry a field that changes what the cache holds (a layer pattern, a
second head size, linear-attention or Mamba state, a sparse indexer, KV shared across
layers) under a name kvplan's converter for that `model_type` does not read. Sizing
without it is silently wrong (Qwen3-Next read as 48 attention layers: +234% at 8k), so
`kvplan.sources.hf_config.convert_config` refuses any field on this list that the
handler did not read, naming it, for known and unknown model types alike.

A handler declares what it reads by reading it: `_Cfg` records every key a handler
looks up (`c.get`, `c.int`, `c.flag`, `c.raw[...]`, `c.raw.get`, `in c.raw`), and
`c.declare(...)` names a key it has weighed without looking it up (a field that
means nothing under another field's setting). A new handler needs no edit here.

A field is on the list by exact name or by a shell-style pattern (fnmatch), each with
the reason it can change the cache. A value of null, false, 0 or an empty list / object
sets nothing and is not refused.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Iterable, Optional

# (name or pattern, what it changes in the cache)
CACHE_FIELDS: tuple[tuple[str, str], ...] = (
    ("layer_types", "which layers cache what"),
    ("hybrid_override_pattern", "a per-layer pattern of attention, Mamba and MLP blocks"),
    ("layers_block_type", "which layers are attention and which state layers"),
    ("layer_block_types", "which layers are attention and which state layers"),
    ("block_types", "which layers are attention and which state layers"),
    ("full_attention_interval", "which layers are full attention among linear-attention layers"),
    ("attn_type_list", "each layer's attention type"),
    ("*attn_layer*", "which layers are attention layers"),
    ("*attention_layer*", "which layers are attention layers"),
    ("*window*", "sliding-window layers and their window"),
    ("attention_chunk_size", "chunked local attention"),
    ("no_rope_layers", "which layers are chunked or global attention (Llama-4)"),
    ("no_rope_layer_interval", "which layers are chunked or global attention (Llama-4)"),
    ("*key_value_heads*", "the KV heads cached per layer"),
    ("*kv_heads*", "the KV heads cached per layer"),
    ("n_head_kv", "the KV heads cached per layer"),
    ("multi_query*", "one KV head (multi-query attention)"),
    ("num_query_groups", "the KV heads cached per layer"),
    ("kv_channels", "the cached head size"),
    ("*head_dim*", "a cached head size"),
    ("*head_size*", "a cached head size"),
    ("kv_lora_rank", "the MLA latent cached per token"),
    ("attention_k_eq_v", "whether V is cached apart from K"),
    ("*kv_shared*", "layers that read another layer's KV instead of caching their own"),
    ("*shared_kv*", "layers that read another layer's KV instead of caching their own"),
    ("linear_*", "linear-attention layers and their recurrent and convolution state"),
    ("index_*", "a sparse-attention indexer's cached keys"),
    ("mamba_*", "Mamba layers and their state"),
    ("ssm_*", "state-space layers and their state"),
    ("conv_*", "a convolution state per sequence"),
    ("mla_*", "what the MLA latent holds"),
    ("state_size", "a state-space layer's state"),
    ("d_state", "a state-space layer's state"),
    ("d_conv", "a convolution state per sequence"),
    ("expand", "a state-space layer's inner width"),
    ("n_groups", "a state-space layer's state"),
)

# Names the patterns above would catch that shape weights or compute, never what a sequence keeps (checked
# first): biases, activations, the scan's chunk length, dt initialisation, norms and multipliers
# (transformers 5.25 NemotronHConfig, GraniteMoeHybridConfig, JambaConfig, FalconH1Config, BambaConfig, Lfm2Config).
NOT_CACHE_FIELDS: tuple[str, ...] = (
    "*_bias", "mamba_hidden_act", "mamba_chunk_size", "mamba_dt_*", "mamba_norm_before_gate", "mamba_rms_norm",
    "ssm_*multiplier*",
)

# Values that set nothing (a field present as null, false, 0 or empty).
_INERT = (None, False, 0, [], {}, "")


_MATCHERS: list = []  # (any NOT_CACHE_FIELDS pattern, any CACHE_FIELDS pattern): one regex each, built on first use


def _matchers():
    if not _MATCHERS:  # one compiled alternation instead of one fnmatch pattern compiled per name (start-up time)
        import re
        from fnmatch import translate

        _MATCHERS.extend(re.compile("|".join(translate(p) for p in patterns))
                         for patterns in (NOT_CACHE_FIELDS, [p for p, _ in CACHE_FIELDS]))
    return _MATCHERS


def why_cache_relevant(key: str) -> Optional[str]:
    """What `key` can change in a KV cache (CACHE_FIELDS' reason), or None when it is not on the list."""
    not_cache, cache = _matchers()
    if not_cache.match(key) or not cache.match(key):
        return None
    for pattern, why in CACHE_FIELDS:
        if key == pattern or fnmatchcase(key, pattern):
            return why
    return None


def unread_cache_fields(raw: dict[str, Any], read: Iterable[str]) -> list[tuple[str, Any, str]]:
    """(key, value, why) of each field of `raw` on the list that is set and not in `read`, in file order."""
    seen = set(read)
    out = []
    for key, value in raw.items():
        if key in seen or any(value is v or (type(value) is type(v) and value == v) for v in _INERT):
            continue
        why = why_cache_relevant(key)
        if why is not None:
            out.append((key, value, why))
    return out


def shown(value: Any, limit: int = 60) -> str:
    """A value as the refusal quotes it, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ReadRecorder(dict):
    """A config dict that records which keys were looked up (the handler's declaration of what it reads)."""

    def __init__(self, data: dict[str, Any]):
        super().__init__(data)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)
