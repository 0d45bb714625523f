"""Mutation testing for kvplan's core: how many small wrong changes do the tests catch?

    python tools/mutate.py [MODULE ...] [--sample N] [--seed S] [--timeout SECONDS]

MODULE defaults to the core (`CORE_MODULES`). Each mutant is one small wrong change to
one module's source; the tests that execute its line are run against it, and a mutant
is *killed* when one of them fails (or the run times out, or the module no longer
imports) and *survives* when all pass. A mutant on a line no test executes is *not
covered* and counts as survived. Prints killed/total per module, writes the survivors
(file:line, operator, the mutated line) to `docs/mutation-survivors.md` (`--report`) and
every result to `.mutation/last-run.json`.

Operators (mutants per site):
- arithmetic: + <-> -, * -> //, // -> * and /, / -> * and //, % -> //, ** -> *
  (also in `x += ...`); a + or * between strings is skipped (it is text, not a number);
- integer constants n -> n + 1 and n - 1 (not True/False);
- comparisons: < <-> <=, > <-> >=, == <-> !=, is <-> is not, in <-> not in;
- boolean operators: and <-> or; the constants True <-> False;
- `return X` -> `return None` (X not already None);
- `raise ...` -> `pass`.

Not mutated, because it is text for people rather than a number a user reads off:
docstrings, anything inside an f-string, the exception built by a `raise` (the raise
itself is still deleted), the arguments of `print`/`warnings.warn`/logger calls, type
annotations, decorators (`@dataclass(frozen=True, slots=True)`: what the class allows,
not a number it computes), and the `if __name__ == "__main__":` block. A line ending in
`# pragma: no mutate` is skipped too.

How a mutant is run, without touching the working tree: the repository's files (`git
ls-files`) are copied once to a temporary folder; a map line -> tests is built once by
running the whole suite there under `coverage` with one context per test (cached in
`.mutation/map.json` until a source or test file changes); then the mutated module is
written into the copy and a forked child (pytest and the heavy libraries imported once,
before the fork; kvplan itself is imported fresh in each child) runs only those tests
with `-x -q -p no:cacheprovider`, fastest first. Module-level lines (run at import, so
coverage gives them to no test) are run against the tests that execute a line using the
name they bind (or whose own code names it); failing that, every test that runs the module.
A default argument (`def f(x, page=4096)`, a method's or a module-level function's) is also
run against every test that executes the function's body, wherever that test calls it from
(the CLI, another module): the default is read there. A lambda's body and each line of a
multi-line statement (a `raise` whose message spans lines) map to the tests that run any of
its lines.
Sampling is seeded: `--sample N --seed S` picks the same N mutants per module on every
machine while the module's source is unchanged.

Mutants judged equivalent (no test could tell them from the original) are listed in
docs/mutation.md under "Equivalent mutants" by their id (the 10 hex digits the report
shows) with the reason; they are left out of the score. Mutants of code that runs only on
a GPU (the CUDA branches of `measure`) are listed under "Needs a GPU": where no test runs
them (a machine without CUDA) they are reported as "needs a GPU" and left out of the score;
where a test runs them (a GPU machine) they are run and scored like any other.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORE_MODULES = [
    "kvplan/model/spec.py",
    "kvplan/model/spec_rules.py",
    "kvplan/model/shape.py",
    "kvplan/model/layout.py",
    "kvplan/model/formats.py",
    "kvplan/sources/catalog.py",
    "kvplan/sources/resolve.py",
    "kvplan/sources/hf_config.py",
    "kvplan/sources/safetensors_header.py",
    "kvplan/sources/gguf.py",
    "kvplan/sources/file_weights.py",
    "kvplan/engines/vllm_rules.py",
    "kvplan/engines/base.py",
    "kvplan/engines/compare.py",
    "kvplan/engines/hf.py",
    "kvplan/engines/ideal.py",
    "kvplan/options.py",
    "kvplan/engines/llamacpp.py",
    "kvplan/engines/options.py",
    "kvplan/engines/vllm.py",
    "kvplan/engines/sglang.py",
    "kvplan/engines/trtllm.py",
    "kvplan/plan/planner.py",
    "kvplan/plan/pipeline.py",
    "kvplan/plan/capacity.py",
    "kvplan/model/kinds.py",
    "kvplan/measure/predict.py",
    "kvplan/measure/cache.py",
    "kvplan/measure/allocator.py",
    "kvplan/measure/readings.py",
    "kvplan/measure/stability.py",
    "kvplan/measure/report.py",
    "kvplan/measure/run.py",
    "kvplan/measure/model.py",
]
# Imported once in the parent so that each forked child starts without paying for them.
PRELOAD = ["pytest", "hypothesis", "pydantic", "typer", "click", "rich", "yaml", "coverage", "numpy", "torch"]
KILLED, TIMEOUT, SURVIVED, NOT_COVERED, EQUIVALENT, ERROR, NEEDS_GPU = (
    "killed", "timeout", "survived", "not covered", "equivalent", "error", "needs a GPU")
NO_MUTATE = "pragma: no mutate"

# ----------------------------------------------------------------------------- mutants

_ARITH = {
    ast.Add: [ast.Sub], ast.Sub: [ast.Add], ast.Mult: [ast.FloorDiv],
    ast.FloorDiv: [ast.Mult, ast.Div], ast.Div: [ast.Mult, ast.FloorDiv],
    ast.Mod: [ast.FloorDiv], ast.Pow: [ast.Mult],
}
_COMPARE = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_SYMBOL = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Div: "/", ast.Mod: "%",
    ast.Pow: "**", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
    ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
    ast.And: "and", ast.Or: "or",
}
_LOG_CALLS = {"print", "warn", "debug", "info", "warning", "error", "exception", "critical"}


@dataclasses.dataclass
class Mutant:
    path: str  # relative to the repository root, e.g. "kvplan/model/layout.py"
    line: int  # 1-based, where the changed code starts
    operator: str  # e.g. "+ -> -", "const 3 -> 4", "return -> None"
    start: tuple  # (line, col) of the replaced span; col in UTF-8 bytes as ast gives it
    end: tuple
    replacement: str
    original_line: str = ""
    mutated_line: str = ""
    stmt_lines: tuple = ()  # the lines of the enclosing statement (for the coverage map)
    id: str = ""
    top_names: tuple = ()  # the names the enclosing module-level statement binds
    body_lines: tuple = ()  # for a default argument: the lines of the function body that reads it
    status: str = ""
    tests: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        keep = ("id", "path", "line", "operator", "original_line", "mutated_line", "status", "tests", "seconds")
        return {k: getattr(self, k) for k in keep}


def _is_docstring(node, parent) -> bool:
    return (isinstance(parent, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and parent.body and parent.body[0] is node)


def _is_text(node) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)))


def _is_main_guard(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _call_name(node) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


class _Finder:
    """Walks one module's tree and records (node, replacement node or text, operator) sites."""

    def __init__(self, source: str):
        self.source_lines = source.splitlines()
        self.sites = []  # (span node, replacement source, operator, enclosing statement, top names, body lines)
        self.body = ()

    def walk(self, node, parent=None, stmt=None, skip=False, qual="", top=(), in_function=False, body=()):
        if isinstance(parent, ast.Module) and isinstance(node, ast.stmt):
            top = _bound_names(node)
        if isinstance(node, ast.stmt):
            stmt = node
            if NO_MUTATE in self.source_lines[node.lineno - 1]:
                skip = True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qual = f"{qual}.{node.name}" if qual else node.name
        if _is_main_guard(node) or isinstance(node, ast.JoinedStr):
            skip = True
        if isinstance(node, ast.Expr) and _is_docstring(node, parent):
            return
        if not skip:
            self.top = top if not in_function else ()
            self.body = body
            self.visit(node, stmt)
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            for child in children:
                if not isinstance(child, ast.AST):
                    continue
                child_skip = skip
                if field in ("annotation", "returns", "decorator_list"):
                    child_skip = True
                if isinstance(node, ast.Raise) and field in ("exc", "cause"):
                    child_skip = True
                if isinstance(node, ast.Call) and _call_name(node) in _LOG_CALLS and field in ("args", "keywords"):
                    child_skip = True
                is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                inside = in_function or (is_function and field == "body")
                # A default argument is evaluated once, where the function is defined, but read
                # each time its body runs without that argument: its tests are the body's.
                child_body = body
                if is_function and field == "args":
                    child_body = tuple(range(_first_body_line(node), node.end_lineno + 1))
                elif is_function and field == "body":
                    child_body = ()
                self.walk(child, node, stmt, child_skip, qual, top, inside, child_body)

    def add(self, span, replacement, operator, stmt):
        text = replacement if isinstance(replacement, str) else f"({ast.unparse(replacement)})"
        self.sites.append((span, text, operator, stmt, self.top, self.body))

    def visit(self, node, stmt):
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            if isinstance(node.op, (ast.Add, ast.Mult, ast.Mod)) and (_is_text(node.left) or _is_text(node.right)):
                return  # string concatenation, repetition or %-formatting
            for new in _ARITH[type(node.op)]:
                m = copy.copy(node)
                m.op = new()
                self.add(node, m, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}", stmt)
        elif isinstance(node, ast.AugAssign) and type(node.op) in _ARITH:
            if _is_text(node.value):
                return
            for new in _ARITH[type(node.op)]:
                m = copy.copy(node)
                m.op = new()
                self.add(node, ast.unparse(m), f"{_SYMBOL[type(node.op)]}= -> {_SYMBOL[new]}=", stmt)
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _COMPARE:
                    m = copy.copy(node)
                    m.ops = list(node.ops)
                    new = _COMPARE[type(op)]
                    m.ops[i] = new()
                    self.add(node, m, f"{_SYMBOL[type(op)]} -> {_SYMBOL[new]}", stmt)
        elif isinstance(node, ast.BoolOp):
            m = copy.copy(node)
            m.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.add(node, m, f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[type(m.op)]}", stmt)
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            self.add(node, str(not node.value), f"{node.value} -> {not node.value}", stmt)
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            for delta in (1, -1):
                self.add(node, f"({node.value + delta})", f"const {node.value} -> {node.value + delta}", stmt)
        elif isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                self.add(node, "return None", "return -> None", stmt)
        elif isinstance(node, ast.Raise):
            self.add(node, "pass", "raise -> pass", stmt)


