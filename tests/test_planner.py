"""Capacity, latency and cost: cases worked by hand from vLLM's rules (engine-rules.md §1)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvplan.model.formats import parse_format_pair
from kvplan.plan.planner import Engine, GPUFigures, Planner, PlanOptions, weight_bytes

from conftest import make_spec

H100_SXM = GPUFigures("h100-sxm", 81559 * 2**20, 3350.0, 989.0, 1979.0, 3.0)

LLAMA_31_8B = dict(name="llama-3.1-8b", num_parameters=8_030_261_248, hidden_size=4096, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                   intermediate_size=14336, max_position_embeddings=131072)
GEMMA_3 = dict(name="gemma-3-27b", num_parameters=27 * 10**9, hidden_size=5376, num_hidden_layers=62,
               num_attention_heads=32, num_key_value_heads=16, head_dim=128, vocab_size=262208,
               sliding_window=1024, layer_pattern=[{"sliding_attention": 5}, {"full_attention": 1}],
               max_position_embeddings=131072)
GPT_OSS_120B = dict(name="gpt-oss-120b", num_parameters=117 * 10**9, hidden_size=2880, num_hidden_layers=36,
                    num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088,
                    sliding_window=128, layer_pattern=[{"sliding_attention": 1}, {"full_attention": 1}],
                    max_position_embeddings=131072)
JAMBA = dict(name="jamba-v0.1", num_parameters=51 * 10**9, hidden_size=4096, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=65536, mamba_d_state=16, mamba_d_conv=4,
             mamba_expand=2, layer_pattern=[{"mamba": 4}, {"full_attention": 1}, {"mamba": 3}])


def planner(arch, gpu, **opts):
    """The planner under vLLM 0.10's pool rules, which these tests work by hand (engine-rules.md §1; 0.32's
    are tests/test_vllm_versions.py's)."""
    from kvplan.engines.vllm_rules import VllmRules

    opts.setdefault("vllm_rules", VllmRules(version="0.10"))
    spec = make_spec(**arch)
    return Planner(spec, gpu, parse_format_pair(opts.pop("dtype", "bf16"), spec.dtype), PlanOptions(**opts))


def exact_budget_gpu(weights: int, kv_budget: int, bandwidth=1000.0, tflops=1e9, usd=2.0) -> GPUFigures:
    """A GPU whose memory is exactly the weights plus `kv_budget` (util 1, no activations)."""
    return GPUFigures("test-gpu", weights + kv_budget, bandwidth, tflops, None, usd)


# B = max_num_batched_tokens = 8192 given: the worked window examples below take it (vLLM's default on an H100; a test
# GPU's own default would follow its memory, vllm_flags.batch_defaults)
NO_OVERHEAD = dict(gpu_memory_utilization=1.0, activation_bytes=0, non_torch_bytes=0, max_num_batched_tokens=8192)


