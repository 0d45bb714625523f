"""tools/mutate.py end to end on a tiny project: which mutants it makes, which the tests kill.

The expected table is written out by hand from the operators in the tool's docstring.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "mutate.py"

MODULE = '''"""A tiny module for the mutation tool's own test."""


def add(a, b):
    return a + b


def clamp(x):
    if x > 3:
        raise ValueError(f"{x + 1} is too big")
    return x


def spin():
    while False:
        pass
    return 1


def untested(x):
    return x * 2  # pragma: no mutate


def doubled(x):
    return x * 2
'''

TESTS = '''import pytest

from tinypkg.mod import add, clamp, spin


def test_add():
    assert add(2, 3) == 5


def test_clamp():
    assert clamp(1) == 1
    with pytest.raises(ValueError):
        clamp(5)


def test_spin():
    assert spin() == 1
'''


def mutant_id(operator: str, original: str, mutated: str) -> str:
    """The tool's documented id: sha1 of path|operator|original line|mutated line|occurrence."""
    return hashlib.sha1(f"tinypkg/mod.py|{operator}|{original}|{mutated}|1".encode()).hexdigest()[:10]


def test_the_tool_kills_what_the_tests_catch(tmp_path):
    (tmp_path / "tinypkg").mkdir()
    (tmp_path / "tinypkg" / "__init__.py").write_text("")
    (tmp_path / "tinypkg" / "mod.py").write_text(MODULE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text(TESTS)
    (tmp_path / "docs").mkdir()
    equivalent = mutant_id("> -> >=", "if x > 3:", "if (x >= 3):")
    gpu = mutant_id("const 2 -> 3", "return x * 2", "return x * (3)")
    (tmp_path / "docs" / "mutation.md").write_text(
        f"# Mutation\n\n## Equivalent mutants\n\n- `{equivalent}` judged equivalent here for the test\n\n"
        f"## Needs a GPU\n\n- `{gpu}` as if `doubled` ran only on CUDA\n\n## After\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    r = subprocess.run(
        [sys.executable, str(TOOL), "tinypkg/mod.py", "--root", str(tmp_path), "--tests", "tests",
         "--timeout", "6", "--preload", "pytest", "--report", str(tmp_path / "out" / "survivors.md"),
         "--json", str(tmp_path / "out" / "run.json")],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr

    got = json.loads((tmp_path / "out" / "run.json").read_text())
    table = [(m["line"], m["operator"], m["status"]) for m in got["mutants"]]
    assert table == [
        (5, "return -> None", "killed"),
        (5, "+ -> -", "killed"),  # 2 - 3 != 5
        (9, "> -> >=", "equivalent"),  # listed in docs/mutation.md: not run, not counted
        (9, "const 3 -> 4", "survived"),  # clamp(5) still raises: no test at the boundary
        (9, "const 3 -> 2", "survived"),
        (10, "raise -> pass", "killed"),  # the f-string inside the raise is text: not mutated
        (11, "return -> None", "killed"),
        (15, "False -> True", "timeout"),  # `while True: pass` never ends
        (17, "return -> None", "killed"),
        (17, "const 1 -> 2", "killed"),
        (17, "const 1 -> 0", "killed"),
        # line 21 carries `# pragma: no mutate`; line 25 runs in no test
        (25, "return -> None", "not covered"),
        (25, "* -> //", "not covered"),
        (25, "const 2 -> 3", "needs a GPU"),  # listed so: no test here runs it, not scored
        (25, "const 2 -> 1", "not covered"),
    ]
    # 13 counted (15 less the equivalent one and the GPU one), 8 killed (7 killed + 1 timeout)
    assert got["modules"] == [{"module": "tinypkg/mod.py", "killed": 8, "total": 13, "percent": 61.5,
                               "not_covered": 3, "timeouts": 1, "equivalent": 1, "needs_gpu": 1, "errors": 0}]
    report = (tmp_path / "out" / "survivors.md").read_text()
    assert "| tinypkg/mod.py | 8 | 13 | 61.5 | 3 | 1 | 1 |" in report
    assert "| 25 | const 2 -> 3 | needs a GPU | `return x * (3)` |" in report
    assert "| 9 | const 3 -> 4 | survived | `if x > (4):` |" in report
    assert "tinypkg/mod.py                                 8     13   61.5            3" in r.stdout
    # the project itself is untouched: every mutant was written into a temporary copy
    after = {p: p.read_bytes() for p in tmp_path.rglob("*")
             if p.is_file() and p.relative_to(tmp_path).parts[0] not in ("out", ".mutation")}
    assert after == before


MAPPED = '''"""A module whose mutants need the line -> tests map to look past the line itself."""


