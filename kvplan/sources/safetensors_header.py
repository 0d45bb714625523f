"""Read the JSON headers of `*.safetensors` files: exact parameter counts, no tensor data.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(`{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`), then the tensor
bytes. Only the first 8 + N bytes are ever read. Every declared length is checked
against the file's size and a cap before anything is read, so a hostile or
truncated file gets one clear error instead of a huge read.

A sharded checkpoint names its shards in `model.safetensors.index.json`
(`weight_map: {tensor: shard file}`); each shard's header is read the same way.

A hub snapshot that kvplan fetched without the weights (kvplan.sources.hub_fetch)
holds the headers in a sidecar, `.kvplan-safetensors-headers.json`: per file, its
size and its header text, exactly as the first 8 + N bytes of the file served them.
A file on disk is read in preference to its stored header; the checks are the same.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Optional

from kvplan.errors import InputError
from kvplan.userfiles import loads_json, read_text

# The safetensors crate refuses headers above 100 MB (MAX_HEADER_SIZE = 100_000_000
# in safetensors/src/tensor.rs); a real header is a few hundred KB.
MAX_HEADER_BYTES = 100_000_000
# An index file lists one line per tensor; DeepSeek-V3's (~92k tensors) is ~9 MB.
MAX_INDEX_BYTES = 64 * 1024 * 1024

INDEX_NAME = "model.safetensors.index.json"
# The headers kvplan fetched from the hub, beside config.json in the snapshot (kvplan.sources.hub_fetch).
SIDECAR_NAME = ".kvplan-safetensors-headers.json"
SIDECAR_FORMAT = "kvplan safetensors headers 1"

# Bits per element of each safetensors dtype (safetensors `Dtype`; F4 / F6 are
# packed sub-byte MX formats, F8_E8M0 is the MX scale type).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


class SafetensorsError(InputError):
    """A safetensors file or index that cannot be read as declared (exit 2)."""


@dataclass(frozen=True)
class DtypeTotal:
    """Elements and bytes stored in one dtype."""

    parameters: int
    num_bytes: int


@dataclass(frozen=True)
class SafetensorsSummary:
    """What the headers of one checkpoint declare: counts only, no tensor data."""

    files: tuple[str, ...]
    num_tensors: int
    num_parameters: int  # elements over every tensor (exact for unquantized weights)
    num_bytes: int  # tensor bytes, headers excluded
    by_dtype: dict[str, DtypeTotal] = field(default_factory=dict)
    tensor_names: tuple[str, ...] = ()
    tensor_bytes: tuple[int, ...] = ()  # data bytes of each tensor, in tensor_names order
    missing_files: tuple[str, ...] = ()  # shards the index names that are not present
    index_total_bytes: Optional[int] = None  # `metadata.total_size` of the index
    index_total_parameters: Optional[int] = None  # `metadata.total_parameters`, when written

    @property
    def complete(self) -> bool:
        """True when every shard the index names was read."""
        return not self.missing_files

    @property
    def dominant_dtype(self) -> Optional[str]:
        """The dtype holding the most bytes (e.g. 'BF16'), or None for an empty checkpoint."""
        if not self.by_dtype:
            return None
        return max(self.by_dtype.items(), key=lambda kv: kv[1].num_bytes)[0]


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    numel: int
    num_bytes: int


def _fail(path: Any, message: str) -> SafetensorsError:
    return SafetensorsError(f"{path}: {message}")


def read_header(path: Path) -> dict[str, Any]:
    """The parsed JSON header of one safetensors file; reads 8 + N bytes, never the tensors."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[dict[str, Any], int]:
    """(header, bytes of tensor data after it): the header checked against the file's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
            (declared,) = struct.unpack("<Q", prefix)
            check_header_length(path, declared, size)
            raw = f.read(declared)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, not a safetensors file") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    return parse_header(path, raw), size - 8 - declared


def parse_header(path: Any, raw: bytes) -> dict[str, Any]:
    """The header object from its N bytes of JSON; `path` names the file in errors."""
    try:
        header = loads_json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _fail(path, "header is not UTF-8 text; the file is damaged or not safetensors") from None
    except json.JSONDecodeError as exc:
        raise _fail(path, f"header is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    return header


def check_header_length(path: Any, declared: int, size: int) -> None:
    """Refuse a declared header length above the cap or past the end of a `size`-byte file."""
    if declared > MAX_HEADER_BYTES:
        raise _fail(
            path,
            f"declares a {declared:,}-byte header, above the {MAX_HEADER_BYTES:,}-byte cap "
            "safetensors itself enforces; the file is damaged or not safetensors",
        )
    if 8 + declared > size:
        raise _fail(path, f"truncated: declares a {declared:,}-byte header but the file holds {size:,} bytes")


def _tensors(path: Any, header: dict[str, Any], data_bytes: int) -> list[_Tensor]:
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _fail(path, f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise _fail(path, f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _fail(path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end] with begin <= end")
        numel = 1
        for d in shape:
            numel *= d
        bits = numel * DTYPE_BITS[dtype]
        declared = offsets[1] - offsets[0]
        if bits % 8 or bits // 8 != declared:
            raise _fail(
                path,
                f"tensor {name!r}: shape {shape} in {dtype} needs {bits / 8:g} bytes but data_offsets "
                f"span {declared:,}",
            )
        if offsets[1] > data_bytes:
            raise _fail(
                path,
                f"truncated: tensor {name!r} ends at data byte {offsets[1]:,} but the file holds "
                f"{data_bytes:,} bytes of tensor data",
            )
        tensors.append(_Tensor(name, dtype, numel, declared))
    return tensors


@dataclass(frozen=True)
class StoredHeader:
    """One file's header as the hub served it (the sidecar's entry): its N bytes of JSON and the file's size."""

    name: str
    raw: bytes
    size: int
    where: str  # the sidecar and the file's name, for errors

    def read(self) -> tuple[dict[str, Any], int]:
        check_header_length(self.where, len(self.raw), self.size)
        return parse_header(self.where, self.raw), self.size - 8 - len(self.raw)