def _first_body_line(node) -> int:
    """The first line of a function's (or lambda's) body, past a docstring."""
    if isinstance(node, ast.Lambda):
        return node.body.lineno
    body = node.body[1:] if len(node.body) > 1 and _is_docstring(node.body[0], node) else node.body
    return body[0].lineno


def _bound_names(stmt) -> tuple:
    """The names a module-level statement binds: assignment targets, a def's or class's name."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return (stmt.name,)
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    return tuple(n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name))


def name_index(root: Path, paths) -> dict:
    """name -> {module path -> lines where the name is read (as `x` or `mod.x`)}."""
    index = {}
    for path in paths:
        try:
            tree = ast.parse((root / path).read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if name is not None:
                index.setdefault(name, {}).setdefault(path, set()).add(node.lineno)
    return index


def test_name_index(root: Path, test_paths) -> dict:
    """name -> node ids ("tests/test_x.py::test_f", "...::Class::test_f") of the test functions that read it."""
    index = {}
    files = [p for t in test_paths for p in ([root / t] if (root / t).is_file() else sorted((root / t).rglob("test_*.py")))]
    for f in files:
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        rel = f.relative_to(root).as_posix()
        scopes = [(n, f"{rel}::{n.name}") for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for c in tree.body:
            if isinstance(c, ast.ClassDef):
                scopes += [(n, f"{rel}::{c.name}::{n.name}") for n in c.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for fn, nodeid in scopes:
            for node in ast.walk(fn):
                name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
                if name is not None:
                    index.setdefault(name, set()).add(nodeid)
    return index


def _byte_offsets(source: str) -> list:
    """Byte offset of the start of each line (1-based index), for ast's UTF-8 columns."""
    offsets, total = [0, 0], 0
    for line in source.encode("utf-8").splitlines(keepends=True):
        total += len(line)
        offsets.append(total)
    return offsets


