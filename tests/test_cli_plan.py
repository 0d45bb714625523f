"""`kvplan estimate --gpu`: the planner through the CLI."""

from __future__ import annotations

import json

import pytest

from cli_helpers import pair_values, run_cli

REQUIRED = [
    "gpu", "kv_budget_bytes_per_gpu", "weights_bytes_per_gpu", "max_concurrent_sequences", "max_context_tokens",
    "vllm_kv_cache_tokens", "vllm_max_concurrency", "decode_step_s", "prefill_s", "tokens_per_s",
    "usd_per_million_output_tokens",
]


def test_plan_json_fields(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "32768", "-b", "16", "-f", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    for key in REQUIRED:
        assert key in data, key
    assert data["gpu"] == "h100-sxm"
    assert data["kv_bytes_per_token"] == 131072  # the cache section is still there
    # 29,000 blocks of 16 at vLLM 0.32's default gpu_memory_utilization 0.92 (tests/test_vllm_utilization.py):
    # int(29,000 / 2,048 x 32,768) tokens; (29,000 - the null block) // 2,048 sequences
    assert data["vllm_kv_cache_tokens"] == 464_000
    assert data["max_concurrent_sequences"] == 14 and data["fits"] is False


def test_grid_of_gpus_and_tp(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-70b", "--gpu", "h100-sxm,h200,mi300x", "--tp", "2,4,8", "-c", "8192", "-f", "json")
    rows = json.loads(r.stdout)
    assert len(rows) == 9
    assert {(x["gpu"], x["tensor_parallel_size"]) for x in rows} == {(g, t) for g in ("h100-sxm", "h200", "mi300x") for t in (2, 4, 8)}
    by = {(x["gpu"], x["tensor_parallel_size"]): x for x in rows}
    assert by[("h200", 8)]["max_concurrent_sequences"] > by[("h200", 2)]["max_concurrent_sequences"]
    r = run_cli(capsys, "estimate", "llama-3.1-70b", "--gpu", "h100-sxm,h200", "--tp", "2,4", "-c", "8192")
    assert r.exit_code == 0 and "deployments" in r.stdout


def test_table_has_memory_map_and_concurrency_curve(capsys, tmp_path):
    svg = tmp_path / "plan.svg"
    r = run_cli(capsys, "estimate", "gemma-3-27b", "--gpu", "h200", "-c", "32768", "-b", "4", "--svg", str(svg))
    assert r.exit_code == 0, r.stderr
    assert "Memory per GPU" in r.stdout and "Max concurrency by context" in r.stdout
    assert "GPU KV cache size:" in r.stdout and "padding layers" in r.stdout
    assert svg.read_text().startswith("<svg")


def test_custom_gpu_flags(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu-memory", "48GiB", "--gpu-bandwidth", "900", "-c", "4096", "-f", "json")
    data = json.loads(r.stdout)
    assert data["gpu_memory_bytes"] == 48 * 2**30 and data["usd_per_million_output_tokens"] is None


def test_workload_sizing(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "8192", "--prompt-tokens", "6000",
                "--output-tokens", "500", "--requests-per-s", "20", "--shared-prefix-tokens", "4000", "-f", "json")
    data = json.loads(r.stdout)
    assert data["gpus_needed"] >= 1
    assert data["gpus_needed"] <= data["gpus_needed_without_prefix_sharing"]


FIT = "(a request's prompt and output tokens are one sequence of at most --context tokens)"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--requests-per-s", "-1", "--prompt-tokens", "100", "--output-tokens", "100"],
         "--requests-per-s -1 must be a finite number of requests per second above 0"),
        (["--requests-per-s", "0", "--prompt-tokens", "100"], "--requests-per-s 0 must be a finite number of requests per second above 0"),
        (["--requests-per-s", "inf"], "--requests-per-s inf must be a finite number of requests per second above 0"),
        (["--requests-per-s", "nan"], "--requests-per-s nan must be a finite number of requests per second above 0"),
        (["--prompt-tokens", "100", "--output-tokens", "-5"],
         "--output-tokens -5 must be at least 1 (a request generates at least one token)"),
        (["--prompt-tokens", "0"], "--prompt-tokens 0 must be at least 1 (leave it out to prefill what --context leaves beside --output-tokens)"),
        (["--prompt-tokens", "100", "--output-tokens", "0"],
         "--output-tokens 0 must be at least 1 (a request generates at least one token)"),
        (["--prompt-tokens", "100", "--shared-prefix-tokens", "-5"], "--shared-prefix-tokens -5 must be 0 or more"),
        (["--prompt-tokens", "100000"],
         f"--prompt-tokens 100,000 does not fit --context 8,192 {FIT}; give --prompt-tokens 8,192 or less, or a longer --context"),
        (["--prompt-tokens", "6000", "--output-tokens", "5000"],
         f"--prompt-tokens 6,000 + --output-tokens 5,000 = 11,000 tokens does not fit --context 8,192 {FIT}; shorten them "
         "or give a longer --context"),
        (["--output-tokens", "8192"],
         f"--output-tokens 8,192 leaves no room for a prompt in --context 8,192 {FIT}; give fewer output tokens or a "
         "longer --context"),
        (["--requests-per-s", "1", "--shared-prefix-tokens", "99999"],
         "--shared-prefix-tokens 99,999 is more than the 8,192 prompt tokens (--context less --output-tokens): a "
         "shared prefix is part of each prompt"),
        (["--prompt-tokens", "4000", "--shared-prefix-tokens", "4001"],
         "--shared-prefix-tokens 4,001 is more than the 4,000 prompt tokens (--prompt-tokens): a "
         "shared prefix is part of each prompt"),
    ],
)
@pytest.mark.parametrize("gpu", [["--gpu", "h100-sxm"], []])
def test_workload_flags_out_of_bounds_exit_2(capsys, args, message, gpu):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "8k", *gpu, *args)
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {message}\n")


