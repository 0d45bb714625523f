"""ideal's and vllm's `capacity()` (kvplan.engines.ideal / vllm, the rule in kvplan.engines.vllm_rules.Pool),
worked by hand from vLLM's rules.

llama-3.1-8b: 32 layers x 8 KV heads x 128 head_dim x 2 (K, V) x 2 B (bf16) = 4,096 B per token per layer.
Budget (vllm/v1/worker/gpu_worker.py determine_available_memory): ceil(total x 0.9) - weights - activations -
non-torch. vLLM's page: 16 tokens of one layer = 65,536 B; a block id spans every layer of the group
(vllm/v1/core/kv_cache_utils.py: one group of 32 layers), 2 MiB.
"""

from __future__ import annotations

import pytest

from kvplan.engines import MemoryInputs, get
from kvplan.engines.options import engine_options
from kvplan.model.formats import parse_format_pair
from kvplan.sources.catalog import resolve_spec

GiB, MiB = 2**30, 2**20
USABLE = 85899345920 * 9 // 10  # 80 GiB x 0.9 = 77,309,411,328 B (exact)
BUDGET = USABLE - 16 * GiB - 1 * GiB - 512 * MiB  # 58,518,929,408 B


@pytest.fixture(scope="module")
def spec():
    return resolve_spec("llama-3.1-8b")


def capacity(spec, engine, context, batch=1, memory=None, **values):
    """The engine's capacity at --gpu-memory-utilization 0.9 unless given: these tests are about the pool's counting;
    the default share (0.92 under vLLM 0.32) is test_the_default_share_follows_the_vllm_version's."""
    pp = values.pop("pp", 1)
    values.setdefault("gpu_memory_utilization", 0.9)
    memory = memory or MemoryInputs("test-gpu", 80 * GiB, 16 * GiB, 512 * MiB, 1 * GiB, "given", "given")
    opts = engine_options(engine, "auto", values, pp=pp)
    return get(engine).capacity(spec, context, batch, opts, memory, ideal_format=parse_format_pair("auto", spec.dtype))


def test_vllm_counts_blocks_of_16_tokens_in_its_budget(spec):
    cap = capacity(spec, "vllm", 100)
    assert cap.kv_budget_bytes == BUDGET == 58_518_929_408
    blocks = BUDGET // (16 * 4096 * 32)  # 27,904 block ids of 2 MiB
    assert blocks == 27_904
    # ceil(100 / 16) = 7 blocks a request, from the blocks less vLLM 0.32's null block
    assert cap.max_concurrent_sequences == (blocks - 1) // 7 == 3_986
    # vLLM 0.32 get_kv_cache_capacity: int(27,904 / 7 x 100) = int(398,628.57...)
    assert cap.max_total_tokens == 398_628
    assert ("GPU KV cache size: 398,628 tokens, Maximum concurrency for 100 tokens per request: 3986.29x"
            in cap.log_lines)
    assert cap.max_context_tokens == 131_072  # 8,192 blocks at max_position_embeddings: it fits
    assert cap.settings == {"gpu_memory_utilization": 0.9, "block_size": 16, "vllm_version": "0.32",
                            "vllm_block_size": 16, "vllm_num_blocks": 27_904, "vllm_kv_cache_tokens": 398_628,
                            "vllm_max_concurrency": 3986.29, "vllm_starts": True, "vllm_refusal": None,
                            "vllm_estimated_max_model_len": None} and cap.fits


def test_ideal_counts_exactly_the_tokens_held(spec):
    cap = capacity(spec, "ideal", 100)
    assert cap.kv_budget_bytes == BUDGET
    assert cap.max_concurrent_sequences == BUDGET // (100 * 4096 * 32) == 4_464
    assert cap.max_total_tokens is None and cap.log_lines == ()


def test_the_tightest_pipeline_stage_decides(spec):
    memory = MemoryInputs("test-gpu", 80 * GiB, 10 * GiB, 512 * MiB, 1 * GiB, "given", "given",
                          stage_weights_bytes=(10 * GiB, 6 * GiB))
    cap = capacity(spec, "vllm", 100, memory=memory, pp=2)
    stage0 = USABLE - 10 * GiB - 1 * GiB - 512 * MiB  # 16 layers a stage: a block id is 1 MiB
    assert cap.kv_budget_bytes == stage0 and cap.weights_bytes == 10 * GiB
    assert cap.max_concurrent_sequences == (stage0 // (16 * 4096 * 16)) // 7 == 8_850


def test_gpu_memory_utilization_is_read(spec):
    cap = capacity(spec, "vllm", 100, gpu_memory_utilization=0.5)
    assert cap.kv_budget_bytes == 80 * GiB // 2 - 16 * GiB - 1 * GiB - 512 * MiB


@pytest.mark.parametrize("engine, values, share", [
    ("vllm", {}, 0.92),  # vllm/config/cache.py at 0.32: CacheConfig.gpu_memory_utilization = Field(default=0.92)
    ("vllm", {"vllm_version": "0.10"}, 0.9),  # engine-rules.md §1 "Defaults" (001cabc)
    ("ideal", {}, 0.92),  # ideal applies vLLM's budget rule at the default version
])
def test_the_default_share_follows_the_vllm_version(spec, engine, values, share):
    memory = MemoryInputs("test-gpu", 80 * GiB, 16 * GiB, 512 * MiB, 1 * GiB, "given", "given")
    opts = engine_options(engine, "auto", values)
    cap = get(engine).capacity(spec, 100, 1, opts, memory, ideal_format=parse_format_pair("auto", spec.dtype))
    # ceil(80 GiB x 0.92) = ceil(79,027,398,246.4) = 79,027,398,247; 80 GiB x 0.9 = 77,309,411,328 (exact)
    usable = {0.92: 79_027_398_247, 0.9: USABLE}[share]
    assert cap.settings["gpu_memory_utilization"] == share
    assert cap.kv_budget_bytes == usable - 16 * GiB - 1 * GiB - 512 * MiB
