"""kvplan.model.kinds: every layer kind's rules, by hand, and the invariants every kind must keep.

The invariants run over a test-local copy of the registry with one toy kind added (an
indexer-key cache, one of the kinds issue #13 brings), to show that a kind defined as one
class here obeys them without touching kvplan.model.layout.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import pytest

from kvplan.model.formats import parse_format_pair
from kvplan.model.kinds import (
    KIND_ORDER,
    KINDS,
    KINDS_BY_NAME,
    LAYER_TYPE_ALIASES,
    FullAttention,
    Kind,
    LayerKind,
    count_kinds,
    first_problem,
)

# A spec with every field some kind reads: Llama-3.1-8B's attention (config.json:
# num_key_value_heads 8, head_dim 128), DeepSeek-V3's latent (kv_lora_rank 512 +
# qk_rope_head_dim 64), Mistral-7B-v0.1's window 4096, Llama-4's chunk 8192, and a
# Mamba-1 layer of hidden 4, expand 2, d_conv 4, d_state 16:
# d_inner 8 -> conv 8 x 3 + SSM 8 x 16 = 152 elements.
SPEC = SimpleNamespace(
    name="toy",
    num_key_value_heads=8,
    k_head_dim=128,
    v_head_dim_resolved=128,
    mla_latent_dim=576,
    state_elements_per_layer_resolved=152,
    state_elements_per_layer=152,  # one opaque state tensor (State.tensors reads the geometry fields)
    sliding_window=4096,
    attention_chunk_size=8192,
    index_head_dim=128,
)
BF16 = parse_format_pair("bf16", "bf16")
Q8_Q4 = parse_format_pair("q8_0/q4_0", "bf16")


class IndexerKeys(FullAttention):
    """A toy kind: DeepSeek-V3.2's indexer key cache, one fp8 key of index_head_dim values + an
    fp32 scale per token, whole on every rank (vLLM's indexer cache: 128 + 4 = 132 B per token)."""

    kind = "indexer_keys"  # type: ignore[assignment]  (no LayerKind member: a test-local kind)
    label = "indexer keys"
    layer_type = "indexer_keys"

    def kv_heads(self, spec) -> int:
        return 1

    def kv_heads_per_rank(self, spec, tp: int) -> int:
        return 1

    def bytes_per_token_per_layer(self, spec, fmt, kv_heads: int) -> int:
        return spec.index_head_dim * 1 + 4

    def raw_bits_per_token_per_layer(self, spec, fmt, kv_heads: int) -> int:
        return spec.index_head_dim * 8

    def tensor_parallel_problem(self, spec, tp: int) -> Optional[str]:
        return None


REGISTRY = {**{k.value: rule for k, rule in KINDS.items()}, "indexer_keys": IndexerKeys()}
CONTEXTS = (1, 15, 16, 17, 100, 4095, 4096, 4097, 8192, 10_000)
BLOCKS = (1, 16, 64)


def window(rule: Kind) -> Optional[int]:
    return rule.window(SPEC)


# ------------------------------------------------------------------ the registry


def test_every_layer_kind_has_one_rule_in_order():
    assert set(KINDS) == set(LayerKind)
    assert KIND_ORDER == (LayerKind.FULL, LayerKind.MLA, LayerKind.SLIDING, LayerKind.CHUNKED,
                          LayerKind.STATE, LayerKind.SHARED, LayerKind.MLP)
    assert all(rule.kind is kind for kind, rule in KINDS.items())
    assert set(KINDS_BY_NAME) == {"full_attention", "mla", "sliding_attention", "chunked_attention", "state",
                                  "kv_shared", "mlp"}


def test_labels_are_the_tables_names():
    assert {k.value: r.label for k, r in KINDS.items()} == {
        "full_attention": "full attention",
        "mla": "MLA latent",
        "sliding_attention": "sliding window",
        "chunked_attention": "chunked local",
        "state": "state (SSM)",
        "kv_shared": "KV shared",
        "mlp": "MLP / MoE only",
    }


def test_layer_type_rebuilds_the_kind():
    # MLA is written full_attention: a spec with kv_lora_rank turns full layers into MLA
    for kind, rule in KINDS.items():
        assert LAYER_TYPE_ALIASES[rule.layer_type] is (LayerKind.FULL if kind is LayerKind.MLA else kind)


def test_windows_come_from_their_fields():
    assert KINDS[LayerKind.SLIDING].window(SPEC) == 4096
    assert KINDS[LayerKind.CHUNKED].window(SPEC) == 8192
    for kind in (LayerKind.FULL, LayerKind.MLA, LayerKind.STATE, LayerKind.SHARED):
        assert KINDS[kind].window(SPEC) is None


# ------------------------------------------------------------------ each kind by hand


@pytest.mark.parametrize(
    "kind, context, block, held, paged",
    [
        (LayerKind.FULL, 1000, 16, 1000, 1008),  # ceil(1000 / 16) = 63 blocks
        (LayerKind.MLA, 1000, 64, 1000, 1024),  # 16 blocks of 64
        (LayerKind.SLIDING, 8192, 16, 4096, 4112),  # ceil(4095 / 16) + 1 = 257 blocks: the window starts mid-block
        (LayerKind.SLIDING, 100, 16, 100, 112),  # the window never fills: ceil(100 / 16) = 7 blocks
        (LayerKind.CHUNKED, 10_000, 16, 8192, 8192),  # chunks start block-aligned: 8192 / 16 = 512 blocks
        (LayerKind.STATE, 10_000, 16, 0, 0),
        (LayerKind.SHARED, 10_000, 16, 0, 0),
    ],
)
def test_tokens_by_hand(kind, context, block, held, paged):
    rule = KINDS[kind]
    assert rule.tokens_held(context, window(rule)) == held
    assert rule.paged_tokens(context, window(rule), block) == paged


def test_a_chunk_that_is_not_block_aligned_takes_one_block_more():
    # chunk 100 in blocks of 16: ceil(99 / 16) + 1 = 8 blocks = 128 slots
    assert KINDS[LayerKind.CHUNKED].paged_tokens(1000, 100, 16) == 128


@pytest.mark.parametrize(
    "kind, fmt, heads, expected, raw_bits",
    [
        # 8 heads x (128 + 128) values x 2 B
        (LayerKind.FULL, BF16, 8, 4096, 8 * 256 * 16),
        (LayerKind.SLIDING, BF16, 8, 4096, 8 * 256 * 16),
        (LayerKind.CHUNKED, BF16, 2, 1024, 2 * 256 * 16),
        # q8_0 K: 4 blocks of 32 x (32 + 2 B fp16 d) = 136 B; q4_0 V: 4 x (16 + 2) = 72 B (ggml-common.h)
        (LayerKind.FULL, Q8_Q4, 8, 8 * (136 + 72), 8 * (128 * 8 + 128 * 4)),
        # one latent of 512 + 64 values x 2 B, whatever the heads, and (SPEC has index_head_dim 128: a
        # DeepSeek-V3.2 layer) the indexer key in fp8 + one fp32 scale per 128 values = 132 B
        # (vLLM 0.32 deepseek_v2.py Indexer: head_dim + head_dim // 128 * 4, uint8)
        (LayerKind.MLA, BF16, 1, 1152 + 132, 576 * 16 + 128 * 8),
        (LayerKind.STATE, BF16, 8, 0, 0),
        (LayerKind.SHARED, BF16, 8, 0, 0),
    ],
)
def test_bytes_per_token_by_hand(kind, fmt, heads, expected, raw_bits):
    rule = KINDS[kind]
    assert rule.bytes_per_token_per_layer(SPEC, fmt, heads) == expected
    assert rule.raw_bits_per_token_per_layer(SPEC, fmt, heads) == raw_bits


def test_q8_q4_scale_bytes():
    # 8 heads x (4 K scales + 4 V scales) x 2 B = 128 B above the packed values
    rule = KINDS[LayerKind.FULL]
    assert rule.bytes_per_token_per_layer(SPEC, Q8_Q4, 8) - rule.raw_bits_per_token_per_layer(SPEC, Q8_Q4, 8) // 8 == 128


def test_state_bytes_by_hand():
    rule = KINDS[LayerKind.STATE]
    state = BF16.k  # one format for the state: bf16
    assert rule.state_bytes_per_layer(SPEC, state) == 304  # 152 elements x 2 B
    assert rule.state_bytes_per_layer(SPEC, state, tp=2) == 152  # 76 elements on each rank
    assert rule.tensor_parallel_problem(SPEC, 3) == (
        "--tensor-parallel-size 3 does not divide toy's state of 152 elements per layer"
    )


@pytest.mark.parametrize("tp, per_rank", [(1, 8), (2, 4), (8, 1), (16, 1)])  # 16 ranks: each head on 2 ranks
def test_kv_heads_split_and_replicate(tp, per_rank):
    assert KINDS[LayerKind.FULL].kv_heads_per_rank(SPEC, tp) == per_rank
    assert KINDS[LayerKind.FULL].tensor_parallel_problem(SPEC, tp) is None
    assert KINDS[LayerKind.MLA].kv_heads_per_rank(SPEC, tp) == 1  # the latent is whole on every rank


def test_kv_head_refusals():
    full = KINDS[LayerKind.FULL]
    assert full.tensor_parallel_problem(SPEC, 3) == "--tensor-parallel-size 3 does not divide toy's 8 KV heads"
    assert full.tensor_parallel_problem(SPEC, 12) == (
        "--tensor-parallel-size 12 is not a multiple of toy's 8 KV heads, so they cannot be replicated evenly"
    )
    assert KINDS[LayerKind.MLA].tensor_parallel_problem(SPEC, 3) is None


def test_mla_refuses_a_k_v_pair():
    assert KINDS[LayerKind.MLA].format_problem(SPEC, Q8_Q4) == (
        "--kv-cache-dtype q8_0/q4_0: toy uses MLA, which caches one latent vector, "
        "so K and V cannot take different formats"
    )
    assert KINDS[LayerKind.FULL].format_problem(SPEC, Q8_Q4) is None


@pytest.mark.parametrize(
    "kind, context, win, pairs",
    [
        (LayerKind.FULL, 10, None, 55),  # 10 x 11 / 2
        (LayerKind.MLA, 10, None, 55),
        (LayerKind.SLIDING, 10, 4, 34),  # 1 + 2 + 3 + 4, then 6 x 4
        (LayerKind.CHUNKED, 10, 4, 23),  # chunks of 4, 4, 2: 10 + 10 + 3
        (LayerKind.STATE, 10, None, 0),
        (LayerKind.SHARED, 10, None, 0),  # a KV-shared layer attends as its donor's kind
    ],
)
def test_prefill_pairs_by_hand(kind, context, win, pairs):
    assert KINDS[kind].prefill_pairs(context, win) == pairs


def test_the_toy_kind_by_hand():
    toy = REGISTRY["indexer_keys"]
    assert toy.tokens_held(10_000, None) == 10_000
    assert toy.paged_tokens(1000, None, 64) == 1024
    assert toy.bytes_per_token_per_layer(SPEC, BF16, 1) == 132  # 128 fp8 values + a 4-byte fp32 scale


# ------------------------------------------------------------------ invariants of every kind


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_tokens_held_never_exceed_context_and_paging_only_adds(name):
    rule = REGISTRY[name]
    for context in CONTEXTS:
        held = rule.tokens_held(context, window(rule))
        assert 0 <= held <= context
        assert (held > 0) == rule.has_kv  # a kind that keeps tokens keeps at least one
        for block in BLOCKS:
            paged = rule.paged_tokens(context, window(rule), block)
            assert paged % block == 0
            assert held <= paged < held + 2 * block  # at most one partial block each end
            if block == 1 and not rule.windowed:
                assert paged == held


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_only_a_kind_that_holds_something_costs_bytes(name):
    rule = REGISTRY[name]
    assert rule.holds_anything == (rule.has_kv or rule.has_state)
    if not rule.has_kv:
        assert rule.bytes_per_token_per_layer(SPEC, BF16, 8) == 0
        assert rule.kv_heads(SPEC) == 0
    else:
        assert rule.bytes_per_token_per_layer(SPEC, BF16, rule.kv_heads(SPEC)) > 0
    if not rule.has_state:
        assert rule.state_bytes_per_layer(SPEC, BF16.k) == 0
    # the format's bytes are never fewer than the values' own bits
    for fmt in (BF16, Q8_Q4):
        heads = rule.kv_heads(SPEC)
        assert rule.bytes_per_token_per_layer(SPEC, fmt, heads) * 8 >= rule.raw_bits_per_token_per_layer(SPEC, fmt, heads)


def test_a_kv_shared_layer_holds_nothing():
    rule = KINDS[LayerKind.SHARED]
    assert not rule.holds_anything
    assert rule.tokens_held(10_000, None) == rule.paged_tokens(10_000, None, 16) == 0
    assert rule.bytes_per_token_per_layer(SPEC, BF16, 8) == rule.state_bytes_per_layer(SPEC, BF16.k) == 0


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_does_not_grow_with_context(name):
    # the state rule takes no context at all; its bytes are the same at 1 token and at 10,000
    rule = REGISTRY[name]
    assert rule.state_bytes_per_layer(SPEC, BF16.k) == (304 if rule.has_state else 0)


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])
def test_a_tensor_parallel_split_sums_back(name, tp):
    rule = REGISTRY[name]
    if rule.tensor_parallel_problem(SPEC, tp):
        return  # refused: nothing to split (152 state elements over 16 ranks)
    heads, per_rank = rule.kv_heads(SPEC), rule.kv_heads_per_rank(SPEC, tp)
    if rule.has_kv:
        assert 1 <= per_rank <= heads
        # split when the heads suffice (every head once), else every rank one head (replicated)
        assert per_rank * tp == heads if heads >= tp else per_rank == 1
    state = rule.state_bytes_per_layer(SPEC, BF16.k, tp)
    assert state * tp == rule.state_bytes_per_layer(SPEC, BF16.k)


