"""vLLM's serving flags (kvplan.engines.vllm_flags): batch defaults by GPU and version, --max-num-seqs's cap.

Expected values are read from vLLM's source by hand: vllm 0.32 `vllm/engine/arg_utils.py`
`EngineArgs.get_batch_defaults` (OPENAI_API_SERVER column) and
`_set_default_max_num_seqs_and_batched_tokens_args`; 0.10: PRs #17073 and #17885 (no >= 160 GiB row).
"""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli
from kvplan.engines.vllm_flags import batch_defaults, scheduler_limits, weights_dtype

GIB = 2**30
MIB = 2**20


@pytest.mark.parametrize("memory, name, version, expected", [
    # H100 SXM: NVML 81,559 MiB = 79.65 GiB >= 70, no "a100": 8192 tokens, 1024 sequences
    (81559 * MIB, "NVIDIA H100 80GB HBM3", "0.32", (8192, 1024)),
    # exactly 70 GiB is in (>=), one byte less is not
    (70 * GIB, "x", "0.32", (8192, 1024)),
    (70 * GIB - 1, "x", "0.32", (2048, 256)),
    # A100 80GB: 81,920 MiB >= 70 GiB, but its name holds "a100" (PR #17885): the small row
    (81920 * MIB, "NVIDIA A100-SXM4-80GB", "0.32", (2048, 256)),
    # the name test is case-blind (vLLM lowers it)
    (81920 * MIB, "nvidia a100 80gb pcie", "0.32", (2048, 256)),
    # L40S: 46,068 MiB < 70 GiB
    (46068 * MIB, "NVIDIA L40S", "0.32", (2048, 256)),
    # H200: 143,771 MiB = 140.4 GiB: >= 70, < 160
    (143771 * MIB, "NVIDIA H200", "0.32", (8192, 1024)),
    # B200: 183,359 MiB = 179.06 GiB >= 160: 16384 / 1024 in 0.32, 8192 / 1024 in 0.10
    (183359 * MIB, "NVIDIA B200", "0.32", (16384, 1024)),
    (183359 * MIB, "NVIDIA B200", "0.10", (8192, 1024)),
    (160 * GIB, "x", "0.32", (16384, 1024)),
    (160 * GIB - 1, "x", "0.32", (8192, 1024)),
    # an A100 of >= 160 GiB does not exist, but the 160 row comes before the name test in 0.32
    (160 * GIB, "a100", "0.32", (16384, 1024)),
])
def test_batch_defaults(memory, name, version, expected):
    assert batch_defaults(memory, name, version) == expected


def test_scheduler_limits_cap_the_defaults_by_each_other():
    h100 = 81559 * MIB
    # a defaulted token budget is at most max_num_seqs x max_model_len: 1024 x 4 = 4096 < 8192
    assert scheduler_limits(h100, "h100", 4) == (4096, 1024)
    # 1024 x 8 = 8192: no cap
    assert scheduler_limits(h100, "h100", 8) == (8192, 1024)
    # a given token budget below the default max_num_seqs caps the defaulted max_num_seqs: min(1024, 512)
    assert scheduler_limits(h100, "h100", 8192, max_num_batched_tokens=512) == (512, 512)
    # a given max_num_seqs caps the defaulted token budget: min(16 x 100, 8192) = 1600
    assert scheduler_limits(h100, "h100", 100, max_num_seqs=16) == (1600, 16)
    # both given: kept as given
    assert scheduler_limits(h100, "h100", 4, max_num_batched_tokens=100, max_num_seqs=300) == (100, 300)


def test_vllm_dtype_spellings():
    assert [weights_dtype(w) for w in ("auto", "half", "float16", "bfloat16", "float", "float32", "bf16", None)] == [
        None, "fp16", "fp16", "bf16", "fp32", "fp32", "bf16", None]


def test_estimate_prices_at_max_num_seqs_not_at_what_memory_holds(capsys):
    """Issue #14: `estimate llama-3.1-8b --gpu h100-sxm -c 256` priced at batch 1,773."""
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "256", "-f", "json")
    data = json.loads(r.stdout)
    assert data["max_num_seqs"] == 1024 and data["cost_batch"] == 1024
    assert data["max_concurrent_sequences"] > 1024
    assert data["assumptions"]["max_num_seqs"] == 1024 and data["assumptions"]["max_num_batched_tokens"] == 8192
    assert any(n.startswith(f"KV memory holds {data['max_concurrent_sequences']:,} sequences, but max_num_seqs 1,024 "
                            "(vLLM's default on this GPU)") for n in data["notes"])
    text = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "256").stdout
    assert f"max_num_seqs 1,024 run a step at most" in " ".join(text.split())


