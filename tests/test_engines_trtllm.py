"""TensorRT-LLM profile: 32-token blocks and the free-memory-fraction budget, worked by hand.

Sources: NVIDIA/TensorRT-LLM tensorrt_llm/_torch/pyexecutor/_util.py
(get_cache_size_per_token, get_fraction_from_executor_config, cal_max_tokens),
tensorrt_llm/llmapi/llm_args.py (KvCacheConfig.tokens_per_block = 32).
"""

from __future__ import annotations

import pytest

from kvplan.sources.catalog import resolve_spec
from kvplan.engines import GIB, MIB, MemoryInputs
from kvplan.engines import trtllm as T
from kvplan.model.formats import parse_format_pair

from conftest import make_spec


def run(spec, context, batch=1, kv="auto", **opts):
    spec = resolve_spec(spec) if isinstance(spec, str) else spec
    return T.cache(spec, context, batch, T.TrtllmOptions(**opts), kv_cache_dtype=kv,
                   ideal_format=parse_format_pair("auto", spec.dtype))


@pytest.mark.parametrize(
    "model, esz, tp, per_token",
    [
        ("llama-3.1-8b", 2, 1, 2 * 2 * 128 * 8 * 32),  # mem_per_token x kv_factor x head_dim x H_kv x layers
        ("llama-3.1-8b", 1, 1, 1 * 2 * 128 * 8 * 32),  # fp8
        ("llama-3.1-8b", 2, 2, 2 * 2 * (128 * 8 // 2) * 32),
        ("deepseek-v3", 2, 8, 2 * 576 * 61),  # MLA: kv_factor 1, no tp split
        ("gemma-3-27b", 2, 1, 2 * 2 * 128 * 16 * 62),  # every layer counted, windowed or not
    ],
)
def test_get_cache_size_per_token(model, esz, tp, per_token):
    assert T.bytes_per_token(resolve_spec(model), esz, tp) == per_token


def test_a_one_layer_model_counts_its_one_layer():
    # make_spec: 2 KV heads x head_dim 16 (64 / 4 heads); fp16 (2 B) x kv_factor 2 x 16 x 2 x 1 layer = 128 B
    assert T.bytes_per_token(make_spec(num_hidden_layers=1), 2, 1) == 2 * 2 * 16 * 2 * 1 == 128


def test_no_replication_floor_when_heads_are_fewer_than_ranks():
    """head_dim x H_kv // tp: 2 KV heads of 64 over 4 ranks -> 32 values per rank (vLLM keeps one head: 64)."""
    spec = make_spec(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    assert T.layer_token_bytes(spec, 2, 4) == 2 * 2 * 32
    c = run(spec, 1024, tp=4)
    # ideal: 4 ranks x 1024 tokens x 4 layers x one replicated head x (64 + 64) x 2 B
    assert c.ideal_bytes_total == 4 * 1024 * 4 * (64 + 64) * 2 == 4_194_304
    # TensorRT-LLM: 4 ranks x 1024 tokens x 4 layers x 2 (K, V) x 32 values x 2 B
    assert c.kv_bytes_total == 4 * 1024 * 4 * 2 * 32 * 2 == 2_097_152
    assert "no replication" in c.differences[0].cause


def test_32_token_blocks():
    c = run("deepseek-v2-lite", 1000)
    assert c.by_kind[0].tokens_per_sequence == 1024
    assert c.kv_bytes_total == 27 * 1024 * 576 * 2
    assert c.overhead_bytes == {"32-token blocks": 27 * 24 * 576 * 2}


def test_tokens_per_block_must_be_a_power_of_two():
    with pytest.raises(Exception, match="--tokens-per-block 48 must be a power of two"):
        run("llama-3.1-8b", 1024, tokens_per_block=48)


def test_kv_dtype_refusal():
    c = run("llama-3.1-8b", 1024, kv="q4_0")
    assert c.refused and c.kv_bytes_total is None


def test_capacity_fraction_of_what_is_left_after_the_peak():
    """available = (total - peak) x 0.9; max_tokens = available // bytes per token."""
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("h100", 81559 * MIB, weights, 512 * MIB, 2 * GIB, "given")
    cap = T.capacity(resolve_spec("llama-3.1-8b"), 8192, 1, T.TrtllmOptions(), mem,
                     ideal_format=parse_format_pair("auto", "bf16"))
    peak = weights + 2 * GIB + 512 * MIB  # 18,744,877,056 B = 17.46 GiB
    available = (81559 * MIB - peak) * 0.9  # 60,098,339,635.2 B = 55.97 GiB
    assert cap.kv_budget_bytes == int(available) == 60_098_339_635
    assert cap.max_total_tokens == 458_513
    assert cap.max_concurrent_sequences == (458_513 // 32) // (8192 // 32) == 55
    assert cap.log_lines == (
        "Peak memory during memory usage profiling (torch + non-torch): 17.46 GiB, available KV cache memory when "
        "calculating max tokens: 55.97 GiB, fraction is set 0.9, kv size is 131072",
        "Estimated max tokens in KV cache : 458513",
    )


def _llama_mem():
    weights = 8_030_261_248 * 2
    return MemoryInputs("h100", 81559 * MIB, weights, 512 * MIB, 2 * GIB, "given")


def test_capacity_with_an_fp8_cache():
    """fp8: mem_per_token 1, so 1 x 2 x 128 x 8 x 32 = 65,536 B per token, twice the tokens of bf16."""
    cap = T.capacity(resolve_spec("llama-3.1-8b"), 8192, 1, T.TrtllmOptions(), _llama_mem(), kv_cache_dtype="fp8",
                     ideal_format=parse_format_pair("fp8", "bf16"))
    # available = (85,520,809,984 - 18,744,877,056) x 0.9 = 60,098,339,635.2 B; // 65,536 = 917,027 tokens
    assert cap.max_total_tokens == 917_027
    assert cap.max_concurrent_sequences == (917_027 // 32) // (8192 // 32) == 111
    assert cap.log_lines[1] == "Estimated max tokens in KV cache : 917027"
    assert cap.log_lines[0].endswith("kv size is 65536")


def test_capacity_at_the_whole_fraction_and_max_tokens():
    # fraction 1 is allowed ((0, 1]): 66,775,932,928 B // 131,072 = 509,459 tokens
    cap = T.capacity(resolve_spec("llama-3.1-8b"), 8192, 1, T.TrtllmOptions(free_gpu_memory_fraction=1.0), _llama_mem(),
                     ideal_format=parse_format_pair("auto", "bf16"))
    assert (cap.kv_budget_bytes, cap.max_total_tokens) == (66_775_932_928, 509_459)
    # KvCacheConfig.max_tokens caps it: 100,000 tokens = 3,125 blocks of 32 = 12 sequences of 256 blocks
    cap = T.capacity(resolve_spec("llama-3.1-8b"), 8192, 13, T.TrtllmOptions(max_tokens=100_000), _llama_mem(),
                     ideal_format=parse_format_pair("auto", "bf16"))
    assert (cap.max_total_tokens, cap.max_concurrent_sequences, cap.fits) == (100_000, 12, False)


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_capacity_refuses_a_fraction_outside_zero_to_one(fraction):
    with pytest.raises(Exception, match=rf"--free-gpu-memory-fraction {fraction} must be in \(0, 1\]"):
        T.capacity(resolve_spec("llama-3.1-8b"), 8192, 1, T.TrtllmOptions(free_gpu_memory_fraction=fraction),
                   _llama_mem(), ideal_format=parse_format_pair("auto", "bf16"))


def test_capacity_with_a_kv_dtype_trtllm_lacks():
    cap = T.capacity(resolve_spec("llama-3.1-8b"), 8192, 1, T.TrtllmOptions(), _llama_mem(), kv_cache_dtype="q4_0",
                     ideal_format=parse_format_pair("auto", "bf16"))
    assert (cap.max_total_tokens, cap.max_concurrent_sequences, cap.fits) == (None, 0, False)
    assert cap.refusals[0].startswith("TensorRT-LLM's KV cache dtype is auto or fp8")


def test_one_token_blocks_and_rows_at_tp_and_batch():
    # tokens_per_block 1 is a power of two (2**0): no rounding; 3 sequences of 1,000 tokens on 2 ranks
    spec = make_spec()  # 4 full layers, 2 KV heads of 16
    c = run(spec, 1000, batch=3, tokens_per_block=1, tp=2)
    # per rank per token per layer: 2 B x 2 (K, V) x (16 x 2 // 2) = 64 B
    row = c.by_kind[0]
    assert (row.tokens_per_sequence, row.slots_per_layer, row.bytes_per_slot) == (1000, 3 * 1000, 2 * 64)
    assert row.bytes == 2 * 4 * 64 * 3 * 1000  # tp x layers x per-rank bytes x batch x tokens
    assert c.kv_bytes_total == 2 * 4 * 64 * 3 * 1000
    # 32-token blocks: ceil(1,000 / 32) = 32 blocks = 1,024 tokens per sequence
    c = run(spec, 1000, batch=3, tp=2)
    assert c.by_kind[0].tokens_per_sequence == 1024 and c.kv_bytes_total == 2 * 4 * 64 * 3 * 1024
    with pytest.raises(Exception, match="--tokens-per-block 0 must be a power of two"):
        run(spec, 1000, tokens_per_block=0)


def test_an_fp8_cache_is_one_byte_per_value():
    c = run("llama-3.1-8b", 1000, kv="fp8")
    # 32 layers x 1,024 tokens (32-token blocks) x 2 (K, V) x 128 x 8 heads x 1 B
    assert c.kv_bytes_total == 32 * 1024 * 2 * 128 * 8
    assert c.kv_cache_dtype == "fp8"


def test_the_first_step_is_the_element_size_alone():
    # llama-3.1-8b at tp 1: 2-byte elements and head_dim x 8 heads per rank are what the ideal counts, so the
    # only difference is 32-token blocks: 1,024 - 1,000 = 24 tokens x 131,072 B
    c = run("llama-3.1-8b", 1000)
    assert c.overhead_bytes == {"32-token blocks": 24 * 131_072}
    assert c.by_kind[0].note == ""


def test_mla_rows_have_no_v_and_state_rows_no_tokens():
    row = run("deepseek-v2-lite", 1000).by_kind[0]
    assert (row.kind, row.note) == ("mla", "no V (CacheType SELFKONLY)")
    state = next(r for r in run("jamba-v0.1", 1000, batch=2).by_kind if r.kind == "state")
    assert (state.layers, state.tokens_per_sequence, state.slots_per_layer) == (28, 0, 2)


def test_context_must_be_positive_and_memory_below_the_peak_gives_no_tokens():
    with pytest.raises(Exception, match="--context must be at least 1 token, got 0"):
        run("llama-3.1-8b", 0)
    # the weights alone exceed the GPU: available is negative, max_tokens floors at 0
    mem = MemoryInputs("tiny", 8 * GIB, 8_030_261_248 * 2, 0, 0, "given")
    cap = T.capacity(resolve_spec("llama-3.1-8b"), 8192, 1, T.TrtllmOptions(), mem,
                     ideal_format=parse_format_pair("auto", "bf16"))
    assert (cap.max_total_tokens, cap.max_concurrent_sequences, cap.fits) == (0, 0, False)