def test_the_state_split_is_refused_where_it_would_not_sum_back():
    # 152 = 8 x 19: 16 ranks would leave 8 elements out
    assert KINDS[LayerKind.STATE].tensor_parallel_problem(SPEC, 16) == (
        "--tensor-parallel-size 16 does not divide toy's state of 152 elements per layer"
    )


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("win", [1, 3, 4, 7])
def test_the_mask_counts_the_prefill_pairs(name, win):
    # brute force over a causal prompt of 20 tokens: the pairs the kind's mask lets through are
    # its prefill pairs, and no query sees a key before its first_key
    rule = REGISTRY[name]
    if not rule.has_kv:
        return  # nothing attends: 0 pairs, checked by hand above
    w = win if rule.windowed else None
    for context in (1, 5, 20):
        seen = [(i, j) for i in range(context) for j in range(i + 1) if rule.in_window(i, j, w)]
        assert len(seen) == rule.prefill_pairs(context, w)
        assert all(j >= rule.first_key(i, w) for i, j in seen)
        assert all(rule.in_window(i, rule.first_key(i, w), w) for i in range(context))  # and it sees its first key


def test_masks_by_hand():
    sliding, chunked = KINDS[LayerKind.SLIDING], KINDS[LayerKind.CHUNKED]
    assert [j for j in range(10) if sliding.in_window(9, j, 4)] == [6, 7, 8, 9]  # the last 4, itself included
    assert [j for j in range(10) if chunked.in_window(9, j, 4)] == [8, 9]  # chunk 8..11
    assert sliding.first_key(9, 4) == 6 and sliding.first_key(2, 4) == 0
    assert chunked.first_key(9, 4) == 8


def test_kinds_are_counted_and_asked_in_table_order():
    kinds = (LayerKind.STATE, LayerKind.FULL, LayerKind.STATE, LayerKind.SHARED)
    assert list(count_kinds(kinds).items()) == [(LayerKind.FULL, 1), (LayerKind.STATE, 2), (LayerKind.SHARED, 1)]
    # tp 3 splits neither 8 KV heads nor 152 state elements: the full-attention refusal comes first
    assert first_problem(kinds, lambda rule: rule.tensor_parallel_problem(SPEC, 3)) == (
        "--tensor-parallel-size 3 does not divide toy's 8 KV heads"
    )
    assert first_problem((LayerKind.STATE,), lambda rule: rule.tensor_parallel_problem(SPEC, 3)) == (
        "--tensor-parallel-size 3 does not divide toy's state of 152 elements per layer"
    )
    assert first_problem(kinds, lambda rule: rule.tensor_parallel_problem(SPEC, 2)) is None
