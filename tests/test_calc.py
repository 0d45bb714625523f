"""Golden values for the calculator, each worked by hand in the test."""

from __future__ import annotations

import pytest

from kvplan.model.layout import CacheLayout, estimate_cache, pp_partition
from kvplan.errors import InputError
from kvplan.model.formats import parse_format, parse_format_pair
from kvplan.model.spec import LayerKind

from conftest import make_spec

# Architectures entered by hand from the published config.json files.
LLAMA_31_8B = dict(name="llama-3.1-8b", num_parameters=8_030_261_248, hidden_size=4096, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256)
DEEPSEEK_V3 = dict(name="deepseek-v3", num_parameters=671_026_419_200, hidden_size=7168, num_hidden_layers=61,
                   num_attention_heads=128, num_key_value_heads=128, vocab_size=129280, kv_lora_rank=512,
                   q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128)
MISTRAL_7B = dict(name="mistral-7b-v0.1", num_parameters=7_241_732_096, hidden_size=4096, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, sliding_window=4096)
GEMMA_3_27B = dict(name="gemma-3-27b", num_parameters=27_009_002_240, hidden_size=5376, num_hidden_layers=62,
                   num_attention_heads=32, num_key_value_heads=16, head_dim=128, vocab_size=262208,
                   sliding_window=1024, layer_pattern=[{"sliding_attention": 5}, {"full_attention": 1}])
JAMBA = dict(name="jamba-v0.1", num_parameters=51_570_323_456, hidden_size=4096, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=65536, mamba_d_state=16, mamba_d_conv=4,
             mamba_expand=2, layer_pattern=[{"mamba": 4}, {"full_attention": 1}, {"mamba": 3}])
LLAMA_4_SCOUT = dict(name="llama-4-scout", num_parameters=108_641_793_536, hidden_size=5120, num_hidden_layers=48,
                     num_attention_heads=40, num_key_value_heads=8, head_dim=128, vocab_size=202048,
                     attention_chunk_size=8192, layer_pattern=[{"chunked_attention": 3}, {"full_attention": 1}])


def est(arch: dict, context: int, batch: int = 1, dtype: str = "bf16", **kw):
    spec = make_spec(**arch)
    return estimate_cache(spec, context=context, batch=batch, kv_format=parse_format_pair(dtype, spec.dtype), **kw)


