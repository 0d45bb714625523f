"""Reading spec YAML files: the shipped catalog, or a path the user gives.

Errors name the file, the line and the field (`file:line: field: message`), and
an unknown catalog name gets a "did you mean". Nothing here writes a file.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from kvplan.errors import InputError
from kvplan.model.shape import ModelShape, holds_stray_boolean

if TYPE_CHECKING:  # yaml and pydantic are imported where used: a catalog estimate needs neither
    import yaml
    from pydantic import BaseModel, ValidationError

    from kvplan.model.spec import ModelSpec

M = TypeVar("M", bound="BaseModel")


def _yaml_loader():
    """PyYAML and its fastest safe loader (the C one is ~10x faster; fall back without libyaml)."""
    import yaml

    try:
        return yaml, yaml.CSafeLoader
    except AttributeError:  # pragma: no cover
        return yaml, yaml.SafeLoader


def _shipped_dir(name: str) -> Path:
    """The shipped data folder: inside the installed package, or at the repo root."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    return package / name


SPECS_DIR = _shipped_dir("model_specs")


def catalog_names() -> list[str]:
    """Names of the shipped model specs, sorted."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def _line_index(node: "yaml.Node", where: str) -> dict[tuple, int]:
    """Map each key path in a composed YAML document to its 1-based line; refuse a key given twice.

    PyYAML keeps the last of two equal keys without a word (`context: 8k` then
    `context: 16k` reads as 16k): here the second is an error naming both lines.
    A node reached again through an alias is walked once (a "billion laughs"
    document stays linear).
    """
    import yaml

    index: dict[tuple, int] = {}
    duplicates: list[tuple[int, str, int]] = []  # (line, key, line of the first)
    seen: set[int] = set()
    stack: list[tuple["yaml.Node", tuple]] = [(node, ())]
    while stack:
        node, path = stack.pop()
        index.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    ident = (key_node.tag, key_node.value)  # `context` and `"context"` are one key
                    if ident in first:
                        duplicates.append((line, key_node.value, first[ident]))
                    else:
                        first[ident] = line
                key = key_node.value
                index[path + (key,)] = line
                stack.append((value_node, path + (key,)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[path + (i,)] = item.start_mark.line + 1
                stack.append((item, path + (i,)))
    if duplicates:  # the first in the file: one message
        line, key, first_line = min(duplicates)
        raise InputError(f"{where}:{line}: duplicate key {key!r} (first at line {first_line})")
    return index


def read_yaml(path: Path) -> tuple[Any, Callable[[tuple], int | None]]:
    """Parse a YAML file; return the data and a function from a key path to its line."""
    from kvplan.userfiles import read_user_text

    return read_yaml_text(read_user_text(path, "a YAML file"), str(path))


def read_yaml_text(text: str, where: str) -> tuple[Any, Callable[[tuple], int | None]]:
    """Parse YAML text; errors are named `where:LINE` (e.g. `specs/x.yaml@origin/main:12`).

    One parse with the C loader: the composed node tree gives the lines (and the
    duplicate-key check), then the same loader builds the data from it.
    """
    yaml, loader_cls = _yaml_loader()
    _refuse_deep_nesting(text, where)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        lines = _line_index(node, where) if node is not None else {}
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{at}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()

    def line_of(loc: tuple) -> int | None:
        for end in range(len(loc), 0, -1):
            if loc[:end] in lines:
                return lines[loc[:end]]
        return None

    return data, line_of


def _keys_at(model_cls: Any, loc: tuple) -> list[str]:
    """The keys a pydantic model accepts at `loc` (a path of field names and list indices); [] when unknown."""
    import typing

    def models_in(annotation: Any) -> list[Any]:
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]

    current: list[Any] = [model_cls]  # the candidate annotations at this depth
    for part in loc:
        if isinstance(part, int):  # a list or tuple entry: the element type is among the args
            continue
        found = []
        for model in (m for a in current for m in models_in(a)):
            field = model.model_fields.get(part) or next(
                (f for f in model.model_fields.values() if f.alias == part), None
            )
            if field is not None:
                found.append(field.annotation)
        current = found
    return sorted({f.alias or name for m in (m for a in current for m in models_in(a)) for name, f in m.model_fields.items()})


# PyYAML's C composer recurses once per nesting level with no limit: `a: [[[[…]]]]` 100,000 deep
# crashes the interpreter (a segmentation fault, no message at all). Specs, GPU files and plans nest
# 4 levels; 500 is far above any real file, far below the crash, and below PyYAML 6.0.4's own
# scanner cap (1,000 flow levels: "exceeded maximum nesting depth"), so every PyYAML says the same.
MAX_YAML_DEPTH = 500


def _refuse_deep_nesting(text: str, where: str) -> None:
    """InputError naming the line where collections nest deeper than MAX_YAML_DEPTH.

    Every level of nesting takes one indicator character ([ { - ? :), so a text with fewer of
    them cannot be too deep and is not scanned; otherwise libyaml's parser (a loop, not a
    recursion) streams the events and the depth is counted.
    """
    if sum(text.count(c) for c in "[{-?:") <= MAX_YAML_DEPTH:
        return
    yaml, loader_cls = _yaml_loader()
    loader = loader_cls(text)
    depth = 0
    try:
        while True:
            event = loader.get_event()
            if event is None:
                return
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise _too_deep(where, event.start_mark.line)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        # PyYAML >= 6.0.4 stops at 1,000 levels itself, and may find them while looking ahead of a
        # flow collection, before its events reach MAX_YAML_DEPTH here: the same refusal, its line
        if "maximum nesting depth" in str(exc) and getattr(exc, "problem_mark", None) is not None:
            raise _too_deep(where, exc.problem_mark.line) from None
        return  # malformed: the parse proper reports it with its line
    finally:
        loader.dispose()


def _too_deep(where: str, line0: int) -> InputError:
    return InputError(f"{where}:{line0 + 1}: nested more than {MAX_YAML_DEPTH:,} levels deep; a kvplan file nests a few levels")


def format_validation_error(
    exc: "ValidationError", where: str, line_of: Callable[[tuple], int | None], field_names: list[str] = (),
    model_cls: Any = None,
) -> str:
    """One `file:line: field: message` line per pydantic error; an unknown key gets a "did you mean"."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _keys_at(model_cls, loc[:-1]), n=1, cutoff=0.6) if model_cls and loc else []
            message = f"unknown field; did you mean {close[0]!r}?" if close else "unknown field"
        elif err["type"] == "missing":
            message = "required field is missing"
        message = message.removeprefix("Value error, ")
        if loc:
            line = line_of(loc)
            if loc[-1] == "[key]":  # a bad mapping key: name the entry (layer_pattern.1), the message names the key
                loc = loc[:-2]
            field = ".".join(str(p) for p in loc)
            out.append(f"{where}:{line}: {field}: {message}" if line else f"{where}: {field}: {message}")
            continue
        # A whole-model check: point at the first field its message names.
        named = [(message.find(k), k) for k in field_names if k in message]
        line = line_of((min(named)[1],)) if named else None
        out.append(f"{where}:{line}: {message}" if line else f"{where}: {message}")
    return "\n".join(out)


def load_model(model_cls: type[M], path: Path, data: Any = None, line_of=None) -> M:
    """Validate a YAML file into `model_cls`, errors rendered with file and line."""
    from pydantic import ValidationError

    if data is None:
        data, line_of = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of fields at the top level")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise InputError(
            format_validation_error(exc, str(path), line_of or (lambda loc: None), list(data), model_cls)
        ) from None


