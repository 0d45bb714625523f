"""safetensors headers: exact counts from tiny files the tests write; hostile headers refused cheaply."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kvplan.sources import safetensors_header as st
from kvplan.sources.safetensors_header import SafetensorsError, find_weights, summarize_file, summarize_index

BYTES = {"F32": 4, "BF16": 2, "F16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1, "I64": 8}


def safetensors_prefix(tensors: dict[str, tuple[str, list[int]]]) -> tuple[bytes, int]:
    """(the file's first 8 + N bytes: the header's length and JSON, padded to 8 bytes as the format asks;
    the bytes of tensor data after it, the tensors laid out back to back)."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, pad_data: int = 0) -> Path:
    """A real safetensors file: header JSON then zero-filled tensor bytes, laid out back to back."""
    prefix, data = safetensors_prefix(tensors)
    path.write_bytes(prefix + bytes(data + pad_data))
    return path


def test_counts_and_bytes_per_dtype(tmp_path):
    f = write_safetensors(
        tmp_path / "model.safetensors",
        {"embed.weight": ("BF16", [10, 4]), "norm.weight": ("F32", [4]), "q.weight": ("BF16", [4, 4])},
    )
    s = summarize_file(f)
    assert s.num_tensors == 3
    assert s.num_parameters == 40 + 4 + 16
    assert s.num_bytes == 2 * 40 + 4 * 4 + 2 * 16
    assert s.by_dtype["BF16"].parameters == 56 and s.by_dtype["BF16"].num_bytes == 112
    assert s.by_dtype["F32"].parameters == 4 and s.by_dtype["F32"].num_bytes == 16
    assert s.dominant_dtype == "BF16"
    assert s.complete


def test_scalar_tensor_counts_one(tmp_path):
    f = write_safetensors(tmp_path / "a.safetensors", {"scale": ("F32", [])})
    assert summarize_file(f).num_parameters == 1


def test_sharded_index(tmp_path):
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("BF16", [3, 5])})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("BF16", [7]), "c": ("F32", [2, 2])})
    index = {
        "metadata": {"total_size": 2 * 15 + 2 * 7 + 4 * 4},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                       "c": "model-00002-of-00002.safetensors"},
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    s = find_weights(tmp_path)
    assert s.num_parameters == 15 + 7 + 4
    assert s.files == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    assert s.index_total_bytes == 60 == s.num_bytes


def test_missing_shard_is_listed_not_guessed(tmp_path):
    write_safetensors(tmp_path / "s1.safetensors", {"a": ("BF16", [4])})
    index = {"metadata": {"total_parameters": 12}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    s = find_weights(tmp_path)
    assert s.missing_files == ("s2.safetensors",)
    assert not s.complete
    assert s.index_total_parameters == 12


def test_consolidated_file_not_double_counted(tmp_path):
    # Mistral repositories ship consolidated.safetensors beside the HF shards (same weights).
    write_safetensors(tmp_path / "consolidated.safetensors", {"w": ("BF16", [8])})
    write_safetensors(tmp_path / "model-00001-of-00001.safetensors", {"w": ("BF16", [8])})
    assert find_weights(tmp_path).num_parameters == 8


def test_no_weights(tmp_path):
    assert find_weights(tmp_path) is None


class CountingReads:
    """Wraps Path.open so a test can see how many bytes were read."""

    def __init__(self, monkeypatch):
        self.read_bytes = 0
        real_open = Path.open
        outer = self

        def counting_open(path, *args, **kwargs):
            f = real_open(path, *args, **kwargs)
            real_read = f.read

            def read(n=-1):
                data = real_read(n)
                outer.read_bytes += len(data)
                return data

            f.read = read
            return f

        monkeypatch.setattr(Path, "open", counting_open)


def test_huge_declared_header_refused_without_reading(tmp_path, monkeypatch):
    f = tmp_path / "big.safetensors"
    with f.open("wb") as out:
        out.write(struct.pack("<Q", 2**40))
        out.truncate(300 * 1024 * 1024)  # sparse: a 300 MB file that is mostly a hole
    reads = CountingReads(monkeypatch)
    with pytest.raises(SafetensorsError) as err:
        summarize_file(f)
    assert "declares a 1,099,511,627,776-byte header, above the 100,000,000-byte cap" in err.value.message
    assert reads.read_bytes == 8


def test_header_longer_than_file_refused_without_reading(tmp_path, monkeypatch):
    f = tmp_path / "short.safetensors"
    f.write_bytes(struct.pack("<Q", 5000) + b"{}")
    reads = CountingReads(monkeypatch)
    with pytest.raises(SafetensorsError) as err:
        summarize_file(f)
    assert err.value.message == f"{f}: truncated: declares a 5,000-byte header but the file holds 10 bytes"
    assert reads.read_bytes == 8


def test_only_the_header_is_read(tmp_path, monkeypatch):
    f = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", [256, 256])})  # 256 KiB of data
    header_len = struct.unpack("<Q", f.read_bytes()[:8])[0]
    reads = CountingReads(monkeypatch)
    summarize_file(f)
    assert reads.read_bytes == 8 + header_len


def raw_file(tmp_path: Path, header: bytes, data: bytes = b"") -> Path:
    f = tmp_path / "x.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return f


@pytest.mark.parametrize(
    "header, data, message",
    [
        (b"{not json", b"", "header is not valid JSON"),
        (b"\xff\xfe", b"", "header is not UTF-8 text"),
        (b"[1, 2]", b"", "header is not a JSON object"),
        (b'{"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 2]}}', b"\0\0", "tensor 'w': unknown dtype 'Q9'"),
        (b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', b"\0" * 4, "is not a list of non-negative integers"),
        (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 0]}}', b"\0" * 8, "is not [begin, end]"),
        (b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', b"\0" * 8, "needs 12 bytes but data_offsets span 8"),
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8, "truncated: tensor 'w' ends at data byte 16"),
        (b'{"w": 3}', b"", "tensor 'w': entry is not an object"),
    ],
)
def test_bad_headers(tmp_path, header, data, message):
    with pytest.raises(SafetensorsError) as err:
        summarize_file(raw_file(tmp_path, header, data))
    assert message in err.value.message


