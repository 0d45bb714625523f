"""Shell completion (typer's, README "Installing as a tool"): the script, the words it completes, the install.

Each case runs the console entry point in a fresh process as the installed `kvplan` script does
(`sys.argv[0] == "kvplan"`), with the variables bash's completion function sets.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENTRY = "import sys; sys.argv = ['kvplan'] + sys.argv[1:]\nfrom kvplan.cli.app import main\nmain()\n"


def _kvplan(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _complete(words: str) -> list[str]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    proc = _kvplan(env={"_KVPLAN_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_help_offers_completion():
    out = _kvplan("--help").stdout
    assert "--install-completion" in out and "--show-completion" in out


def test_show_completion_prints_the_bash_script():
    proc = _kvplan("--show-completion", "bash")
    assert proc.returncode == 0, proc.stderr
    assert "_kvplan_completion()" in proc.stdout and "_KVPLAN_COMPLETE=complete_bash" in proc.stdout
    assert "complete -o default -F _kvplan_completion kvplan" in proc.stdout


@pytest.mark.parametrize("words, expected", [
    ("kvplan est", ["estimate"]),
    ("kvplan com", ["compare"]),
    ("kvplan estimate llama-3.1-8b --pl", ["--plot"]),
    ("kvplan estimate llama-3.1-8b --format ", ["table", "json", "csv", "markdown"]),
    ("kvplan check --format ", ["table", "json", "junit", "markdown", "github"]),
])
def test_bash_completes_commands_flags_and_choices(words, expected):
    assert _complete(words) == expected


def test_install_completion_writes_the_script_and_sources_it(tmp_path):
    proc = _kvplan("--install-completion", "bash", env={"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / ".bash_completions" / "kvplan.sh"
    assert "_kvplan_completion()" in script.read_text()
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()
