"""The shipped catalog (`model_specs/*.yaml`): every spec loads, and its cache is what
the model's config.json implies.

Golden values are written by hand as arithmetic from each config.json (layers x KV
heads x head_dim x 2 for K and V x 2 bytes for bf16; MLA: layers x (kv_lora_rank +
qk_rope_head_dim) x 2 bytes), never computed by the code under test.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvplan.model.layout import CacheLayout
from kvplan.sources.catalog import SPECS_DIR, catalog_names, load_spec_file, resolve_spec
from kvplan.model.formats import parse_format_pair
from kvplan.model.spec import LayerKind, ModelSpec

FULL = LayerKind.FULL
SLIDING = LayerKind.SLIDING
CHUNKED = LayerKind.CHUNKED
MLA = LayerKind.MLA
STATE = LayerKind.STATE

SPEC_PATHS = sorted(SPECS_DIR.glob("*.yaml"))


def bf16_layout(spec: ModelSpec) -> CacheLayout:
    """The catalog's reference layout: bf16 K and V, no paging, one rank."""
    return CacheLayout(spec, parse_format_pair("bf16", spec.dtype))


def kv_bytes_per_token(name: str) -> int:
    return bf16_layout(resolve_spec(name)).kv_bytes_per_token


def kv_bytes_per_sequence(name: str, context: int) -> int:
    return bf16_layout(resolve_spec(name)).at(context, 1).kv_bytes_per_sequence


# ------------------------------------------------------------------ loading


def test_catalog_has_at_least_24_specs():
    assert len(SPEC_PATHS) >= 24
    # by name: sorting the paths puts "deepseek-v3.2.yaml" before "deepseek-v3.yaml" ('.' < 'y')
    assert catalog_names() == sorted(p.stem for p in SPEC_PATHS)


@pytest.mark.parametrize("path", SPEC_PATHS, ids=lambda p: p.stem)
def test_every_spec_loads_with_its_file_name_and_a_source(path):
    spec = load_spec_file(path)
    assert spec.name == path.stem
    assert spec.source.strip()
    assert "huggingface.co" in spec.source  # the config.json the numbers were checked against


# ------------------------------------------------------------ golden table

