"""kvplan/plan/capacity.py: the boundaries of `engine_max_context` that the other tests leave open.

Found by `python tools/mutate.py kvplan/plan/capacity.py --sample 15 --seed 1` (docs/mutation.md): each case
is chosen so that the rule and its near miss give different answers. Model: llama-3.1-8b
(model_specs/llama-3.1-8b.yaml: 32 layers x 8 KV heads x head dim 128, bf16), so one token of cache is
32 x 8 x 128 x (K + V) x 2 B = 131,072 B in every engine that holds exactly the tokens.
"""

from __future__ import annotations

import pytest

from kvplan.engines import MemoryInputs, get as engine_module
from kvplan.engines.options import engine_options
from kvplan.model.formats import parse_format_pair
from kvplan.plan.capacity import engine_max_context
from kvplan.sources.catalog import resolve_spec

GiB = 2**30
KV_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # 131,072 B
LIMIT = 131072  # llama-3.1-8b's max_position_embeddings


def _max_context(engine: str, values: dict, batch: int, budget: int) -> int:
    spec = resolve_spec("llama-3.1-8b")
    memory = MemoryInputs("test", 80 * GiB, 0, 0, 0, "test")  # read only by sglang / trtllm, not used here
    kw = {"ideal_format": parse_format_pair("auto", "bf16")}
    return engine_max_context(engine_module(engine), spec, engine, engine_options(engine, "auto", values), batch,
                              budget, memory, kw, LIMIT)


@pytest.mark.parametrize("budget, want", [
    (KV_PER_TOKEN, 1),  # room for exactly one token: the longest context is 1, not "nothing fits"
    (KV_PER_TOKEN - 1, 0),  # one byte short of one token: nothing fits
    (2 * KV_PER_TOKEN, 2),
])
def test_hf_room_for_exactly_one_token_is_a_context_of_one(budget, want):
    # hf's DynamicCache holds exactly the tokens it has seen (kvplan/engines/hf.py; transformers
    # cache_utils DynamicLayer.update concatenates each step's K/V): c tokens take c x 131,072 B.
    assert _max_context("hf", {}, 1, budget) == want


def test_llamacpp_fixed_cells_with_more_sequences_than_slots_gives_each_slot_its_cells():
    # -c 8192 with --parallel 2 (llama-context.cpp: n_ctx_seq = n_ctx / n_seq_max = 4,096, padded to 256; one
    # stream per slot since kv_unified is off): a sequence may hold up to its slot's 4,096 cells
    # (server-context.cpp slot.n_ctx = n_ctx_seq), whatever --batch says (3 here). Room is ample
    # (the 1 GiB the two streams allocate, 8,192 x 131,072 B, is far below 80 GiB).
    # Dividing the whole 8,192 cells among the 3 sequences instead (the unified pool's rule) would give 2,730.
    assert 8192 * KV_PER_TOKEN == GiB
    assert _max_context("llama.cpp", {"ctx_size": 8192, "parallel": 2}, 3, 80 * GiB) == 4096


def test_llamacpp_unified_cells_are_shared_by_the_batch():
    # --kv-unified: one stream of pad(8192, 256) = 8,192 cells shared by every sequence, so 3 sequences of
    # c tokens need 3c <= 8,192: c = 2,730.
    assert _max_context("llama.cpp", {"ctx_size": 8192, "parallel": 2, "kv_unified": True}, 3, 80 * GiB) == 8192 // 3
