"""The planner's roofline (latency, cost, workload) on every engine's answer: a decode step reads the
weights and the KV bytes that engine allocates (kvplan.plan.capacity.engine_roofline).

Expected values are worked by hand from each engine's rule. llama-3.1-8b: 32 layers x 8 KV heads x 128
head_dim x 2 (K, V) x 2 B (bf16) = 131,072 B of KV per token; h100-sxm: 3,350 GB/s (kvplan gpus h100-sxm).
"""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli

KV_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # llama-3.1-8b, bf16
H100_BANDWIDTH = 3350e9  # B/s


def latency(capsys, engine: str, *flags: str) -> dict:
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", engine, "--gpu", "h100-sxm", "--format", "json", *flags)
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    return data if engine in ("ideal", "vllm") else data["latency"]


def test_sglang_reads_the_batch_and_one_padding_slot_more_than_the_ideal_cache(capsys):
    # SGLang MHATokenToKVPool._create_buffers: K and V of [size + page_size, heads, head_dim] per layer, so a
    # pool sized to the batch holds one page (1 slot) more than its tokens, on every layer
    ideal = latency(capsys, "ideal", "--context", "1000", "--batch", "3")
    sglang = latency(capsys, "sglang", "--context", "1000", "--batch", "3")
    assert sglang["decode_bytes_per_step"] - ideal["decode_bytes_per_step"] == KV_PER_TOKEN
    assert sglang["decode_bound"] == "memory"
    assert sglang["decode_step_s"] == pytest.approx(sglang["decode_bytes_per_step"] / (H100_BANDWIDTH * 0.8), rel=1e-12)
    assert sglang["tokens_per_s"] == pytest.approx(3 / sglang["decode_step_s"], rel=1e-12)
    # prefill has no KV term: the same for every engine
    assert sglang["prefill_s"] == ideal["prefill_s"] and sglang["prefill_tokens"] == 1000


def test_llamacpp_reads_its_context_padded_to_256_cells(capsys):
    # llama.cpp pads n_ctx to 256 cells (llama-context.cpp): 1,000 tokens take 1,024 cells, all read (KV_READ)
    ideal = latency(capsys, "ideal", "--context", "1000")
    cpp = latency(capsys, "llama.cpp", "--context", "1000")
    assert cpp["decode_bytes_per_step"] - ideal["decode_bytes_per_step"] == (1024 - 1000) * KV_PER_TOKEN
    assert "get_n_kv" in cpp["assumptions"]["kv_read"]


def test_the_roofline_flags_move_a_profile_as_they_move_vllm(capsys):
    base = latency(capsys, "trtllm", "--context", "4k")
    half = latency(capsys, "trtllm", "--context", "4k", "--bandwidth-efficiency", "0.4")
    assert half["decode_step_s"] == pytest.approx(2 * base["decode_step_s"], rel=1e-12)  # memory-bound
    priced = latency(capsys, "trtllm", "--context", "4k", "--usd-per-hour", "1.5")
    # the cost is at the largest batch that fits: $/s over tokens/s, per million
    assert priced["usd_per_million_output_tokens"] == pytest.approx(
        1.5 / 3600 / priced["tokens_per_s_at_cost_batch"] * 1e6, rel=1e-12)
    assert priced["usd_per_hour"] == 1.5


def test_a_profile_sizes_a_workload(capsys):
    got = latency(capsys, "sglang", "--context", "4k", "--output-tokens", "512", "--requests-per-s", "1000")
    assert got["prefill_tokens"] == 4096 - 512
    assert isinstance(got["gpus_needed"], int) and got["gpus_needed"] > 1
    assert got["gpus_needed_without_prefix_sharing"] == got["gpus_needed"]


def test_a_gpu_given_by_its_memory_alone_has_capacity_and_no_latency(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", "sglang", "--gpu-memory", "80GiB", "-c", "1000",
                "--format", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["capacity"]["max_concurrent_sequences"] > 0 and "latency" not in data


def test_the_table_shows_the_latency_section_vllm_shows(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", "hf", "--gpu", "h100-sxm", "-c", "4k")
    labels = [line.split("  ")[0] for line in r.stdout.splitlines()]
    for label in ("decode step", "prefill", "throughput", "cost", "KV read"):
        assert label in labels, label