# (name, KV bytes per token at bf16 over all layers, layer kinds and their counts)
GOLDEN = [
    ("gpt-2", 12 * 12 * 64 * 2 * 2, {FULL: 12}),
    ("llama-2-7b", 32 * 32 * 128 * 2 * 2, {FULL: 32}),
    ("llama-2-70b", 80 * 8 * 128 * 2 * 2, {FULL: 80}),
    ("llama-3.1-8b", 32 * 8 * 128 * 2 * 2, {FULL: 32}),
    ("llama-3.1-70b", 80 * 8 * 128 * 2 * 2, {FULL: 80}),
    ("llama-3.1-405b", 126 * 8 * 128 * 2 * 2, {FULL: 126}),
    ("mistral-7b-v0.1", 32 * 8 * 128 * 2 * 2, {SLIDING: 32}),
    ("mixtral-8x7b", 32 * 8 * 128 * 2 * 2, {FULL: 32}),
    ("qwen2.5-7b", 28 * 4 * 128 * 2 * 2, {FULL: 28}),
    ("qwen2.5-72b", 80 * 8 * 128 * 2 * 2, {FULL: 80}),
    ("qwen3-8b", 36 * 8 * 128 * 2 * 2, {FULL: 36}),
    ("qwen3-32b", 64 * 8 * 128 * 2 * 2, {FULL: 64}),
    ("qwen3-235b-a22b", 94 * 4 * 128 * 2 * 2, {FULL: 94}),
    ("deepseek-v2-lite", 27 * (512 + 64) * 2, {MLA: 27}),
    ("deepseek-v3", 61 * (512 + 64) * 2, {MLA: 61}),
    ("gemma-2-9b", 42 * 8 * 256 * 2 * 2, {SLIDING: 21, FULL: 21}),
    ("gemma-2-27b", 46 * 16 * 128 * 2 * 2, {SLIDING: 23, FULL: 23}),
    ("gemma-3-27b", 62 * 16 * 128 * 2 * 2, {SLIDING: 52, FULL: 10}),
    ("falcon-7b", 32 * 1 * 64 * 2 * 2, {FULL: 32}),
    ("phi-3-mini", 32 * 32 * 96 * 2 * 2, {SLIDING: 32}),
    ("jamba-v0.1", 4 * 8 * 128 * 2 * 2, {FULL: 4, STATE: 28}),
    ("gpt-oss-20b", 24 * 8 * 64 * 2 * 2, {SLIDING: 12, FULL: 12}),
    ("gpt-oss-120b", 36 * 8 * 64 * 2 * 2, {SLIDING: 18, FULL: 18}),
    ("llama-4-scout", 48 * 8 * 128 * 2 * 2, {CHUNKED: 36, FULL: 12}),
    ("kimi-k2", 61 * (512 + 64) * 2, {MLA: 61}),
    ("glm-4.7-flash", 47 * (512 + 64) * 2, {MLA: 47}),
    ("minimax-m2.7", 62 * 8 * 128 * 2 * 2, {FULL: 62}),
    ("santacoder", 24 * 1 * 128 * 2 * 2, {FULL: 24}),  # multi-query: one KV head
    ("smollm3-3b", 36 * 4 * 128 * 2 * 2, {FULL: 36}),  # NoPE layers cache K and V too
    # every 4th layer full attention (full_attention_interval 4), the rest Gated DeltaNet (state)
    ("qwen3-next-80b-a3b", 12 * 2 * 256 * 2 * 2, {FULL: 12, STATE: 36}),
    ("qwen3.6-27b", 16 * 4 * 256 * 2 * 2, {FULL: 16, STATE: 48}),
    ("qwen3.5-397b-a17b", 15 * 2 * 256 * 2 * 2, {FULL: 15, STATE: 45}),
    # hybrid_override_pattern: 6 '*', 23 'M', 23 'E' (MoE blocks hold nothing)
    ("nemotron-3-nano-30b-a3b", 6 * 2 * 128 * 2 * 2, {FULL: 6, STATE: 23, LayerKind.MLP: 23}),
    # DeepSeek sparse attention: + one indexer key per layer, 128 fp8 values + one fp32 scale (vLLM's Indexer)
    ("deepseek-v3.2", 61 * ((512 + 64) * 2 + 128 + 4), {MLA: 61}),
    # GLM-5.1 (glm_moe_dsa): the same layer as DeepSeek-V3.2 on 78 layers: latent 576 x 2 B + indexer key 128 fp8 + 4 B scale
    ("glm-5.1", 78 * ((512 + 64) * 2 + 128 + 4), {MLA: 78}),
    # 35 layers, the last 15 KV-shared: 20 hold KV (16 sliding, 4 full), 2 KV heads x 256
    ("gemma-3n-e4b", 20 * 2 * 256 * 2 * 2, {SLIDING: 16, FULL: 4, LayerKind.SHARED: 15}),
    # sliding layers 16 KV heads x 256, full layers 4 x global_head_dim 512
    ("gemma-4-31b", 50 * 16 * 256 * 2 * 2 + 10 * 4 * 512 * 2 * 2, {SLIDING: 50, FULL: 10}),
    # linear_attn_config's 1-based full_attn_layers 4, 8, ..., 24, 27: 7 MLA layers, 20 KDA (state)
    ("kimi-linear-48b-a3b", 7 * (512 + 64) * 2, {MLA: 7, STATE: 20}),
    # layer_types: 6 full attention (8 KV heads x 2048 / 32 = 64), 10 short convolutions (state); bf16 here
    ("lfm2.5-1.2b", 6 * 8 * 64 * 2 * 2, {FULL: 6, STATE: 10}),
]


def test_golden_table_covers_the_whole_catalog():
    assert sorted(name for name, _, _ in GOLDEN) == catalog_names()


