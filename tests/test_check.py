"""`kvplan check PLAN`: budgets, exit codes, every output format parsed back, plan errors by line."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_helpers import run_cli
from kvplan.plan.gating import BUDGETS, Budgets, Figures, evaluate_budgets

REPO = Path(__file__).resolve().parent.parent

# A tiny dense model whose figures are worked out by hand below.
TINY_SPEC = """\
name: tiny-gate
source: test
num_parameters: 1000000
hidden_size: 64
num_hidden_layers: 4
num_attention_heads: 4
num_key_value_heads: 2
vocab_size: 256
intermediate_size: 128
"""

# A custom GPU and every assumption pinned, so the planner's figures follow from
# the formulas in kvplan/plan/planner.py's docstring with nothing estimated.
TINY_DEPLOYMENT = """\
    model: tiny.yaml
    gpu_memory: 1GiB
    gpu_bandwidth: 1000
    usd_per_hour: 2
    gpu_bf16_tflops: 100
    engine: ideal
    context: 1k
    batch: 4
    gpu_memory_utilization: 0.5
    activation_memory: 16MiB
    non_torch_memory: 8MiB
"""


def hand_figures() -> dict:
    """The tiny deployment's figures, computed here from first principles."""
    kv_per_token = 4 * 2 * (16 + 16) * 2  # layers x KV heads x (K + V head dim 64/4) x 2 B = 512
    per_seq = 1024 * kv_per_token  # ideal engine, block 1: 524,288 B
    weights = 2 * 1_000_000  # bf16, one GPU
    usable = math.ceil(2**30 * 0.5)  # 536,870,912
    budget = usable - weights - 16 * 2**20 - 8 * 2**20  # 509,705,088
    max_seqs = budget // per_seq  # 972
    bandwidth = 1000e9 * 0.8  # default bandwidth efficiency
    peak = 100e12 * 0.5  # default compute efficiency

    def step_s(batch: int) -> float:
        # the input embedding (256 x 64, untied) is a lookup: a step reads one 128 B row per token
        # (at most the 256 rows there are), not the 32,768 B table
        read_weights = weights - 256 * 64 * 2 + min(batch, 256) * 64 * 2
        mem = (read_weights + batch * per_seq) / bandwidth
        # per token: the layers' parameters (less the two 256 x 64 tables) + one row of logits + attention
        flops = batch * (2 * (1_000_000 - 2 * 256 * 64) + 2 * 256 * 64 + 4 * 2 * 4 * 1024 * 32) / peak
        return max(mem, flops)

    usd_per_s = 2 / 3600
    # the layers for every prompt token, logits for the last one only, causal attention
    prefill_flops = 2 * (1_000_000 - 2 * 256 * 64) * 1024 + 2 * 256 * 64 + 4 * 2 * 4 * 32 * (1024 * 1025 // 2)
    prefill_s = max(prefill_flops / peak, weights / bandwidth)
    return {
        "kv_bytes_per_token": kv_per_token,
        "max_concurrent_sequences": max_seqs,
        "headroom_pct": round((budget - 4 * per_seq) / budget * 100, 3),
        "decode_step_ms": step_s(4) * 1000,
        # at batch 256, not 972: vLLM runs at most max_num_seqs a step, 256 by default on a card under 70 GiB
        # (vllm 0.32 arg_utils.py get_batch_defaults)
        "usd_per_million_output_tokens": usd_per_s / (256 / step_s(256)) * 1e6,
        "usd_per_million_input_tokens": usd_per_s * prefill_s / 1024 * 1e6,
        "max_context_tokens": budget // (4 * kv_per_token),  # no max_position_embeddings: only memory caps it
    }


def write_plan(folder: Path, budgets: str, deployment: str = TINY_DEPLOYMENT, name: str = "plan.yaml") -> Path:
    (folder / "tiny.yaml").write_text(TINY_SPEC)
    text = "version: 1\ndeployments:\n  - name: tiny\n" + deployment + "    budgets:\n" + textwrap.indent(budgets, "      ")
    path = folder / name
    path.write_text(text)
    return path


ALL_BUDGETS = """\
min_concurrent_sequences: 972
max_kv_bytes_per_token: 512
min_headroom_pct: 99.5
max_decode_step_ms: 0.006
max_usd_per_million_output_tokens: 0.2
max_usd_per_million_input_tokens: 0.0001
min_max_context_tokens: 248879
"""


# ------------------------------------------------------------------ values


def test_every_figure_matches_the_hand_computation(tmp_path, capsys):
    plan = write_plan(tmp_path, ALL_BUDGETS)
    r = run_cli(capsys, "check", str(plan), "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    got = {b["metric"]: b["value"] for b in data["deployments"][0]["budgets"]}
    want = hand_figures()
    assert got["kv_bytes_per_token"] == want["kv_bytes_per_token"] == 512
    assert got["max_concurrent_sequences"] == want["max_concurrent_sequences"] == 972
    assert got["max_context_tokens"] == want["max_context_tokens"] == 248879
    assert got["headroom_pct"] == want["headroom_pct"]
    for key in ("decode_step_ms", "usd_per_million_output_tokens", "usd_per_million_input_tokens"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key


@pytest.mark.parametrize(
    "budget, passing, failing",
    [
        # the limit equal to the figure passes; one step beyond fails
        ("min_concurrent_sequences", 972, 973),
        ("max_kv_bytes_per_token", 512, 511),
        ("max_kv_bytes_per_token", "512B", "0.5KB"),  # sizes with units: 0.5 KB = 500 B
        ("min_max_context_tokens", 248879, 248880),
        ("min_headroom_pct", 99.588, 99.59),
        ("max_decode_step_ms", 0.0051, 0.005),  # 0.00508112 ms
    ],
)
def test_a_budget_passes_at_its_figure_and_fails_past_it(tmp_path, capsys, budget, passing, failing):
    ok = run_cli(capsys, "check", str(write_plan(tmp_path, f"{budget}: {passing}\n")), "-f", "json")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    bad = run_cli(capsys, "check", str(write_plan(tmp_path, f"{budget}: {failing}\n")), "-f", "json")
    assert bad.exit_code == 1
    result = json.loads(bad.stdout)["deployments"][0]["budgets"][0]
    assert result["budget"] == budget and result["passed"] is False
    assert "kvplan check: 1 deployment, 1 budget: 1 fail" in bad.stderr


def test_a_figure_that_does_not_exist_fails_its_budget(tmp_path, capsys):
    # 0.1% of 1 GiB usable (1.07 MB): the weights alone (2 MB) leave no KV budget, nothing fits.
    deployment = TINY_DEPLOYMENT.replace("gpu_memory_utilization: 0.5", "gpu_memory_utilization: 0.001").replace(
        "    activation_memory: 16MiB\n    non_torch_memory: 8MiB\n", "    activation_memory: 0\n    non_torch_memory: 0\n"
    )
    plan = write_plan(
        tmp_path, "min_headroom_pct: 0\nmax_usd_per_million_output_tokens: 100\nmin_concurrent_sequences: 1\nmax_decode_step_ms: 1000\n",
        deployment,
    )
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == 1
    budgets = {b["budget"]: b for b in json.loads(r.stdout)["deployments"][0]["budgets"]}
    assert budgets["min_headroom_pct"]["value"] is None
    assert budgets["min_headroom_pct"]["note"] == "the weights leave no KV budget on this GPU"
    assert budgets["max_usd_per_million_output_tokens"]["value"] is None
    assert budgets["min_concurrent_sequences"]["value"] == 0
    assert budgets["max_decode_step_ms"]["value"] is None  # nothing runs: no step time to pass a budget with
    assert budgets["max_decode_step_ms"]["note"] == "not one sequence fits, so no step runs"
    assert not any(b["passed"] for b in budgets.values())


@pytest.mark.parametrize("engine", ["vllm", "llama.cpp"])
def test_a_model_that_does_not_fit_has_no_decode_step_to_pass(tmp_path, capsys, engine):
    # 70B bf16 weights (131 GiB) on an L4 (22.49 GiB): a roofline step time would pass 1 s, but nothing runs
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"deployments:\n  - model: llama-3.1-70b\n    gpu: l4\n    engine: {engine}\n    context: 8k\n"
        "    budgets:\n      max_decode_step_ms: 1000\n"
    )
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == 1, r.stderr
    [budget] = json.loads(r.stdout)["deployments"][0]["budgets"]
    assert (budget["value"], budget["passed"], budget["note"]) == (None, False, "not one sequence fits, so no step runs")


def lines_starting(path: Path, text: str) -> list[int]:
    return [i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(text)]


def test_a_key_given_twice_is_an_error_not_the_last_one(tmp_path, capsys):
    # context: 1k, then 16k: YAML alone would keep 16k without a word
    plan = write_plan(tmp_path, "min_concurrent_sequences: 1\n", TINY_DEPLOYMENT + "    context: 16k\n")
    first, second = lines_starting(plan, "context:")
    r = run_cli(capsys, "check", str(plan))
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {plan}:{second}: duplicate key 'context' (first at line {first})\n")


def test_a_budget_given_twice_is_an_error(tmp_path, capsys):
    plan = write_plan(tmp_path, "min_concurrent_sequences: 1\nmin_concurrent_sequences: 4\n")
    first, second = lines_starting(plan, "min_concurrent_sequences:")
    r = run_cli(capsys, "check", str(plan))
    assert (r.exit_code, r.stderr) == (
        2, f"error: {plan}:{second}: duplicate key 'min_concurrent_sequences' (first at line {first})\n"
    )


def test_kv_bytes_budget_needs_no_gpu(tmp_path, capsys):
    plan = write_plan(tmp_path, "max_kv_bytes_per_token: 512\n", "    model: tiny.yaml\n    context: 4096\n    kv_cache_dtype: fp8\n")
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)["deployments"][0]
    assert d["gpu"] is None and d["kv_cache_dtype"] == "fp8"
    assert d["budgets"][0]["value"] == 4 * 2 * (16 + 16) * 1  # fp8: 1 byte per value


def test_catalog_models_and_gpus_and_the_example_plan_pass(capsys):
    r = run_cli(capsys, "check", str(REPO / "examples" / "plan.yaml"), "-f", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["passed"] is True and data["summary"]["failed"] == 0
    by_name = {d["name"]: d for d in data["deployments"]}
    # KV bytes per token, by hand: llama-3.1-8b 32 x 8 x 128 x 2 x 2; DeepSeek-V3's MLA latent 61 x (512 + 64) x 2
    assert by_name["chat-llama-8b"]["budgets"][1]["value"] == 32 * 8 * 128 * 2 * 2
    assert by_name["reasoning-deepseek-v3"]["budgets"][1]["value"] == 61 * (512 + 64) * 2
    assert by_name["reasoning-deepseek-v3"]["gpu"] == "h200" and by_name["reasoning-deepseek-v3"]["tp"] == 8


def test_model_paths_are_relative_to_the_plan_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ci"
    folder.mkdir()
    plan = write_plan(folder, "max_kv_bytes_per_token: 512\n")
    monkeypatch.chdir(tmp_path)
    r = run_cli(capsys, "check", "ci/plan.yaml", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["plan"] == "ci/plan.yaml"
    assert plan.is_file()


@pytest.mark.parametrize(
    "extra, efficiency",
    [
        ("    bandwidth_efficiency: 0.5\n", 0.5),
        ("    calibration: measured.json\n", 0.4),  # relative to the plan's folder
    ],
)
def test_bandwidth_efficiency_and_calibration_move_the_decode_step(tmp_path, capsys, extra, efficiency):
    # a `kvplan measure --json` report: the median achieved 400 GB/s over the GPU's 1,000 GB/s peak = 0.4
    runs = [{"achieved_gbps": g} for g in (380.0, 400.0, 420.0)]
    (tmp_path / "measured.json").write_text(json.dumps({"device_name": "test", "runs": runs}))
    plan = write_plan(tmp_path, "max_decode_step_ms: 1\n", TINY_DEPLOYMENT + extra)
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == 0, r.stderr
    value = json.loads(r.stdout)["deployments"][0]["budgets"][0]["value"]
    # memory-bound: (weights less the 32,768 B embedding table + 4 looked-up 128 B rows
    # + 4 sequences x 1,024 tokens x 512 B) / (1,000 GB/s x efficiency)
    read = 2_000_000 - 32_768 + 4 * 128 + 4 * 1024 * 512
    assert value == pytest.approx(read / (1000e9 * efficiency) * 1000, rel=1e-12)


@pytest.mark.parametrize(
    "entry, flags",
    [
        ("model: llama-3.1-8b\n    gpu: h100-sxm\n    context: 32k\n    batch: 8\n",
         ["llama-3.1-8b", "--gpu", "h100-sxm", "-c", "32768", "-b", "8"]),
        ("model: deepseek-v3\n    gpu: h200\n    tp: 8\n    dtype: fp8\n    context: 32k\n    batch: 16\n    kv_cache_dtype: fp8\n",
         ["deepseek-v3", "--gpu", "h200", "--tp", "8", "--dtype", "fp8", "-c", "32768", "-b", "16", "--kv-cache-dtype", "fp8"]),
        ("model: gemma-3-27b\n    gpu: h200\n    engine: ideal\n    block_size: 32\n    gpu_memory_utilization: 0.8\n    context: 8k\n",
         ["gemma-3-27b", "--gpu", "h200", "--engine", "ideal", "--block-size", "32", "--gpu-memory-utilization", "0.8", "-c", "8192"]),
    ],
)
def test_a_plan_entry_gives_the_numbers_of_the_same_estimate_flags(tmp_path, capsys, entry, flags):
    plan = tmp_path / "plan.yaml"
    budgets = "".join(f"      {k}: 1000000\n" for k in ("max_decode_step_ms", "max_usd_per_million_output_tokens"))
    plan.write_text("deployments:\n  - " + entry + "    budgets:\n      min_concurrent_sequences: 1\n      min_max_context_tokens: 1\n"
                    "      min_headroom_pct: -1000\n" + budgets)
    checked = run_cli(capsys, "check", str(plan), "-f", "json")
    estimated = run_cli(capsys, "estimate", *flags, "-f", "json")
    assert checked.exit_code == 0 and estimated.exit_code == 0, checked.stderr + estimated.stderr
    values = {b["metric"]: b["value"] for b in json.loads(checked.stdout)["deployments"][0]["budgets"]}
    plan_figures = json.loads(estimated.stdout)
    assert values["max_concurrent_sequences"] == plan_figures["max_concurrent_sequences"]
    assert values["max_context_tokens"] == plan_figures["max_context_tokens"]
    assert values["headroom_pct"] == plan_figures["headroom_pct"]
    assert values["decode_step_ms"] == plan_figures["decode_step_s"] * 1000
    assert values["usd_per_million_output_tokens"] == plan_figures["usd_per_million_output_tokens"]


# ------------------------------------------------------------------ formats

TWO_FAILS = """\
min_concurrent_sequences: 1000
max_kv_bytes_per_token: 512
min_headroom_pct: 99.9
"""
# Lines in the written plan: "version", "deployments", "- name", 11 deployment lines, "budgets:"
FIRST_BUDGET_LINE = 3 + 11 + 2


def test_json_fields_are_stable(tmp_path, capsys):
    r = run_cli(capsys, "check", str(write_plan(tmp_path, TWO_FAILS)), "-f", "json")
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert set(data) == {"schema_version", "plan", "passed", "summary", "deployments"}
    assert data["summary"] == {"deployments": 1, "budgets": 3, "passed": 1, "failed": 2}
    d = data["deployments"][0]
    assert set(d) == {"index", "name", "line", "model", "gpu", "tp", "pp", "context", "batch", "kv_cache_dtype", "engine", "budgets", "passed"}
    assert (d["name"], d["line"], d["model"], d["gpu"], d["context"], d["batch"]) == ("tiny", 3, "tiny-gate", "custom", 1024, 4)
    first = d["budgets"][0]
    assert first == {
        "budget": "min_concurrent_sequences",
        "metric": "max_concurrent_sequences",
        "comparison": ">=",
        "value": 972,
        "limit": 1000,
        "unit": "sequences",
        "passed": False,
        "line": FIRST_BUDGET_LINE,
        "note": None,
    }


def test_junit_parses_with_one_testcase_per_budget(tmp_path, capsys):
    plan = write_plan(tmp_path, TWO_FAILS)
    r = run_cli(capsys, "check", str(plan), "--format", "junit")
    assert r.exit_code == 1
    root = ET.fromstring(r.stdout)
    suites = root.findall("testsuite")
    assert root.tag == "testsuites" and len(suites) == 1
    suite = suites[0]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "2", "0")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["min_concurrent_sequences", "max_kv_bytes_per_token", "min_headroom_pct"]
    assert {c.get("classname") for c in cases} == {"tiny"}
    assert [c.get("line") for c in cases] == [str(FIRST_BUDGET_LINE + i) for i in range(3)]
    failures = [c.find("failure") for c in cases]
    assert failures[1] is None
    assert failures[0].get("message") == "max_concurrent_sequences is 972; min_concurrent_sequences needs >= 1,000"
    assert "value: 972 sequences" in failures[0].text and "limit: >= 1000 sequences" in failures[0].text
    assert failures[2].get("message").startswith("headroom_pct is 99.59%; min_headroom_pct needs >= 99.90%")


def test_junit_escapes_markup_in_names(tmp_path, capsys):
    plan = write_plan(tmp_path, "min_concurrent_sequences: 1000\n")
    plan.write_text(plan.read_text().replace("name: tiny", "name: '<a & \"b\">'"))
    r = run_cli(capsys, "check", str(plan), "-f", "junit")
    case = ET.fromstring(r.stdout).find("testsuite/testcase")
    assert case.get("classname") == '<a & "b">'


def _markdown_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows]


def test_markdown_table_for_a_review_comment(tmp_path, capsys):
    r = run_cli(capsys, "check", str(write_plan(tmp_path, TWO_FAILS)), "-f", "markdown")
    assert r.exit_code == 1
    assert r.stdout.startswith("### ❌ kvplan check `")
    rows = _markdown_rows(r.stdout)
    assert rows[0] == ["deployment", "budget", "value", "limit", "result"]
    assert rows[1] == ["---"] * 5
    assert rows[2] == ["tiny", "min_concurrent_sequences", "972", ">= 1,000", "❌ **FAIL**"]
    assert rows[3] == ["tiny", "max_kv_bytes_per_token", "512 B", "<= 512 B", "✅ pass"]
    assert len(rows) == 5


def test_github_annotations_point_at_failing_budget_lines(tmp_path, capsys):
    plan = write_plan(tmp_path, TWO_FAILS)
    r = run_cli(capsys, "check", str(plan), "-f", "github")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    pattern = re.compile(r"^::(error|notice) file=([^,:]+)(?:,line=(\d+))?(?:,title=([^:]*))?::(.*)$")
    parsed = [pattern.match(line) for line in lines]
    assert all(parsed), lines
    errors = [m for m in parsed if m.group(1) == "error"]
    assert [int(m.group(3)) for m in errors] == [FIRST_BUDGET_LINE, FIRST_BUDGET_LINE + 2]
    assert all(m.group(2) == str(plan) for m in parsed)
    assert errors[0].group(4) == "kvplan budget failed%3A tiny"  # ':' escaped in a property
    assert errors[1].group(5) == "tiny: headroom_pct is 99.59%25; min_headroom_pct needs >= 99.90%25"  # '%' escaped
    assert parsed[-1].group(1) == "notice" and parsed[-1].group(5) == "kvplan check: 1 deployment, 3 budgets: 2 fail"


def test_table_is_the_default(tmp_path, capsys):
    r = run_cli(capsys, "check", str(write_plan(tmp_path, TWO_FAILS)))
    assert r.exit_code == 1
    assert "min_concurrent_sequences" in r.stdout and "FAIL" in r.stdout and "PASS" in r.stdout
    assert r.stdout.rstrip().endswith("1 deployment, 3 budgets: 2 fail")


@pytest.mark.parametrize("fmt", ["json", "junit", "markdown", "github", "table"])
def test_output_writes_the_report_atomically_and_the_table_to_stdout(tmp_path, capsys, fmt):
    plan = write_plan(tmp_path, TWO_FAILS)
    out = tmp_path / "reports" / f"report.{fmt}"
    out.parent.mkdir()
    r = run_cli(capsys, "check", str(plan), "-f", fmt, "--output", str(out))
    assert r.exit_code == 1
    text = out.read_text()
    if fmt == "json":
        assert json.loads(text)["summary"]["failed"] == 2
    elif fmt == "junit":
        assert ET.fromstring(text).find("testsuite").get("failures") == "2"
    elif fmt == "markdown":
        assert len(_markdown_rows(text)) == 5
    elif fmt == "github":
        assert text.count("::error ") == 2
    else:
        assert "\x1b[" not in text and "FAIL" in text
    assert "┃ deployment" in r.stdout  # the table, for the log
    assert f"wrote {out}" in r.stderr
    assert os.listdir(out.parent) == [out.name]  # no temporary file left behind


def test_output_to_a_missing_folder_is_bad_input(tmp_path, capsys):
    r = run_cli(capsys, "check", str(write_plan(tmp_path, TWO_FAILS)), "-f", "json", "--output", str(tmp_path / "no" / "r.json"))
    assert r.exit_code == 2
    assert r.stderr == f"error: --output {tmp_path / 'no' / 'r.json'}: folder {tmp_path / 'no'} does not exist\n"


# ------------------------------------------------------------------ invalid plans: exit 2, file:line


@pytest.mark.parametrize(
    "extra, budgets, expected",
    [
        ("colour: blue", "min_concurrent_sequences: 1", "deployments.0.colour: unknown field"),
        ("gpu_memory: 80", "min_concurrent_sequences: 1",
         "deployments.0.gpu_memory: 80: a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean 80GiB?"),
        ("gpu_memory: 100MiB", "min_concurrent_sequences: 1",
         "deployments.0.gpu_memory: 100MiB: 100.00 MiB is less than 1 GiB, the least GPU memory kvplan plans for; "
         "give the total the runtime reports, e.g. 24GiB"),
        ("context: 1.3k", "min_concurrent_sequences: 1",
         "deployments.0.context: '1.3k' is 1.3 × 1,024 = 1,331.2, not a whole number; write 1331 or 1332"),
        # tp is a count as on the command line (--tp 2, '2', 1k all read); a word is not
        ("tp: 'two'", "min_concurrent_sequences: 1", "deployments.0.tp: 'two' is not a whole number (e.g. 8 or 1k)"),
        ("tp: true", "min_concurrent_sequences: 1", "deployments.0.tp: true is a boolean, not a number (YAML reads true/false, yes/no and on/off as booleans); write the number"),
        ("pp: 0", "min_concurrent_sequences: 1", "deployments.0.pp: Input should be greater than or equal to 1"),
        ("engine: mlc", "min_concurrent_sequences: 1",
         "deployments.0.engine: Input should be 'vllm', 'ideal', 'hf', 'llama.cpp', 'sglang' or 'trtllm'"),
        ("prompt_tokens: 12q", "min_concurrent_sequences: 1",
         "deployments.0.prompt_tokens: '12q' is not a whole number of tokens (e.g. 32768 or 32k)"),
        ("prompt_tokens: 2k", "min_concurrent_sequences: 1",  # TINY_DEPLOYMENT's context is 1k
         "deployments.0.prompt_tokens: prompt_tokens 2,048 does not fit context 1,024 (a request's prompt and output "
         "tokens are one sequence of at most context tokens); give prompt_tokens 1,024 or less, or a longer context"),
        ("prompt_tokens: 0", "min_concurrent_sequences: 1",
         "deployments.0.prompt_tokens: Input should be greater than or equal to 1"),
        ("state_dtype: fp9", "min_concurrent_sequences: 1", "deployments.0.state_dtype: unknown state dtype 'fp9'"),
        ("gpu_memory_utilization: 1.5", "min_concurrent_sequences: 1",
         "deployments.0.gpu_memory_utilization: Input should be less than or equal to 1"),
        ("", "max_bytes: 3", "deployments.0.budgets.max_bytes: unknown field"),  # nothing close: no guess
        ("", "min_concurent_sequences: 3",
         "deployments.0.budgets.min_concurent_sequences: unknown field; did you mean 'min_concurrent_sequences'?"),
        ("gpuu: h100-sxm", "min_concurrent_sequences: 1", "deployments.0.gpuu: unknown field; did you mean 'gpu'?"),
        ("kv_cache_dtpye: fp8", "min_concurrent_sequences: 1",
         "deployments.0.kv_cache_dtpye: unknown field; did you mean 'kv_cache_dtype'?"),
        ("", "max_kv_bytes_per_token: 12 parsecs",
         "deployments.0.budgets.max_kv_bytes_per_token: '12 parsecs' is not a size; write bytes or a number with a unit, e.g. 5GiB or 80GB"),
        ("", "max_kv_bytes_per_token: 1.5", "deployments.0.budgets.max_kv_bytes_per_token: Input should be a valid integer"),
        ("", "min_headroom_pct: 100", "deployments.0.budgets.min_headroom_pct: Input should be less than 100"),
        ("tp: 3", "min_concurrent_sequences: 1", "deployments.0.tp: tp 3 does not divide tiny-gate's 4 attention heads; use a divisor of 4"),
        ("pp: 5", "min_concurrent_sequences: 1", "deployments.0.pp: pp 5 is larger than the model's 4 layers"),
        ("usd_per_hour: 0", "max_usd_per_million_output_tokens: 1",
         "deployments.0.budgets.max_usd_per_million_output_tokens: GPU 'custom' has no price; set usd_per_hour in this deployment"),
    ],
)
def test_a_malformed_entry_names_its_line(tmp_path, capsys, extra, budgets, expected):
    deployment = TINY_DEPLOYMENT
    if extra:
        key = extra.split(":")[0]
        deployment = re.sub(rf"^    {key}: .*\n", "", deployment, flags=re.M) + f"    {extra}\n"
    plan = write_plan(tmp_path, budgets + "\n", deployment)
    # the line of the key the message names, found in the text written
    key = expected.split(":")[0].split(".")[-1]
    line = next(i for i, text in enumerate(plan.read_text().splitlines(), 1) if text.strip().startswith(f"{key}:"))
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2, r.stdout + r.stderr
    assert r.stdout == ""
    assert r.stderr.startswith(f"error: {plan}:{line}: {expected}"), r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_an_empty_budgets_mapping_names_its_line(tmp_path, capsys):
    plan = write_plan(tmp_path, "{}\n")
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: {plan}:15: deployments.0.budgets: give at least one budget: min_concurrent_sequences, "
        "max_kv_bytes_per_token, min_headroom_pct, max_decode_step_ms, max_usd_per_million_output_tokens, "
        "max_usd_per_million_input_tokens, min_max_context_tokens\n"
    )


