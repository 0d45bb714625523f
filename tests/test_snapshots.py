"""What users read, byte for byte: whole outputs of representative commands, kept as files.

Each case runs the CLI in-process at 120 columns and compares stdout (and the exit code) with
`tests/snapshots/<name>.txt`. The snapshot files are reviewed like code: every number in them is
checked elsewhere against an independent golden value; here they pin the notes, explanations,
column choices and wording, so that a redesign that should change nothing visible changes nothing.

A deliberate change of output: rerun with `KVPLAN_UPDATE_SNAPSHOTS=1` and review the diff of
`tests/snapshots/` in the commit.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from cli_helpers import run_cli

HERE = Path(__file__).parent
SNAPSHOTS = HERE / "snapshots"
ROOT = HERE.parent
HF = "tests/fixtures/hf_configs"

# name -> command line (run from the repository root)
CASES = {
    # estimate, ideal and vLLM, one per layer kind
    "estimate-llama-default": "estimate llama-3.1-8b",
    "estimate-llama-default-json": "estimate llama-3.1-8b --format json",
    "estimate-gemma3-bytes": "estimate gemma-3-27b --context 32768 --batch 4 --bytes",
    "estimate-gemma3-ideal": "estimate gemma-3-27b --context 32768 --batch 4 --engine ideal",
    "estimate-llama-gpu": "estimate llama-3.1-8b --gpu h100-sxm --context 32768 --batch 16",
    "estimate-llama-gpu-json": "estimate llama-3.1-8b --gpu h100-sxm --context 32768 --batch 16 --format json",
    "estimate-llama70b-grid": "estimate llama-3.1-70b --gpu h100-sxm,h200,mi300x --tp 2,4,8 --context 8192",
    "estimate-llama70b-grid-csv": "estimate llama-3.1-70b --gpu h100-sxm,h200 --tp 2,4 --context 8192 --format csv",
    "estimate-sweep-markdown": "estimate qwen3-8b --context 4k,32k --batch 1,8 --kv-cache-dtype bf16,fp8 --format markdown",
    "estimate-jamba-gpu": "estimate jamba-v0.1 --gpu h100-sxm --context 32k --batch 8",
    "estimate-jamba-gpu-json": "estimate jamba-v0.1 --gpu h100-sxm --context 32k --batch 8 --format json",
    "estimate-deepseek-v3-tp8": "estimate deepseek-v3 --gpu h200 --tp 8 --context 16k --batch 4",
    "estimate-deepseek-v2-lite-pp2": "estimate deepseek-v2-lite --gpu h100-sxm --pp 2 --context 8k",
    "estimate-gpt-oss-fp8": "estimate gpt-oss-20b --gpu h100-sxm --kv-cache-dtype fp8 --context 64k --batch 2",
    "estimate-llama4-scout-tp4": "estimate llama-4-scout --gpu h100-sxm --tp 4 --context 128k",
    "estimate-workload": ("estimate llama-3.1-8b --gpu h100-sxm --context 8k --output-tokens 512"
                          " --requests-per-s 20 --shared-prefix-tokens 1024"),
    "estimate-workload-json": ("estimate llama-3.1-8b --gpu h100-sxm --context 8k --output-tokens 512"
                               " --requests-per-s 20 --shared-prefix-tokens 1024 --format json"),
    "estimate-overrides": ("estimate mistral-7b-v0.1 --gpu l4 --gpu-memory 20GiB --usd-per-hour 0.8"
                           " --dtype int4 --gpu-memory-utilization 0.85 --max-num-batched-tokens 4096"),
    "estimate-too-big": "estimate llama-3.1-405b --gpu l4 --context 8k",
    # the other engines' profiles
    "estimate-hf-dynamic": "estimate llama-3.1-8b --engine hf --context 4096 --batch 2",
    "estimate-hf-static-gpu": "estimate gemma-3-27b --engine hf --hf-cache static --gpu h100-sxm --context 8k",
    "estimate-llamacpp": "estimate gemma-3-27b --engine llama.cpp --context 8192 --parallel 2 --gpu h100-sxm",
    "estimate-llamacpp-json": "estimate gemma-3-27b --engine llama.cpp --context 8192 --parallel 2 --gpu h100-sxm --format json",
    "estimate-sglang": "estimate gpt-oss-20b --engine sglang --gpu h100-sxm --context 32k --batch 4",
    "estimate-trtllm-fp8": "estimate llama-3.1-70b --engine trtllm --gpu h200 --tp 2 --kv-cache-dtype fp8",
    # from the model's own files
    "estimate-config-gemma3-1b": f"estimate {HF}/gemma-3-1b-it.json --context 32k",
    "estimate-config-jamba-json": f"estimate {HF}/jamba-1.5-mini.json --context 16k --format json",
    "estimate-config-deepseek-r1": f"estimate {HF}/deepseek-r1.json --gpu h200 --tp 8 --context 32k",
    # compare
    "compare-llama": "compare llama-3.1-8b --context 8192 --batch 4",
    "compare-llama-gpu": "compare llama-3.1-8b --gpu h100-sxm --context 32k --batch 8",
    "compare-gemma3-json": "compare gemma-3-27b --gpu h100-sxm --context 32k --format json",
    "compare-jamba": "compare jamba-v0.1 --context 16k --batch 2",
    "compare-deepseek-v2-lite-csv": "compare deepseek-v2-lite --context 8k --format csv",
    # search
    "search-llama70b": ("search llama-3.1-70b --requests-per-s 10 --prompt-tokens 2k --output-tokens 256"
                        " --ttft-ms 500 --tpot-ms 50 --gpu h100-sxm,h200,mi300x --limit 3"),
    "search-llama70b-markdown": ("search llama-3.1-70b --requests-per-s 10 --prompt-tokens 2k --output-tokens 256"
                                 " --ttft-ms 500 --tpot-ms 50 --gpu h100-sxm,l4 --tp 1,2,4,16 --limit 2 -f markdown"),
    # check and diff
    "check-plan": "check examples/plan.yaml",
    "check-plan-json": "check examples/plan.yaml --format json",
    "check-plan-junit": "check examples/plan.yaml --format junit",
    "diff-mistral-llama": "diff model_specs/mistral-7b-v0.1.yaml model_specs/llama-3.1-8b.yaml",
    "diff-mistral-llama-json": "diff model_specs/mistral-7b-v0.1.yaml model_specs/llama-3.1-8b.yaml --format json",
    # catalogs
    "models": "models",
    "models-json": "models --format json",
    "show-jamba": "show jamba-v0.1",
    "show-deepseek-v3-json": "show deepseek-v3 --format json",
    "gpus": "gpus",
    "gpus-h100": "gpus h100",
    "gpus-h100-json": "gpus h100 --usd-per-hour 1.80 -f json",
    # refusals users read
    "refuse-unknown-model": "estimate llama-3.1-9b",
    "refuse-bad-flag-value": "estimate llama-3.1-8b --context 0",
    "refuse-engine-flag": "estimate llama-3.1-8b --engine vllm --parallel 2",
}


def _render(result) -> str:
    return f"$ kvplan {{args}}\nexit {result.exit_code}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "120")
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_its_snapshot(name, capsys, at_root):
    args = CASES[name]
    result = run_cli(capsys, *shlex.split(args))
    text = _render(result).replace("{args}", args)
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("KVPLAN_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no snapshot {path.name}: run with KVPLAN_UPDATE_SNAPSHOTS=1 and review it"
    assert text == path.read_text(encoding="utf-8")


def test_every_snapshot_file_has_a_case():
    assert sorted(p.stem for p in SNAPSHOTS.glob("*.txt")) == sorted(CASES)