def test_llama_8b_on_h100_matches_vllm_arithmetic():
    plan = planner(LLAMA_31_8B, H100_SXM, context=32768, batch=16).plan()
    usable = math.ceil(81559 * 2**20 * 9 / 10)  # 76,968,728,986
    weights = 8_030_261_248 * 2
    # profile-run estimate: 8192 tokens x (2 x 14336 + 4 x 4096) x 2 B + 1024 x 128256 x 4 B logits
    # (vLLM 0.32 arg_utils.py get_batch_defaults, vllm serve on a >= 70 GiB card that is not an A100:
    # max_num_batched_tokens 8192, max_num_seqs 1024)
    activations = 8192 * (2 * 14336 + 4 * 4096) * 2 + 1024 * 128256 * 4
    budget = usable - weights - activations - 512 * 2**20
    assert plan.kv_budget_bytes_per_gpu == budget == 59_107_801_498
    page_set = 32 * 16 * 8 * 128 * 2 * 2  # 32 layers x one 16-token block: 2 MiB
    assert plan.vllm_num_blocks == budget // page_set == 28184
    assert (plan.vllm_groups, plan.vllm_padding_layers) == (1, 0)  # one group of all 32 layers, nothing padded
    assert plan.vllm_kv_cache_tokens == 28184 * 16
    assert plan.vllm_max_concurrency == round(28184 / (32768 // 16), 2) == 13.76
    assert plan.max_concurrent_sequences == 13
    assert not plan.fits and plan.shortfall_bytes == 16 * 2048 * page_set - budget
    assert "GPU KV cache size: 450,944 tokens" in plan.vllm_log
    assert "Maximum concurrency for 32,768 tokens per request: 13.76x" in plan.vllm_log


def test_gemma3_hybrid_groups_and_padding():
    # 10 full + 52 sliding layers; page = 16 tokens x 16 heads x 128 x 2 (K,V) x 2 B = 131,072 B
    page = 16 * 16 * 128 * 2 * 2
    group_size = 10  # the fewest layers of a type (52 >= 1.5 x 10)
    budget = 100_000 * page * group_size + 5
    gpu = exact_budget_gpu(2 * 27 * 10**9, budget)
    plan = planner(GEMMA_3, gpu, context=32768, batch=1, **NO_OVERHEAD).plan()
    assert plan.vllm_num_blocks == 100_000
    assert plan.vllm_groups == 1 + 6  # one full group, ceil(52 / 10) = 6 sliding groups
    assert plan.vllm_padding_layers == 6 * 10 - 52
    assert plan.vllm_kv_cache_tokens == (100_000 // 7) * 16
    full_blocks = 32768 // 16
    sliding_blocks = math.ceil(min(1024 - 1 + 8192, 32768) / 16) + 1  # window - 1 + max_num_batched_tokens, +1 block
    assert plan.vllm_max_concurrency == round(100_000 / (full_blocks + 6 * sliding_blocks), 2)
    assert plan.max_concurrent_sequences == 100_000 // (full_blocks + 6 * sliding_blocks)
    assert "Add 8 padding layers, may waste at most 11.43% KV cache memory" in plan.vllm_log


@pytest.mark.parametrize("batched, sliding_blocks", [(8192, 512 + 1), (2048, math.ceil((128 - 1 + 2048) / 16) + 1)])
def test_gpt_oss_two_groups(batched, sliding_blocks):
    # 18 sliding + 18 full; page = 16 x 8 heads x 64 x 2 x 2 = 32,768 B; group_size 18 (equal counts)
    page = 16 * 8 * 64 * 2 * 2
    gpu = exact_budget_gpu(2 * 117 * 10**9, 10_000 * page * 18)
    plan = planner(GPT_OSS_120B, gpu, context=8192, batch=1, **{**NO_OVERHEAD, "max_num_batched_tokens": batched}).plan()
    assert plan.vllm_num_blocks == 10_000 and plan.vllm_groups == 2 and plan.vllm_padding_layers == 0
    assert plan.vllm_kv_cache_tokens == 5_000 * 16
    assert plan.max_concurrent_sequences == 10_000 // (8192 // 16 + sliding_blocks)


def test_jamba_attention_block_grows_to_hold_the_mamba_state():
    # state page = (8192 x 3 + 8192 x 16) x 2 B = 311,296; attention = 8 x 128 x 2 x 2 = 4,096 B per token
    # block = 16 x ceil(311296 / (16 x 4096)) = 80 tokens; page = 80 x 4096 = 327,680 B
    page = 80 * 4096
    gpu = exact_budget_gpu(2 * 51 * 10**9, 1_000 * page * 4)
    plan = planner(JAMBA, gpu, context=8192, batch=1, **NO_OVERHEAD).plan()
    assert plan.vllm_num_blocks == 1_000
    assert plan.vllm_groups == 1 + 7  # 4 attention layers; 28 Mamba layers in 7 groups of 4
    per_request = math.ceil(8192 / 80) + 7
    assert plan.max_concurrent_sequences == 1_000 // per_request
    # each of the 7 Mamba groups holds one block per request (MambaSpec, mamba_cache_mode "none"):
    # 1,000 / (103 + 7) = 9.09x; without those 7 blocks it would read 1,000 / 103 = 9.71x
    assert plan.vllm_max_concurrency == 9.09
    # "GPU KV cache size" = (num_blocks // 8 groups) x the smallest group block: the attention block of
    # 80, the Mamba groups' block being max_model_len = 8,192 (HybridAttentionMambaModelConfig, prefix
    # caching off: cache_config.mamba_block_size = model_config.max_model_len)
    assert plan.vllm_kv_cache_tokens == (1_000 // 8) * 80 == 10_000
    # at a context shorter than the attention block, the Mamba block (64 tokens) is the smallest
    short = planner(JAMBA, gpu, context=64, batch=1, **NO_OVERHEAD).plan()
    assert short.vllm_kv_cache_tokens == (1_000 // 8) * 64 == 8_000


def test_a_mamba_only_model_pages_one_block_of_max_model_len_tokens_per_request():
    """vLLM (vllm/model_executor/models/config.py MambaModelConfig.verify_and_update_config, prefix caching
    off): cache_config.mamba_block_size = max_model_len, which MambaBase.get_kv_cache_spec gives MambaSpec
    as its block_size; "GPU KV cache size" = num_blocks x that block (one group)."""
    mamba_only = dict(JAMBA, name="mamba-only", layer_pattern=[{"mamba": 1}])
    page = (8192 * 3 + 8192 * 16) * 2  # one layer's state: d_inner x (d_conv - 1 + d_state) x 2 B = 311,296
    gpu = exact_budget_gpu(2 * 51 * 10**9, 1_000 * 32 * page)
    plan = planner(mamba_only, gpu, context=8192, batch=1, **NO_OVERHEAD).plan()
    assert (plan.vllm_num_blocks, plan.vllm_groups) == (1_000, 1)
    assert plan.vllm_kv_cache_tokens == 1_000 * 8192
    assert "GPU KV cache size: 8,192,000 tokens" in plan.vllm_log
    assert plan.vllm_max_concurrency == 1_000  # one block per request
    assert not any("attention block size" in n for n in plan.notes)


def test_ideal_engine_counts_exact_tokens():
    per_seq = 1000 * 32 * 8 * 128 * 2 * 2
    gpu = exact_budget_gpu(weight_bytes(8_030_261_248, "bf16"), 7 * per_seq + 123)
    plan = planner(LLAMA_31_8B, gpu, context=1000, batch=7, engine=Engine.ideal, **NO_OVERHEAD).plan()
    assert plan.block_size == 1 and plan.max_concurrent_sequences == 7 and plan.fits
    assert plan.vllm_num_blocks is None


def test_decode_roofline_and_cost_arithmetic():
    gpu = exact_budget_gpu(2 * 10**9, 10**12, bandwidth=1000.0, tflops=1e9, usd=3.6)
    spec_arch = dict(LLAMA_31_8B, num_parameters=10**9, vocab_size=32000)
    plan = planner(spec_arch, gpu, context=1000, batch=4, engine=Engine.ideal, bandwidth_efficiency=1.0, **NO_OVERHEAD).plan()
    kv = 4 * 1000 * 131072
    # the untied input embedding (32,000 x 4,096 bf16) is a lookup: a step reads one 8 KiB row per token
    table, row = 32000 * 4096 * 2, 4096 * 2
    read = 2 * 10**9 - table + 4 * row
    step = (read + kv) / 1e12  # bytes / (1000 GB/s x 1.0)
    assert plan.decode_bytes_per_step == read + kv
    assert plan.decode_step_s == pytest.approx(step, rel=1e-12)
    assert plan.decode_bound == "memory"
    assert plan.tokens_per_s == pytest.approx(4 / step)
    # cost at the largest batch that fits: $3.6/h = $0.001/s
    big = plan.cost_batch
    big_step = (2 * 10**9 - table + min(big, 32000) * row + big * 1000 * 131072) / 1e12
    assert plan.usd_per_million_output_tokens == pytest.approx(0.001 / (big / big_step) * 1e6)


def test_weights_split_over_pipeline_stages():
    spec = make_spec(**LLAMA_31_8B)
    plan = Planner(spec, H100_SXM, parse_format_pair("bf16", "bf16"), PlanOptions(context=1024, pp=2, tp=2)).plan()
    embed = 128256 * 4096
    body = 8_030_261_248 - 2 * embed
    assert [s.weights_bytes for s in plan.stages] == [(2 * (body // 2) + 2 * embed) // 2] * 2
    assert plan.gpus == 4


def test_a_model_that_cannot_hold_one_request_says_so():
    gpu = exact_budget_gpu(2 * 8_030_261_248, 100 * 2**20)
    plan = planner(LLAMA_31_8B, gpu, context=131072, batch=1, **NO_OVERHEAD).plan()
    assert not plan.fits and plan.max_concurrent_sequences == 0
    longest = plan.max_context_tokens
    assert 0 < longest < 131072
    assert any(line.startswith("ValueError: To serve at least one request") and f"maximum model length is {longest}" in line
               for line in plan.vllm_log)
    assert any(s.startswith("--kv-cache-dtype fp8 fits") or s.startswith(f"--context {longest}") for s in plan.suggestions)


VLLM_LONG_WARNING = (
    "VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution. If the model uses relative position encoding "
    "(RoPE), positions exceeding derived_max_model_len lead to nan. If the model uses absolute position encoding, "
    "positions exceeding derived_max_model_len will cause a CUDA array out-of-bounds error."
)


def vllm_too_long(context: int, derived: str) -> str:
    """vllm/config/model.py _get_and_verify_max_len's ValueError, as ModelConfig validation prints it."""
    return (f"Value error, User-specified max_model_len ({context}) is greater than the derived max_model_len "
            f"(max_position_embeddings={derived} or model_max_length=None in model's config.json). To allow "
            f"overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. {VLLM_LONG_WARNING}")


def test_vllm_refuses_a_context_past_the_model_before_profiling_memory():
    """1,048,576 > 131,072: vLLM stops at config time, so its log is that refusal and nothing about memory."""
    plan = planner(LLAMA_31_8B, H100_SXM, context=1048576).plan()
    assert plan.vllm_log == [vllm_too_long(1048576, "131072.0")]  # x RoPE scaling factor 1.0: a float
    assert any(n.startswith("vLLM refuses --context 1,048,576 at start-up") for n in plan.notes)
    # the memory-based figures stay, separately: the pool still holds 28,184 x 16 = 450,944 tokens (the blocks of
    # test_llama_8b_on_h100_matches_vllm_arithmetic); one sequence of the model's whole 131,072-token window fits
    assert plan.vllm_kv_cache_tokens == 450_944 and plan.max_context_tokens == 131072
    assert plan.suggestions == ["--context 131072 is the longest that fits 1 sequence"]  # no "--tp 4 fits ..."


def test_at_the_models_length_vllm_starts():
    plan = planner(LLAMA_31_8B, H100_SXM, context=131072).plan()
    assert plan.vllm_log[0].startswith("Available KV cache memory")
    assert planner(LLAMA_31_8B, H100_SXM, context=131072, engine=Engine.ideal).plan().vllm_log == []


@pytest.mark.parametrize(
    "model_type, derived",
    [("llama", "4096.0"), (None, "4096.0"), ("gemma3", "4096"), ("gemma3_text", "4096"), ("gpt2", "4096"),
     ("jamba", "4096")],
)
def test_the_derived_length_prints_as_vllm_prints_it(model_type, derived):
    """A RoPE model's length is multiplied by its scaling factor (a float); Gemma-3 skips that, non-RoPE models have none."""
    from kvplan.engines.vllm_rules import max_model_len_refusal

    spec = make_spec(max_position_embeddings=4096, model_type=model_type)
    assert max_model_len_refusal(spec, 4096) is None
    assert max_model_len_refusal(spec, 4097) == vllm_too_long(4097, derived)
    assert max_model_len_refusal(make_spec(), 10**7) is None  # no max_position_embeddings: nothing to refuse


def test_shared_prefix_saves_gpus():
    p = planner(LLAMA_31_8B, H100_SXM, context=8192, batch=1, prompt_tokens=6000, output_tokens=500,
                requests_per_s=50.0, shared_prefix_tokens=4000)
    plan = p.plan()
    assert plan.gpus_needed is not None and plan.gpus_needed_without_prefix_sharing is not None
    assert plan.gpus_needed < plan.gpus_needed_without_prefix_sharing


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([LLAMA_31_8B, GEMMA_3, GPT_OSS_120B, JAMBA]),
    st.sampled_from([Engine.vllm, Engine.ideal]),
    st.integers(1, 64),
    st.integers(10**9, 60 * 10**9),
)
def test_max_context_fits_and_one_block_more_does_not(arch, engine, batch, budget):
    gpu = exact_budget_gpu(2 * make_spec(**arch).num_parameters, budget)
    p = planner(arch, gpu, context=4096, batch=batch, engine=engine, **NO_OVERHEAD)
    longest, why = p.max_context(batch)
    if longest == 0:
        assert p.max_sequences(1) < batch
        return
    assert p.max_sequences(longest) >= batch
    if why == "KV memory":
        assert p.max_sequences(longest + p.block_size) < batch
        assert p.max_sequences(longest + 1) < batch


@pytest.mark.parametrize("util", [0.0, -0.1, 1.5])
def test_utilisation_out_of_range(util):
    from kvplan.errors import InputError

    with pytest.raises(InputError, match=r"--gpu-memory-utilization .* must be in \(0, 1\]"):
        planner(LLAMA_31_8B, H100_SXM, context=10, gpu_memory_utilization=util)


# ------------------------------------------------------- the compute side of the roofline
# A tiny dense model on a GPU with all the bandwidth in the world, so every step is compute-bound:
# 4 layers, hidden 64, 4 heads of 16 (K and V dims 16 + 16 = 32), vocab 256, untied embeddings.
# body = 1,000,000 - 256 x 64 (embedding) - 256 x 64 (lm_head) = 967,232 parameters (2 FLOPs each per token)
# logits for one token: 2 x 256 x 64 = 32,768 FLOPs
TINY_DENSE = dict(num_parameters=1_000_000)
COMPUTE_GPU = GPUFigures("compute-gpu", 10**12, 10**9, 1.0, 2.0, 1.0)  # 1e18 B/s; 1e12 bf16 and 2e12 fp8 FLOP/s
EXACT = dict(bandwidth_efficiency=1.0, compute_efficiency=1.0, **NO_OVERHEAD)


def test_prefill_is_compute_bound_at_the_bf16_peak():
    p = planner(TINY_DENSE, COMPUTE_GPU, context=1000, **EXACT)
    # 100 prompt tokens: 2 x 967,232 x 100 + 32,768 (last token's logits) = 193,479,168 FLOPs;
    # attention: 4 layers x 2 x 4 heads x 32 x (1 + 2 + ... + 100 = 5,050 keys) = 5,171,200 FLOPs
    flops = 193_479_168 + 5_171_200
    assert p.prefill(100) == pytest.approx(flops / 1e12, rel=1e-12)
    # a cached prefix of 40 tokens: 60 new tokens' matmuls, attention of tokens 41..100 (5,050 - 820 = 4,230 keys)
    flops = 2 * 967_232 * 60 + 32_768 + 4 * 2 * 4 * 32 * 4_230
    assert p.prefill(100, cached_prefix=40) == pytest.approx(flops / 1e12, rel=1e-12)


def test_a_one_token_prefill_is_bound_by_reading_the_weights():
    # a GPU of 1 GB/s and 1e18 FLOP/s: one prompt token's ~2 MFLOP take 2e-12 s, but every weight is still read
    # once: 1,000,000 parameters x 2 B (bf16) / 1e9 B/s = 2 ms, the larger of the two
    gpu = GPUFigures("memory-gpu", 10**12, 1.0, 10**6, None, 1.0)
    p = planner(TINY_DENSE, gpu, context=1000, **EXACT)
    assert p.prefill(1) == pytest.approx(2_000_000 / 1e9, rel=1e-12)


def test_a_gpu_without_a_price_is_named_in_the_notes():
    plan = planner(TINY_DENSE, exact_budget_gpu(2_000_000, 10**9, usd=0.0), context=1000, **NO_OVERHEAD).plan()
    assert plan.max_concurrent_sequences > 0
    assert "no price for this GPU: give --usd-per-hour for costs" in plan.notes


def test_the_longest_context_when_the_batch_just_fits_at_one_token():
    # a batch of exactly as many sequences as fit at one token each still has a context (>= 1), not 0
    p = planner(TINY_DENSE, exact_budget_gpu(2_000_000, 4 * 2**20), context=1000, **NO_OVERHEAD)
    n = p.max_sequences(1)
    context, why = p.max_context(n)
    assert context >= 1 and p.max_sequences(context) >= n and p.max_sequences(context + 1) < n
    assert p.max_context(n + 1)[0] == 0


def test_a_shared_prefix_larger_than_the_pool_leaves_no_sequence():
    # make_spec: 4 layers x 2 KV heads x (16 + 16) x 2 B = 512 B per token; a 16-token block set 8,192 B.
    # A KV budget of exactly 10 block sets (vLLM's num_blocks = budget // 8,192 = 10).
    p = planner(TINY_DENSE, exact_budget_gpu(2_000_000, 10 * 8192), context=1000, **NO_OVERHEAD)
    assert p.plan().vllm_num_blocks == 10
    # a 144-token shared prefix takes 9 blocks; each request adds 16 tokens = 1 block of its own: (10 - 9) // 1
    assert p.max_sequences(160, 144) == 1
    # a 320-token prefix needs 20 blocks, more than the pool: no request fits, not one
    assert p.max_sequences(336, 320) == 0


def test_fp8_weights_run_at_the_fp8_peak_and_bf16_weights_never_do():
    flops = 193_479_168 + 5_171_200  # as above
    fp8 = planner(TINY_DENSE, COMPUTE_GPU, context=1000, weights_dtype="fp8", **EXACT)
    assert fp8.prefill(100) == pytest.approx(flops / 2e12, rel=1e-12)
    # a GPU without an FP8 figure: fp8 weights fall back to the bf16 peak
    no_fp8 = GPUFigures("no-fp8", 10**12, 10**9, 1.0, None, 1.0)
    assert planner(TINY_DENSE, no_fp8, context=1000, weights_dtype="fp8", **EXACT).prefill(100) == pytest.approx(
        flops / 1e12, rel=1e-12)
    # fp32 weights on the same GPU: 4 bytes per weight, the bf16 peak
    assert planner(TINY_DENSE, COMPUTE_GPU, context=1000, weights_dtype="fp32", **EXACT).prefill(100) == pytest.approx(
        flops / 1e12, rel=1e-12)


def test_a_compute_bound_decode_step():
    p = planner(TINY_DENSE, COMPUTE_GPU, context=1000, **EXACT)
    seconds, bound, _, flops = p.decode_step(3, 50)
    # per token: 2 x 967,232 + 32,768 (logits) + attention over 50 held tokens: 4 x 2 x 4 x 50 x 32 = 51,200
    assert flops == 3 * (1_934_464 + 32_768 + 51_200) == 6_055_296
    assert bound == "compute"
    assert seconds == pytest.approx(6_055_296 / 1e12, rel=1e-12)


def test_sliding_layers_attend_to_the_window_only():
    # 2 sliding (window 20) + 2 full layers
    arch = dict(TINY_DENSE, sliding_window=20, layer_pattern=[{"sliding_attention": 1}, {"full_attention": 1}])
    p = planner(arch, COMPUTE_GPU, context=1000, **EXACT)
    # prefill of 100: full layers 5,050 keys; sliding: 1 + ... + 20 then 80 x 20 = 210 + 1,600 = 1,810 keys
    attention = 2 * 2 * 4 * 32 * 5_050 + 2 * 2 * 4 * 32 * 1_810
    assert p.prefill(100) == pytest.approx((193_479_168 + attention) / 1e12, rel=1e-12)
    # at the window itself (20 tokens) both kinds attend to 1 + ... + 20 = 210 keys
    assert p.prefill(20) == pytest.approx((2 * 967_232 * 20 + 32_768 + 4 * 2 * 4 * 32 * 210) / 1e12, rel=1e-12)
    # decode at 50 held: the sliding layers read 20 of them
    _, _, _, flops = p.decode_step(1, 50)
    assert flops == 1_934_464 + 32_768 + 2 * 2 * 4 * 32 * 50 + 2 * 2 * 4 * 32 * 20


# ------------------------------------------------------- vLLM's groups: chunked attention, the 1.5x boundary
# make_spec's tiny model: 2 KV heads of 16 dims, bf16: one 16-token page = 16 x 2 x 16 x 2 (K, V) x 2 B = 2,048 B
TINY_PAGE = 16 * 2 * 16 * 2 * 2


@pytest.mark.parametrize("context, chunked_blocks", [
    # ChunkedLocalAttentionSpec: ceil(min(C + B, max_len) / bs), no +1 (a sliding window would add one):
    # ceil((1,000 + 8,192) / 16) = ceil(574.5) = 575 blocks
    (32768, 575),
    # a context shorter than chunk + batch: ceil(4,096 / 16) = 256
    (4096, 256),
])
def test_chunked_attention_blocks_per_request(context, chunked_blocks):
    # 8 layers: 6 chunked (chunk 1,000) + 2 full; group_size = 2 (6 >= 1.5 x 2): 1 full + 3 chunked groups
    arch = dict(num_hidden_layers=8, attention_chunk_size=1000, max_position_embeddings=32768,
                layer_pattern=[{"chunked_attention": 3}, {"full_attention": 1}])
    gpu = exact_budget_gpu(2 * 10**10, 100_000 * TINY_PAGE * 2)
    plan = planner(arch, gpu, context=context, **NO_OVERHEAD).plan()
    assert (plan.vllm_num_blocks, plan.vllm_groups, plan.vllm_padding_layers) == (100_000, 4, 0)
    assert plan.vllm_kv_cache_tokens == (100_000 // 4) * 16
    per_request = context // 16 + 3 * chunked_blocks  # full: 2,048 or 256 blocks
    assert plan.vllm_max_concurrency == round(100_000 / per_request, 2)
    assert plan.max_concurrent_sequences == 100_000 // per_request


def test_chunked_concurrency_figure():
    # the same model at 32,768 tokens, written out: 2,048 + 3 x 575 = 3,773 blocks; 100,000 / 3,773 = 26.504 -> 26.5
    # (with a sliding window's +1 it would be 3,776 blocks and 26.48)
    arch = dict(num_hidden_layers=8, attention_chunk_size=1000, max_position_embeddings=32768,
                layer_pattern=[{"chunked_attention": 3}, {"full_attention": 1}])
    gpu = exact_budget_gpu(2 * 10**10, 100_000 * TINY_PAGE * 2)
    assert planner(arch, gpu, context=32768, **NO_OVERHEAD).plan().vllm_max_concurrency == 26.5


@pytest.mark.parametrize("sliding, full, group_size, groups, padding", [
    # most = 3 is not below 1.5 x fewest = 3: group_size = the fewest (2); sliding 3 -> 2 groups (2 + 1, 1 pad)
    (3, 2, 2, 3, 1),
    # most = 5 < 1.5 x 4 = 6: group_size = the most (5); one group each, the full one padded by 1
    (5, 4, 5, 2, 1),
    # most = 6 = 1.5 x 4: group_size = 4; sliding 6 -> 2 groups of 3 (1 pad each)
    (6, 4, 4, 3, 2),
])
def test_vllm_group_size_at_the_one_and_a_half_boundary(sliding, full, group_size, groups, padding):
    arch = dict(num_hidden_layers=sliding + full, sliding_window=64, max_position_embeddings=4096,
                layer_pattern=[{"sliding_attention": sliding}, {"full_attention": full}])
    # a budget of exactly 1,000 block sets of group_size pages
    gpu = exact_budget_gpu(2 * 10**10, 1_000 * TINY_PAGE * group_size)
    plan = planner(arch, gpu, context=4096, **NO_OVERHEAD).plan()
    assert plan.vllm_num_blocks == 1_000  # a wrong group_size gives another count
    assert (plan.vllm_groups, plan.vllm_padding_layers) == (groups, padding)


# ------------------------------------------------------- weights one rank holds and reads, per stage
def test_stage_weights_with_tied_and_untied_embeddings():
    from kvplan.plan.planner import stage_weight_bytes

    # tiny model (hidden 64, vocab 256: a 16,384-parameter table), 4 layers, bf16
    tied = make_spec(num_parameters=1_000_000, tie_word_embeddings=True)  # body 1,000,000 - 16,384 = 983,616
    untied = make_spec(num_parameters=1_000_000)  # body 1,000,000 - 2 x 16,384 = 967,232
    # held, one stage: everything once (the tied table once, as the embedding)
    assert stage_weight_bytes(tied, [4], "bf16", 1) == [2_000_000]
    # read by a decode step of 3 tokens, one stage, tied: the lm_head reads the whole table anyway
    assert stage_weight_bytes(tied, [4], "bf16", 1, lookup_tokens=3) == [2 * 983_616 + 2 * 16_384] == [2_000_000]
    # untied: 3 rows of 64 of the embedding (384 B) and the whole lm_head (32,768 B)
    assert stage_weight_bytes(untied, [4], "bf16", 1, lookup_tokens=3) == [2 * 967_232 + 384 + 32_768]
    # two stages, tied: stage 0 looks 3 rows up; the last stage keeps its own copy of the table for the lm_head
    assert stage_weight_bytes(tied, [2, 2], "bf16", 1, lookup_tokens=3) == [983_616 + 384, 983_616 + 32_768]
    # ... held: the table on both stages; tp 3 rounds each rank's share up: 1,016,384 / 3 = 338,794.7
    assert stage_weight_bytes(tied, [2, 2], "bf16", 3) == [338_795, 338_795]
    # untied, two stages, held: the embedding on the first, the lm_head on the last
    assert stage_weight_bytes(untied, [2, 2], "bf16", 1) == [967_232 + 32_768, 967_232 + 32_768]


def test_moe_decode_reads_the_experts_a_batch_touches():
    from kvplan.plan.planner import decode_weight_fraction

    moe = make_spec(num_parameters=10**9, num_active_parameters=4 * 10**8, num_local_experts=8, num_experts_per_tok=2)
    # uniform routing, 8 experts, 2 per token: a batch of 2 leaves an expert untouched with (6/8)^2 = 0.5625,
    # so 0.4375 of them are read; the active parameters hold 2/8 already: (0.4375 - 0.25) / 0.75 = 0.25
    assert decode_weight_fraction(moe, 2) == pytest.approx(0.25, rel=1e-12)
    assert decode_weight_fraction(moe, 1) == 0.0  # one token reads only its own experts
    # 10 tokens: 1 - 0.75^10 = 0.943686...; (0.943686 - 0.25) / 0.75 = 0.924915...
    assert decode_weight_fraction(moe, 10) == pytest.approx((1 - 0.75**10 - 0.25) / 0.75, rel=1e-12)
    assert decode_weight_fraction(make_spec(), 10) == 0.0  # dense


@pytest.mark.parametrize("spare, fit", [(0, 7), (-1, 6)])
def test_ideal_engine_at_the_exact_boundary(spare, fit):
    # one sequence of 1,000 tokens: 1,000 x 32 layers x 8 heads x 128 x 2 (K, V) x 2 B; a budget of exactly 7 of them
    per_seq = 1000 * 32 * 8 * 128 * 2 * 2
    gpu = exact_budget_gpu(weight_bytes(8_030_261_248, "bf16"), 7 * per_seq + spare)
    plan = planner(LLAMA_31_8B, gpu, context=1000, batch=7, engine=Engine.ideal, **NO_OVERHEAD).plan()
    assert plan.max_concurrent_sequences == fit


def test_the_search_cap_without_max_position_embeddings():
    p = planner(dict(max_position_embeddings=None), H100_SXM, context=1000)
    assert p.context_limit() == (2**24, "kvplan's search cap of 16,777,216 tokens (the spec has no max_position_embeddings)")
    assert p.context_limit()[0] == 16_777_216


def test_weights_that_leave_no_room_suggest_a_bigger_gpu_not_a_context():
    # the GPU holds the bf16 weights of make_spec's 10**10 parameters and not one byte more
    plan = planner({}, exact_budget_gpu(2 * 10**10, 0), context=1000, engine=Engine.ideal, **NO_OVERHEAD).plan()
    assert plan.max_concurrent_sequences == 0 and not plan.fits
    assert plan.suggestions[-1] == ("at --tp 1 the weights alone leave no room for KV: use a larger GPU, more tp or "
                                    "a quantised --dtype")
    assert not any(s.startswith("--context") for s in plan.suggestions)


def test_headroom_at_a_one_byte_budget():
    # one sequence of 1,000 tokens of make_spec's model: 1,000 x 4 layers x 2 heads x 16 x 2 (K, V) x 2 B = 512,000 B
    plan = planner({}, exact_budget_gpu(2 * 10**10, 1), context=1000, engine=Engine.ideal, **NO_OVERHEAD).plan()
    assert plan.headroom_pct == (1 - 512_000) / 1 * 100 == -51_199_900.0
    assert planner({}, exact_budget_gpu(2 * 10**10, 0), context=1000, engine=Engine.ideal, **NO_OVERHEAD).plan().headroom_pct is None


@pytest.mark.parametrize("flag, opts", [
    ("--bandwidth-efficiency 0.0", dict(bandwidth_efficiency=0.0)),
    ("--bandwidth-efficiency 1.5", dict(bandwidth_efficiency=1.5)),
    ("--compute-efficiency 0.0", dict(compute_efficiency=0.0)),
    ("--gpu-memory-utilization 1.01", dict(gpu_memory_utilization=1.01)),
])
def test_efficiencies_outside_zero_to_one_are_refused(flag, opts):
    with pytest.raises(Exception, match=rf"^{flag} must be in \(0, 1\]$"):
        planner({}, H100_SXM, context=1000, **opts)
    # 1 itself is allowed
    planner({}, H100_SXM, context=1000, **{k: 1.0 for k in opts})


def test_an_expert_without_a_width_weighs_nothing():
    from kvplan.plan.planner import expert_weight_bytes

    assert expert_weight_bytes(make_spec(intermediate_size=None), "bf16") == 0  # no width given at all
    # gpt-oss-style expert, bf16: gate + up (2 x 32 x 64) and down (64 x 32) weights x 2 B
    moe = make_spec(num_parameters=10**9, num_active_parameters=10**8, num_local_experts=4, num_experts_per_tok=1,
                    moe_intermediate_size=32)
    assert expert_weight_bytes(moe, "bf16") == 3 * 32 * 64 * 2


@pytest.mark.parametrize("spare, fit", [(0, 3), (-1, 2)])
def test_ideal_engine_counts_mamba_state_per_sequence(spare, fit):
    # jamba at 1,000 tokens: 4 attention layers x 1,000 x (8 heads x 128 x 2 x 2 B = 4,096 B) = 16,384,000 B
    # + 28 Mamba layers x (d_conv - 1 + d_state = 19) x d_inner 8,192 x 2 B (bf16) = 8,716,288 B; 25,100,288 B per sequence
    per_seq = 4 * 1000 * 4096 + 28 * 19 * 8192 * 2
    gpu = exact_budget_gpu(2 * 51 * 10**9, 3 * per_seq + spare)
    plan = planner(JAMBA, gpu, context=1000, batch=3, engine=Engine.ideal, **NO_OVERHEAD).plan()
    assert plan.max_concurrent_sequences == fit


def test_state_layers_hold_no_kv_heads():
    from kvplan.model.layout import CacheLayout

    est = CacheLayout(make_spec(**JAMBA), parse_format_pair("auto", "bf16"), block_size=1).at(1000, 1)
    state = next(k for k in est.by_kind if k.kind == "state")
    assert (state.layers, state.kv_heads_per_rank, state.tokens_held, state.bytes_per_token_per_layer) == (28, 0, 0, 0)


def test_kv_sharing_layers_get_no_vllm_group():
    """vllm/v1/worker/gpu_model_runner.py get_kv_cache_spec: a layer with kv_sharing_target_layer_name
    is skipped ("KV cache management logic will act as this layer does not exist"). 2 full + 2 shared
    layers: one group of the 2 full layers; page = 16 tokens x 8 KV heads x 128 x 2 (K, V) x 2 B."""
    arch = dict(LLAMA_31_8B, name="shared-kv", num_hidden_layers=4, layer_pattern=None,
                layer_types=["full_attention", "full_attention", "kv_shared", "kv_shared"])
    page = 16 * 8 * 128 * 2 * 2  # 65,536
    gpu = exact_budget_gpu(weight_bytes(8_030_261_248, "bf16"), 1_000 * 2 * page)
    plan = planner(arch, gpu, context=1024, batch=1, **NO_OVERHEAD).plan()
    assert (plan.vllm_num_blocks, plan.vllm_groups, plan.vllm_padding_layers) == (1_000, 1, 0)
    assert plan.vllm_kv_cache_tokens == 1_000 * 16


def test_prefill_attention_counts_a_chunk_not_a_window():
    """A chunked layer's token attends within its own chunk (Llama 4's attention_chunk_size), not over a
    sliding window of the chunk's size: at 10 prompt tokens and chunk 4 that is 4 + 4 + 2 tokens of
    causal pairs, 10 + 10 + 3 = 23, against a sliding window's 1 + 2 + 3 + 4 + 6 x 4 = 34."""
    from kvplan.model.kinds import LayerKind
    from kvplan.model.layout import CacheLayout
    from kvplan.plan.planner import attention_flops_prefill

    spec = make_spec(layer_types=["chunked_attention", "full_attention", "sliding_attention", "full_attention"],
                     attention_chunk_size=4, sliding_window=4)  # head_dim 64 / 4 = 16
    layout = CacheLayout(spec, parse_format_pair("bf16", "bf16"))
    counts = {LayerKind.FULL: 2, LayerKind.SLIDING: 1, LayerKind.CHUNKED: 1}
    # 2 FLOPs x 4 heads x (16 K + 16 V) per pair; pairs: chunked 23, full 55 twice, sliding 34
    assert attention_flops_prefill(spec, counts, layout, 10, 1) == 2 * 4 * 32 * (23 + 2 * 55 + 34)
