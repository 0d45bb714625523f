"""SIGINT and SIGTERM end `check` and `measure` with 130 / 143 and one line; a report is complete or absent.

Real processes, real signals. A command is signalled only once it has said where it is on stderr
(a readiness line), never after a sleep: `check` waits at the test-only pause point inside the atomic
write (kvplan.interrupts.pause_for_test: the new report is in its temporary file, the old one still in
place); `measure` is signalled while torch is decoding (its progress line, and many decode steps).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from test_check import ALL_BUDGETS, write_plan

REPO = Path(__file__).resolve().parent.parent
SIGNALS = [(signal.SIGINT, 130, "interrupted (SIGINT)"), (signal.SIGTERM, 143, "interrupted (SIGTERM)")]


def _run_and_signal(args: list[str], ready: str, signum: int, cwd: Path, env_extra: dict | None = None):
    """Start `python -m kvplan ARGS`, wait for the stderr line containing `ready`, send `signum`; (rc, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", "kvplan", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a hang fails the test instead of stalling the suite
    watchdog.start()
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if ready in line:
                proc.send_signal(signum)
                break
        rest_err = proc.stderr.read()
        proc.stdout.read()
        rc = proc.wait()
    finally:
        watchdog.cancel()
    return rc, "".join(lines) + rest_err


@pytest.mark.parametrize("signum, code, message", SIGNALS)
def test_check_interrupted_while_writing_keeps_the_previous_report(tmp_path, signum, code, message):
    plan = write_plan(tmp_path, ALL_BUDGETS)
    report = tmp_path / "report.xml"
    earlier = b'<?xml version="1.0" encoding="utf-8"?>\n<testsuites name="earlier run"></testsuites>\n'
    report.write_bytes(earlier)
    rc, err = _run_and_signal(["check", str(plan), "--output", str(report), "-f", "junit"],
                              "kvplan-test: paused at atomic-write", signum, tmp_path,
                              {"KVPLAN_TEST_PAUSE_AT": "atomic-write"})
    assert rc == code, err
    assert err.splitlines()[-1] == message  # the readiness line, then exactly this one line
    assert "Traceback" not in err
    assert report.read_bytes() == earlier  # the new report was not swapped in: the old one is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.yaml", "report.xml", "tiny.yaml"]  # no temp file


def test_the_pause_point_is_inert_without_the_variable(tmp_path):
    plan = write_plan(tmp_path, ALL_BUDGETS)
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if k != "KVPLAN_TEST_PAUSE_AT"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-m", "kvplan", "check", str(plan), "--output", str(report), "-f", "junit"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert report.read_text().lstrip().startswith("<?xml") and "<testsuites" in report.read_text()


TINY_MEASURE_SPEC = """\
name: tiny-measure
source: test
num_parameters: 100000
hidden_size: 64
num_hidden_layers: 2
num_attention_heads: 2
num_key_value_heads: 2
vocab_size: 64
intermediate_size: 64
torch_dtype: float32
"""


@pytest.mark.parametrize("signum, code, message", SIGNALS)
def test_measure_interrupted_while_decoding_keeps_the_previous_report(tmp_path, signum, code, message):
    pytest.importorskip("torch")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_MEASURE_SPEC)
    out = tmp_path / "out.json"
    earlier = b'{"kvplan_version": "0", "model": "earlier", "runs": []}\n'
    out.write_bytes(earlier)
    # 100,000 decode steps: far longer than the signal takes to arrive, so the signal lands while torch decodes
    rc, err = _run_and_signal(["measure", str(spec), "--device", "cpu", "--context", "16", "--decode-steps", "100000",
                               "--warmup-steps", "1", "--json", str(out)],
                              "decode steps, batch 1", signum, tmp_path)
    assert rc == code, err
    assert err.splitlines()[-1] == message
    assert "Traceback" not in err
    assert out.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "tiny.yaml"]


@pytest.mark.parametrize("signum, code, message", SIGNALS)
def test_measure_interrupted_while_writing_keeps_the_previous_report(tmp_path, signum, code, message):
    pytest.importorskip("torch")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_MEASURE_SPEC)
    out = tmp_path / "out.json"
    earlier = b'{"kvplan_version": "0", "model": "earlier", "runs": []}\n'
    out.write_bytes(earlier)
    rc, err = _run_and_signal(["measure", str(spec), "--device", "cpu", "--context", "16", "--decode-steps", "2",
                               "--warmup-steps", "1", "--json", str(out)],
                              "kvplan-test: paused at atomic-write", signum, tmp_path,
                              {"KVPLAN_TEST_PAUSE_AT": "atomic-write"})
    assert rc == code, err
    assert err.splitlines()[-1] == message
    assert "Traceback" not in err
    assert out.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "tiny.yaml"]


def test_an_interrupt_replaced_by_a_cleanup_error_is_not_swallowed():
    # torch.cuda.graph's __exit__ raises its own RuntimeError when a Ctrl-C lands mid-capture; measure's
    # best-effort `except Exception` around the capture must re-raise the interrupt, not time eager steps
    from contextlib import contextmanager

    from kvplan.interrupts import Interrupted, raise_if_interrupted

    @contextmanager
    def capture():
        try:
            yield
        finally:
            raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(Interrupted) as info:
        try:
            with capture():
                raise Interrupted(signal.SIGINT)
        except Exception as exc:
            raise_if_interrupted(exc)
            pytest.fail("the interrupt was swallowed")
    assert info.value.exit_code == 130 and str(info.value) == "interrupted (SIGINT)"
    try:  # an ordinary error passes through untouched
        raise_if_interrupted(RuntimeError("capture failed"))
    except BaseException:  # pragma: no cover
        pytest.fail("an error with no interrupt behind it was re-raised")


def test_typer_exit_codes_are_not_dropped(capsys, monkeypatch):
    # click returns (not raises) a typer.Exit's status without standalone mode; main() must exit with it
    import typer

    from cli_helpers import run_cli
    from kvplan.cli import app as cli

    @cli.app.command("exit-three", hidden=True)
    def _exit_three() -> None:
        raise typer.Exit(3)

    @cli.app.command("ctrl-c", hidden=True)
    def _ctrl_c() -> None:
        raise KeyboardInterrupt  # typer turns it into a returned Exit(130)

    try:
        three = run_cli(capsys, "exit-three")
        ctrl_c = run_cli(capsys, "ctrl-c")
    finally:
        cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if c.name not in ("exit-three", "ctrl-c")]
    assert three.exit_code == 3
    assert (ctrl_c.exit_code, ctrl_c.stderr) == (130, "interrupted (SIGINT)\n")
