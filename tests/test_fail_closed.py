"""Fail closed, never guess (issue 13): no known and no unknown model type silently drops a config.json field
that can change the KV cache.

Every fixture (tests/fixtures/hf_configs and hf_configs_next, so new fixtures join by themselves) is fed
with each cache-relevant field (kvplan.sources.cache_fields) removed, and altered. Each variant must be
refused naming that field, or size the cache the test states:
- a removed field takes transformers' class default (the DEFAULTS table read from configuration_<type>.py)
  or the class's derivation (head_dim = hidden / heads, num_key_value_heads = heads): the variant sizes
  exactly what the config with that value written in sizes (the same cache when the default is the value);
- an altered field (a number doubled, a flag flipped, a list changed, a null set) sizes another cache;
- the few that leave the cache as it was are listed in UNCHANGED with the source that says why.
A refusal of the published config stays a refusal.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from kvplan.errors import InputError
from kvplan.model.formats import parse_format_pair
from kvplan.model.layout import CacheLayout
from kvplan.sources.cache_fields import CACHE_FIELDS, unread_cache_fields, why_cache_relevant
from kvplan.sources.hf_config import convert_config

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("hf_configs*/*.json"))

# (fixture, field, "remove" | "alter") -> why the cache stays the same
UNCHANGED = {
    ("falcon-7b-instruct", "num_kv_heads", "remove"): "multi_query, old architecture: FalconAttention caches 1 KV head",
    ("falcon-7b-instruct", "num_kv_heads", "alter"): "multi_query, old architecture: FalconAttention caches 1 KV head",
    ("gemma-2-9b", "sliding_window_size", "remove"): "Gemma2Config and vLLM gemma2.py read sliding_window only",
    ("gemma-2-9b", "sliding_window_size", "alter"): "Gemma2Config and vLLM gemma2.py read sliding_window only",
    ("qwen3-next-80b-a3b-instruct", "use_sliding_window", "remove"): "Qwen3NextConfig has no such field (the published "
    "false is a leftover); a true one is refused by name",
    ("qwen3-next-80b-a3b-thinking", "use_sliding_window", "remove"): "Qwen3NextConfig has no such field (the published "
    "false is a leftover); a true one is refused by name",
    ("qwen3.6-27b", "layer_types", "remove"): "the published layer_types is what full_attention_interval 4 derives "
    "(Qwen3_5TextConfig.__post_init__); an interval that disagrees with layer_types is refused",
    ("qwen3.5-397b-a17b", "layer_types", "remove"): "the published layer_types is what full_attention_interval 4 "
    "derives (Qwen3_5MoeTextConfig.__post_init__); an interval that disagrees with layer_types is refused",
    ("gemma-3n-e4b", "layer_types", "remove"): "the fixture's layer_types is what Gemma3nTextConfig derives "
    "(4 sliding, then full)",
    ("gemma-4-31b-it", "layer_types", "remove"): "the published layer_types is what Gemma4TextConfig derives "
    "((i + 1) % 6 == 0 full, the last layer full)",
    ("nemotron-3-nano-30b-a3b", "expand", "alter"): "NemotronHMamba2Mixer's width is mamba_num_heads x "
    "mamba_head_dim; NemotronHConfig keeps expand unused",
    ("nemotron-3-nano-30b-a3b", "expand", "remove"): "NemotronHMamba2Mixer's width is mamba_num_heads x "
    "mamba_head_dim; NemotronHConfig keeps expand unused",
    **{("glm-5.1", key, op): "GlmMoeDsaConfig.__post_init__ overwrites it (head_dim = qk_rope_head_dim, qk_head_dim "
       "= nope + rope); vLLM's DeepseekV2 attention reads neither" for key in ("head_dim", "qk_head_dim")
       for op in ("remove", "alter")},
    ("minimax-m2.7", "attn_type_list", "remove"): "MiniMaxM2Config has no such field: every layer is full attention",
    # JambaMambaMixer: biases and dt_proj's rank are weights; the conv and SSM states (d_inner x d_conv,
    # d_inner x d_state) do not hold them
    ("jamba-1.5-mini", "mamba_conv_bias", "alter"): "a weight, not state",
    ("jamba-1.5-mini", "mamba_dt_rank", "alter"): "a weight's shape, not state",
    ("jamba-1.5-mini", "mamba_proj_bias", "alter"): "a weight, not state",
    # Qwen2Config / Qwen3Config (5.25): use_sliding_window false slides no layer, whatever the window and the
    # first sliding layer say; Qwen3MoeConfig has no max_window_layers (vLLM's qwen3_moe.py reads none of them)
    **{(name, key, "alter"): "use_sliding_window is false: no layer slides"
       for name in ("qwen2-57b-a14b", "qwen2-7b-instruct", "qwen3-30b-a3b", "qwen3-8b")
       for key in ("sliding_window", "max_window_layers")},
    ("qwen3-30b-a3b", "max_window_layers", "remove"): "Qwen3MoeConfig has no max_window_layers",
    # use_sliding_window turned on: Qwen2 / Qwen3 slide from layer max_window_layers on, which is the last
    # layer's index + 1 here (28 of 28, 36 of 36); Qwen3-30B-A3B's sliding_window is null: no window to slide
    ("qwen2-7b-instruct", "use_sliding_window", "alter"): "max_window_layers 28 = num_hidden_layers",
    ("qwen3-8b", "use_sliding_window", "alter"): "max_window_layers 36 = num_hidden_layers",
    ("qwen3-30b-a3b", "use_sliding_window", "alter"): "sliding_window is null",
    # SmolLM3Config (5.25): no_rope_layers (and the interval that builds its default) choose RoPE or NoPE, and
    # a NoPE layer caches K and V all the same; layer_types' default is all full attention without
    # use_sliding_window and a window; max_window_layers is no SmolLM3Config field
    **{("smollm3-3b", key, op): "NoPE changes the rotation, not the cache"
       for key in ("no_rope_layers", "no_rope_layer_interval") for op in ("remove", "alter")},
    ("smollm3-3b", "layer_types", "remove"): "the default: every layer full attention (use_sliding_window false)",
    **{("smollm3-3b", "max_window_layers", op): "not a SmolLM3Config field" for op in ("remove", "alter")},
    ("smollm3-3b", "sliding_window", "alter"): "use_sliding_window is false",
    ("smollm3-3b", "use_sliding_window", "alter"): "sliding_window is null, and layer_types lists no sliding layer",
    # KimiLinearConfig.__post_init__ (5.25) overwrites head_dim with qk_rope_head_dim, and vLLM's MLA caches
    # kv_lora_rank + qk_rope_head_dim; mla_use_nope drops RoPE from the query, while kv_a_proj_with_mqa still
    # emits (and the cache keeps) kv_lora_rank + qk_rope_head_dim
    **{("kimi-linear-48b-a3b-instruct", key, op): "MLA caches the latent and the RoPE key only"
       for key in ("head_dim", "mla_use_nope") for op in ("remove", "alter")},
    # Lfm2Config (5.25) has no conv_dim: transformers' conv is hidden_size wide; vLLM's lfm2.py reads conv_dim,
    # so a conv_dim other than hidden_size is refused by name (the altered case)
    ("lfm2.5-1.2b-thinking-codex-w4a16", "conv_dim", "remove"): "transformers sizes the conv by hidden_size",
    **{("lfm2.5-1.2b-thinking-codex-w4a16", "conv_use_xavier_init", op): "initialisation, not state"
       for op in ("remove", "alter")},
}


def _text(config: dict) -> dict:
    """The dict the converter sizes: text_config when there is one."""
    return config["text_config"] if isinstance(config.get("text_config"), dict) else config


def signature(config: dict):
    """What the cache holds: the layer kinds, and the bytes of one sequence at three contexts (None: refused)."""
    from kvplan.model.spec import ModelSpec

    conv = convert_config(config)
    spec = ModelSpec(name="t", source="t", **{"torch_dtype": "bfloat16", **conv.fields})
    layout = CacheLayout(spec, parse_format_pair("bf16", "bf16"))
    # the spec's own cache fields too: MLA's qk_nope_head_dim and v_head_dim size transformers 4.x's cache
    # (--engine hf --transformers-version 4) though not the latent
    fields = tuple((name, getattr(spec, name)) for name in type(spec).model_fields if why_cache_relevant(name))
    return (tuple(k.value for k in spec.layer_kinds), fields,
            tuple(layout.at(c, 1).kv_bytes_per_sequence for c in (1, 4097, 300_001)))


def altered(value):
    """A different value of the same kind (a number doubled, a flag flipped, a list changed, a null set)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 2 * value if value else 1
    if isinstance(value, float):
        return 2 * value if value else 1.0
    if isinstance(value, list):
        return list(reversed(value)) if len(set(map(repr, value))) > 1 else value[:-1]
    if isinstance(value, str):
        return value + "_changed"
    if value is None:
        return 4096
    if isinstance(value, dict):
        return {**value, "changed": 1}
    raise TypeError(value)