def apply_mutant(source: str, mutant: Mutant) -> str:
    """The module's source with the mutant's span replaced; everything else byte for byte."""
    raw = source.encode("utf-8")
    offsets = _byte_offsets(source)
    a = offsets[mutant.start[0]] + mutant.start[1]
    b = offsets[mutant.end[0]] + mutant.end[1]
    return (raw[:a] + mutant.replacement.encode("utf-8") + raw[b:]).decode("utf-8")


def find_mutants(path: str, source: str) -> list:
    """Every mutant of one module, in source order, each with a stable id."""
    tree = ast.parse(source)
    finder = _Finder(source)
    finder.walk(tree)
    lines = source.splitlines()
    mutants, seen = [], {}
    for span, text, operator, stmt, top, body in finder.sites:
        m = Mutant(path=path, line=span.lineno, operator=operator,
                   start=(span.lineno, span.col_offset), end=(span.end_lineno, span.end_col_offset),
                   replacement=text, top_names=top, body_lines=body)
        mutated = apply_mutant(source, m)
        try:
            ast.parse(mutated)
        except SyntaxError:
            continue
        m.original_line = lines[span.lineno - 1].strip()
        m.mutated_line = mutated.splitlines()[span.lineno - 1].strip()
        if stmt is not None:
            header_end = stmt.end_lineno
            body = getattr(stmt, "body", None)
            if isinstance(body, list) and body:  # a compound statement: its header only
                header_end = max(stmt.lineno, body[0].lineno - 1)
            m.stmt_lines = tuple(range(stmt.lineno, header_end + 1))
        # The id survives edits elsewhere in the file: it names the code, not the line number.
        key = f"{path}|{operator}|{m.original_line}|{m.mutated_line}"
        seen[key] = seen.get(key, 0) + 1
        m.id = hashlib.sha1(f"{key}|{seen[key]}".encode()).hexdigest()[:10]
        mutants.append(m)
    return mutants


