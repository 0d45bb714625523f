"""The docs stay true: every `$ kvplan ...` example in README.md and docs/ runs, the site builds with
--strict, and the README stays a five-minute read.

An example is a line `$ kvplan ARGS` inside a fenced code block. It runs in-process (as the console
script does) in a scratch folder that sees the repository's `examples/`, `model_specs/` and `tests/`, and
must exit 0, or the status its comment names (`# exit 2`). An example that needs what a test machine lacks
says so (`# needs: a CUDA GPU`): its flags are parsed by the command's own parser, which still fails the
test when a flag is renamed or removed. A line the tests cannot run as one command (a pipe, `&&`, a
redirection) fails the test rather than being skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_LIMIT_BYTES = 10 * 1024  # issue #18: "the README is under 10 KB"
SHELL_SYNTAX = re.compile(r"(?<!\S)(\||&&|;|>|<|\$\()")


def examples() -> list[tuple[str, int, str]]:
    """(file relative to the root, line number, the line after `$ `) for every example."""
    found = []
    for path in DOCS:
        fenced = False
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                fenced = not fenced
            elif fenced and line.startswith("$ kvplan"):
                command, following = line, number
                while command.endswith("\\") and following < len(lines):  # a shell line continuation
                    command = command[:-1].rstrip() + " " + lines[following].strip()
                    following += 1
                found.append((str(path.relative_to(ROOT)), number, command[2:]))
    return found


def split_example(line: str) -> tuple[list[str], int, str | None]:
    """The argv after `kvplan`, the expected exit status and what the example needs (None: runs here)."""
    command, _, comment = line.partition(" #")
    comment = comment.strip()
    needs = comment[len("needs:"):].strip() if comment.startswith("needs:") else None
    status = int(comment[len("exit"):].strip()) if re.fullmatch(r"exit \d+", comment) else 0
    if SHELL_SYNTAX.search(command):
        raise AssertionError(f"not one kvplan command (shell syntax): {line!r}")
    argv = shlex.split(command)
    assert argv[0] == "kvplan", line
    return argv[1:], status, needs


EXAMPLES = examples()


def test_there_are_examples_in_the_readme_and_the_docs():
    files = {f for f, _, _ in EXAMPLES}
    assert "README.md" in files and any(f.startswith("docs/") for f in files)
    assert len(EXAMPLES) >= 20


def test_readme_is_a_five_minute_read():
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_LIMIT_BYTES, f"README.md is {size:,} bytes; the limit is {README_LIMIT_BYTES:,}"


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert missing == []


def test_split_example_reads_markers():
    assert split_example("kvplan gpus h100   # one GPU") == (["gpus", "h100"], 0, None)
    assert split_example("kvplan estimate x --context 1.3k   # exit 2") == (["estimate", "x", "--context", "1.3k"], 2, None)
    assert split_example("kvplan measure m --device cuda  # needs: a CUDA GPU") == (
        ["measure", "m", "--device", "cuda"], 0, "a CUDA GPU")
    with pytest.raises(AssertionError):
        split_example("kvplan estimate x | head")


def parse_only(argv: list[str]) -> None:
    """Parse argv with the command's own click parser, running nothing. A path the example names that
    exists only on the user's machine passes; an unknown flag, a bad value or a missing argument fails."""
    import click
    import typer.main

    from kvplan.cli.app import app, register_commands

    register_commands(list(argv))
    group = typer.main.get_command(app)
    with group.make_context("kvplan", [], resilient_parsing=True) as parent:
        command = group.get_command(parent, argv[0])
        assert command is not None, f"no command {argv[0]!r}"
        try:
            command.make_context(argv[0], list(argv[1:]), parent=parent).close()
        except click.BadParameter as exc:
            if not isinstance(getattr(exc.param, "type", None), click.Path):
                raise


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    for name in ("examples", "model_specs", "tests"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "120")
    return tmp_path


@pytest.mark.parametrize("where,line", [(f"{f}:{n}", text) for f, n, text in EXAMPLES],
                         ids=[f"{f}:{n}" for f, n, _ in EXAMPLES])
def test_example_runs(where, line, scratch, capsys):
    argv, status, needs = split_example(line)
    if needs is not None:
        parse_only(argv)
        return
    result = run_cli(capsys, *argv)
    assert result.exit_code == status, f"{where}: `{line}` exited {result.exit_code}\n{result.stderr[-2000:]}"


def test_parse_only_catches_a_renamed_flag():
    import click

    with pytest.raises(click.NoSuchOption):
        parse_only(["estimate", "llama-3.1-8b", "--no-such-flag"])
    with pytest.raises(click.BadParameter):
        parse_only(["estimate", "llama-3.1-8b", "--format", "yaml"])
    parse_only(["estimate", "llama-3.1-8b", "--context", "8k"])


def test_docs_site_builds_strict(tmp_path):
    """`mkdocs build --strict` (mkdocs.yml: broken links, anchors and pages left out of the nav are warnings)."""
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()