def _plan(tmp_path: Path, text: str) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_unknown_model_and_gpu_name_their_lines_all_at_once(tmp_path, capsys):
    plan = _plan(
        tmp_path,
        """\
        deployments:
          - model: lama-3.1-8b
            gpu: h100-sxm
            context: 8k
            budgets: {min_concurrent_sequences: 1}
          - model: llama-3.1-8b
            gpu: h1000
            context: 8k
            budgets: {min_concurrent_sequences: 1}
        """,
    )
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"error: {plan}:2: deployments.0.model: unknown model 'lama-3.1-8b'; did you mean 'llama-3.1-8b'")
    assert lines[1].startswith(f"{plan}:7: deployments.1.gpu: unknown GPU 'h1000'; did you mean")


def test_a_gpu_budget_without_a_gpu_names_the_entry(tmp_path, capsys):
    plan = _plan(
        tmp_path,
        """\
        deployments:
          - model: tiny.yaml
            context: 8k
            budgets: {max_kv_bytes_per_token: 512}
          - model: tiny.yaml
            context: 4k
            budgets: {min_concurrent_sequences: 1}
        """,
    )
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: {plan}:5: deployments.1: min_concurrent_sequences needs a gpu (or gpu_memory and gpu_bandwidth); "
        "only max_kv_bytes_per_token is checked without one\n"
    )


