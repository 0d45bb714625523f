"""--data-parallel-size (kvplan/plan/planner.py, `_check_data_parallel`, `data_parallel_weight_bytes`): hand-worked.

DeepSeek-V3 (model_specs/deepseek-v3.yaml from its config.json: 61 layers, first_k_dense_replace 3 -> 58 MoE
layers, hidden 7,168, vocab 129,280 untied, 256 routed experts of 3 x 7,168 x 2,048 weights, 8 a token, MLA latent
kv_lora_rank 512 + qk_rope_head_dim 64 = 576 elements) on 8 x H200 (150,754,820,096 B, 4,800 GB/s, NVLink 4:
450 GB/s per direction, 0.4 us a ring step), weights fp8 (1 B each; embedding and lm_head bf16), KV bf16.

tp 8: one vLLM instance; the latent is whole on every rank (MLA has no heads to split) and each rank holds all 64
sequences. dp 8 (vLLM --data-parallel-size 8, tp 1): 8 instances, each its own pool and 64 / 8 = 8 sequences;
attention, dense MLPs, shared experts, embedding and lm_head whole on each GPU, routed experts over 8 GPUs
(vLLM 0.32 FusedMoEParallelConfig.make: tp flattened across dp), a MoE layer's tokens gathered from every
instance and its outputs reduce-scattered (AgRsAll2AllManager, the default all2all backend).
"""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli

EMBED = 129280 * 7168  # 926,679,040 parameters, the lm_head as many (untied)
BODY = 671026419200 - 2 * EMBED  # the layers' parameters, fp8: 1 B each
BODY_ACTIVE = 37552297472 - 2 * EMBED
EXPERTS = 256 * 58 * 3 * 7168 * 2048  # 653,908,770,816 routed-expert weights
EXPERTS_ACTIVE = 8 * 58 * 3 * 7168 * 2048
USABLE = -(-150754820096 * 9 // 10)  # ceil(total x 0.9): --gpu-memory-utilization 0.9 pinned (the default is tested elsewhere)
OTHER = 2 * 2**30 + 2**30  # --activation-memory 2GiB, --non-torch-memory 1GiB
SEQ_KV = 61 * 576 * 2 * 8192  # one sequence of 8,192 tokens: 575,668,224 B, on every rank that holds it


def plan(capsys, *flags):
    r = run_cli(capsys, "estimate", "deepseek-v3", "--gpu", "h200", "--context", "8192", "--batch", "64", "--engine",
                "ideal", "--activation-memory", "2GiB", "--non-torch-memory", "1GiB", "--gpu-memory-utilization", "0.9",
                "-f", "json", *flags)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def share(tokens: int) -> float:
    """decode_weight_fraction: of the experts a step does not count as active, the share `tokens` touch."""
    touched = 1 - (1 - 8 / 256) ** tokens
    return (touched - 8 / 256) / (1 - 8 / 256)


def test_tp8_against_dp8_memory_and_capacity(capsys):
    tp, dp = plan(capsys, "--tp", "8"), plan(capsys, "--dp", "8", "--expert-parallel")
    assert (tp["gpus"], dp["gpus"], dp["data_parallel_size"], tp["data_parallel_size"]) == (8, 8, 8, 1)
    whole = BODY + 2 * 2 * EMBED  # one GPU's everything at tp 1: 672,879,777,280 B
    assert tp["weights_bytes_per_gpu"] == -(-whole // 8) == 84109972160
    assert dp["weights_bytes_per_gpu"] == (whole - EXPERTS) + EXPERTS // 8 == 100709602816
    # KV bytes per rank: all 64 sequences' latents on each tp rank; 8 a GPU under dp
    assert tp["kv_bytes_per_gpu_at_batch"] == 64 * SEQ_KV == 36842766336
    assert dp["kv_bytes_per_gpu_at_batch"] == 8 * SEQ_KV == 4605345792
    assert dp["kv_bytes_per_rank"] == 8 * SEQ_KV  # the layer table: one instance's 8 sequences
    # max sequences: floor(KV budget / one sequence), dp x that under dp
    assert tp["kv_budget_bytes_per_gpu"] == USABLE - 84109972160 - OTHER == 48348140455
    assert dp["kv_budget_bytes_per_gpu"] == USABLE - 100709602816 - OTHER == 31748509799
    assert tp["max_concurrent_sequences"] == 48348140455 // SEQ_KV == 83
    assert dp["max_concurrent_sequences"] == 8 * (31748509799 // SEQ_KV) == 8 * 55


def test_tp8_against_dp8_decode_step(capsys):
    tp, dp = plan(capsys, "--tp", "8"), plan(capsys, "--dp", "8", "--expert-parallel")
    bandwidth = 4800e9 * 0.8

    # tp 8, batch 64: the embedding read is the 64 looked-up bf16 rows, not the table
    held = -(-(BODY + 64 * 7168 * 2 + 2 * EMBED) // 8)
    active = -(-(BODY_ACTIVE + 64 * 7168 * 2 + 2 * EMBED) // 8)
    read = active + int((held - active) * share(64)) + 64 * SEQ_KV
    ring = 3.6e-6 + 14 * 0.4e-6 + (2 * 7 * 64 * 7168 * 2 // 8) / 450e9  # 123 all-reduces of 64 x 7,168 x 2 B
    assert tp["decode_bytes_per_step"] == read
    assert tp["decode_comm_s"] == pytest.approx(123 * ring, rel=1e-12)
    assert tp["decode_step_s"] == pytest.approx(read / bandwidth + 123 * ring, rel=1e-12)

    # dp 8: each GPU runs its instance's 8 sequences; its experts see all 64 tokens; no all-reduce at tp 1
    held = (BODY + 8 * 7168 * 2 + 2 * EMBED - EXPERTS) + EXPERTS // 8
    active = (BODY_ACTIVE + 8 * 7168 * 2 + 2 * EMBED - EXPERTS_ACTIVE) + EXPERTS_ACTIVE // 8
    read = active + int((held - active) * share(64)) + 8 * SEQ_KV
    # 58 MoE layers x (all-gather + reduce-scatter) of 64 x 7,168 x 2 B over 8 ranks: 7 steps, 7/8 on the wire
    gather = 3.6e-6 + 7 * 0.4e-6 + (7 * 64 * 7168 * 2 // 8) / 450e9
    assert dp["decode_bytes_per_step"] == read
    assert dp["decode_comm_s"] == pytest.approx(2 * 58 * gather, rel=1e-12)
    assert dp["decode_step_s"] == pytest.approx(read / bandwidth + 2 * 58 * gather, rel=1e-12)
    assert dp["decode_bound"] == tp["decode_bound"] == "memory"
    assert dp["tokens_per_s"] == pytest.approx(64 / dp["decode_step_s"], rel=1e-12)  # all 8 instances' 64
    assert dp["decode_step_s"] < tp["decode_step_s"]  # no latent read 8 times over, half the collectives' bytes


def test_data_parallel_refusals(capsys):
    def refused(*args):
        r = run_cli(capsys, "estimate", *args)
        assert r.exit_code == 2, r.stdout
        return r.stderr

    assert "llama-3.1-8b has no routed experts" in refused("llama-3.1-8b", "--gpu", "h200", "--dp", "2")
    assert "--data-parallel-size needs a GPU" in refused("deepseek-v3", "--dp", "2")
    assert "with one pipeline stage; give --pp 1" in refused("deepseek-v3", "--gpu", "h200", "--dp", "2", "--pp", "2")
    assert "planner only" in refused("deepseek-v3", "--gpu", "h200", "--dp", "2", "--engine", "sglang")
    # 2,048 intermediate columns over tp 8 x dp 3 = 24 GPUs: vLLM's FusedMoE asserts they divide
    assert "does not divide them" in refused("deepseek-v3", "--gpu", "h200", "--tp", "8", "--dp", "3")
    # --expert-parallel over tp x dp = 24 ranks does not divide 256 experts
    assert "over 24 ranks does not divide" in refused("deepseek-v3", "--gpu", "h200", "--tp", "8", "--dp", "3",
                                                      "--expert-parallel")


def test_emit_vllm_writes_the_data_parallel_flags(capsys):
    """vLLM's own flags: --data-parallel-size 8, --enable-expert-parallel; max_num_seqs is per instance (each DP
    engine core has its own scheduler), so batch 64 over 8 instances is --max-num-seqs 8."""
    r = run_cli(capsys, "estimate", "deepseek-v3", "--gpu", "h200", "--dp", "8", "--expert-parallel", "--context",
                "8192", "--batch", "64", "--emit", "vllm")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ("vllm serve deepseek-ai/DeepSeek-V3 --max-model-len 8192 --max-num-seqs 8 "
                        "--data-parallel-size 8 --enable-expert-parallel\n")
    r = run_cli(capsys, "estimate", "deepseek-v3", "--gpu", "h200", "--tp", "8", "--expert-parallel", "--emit", "vllm")
    assert r.stdout.endswith(" --tensor-parallel-size 8 --enable-expert-parallel\n")


def test_suggestions_count_every_instance(capsys):
    """Not fitting under --dp: the suggestions ask each instance for its ⌈batch / dp⌉ only."""
    r = run_cli(capsys, "estimate", "deepseek-v3", "--gpu", "h200", "--dp", "8", "--expert-parallel", "--engine",
                "ideal", "--activation-memory", "2GiB", "--non-torch-memory", "1GiB", "--context", "8192", "--batch",
                "448", "--gpu-memory-utilization", "0.9", "-f", "json")  # 56 an instance, one more than its 55 (test above)
    d = json.loads(r.stdout)
    assert not d["fits"] and d["max_concurrent_sequences"] == 440
    # fp8 latents, 61 x 576 x 1 B x 8,192 = 287,834,112 B a sequence: 31,748,509,799 // that = 110 an instance
    assert 31748509799 // (61 * 576 * 8192) == 110
    assert "--kv-cache-dtype fp8 fits 880 sequences of 8,192 tokens" in d["suggestions"]