def read_sidecar(folder: Path) -> dict[str, StoredHeader]:
    """The headers kvplan stored in `folder` (a hub snapshot), by file name; {} when it holds none."""
    path = Path(folder) / SIDECAR_NAME
    if not path.is_file():
        return {}
    try:
        data = loads_json(read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"cannot be read ({exc}); delete it and run again to fetch the headers anew") from None
    files = data.get("files") if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else None
    if not isinstance(files, dict):
        raise _fail(path, f"is not a {SIDECAR_FORMAT!r} file; delete it and run again to fetch the headers anew")
    out = {}
    for name, entry in files.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("header"), str)
        size = entry.get("size") if ok else None
        if not ok or not isinstance(size, int) or isinstance(size, bool) or Path(name).name != name:
            raise _fail(path, f"entry {name!r} is not {{size, header}} for a file in this folder; delete the file and run again")
        out[name] = StoredHeader(name, entry["header"].encode("utf-8"), size, f"{path} [{name}]")
    return out


def _summarize(files: Iterable["Path | StoredHeader"]) -> SafetensorsSummary:
    names: list[str] = []
    sizes: list[int] = []
    by_dtype: dict[str, list[int]] = {}
    read = []
    for path in files:
        stored = isinstance(path, StoredHeader)
        for t in _tensors(path.where if stored else path, *(path.read() if stored else _read(path))):
            names.append(t.name)
            sizes.append(t.num_bytes)
            acc = by_dtype.setdefault(t.dtype, [0, 0])
            acc[0] += t.numel
            acc[1] += t.num_bytes
        read.append(path.name)
    return SafetensorsSummary(
        files=tuple(read),
        num_tensors=len(names),
        num_parameters=sum(v[0] for v in by_dtype.values()),
        num_bytes=sum(v[1] for v in by_dtype.values()),
        by_dtype={k: DtypeTotal(v[0], v[1]) for k, v in sorted(by_dtype.items())},
        tensor_names=tuple(names),
        tensor_bytes=tuple(sizes),
    )