# ----------------------------------------------------------------------------- the copy and the map

def repo_files(root: Path) -> list:
    """The files a fresh clone has (tracked, or untracked and not ignored)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=root, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts]
    return sorted(n for n in names if (root / n).is_file())


def make_copy(root: Path, files: list, into: Path) -> Path:
    for name in files:
        dest = into / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, dest)
    return into


def tree_hash(root: Path, files: list, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for name in files:
        if name.startswith(("docs/", "tools/", ".mutation/")):
            continue
        h.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return h.hexdigest()


def _enter_copy(copy_root: Path, root: Path) -> None:
    """In a forked child: import everything of the project from the copy, not the working tree."""
    os.setpgid(0, 0)
    os.chdir(copy_root)
    real = {os.path.realpath(root), os.path.realpath(os.getcwd())}
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) not in real]
    sys.path.insert(0, str(copy_root))
    os.environ["PYTHONPATH"] = str(copy_root)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    sys.dont_write_bytecode = True  # a stale .pyc of a mutant must never be imported later


def _quiet(log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class _ContextPlugin:
    """Switches coverage's context to each test's node id; records test durations."""

    def __init__(self, cov):
        self.cov = cov
        self.durations = {}

    def pytest_runtest_setup(self, item):
        self.cov.switch_context(item.nodeid)

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration

    def pytest_runtest_teardown(self, item):
        pass


def collect_map(copy_root: Path, root: Path, modules: list, tests: list, out: Path) -> dict:
    """Run the whole suite once under coverage, one context per test, in a forked child."""
    log = out.with_suffix(".log")
    pid = os.fork()
    if pid == 0:  # child
        code = 70
        try:
            _enter_copy(copy_root, root)
            _quiet(log)
            import coverage
            import pytest

            cov = coverage.Coverage(data_file=None, include=[str(copy_root / m) for m in modules])
            cov.start()
            plugin = _ContextPlugin(cov)
            code = int(pytest.main(["-q", "-p", "no:cacheprovider", *_seed_args(), *tests], plugins=[plugin]))
            cov.stop()
            data = cov.get_data()
            lines = {}
            for m in modules:
                fn = str(copy_root / m)
                by_line = data.contexts_by_lineno(fn) if fn in data.measured_files() else {}
                lines[m] = {str(k): sorted(v) for k, v in by_line.items()}
            out.write_text(json.dumps({"exit": code, "lines": lines, "durations": plugin.durations}))
        except BaseException as exc:  # noqa: BLE001 - the parent reports the log
            print(f"map collection failed: {exc!r}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if not out.exists():
        sys.exit(f"error: the coverage run failed; see {log}")
    result = json.loads(out.read_text())
    if result["exit"] != 0:
        sys.exit(f"error: the tests fail without any mutant (pytest exit {result['exit']}); fix them first; see {log}")
    return result


def _seed_args() -> list:
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        return []
    return ["--hypothesis-seed=0"]


def tests_for(m: Mutant, cmap: dict, index: dict, test_index: dict | None = None) -> list:
    """Node ids of the tests that execute the mutant's lines, fastest first."""
    lines = cmap["lines"].get(m.path, {})
    span = set(range(m.start[0], m.end[0] + 1)) | set(m.stmt_lines)
    found, at_import = set(), False
    test_index = test_index or {}
    for n in span:
        for ctx in lines.get(str(n), []):
            if ctx:
                found.add(ctx)
            else:
                at_import = True
    for n in m.body_lines:  # a default argument: every test that runs the body reading it
        found |= {ctx for ctx in lines.get(str(n), []) if ctx}
    if m.top_names:
        # Code run at import (a module constant, a class body, a default argument): coverage
        # gives it to whichever test imported the module first, so add the tests that run a
        # line using the name it binds, in any measured module, and those whose own code names
        # it; failing that, every test that runs the module.
        for name in m.top_names:
            for path, used in index.get(name, {}).items():
                by_line = cmap["lines"].get(path, {})
                found |= {ctx for n in used for ctx in by_line.get(str(n), []) if ctx}
            # and the tests whose own code names it (a default argument, a table read by a test)
            found |= {t for t in cmap["durations"] if t.split("[")[0] in test_index.get(name, ())}
    if not found and (at_import or m.top_names):
        found = {ctx for ctxs in lines.values() for ctx in ctxs if ctx}
    durations = cmap["durations"]
    return sorted(found, key=lambda t: (durations.get(t, 0.0), t))