def removal_default(config: dict, key: str):
    """What transformers' config class gives `key` when config.json leaves it out (None: nothing kvplan knows)."""
    from kvplan.sources.hf_config import DEFAULTS

    text = _text(config)
    try:
        resolved = convert_config(config).model_type
    except InputError:
        return None
    defaults = DEFAULTS.get(resolved, {})
    if defaults.get(key) is not None:
        return defaults[key]
    heads = text.get("num_attention_heads", defaults.get("num_attention_heads"))
    if key == "head_dim" and "kv_lora_rank" not in text and isinstance(heads, int):
        return text.get("hidden_size", defaults.get("hidden_size")) // heads
    if key == "num_key_value_heads" and isinstance(heads, int):
        return heads
    return None


def _outcome(config):
    try:
        return signature(config), None
    except InputError as exc:
        return None, exc.message
    except ValueError as exc:  # pydantic's ValidationError of the built spec
        return None, str(exc)


def _cases():
    for path in FIXTURES:
        config = json.loads(path.read_text())
        for key in list(_text(config)):
            if why_cache_relevant(key):
                yield pytest.param(path, key, id=f"{path.stem}:{key}")


def test_every_fixture_has_cache_fields_to_try():
    assert len(FIXTURES) >= 35 and len(list(_cases())) > 100


