"""The package's layers import one way: cli -> measure -> plan -> engines -> sources -> model -> the top
modules (README, "The layout"). A module may import its own package and any package below it, never one
above: that is what keeps the pure core free of I/O and the CLI thin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kvplan"
ORDER = ["entry", "cli", "measure", "plan", "engines", "sources", "model", "top"]  # top of the stack first
# The entry points sit above everything: `python -m kvplan`, and `import kvplan` (the Python API, loaded lazily).
ENTRY = {"kvplan", "kvplan.__main__", "kvplan.api"}


def _layer(module: str) -> str:
    if module in ENTRY:
        return "entry"
    parts = module.split(".")
    assert parts[0] == "kvplan", module
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else "top"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("kvplan"):
            if node.module == "kvplan":
                found += [(node.lineno, f"kvplan.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("kvplan.")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_its_layer_and_those_below(path):
    here = _layer(_module_name(path))
    upward = [
        f"line {line}: {target}"
        for line, target in _imports(path)
        if target != "kvplan" and ORDER.index(_layer(target)) < ORDER.index(here)
    ]
    assert not upward, f"{path.relative_to(PACKAGE.parent)} imports a layer above its own ({here}): {upward}"


def test_the_layer_rule_sees_an_upward_import():
    # the check itself: a plan module importing the CLI is upward, an engine importing the model is not
    assert ORDER.index(_layer("kvplan.cli.render")) < ORDER.index(_layer("kvplan.plan.planner"))
    assert ORDER.index(_layer("kvplan.model.layout")) > ORDER.index(_layer("kvplan.engines.hf"))
    assert _layer("kvplan.errors") == "top" and _layer("kvplan.measure") == "measure"
    assert _layer("kvplan.__main__") == "entry"