# ----------------------------------------------------------------------------- running

def _start(m: Mutant, copy_root: Path, root: Path, tests: list, log: Path) -> int:
    src_path = copy_root / m.path
    original = (root / m.path).read_text(encoding="utf-8")
    src_path.write_text(apply_mutant(original, m), encoding="utf-8")
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            _enter_copy(copy_root, root)
            _quiet(log)
            import pytest

            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *_seed_args(), *tests]))
        except BaseException:  # noqa: BLE001
            code = 70
        finally:
            os._exit(code)
    return pid


def _status_of(code: int, log: Path) -> str:
    # pytest: 0 passed, 1 a test failed, 2 interrupted (a collection error: the mutant broke
    # an import), 3 internal error, 4 usage error, 5 no tests collected. A usage error after
    # a collection error ("found no collectors": the test module failed to import under the
    # mutant) is a kill too; a usage error alone would be a bad test id, a bug of this tool.
    if code in (1, 2, 3):
        return KILLED
    if code == 0:
        return SURVIVED
    if code == 4 and log.exists() and "found no collectors" in log.read_text(errors="replace"):
        return KILLED
    return ERROR


def run_mutants(mutants: list, cmap: dict, root: Path, copies: list, timeout: float | None, logdir: Path,
                progress, test_paths=("tests",)) -> None:
    durations = cmap["durations"]
    index = name_index(root, cmap["lines"])
    test_index = test_name_index(root, test_paths)
    queue = []
    for m in mutants:
        if m.status:
            continue
        tests = tests_for(m, cmap, index, test_index)
        m.tests = len(tests)
        if not tests:
            m.status = NOT_COVERED
            continue
        limit = timeout if timeout else max(30.0, 4 * sum(durations.get(t, 0.0) for t in tests) + 20)
        queue.append((m, tests, limit))
    free = list(copies)
    running = {}  # pid -> (mutant, copy root, started, limit)
    done = 0
    try:
        _run_queue(queue, running, free, root, logdir, progress)
    finally:
        for pid in running:  # interrupted: no child outlives the run
            try:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        for copy_root in copies:
            for m in {m.path for m in mutants}:
                shutil.copy2(root / m, copy_root / m)


def _run_queue(queue, running, free, root, logdir, progress) -> None:
    done = 0
    while queue or running:
        while queue and free:
            m, tests, limit = queue.pop(0)
            copy_root = free.pop()
            log = logdir / f"{m.id}.log"
            pid = _start(m, copy_root, root, tests, log)
            running[pid] = (m, copy_root, time.monotonic(), limit)
        time.sleep(0.02)
        for pid, (m, copy_root, started, limit) in list(running.items()):
            got, status = os.waitpid(pid, os.WNOHANG)
            elapsed = time.monotonic() - started
            if got == 0 and elapsed < limit:
                continue
            if got == 0:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                m.status = TIMEOUT
            else:
                code = os.waitstatus_to_exitcode(status)
                m.status = _status_of(code, logdir / f"{m.id}.log") if code >= 0 else KILLED
            m.seconds = round(elapsed, 2)
            shutil.copy2(root / m.path, copy_root / m.path)  # restore the copy
            if m.status in (KILLED, TIMEOUT):
                (logdir / f"{m.id}.log").unlink(missing_ok=True)
            del running[pid]
            free.append(copy_root)
            done += 1
            progress(done, m)