@pytest.mark.parametrize("path, key", list(_cases()))
def test_removing_or_altering_a_cache_field_is_never_silent(path, key):
    config = json.loads(path.read_text())
    base, base_refusal = _outcome(config)
    for op in ("remove", "alter"):
        variant = copy.deepcopy(config)
        text = _text(variant)
        if op == "remove":
            del text[key]
        else:
            text[key] = altered(text[key])
        after, refusal = _outcome(variant)
        if base is None:  # refused as published (a kind kvplan does not size yet): it stays refused
            assert refusal is not None or (op == "remove" and key in base_refusal), (op, key)
            continue
        default = removal_default(config, key) if op == "remove" else None
        if default is None and op == "remove" and _text(config)[key] is None:  # null, and no class default
            assert after == base, f"remove {key}: a null field removed changed the cache"
        elif refusal is not None:
            assert key in refusal, f"{op} {key}: refused for another reason: {refusal}"
        elif default is not None:
            stated = copy.deepcopy(config)
            _text(stated)[key] = default
            assert after == _outcome(stated)[0], f"remove {key}: not the class default {default!r}"
        elif after == base:
            assert (path.stem, key, op) in UNCHANGED, f"{op} {key}: the cache did not change and nothing said why"


def test_an_unknown_type_refuses_what_it_does_not_read():
    """Qwen3-Next with its weights' headers beside it used to be sized by the generic path (+234% at 8k):
    now its first unread cache field is named under any model_type whose rules do not read it (qwen3_next's do)."""
    config = json.loads((Path(__file__).parent / "fixtures" / "hf_configs_next" / "qwen3-next-80b-a3b-instruct.json").read_text())
    for model_type in ("brand_new", "llama"):
        with pytest.raises(InputError, match=r"full_attention_interval is 4, a field that can change the KV cache "
                                             r"\(which layers are full attention among linear-attention layers\)"):
            # architectures dropped: Qwen3NextForCausalLM would read an unknown model_type as qwen3_next
            convert_config(dict(config, model_type=model_type, architectures=["BrandNewForCausalLM"]))