def test_a_given_max_num_seqs_caps_and_sizes_the_profile_run(capsys):
    args = ("estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "256", "-f", "json")
    small = json.loads(run_cli(capsys, *args, "--max-num-seqs", "64").stdout)
    default = json.loads(run_cli(capsys, *args).stdout)
    assert small["max_num_seqs"] == 64 and small["cost_batch"] == 64
    # the sampler's fp32 logits in the profile run: (1024 - 64) x 128,256 vocab x 4 B fewer activation bytes
    assert default["activation_bytes_per_gpu"] - small["activation_bytes_per_gpu"] == (1024 - 64) * 128256 * 4
    assert small["assumptions"]["scheduler_limits"].endswith("; --max-num-seqs given")


def test_a_batch_above_max_num_seqs_runs_at_max_num_seqs_and_says_so(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "256", "-b", "100",
                "--max-num-seqs", "10", "-f", "json")
    data = json.loads(r.stdout)
    assert data["cost_batch"] == 10 and data["fits"] is True
    one = json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "256", "-b", "10",
                             "--max-num-seqs", "10", "-f", "json").stdout)
    assert data["tokens_per_s"] == one["tokens_per_s"]  # batch 100 runs as 10
    assert ("--batch 100 is more than max_num_seqs 10 (--max-num-seqs): vLLM runs at most 10 sequences a step and "
            "queues the rest: throughput is at batch 10") in data["notes"]


def test_the_defaults_follow_the_gpu(capsys):
    a100 = json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "a100-80gb-sxm", "-f", "json").stdout)
    assert (a100["assumptions"]["max_num_batched_tokens"], a100["max_num_seqs"]) == (2048, 256)
    b200 = json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "b200", "-f", "json").stdout)
    assert (b200["assumptions"]["max_num_batched_tokens"], b200["max_num_seqs"]) == (16384, 1024)


def test_max_num_seqs_is_refused_where_nothing_reads_it(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--engine", "sglang", "--max-num-seqs", "8")
    assert r.exit_code == 2 and r.stderr.startswith("error: --max-num-seqs is only for --engine vllm and ideal")
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--max-num-seqs", "8")
    assert r.exit_code == 2 and r.stderr.startswith("error: --max-num-seqs needs a GPU")
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--max-num-seqs", "0")
    assert (r.exit_code, r.stderr) == (2, "error: --max-num-seqs must be at least 1, got 0\n")


def test_a_plan_file_takes_max_num_seqs(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndeployments:\n  - name: a\n    model: llama-3.1-8b\n    gpu: h100-sxm\n"
                    "    context: 256\n    max_num_seqs: 64\n    budgets:\n      min_concurrent_sequences: 1\n")
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == 0, r.stdout + r.stderr


# ------------------------------------------------------------------ dtype spellings (vllm/config/model.py ModelDType)


@pytest.mark.parametrize("word, ours", [("bfloat16", "bf16"), ("half", "fp16"), ("float16", "fp16"),
                                        ("float", "fp32"), ("float32", "fp32")])
def test_dtype_takes_vllms_words(capsys, word, ours):
    args = ("estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "1k", "-f", "json")
    theirs = json.loads(run_cli(capsys, *args, "--dtype", word).stdout)
    mine = json.loads(run_cli(capsys, *args, "--dtype", ours).stdout)
    assert theirs["weights_bytes_per_gpu"] == mine["weights_bytes_per_gpu"] and theirs["weights_dtype"] == ours
    assert theirs["weights_source"] == f"--dtype {ours}"


def test_dtype_auto_is_the_models_own(capsys):
    args = ("estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "1k", "-f", "json")
    assert json.loads(run_cli(capsys, *args, "--dtype", "auto").stdout) == json.loads(run_cli(capsys, *args).stdout)


def test_kv_cache_dtype_auto_follows_a_float_dtype_cast(capsys):
    # llama-3.1-8b: 32 layers x 8 KV heads x 128 x (K + V) = 65,536 values a token: 4 B each in fp32
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "1k", "--dtype", "float32", "-f", "json")
    assert (json.loads(r.stdout)["kv_cache_dtype"], json.loads(r.stdout)["kv_bytes_per_token"]) == ("fp32", 65536 * 4)
    # a quantised dtype stores the weights; the activations, and auto, stay the model's bf16: 2 B a value
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "1k", "--dtype", "fp8", "-f", "json")
    assert (json.loads(r.stdout)["kv_cache_dtype"], json.loads(r.stdout)["kv_bytes_per_token"]) == ("bf16", 65536 * 2)


def test_a_plan_file_dtype_takes_vllms_words(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndeployments:\n  - name: a\n    model: llama-3.1-8b\n    gpu: h100-sxm\n"
                    "    context: 1k\n    dtype: float32\n    budgets:\n      max_kv_bytes_per_token: 262144\n")
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == 0, r.stdout + r.stderr  # 65,536 values x 4 B: auto followed the fp32 cast


# ------------------------------------------------------------------ --kv-cache-dtype: vLLM 0.32's CacheDType


@pytest.mark.parametrize("word, ours", [("bfloat16", "bf16"), ("float16", "fp16")])
def test_vllm_kv_cache_dtype_words(capsys, word, ours):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "1k", "--kv-cache-dtype", word, "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert (json.loads(r.stdout)["kv_cache_dtype"], json.loads(r.stdout)["kv_bytes_per_token"]) == (ours, 65536 * 2)


def test_vllm_has_no_float32_kv_cache_dtype(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "1k", "--kv-cache-dtype", "fp32")
    assert r.exit_code == 2 and "vllm refuses: error: argument --kv-cache-dtype: invalid choice: 'fp32'" in r.stderr


def test_a_vllm_value_kvplan_cannot_size_is_refused_as_such(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "1k", "--kv-cache-dtype", "turboquant_k8v4")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: --kv-cache-dtype turboquant_k8v4: vllm refuses: kvplan: vLLM takes "
                               "--kv-cache-dtype turboquant_k8v4, a layout kvplan has no format for")