def equivalent_ids(doc: Path, heading: str = "Equivalent mutants") -> dict:
    """Ids listed under "## Equivalent mutants" (or another `heading`) in docs/mutation.md, with their reasons."""
    if not doc.exists():
        return {}
    text = doc.read_text(encoding="utf-8")
    part = re.split(rf"^## {re.escape(heading)}.*$", text, maxsplit=1, flags=re.M)
    if len(part) < 2:
        return {}
    section = re.split(r"^## ", part[1], maxsplit=1, flags=re.M)[0]
    return {i: line.strip() for line in section.splitlines() for i in re.findall(r"`([0-9a-f]{10})`", line)}


# ----------------------------------------------------------------------------- report

def score_table(mutants: list, modules: list) -> list:
    rows = []
    for path in modules:
        ms = [m for m in mutants if m.path == path]
        counted = [m for m in ms if m.status not in (EQUIVALENT, ERROR, NEEDS_GPU)]
        killed = sum(m.status in (KILLED, TIMEOUT) for m in counted)
        rows.append({
            "module": path, "killed": killed, "total": len(counted),
            "percent": round(100 * killed / len(counted), 1) if counted else 100.0,
            "not_covered": sum(m.status == NOT_COVERED for m in ms),
            "timeouts": sum(m.status == TIMEOUT for m in ms),
            "equivalent": sum(m.status == EQUIVALENT for m in ms),
            "needs_gpu": sum(m.status == NEEDS_GPU for m in ms),
            "errors": sum(m.status == ERROR for m in ms),
        })
    return rows