def summarize_file(path: Path) -> SafetensorsSummary:
    """Counts from one safetensors file's header."""
    return _summarize([Path(path)])


def _read_index(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise _fail(path, f"is {size:,} bytes, above the {MAX_INDEX_BYTES:,}-byte cap for an index")
        text = read_text(path)
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise _fail(path, "is not UTF-8 text") from None
    try:
        index = loads_json(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"line {exc.lineno}: malformed JSON: {exc.msg}") from None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise _fail(path, "has no `weight_map` object")
    return index


def summarize_index(index_path: Path, stored: Optional[dict[str, StoredHeader]] = None) -> SafetensorsSummary:
    """Counts over the shards an index names; shards not present (on disk or as a stored header) are
    listed, not guessed."""
    index_path = Path(index_path)
    stored = stored or {}
    index = _read_index(index_path)
    shards: list[str] = []
    for tensor, shard in index["weight_map"].items():
        # A shard must be a plain file name beside the index: never a path out of the folder.
        if (
            not isinstance(shard, str)
            or not shard.endswith(".safetensors")
            or Path(shard).name != shard
            or shard.startswith(".")
        ):
            raise _fail(index_path, f"weight_map[{tensor!r}]: {shard!r} is not a shard file name in this folder")
        if shard not in shards:
            shards.append(shard)
    present = [_on_disk_or_stored(index_path.parent, s, stored) for s in shards]
    missing = tuple(s for s, found in zip(shards, present) if found is None)
    present = [p for p in present if p is not None]
    summary = _summarize(present)
    if not missing:
        declared = set(index["weight_map"])
        found = set(summary.tensor_names)
        absent = sorted(declared - found)
        if absent:
            raise _fail(
                index_path,
                f"names {len(absent)} tensor(s) its shards do not hold, e.g. {absent[0]!r}",
            )
    metadata = index.get("metadata") if isinstance(index.get("metadata"), dict) else {}
    total_size = metadata.get("total_size")
    total_params = metadata.get("total_parameters")
    return replace(  # the shards' counts, with what the index adds
        summary,
        missing_files=missing,
        index_total_bytes=_whole(total_size),
        index_total_parameters=_whole(total_params) if not isinstance(total_params, float) else None,
    )


def _whole(value: Any) -> Optional[int]:
    """An index's count as an integer: an int, or a float with no fraction (transformers writes 1.6e10
    for some); None for anything else (a boolean, Infinity, NaN, text), as if it were absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def find_weights(folder: Path) -> Optional[SafetensorsSummary]:
    """The checkpoint in `folder`: the index's shards, else model.safetensors, else every *.safetensors.

    Mistral repositories ship `consolidated.safetensors` (their own format) beside
    the Hugging Face shards; it repeats the same weights, so it is used only when
    it is the only safetensors file there.
    """
    folder = Path(folder)
    stored = read_sidecar(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        return summarize_index(index, stored)
    single = _on_disk_or_stored(folder, "model.safetensors", stored)
    if single is not None:
        return _summarize([single])
    on_disk = {p.name for p in folder.glob("*.safetensors") if p.is_file()}
    names = checkpoint_files(sorted(on_disk | set(stored)))
    if not names:
        return None
    return _summarize([_on_disk_or_stored(folder, n, stored) for n in names])


def checkpoint_files(names: Iterable[str]) -> list[str]:
    """The *.safetensors files of a folder without an index or model.safetensors that hold the checkpoint:
    all of them but hidden ones, and Mistral's `consolidated*` only when nothing else is there."""
    files = sorted(n for n in names if n.endswith(".safetensors") and not n.startswith("."))
    return [n for n in files if not n.startswith("consolidated")] or files


def _on_disk_or_stored(folder: Path, name: str, stored: dict[str, StoredHeader]) -> "Path | StoredHeader | None":
    """The file itself when it is in `folder`, else its stored header, else None."""
    path = folder / name
    if path.is_file():
        return path
    return stored.get(name)