def test_a_workload_is_checked_against_every_context_of_a_sweep(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "16k,4k", "--gpu", "h100-sxm", "--prompt-tokens", "6000")
    assert r.exit_code == 2 and r.stderr.startswith("error: --prompt-tokens 6,000 does not fit --context 4,096 ")


def test_without_prompt_tokens_the_prompt_is_the_rest_of_the_context(capsys):
    # --context 8,192 with 100 output tokens: the prompt is 8,092 tokens, the request one 8,192-token sequence
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "8k", "--gpu", "h100-sxm", "--requests-per-s", "1",
                "--output-tokens", "100", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["prefill_tokens"] == 8092
    assert "--shared-prefix-tokens 8,093 is more than the 8,092 prompt tokens" in run_cli(
        capsys, "estimate", "llama-3.1-8b", "-c", "8k", "--output-tokens", "100", "--shared-prefix-tokens", "8093").stderr


def test_a_workload_that_fits_its_context_exactly_is_sized(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "8k", "--gpu", "h100-sxm", "--prompt-tokens", "8000",
                "--output-tokens", "192", "--requests-per-s", "1", "--shared-prefix-tokens", "8000", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["gpus_needed"] >= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpu", "h100-sxn"], "error: unknown GPU 'h100-sxn'; did you mean 'h100-sxm'"),
        (["--gpu", "h100-sxm", "--gpu-memory-utilization", "1.5"], "error: --gpu-memory-utilization 1.5 must be in (0, 1]"),
        (["--gpu", "h100-sxm", "--gpu-memory-utilization", "0"], "error: --gpu-memory-utilization 0.0 must be in (0, 1]"),
        (["--gpu", "h100-sxm", "--tp", "3"], "error: --tensor-parallel-size 3 does not divide"),
        (["--gpu", "h100-sxm", "--dtype", "int3"], "error: --dtype 'int3' is not one of"),
        (["--gpu", "h100-sxm", "--engine", "tgi"], "error: --engine 'tgi' is not one of"),
        (["--gpu", "h100-sxm", "--activation-memory", "lots"], "error: --activation-memory 'lots' is not a size"),
        (["--gpu-memory", "48GiB"], "error: a GPU not in the catalog needs --gpu-bandwidth"),
        (["--gpu", "h100-sxm", "--calibration", "/nonexistent/report.json"], "error: --calibration /nonexistent/report.json: no such file"),
    ],
)
def test_bad_plan_input(capsys, args, message):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", *args)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(message), r.stderr
    assert "Traceback" not in r.stderr