def test_duplicate_names_are_refused(tmp_path, capsys):
    plan = _plan(
        tmp_path,
        """\
        deployments:
          - model: tiny.yaml
            context: 8k
            budgets: {max_kv_bytes_per_token: 512}
          - name: tiny.yaml tp1 @8192
            model: tiny.yaml
            context: 8k
            kv_cache_dtype: fp8
            budgets: {max_kv_bytes_per_token: 256}
        """,
    )
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: {plan}:5: deployments.1.name: 'tiny.yaml tp1 @8192' is already the name of deployments.0 (line 2); "
        "give each deployment a unique `name`\n"
    )


def test_unnamed_deployments_that_differ_get_names_that_differ(tmp_path, capsys):
    """The engine is in the automatic name when it is not vllm; a clash adds each differing key not at its default."""
    plan = _plan(
        tmp_path,
        """\
        deployments:
          - {model: llama-3.1-8b, gpu: h100, context: 8k, budgets: {max_kv_bytes_per_token: 128KiB}}
          - {model: llama-3.1-8b, gpu: h100, context: 8k, engine: sglang, budgets: {max_kv_bytes_per_token: 128KiB}}
          - {model: llama-3.1-8b, gpu: h100, context: 8k, engine: llama.cpp, budgets: {max_kv_bytes_per_token: 128KiB}}
          - {model: llama-3.1-8b, context: 8k, engine: ideal, budgets: {max_kv_bytes_per_token: 128KiB}}
          - {model: llama-3.1-8b, gpu: h100, context: 8k, kv_cache_dtype: fp8, budgets: {max_kv_bytes_per_token: 128KiB}}
          - {model: llama-3.1-8b, gpu: h100, context: 8k, batch: 4, budgets: {max_kv_bytes_per_token: 128KiB}}
          - {model: llama-3.1-8b, gpu: h100, context: 8k, engine: sglang, page_size: 16, budgets: {max_kv_bytes_per_token: 128KiB}}
        """,
    )
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert [d["name"] for d in json.loads(r.stdout)["deployments"]] == [
        "llama-3.1-8b on h100 tp1 @8192",
        "llama-3.1-8b on h100 via sglang tp1 @8192",
        "llama-3.1-8b on h100 via llama.cpp tp1 @8192",
        "llama-3.1-8b via ideal tp1 @8192",
        "llama-3.1-8b on h100 tp1 @8192 kv_cache_dtype=fp8",
        "llama-3.1-8b on h100 tp1 @8192 batch=4",
        "llama-3.1-8b on h100 via sglang tp1 @8192 page_size=16",
    ]