@pytest.mark.parametrize("name, expected, _kinds", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_kv_bytes_per_token_at_bf16(name, expected, _kinds):
    assert kv_bytes_per_token(name) == expected


@pytest.mark.parametrize("name, _bytes, kinds", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_layer_kind_counts(name, _bytes, kinds):
    assert Counter(resolve_spec(name).layer_kinds) == kinds


# Which layers are the odd ones out, by index, as each config / modeling file places them.
LAYER_POSITIONS = [
    # Gemma2: is_sliding = not layer_idx % 2, so layer 0 slides and odd layers are full
    ("gemma-2-9b", FULL, list(range(1, 42, 2))),
    ("gemma-2-27b", FULL, list(range(1, 46, 2))),
    # Gemma3: full when (layer_idx + 1) % 6 == 0
    ("gemma-3-27b", FULL, [5, 11, 17, 23, 29, 35, 41, 47, 53, 59]),
    # gpt-oss config.json: layer_types starts with sliding_attention
    ("gpt-oss-20b", FULL, list(range(1, 24, 2))),
    ("gpt-oss-120b", FULL, list(range(1, 36, 2))),
    # Jamba: attention when i % attn_layer_period (8) == attn_layer_offset (4)
    ("jamba-v0.1", FULL, [4, 12, 20, 28]),
    # Llama 4: NoPE (full attention) when (i + 1) % no_rope_layer_interval (4) == 0
    ("llama-4-scout", FULL, list(range(3, 48, 4))),
]


@pytest.mark.parametrize("name, kind, positions", LAYER_POSITIONS, ids=[p[0] for p in LAYER_POSITIONS])
def test_layer_positions(name, kind, positions):
    kinds = resolve_spec(name).layer_kinds
    assert [i for i, k in enumerate(kinds) if k is kind] == positions


# Bytes of one sequence at a context past the window / chunk, one copy, unpaged.
PER_SEQUENCE = [
    # every layer holds the last 4096 tokens
    ("mistral-7b-v0.1", 32768, 32 * 8 * 128 * 2 * 2 * 4096),
    # every layer holds the last 2047 tokens
    ("phi-3-mini", 4096, 32 * 32 * 96 * 2 * 2 * 2047),
    # 10 full layers hold 32768 tokens, 52 sliding layers hold 1024
    ("gemma-3-27b", 32768, 10 * 16 * 128 * 2 * 2 * 32768 + 52 * 16 * 128 * 2 * 2 * 1024),
    # 21 full layers hold 8192 tokens, 21 sliding layers hold 4096
    ("gemma-2-9b", 8192, 21 * 8 * 256 * 2 * 2 * 8192 + 21 * 8 * 256 * 2 * 2 * 4096),
    # 18 full layers hold 131072 tokens, 18 sliding layers hold 128
    ("gpt-oss-120b", 131072, 18 * 8 * 64 * 2 * 2 * 131072 + 18 * 8 * 64 * 2 * 2 * 128),
    # 12 full layers hold 32768 tokens, 36 chunked layers at most one 8192-token chunk
    ("llama-4-scout", 32768, 12 * 8 * 128 * 2 * 2 * 32768 + 36 * 8 * 128 * 2 * 2 * 8192),
    # one 576-element latent per token and layer
    ("deepseek-v3", 32768, 61 * (512 + 64) * 2 * 32768),
    # 4 attention layers + 28 Mamba layers of conv (d_inner x (d_conv - 1)) + SSM (d_inner x d_state)
    ("jamba-v0.1", 32768, 4 * 8 * 128 * 2 * 2 * 32768 + 28 * (8192 * 3 + 8192 * 16) * 2),
    # use_sliding_window is false: the 131072 in the config is not a window
    ("qwen2.5-7b", 131072, 28 * 4 * 128 * 2 * 2 * 131072),
]


@pytest.mark.parametrize("name, context, expected", PER_SEQUENCE, ids=[p[0] for p in PER_SEQUENCE])
def test_kv_bytes_per_sequence_past_the_window(name, context, expected):
    assert kv_bytes_per_sequence(name, context) == expected


def test_jamba_state_bytes_per_sequence_per_layer():
    # d_inner = mamba_expand * hidden_size = 2 * 4096 = 8192 channels;
    # conv state 8192 x (d_conv 4 - 1), SSM state 8192 x d_state 16; 2 bytes each at bf16
    estimate = bf16_layout(resolve_spec("jamba-v0.1")).at(1, 1)
    (state_row,) = [row for row in estimate.by_kind if row.kind == STATE.value]
    assert state_row.state_bytes_per_sequence_per_layer == (8192 * 3 + 8192 * 16) * 2
    assert state_row.layers == 28


# --------------------------------------------------------- internal consistency

# Models whose config.json gives a head_dim that differs from hidden_size / heads.
HEAD_DIM_NOT_HIDDEN_OVER_HEADS = {
    "gemma-2-9b": 256,  # 3584 / 16 = 224
    "gemma-2-27b": 128,  # 4608 / 32 = 144
    "gemma-3-27b": 128,  # 5376 / 32 = 168
    "qwen3-32b": 128,  # 5120 / 64 = 80
    "qwen3-235b-a22b": 128,  # 4096 / 64 = 64
    "gpt-oss-20b": 64,  # 2880 / 64 = 45
    "gpt-oss-120b": 64,
    "minimax-m2.7": 128,  # 3072 / 48 = 64
    "qwen3-next-80b-a3b": 256,  # 2048 / 16 = 128
    "qwen3.6-27b": 256,  # 5120 / 24 = 213.3
    "qwen3.5-397b-a17b": 256,  # 4096 / 32 = 128
    "nemotron-3-nano-30b-a3b": 128,  # 2688 / 32 = 84
    "gemma-4-31b": 256,  # 5376 / 32 = 168 (sliding layers; full layers global_head_dim 512)
}

CATALOG = [(p.stem, load_spec_file(p)) for p in SPEC_PATHS]
CATALOG_IDS = [name for name, _ in CATALOG]


@pytest.mark.parametrize("name, spec", CATALOG, ids=CATALOG_IDS)
def test_head_dim_matches_hidden_over_heads_unless_the_config_says_otherwise(name, spec):
    if spec.is_mla:
        assert spec.head_dim is None  # MLA caches a latent, sized by kv_lora_rank
        assert spec.qk_nope_head_dim is not None and spec.v_head_dim is not None
        return
    if name in HEAD_DIM_NOT_HIDDEN_OVER_HEADS:
        assert spec.head_dim == HEAD_DIM_NOT_HIDDEN_OVER_HEADS[name]
        assert spec.head_dim * spec.num_attention_heads != spec.hidden_size
    else:
        assert spec.head_dim * spec.num_attention_heads == spec.hidden_size


@pytest.mark.parametrize("name, spec", CATALOG, ids=CATALOG_IDS)
def test_windows_are_shorter_than_the_context(name, spec):
    # A "window" as long as the context would be a config artefact (Qwen2.5's
    # sliding_window 131072 with use_sliding_window false), not a window.
    if SLIDING in spec.layer_kinds:
        assert spec.sliding_window < spec.max_position_embeddings
    else:
        assert spec.sliding_window is None
    if CHUNKED in spec.layer_kinds:
        assert spec.attention_chunk_size < spec.max_position_embeddings
    else:
        assert spec.attention_chunk_size is None


@pytest.mark.parametrize("name, spec", CATALOG, ids=CATALOG_IDS)
def test_moe_fields_agree(name, spec):
    experts = spec.num_local_experts or spec.n_routed_experts
    if experts is None:
        assert spec.num_active_parameters is None  # dense: active = total
        assert spec.num_experts_per_tok is None
        return
    assert spec.num_experts_per_tok is not None and spec.num_experts_per_tok < experts
    assert spec.num_active_parameters is not None
    assert spec.num_active_parameters < spec.num_parameters
    if spec.first_k_dense_replace is not None:
        assert spec.first_k_dense_replace < spec.num_hidden_layers


@pytest.mark.parametrize("name, spec", CATALOG, ids=CATALOG_IDS)
def test_state_fields_only_where_layers_hold_state(name, spec):
    has_state = STATE in spec.layer_kinds
    assert (spec.mamba_d_state is not None or spec.linear_num_value_heads is not None
            or spec.linear_num_heads is not None or spec.conv_L_cache is not None) == has_state
    assert (spec.state_elements_per_layer_resolved is not None) == has_state


# ------------------------------------------------------------------ properties


@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(CATALOG) - 1),
    context=st.integers(min_value=1, max_value=1 << 20),
    extra=st.integers(min_value=1, max_value=1 << 16),
)
def test_per_sequence_bytes_grow_with_context_and_never_exceed_full_attention(index, context, extra):
    _, spec = CATALOG[index]
    layout = bf16_layout(spec)
    state_bytes = sum(g.num_layers * g.state_bytes_per_layer for g in layout.groups)
    shorter = layout.kv_bytes_per_sequence(context)
    longer = layout.kv_bytes_per_sequence(context + extra)
    assert shorter <= longer
    # windows and chunks only ever hold fewer tokens than full attention would
    assert longer <= layout.kv_bytes_per_token * (context + extra) + state_bytes