def write_report(path: Path, mutants: list, rows: list, command: str, seconds: float) -> None:
    out = [
        "# Mutation survivors",
        "",
        f"Written by `{command}` in {seconds:.0f} s. The score and what it means: docs/mutation.md.",
        "",
        "| module | killed | total | % | not covered | equivalent | needs a GPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(f"| {r['module']} | {r['killed']} | {r['total']} | {r['percent']} | {r['not_covered']} "
                   f"| {r['equivalent']} | {r['needs_gpu']} |")
    for module in dict.fromkeys(m.path for m in mutants):
        left = [m for m in mutants if m.path == module and m.status in (SURVIVED, NOT_COVERED, ERROR, NEEDS_GPU)]
        if not left:
            continue
        out += ["", f"## {module}", "", "| id | line | operator | status | mutated line |", "|---|---:|---|---|---|"]
        for m in left:
            shown = m.mutated_line.replace("|", "\\|")
            out.append(f"| `{m.id}` | {m.line} | {m.operator} | {m.status} | `{shown}` |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module files, relative to the root (default: the core)")
    parser.add_argument("--sample", type=int, default=0, help="mutants per module, picked with --seed (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=0,
                        help="seconds per mutant (default: 4 x its tests' time in the coverage run + 20, at least 30)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--tests", nargs="*", default=["tests"], help="test paths for the coverage run")
    parser.add_argument("--report", type=Path, default=None, help="survivors as Markdown (default docs/mutation-survivors.md)")
    parser.add_argument("--json", type=Path, default=None, help="every result (default .mutation/last-run.json)")
    parser.add_argument("--only", type=Path, default=None,
                        help="a previous --json: its mutants again (not --sample's), rerunning only those it did not kill")
    parser.add_argument("--list", action="store_true", help="list the mutants picked and stop")
    parser.add_argument("--preload", nargs="*", default=PRELOAD, help="libraries imported once before forking")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    modules = args.modules or CORE_MODULES
    for m in modules:
        if not (root / m).is_file():
            parser.error(f"{m}: no such module under {root}")
    started = time.monotonic()
    work = root / ".mutation"
    work.mkdir(exist_ok=True)
    # absolute: the children run inside the temporary copy, and write their logs beside json_out
    report = (args.report or root / "docs" / "mutation-survivors.md").resolve()
    json_out = (args.json or work / "last-run.json").resolve()
    equivalents = equivalent_ids(root / "docs" / "mutation.md")
    gpu_only = equivalent_ids(root / "docs" / "mutation.md", "Needs a GPU")

    before = {r["id"]: r for r in json.loads(args.only.read_text())["mutants"]} if args.only else None
    picked = []
    for path in modules:
        found = find_mutants(path, (root / path).read_text(encoding="utf-8"))
        if before is not None:  # the same mutants as that run, whatever the sample
            found = [m for m in found if m.id in before]
        elif args.sample and len(found) > args.sample:
            found = sorted(random.Random(f"{args.seed}:{path}").sample(found, args.sample),
                           key=lambda m: (m.start, m.operator))
        picked += found
    if before is not None:  # the previous run's kills stand (tests were added, not taken away); rerun the rest
        for m in picked:
            old = before.get(m.id)
            if old is not None and old["status"] in (KILLED, TIMEOUT):
                m.status, m.tests, m.seconds = old["status"], old["tests"], old["seconds"]
    for m in picked:
        if m.id in equivalents:
            m.status = EQUIVALENT
    if args.list:
        for m in picked:
            print(f"{m.id} {m.path}:{m.line} {m.operator}: {m.mutated_line}")
        return 0

    files = repo_files(root)
    for name in args.preload:
        try:
            __import__(name)
        except ImportError:
            pass
    with tempfile.TemporaryDirectory(prefix="kvplan-mutate-") as tmp:
        copies = [make_copy(root, files, Path(tmp) / f"copy{i}") for i in range(max(1, args.jobs))]
        include = sorted(set(modules) | set(CORE_MODULES) & set(files))
        key = tree_hash(root, files, json.dumps([include, args.tests]))
        map_file = work / "map.json"
        cmap = None
        if map_file.exists():
            cached = json.loads(map_file.read_text())
            if cached.get("key") == key:
                cmap = cached
        if cmap is None:
            print("building the line -> tests map (the whole suite under coverage, once)...", flush=True)
            t0 = time.monotonic()
            cmap = collect_map(copies[0], root, include, args.tests, work / "map.tmp.json")
            cmap["key"] = key
            cmap["seconds"] = round(time.monotonic() - t0, 1)
            map_file.write_text(json.dumps(cmap))
            (work / "map.tmp.json").unlink(missing_ok=True)
            print(f"  done in {cmap['seconds']:.0f} s", flush=True)
        logdir = json_out.with_suffix(".logs")  # one per run: runs side by side do not share it
        shutil.rmtree(logdir, ignore_errors=True)
        logdir.mkdir(parents=True)

        total = len(picked)

        def progress(done, m):
            if done % 10 == 0:  # an interrupted run still leaves what it found
                json_out.parent.mkdir(parents=True, exist_ok=True)
                json_out.write_text(json.dumps({"command": "(partial) " + " ".join(sys.argv), "seconds": None,
                                                "mutants": [x.summary() for x in picked if x.status]}, indent=1))
            if m.status in (SURVIVED, ERROR) or done % 25 == 0 or done == total:
                print(f"[{done}/{total}] {m.status}: {m.path}:{m.line} {m.operator} ({m.tests} tests, {m.seconds} s)",
                      flush=True)

        run_mutants(picked, cmap, root, copies, args.timeout or None, logdir, progress, args.tests)
    for m in picked:  # code only a GPU runs, on a machine without one: listed, not scored
        if m.status == NOT_COVERED and m.id in gpu_only:
            m.status = NEEDS_GPU

    seconds = time.monotonic() - started
    rows = score_table(picked, modules)
    command = "python tools/mutate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    print(f"{'module':40} {'killed':>7} {'total':>6} {'%':>6} {'not covered':>12}")
    for r in rows:
        print(f"{r['module']:40} {r['killed']:>7} {r['total']:>6} {r['percent']:>6} {r['not_covered']:>12}")
    killed = sum(r["killed"] for r in rows)
    counted = sum(r["total"] for r in rows)
    print(f"{'all':40} {killed:>7} {counted:>6} {round(100 * killed / counted, 1) if counted else 100.0:>6}")
    print(f"{seconds:.0f} s; survivors in {report}")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps({"command": command, "seconds": round(seconds, 1), "modules": rows,
                                    "mutants": [m.summary() for m in picked]}, indent=1))
    write_report(report, picked, rows, command, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