def test_model_that_does_not_fit_is_a_result_not_an_error(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-405b", "--gpu", "l4", "-c", "8192", "-f", "json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["fits"] is False and data["max_concurrent_sequences"] == 0
    assert data["suggestions"]


def plan_lines(stdout: str, *keys: str) -> dict[str, str]:
    """The `key   value` lines of an estimate --gpu table, by key (a value wrapped onto indented lines joined)."""
    out = {}
    current = None
    for line in stdout.splitlines():
        if current and line.startswith("  ") and line.strip() and not line.lstrip().startswith(("│", "┃")):
            out[current] += " " + line.strip()
            continue
        current = None
        for key in keys:
            if line.startswith(key + "  "):
                out[key] = line[len(key):].strip()
                current = key
    return out


def test_weights_that_do_not_fit_get_no_decode_time(capsys):
    # 70B in bf16 is 131.42 GiB of weights; an L4 has 22.49 GiB (20.69 usable at vLLM 0.32's default 0.92); the
    # profile run is of 2,048 tokens there (vLLM's default under 70 GiB): 114.19 GiB short
    r = run_cli(capsys, "estimate", "llama-3.1-70b", "--gpu", "l4")
    assert r.exit_code == 0, r.stderr
    assert plan_lines(r.stdout, "verdict", "decode step", "prefill", "throughput") == {
        "verdict": "does NOT fit: the weights alone take 131.42 GiB per GPU, more than the 20.69 GiB usable (114.19 GiB short)",
        "decode step": "— (the model does not fit on this GPU: nothing runs)",
        "prefill": "—",
        "throughput": "—",
    }
    data = json.loads(run_cli(capsys, "estimate", "llama-3.1-70b", "--gpu", "l4", "-f", "json").stdout)
    assert [data[k] for k in ("decode_step_s", "decode_bound", "prefill_s", "tokens_per_s", "tokens_per_s_per_gpu")] == [None] * 5
    # what is missing per GPU: the KV of one sequence plus what the weights take beyond the budget
    assert data["shortfall_bytes"] == data["kv_bytes_per_gpu_at_batch"] - data["kv_budget_bytes_per_gpu"]


def test_a_context_too_long_for_one_sequence_gets_no_decode_time(capsys):
    # a profile run of 8,192 tokens (the L4's own default, 2,048, leaves room for one sequence) at
    # --gpu-memory-utilization 0.9 (vLLM 0.32's default, 0.92, leaves room for one too)
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "l4", "-c", "32k", "-b", "8", "--max-num-batched-tokens", "8k",
                "--gpu-memory-utilization", "0.9")
    assert r.exit_code == 0, r.stderr
    lines = plan_lines(r.stdout, "verdict", "decode step", "throughput")
    assert lines["verdict"] == "does NOT fit: 8 × 32,768 tokens reserve 32.00 GiB per GPU, 28.02 GiB short"
    assert lines["decode step"] == "— (not one sequence of 32,768 tokens fits: nothing runs)"
    assert lines["throughput"] == "—"


def test_a_grid_row_that_does_not_run_shows_dashes(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-70b", "--gpu", "l4", "--tp", "1,8", "-f", "markdown")
    rows = [line for line in r.stdout.splitlines() if line.startswith("| l4 ")]
    assert rows[0].split("|")[10:13] == [" — ", " — ", " — "]  # decode step, tok/s, $/1M out
    assert "ms" in rows[1].split("|")[10]


def test_calibration_from_a_measure_report(capsys, tmp_path):
    report = tmp_path / "r.json"
    runs = [{"achieved_gbps": 2000.0}, {"achieved_gbps": 2680.0}, {"achieved_gbps": 2500.0}]
    report.write_text(json.dumps({"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "runs": runs}))
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--calibration", str(report), "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["assumptions"]["bandwidth_efficiency"] == 2500.0 / 3350.0


@pytest.mark.parametrize(
    "device, name, gbps, message",
    [
        ("cpu", "AMD EPYC", 5.0,
         "error: --calibration {r} was measured on the CPU (AMD EPYC), not on h100-sxm: run "
         "`kvplan measure MODEL --device cuda --json FILE` on that GPU\n"),
        ("cuda:0", "NVIDIA A100-SXM4-80GB", 1700.0,
         "error: --calibration {r} was measured on NVIDIA A100-SXM4-80GB, not on h100-sxm (NVIDIA H100 80GB HBM3); "
         "its 1,700 GB/s over h100-sxm's 3,350 GB/s peak is 0.51: pass --bandwidth-efficiency 0.51 to apply it anyway\n"),
        ("cuda:0", "NVIDIA H100 80GB HBM3", 99999.0,
         "error: --calibration {r}: 99,999 GB/s achieved is above h100-sxm's 3,350 GB/s peak, so the report is not "
         "from this GPU (or its peak is wrong)\n"),
    ],
)
def test_calibration_must_come_from_the_gpu_planned_for(capsys, tmp_path, device, name, gbps, message):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"device": device, "device_name": name, "runs": [{"achieved_gbps": gbps}]}))
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--calibration", str(report))
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == message.format(r=report)


def test_calibration_rejects_other_json(capsys, tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"hello": 1}))
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--calibration", str(report))
    assert r.exit_code == 2 and "no run with 'achieved_gbps' found" in r.stderr