# ------------------------------------------------------------------ the YAML reader every command shares


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: 1\nb: 2\na: 3\n", "x.yaml:3: duplicate key 'a' (first at line 1)"),
        ("a: 1\n'a': 2\n", "x.yaml:2: duplicate key 'a' (first at line 1)"),  # quoting does not make another key
        ("top:\n  - k: 1\n    k: 2\n", "x.yaml:3: duplicate key 'k' (first at line 2)"),
        ("b: 1\nb: 2\nc:\n  x: 1\n  x: 2\n", "x.yaml:2: duplicate key 'b' (first at line 1)"),  # the first in the file
    ],
)
def test_a_duplicate_key_is_refused_with_both_lines(text, message):
    from kvplan.sources.catalog import read_yaml_text
    from kvplan.errors import InputError

    with pytest.raises(InputError) as err:
        read_yaml_text(text, "x.yaml")
    assert err.value.message == message


def test_merge_keys_and_distinct_keys_are_not_duplicates():
    from kvplan.sources.catalog import read_yaml_text

    data, line_of = read_yaml_text("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  x: 3\n1: one\n'1': text\n", "x.yaml")
    assert data == {"base": {"x": 1, "y": 2}, "mine": {"x": 3, "y": 2}, 1: "one", "1": "text"}
    assert line_of(("mine", "x")) == 4


def test_aliases_are_walked_once():
    # a "billion laughs" document: 10 levels of 10 aliases; the line index must not walk 10**10 nodes
    from kvplan.sources.catalog import read_yaml_text

    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    data, line_of = read_yaml_text("\n".join(lines) + "\n", "x.yaml")
    assert line_of(("l9",)) == 10 and len(data["l9"]) == 10
