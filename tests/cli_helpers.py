"""Run the kvplan CLI in-process, exactly as the console script does."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> Result:
    from kvplan.cli.app import main

    old = sys.argv
    sys.argv = ["kvplan", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


def pair_values(stdout: str, key: str) -> list[str]:
    """The values printed as `key  value` lines (kvplan.cli.render.print_pairs), each with the indented
    lines it wrapped onto joined back with a space; a blank key continues the previous key's lines."""
    values: list[str] = []
    current = None
    for line in stdout.splitlines():
        if line.startswith(key + "  "):
            values.append(line[len(key):].strip())
            current = len(values) - 1
        elif current is not None and line.startswith(" ") and line.strip() and line.lstrip()[:1] not in "│┃┏┡└├":
            values[current] += " " + line.strip()
        else:
            current = None
    return values