# ------------------------------------------------------------------ the budget's total (--cuda-total-memory)


def test_the_budget_starts_from_cudas_total_when_given(capsys):
    """vllm 0.32 v1/worker/utils.py request_memory: ceil(total x util), total from torch's mem_get_info."""
    args = ("estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "32k", "-b", "16", "-f", "json")
    d = json.loads(run_cli(capsys, *args, "--cuda-total-memory", "81090MiB").stdout)
    total = 81090 * MIB  # torch's total on an H100 SXM (shared/reference/gpus.yaml), 85,029,027,840 B
    usable = -(-total * 92 // 100)  # vLLM 0.32's default share, 0.92: ceil(78,226,705,612.8)
    weights = 8_030_261_248 * 2
    activations = 8192 * (2 * 14336 + 4 * 4096) * 2 + 1024 * 128256 * 4  # 8192 tokens, 1024 sequences' logits
    assert d["cuda_total_memory_bytes"] == total and d["gpu_memory_bytes"] == 81559 * MIB
    assert d["usable_bytes_per_gpu"] == usable == 78_226_705_613
    assert d["kv_budget_bytes_per_gpu"] == usable - weights - activations - 512 * MIB == 60_365_778_125
    # 2 MiB a 16-token block of 32 layers: 28,784 blocks
    assert d["vllm_num_blocks"] == 60_365_778_125 // (32 * 16 * 8 * 128 * 2 * 2) == 28_784
    default = json.loads(run_cli(capsys, *args).stdout)
    assert default["cuda_total_memory_bytes"] == default["gpu_memory_bytes"]  # NVML's, unless given


def test_compare_and_check_take_the_same_total(tmp_path, capsys):
    row = json.loads(run_cli(capsys, "compare", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "32k", "--engines", "vllm",
                             "--cuda-total-memory", "81090MiB", "-f", "json").stdout)["rows"][0]
    assert row["capacity"]["kv_budget_bytes"] == 60_365_778_125
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndeployments:\n  - name: a\n    model: llama-3.1-8b\n    gpu: h100-sxm\n"
                    "    context: 32k\n    cuda_total_memory: 81090MiB\n    budgets:\n"
                    "      min_concurrent_sequences: 14\n")
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == 0, r.stdout + r.stderr  # (28,784 blocks - the null block) // 2,048 per sequence = 14


def test_cuda_total_memory_is_refused_where_it_cannot_hold(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--cuda-total-memory", "90GiB")
    assert (r.exit_code, r.stderr) == (2, "error: --cuda-total-memory 96,636,764,160 B is more than the GPU's memory "
                                          "(85,520,809,984 B, NVML's total); CUDA reports at most that\n")
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--engine", "hf", "--cuda-total-memory", "79GiB")
    assert r.exit_code == 2 and r.stderr.startswith("error: --cuda-total-memory is only for --engine vllm and ideal")
