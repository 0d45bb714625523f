"""GGUF headers: tiny files written here (every value type, arrays), spec mapping, hostile lengths."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvplan.sources.gguf import GGUFError, LargeArray, read_gguf, spec_fields_from_gguf
from kvplan.model.spec import ModelSpec

# value type ids (gguf.md)
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
TYPE_BYTES = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q8_0: (32, 34)}


def gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_value(vtype: int, value) -> bytes:
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:
        item_type, items = value
        return struct.pack("<IQ", item_type, len(items)) + b"".join(gguf_value(item_type, v) for v in items)
    return struct.pack(_FMT[vtype], value)


def write_gguf(path: Path, metadata: list[tuple[str, int, object]], tensors: list[tuple[str, list[int], int]] = (), *, version=3) -> Path:
    """A GGUF v3 file: header, metadata, tensor infos, then zero tensor data at 32-byte alignment."""
    body = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, vtype, value in metadata:
        body += gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)
    offset, sizes = 0, []
    for name, shape, ggml_type in tensors:
        block, size = TYPE_BYTES[ggml_type]
        n = 1
        for d in shape:
            n *= d
        nbytes = -(-n // block) * size
        body += gguf_string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        body += struct.pack("<IQ", ggml_type, offset)
        offset += -(-nbytes // 32) * 32
        sizes.append(nbytes)
    body += bytes(-len(body) % 32)
    path.write_bytes(body + bytes(offset))
    return path


def llama_metadata(arch="llama", layers=4, heads=8, kv=2, hidden=64, extra=()):
    return [
        ("general.architecture", STRING, arch),
        ("general.name", STRING, "Tiny Test"),
        (f"{arch}.block_count", U32, layers),
        (f"{arch}.context_length", U32, 4096),
        (f"{arch}.embedding_length", U32, hidden),
        (f"{arch}.feed_forward_length", U32, 128),
        (f"{arch}.attention.head_count", U32, heads),
        (f"{arch}.attention.head_count_kv", U32, kv),
        (f"{arch}.vocab_size", U32, 100),
        *extra,
    ]


# Embedding and output matrices (64 x 100 each): a spec needs at least these parameters.
EMBED = [("token_embd.weight", [64, 100], GGML_F16), ("output.weight", [64, 100], GGML_F16)]


def spec_from(path: Path) -> ModelSpec:
    fields, notes = spec_fields_from_gguf(read_gguf(path))
    return ModelSpec(name="t", source="test", notes="; ".join(notes), **fields)


def kinds(spec: ModelSpec) -> list[str]:
    return [k.value for k in spec.layer_kinds]


def test_every_value_type_round_trips(tmp_path):
    meta = [
        ("u8", U8, 200), ("i8", I8, -5), ("u16", U16, 60000), ("i16", I16, -300), ("u32", U32, 4_000_000_000),
        ("i32", I32, -70000), ("f32", F32, 1.5), ("bool", BOOL, True), ("str", STRING, "héllo"),
        ("u64", U64, 2**40), ("i64", I64, -(2**40)), ("f64", F64, 0.25),
        ("arr_u32", ARRAY, (U32, [1, 2, 3])), ("arr_str", ARRAY, (STRING, ["a", "bc"])),
        ("arr_nested", ARRAY, (ARRAY, [(I8, [1, -1]), (I8, [])])), ("arr_bool", ARRAY, (BOOL, [True, False])),
    ]
    h = read_gguf(write_gguf(tmp_path / "v.gguf", meta))
    assert h.version == 3
    assert h.metadata["u8"] == 200 and h.metadata["i8"] == -5 and h.metadata["u16"] == 60000
    assert h.metadata["i16"] == -300 and h.metadata["u32"] == 4_000_000_000 and h.metadata["i32"] == -70000
    assert h.metadata["f32"] == 1.5 and h.metadata["bool"] is True and h.metadata["str"] == "héllo"
    assert h.metadata["u64"] == 2**40 and h.metadata["i64"] == -(2**40) and h.metadata["f64"] == 0.25
    assert h.metadata["arr_u32"] == [1, 2, 3] and h.metadata["arr_str"] == ["a", "bc"]
    assert h.metadata["arr_nested"] == [[1, -1], []] and h.metadata["arr_bool"] == [True, False]


def test_large_token_array_kept_as_a_count(tmp_path):
    tokens = [f"t{i}" for i in range(70000)]
    meta = [m for m in llama_metadata(hidden=8) if not m[0].endswith("vocab_size")]
    meta.append(("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)))
    h = read_gguf(write_gguf(tmp_path / "tok.gguf", meta, [("token_embd.weight", [8, 70000], GGML_F16)]))
    assert h.metadata["tokenizer.ggml.tokens"] == LargeArray(STRING, 70000)
    assert spec_from(tmp_path / "tok.gguf").vocab_size == 70000


def test_llama_like_spec_and_exact_parameters(tmp_path):
    tensors = [
        ("token_embd.weight", [64, 100], GGML_Q8_0),  # 6400 elements
        ("blk.0.attn_q.weight", [64, 64], GGML_F16),  # 4096
        ("output_norm.weight", [64], GGML_F32),  # 64
    ]  # no output.weight: llama.cpp ties the output to token_embd
    h = read_gguf(write_gguf(tmp_path / "m.gguf", llama_metadata(), tensors))
    assert h.num_parameters == 6400 + 4096 + 64
    types = h.tensor_types()
    assert types["Q8_0"].elements == 6400 and types["Q8_0"].num_bytes == 200 * 34  # 32 values in 34 bytes
    assert types["F16"].num_bytes == 4096 * 2 and types["F32"].num_bytes == 64 * 4
    spec = spec_from(tmp_path / "m.gguf")
    assert (spec.num_hidden_layers, spec.num_attention_heads, spec.num_key_value_heads) == (4, 8, 2)
    assert spec.head_dim == 8  # 64 / 8 heads, no key_length in the file
    assert spec.max_position_embeddings == 4096 and spec.vocab_size == 100
    assert spec.num_parameters == 10560
    assert spec.tie_word_embeddings
    assert spec.torch_dtype == "float16"  # llama.cpp's default KV type
    assert kinds(spec) == ["full_attention"] * 4


def test_mistral_window_ignored_as_llama_cpp_does(tmp_path):
    meta = llama_metadata(extra=[("llama.attention.sliding_window", U32, 4096)])
    spec = spec_from(write_gguf(tmp_path / "m.gguf", meta, EMBED))
    assert kinds(spec) == ["full_attention"] * 4
    assert "sliding_window = 4096 is not applied" in spec.notes


def test_gemma3_five_of_six_sliding(tmp_path):
    meta = llama_metadata("gemma3", layers=12, extra=[("gemma3.attention.sliding_window", U32, 1024),
                                                      ("gemma3.attention.key_length", U32, 256)])
    spec = spec_from(write_gguf(tmp_path / "g.gguf", meta, EMBED))
    assert kinds(spec) == (["sliding_attention"] * 5 + ["full_attention"]) * 2
    assert spec.sliding_window == 1024 and spec.head_dim == 256


def test_gemma2_default_window_and_alternation(tmp_path):
    spec = spec_from(write_gguf(tmp_path / "g.gguf", llama_metadata("gemma2"), EMBED))
    assert kinds(spec) == ["sliding_attention", "full_attention"] * 2
    assert spec.sliding_window == 4096


def test_explicit_pattern_array(tmp_path):
    meta = llama_metadata("qwen3next", extra=[("qwen3next.attention.sliding_window", U32, 64),
                                              ("qwen3next.attention.sliding_window_pattern", ARRAY, (BOOL, [True, False, False, True]))])
    spec = spec_from(write_gguf(tmp_path / "p.gguf", meta, EMBED))
    assert kinds(spec) == ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]


def test_llama4_chunked_every_fourth_global(tmp_path):
    spec = spec_from(write_gguf(tmp_path / "l4.gguf", llama_metadata("llama4", layers=8), EMBED))
    assert kinds(spec) == (["chunked_attention"] * 3 + ["full_attention"]) * 2
    assert spec.attention_chunk_size == 8192


def test_deepseek2_mla(tmp_path):
    meta = llama_metadata("deepseek2", heads=16, kv=1, extra=[
        ("deepseek2.attention.kv_lora_rank", U32, 512), ("deepseek2.rope.dimension_count", U32, 64),
        ("deepseek2.attention.key_length", U32, 576), ("deepseek2.attention.value_length", U32, 512),
        ("deepseek2.attention.key_length_mla", U32, 192), ("deepseek2.attention.value_length_mla", U32, 128),
    ])
    spec = spec_from(write_gguf(tmp_path / "ds.gguf", meta, EMBED))
    assert spec.is_mla and spec.k_head_dim == 576 and spec.qk_nope_head_dim == 128
    assert kinds(spec) == ["mla"] * 4


def test_jamba_state_layers_and_expert_activity(tmp_path):
    meta = llama_metadata("jamba", extra=[
        ("jamba.attention.head_count_kv", ARRAY, (U32, [0, 2, 0, 0])),
        ("jamba.ssm.conv_kernel", U32, 4), ("jamba.ssm.state_size", U32, 16), ("jamba.ssm.inner_size", U32, 128),
        ("jamba.expert_count", U32, 4), ("jamba.expert_used_count", U32, 1),
    ])
    meta = [m for m in meta if not (m[0] == "jamba.attention.head_count_kv" and m[1] == U32)]
    tensors = [("blk.1.ffn_up_exps.weight", [64, 32, 4], GGML_F16), ("token_embd.weight", [64, 100], GGML_F16)]
    spec = spec_from(write_gguf(tmp_path / "j.gguf", meta, tensors))
    assert kinds(spec) == ["state", "full_attention", "state", "state"]
    assert spec.mamba_expand == 2 and spec.mamba_d_state == 16
    # 3 of 4 experts idle per token: 3/4 of the 8192 stacked expert elements
    assert spec.num_parameters == 8192 + 6400
    assert spec.num_active_parameters == 8192 + 6400 - 8192 * 3 // 4


@pytest.mark.parametrize(
    "drop, message",
    [("llama.block_count", "missing metadata llama.block_count"), ("general.architecture", "no general.architecture")],
)
def test_missing_keys_named(tmp_path, drop, message):
    meta = [m for m in llama_metadata() if m[0] != drop]
    with pytest.raises(GGUFError) as err:
        spec_fields_from_gguf(read_gguf(write_gguf(tmp_path / "m.gguf", meta)))
    assert message in err.value.message


def test_a_huge_block_count_is_refused_before_the_per_layer_lists(tmp_path):
    meta = [(k, U64, 10**11) if k == "llama.block_count" else (k, t, v) for k, t, v in llama_metadata()]
    path = write_gguf(tmp_path / "m.gguf", meta)
    with pytest.raises(GGUFError) as err:
        spec_fields_from_gguf(read_gguf(path))
    assert err.value.message == (
        f"{path}: llama.block_count: 100,000,000,000 is more than 10,000, kvplan's limit, far above any real model "
        "(DeepNet, the deepest transformer trained, has 1,000 layers); check the value"
    )


# ------------------------------------------------------------------ hostile files


def header_bytes(n_tensors=0, n_kv=1, version=3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"GGML" + bytes(20), "not a GGUF file"),
        (b"GG", "not a GGUF file"),
        (header_bytes(version=1), "GGUF version 1 is not supported"),
        (b"GGUF" + struct.pack(">I", 3) + bytes(16), "GGUF version 50331648 is not supported"),  # big-endian
        (header_bytes() + struct.pack("<Q", 2**60), "declares a 1,152,921,504,606,846,976-byte string"),
        (header_bytes() + struct.pack("<Q", 1000) + b"abc", "truncated: metadata key #0 needs 1,000 bytes"),
        (header_bytes() + gguf_string("k") + struct.pack("<IIQ", ARRAY, U32, 2**62), "array items, above"),
        (header_bytes() + gguf_string("k") + struct.pack("<IIQ", ARRAY, U64, 1000) + bytes(16), "more than the 16 bytes left"),
        (header_bytes() + gguf_string("k") + struct.pack("<I", 77), "unknown value type 77"),
        (header_bytes(n_kv=2**40), "above kvplan's caps"),
        (header_bytes(n_tensors=1, n_kv=0) + gguf_string("t") + struct.pack("<I", 9), "declares 9 dimensions"),
        (header_bytes() + gguf_string("k") + struct.pack("<I", STRING) + struct.pack("<Q", 2) + b"\xff\xfe", "is not UTF-8"),
    ],
)
def test_hostile_headers(tmp_path, content, message):
    f = tmp_path / "bad.gguf"
    f.write_bytes(content)
    with pytest.raises(GGUFError) as err:
        read_gguf(f)
    assert message in err.value.message


def test_tensor_data_past_end_of_file(tmp_path):
    f = write_gguf(tmp_path / "t.gguf", llama_metadata(), [("w", [1024], GGML_F32)])
    f.write_bytes(f.read_bytes()[:-100])  # cut the tensor data short
    with pytest.raises(GGUFError) as err:
        read_gguf(f)
    assert "truncated: tensor 'w' (F32, 4,096 bytes at data offset 0) runs past the end" in err.value.message


def test_huge_length_refused_without_reading_the_file(tmp_path, monkeypatch):
    f = tmp_path / "huge.gguf"
    with f.open("wb") as out:
        out.write(header_bytes() + struct.pack("<Q", 10**9))  # a 1 GB key in a 200 MB (sparse) file
        out.truncate(200 * 1024 * 1024)
    read = []
    real_open = Path.open

    def counting_open(path, *a, **k):
        handle = real_open(path, *a, **k)
        real_read = handle.read
        handle.read = lambda n=-1: read.append(n) or real_read(n)
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    with pytest.raises(GGUFError) as err:
        read_gguf(f)
    assert "declares a 1,000,000,000-byte string" in err.value.message
    assert sum(read) < 64  # the fixed header and one length, nothing more


def test_a_zero_head_count_is_named_not_called_a_per_layer_difference(tmp_path, capsys):
    from cli_helpers import run_cli

    path = write_gguf(tmp_path / "m.gguf", llama_metadata(heads=0, kv=0), EMBED)
    r = run_cli(capsys, "estimate", str(path))
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: {path}: llama.attention.head_count = 0: no layer has an attention head; "
        "a GGUF model needs a positive head count (the file's metadata is broken)\n"
    )


def test_head_counts_that_do_vary_by_layer_are_shown(tmp_path):
    meta = [(k, ARRAY, (U32, [8, 8, 4, 8])) if k == "llama.attention.head_count" else (k, t, v) for k, t, v in llama_metadata()]
    path = write_gguf(tmp_path / "m.gguf", meta, EMBED)
    with pytest.raises(GGUFError) as err:
        spec_fields_from_gguf(read_gguf(path))
    assert err.value.message == (
        f"{path}: attention head counts vary by layer (llama.attention.head_count takes [4, 8], head_count_kv [2]); "
        "kvplan's spec holds one count for every attention layer"
    )


# Block layouts from ggml/src/ggml-common.h (ggml-org/llama.cpp; QK_K = 256, K_SCALE_SIZE = 12,
# ggml_half = 2 bytes): (type id, name, values per block, bytes per block as the struct's fields add up).
GGML_BLOCKS = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 2 + 32 // 2),  # d, qs[QK4_0 / 2]
    (3, "Q4_1", 32, 2 + 2 + 32 // 2),  # d, m, qs
    (6, "Q5_0", 32, 2 + 4 + 32 // 2),  # d, qh[4], qs
    (7, "Q5_1", 32, 2 + 2 + 4 + 32 // 2),  # d, m, qh[4], qs
    (8, "Q8_0", 32, 2 + 32),  # d, qs[32] int8
    (9, "Q8_1", 32, 2 + 2 + 32),  # d, s, qs
    (10, "Q2_K", 256, 256 // 16 + 256 // 4 + 2 + 2),  # scales, qs, d, dmin
    (11, "Q3_K", 256, 256 // 8 + 256 // 4 + 12 + 2),  # hmask, qs, scales[12], d
    (12, "Q4_K", 256, 2 + 2 + 12 + 256 // 2),  # d, dmin, scales[K_SCALE_SIZE], qs
    (13, "Q5_K", 256, 2 + 2 + 12 + 256 // 8 + 256 // 2),  # d, dmin, scales, qh, qs
    (14, "Q6_K", 256, 256 // 2 + 256 // 4 + 256 // 16 + 2),  # ql, qh, scales int8, d
    (15, "Q8_K", 256, 4 + 256 + 2 * (256 // 16)),  # float d, qs, int16 bsums
    (16, "IQ2_XXS", 256, 2 + 2 * (256 // 8)),  # d, uint16 qs[QK_K / 8]
    (17, "IQ2_XS", 256, 2 + 2 * (256 // 8) + 256 // 32),  # d, uint16 qs, scales
    (18, "IQ3_XXS", 256, 2 + 3 * 256 // 8),  # d, qs[3 QK_K / 8]
    (19, "IQ1_S", 256, 2 + 256 // 8 + 2 * (256 // 32)),  # d, qs, uint16 qh
    (20, "IQ4_NL", 32, 2 + 32 // 2),  # d, qs
    (21, "IQ3_S", 256, 2 + 256 // 4 + 256 // 32 + 256 // 8 + 256 // 64),  # d, qs, qh, signs, scales
    (22, "IQ2_S", 256, 2 + 256 // 4 + 256 // 32 + 256 // 32),  # d, qs, qh, scales
    (23, "IQ4_XS", 256, 2 + 2 + 256 // 64 + 256 // 2),  # d, scales_h, scales_l, qs
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 256 // 8 + 256 // 16 + 256 // 32),  # qs, qh, scales (the scale lives in them)
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, (256 - 4 * 256 // 64) // 5 + 256 // 64 + 2),  # qs, qh, d
    (35, "TQ2_0", 256, 256 // 4 + 2),  # qs, d
    (39, "MXFP4", 32, 1 + 32 // 2),  # e (E8M0), qs
]


@pytest.mark.parametrize("type_id, name, per_block, block_bytes", GGML_BLOCKS, ids=[b[1] for b in GGML_BLOCKS])
def test_ggml_block_sizes(type_id, name, per_block, block_bytes):
    from kvplan.sources.gguf import TensorInfo

    # one block and one value more: a partial block is stored whole
    t = TensorInfo("t", (per_block + 1,), type_id, 0)
    assert t.type_name == name
    assert t.num_bytes == 2 * block_bytes if per_block > 1 else (per_block + 1) * block_bytes
    # rows of 3 x 256 values: whole blocks only (256 is a multiple of every block length)
    assert TensorInfo("t", (256, 3), type_id, 0).num_bytes == 768 // per_block * block_bytes


def test_an_unknown_ggml_type_has_no_size():
    from kvplan.sources.gguf import TensorInfo

    t = TensorInfo("t", (10,), 31, 0)  # 31 is not a ggml type kvplan knows
    assert (t.type_name, t.num_bytes) == ("type31", None)


def test_tensor_data_one_byte_short_past_the_alignment_padding(tmp_path):
    # the data starts at the next multiple of 32 after the header; the file ends 1 byte before the tensor does
    f = write_gguf(tmp_path / "t.gguf", llama_metadata(), [("w", [1024], GGML_F32)])
    assert read_gguf(f).tensors[0].num_bytes == 4096
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(GGUFError, match="truncated: tensor 'w'"):
        read_gguf(f)


def test_alignment_one_is_allowed_and_zero_refused(tmp_path):
    f = write_gguf(tmp_path / "a1.gguf", llama_metadata(extra=[("general.alignment", U32, 1)]), [("w", [8], GGML_F32)])
    assert read_gguf(f).tensors[0].num_bytes == 32
    f = write_gguf(tmp_path / "a0.gguf", llama_metadata(extra=[("general.alignment", U32, 0)]), [("w", [8], GGML_F32)])
    with pytest.raises(GGUFError, match="general.alignment 0 is not a positive integer"):
        read_gguf(f)


@pytest.mark.parametrize("item_type, items, item_bytes", [(U8, [7] * 5, 1), (STRING, [""] * 5, 8)])
def test_an_array_that_exactly_fills_the_file(tmp_path, item_type, items, item_bytes):
    # the last bytes of the file are the array's 5 items (no padding, no tensors): 5 x 1 B of u8, 5 x 8 B of empty strings
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string("k") + struct.pack("<I", ARRAY)
    body += gguf_value(ARRAY, (item_type, items))
    f = tmp_path / "fill.gguf"
    f.write_bytes(body)
    assert read_gguf(f).metadata["k"] == items
    f.write_bytes(body[:-1])  # one byte fewer than the items need
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(f)


@pytest.mark.parametrize("arch, pattern", [
    # llama.cpp load_hparams: gpt-oss set_swa_pattern(2) -> layers 0, 2 slide; cohere2 set_swa_pattern(4) -> 0, 1, 2
    ("gpt-oss", ["sliding_attention", "full_attention"] * 2),
    ("cohere2", ["sliding_attention"] * 3 + ["full_attention"]),
])
def test_swa_patterns_llama_cpp_sets_in_code(tmp_path, arch, pattern):
    meta = llama_metadata(arch, extra=[(f"{arch}.attention.sliding_window", U32, 128)])
    spec = spec_from(write_gguf(tmp_path / "s.gguf", meta, EMBED))
    assert kinds(spec) == pattern and spec.sliding_window == 128


def test_two_kv_head_counts_are_refused(tmp_path):
    meta = [m for m in llama_metadata() if m[0] != "llama.attention.head_count_kv"]
    meta.append(("llama.attention.head_count_kv", ARRAY, (U32, [2, 2, 4, 4])))
    with pytest.raises(GGUFError, match="attention head counts vary by layer"):
        spec_from(write_gguf(tmp_path / "kv.gguf", meta, EMBED))