def load_spec_file(path: Path, *, fast: bool = False) -> "ModelSpec":
    """A spec YAML validated into ModelSpec; `fast`: a ModelShape when kvplan.model.spec_rules' cheap check
    accepts it as it stands (no pydantic import), else ModelSpec, which accepts or refuses it as ever."""
    data, line_of = read_yaml(path)
    if fast:
        from kvplan.model.spec_rules import shape_if_valid

        shape = shape_if_valid(data)
        if shape is not None:
            return shape  # type: ignore[return-value]
    from kvplan.model.spec import ModelSpec

    return load_model(ModelSpec, path, data, line_of)


# ----------------------------------------------------------------- the fast path
#
# `model_specs/_index.json` holds every shipped spec already validated, keyed by
# the SHA-256 of its YAML text. `kvplan estimate` on a catalog name checks the
# hash and rebuilds the spec as a `ModelShape` without importing pydantic or
# PyYAML; an edited file (hash mismatch) goes through full validation instead.
# `python -m kvplan.sources.catalog` rewrites the index; a test fails while it is stale.

INDEX_FILE = SPECS_DIR / "_index.json"


def _sha256(path: Path) -> str:
    import hashlib  # here: loading OpenSSL costs milliseconds that a model's own files do not need

    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_index() -> dict:
    """Validate every shipped spec and return the index document."""
    specs = {}
    for name in catalog_names():
        path = SPECS_DIR / f"{name}.yaml"
        spec = load_spec_file(path)
        specs[name] = {"sha256": _sha256(path), "fields": spec.model_dump(mode="json")}
    return {"version": 1, "specs": specs}