@pytest.mark.parametrize("key, value", [
    ("hybrid_override_pattern", "M-M*"), ("layers_block_type", ["mamba", "attention"]), ("attn_type_list", [1, 0]),
    ("linear_num_value_heads", 32), ("index_topk", 2048), ("num_kv_shared_layers", 4), ("global_head_dim", 512),
    ("mamba_n_heads", 8), ("ssm_state_size", 128), ("conv_L_cache", 3), ("full_attention_interval", 4),
])
def test_a_known_type_refuses_a_field_its_handler_does_not_read(key, value):
    llama = json.loads((Path(__file__).parent / "fixtures" / "hf_configs" / "llama-3.1-8b-instruct.json").read_text())
    # the per-layer attention fields are caught first by their own check (hf_config), in its words
    with pytest.raises(InputError, match=rf"^config\.json: {key} is .*, (a field that can change the KV cache|which "
                                         "makes attention differ by layer)"):
        convert_config(dict(llama, **{key: value}))


def test_inert_values_set_nothing():
    assert unread_cache_fields({"sliding_window": None, "use_sliding_window": False, "num_kv_shared_layers": 0,
                                "layer_types": [], "mamba_d_state": 16}, set()) == [
        ("mamba_d_state", 16, "Mamba layers and their state")]


def test_the_list_names_each_field_once():
    names = [pattern for pattern, _ in CACHE_FIELDS]
    assert len(names) == len(set(names))
    for name in ("hybrid_override_pattern", "layers_block_type", "full_attention_interval", "attn_type_list",
                 "linear_key_head_dim", "index_head_dim", "num_kv_shared_layers", "global_head_dim", "mamba_d_state",
                 "ssm_state_size", "conv_kernel", "layer_types", "sliding_window", "num_key_value_heads"):
        assert why_cache_relevant(name), name
    for name in ("hidden_act", "rope_theta", "vocab_size", "num_experts", "intermediate_size", "tie_word_embeddings"):
        assert why_cache_relevant(name) is None, name


def test_refinedweb_names_are_read_as_falcon_does():
    """Falcon-40B's RefinedWeb config names its KV heads n_head_kv (FalconConfig maps it to num_kv_heads); a
    config with both, disagreeing, is refused rather than one silently preferred."""
    old = {"model_type": "RefinedWeb", "hidden_size": 8192, "n_layer": 60, "n_head": 128, "n_head_kv": 8,
           "vocab_size": 65024, "parallel_attn": True, "bias": False}
    assert convert_config(old).fields["num_key_value_heads"] == 8
    with pytest.raises(InputError, match="n_head_kv is 8, a field that can change the KV cache"):
        convert_config(dict(old, num_kv_heads=16))


def test_a_refusal_quotes_a_long_value_cut_to_60_characters():
    from kvplan.sources.cache_fields import shown

    # repr of a 58-character string is 60 characters with its quotes: quoted whole
    assert shown("x" * 58) == "'" + "x" * 58 + "'"
    # one more character: cut to 57 characters of the repr and "...", 60 in all
    assert shown("x" * 59) == "'" + "x" * 56 + "..."
    assert len(shown(list(range(100)))) == 60 and shown(list(range(100))).endswith("...")
