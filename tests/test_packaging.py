"""The wheel: an installed kvplan finds its catalog, its GPU table and its version (README "Installing as a tool").

Built here with pip and hatchling (the build backend, in the `test` extra) without build isolation, so no
network is needed; `pipx install` / `uv tool install` of the same wheel were checked by hand (README).
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kvplan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("kvplan-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_every_catalog_spec_and_its_index(wheel):
    names = set(wheel.namelist())
    shipped = {f"kvplan/model_specs/{p.name}" for p in (ROOT / "model_specs").iterdir()
               if p.suffix in (".yaml", ".json")}
    assert shipped and shipped <= names
    assert "kvplan/model_specs/_index.json" in names and "kvplan/plan/data/gpus.yaml" in names
    assert "kvplan/py.typed" in names


def test_the_wheel_carries_the_one_version_and_the_console_script(wheel):
    meta = wheel.read("kvplan-%s.dist-info/METADATA" % kvplan.__version__).decode()
    assert re.search(r"^Version: (.+)$", meta, re.M).group(1) == kvplan.__version__
    assert "Provides-Extra: plot" in meta
    entry = wheel.read("kvplan-%s.dist-info/entry_points.txt" % kvplan.__version__).decode()
    assert "kvplan = kvplan.cli.app:main" in entry


def test_the_version_is_written_once():
    toml = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in toml and not re.search(r"^version\s*=", toml, re.M)
    assert re.search(r'^__version__ = "(.+)"$', (ROOT / "kvplan" / "__init__.py").read_text(), re.M)
