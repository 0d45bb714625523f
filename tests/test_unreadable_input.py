"""Input kvplan cannot read is bad input (exit 2 naming the path), never an internal error (70),
a crash or a hang: deep nesting, a cache the user may not read, a FIFO where a file should be.

Tests run as root, whom chmod does not stop: an unreadable path is simulated by making os.stat
and os.scandir raise PermissionError for it (what the kernel does for another user's folder).
"""

from __future__ import annotations

import errno
import json
import os

from cli_helpers import run_cli
from test_check import TINY_SPEC, write_plan, ALL_BUDGETS

DEPTH = 100_000  # far past Python's recursion limit (1,000) and PyYAML's C composer (crashed near 100,000)


def test_a_deeply_nested_config_json(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"a": ' + "[" * DEPTH + "]" * DEPTH + "}")
    r = run_cli(capsys, "estimate", str(path))
    assert r.exit_code == 2, r.stderr  # was 70: RecursionError
    # the message points at the first bracket 1,001 deep: '{' is level 1, so the 1,000th '[', which
    # follows the 6 characters of '{"a": ' and 999 '[': 0-based index 1,005, column 1,006
    assert r.stderr == (f"error: {path}:1: malformed JSON: nested too deeply to parse (kvplan's files nest a few levels) "
                        "(column 1006)\n")


def test_a_deeply_nested_calibration_report(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    cal = tmp_path / "cal.json"
    cal.write_text('{"runs": ' + "[" * DEPTH + "]" * DEPTH + "}")
    r = run_cli(capsys, "estimate", str(tmp_path / "tiny.yaml"), "--gpu", "h100-sxm", "--calibration", str(cal))
    assert r.exit_code == 2, r.stderr
    # '{' is level 1; the 1,000th '[' (level 1,001) follows '{"runs": ' (9 characters) and 999 '[': index 1,008
    assert r.stderr == (f"error: --calibration {cal}: not a kvplan measure JSON report (nested too deeply to parse "
                        "(kvplan's files nest a few levels): line 1 column 1009 (char 1008))\n")


def test_a_deeply_nested_existing_report_is_not_replaced(tmp_path, capsys):
    plan = write_plan(tmp_path, ALL_BUDGETS)
    report = tmp_path / "report.json"
    deep = '{"plan": ' + "[" * DEPTH + "]" * DEPTH + "}"
    report.write_text(deep)
    r = run_cli(capsys, "check", str(plan), "-f", "json", "--output", str(report))
    assert r.exit_code == 2, r.stderr  # was 70: RecursionError while recognising the old report
    assert r.stderr == (f"error: --output {report} already exists and is not a kvplan check JSON report; "
                        "choose another file, or pass --force to replace it\n")
    assert report.read_text() == deep


def test_a_deeply_nested_yaml_file(tmp_path, capsys):
    # PyYAML's C composer recursed without a limit: this file killed the interpreter (SIGSEGV)
    spec = tmp_path / "deep.yaml"
    spec.write_text("name: x\nlayer_pattern: " + "[" * DEPTH + "]" * DEPTH + "\n")
    r = run_cli(capsys, "estimate", str(spec))
    assert r.exit_code == 2, r.stderr
    assert r.stderr == f"error: {spec}:2: nested more than 500 levels deep; a kvplan file nests a few levels\n"
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndeployments:\n" + "- " * DEPTH + "x\n")  # block sequences nest too
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2, r.stderr
    assert r.stderr == f"error: {plan}:3: nested more than 500 levels deep; a kvplan file nests a few levels\n"


def test_nesting_at_the_limit_is_parsed(tmp_path, capsys):
    spec = tmp_path / "deep.yaml"
    spec.write_text("notes: " + "[" * 499 + "]" * 499 + "\n")  # the document mapping + 499 = 500 levels
    r = run_cli(capsys, "estimate", str(spec))
    assert r.exit_code == 2
    assert "nested more than" not in r.stderr and f"{spec}:1: notes: Input should be a valid string" in r.stderr
    spec.write_text("notes: " + "[" * 500 + "]" * 500 + "\n")  # one level more: 501
    r = run_cli(capsys, "estimate", str(spec))
    assert r.stderr == f"error: {spec}:1: nested more than 500 levels deep; a kvplan file nests a few levels\n"


def test_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    r = run_cli(capsys, "check", str(fifo))  # used to block forever in open()
    assert r.exit_code == 2
    assert r.stderr == f"error: {fifo}: cannot be read (not a regular file: a pipe, device or socket)\n"
    (tmp_path / "tiny.yaml").write_text(TINY_SPEC)
    cal = tmp_path / "cal.json"
    os.mkfifo(cal)
    r = run_cli(capsys, "estimate", str(tmp_path / "tiny.yaml"), "--gpu", "h100-sxm", "--calibration", str(cal))
    assert r.exit_code == 2
    assert r.stderr == (f"error: --calibration {cal}: not a kvplan measure JSON report "
                        "(not a regular file: a pipe, device or socket)\n")


def _deny(monkeypatch, denied: str) -> None:
    """os.stat / os.scandir / os.open of anything under `denied` fail as for a folder of another user."""
    real_stat, real_scandir, real_open = os.stat, os.scandir, os.open

    def check(path) -> None:
        if os.fspath(path).startswith(denied + os.sep):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    def stat(path, *args, **kwargs):
        check(path)
        return real_stat(path, *args, **kwargs)

    def scandir(path="."):
        check(path)
        return real_scandir(path)

    def open_(path, *args, **kwargs):
        check(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "open", open_)


def test_a_hugging_face_cache_the_user_cannot_read(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _deny(monkeypatch, str(cache / "models--org--tiny"))
    r = run_cli(capsys, "estimate", "org/tiny")
    assert r.exit_code == 2, r.stderr  # was 70: PermissionError
    assert r.stderr == (f"error: {cache / 'models--org--tiny' / 'refs' / 'main'}: Permission denied; "
                        "check the path and that you may read it\n")


def test_a_spec_the_user_cannot_read(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "s.yaml").write_text(TINY_SPEC)
    _deny(monkeypatch, str(folder))
    r = run_cli(capsys, "estimate", str(folder / "s.yaml"))
    assert r.exit_code == 2, r.stderr
    assert r.stderr == f"error: {folder / 's.yaml'}: Permission denied; check the path and that you may read it\n"
