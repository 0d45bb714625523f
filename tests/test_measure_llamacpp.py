"""`kvplan measure MODEL.gguf --engine llama.cpp` end to end through a fake llama-server (tests/fake_llama_server.py)
that prints a start-up log recorded from the real one: the report, the load levels, the calibration file, and
every way out (a refused start, a start-up timeout, the engine killed mid-run, Ctrl-C, a port in use, no
llama-server) ending with no process left. CI has no llama-server; tests/test_llamacpp_real.py checks the
recorded real starts themselves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import gone as process_gone

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "llamacpp_real"
GQA = FIXTURES / "llama-gqa.gguf"


def record(model: str, rid: str) -> dict:
    data = json.loads((FIXTURES / f"{model}.json").read_text())
    return next(r for r in data["records"] if r["id"] == rid)


@pytest.fixture
def fake(tmp_path):
    """An executable llama-server stand-in and the environment that drives it."""
    exe = tmp_path / "llama-server"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'fake_llama_server.py'} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)

    def env(mode: str = "ok", rid: str = "default", model: str = "llama-gqa", **extra) -> dict:
        log = tmp_path / f"{model}-{rid}.log"
        log.write_text(record(model, rid)["log"])
        return {**os.environ, "PYTHONPATH": str(ROOT), "FAKE_LLAMA_MODE": mode, "FAKE_LLAMA_LOG": str(log),
                "FAKE_LLAMA_PIDS": str(tmp_path / "pids"), **extra}

    return exe, env, tmp_path


def kvplan(args, env, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "kvplan", "measure", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def gone(pids_file: Path) -> None:
    """Every process the fake server wrote down has ended."""
    pids = [int(p) for p in pids_file.read_text().split()]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in pids if not process_gone(p)]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes left: {alive}")


def test_a_start_and_two_levels_against_the_recorded_log(fake):
    exe, env, tmp = fake
    out, cal = tmp / "report.json", tmp / "cal.json"
    r = kvplan([GQA, "--engine", "llama.cpp", "--llama-server", exe, "--context", "1024", "--batch", "2",
                "--concurrency", "1,4", "--prompt-tokens", "16", "--output-tokens", "8", "-o", out,
                "--save-calibration", cal], env(mode="child"))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert all(c["agrees"] for c in report["checks"]), [c for c in report["checks"] if not c["agrees"]]
    # the fake's /props and /slots say 2 slots of 1024 cells, as the real one did for -c 2048 --parallel 2
    assert {c["figure"]: c["observed"] for c in report["checks"]}["/slots count"] == 2
    one, four = report["levels"]
    assert (one["concurrency"], one["predicted_busy_slots"], one["predicted_tokens_held"]) == (1, 1, 23)
    assert (four["concurrency"], four["predicted_busy_slots"], four["predicted_tokens_held"]) == (4, 2, 46)
    assert four["peak_busy_slots"] <= 2 and len(four["tpot_s"]) == 4
    assert json.loads(cal.read_text())["runs"][0]["achieved_gbps"] > 0
    gone(tmp / "pids")
    # docs/measure.md names every key of the report
    import re

    named = set(re.findall(r"`([a-z0-9_]+)`", (ROOT / "docs" / "measure.md").read_text()))
    keys = set(report) | set(report["levels"][0]) | set(report["checks"][0]) | set(report["runs"][0])
    keys |= set(report["observed_log"]) | set(report["predicted"])
    assert sorted(keys - named) == []


def test_the_calibration_file_is_read_by_estimate(fake):
    exe, env, tmp = fake
    cal = tmp / "cal.json"
    r = kvplan([GQA, "--engine", "llama.cpp", "--llama-server", exe, "--context", "1024", "--batch", "2",
                "--concurrency", "2", "--prompt-tokens", "16", "--output-tokens", "8", "--save-calibration", cal],
               env())
    assert r.returncode == 0, r.stderr
    from kvplan.plan.calibration import read_calibration

    c = read_calibration(str(cal))
    assert c.achieved_gbps == json.loads(cal.read_text())["runs"][0]["achieved_gbps"]


def test_a_refused_start_in_the_predicted_words_exits_0(fake):
    exe, env, tmp = fake
    r = kvplan([GQA, "--engine", "llama.cpp", "--llama-server", exe, "--context", "1024", "--batch", "2",
                "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--format", "json"], env("refuse", "q8-cache"))
    assert r.returncode == 0, r.stderr
    check = json.loads(r.stdout)["checks"][0]
    assert check["figure"] == "refusal" and check["agrees"]
    assert check["predicted"] == ("llama_init_from_model: K cache type q8_0 with block size 32 does not divide "
                                  "n_embd_head_k=16")
    gone(tmp / "pids")


def test_an_unpredicted_refusal_exits_1_with_the_engine_words(fake):
    exe, env, tmp = fake
    r = kvplan([GQA, "--engine", "llama.cpp", "--llama-server", exe, "--context", "1024", "--batch", "2"],
               env("refuse", "q8-cache"))
    assert r.returncode == 1
    assert "refusal: predicted None, llama-server" in r.stderr and "does not divide" in r.stderr


def test_a_start_up_timeout_stops_the_server(fake):
    exe, env, tmp = fake
    r = kvplan([GQA, "--engine", "llama.cpp", "--llama-server", exe, "--timeout", "3"], env("hang"))
    assert r.returncode == 1
    assert "error: llama-server was not ready at http://127.0.0.1:" in r.stderr and "within 3 s" in r.stderr
    gone(tmp / "pids")


def test_the_engine_killed_mid_run_ends_cleanly(fake):
    exe, env, tmp = fake
    r = kvplan([GQA, "--engine", "llama.cpp", "--llama-server", exe, "--context", "1024", "--batch", "2",
                "--concurrency", "2", "--prompt-tokens", "16", "--output-tokens", "8"], env("die"))
    assert r.returncode == 1
    assert "error: llama-server exited with code 137; its last log lines" in r.stderr
    gone(tmp / "pids")


def test_ctrl_c_stops_the_server_and_exits_130(fake):
    exe, env, tmp = fake
    proc = subprocess.Popen([sys.executable, "-m", "kvplan", "measure", str(GQA), "--engine", "llama.cpp",
                             "--llama-server", str(exe), "--context", "1024", "--batch", "2", "--concurrency", "2",
                             "--prompt-tokens", "16", "--output-tokens", "100000"],
                            env=env("child", FAKE_LLAMA_STEP_S="0.01"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not (tmp / "pids").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # under load by now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    gone(tmp / "pids")


def test_a_port_in_use_is_refused(fake):
    exe, env, tmp = fake
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = kvplan([GQA, "--engine", "llama.cpp", "--llama-server", exe, "--port", port], env())
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --port {port} is in use: give another, or leave --port out for a free one"


def test_no_llama_server_says_how_to_build_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(tmp_path)}
    r = kvplan([GQA, "--engine", "llama.cpp"], env)
    assert r.returncode == 2
    assert r.stderr.startswith("error: llama-server not found: build it from llama.cpp's source")
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--parallel", "2"], "error: --parallel is for a run on the engine itself: add --engine llama.cpp"),
    (["--concurrency", "1"], "error: --concurrency is for a run on the engine itself: add --engine vllm or --engine llama.cpp"),
    (["--engine", "vllm", "--threads", "2"], "error: --threads is a flag of `measure --engine llama.cpp`, not of --engine vllm"),
    (["--engine", "llama.cpp", "--vllm-python", "x"], "error: --vllm-python is a flag of `measure --engine vllm`, not of --engine llama.cpp"),
    (["--engine", "llama.cpp", "--layers", "2"], "error: --layers is a flag of kvplan's own torch run, not of --engine llama.cpp"),
])
def test_engine_flags_without_the_engine(args, message):
    r = kvplan([GQA, *args], {**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2
    assert r.stderr.strip() == message


def test_a_model_that_is_not_gguf_is_refused(fake):
    exe, env, tmp = fake
    r = kvplan(["llama-3.1-8b", "--engine", "llama.cpp", "--llama-server", exe], env())
    assert r.returncode == 2
    assert "llama-server loads a GGUF file" in r.stderr