def test_svg_folder_is_checked_before_any_output(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--svg", "/nonexistent/dir/x.svg")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == "error: --svg /nonexistent/dir/x.svg: folder /nonexistent/dir does not exist\n"


def test_context_beyond_the_model_is_sized_with_a_warning(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "262144", "-f", "json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["kv_bytes_per_sequence"] == 262144 * 131072
    assert r.stderr.startswith("warning: --context 262,144 exceeds llama-3.1-8b's max_position_embeddings (131,072)")


def test_the_docs_name_every_json_field_of_a_plan(capsys):
    """The docs' field tables and lists (docs/estimate.md, capacity.md, vllm.md) name every key
    `estimate --gpu -f json` writes."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs"
    readme = "".join((docs / page).read_text() for page in ("estimate.md", "capacity.md", "vllm.md"))
    named = set(re.findall(r"`([a-z0-9_]+)`", readme))
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-f", "json")
    assert r.exit_code == 0
    missing = sorted(set(json.loads(r.stdout)) - named)
    assert missing == [], f"the docs do not name {missing}"


def test_a_context_vllm_refuses_is_not_a_plain_fit(capsys):
    """200k tokens of llama-3.1-8b fit an H200's memory, but vLLM stops at start-up (max_position_embeddings 131,072)."""
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h200", "-c", "200k", "-f", "json")
    data = json.loads(r.stdout)
    assert (data["fits"], data["vllm_starts"]) == (True, False)
    assert data["vllm_log"][-1].startswith("Value error, User-specified max_model_len (204800) is greater than")
    table = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h200", "-c", "200k")
    assert "verdict           vLLM refuses to start (its words below); the memory alone would fit: 1 × 204,800" in table.stdout
    ok = json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h200", "-c", "8k", "-f", "json").stdout)
    assert ok["vllm_starts"] is True
    # nothing runs, so nothing is timed, priced or sized as if it did
    assert [data[k] for k in ("decode_step_s", "prefill_s", "tokens_per_s", "usd_per_million_output_tokens")] == [None] * 4
    work = json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h200", "-c", "200k", "--requests-per-s", "1",
                              "--output-tokens", "1k", "-f", "json").stdout)
    assert work["gpus_needed"] is None and "no workload figure: nothing runs on this GPU at these settings" in work["notes"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpu", "h100-sxm", "--requests-per-s", "10"],
         "--requests-per-s needs --output-tokens: a request's decode steps are most of its time (give the tokens each "
         "request generates)"),
        (["--gpu", "h100-sxm", "--shared-prefix-tokens", "100"],
         "--shared-prefix-tokens sizes a workload: give it with --requests-per-s and --output-tokens"),
        (["--gpu", "h100-sxm", "--calibration", "x.json", "--bandwidth-efficiency", "0.7"],
         "--calibration and --bandwidth-efficiency both set the decode bandwidth efficiency; give one"),
    ],
)
def test_workload_and_efficiency_flags_that_would_be_ignored_exit_2(capsys, args, message):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", *args)
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {message}\n")


def test_without_a_peak_or_a_price_nothing_is_made_up(capsys):
    # a custom GPU with memory and bandwidth only: no bf16 peak (no prefill time, so no workload) and no price
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu-memory", "80GiB", "--gpu-bandwidth", "3000",
                "--requests-per-s", "10", "--output-tokens", "100", "-f", "json")
    data = json.loads(r.stdout)
    assert (data["prefill_s"], data["gpus_needed"], data["usd_per_million_output_tokens"], data["usd_per_hour"]) == (None,) * 4
    assert data["cost_batch"] > 1 and data["tokens_per_s_at_cost_batch"] > 0  # the throughput is real, the price absent
    assert "no bf16 peak for this GPU: give --gpu-bf16-tflops to size the workload (prefill is compute-bound)" in data["notes"]


def test_a_batch_that_does_not_fit_is_timed_as_if_it_did_and_says_so(capsys):
    # --max-num-seqs 1536: vLLM would run all 1,536 in a step (its default of 1,024 caps it otherwise); the profile
    # run's logits for 1,536 sequences leave 28,875 blocks at 0.92: room for (28,875 - 1) // 512 = 56 of 8,192 tokens
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-b", "1.5k", "--max-num-seqs", "1536")
    text = " ".join(r.stdout.split())  # the table may wrap a long line
    assert "bandwidth × 0.8) — if batch 1,536 fitted; 56 sequences do" in text
    assert "at batch 1,536 — if it fitted" in text