def scaled(x, factor=2):
    return x * factor


def helper(x):
    return scaled(x, factor=3)


def check(x):
    if x < 0:
        raise ValueError(
            "negative"
        )
    return x


half = lambda n: n // 2  # noqa: E731
'''

# Not measured: the only caller that relies on scaled's default, so no line of the measured
# module that names `scaled` runs with it.
CALLER = '''from tinypkg import mapped


def run(x):
    return mapped.scaled(x)
'''

MAPPED_TESTS = '''import pytest

from tinypkg.caller import run
from tinypkg.mapped import check, half, helper


def test_helper():
    assert helper(2) == 6


def test_through_another_module():
    assert run(5) == 10


def test_check():
    assert check(1) == 1
    with pytest.raises(ValueError):
        check(-1)


def test_half():
    assert half(5) == 2
'''


def test_the_map_gives_defaults_lambdas_and_long_raises_their_tests(tmp_path):
    """A default argument is read by the function's body, so its mutant runs against every test
    that runs the body, here one that calls it only through an unmeasured module (the tests that
    name it or the lines that call it pass the argument explicitly); a module-level lambda and a
    `raise` written over three lines get the tests that run them."""
    (tmp_path / "tinypkg").mkdir()
    (tmp_path / "tinypkg" / "__init__.py").write_text("")
    (tmp_path / "tinypkg" / "mapped.py").write_text(MAPPED)
    (tmp_path / "tinypkg" / "caller.py").write_text(CALLER)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mapped.py").write_text(MAPPED_TESTS)

    r = subprocess.run(
        [sys.executable, str(TOOL), "tinypkg/mapped.py", "--root", str(tmp_path), "--tests", "tests",
         "--timeout", "6", "--preload", "pytest", "--report", str(tmp_path / "out" / "survivors.md"),
         "--json", str(tmp_path / "out" / "run.json")],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr

    got = json.loads((tmp_path / "out" / "run.json").read_text())
    table = [(m["line"], m["operator"], m["status"], m["tests"]) for m in got["mutants"]]
    assert table == [
        # the default: run(5) is 15 or 5, not 10; test_helper (factor=3) alone could not tell
        (4, "const 2 -> 3", "killed", 2),
        (4, "const 2 -> 1", "killed", 2),
        (5, "return -> None", "killed", 2),
        (5, "* -> //", "killed", 2),  # helper(2): 2 // 3 = 0
        (9, "return -> None", "killed", 1),
        (9, "const 3 -> 4", "killed", 1),
        (9, "const 3 -> 2", "killed", 1),
        (13, "< -> <=", "survived", 1),  # no test at 0
        (13, "const 0 -> 1", "survived", 1),  # nor at 0 from the other side
        (13, "const 0 -> -1", "killed", 1),  # check(-1) no longer raises
        (14, "raise -> pass", "killed", 1),  # the three-line raise is test_check's
        (17, "return -> None", "killed", 1),
        # the lambda's body runs in test_half (and at import, which is no test's)
        (20, "// -> *", "killed", 1),  # 10
        (20, "// -> /", "killed", 1),  # 2.5
        (20, "const 2 -> 3", "killed", 1),  # 1
        (20, "const 2 -> 1", "killed", 1),  # 5
    ]
