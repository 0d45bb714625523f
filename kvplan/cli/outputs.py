"""Where kvplan may write a file: one check every writer runs before it does any work.

"Nothing the user wrote is overwritten or lost." A command that writes a report
(`estimate --svg`, `estimate`/`compare`/`diff`/`check -o`, `measure -o`, `import -o`) calls
`check_output` first, before it reads a model, plans or runs anything, and refuses
(InputError, exit 2) when the path

- is a folder, or its folder does not exist, is a file, or cannot be written in
  (a temporary file is created there and deleted again, as the atomic write will);
- is one of the command's own input files (the plan, a spec, a GPU file, a
  calibration report, a model's config.json …), compared with os.path.samefile, so
  links and `./` spellings are caught; `--force` does not lift this;
- is an existing file that is not a report of the kind the command writes, unless
  `--force` is given. Each kind recognises its own earlier output, so a CI job that
  rewrites its report on every run needs no `--force`. An empty file holds nothing to
  lose and may be replaced (except by `import`); a device, pipe or socket never is.

The rule per kind (what an existing file must look like to be replaced):

- svg: its text starts with `<svg`, or with an XML declaration followed by `<svg`
  in its first 4 KiB (rich's export, or any SVG image; `--plot x.svg` too);
- png (`--plot x.png`): the PNG signature; html (`--plot x.html`): kvplan's mark
  `<!-- kvplan plot -->` in its first 4 KiB;
- junit: XML whose root element is `<testsuites` (JUnit XML; kvplan's own writes
  exactly that root);
- check-json / measure-json: a JSON object carrying kvplan's own top-level keys
  (`plan`, `passed`, `summary`, `deployments` / `kvplan_version`, `model`, `runs`);
- check-markdown: its first line starts `### ` and names `kvplan check`;
- check-github: every non-blank line is a workflow command (starts with `::`);
- check-table: its first line starts `kvplan check ` (the table's title);
- spec-yaml (`import`): never; an existing file needs `--force` (import's rule);
- kvplan-json (`estimate`, `compare`, `diff -o` with `--format json`): a JSON object, or an array of
  objects, carrying `schema_version`; kvplan-text (their other formats): only an empty file.

Nothing here imports pydantic, yaml or torch: `estimate`'s cold start stays lean.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from kvplan.errors import InputError
from kvplan.userfiles import loads_json

_HEAD_BYTES = 4096  # enough to see an XML declaration, a comment or two and the root element
_JSON_LIMIT_BYTES = 64 * 2**20  # kvplan's JSON reports are kilobytes; a larger file is not one of them


def _head(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(_HEAD_BYTES).decode("utf-8", errors="replace").lstrip("\ufeff")


def _first_line(path: Path) -> str:
    return _head(path).lstrip().split("\n", 1)[0]


def _is_svg(path: Path) -> bool:
    head = _head(path).lstrip()
    return head.startswith("<svg") or (head.startswith("<?xml") and "<svg" in head)


# an optional XML declaration, comments and a doctype, then the root element
_JUNIT_ROOT = re.compile(r"\s*(<\?xml[^>]*\?>\s*)?((<!--.*?-->|<!DOCTYPE[^>]*>)\s*)*<testsuites[\s>/]", re.S)


def _is_junit(path: Path) -> bool:
    return _JUNIT_ROOT.match(_head(path)) is not None


def _json_of(path: Path) -> Any:
    """The JSON document in `path`, or None where it is too large to be ours or is not JSON."""
    if path.stat().st_size > _JSON_LIMIT_BYTES:
        return None
    try:
        return loads_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _json_with_keys(*keys: str) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        data = _json_of(path)
        return isinstance(data, dict) and all(k in data for k in keys)

    return check


def _is_check_markdown(path: Path) -> bool:
    line = _first_line(path)
    return line.startswith("### ") and "kvplan check" in line


def _is_github_annotations(path: Path) -> bool:
    lines = [line for line in _head(path).splitlines() if line.strip()]
    return bool(lines) and all(line.startswith("::") for line in lines)


def _is_check_table(path: Path) -> bool:
    return _first_line(path).startswith("kvplan check ")


@dataclass(frozen=True)
class ReportKind:
    """A kind of file kvplan writes; `recognise(path)` says whether an existing file is one."""

    description: str  # completes "... is not <description>"
    recognise: Optional[Callable[[Path], bool]]  # None: no existing file is replaced without --force


SVG = ReportKind("an SVG image", _is_svg)
JUNIT = ReportKind("a JUnit XML report (<testsuites>)", _is_junit)
CHECK_JSON = ReportKind("a kvplan check JSON report", _json_with_keys("plan", "passed", "summary", "deployments"))
CHECK_MARKDOWN = ReportKind("a kvplan check Markdown report", _is_check_markdown)
CHECK_GITHUB = ReportKind("a file of GitHub workflow annotations", _is_github_annotations)
CHECK_TABLE = ReportKind("a kvplan check table", _is_check_table)
MEASURE_JSON = ReportKind("a kvplan measure JSON report", _json_with_keys("kvplan_version", "model", "runs"))
ENGINE_JSON = ReportKind("a kvplan measure --engine JSON report", _json_with_keys("kvplan_version", "model", "levels"))
SPEC_YAML = ReportKind("a spec", None)


def _is_png(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


PLOT_HTML_MARK = "<!-- kvplan plot -->"  # the second line of every HTML file `--plot` writes
PLOT_PNG = ReportKind("a PNG image", _is_png)
PLOT_HTML = ReportKind("a kvplan plot (HTML)", lambda path: PLOT_HTML_MARK in _head(path))


def _is_kvplan_json(path: Path) -> bool:
    """Any JSON document kvplan printed: an object with "schema_version", or an array of them."""
    data = _json_of(path)
    first = data[0] if isinstance(data, list) and data else data
    return isinstance(first, dict) and "schema_version" in first


# `estimate`, `compare`, `diff -o`: their JSON is recognised by its schema_version; a table, CSV or
# Markdown report carries no mark of its own, so an existing one is replaced only when empty or with --force.
KVPLAN_JSON = ReportKind('a kvplan JSON report (an object with "schema_version")', _is_kvplan_json)
KVPLAN_TEXT = ReportKind("empty (a table, CSV or Markdown report is replaced only with --force)", lambda path: False)


Input = tuple[str, str]  # (a path the command reads, what it is: "the plan being checked")


def check_output(path: str | os.PathLike, flag: str, kind: ReportKind, *, inputs: Iterable[Input] = (),
                 force: bool = False) -> None:
    """Refuse (InputError, exit 2) to write `path` for `flag` unless it is safe; see the module docstring."""
    shown = os.fspath(path)
    absolute = os.path.abspath(os.path.expanduser(shown))
    target = Path(os.path.realpath(absolute))  # through a link: the link stays, the file it names is replaced
    if target.is_dir():
        raise InputError(f"{flag} {shown}: is a folder; give a file name")
    folder = os.path.dirname(absolute)
    if not target.parent.is_dir():
        if target.parent.exists():
            raise InputError(f"{flag} {shown}: {folder} is a file, not a folder")
        raise InputError(f"{flag} {shown}: folder {folder} does not exist")
    if target.exists():
        for source, what in inputs:
            try:
                same = os.path.samefile(target, os.path.expanduser(source))
            except OSError:  # the input does not exist: resolving it reports that
                same = False
            if same:
                raise InputError(f"{flag} {shown} is {what}; choose another file")
        mode = target.stat().st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{flag} {shown} is not a regular file; choose a file name")
        if not force and kind.recognise is None:  # import's rule, and its words, from before this module
            raise InputError(f"{shown} already exists; pass --force to overwrite it")
        if not force and target.stat().st_size > 0 and not _recognised(target, kind):
            raise InputError(
                f"{flag} {shown} already exists and is not {kind.description}; "
                "choose another file, or pass --force to replace it"
            )
    try:  # the atomic write makes a temporary file in this folder: see now that it can
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{flag} {shown}: cannot write in folder {folder} ({exc.strerror or exc})") from None


def _recognised(path: Path, kind: ReportKind) -> bool:
    try:
        return kind.recognise is not None and kind.recognise(path)
    except OSError:  # unreadable: nothing shows it is ours
        return False


# ------------------------------------------------------------------ what a command reads


def model_inputs(ref: str, doing: str) -> list[Input]:
    """The files a model reference reads: a spec YAML (a catalog name's too), config.json or .gguf
    itself, and for a model's own files the weights' headers and index beside them.

    Best effort: a reference that points nowhere reads nothing, and resolving it reports that.
    """
    path = Path(ref).expanduser()
    if path.is_file():
        found = [(str(path), f"the model being {doing}")]
        if path.suffix.lower() in (".json", ".gguf"):
            found += _beside(path, doing)
        return found
    from kvplan.sources.catalog import SPECS_DIR

    catalog_file = SPECS_DIR / f"{ref.lower()}.yaml"  # a catalog name: its spec, in a checkout of kvplan
    if catalog_file.is_file():
        return [(str(catalog_file), f"the model being {doing}")]
    if not (path.is_dir() or "/" in ref or ref.startswith(("ollama:", "lmstudio:"))):  # the last: a runner's GGUF
        return []
    from kvplan.sources import resolve as model_source  # a folder or hub id: what `resolve_spec` itself would locate

    try:
        located = model_source.locate(ref, network=False)  # what is on disk now: no fetch here
    except (InputError, OSError):
        return []
    return [(str(located.path), f"the model being {doing}"), *_beside(located.path, doing)]


def _beside(path: Path, doing: str) -> list[Input]:
    """config.json's safetensors headers and index; a GGUF's split parts."""
    suffixes = (".gguf",) if path.suffix.lower() == ".gguf" else (".json", ".safetensors")
    try:
        names = [p for p in path.parent.iterdir() if p.name.lower().endswith(suffixes) and p != path]
    except OSError:
        return []
    return [(str(p), f"a file of the model being {doing}") for p in names]


def file_inputs(refs: Iterable[Optional[str]], what: str) -> list[Input]:
    """References that name existing files (GPU YAMLs, calibration reports), each called `what`."""
    return [(r, what) for r in refs if r and Path(r).expanduser().is_file()]