def test_unnamed_deployments_that_differ_only_in_budgets_are_refused(tmp_path, capsys):
    plan = _plan(
        tmp_path,
        """\
        deployments:
          - model: tiny.yaml
            context: 8k
            engine: llama.cpp
            budgets: {max_kv_bytes_per_token: 512}
          - model: tiny.yaml
            context: 8k
            engine: llama.cpp
            budgets: {max_kv_bytes_per_token: 1024}
        """,
    )
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: {plan}:6: deployments.1.name: 'tiny.yaml via llama.cpp tp1 @8192' is already the name of "
        "deployments.0 (line 2); give each deployment a unique `name`\n"
    )


def test_github_format_annotates_an_invalid_plan(tmp_path, capsys):
    plan = write_plan(tmp_path, "min_concurrent_sequences: 1\n", TINY_DEPLOYMENT + "    tp: 3\n")
    r = run_cli(capsys, "check", str(plan), "-f", "github")
    assert r.exit_code == 2
    assert r.stdout == (
        f"::error file={plan},line=15,title=kvplan invalid plan::deployments.0.tp: "
        "tp 3 does not divide tiny-gate's 4 attention heads; use a divisor of 4\n"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("deployments:\n  - model: [\n", "plan.yaml:3: malformed YAML: did not find expected node content"),
        ("deployments: []\n", "plan.yaml:1: deployments: list at least one deployment"),
        ("deployments:\n  - just a string\n", "plan.yaml:2: deployments.0: expected a mapping of deployment keys (model, gpu, context, budgets, ...)"),
        ("- model: x\n", "plan.yaml: expected a mapping with a `deployments:` list at the top level"),
        ("version: 2\ndeployments: []\n", "plan.yaml:1: version: Input should be 1"),
        ("deployment: []\n", "plan.yaml:1: deployment: unknown field; did you mean 'deployments'?"),
    ],
)
def test_a_malformed_file_is_bad_input(tmp_path, capsys, text, expected):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == f"error: {tmp_path}/{expected}"