def test_a_sweep_table_shows_the_workload_per_row(capsys):
    args = ["estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--requests-per-s", "10", "--output-tokens", "100", "-c", "8k,16k"]
    table = run_cli(capsys, *args)
    rows = json.loads(run_cli(capsys, *args, "-f", "json").stdout)
    assert "GPUs for" in table.stdout and "workload" in table.stdout
    lines = [line for line in table.stdout.splitlines() if line.startswith("│ h100-sxm")]
    assert [line.split("│")[-2].strip() for line in lines] == [f"{r['gpus_needed']:,}" for r in rows]


def test_token_flags_take_k_like_context(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "8k", "--prompt-tokens", "1.5k",
                "--output-tokens", "0.5k", "--requests-per-s", "1", "--shared-prefix-tokens", "1k", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["prefill_tokens"] == 1536
    bad = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--prompt-tokens", "lots")
    assert (bad.exit_code, bad.stderr) == (2, "error: --prompt-tokens 'lots' is not a whole number of tokens (e.g. 32768 or 32k)\n")


def test_a_prompt_that_does_not_fit_is_told_the_room_beside_the_output(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "8k", "--gpu", "h100-sxm", "--requests-per-s", "2",
                "--output-tokens", "1k", "--prompt-tokens", "12k")
    assert r.exit_code == 2 and "give --prompt-tokens 7,168 or less, or a longer --context" in r.stderr


def test_a_batch_too_large_for_any_context_says_so_not_that_the_weights_leave_no_room(capsys):
    # Issue #11: 100,000 sequences at 8k on an H100 said "the weights alone leave no room for KV"
    # beside a 56.64 GiB KV budget (vLLM 0.32's default gpu_memory_utilization 0.92): 29,000 blocks of 16 (vLLM
    # 0.32 logs int(29,000 / 512 x 8,192) = 464,000 tokens); a sequence of 8,192 tokens takes 8,192 / 16 = 512
    # blocks: (29,000 - 1) // 512 = 56 fit, and even at 1 token (one block each) only 28,999 sequences do (vLLM
    # 0.32 holds the null block back), so 100,000 fit at no context.
    args = ("estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--context", "8k", "--batch", "100000")
    r = run_cli(capsys, *args)
    assert r.exit_code == 0, r.stderr
    assert "weights alone" not in r.stdout
    would = pair_values(r.stdout, "would fit")
    assert would == [
        "--batch 56 is the most that fits at 8,192 tokens",
        "100,000 sequences fit at no context: the 56.64 GiB KV budget holds at most 28,999 sequences even of 1 token each",
    ]
    data = json.loads(run_cli(capsys, *args, "-f", "json").stdout)
    assert data["vllm_kv_cache_tokens"] == 464_000 and data["max_concurrent_sequences"] == 56
    assert data["suggestions"] == would


def test_gpu_overrides_label_every_row_they_change(capsys):
    # Issue #11: --gpu-memory 40GiB changed both rows but they still read h100-sxm and h200.
    args = ("estimate", "llama-3.1-70b", "--gpu", "h100-sxm,h200", "--gpu-memory", "40GiB", "--tp", "4")
    rows = json.loads(run_cli(capsys, *args, "-f", "json").stdout)
    assert [(r["gpu"], r["gpu_memory_bytes"]) for r in rows] == [
        ("h100-sxm (40.00 GiB)", 40 * 2**30), ("h200 (40.00 GiB)", 40 * 2**30)]
    r = run_cli(capsys, *args, "-f", "csv")
    assert "h100-sxm (40.00 GiB)" in r.stdout and "h200 (40.00 GiB)" in r.stdout
    md = run_cli(capsys, *args, "-f", "markdown").stdout
    assert "| h100-sxm (40.00 GiB) |" in md and "| h200 (40.00 GiB) |" in md
    # the price and bandwidth overrides are named too; an untouched GPU keeps its plain name
    data = json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--gpu-bandwidth", "2000",
                              "--usd-per-hour", "2", "-f", "json").stdout)
    assert data["gpu"] == "h100-sxm (2,000 GB/s, $2.00/h)"
    assert json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-f", "json").stdout)["gpu"] == "h100-sxm"


@pytest.mark.parametrize("command", [("compare", "llama-3.1-8b"), ("estimate", "llama-3.1-8b", "--engine", "llama.cpp")])
def test_gpu_memory_override_is_labelled_in_compare_and_engine_profiles(capsys, command):
    r = run_cli(capsys, *command, "--gpu", "h100-sxm", "--gpu-memory", "40GiB", "-f", "json")
    assert r.exit_code == 0, r.stderr
    gpus = {line.strip() for line in r.stdout.splitlines() if line.strip().startswith('"gpu":')}
    assert gpus == {'"gpu": "h100-sxm (40.00 GiB)",'}
