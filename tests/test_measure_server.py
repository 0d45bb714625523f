"""kvplan.measure.server: an engine server's start, readiness, failure and tear-down, on tests/fake_engine.py."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from kvplan.measure import server as srv
from processes import gone

FAKE = str(Path(__file__).with_name("fake_engine.py"))
LOG = Path(__file__).parent / "fixtures" / "vllm_logs" / "vllm-0.32.0-cpu-tiny-llama.log"


def fake(tmp_path: Path, *flags: str, port: int | None = None, grace_s: float = 5.0) -> srv.EngineServer:
    port = port or srv.free_port()
    argv = [sys.executable, FAKE, "--port", str(port), "--pid-file", str(tmp_path / "pids"), *flags]
    return srv.EngineServer(argv, log_path=tmp_path / "engine.log", ready_url=f"http://127.0.0.1:{port}/health",
                            name="the fake engine", grace_s=grace_s, poll_s=0.05)


def pids(tmp_path: Path) -> list[int]:
    for _ in range(200):  # the engine writes it first thing; wait for it
        p = tmp_path / "pids"
        if p.exists() and p.read_text().endswith("\n"):
            return [int(x) for x in p.read_text().split()]
        time.sleep(0.02)
    raise AssertionError("the fake engine wrote no pid file")


# ------------------------------------------------------------------ pure parts


def test_parse_proc_stat_reads_past_a_command_name_with_spaces_and_parentheses():
    # proc(5): pid (comm) state ppid pgrp session ...; the name here holds ") S 1 2 (" to mislead a split
    assert srv.parse_proc_stat("4242 (evil) S 1 2 () R 17 4242 4242 0 -1") == ("R", 4242)
    assert srv.parse_proc_stat("7 (python3) Z 1 99 99 0") == ("Z", 99)


def test_log_tail_keeps_the_last_non_blank_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"one\n\ntwo  \nthree\n\xff four\n\n"
                    b'INFO:     127.0.0.1:5000 - "GET /health HTTP/1.1" 200 OK\n'
                    b'INFO: 127.0.0.1 - "POST /v1/completions HTTP/1.1" 500 -\n')
    assert srv.log_tail(log, 3) == ["two", "three", "\ufffd four"]  # access-log lines left out
    assert srv.log_tail(tmp_path / "none.log") == []


def test_port_in_use_and_free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert srv.port_in_use("127.0.0.1", taken)
    assert not srv.port_in_use("127.0.0.1", taken)  # closed: free again
    port = srv.free_port()
    assert 0 < port < 65536 and not srv.port_in_use("127.0.0.1", port)


def test_engine_failed_message_shows_the_log_tail_indented():
    e = srv.EngineExited("vllm exited with code 1; its last log lines (x.log):", ["a", "ValueError: b"], 1)
    assert e.message == "vllm exited with code 1; its last log lines (x.log):\n  | a\n  | ValueError: b"
    assert e.exit_code == 1 and e.returncode == 1 and e.log_tail == ("a", "ValueError: b")


# ------------------------------------------------------------------ the fake engine


def test_ready_then_stopped_leaves_no_process_of_the_group(tmp_path):
    with fake(tmp_path, "--worker", "--log", str(LOG), "--startup-s", "0.3") as server:
        ready = server.wait_ready(30)
        assert ready >= 0.3
        pgid = server.pgid
        assert pgid == server.proc.pid and pgid != os.getpgrp()  # its own group, not kvplan's
        main, worker = pids(tmp_path)
        assert set(srv.group_members(pgid)) >= {main, worker}
        assert any("CPU KV cache size: 2,048,000 tokens" in line for line in LOG.read_text().splitlines())
    assert srv.group_members(pgid) == [] and gone(main) and gone(worker)
    assert "CPU KV cache size: 2,048,000 tokens" in (tmp_path / "engine.log").read_text()
    assert server.stop() == server.proc.returncode  # idempotent


def test_a_start_up_refusal_is_an_exit_with_the_log_tail(tmp_path):
    log = tmp_path / "refusal.log"
    log.write_text("INFO starting\nValueError: To serve at least one request with the models's max seq len "
                   "(8192), (1.00 GiB KV cache is needed, which is larger than the available KV cache memory\n")
    with fake(tmp_path, "--log", str(log), "--exit-code", "3") as server:
        with pytest.raises(srv.EngineExited) as info:
            server.wait_ready(30)
    assert info.value.returncode == 3
    assert info.value.reason == f"the fake engine exited with code 3; its last log lines ({tmp_path / 'engine.log'}):"
    assert info.value.log_tail[-1].startswith("ValueError: To serve at least one request")


def test_a_timeout_tears_down_the_group_worker_included(tmp_path):
    with pytest.raises(srv.EngineTimeout) as info:
        with fake(tmp_path, "--worker", "--never-ready") as server:
            server.wait_ready(1.0)
    assert "was not ready at http://127.0.0.1:" in info.value.reason and "within 1 s" in info.value.reason
    assert any("Uvicorn running" in line for line in info.value.log_tail)  # not an access line: kept
    main, worker = pids(tmp_path)
    assert srv.group_members(server.pgid) == [] and gone(main) and gone(worker)


def test_an_engine_that_ignores_sigterm_is_killed(tmp_path):
    server = fake(tmp_path, "--worker", "--ignore-sigterm", grace_s=0.5).start()
    server.wait_ready(30)
    main, worker = pids(tmp_path)
    t0 = time.monotonic()
    assert server.stop() == -signal.SIGKILL
    assert time.monotonic() - t0 >= 0.5  # SIGTERM first, the grace waited out
    assert srv.group_members(server.pgid) == [] and gone(main) and gone(worker)


def test_an_engine_killed_from_outside_is_reported_as_killed(tmp_path):
    with fake(tmp_path, "--worker") as server:
        server.wait_ready(30)
        os.killpg(server.pgid, signal.SIGKILL)
        server.proc.wait()
        with pytest.raises(srv.EngineExited) as info:
            server.check_alive()
    assert info.value.reason.startswith("the fake engine was killed by SIGKILL; its last log lines")
    assert srv.group_members(server.pgid) == []


def test_a_missing_executable_is_named(tmp_path):
    server = srv.EngineServer([str(tmp_path / "no-such-vllm")], log_path=tmp_path / "e.log",
                              ready_url="http://127.0.0.1:1/health", name="vllm")
    with pytest.raises(srv.EngineFailed, match=r"^vllm: .*no-such-vllm not found$"):
        server.start()
    assert server.stop() is None