def test_too_short_for_a_length(tmp_path):
    f = tmp_path / "tiny.safetensors"
    f.write_bytes(b"abc")
    with pytest.raises(SafetensorsError) as err:
        summarize_file(f)
    assert "shorter than the 8-byte header length" in err.value.message


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/dir.safetensors", "x.bin"])
def test_index_cannot_point_outside_its_folder(tmp_path, shard):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(SafetensorsError) as err:
        summarize_index(tmp_path / "model.safetensors.index.json")
    assert "is not a shard file name in this folder" in err.value.message


def test_index_bad_json_names_the_line(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{\n  "weight_map": {,\n}')
    with pytest.raises(SafetensorsError) as err:
        summarize_index(tmp_path / "model.safetensors.index.json")
    assert "line 2: malformed JSON" in err.value.message


def test_index_naming_absent_tensor(tmp_path):
    write_safetensors(tmp_path / "s1.safetensors", {"a": ("BF16", [4])})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s1.safetensors", "ghost": "s1.safetensors"}})
    )
    with pytest.raises(SafetensorsError) as err:
        summarize_index(tmp_path / "model.safetensors.index.json")
    assert "names 1 tensor(s) its shards do not hold, e.g. 'ghost'" in err.value.message


def test_cap_matches_the_safetensors_crate():
    assert st.MAX_HEADER_BYTES == 100_000_000


def _np_bits(name):
    import numpy as np

    return np.dtype(name).itemsize * 8


# Bits per element, each from outside kvplan: numpy's item size for the types numpy has, and the
# sign + exponent + mantissa fields for the float formats it lacks (bfloat16; OCP MX fp8 / fp6 / fp4; E8M0).
SAFETENSORS_BITS = [
    ("BOOL", _np_bits("bool")), ("U8", _np_bits("uint8")), ("I8", _np_bits("int8")),
    ("I16", _np_bits("int16")), ("U16", _np_bits("uint16")), ("F16", _np_bits("float16")),
    ("I32", _np_bits("int32")), ("U32", _np_bits("uint32")), ("F32", _np_bits("float32")),
    ("C64", _np_bits("complex64")), ("F64", _np_bits("float64")), ("I64", _np_bits("int64")), ("U64", _np_bits("uint64")),
    ("BF16", 1 + 8 + 7), ("F8_E5M2", 1 + 5 + 2), ("F8_E4M3", 1 + 4 + 3), ("F8_E8M0", 8),
    ("F6_E2M3", 1 + 2 + 3), ("F6_E3M2", 1 + 3 + 2), ("F4", 1 + 2 + 1),
]


@pytest.mark.parametrize("dtype, bits", SAFETENSORS_BITS, ids=[d for d, _ in SAFETENSORS_BITS])
def test_bits_of_every_dtype(tmp_path, dtype, bits):
    # 8 elements take `bits` bytes; a span one byte off is refused
    for span, ok in ((bits, True), (bits + 1, False)):
        header = json.dumps({"t": {"dtype": dtype, "shape": [2, 4], "data_offsets": [0, span]}}).encode()
        f = tmp_path / f"{span}.safetensors"
        f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(span))
        if ok:
            s = summarize_file(f)
            assert (s.num_parameters, s.num_bytes) == (8, bits)
        else:
            with pytest.raises(SafetensorsError, match=f"needs {bits:g} bytes but data_offsets span {bits + 1}"):
                summarize_file(f)


def test_seven_bytes_are_too_short_for_a_length(tmp_path):
    f = tmp_path / "seven.safetensors"
    f.write_bytes(b"1234567")
    with pytest.raises(SafetensorsError) as err:
        summarize_file(f)
    assert err.value.message.endswith("not a safetensors file: 7 bytes, shorter than the 8-byte header length")


@pytest.mark.parametrize("index", [{"metadata": {}}, [], {"weight_map": []}])
def test_an_index_without_a_weight_map_object(tmp_path, index):
    f = tmp_path / "model.safetensors.index.json"
    f.write_text(json.dumps(index))
    with pytest.raises(SafetensorsError) as err:
        summarize_index(f)
    assert err.value.message.endswith("has no `weight_map` object")