def write_index() -> Path:
    """Rewrite model_specs/_index.json atomically."""
    from kvplan.atomic import write_text_atomically

    text = json.dumps(build_index(), indent=1) + "\n"  # field order kept: `kvplan show` prints it
    return write_text_atomically(INDEX_FILE, text, "index")


_index_cache: dict | None = None


def _indexed_shape(name: str, path: Path) -> ModelShape | None:
    """The validated spec from the index when the file is unchanged, else None."""
    global _index_cache
    if _index_cache is None:
        try:
            _index_cache = json.loads(INDEX_FILE.read_text(encoding="utf-8")).get("specs", {})
        except (OSError, ValueError, AttributeError):
            _index_cache = {}
    entry = _index_cache.get(name)
    if not entry or entry.get("sha256") != _sha256(path):
        return None
    fields = entry.get("fields")
    if not isinstance(fields, dict) or holds_stray_boolean(fields):  # not what validation writes: validate the YAML
        return None
    return ModelShape(fields)


def broken_link(path: Path) -> str | None:
    """'is a broken symbolic link to 'TARGET', which does not exist' when `path` is one; else None."""
    if path.is_symlink() and not path.exists():
        return f"is a broken symbolic link to {os.readlink(path)!r}, which does not exist"
    return None


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), choices, n=3, cutoff=0.5)
    if not close:
        close = [c for c in choices if name.lower() in c][:3]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def resolve_spec(ref: str, *, fast: bool = False) -> "ModelSpec":
    """A catalog name, a spec YAML, or a model's own files (config.json, folder, .gguf, hub id, ollama:/lmstudio:).

    `fast`: the spec may come back as a ModelShape (same fields and derived sizes, no
    pydantic import): a catalog spec from the validated index, any other from
    kvplan.model.spec_rules' cheap check; callers that need the pydantic model
    (model_dump(mode=...), model_copy) leave it False.
    """
    if not ref.strip():  # Path("") is the current folder: name the empty argument instead
        raise InputError(f"MODEL is empty ({ref!r}); give a catalog name (`kvplan models`), a spec YAML, config.json, model folder, .gguf, hub id org/name or ollama:NAME")
    if ref.startswith(("ollama:", "lmstudio:")):  # a local runner's GGUF (kvplan.sources.runners)
        from kvplan.sources import resolve as model_source

        return model_source.spec_from_source(ref, fast=fast)
    path = Path(ref).expanduser()
    if broken_link(path):
        raise InputError(f"{ref}: {broken_link(path)}; point it at the model's files")
    looks_like_path = ref.endswith((".yaml", ".yml")) or "/" in ref or path.exists()
    own_files = path.suffix.lower() in (".json", ".gguf")  # config.json / GGUF: kvplan.sources.resolve
    if looks_like_path and path.is_file() and not own_files:
        from kvplan.sources.resolve import _gguf_magic

        own_files = _gguf_magic(path)  # a GGUF without the suffix: Ollama's blobs/sha256-…
    if looks_like_path and path.is_file() and not own_files:
        return load_spec_file(path, fast=fast)
    catalog_file = SPECS_DIR / f"{ref.lower()}.yaml"
    if catalog_file.is_file():
        if fast:
            shape = _indexed_shape(ref.lower(), catalog_file)
            if shape is not None:
                return shape  # type: ignore[return-value]
        return load_spec_file(catalog_file)
    if looks_like_path:
        from kvplan.sources import resolve as model_source  # imported here: a catalog lookup stays fast

        if path.is_file() or path.is_dir() or model_source.looks_like_hub_id(ref):
            return model_source.spec_from_source(ref, fast=fast)
        raise InputError(f"{ref}: no such file")
    raise InputError(
        f"unknown model {ref!r}{did_you_mean(ref, catalog_names())} "
        "(`kvplan models` lists the catalog; a spec YAML, config.json, model folder, .gguf, "
        "hub id org/name or ollama:NAME also works)"
    )


if __name__ == "__main__":
    print(f"wrote {write_index()}")