def test_a_missing_plan_is_bad_input(tmp_path, capsys):
    r = run_cli(capsys, "check", str(tmp_path / "nope.yaml"))
    assert (r.exit_code, r.stderr) == (2, f"error: {tmp_path / 'nope.yaml'}: no such file\n")


# ------------------------------------------------------------------ no torch, CI files


def test_check_never_imports_torch(tmp_path):
    plan = write_plan(tmp_path, ALL_BUDGETS)
    probe = (
        "import sys\nfrom kvplan.cli.app import main\nsys.argv = ['kvplan', 'check', sys.argv[1], '-f', 'junit']\ncode = 0\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "assert code == 0, code\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(plan)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_pre_commit_hook_and_workflow_run_check():
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "kvplan-check")
    assert hook["entry"] == "kvplan check" and hook["pass_filenames"] is False and hook["language"] == "python"
    workflow = yaml.safe_load((REPO / "examples" / "github-workflow.yml").read_text())
    commands = "\n".join(step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"])
    assert "kvplan check examples/plan.yaml --format github" in commands
    assert "--format junit --output" in commands and "kvplan diff" in commands and "--fail-on-increase" in commands


# ------------------------------------------------------------------ pure evaluation: properties

figures_strategy = st.builds(
    Figures,
    model=st.just("m"),
    gpu=st.just("g"),
    kv_cache_dtype=st.just("bf16"),
    kv_bytes_per_token=st.integers(1, 10**7),
    max_concurrent_sequences=st.integers(0, 10**5),
    headroom_pct=st.none() | st.floats(-1000, 99.99),
    decode_step_ms=st.floats(0.001, 10**4),
    usd_per_million_output_tokens=st.none() | st.floats(0.001, 10**3),
    usd_per_million_input_tokens=st.none() | st.floats(0.001, 10**3),
    max_context_tokens=st.integers(0, 2**24),
)
limits_strategy = st.fixed_dictionaries(
    {},
    optional={
        "min_concurrent_sequences": st.integers(1, 10**5),
        "max_kv_bytes_per_token": st.integers(1, 10**7),
        "min_headroom_pct": st.floats(-1000, 99.99),
        "max_decode_step_ms": st.floats(0.001, 10**4),
        "max_usd_per_million_output_tokens": st.floats(0.001, 10**3),
        "max_usd_per_million_input_tokens": st.floats(0.001, 10**3),
        "min_max_context_tokens": st.integers(1, 2**24),
    },
).filter(bool)


@settings(max_examples=300, deadline=None)
@given(figures=figures_strategy, limits=limits_strategy)
def test_a_budget_passes_exactly_when_its_figure_is_on_the_right_side(figures, limits):
    results = evaluate_budgets(Budgets(**limits), figures, lambda key: None)
    assert [r.budget for r in results] == [k for k in BUDGETS if k in limits]
    for r in results:
        value = getattr(figures, BUDGETS[r.budget].metric)
        if value is None:
            assert not r.passed and r.value is None and r.note
        elif r.budget.startswith("min_"):
            assert r.passed == (value >= limits[r.budget])
        else:
            assert r.passed == (value <= limits[r.budget])


@settings(max_examples=200, deadline=None)
@given(figures=figures_strategy, limit=st.integers(1, 10**5), more=st.integers(0, 10**5))
def test_raising_a_minimum_never_turns_a_failure_into_a_pass(figures, limit, more):
    low = evaluate_budgets(Budgets(min_concurrent_sequences=limit), figures, lambda key: None)[0]
    high = evaluate_budgets(Budgets(min_concurrent_sequences=limit + more), figures, lambda key: None)[0]
    assert low.passed or not high.passed


@pytest.mark.parametrize("fmt", ["table", "json", "junit", "markdown", "github"])
def test_an_invalid_plan_replaces_an_earlier_report_and_a_rerun_replaces_it_again(tmp_path, capsys, fmt):
    good = write_plan(tmp_path, ALL_BUDGETS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments: []\n")
    report = tmp_path / f"report.{fmt}"
    assert run_cli(capsys, "check", str(good), "-f", fmt, "-o", str(report)).exit_code == 0
    r = run_cli(capsys, "check", str(bad), "-f", fmt, "-o", str(report))
    assert r.exit_code == 2 and f"wrote {report} (invalid plan)" in r.stderr
    text = report.read_text()
    assert "deployments: list at least one deployment" in text and "all pass" not in text
    if fmt == "junit":
        root = ET.fromstring(text.split("\n", 1)[1])
        assert (root.get("errors"), root.find("./testsuite/testcase/error").get("type")) == ("1", "invalid plan")
    if fmt == "json":
        assert json.loads(text)["passed"] is False
    assert run_cli(capsys, "check", str(good), "-f", fmt, "-o", str(report)).exit_code == 0  # CI's next run


def test_a_command_quoted_in_a_plan_error_keeps_its_flags(tmp_path, capsys):
    (tmp_path / "cpu.json").write_text(json.dumps({"device": "cpu", "device_name": "AMD EPYC", "runs": [{"achieved_gbps": 5.0}]}))
    plan = tmp_path / "plan.yaml"
    plan.write_text("deployments:\n  - model: llama-3.1-8b\n    gpu: h100-sxm\n    context: 8k\n    calibration: cpu.json\n"
                    "    budgets:\n      min_concurrent_sequences: 1\n")
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: {plan}:5: deployments.0.calibration: calibration {tmp_path / 'cpu.json'} was measured on the CPU "
        "(AMD EPYC), not on h100-sxm: run `kvplan measure MODEL --device cuda --json FILE` on that GPU\n"
    )


@pytest.mark.parametrize("fmt", ["table", "json", "junit", "markdown", "github"])
@pytest.mark.parametrize(
    "key, yaml_value, value, char, line",
    [
        ("name", '"chat\\nllama"', "chat\nllama", "\n", 3),  # issue #11: a newline split the Markdown report's row
        ("name", "|\n      chat\n      llama", "chat\nllama\n", "\n", 3),  # a YAML block scalar
        ("name", '"chat\\rllama"', "chat\rllama", "\r", 3),
        ("name", '"chat\\x01"', "chat\x01", "\x01", 3),  # not allowed in XML 1.0: the JUnit report would not parse
        ("name", '"chat\\u2028llama"', "chat\u2028llama", "\u2028", 3),  # LINE SEPARATOR
        ("name", '"evil\\u202eplan"', "evil\u202eplan", "\u202e", 3),  # RIGHT-TO-LEFT OVERRIDE reorders what is read
        ("model", '"tiny.yaml\\n"', "tiny.yaml\n", "\n", 4),  # the automatic name is built from the model
    ],
)
def test_control_characters_in_plan_text_are_refused_at_load_in_every_format(tmp_path, capsys, fmt, key, yaml_value,
                                                                             value, char, line):
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    body = {"name": "tiny", "model": "tiny.yaml", key: yaml_value}
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"version: 1\ndeployments:\n  - name: {body['name']}\n    model: {body['model']}\n"
                    "    gpu: h100-sxm\n    context: 1k\n    budgets:\n      min_concurrent_sequences: 1\n")
    assert yaml.safe_load(plan.read_text())["deployments"][0][key] == value  # the YAML says what the test means
    message = (f"{plan}:{line}: deployments.0.{key}: {value!r} holds the control character {char!r} "
               f"(U+{ord(char):04X}) at position {value.index(char) + 1}; reports print this text, so write it on one "
               "line of printable characters")
    report = tmp_path / f"report.{fmt}"
    r = run_cli(capsys, "check", str(plan), "-f", fmt, "-o", str(report))
    assert r.exit_code == 2
    assert f"error: {message}\n" in r.stderr
    text = report.read_text()  # the invalid-plan report quotes the value, so it stays on one line
    if fmt == "json":
        text = json.loads(text)["error"]
    assert repr(value) in text and value not in text
    if fmt == "junit":
        ET.fromstring(text.split("\n", 1)[1])  # well-formed XML