@pytest.mark.parametrize(
    "arch, dtype, expected_bytes_per_token",
    [
        (LLAMA_31_8B, "bf16", 32 * 8 * 128 * 2 * 2),  # 131,072
        (LLAMA_31_8B, "fp32", 32 * 8 * 128 * 2 * 4),
        (LLAMA_31_8B, "fp8", 32 * 8 * 128 * 2 * 1),
        (LLAMA_31_8B, "q8_0", 32 * 8 * 2 * (128 // 32) * 34),  # 34 bytes per 32 values
        (LLAMA_31_8B, "q4_0", 32 * 8 * 2 * (128 // 32) * 18),
        (LLAMA_31_8B, "q8_0/q4_0", 32 * 8 * ((128 // 32) * 34 + (128 // 32) * 18)),
        (LLAMA_31_8B, "fp8_per_token_head", 32 * 8 * 2 * (128 + 4)),  # + fp32 scale per token per head
        (LLAMA_31_8B, "nvfp4", 32 * 8 * 2 * (128 // 16) * 9),  # 8 bytes of nibbles + 1 fp8 scale per 16
        (LLAMA_31_8B, "int4", 32 * 8 * 2 * (128 // 64) * (32 + 2 + 2)),  # g64: 32 B + fp16 scale + fp16 zero
        (LLAMA_31_8B, "int4_g32_sym", 32 * 8 * 2 * (128 // 32) * (16 + 2)),
        (DEEPSEEK_V3, "bf16", 61 * (512 + 64) * 2),  # 70,272: one latent, no K/V factor
        (DEEPSEEK_V3, "fp8", 61 * (512 + 64) * 1),
        (MISTRAL_7B, "bf16", 32 * 8 * 128 * 2 * 2),
        (GEMMA_3_27B, "bf16", 62 * 16 * 128 * 2 * 2),
        (JAMBA, "bf16", 4 * 8 * 128 * 2 * 2),  # only the 4 attention layers grow
        (LLAMA_4_SCOUT, "bf16", 48 * 8 * 128 * 2 * 2),
    ],
)
def test_bytes_per_token(arch, dtype, expected_bytes_per_token):
    assert est(arch, 1, dtype=dtype).kv_bytes_per_token == expected_bytes_per_token


@pytest.mark.parametrize(
    "arch, context, expected_per_sequence",
    [
        (LLAMA_31_8B, 32768, 32768 * 32 * 8 * 128 * 2 * 2),
        (DEEPSEEK_V3, 4096, 4096 * 61 * 576 * 2),
        (MISTRAL_7B, 1000, 1000 * 32 * 8 * 128 * 2 * 2),  # inside the window
        (MISTRAL_7B, 32768, 4096 * 32 * 8 * 128 * 2 * 2),  # past the window: flat at 4096 tokens
        # 10 full layers hold 32,768 tokens, 52 sliding layers hold 1,024
        (GEMMA_3_27B, 32768, (10 * 32768 + 52 * 1024) * 16 * 128 * 2 * 2),
        # 12 global layers hold everything, 36 chunked hold one 8,192-token chunk
        (LLAMA_4_SCOUT, 131072, (12 * 131072 + 36 * 8192) * 8 * 128 * 2 * 2),
        # 4 attention layers + 28 Mamba layers of (8192*3 conv + 8192*16 ssm) bf16 elements
        (JAMBA, 8192, 4 * 8192 * 8 * 128 * 2 * 2 + 28 * (8192 * 3 + 8192 * 16) * 2),
    ],
)
def test_bytes_per_sequence(arch, context, expected_per_sequence):
    assert est(arch, context).kv_bytes_per_sequence == expected_per_sequence


def test_gemma3_layer_kinds():
    kinds = make_spec(**GEMMA_3_27B).layer_kinds
    assert kinds.count(LayerKind.SLIDING) == 52 and kinds.count(LayerKind.FULL) == 10
    assert kinds[5] is LayerKind.FULL and kinds[0] is LayerKind.SLIDING and kinds[61] is LayerKind.SLIDING


def test_paging_rounds_each_layer_up_to_blocks():
    # 1000 tokens in 16-token blocks: 63 blocks = 1008 slots per layer
    e = est(LLAMA_31_8B, 1000, batch=3, block_size=16)
    assert e.kv_bytes_total == 3 * 1008 * 131072
    assert e.paging_bytes == 3 * 8 * 131072


def test_paged_sliding_window_reserves_one_block_more():
    # Gemma-3 at 32k, 16-token blocks: a 1,024-token window straddles ceil(1023/16)+1 = 65 blocks
    e = est(GEMMA_3_27B, 32768, block_size=16)
    assert e.kv_bytes_total == (10 * 32768 + 52 * 65 * 16) * 8192
    assert e.paging_bytes == 52 * 16 * 8192


def test_paged_chunk_aligned_to_blocks_needs_no_extra_block():
    e = est(LLAMA_4_SCOUT, 131072, block_size=16)
    assert e.kv_bytes_total == (12 * 131072 + 36 * 8192) * 4096


def test_tp_replicates_kv_heads_when_fewer_than_ranks():
    # 8 KV heads over 16 ranks: each rank keeps one head, so the cluster holds 16 heads' worth
    e = est(LLAMA_31_8B, 4096, tp=16)
    per_rank = 4096 * 32 * 1 * 128 * 2 * 2
    assert e.kv_bytes_per_rank == per_rank
    assert e.kv_bytes_total == 16 * per_rank
    assert e.replication_bytes == 16 * per_rank - 4096 * 131072


def test_tp_splits_kv_heads():
    e = est(LLAMA_31_8B, 4096, tp=4)
    assert e.kv_bytes_per_rank == 4096 * 32 * 2 * 128 * 2 * 2
    assert e.kv_bytes_total == 4096 * 131072 and e.replication_bytes == 0


def test_mla_latent_is_replicated_on_every_rank():
    e = est(DEEPSEEK_V3, 4096, tp=8)
    assert e.kv_bytes_per_rank == 4096 * 61 * 576 * 2
    assert e.kv_bytes_total == 8 * 4096 * 61 * 576 * 2


def test_state_layers_split_over_ranks():
    e = est(JAMBA, 1024, tp=2)
    state = 28 * (8192 * 3 + 8192 * 16) * 2
    attention = 4 * 1024 * 8 * 128 * 2 * 2
    assert e.kv_bytes_total == attention + state
    assert e.kv_bytes_per_rank == (attention + state) // 2


@pytest.mark.parametrize(
    "layers, stages, expected",
    [(61, 4, [15, 15, 16, 15]), (32, 4, [8, 8, 8, 8]), (80, 3, [27, 27, 26]), (62, 5, [12, 12, 13, 13, 12])],
)
def test_pp_partition_follows_vllm(layers, stages, expected):
    assert pp_partition(layers, stages) == expected


def test_pp_reports_the_largest_stage():
    e = est(DEEPSEEK_V3, 1000, pp=4)
    assert list(e.layers_per_stage) == [15, 15, 16, 15]
    assert e.kv_bytes_per_rank == 16 * 1000 * 576 * 2
    assert e.kv_bytes_total == 61 * 1000 * 576 * 2


def test_different_k_and_v_head_dims():
    e = est(dict(head_dim=192, v_head_dim=128), 10)
    assert e.kv_bytes_per_token == 4 * 2 * (192 + 128) * 2


def test_kv_shared_layers_hold_nothing():
    e = est(dict(num_kv_shared_layers=2), 10)
    assert e.kv_bytes_per_token == 2 * 2 * 16 * 2 * 2


def test_quantisation_overhead_is_named():
    e = est(LLAMA_31_8B, 1, dtype="q8_0")
    # 2 fp16 scale bytes per 32 values: 32 layers * 8 heads * 2 (K, V) * 4 groups * 2 B
    assert e.quantisation_overhead_bytes_per_token == 32 * 8 * 2 * 4 * 2


def test_group_padding_counts_a_whole_group():
    # head_dim 80 in q8_0: 3 blocks of 32 (16 values of padding) = 102 bytes per vector
    e = est(dict(head_dim=80), 1, dtype="q8_0")
    assert e.kv_bytes_per_token == 4 * 2 * 2 * 3 * 34


def test_state_dtype_flag():
    spec = make_spec(**JAMBA)
    e = estimate_cache(spec, context=1, kv_format=parse_format_pair("bf16", "bf16"), state_format=parse_format("fp32"))
    assert e.by_kind[-1].state_bytes_per_sequence_per_layer == (8192 * 3 + 8192 * 16) * 4


@pytest.mark.parametrize(
    "arch, kw, message",
    [
        (LLAMA_31_8B, dict(tp=3), "--tensor-parallel-size 3 does not divide llama-3.1-8b's 32 attention heads"),
        (dict(num_attention_heads=6, num_key_value_heads=6, hidden_size=96), dict(tp=4), "--tensor-parallel-size 4 does not divide tiny's 6 attention heads"),
        (dict(num_attention_heads=12, num_key_value_heads=3, hidden_size=96), dict(tp=4), "--tensor-parallel-size 4 is not a multiple of tiny's 3 KV heads"),
        (dict(num_attention_heads=24, num_key_value_heads=6, hidden_size=96), dict(tp=4), "does not divide tiny's 6 KV heads"),
        (LLAMA_31_8B, dict(pp=40), "--pipeline-parallel-size 40 is larger than the model's 32 layers"),
        (LLAMA_31_8B, dict(block_size=0), "--block-size must be a positive number of tokens, got 0"),
        (DEEPSEEK_V3, dict(), "K and V cannot take different formats"),
    ],
)
def test_impossible_requests(arch, kw, message):
    dtype = "q8_0/q4_0" if arch is DEEPSEEK_V3 else "bf16"
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        est(arch, 100, dtype=dtype, **kw)


def test_sweep_layout_is_reused():
    spec = make_spec(**LLAMA_31_8B)
    layout = CacheLayout(spec, parse_format_pair("bf16", "bf16"))
    assert [layout.at(c, 1).kv_bytes_per_sequence for c in (1, 2, 3)] == [131072, 2 * 131072, 3 * 131072]


@pytest.mark.parametrize("name, values, expected", [
    # 4-bit values, 2 per byte; a scale (and a zero point unless _sym) per group in the named float width
    ("int4_g32_fp16", 64, 2 * (16 + 2 * 2)),  # 2 groups x (16 B data + fp16 scale and zero point)
    ("int4_g32_bf16_sym", 64, 2 * (16 + 2)),
    ("int4_g32_fp32", 64, 2 * (16 + 2 * 4)),
    ("int4_g32_fp32_sym", 65, 3 * (16 + 4)),  # 65 values: a third, padded group
    ("int4", 128, 2 * (32 + 2 * 2)),  # defaults: groups of 64, fp16, asymmetric
    ("int2_g16_sym", 16, 4 + 2),  # 16 2-bit values = 4 B
])
def test_grouped_int_formats_bytes(name, values, expected):
    assert parse_format(name).bytes_for(values) == expected


@pytest.mark.parametrize("name, values, expected", [
    ("fp8", 128, 128),  # one byte per value; the per-tensor scale lives outside the cache
    # NVFP4: 16-value blocks of 4-bit values (8 B) with one FP8 E4M3 scale (1 B) each; vLLM's
    # nvfp4_kv_cache_full_dim(D) = D / 2 + D / 16 (engine-rules.md §1.1)
    ("nvfp4", 128, 128 // 2 + 128 // 16),
    ("nvfp4", 24, 2 * (8 + 1)),  # 24 values: a second, padded block
])
def test_fixed_formats_bytes(name, values, expected):
    assert parse_format(name).bytes_for(values) == expected


def test_quantisation_overhead_per_token():
    spec = make_spec(**LLAMA_31_8B)
    # fp8: 8 bits, one byte per value, nothing beside the values
    assert parse_format("fp8").bits == 8
    assert CacheLayout(spec, parse_format_pair("fp8", "bf16")).quantisation_overhead_bytes_per_token == 0
    # q8_0: an fp16 scale per 32 values; a token holds 32 layers x 8 heads x (128 + 128) values = 2,048 per layer,
    # 64 groups per layer: 64 x 2 B x 32 layers = 4,096 B beside the values
    assert CacheLayout(spec, parse_format_pair("q8_0", "bf16")).quantisation_overhead_bytes_per_token == 4096


@pytest.mark.parametrize("context, batch, message", [
    (0, 1, "--context must be at least 1 token, got 0"),
    (1, 0, "--batch must be at least 1 sequence, got 0"),
])
def test_a_layout_refuses_an_empty_point(context, batch, message):
    layout = CacheLayout(make_spec(), parse_format_pair("bf16", "bf16"))
    with pytest.raises(InputError) as exc:
        layout.at(context, batch)
    assert exc.value.message == message
    assert layout.at(1, 1).kv_bytes_total == 4 * 2 * 16 * 2 * 2  # 4 layers x 2 heads x (16 + 16) x 2 B
