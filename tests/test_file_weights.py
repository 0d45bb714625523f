"""Weight bytes from the model's own files: GGUF tensor types and safetensors dtypes, to the byte.

Header-only files are written here: the header declares every tensor, and the data
section is a sparse hole of the declared length (os.truncate), so a 4.6 GB GGUF
costs no disk. Every expected byte count is worked by hand from block sizes and
shapes, never read back from kvplan.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from kvplan.sources.gguf import GGML_TYPES
from kvplan.sources.resolve import spec_from_source
from kvplan.plan.planner import stage_weight_bytes

from cli_helpers import run_cli
from conftest import make_spec

# ---------------------------------------------------------------- ggml types

# (values per block, bytes per block) of every ggml type, from the block structs in
# ggml/src/ggml-common.h of the llama.cpp vendored in llama-cpp-python 0.3.36 (ids from
# ggml/include/ggml.h `enum ggml_type`; sizes printed by a C probe of sizeof(block_*)):
GGML_BY_HAND = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),  # fp16 d + 32 nibbles
    3: ("Q4_1", 32, 2 + 2 + 16),  # fp16 d, m + nibbles
    6: ("Q5_0", 32, 2 + 4 + 16),  # d + qh[4] + nibbles
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),  # d + 32 int8
    9: ("Q8_1", 32, 2 + 2 + 32),  # d, s + 32 int8
    10: ("Q2_K", 256, 16 + 64 + 2 + 2),  # scales[16] + qs[64] + d + dmin
    11: ("Q3_K", 256, 32 + 64 + 12 + 2),  # hmask[32] + qs[64] + scales[12] + d
    12: ("Q4_K", 256, 2 + 2 + 12 + 128),  # d + dmin + scales[12] + qs[128]
    13: ("Q5_K", 256, 2 + 2 + 12 + 32 + 128),  # + qh[32]
    14: ("Q6_K", 256, 128 + 64 + 16 + 2),  # ql[128] + qh[64] + scales[16] + d
    15: ("Q8_K", 256, 4 + 256 + 32),  # float d + qs[256] + int16 bsums[16]
    16: ("IQ2_XXS", 256, 2 + 64), 17: ("IQ2_XS", 256, 2 + 64 + 8), 18: ("IQ3_XXS", 256, 2 + 96),
    19: ("IQ1_S", 256, 2 + 32 + 16), 20: ("IQ4_NL", 32, 2 + 16), 21: ("IQ3_S", 256, 2 + 64 + 8 + 32 + 4),
    22: ("IQ2_S", 256, 2 + 64 + 8 + 8), 23: ("IQ4_XS", 256, 2 + 2 + 4 + 128),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 32 + 16 + 8), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 48 + 4 + 2), 35: ("TQ2_0", 256, 64 + 2),
    39: ("MXFP4", 32, 1 + 16),  # e8m0 scale + 16 B of e2m1 pairs
    40: ("NVFP4", 64, 4 + 32),  # four UE4M3 scales (one per 16) + 32 B of e2m1 pairs
    41: ("Q1_0", 128, 2 + 16), 42: ("Q2_0", 64, 2 + 16),
}


def test_ggml_types_match_llama_cpp():
    assert GGML_TYPES == GGML_BY_HAND


# ---------------------------------------------------------------- GGUF files

STRING, U32 = 8, 4
F32, F16, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS, BF16, MXFP4, NVFP4 = 0, 1, 8, 12, 13, 14, 23, 30, 39, 40


def tensor_bytes(shape: list[int], ggml_type: int) -> int:
    _, block, size = GGML_BY_HAND[ggml_type]
    n = 1
    for d in shape:
        n *= d
    return -(-n // block) * size


def gguf_string(s: str) -> bytes:
    return struct.pack("<Q", len(s.encode())) + s.encode()


def write_gguf(path: Path, metadata: list[tuple[str, int, object]], tensors: list[tuple[str, list[int], int]]) -> Path:
    """A GGUF v3 header, then a sparse data section as long as the tensors declare (32-byte aligned)."""
    body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, vtype, value in metadata:
        raw = gguf_string(value) if vtype == STRING else struct.pack("<I", value)
        body += gguf_string(key) + struct.pack("<I", vtype) + raw
    offset = 0
    for name, shape, ggml_type in tensors:
        body += gguf_string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        body += struct.pack("<IQ", ggml_type, offset)
        offset += -(-tensor_bytes(shape, ggml_type) // 32) * 32
    body += bytes(-len(body) % 32)
    path.write_bytes(body)
    os.truncate(path, len(body) + offset)
    return path


def llama_gguf_metadata(layers: int, hidden: int, ff: int, heads: int, kv: int, vocab: int, extra=()) -> list:
    return [
        ("general.architecture", STRING, "llama"),
        ("llama.block_count", U32, layers),
        ("llama.context_length", U32, 131072),
        ("llama.embedding_length", U32, hidden),
        ("llama.feed_forward_length", U32, ff),
        ("llama.attention.head_count", U32, heads),
        ("llama.attention.head_count_kv", U32, kv),
        ("llama.vocab_size", U32, vocab),
        *extra,
    ]


# Llama-3.1-8B (config.json: vocab 128,256, hidden 4,096, 32 layers, 32 heads, 8 KV heads of 128,
# MLP 14,336) quantised Q4_K_M as llama.cpp's src/llama-quant.cpp does it: Q4_K by default; output.weight
# Q6_K; attn_v and ffn_down Q6_K in the layers where use_more_bits(i, 32) holds
# (i < 4 || i >= 28 || (i - 4) % 3 == 2: layers 0-3, 6, 9, ..., 27, 28-31, 16 of them); norms and
# rope_freqs F32. GGUF shapes are (input, output).
V, H, LAYERS, KV, FF = 128_256, 4_096, 32, 1_024, 14_336
MORE_BITS = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}


def llama_8b_q4_k_m_tensors() -> list[tuple[str, list[int], int]]:
    tensors = [("token_embd.weight", [H, V], Q4_K), ("rope_freqs.weight", [64], F32)]
    for i in range(LAYERS):
        wide = Q6_K if i in MORE_BITS else Q4_K
        tensors += [
            (f"blk.{i}.attn_norm.weight", [H], F32),
            (f"blk.{i}.attn_q.weight", [H, H], Q4_K),
            (f"blk.{i}.attn_k.weight", [H, KV], Q4_K),
            (f"blk.{i}.attn_v.weight", [H, KV], wide),
            (f"blk.{i}.attn_output.weight", [H, H], Q4_K),
            (f"blk.{i}.ffn_norm.weight", [H], F32),
            (f"blk.{i}.ffn_gate.weight", [H, FF], Q4_K),
            (f"blk.{i}.ffn_up.weight", [H, FF], Q4_K),
            (f"blk.{i}.ffn_down.weight", [FF, H], wide),
        ]
    return tensors + [("output_norm.weight", [H], F32), ("output.weight", [H, V], Q6_K)]


# By hand: Q4_K holds 256 values in 144 B, Q6_K in 210 B (ggml-common.h block_q4_K, block_q6_K).
Q4K = lambda n: n // 256 * 144  # noqa: E731
Q6K = lambda n: n // 256 * 210  # noqa: E731
LLAMA_EMBED = Q4K(V * H)  # 295,501,824
LLAMA_HEAD = Q6K(V * H)  # 430,940,160
LLAMA_BODY = (
    LAYERS * (2 * Q4K(H * H) + Q4K(H * KV) + 2 * Q4K(H * FF) + 2 * H * 4)  # q, o, k, gate, up; two F32 norms
    + 16 * (Q6K(H * KV) + Q6K(FF * H)) + 16 * (Q4K(H * KV) + Q4K(FF * H))  # v and down: 16 layers each way
    + H * 4 + 64 * 4  # output_norm, rope_freqs
)  # 4,186,456,320
LLAMA_TOTAL = LLAMA_EMBED + LLAMA_HEAD + LLAMA_BODY  # 4,912,898,304 B = 4.58 GiB
# The formula at 16 bits: 2 x 8,030,261,312 parameters = 16,060,522,624 B (14.96 GiB, the figure)
LLAMA_PARAMS = 2 * V * H + LAYERS * (2 * H * H + 2 * H * KV + 3 * H * FF + 2 * H) + H + 64


@pytest.fixture
def llama_q4_k_m(tmp_path) -> Path:
    meta = llama_gguf_metadata(LAYERS, H, FF, 32, 8, V)
    return write_gguf(tmp_path / "Llama-3.1-8B-Q4_K_M.gguf", meta, llama_8b_q4_k_m_tensors())


def test_llama_q4_k_m_bytes_are_the_tensors_data(llama_q4_k_m):
    assert LLAMA_TOTAL == 4_912_898_304  # the hand sum above, pinned
    spec = spec_from_source(str(llama_q4_k_m))
    assert spec.num_parameters == LLAMA_PARAMS == 8_030_261_312
    fw = spec.file_weight_bytes
    assert (fw.source, fw.embedding, fw.lm_head, fw.body, fw.routed_experts) == ("gguf", LLAMA_EMBED, LLAMA_HEAD, LLAMA_BODY, 0)
    # F32: 32 x 2 norms + output_norm of 4,096, rope_freqs 64; Q6_K: output + 16 x (v + down); Q4_K the rest
    f32 = (65 * H + 64) * 4
    q6 = LLAMA_HEAD + 16 * (Q6K(H * KV) + Q6K(FF * H))
    assert f"weight bytes from the header: 4,912,898,304 (F32 {f32:,}, Q4_K {LLAMA_TOTAL - f32 - q6:,}, Q6_K {q6:,})" in spec.notes


def test_llama_q4_k_m_estimate_sizes_the_file_not_16_bit(capsys, llama_q4_k_m):
    r = run_cli(capsys, "estimate", str(llama_q4_k_m), "--gpu", "h100-sxm", "-c", "8192", "-f", "json")
    assert r.exit_code == 0, r.stderr
    from_file = json.loads(r.stdout)
    assert from_file["weights_bytes_per_gpu"] == LLAMA_TOTAL
    assert from_file["weights_source"] == "file headers (GGUF tensor types)"
    r = run_cli(capsys, "estimate", str(llama_q4_k_m), "--gpu", "h100-sxm", "-c", "8192", "--dtype", "fp16", "-f", "json")
    assert r.exit_code == 0, r.stderr
    cast = json.loads(r.stdout)
    assert cast["weights_bytes_per_gpu"] == 2 * LLAMA_PARAMS
    assert cast["weights_source"] == "--dtype fp16"
    # the KV budget moves by exactly the weights' difference
    assert from_file["kv_budget_bytes_per_gpu"] - cast["kv_budget_bytes_per_gpu"] == 2 * LLAMA_PARAMS - LLAMA_TOTAL


def test_llama_q4_k_m_under_the_llama_cpp_profile(capsys, llama_q4_k_m):
    r = run_cli(capsys, "estimate", str(llama_q4_k_m), "--gpu", "rtx-4090", "--engine", "llama.cpp", "-c", "8192",
                "-f", "json")
    assert r.exit_code == 0, r.stderr
    capacity = json.loads(r.stdout)["capacity"]
    assert capacity["weights_bytes"] == LLAMA_TOTAL
    assert capacity["weights_source"] == "file headers (GGUF tensor types)"
    r = run_cli(capsys, "estimate", str(llama_q4_k_m), "--gpu", "rtx-4090", "--engine", "llama.cpp", "-c", "8192")
    assert r.exit_code == 0, r.stderr
    assert "weights 4.58 GiB, from file headers (GGUF tensor types)" in " ".join(r.stdout.split())


def test_text_output_names_the_source(capsys, llama_q4_k_m):
    r = run_cli(capsys, "estimate", str(llama_q4_k_m), "--gpu", "h100-sxm", "-c", "8192")
    assert r.exit_code == 0, r.stderr
    assert "4.58 GiB per GPU (from the file headers (GGUF tensor types); --dtype casts)" in " ".join(r.stdout.split())


def test_every_quant_type_and_the_experts_split(tmp_path):
    """A tied MoE GGUF (no output.weight) mixing Q5_K, Q8_0, IQ4_XS, BF16, F16, MXFP4 and NVFP4."""
    hidden, ff, layers, experts, vocab = 256, 512, 2, 4, 1000
    meta = llama_gguf_metadata(layers, hidden, ff, 4, 2, vocab,
                               extra=[("llama.expert_count", U32, experts), ("llama.expert_used_count", U32, 2)])
    tensors = [("token_embd.weight", [hidden, vocab], Q8_0)]
    for i in range(layers):
        tensors += [
            (f"blk.{i}.attn_q.weight", [hidden, hidden], Q5_K),
            (f"blk.{i}.attn_k.weight", [hidden, 128], IQ4_XS),
            (f"blk.{i}.attn_v.weight", [hidden, 128], BF16),
            (f"blk.{i}.attn_output.weight", [hidden, hidden], F16),
            (f"blk.{i}.ffn_gate_inp.weight", [hidden, experts], F32),
            (f"blk.{i}.ffn_gate_exps.weight", [hidden, ff, experts], MXFP4),
            (f"blk.{i}.ffn_up_exps.weight", [hidden, ff, experts], NVFP4),
            (f"blk.{i}.ffn_down_exps.weight", [ff, hidden, experts], Q8_0),
        ]
    path = write_gguf(tmp_path / "moe.gguf", meta, tensors)
    fw = spec_from_source(str(path)).file_weight_bytes
    n = hidden * ff * experts  # 524,288 values per expert tensor
    assert fw.embedding == hidden * vocab // 32 * 34  # Q8_0: 8,000 blocks of 34 B = 272,000
    assert fw.lm_head == 0  # tied: llama.cpp reuses token_embd
    assert fw.body == layers * (
        hidden * hidden // 256 * 176  # Q5_K
        + hidden * 128 // 256 * 136  # IQ4_XS
        + hidden * 128 * 2 + hidden * hidden * 2  # BF16, F16
        + hidden * experts * 4  # the router, F32
    )
    assert fw.routed_experts == layers * (n // 32 * 17 + n // 64 * 36 + n // 32 * 34)  # MXFP4, NVFP4, Q8_0


def test_unknown_ggml_type_is_refused_with_the_tensor(capsys, tmp_path, monkeypatch):
    meta = llama_gguf_metadata(1, 64, 128, 4, 2, 100)
    GGML_BY_HAND[99] = ("future", 1, 1)  # the writer needs a size for it; kvplan does not know type 99
    try:
        path = write_gguf(tmp_path / "new.gguf", meta, [("token_embd.weight", [64, 100], F16),
                                                        ("blk.0.attn_q.weight", [64, 64], 99)])
    finally:
        del GGML_BY_HAND[99]
    r = run_cli(capsys, "estimate", str(path), "-c", "4096")
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: {path}: tensor 'blk.0.attn_q.weight' has ggml type 99, which kvplan does not know (it knows "
        "llama.cpp's ggml.h types up to id 42), so its weight bytes cannot be read from the file; update kvplan, "
        "or write a spec with weights_dtype instead\n"
    )


def test_import_writes_the_file_bytes_and_reads_them_back(capsys, llama_q4_k_m, tmp_path):
    out = tmp_path / "llama-q4.yaml"
    r = run_cli(capsys, "import", str(llama_q4_k_m), "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert (
        "file_weight_bytes: {source: gguf, embedding: 295501824, lm_head: 430940160, body: 4186456320, "
        "routed_experts: 0}  # summed from the tensors' sizes in the file headers\n"
    ) in out.read_text()
    r = run_cli(capsys, "estimate", str(out), "--gpu", "h100-sxm", "-c", "8192", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["weights_bytes_per_gpu"] == LLAMA_TOTAL


# ---------------------------------------------------------------- safetensors files

ST_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "U8": 1, "F8_E4M3": 1}  # bytes per element, by hand


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A safetensors header declaring `tensors` back to back, then a sparse data hole; returns the data bytes."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = ST_BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    os.truncate(path, 8 + len(raw) + offset)
    return offset


# A tiny Llama (hidden 256, 1 layer, MLP 512, vocab 1000, 4 heads, 2 KV heads of 64), quantised four ways.
TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 1, "intermediate_size": 512, "vocab_size": 1000, "torch_dtype": "float16",
    "tie_word_embeddings": False,
}
LINEARS = {"self_attn.q_proj": (256, 256), "self_attn.k_proj": (256, 128), "self_attn.v_proj": (256, 128),
           "self_attn.o_proj": (256, 256), "mlp.gate_proj": (256, 512), "mlp.up_proj": (256, 512),
           "mlp.down_proj": (512, 256)}  # (in, out)
IN_OUT = sum(i * o for i, o in LINEARS.values())  # 524,288 weights
OUT = sum(o for _, o in LINEARS.values())  # 2,048 output rows


def gptq(i: int, o: int) -> dict:  # AutoGPTQ 4-bit, group 128: qweight (in/8, out) I32, qzeros (in/128, out/8)
    return {"qweight": ("I32", [i // 8, o]), "qzeros": ("I32", [i // 128, o // 8]),
            "scales": ("F16", [i // 128, o]), "g_idx": ("I32", [i])}


def awq(i: int, o: int) -> dict:  # AutoAWQ GEMM 4-bit, group 128: qweight (in, out/8), qzeros (in/128, out/8)
    return {"qweight": ("I32", [i, o // 8]), "qzeros": ("I32", [i // 128, o // 8]), "scales": ("F16", [i // 128, o])}


def fp8(i: int, o: int) -> dict:  # DeepSeek-V3 style block-wise fp8: one F32 scale per 128 x 128 block
    return {"weight": ("F8_E4M3", [o, i]), "weight_scale_inv": ("F32", [-(-o // 128), -(-i // 128)])}


def nvfp4(i: int, o: int) -> dict:  # compressed-tensors nvfp4: U8 pairs, one F8 scale per 16, two F32 globals
    return {"weight_packed": ("U8", [o, i // 2]), "weight_scale": ("F8_E4M3", [o, i // 16]),
            "weight_global_scale": ("F32", [1]), "input_global_scale": ("F32", [1])}


def linear_bytes(kind: str) -> int:
    """Bytes of the seven linears' tensors, by hand from the shapes above."""
    ins = sum(i for i, _ in LINEARS.values())  # 2,048 input columns over the seven
    blocks = sum(-(-o // 128) * -(-i // 128) for i, o in LINEARS.values())  # 128 x 128 blocks: 1+1+1+1+2+2+2 = 10
    return {
        "gptq": IN_OUT // 8 * 4 + IN_OUT // 128 // 8 * 4 + IN_OUT // 128 * 2 + ins * 4,
        "awq": IN_OUT // 8 * 4 + IN_OUT // 128 // 8 * 4 + IN_OUT // 128 * 2,
        "fp8": IN_OUT + blocks * 4,
        "nvfp4": IN_OUT // 2 + IN_OUT // 16 + 7 * 2 * 4,
    }[kind]


@pytest.mark.parametrize("kind, config, make", [
    ("gptq", {"quant_method": "gptq", "bits": 4, "group_size": 128}, gptq),
    ("awq", {"quant_method": "awq", "bits": 4, "group_size": 128}, awq),
    ("fp8", {"quant_method": "fp8", "weight_block_size": [128, 128]}, fp8),
    ("nvfp4", {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}, nvfp4),
])
def test_quantised_safetensors_are_their_stored_bytes(capsys, tmp_path, kind, config, make):
    d = tmp_path / kind
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(TINY_LLAMA, quantization_config=config)))
    tensors = {"model.embed_tokens.weight": ("F16", [1000, 256]), "lm_head.weight": ("F16", [1000, 256]),
               "model.norm.weight": ("F16", [256]), "model.layers.0.input_layernorm.weight": ("F16", [256]),
               "model.layers.0.post_attention_layernorm.weight": ("F16", [256])}
    for name, (i, o) in LINEARS.items():
        tensors.update({f"model.layers.0.{name}.{k}": v for k, v in make(i, o).items()})
    data = write_safetensors(d / "model.safetensors", tensors)
    fw = spec_from_source(str(d)).file_weight_bytes
    body = linear_bytes(kind) + 3 * 256 * 2  # the linears and three F16 norms
    assert (fw.source, fw.embedding, fw.lm_head, fw.body, fw.routed_experts) == ("safetensors", 512_000, 512_000, body, 0)
    assert fw.embedding + fw.lm_head + fw.body == data  # every tensor counted once

    r = run_cli(capsys, "estimate", str(d), "--gpu", "h100-sxm", "-c", "4096", "-f", "json")
    assert r.exit_code == 0, r.stderr
    from_file = json.loads(r.stdout)
    assert from_file["weights_bytes_per_gpu"] == data
    assert from_file["weights_source"] == "file headers (safetensors dtypes)"
    r = run_cli(capsys, "estimate", str(d), "--gpu", "h100-sxm", "-c", "4096", "--dtype", "bf16", "-f", "json")
    cast = json.loads(r.stdout)
    assert cast["weights_source"] == "--dtype bf16"
    assert from_file["kv_budget_bytes_per_gpu"] - cast["kv_budget_bytes_per_gpu"] == cast["weights_bytes_per_gpu"] - data


# gpt-oss-20b as published: 3 shards, MXFP4 experts (U8 blocks + U8 scales), everything else BF16.
# Its model.safetensors.index.json says total_size 13,761,264,768 (tests/test_weights.py works it by hand).
GPT_OSS_TOTAL = 13_761_264_768


def gpt_oss_tensors(layer: int) -> dict:
    p = f"model.layers.{layer}."
    return {
        p + "input_layernorm.weight": ("BF16", [2880]), p + "post_attention_layernorm.weight": ("BF16", [2880]),
        p + "self_attn.q_proj.weight": ("BF16", [4096, 2880]), p + "self_attn.q_proj.bias": ("BF16", [4096]),
        p + "self_attn.k_proj.weight": ("BF16", [512, 2880]), p + "self_attn.k_proj.bias": ("BF16", [512]),
        p + "self_attn.v_proj.weight": ("BF16", [512, 2880]), p + "self_attn.v_proj.bias": ("BF16", [512]),
        p + "self_attn.o_proj.weight": ("BF16", [2880, 4096]), p + "self_attn.o_proj.bias": ("BF16", [2880]),
        p + "self_attn.sinks": ("BF16", [64]),
        p + "mlp.router.weight": ("BF16", [32, 2880]), p + "mlp.router.bias": ("BF16", [32]),
        p + "mlp.experts.gate_up_proj_blocks": ("U8", [32, 5760, 90, 16]),
        p + "mlp.experts.gate_up_proj_scales": ("U8", [32, 5760, 90]),
        p + "mlp.experts.gate_up_proj_bias": ("BF16", [32, 5760]),
        p + "mlp.experts.down_proj_blocks": ("U8", [32, 2880, 90, 16]),
        p + "mlp.experts.down_proj_scales": ("U8", [32, 2880, 90]),
        p + "mlp.experts.down_proj_bias": ("BF16", [32, 2880]),
    }


def write_gpt_oss(d: Path, total_size: int) -> None:
    d.mkdir()
    (d / "config.json").write_text((Path(__file__).parent / "fixtures" / "hf_configs" / "gpt-oss-20b.json").read_text())
    shards = {
        "model-00000-of-00002.safetensors": {"model.embed_tokens.weight": ("BF16", [201088, 2880]),
                                             **{k: v for i in range(12) for k, v in gpt_oss_tensors(i).items()}},
        "model-00001-of-00002.safetensors": {k: v for i in range(12, 24) for k, v in gpt_oss_tensors(i).items()},
        "model-00002-of-00002.safetensors": {"model.norm.weight": ("BF16", [2880]),
                                             "lm_head.weight": ("BF16", [201088, 2880])},
    }
    weight_map = {}
    for shard, tensors in shards.items():
        write_safetensors(d / shard, tensors)
        weight_map.update(dict.fromkeys(tensors, shard))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total_size},
                                                                "weight_map": weight_map}))


# By hand: per layer the experts hold 32 x (5,760 + 2,880) rows x 90 blocks x 17 B (423,014,400) and
# 32 x 8,640 bf16 biases (552,960 B); the rest of a layer is bf16 attention, sinks, router, norms.
GPT_OSS_EXPERTS = 24 * (32 * 8640 * 90 * 17 + 32 * 8640 * 2)
GPT_OSS_EMBED = 201_088 * 2880 * 2  # 1,158,266,880 B per table
GPT_OSS_BODY = 24 * 2 * (2 * 2880 + 4096 * 2880 + 4096 + 2 * (512 * 2880 + 512) + 2880 * 4096 + 2880 + 64
                         + 32 * 2880 + 32) + 2880 * 2


def test_gpt_oss_shards_sum_to_the_published_total(capsys, tmp_path):
    d = tmp_path / "gpt-oss-20b"
    write_gpt_oss(d, GPT_OSS_TOTAL)
    spec = spec_from_source(str(d))
    fw = spec.file_weight_bytes
    assert (fw.embedding, fw.lm_head, fw.body, fw.routed_experts) == (GPT_OSS_EMBED, GPT_OSS_EMBED, GPT_OSS_BODY,
                                                                      GPT_OSS_EXPERTS)
    assert fw.embedding + fw.lm_head + fw.body + fw.routed_experts == GPT_OSS_TOTAL
    assert "disagrees" not in spec.notes
    r = run_cli(capsys, "estimate", str(d), "--gpu", "h100-sxm", "-c", "8192", "-f", "json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    # the formula (mxfp4 experts, the rest bf16) lands on the same published bytes: nothing moves but the source
    assert plan["weights_bytes_per_gpu"] == GPT_OSS_TOTAL
    assert plan["weights_source"] == "file headers (safetensors dtypes)"


def test_index_total_size_that_disagrees_is_named_and_the_headers_used(tmp_path):
    d = tmp_path / "gpt-oss-20b"
    write_gpt_oss(d, GPT_OSS_TOTAL + 1000)
    spec = spec_from_source(str(d))
    assert sum(spec.file_weight_bytes.model_dump(exclude={"source"}).values()) == GPT_OSS_TOTAL
    assert (
        "model.safetensors.index.json metadata.total_size (13,761,265,768) disagrees with the sum of the shards' "
        "headers (13,761,264,768); the headers are used"
    ) in spec.notes


def test_missing_shard_falls_back_to_the_formula(capsys, tmp_path):
    d = tmp_path / "gpt-oss-20b"
    write_gpt_oss(d, GPT_OSS_TOTAL)
    (d / "model-00001-of-00002.safetensors").unlink()
    spec = spec_from_source(str(d))
    assert spec.file_weight_bytes is None
    assert "weight bytes from the parameter formula: safetensors shards missing (model-00001-of-00002.safetensors)" in spec.notes
    r = run_cli(capsys, "estimate", str(d), "--gpu", "h100-sxm", "-c", "8192", "-f", "json")
    assert json.loads(r.stdout)["weights_source"] == "parameter formula (weights_dtype mxfp4)"


def test_a_stored_lm_head_of_a_tied_model_is_left_out(tmp_path):
    d = tmp_path / "tied"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(TINY_LLAMA, tie_word_embeddings=True)))
    write_safetensors(d / "model.safetensors", {"model.embed_tokens.weight": ("F16", [1000, 256]),
                                                "lm_head.weight": ("F16", [1000, 256]),
                                                "model.layers.0.mlp.down_proj.weight": ("F16", [256, 512])})
    spec = spec_from_source(str(d))
    assert spec.file_weight_bytes.model_dump() == {"source": "safetensors", "embedding": 512_000, "lm_head": 0,
                                                   "body": 262_144, "routed_experts": 0}
    assert "weight bytes leave out the stored lm_head (512,000 bytes): tie_word_embeddings is true" in spec.notes


# ---------------------------------------------------------------- the planner's split

# 4 layers, layer 0 dense (first_k_dense_replace 1): MoE layers 1-3; 8 experts, 2 per token.
MOE = dict(num_local_experts=8, num_experts_per_tok=2, first_k_dense_replace=1, num_active_parameters=10**9)
FILE = {"source": "gguf", "embedding": 1000, "lm_head": 2000, "body": 4000, "routed_experts": 3000}


def test_file_bytes_split_over_stages_and_ranks():
    spec = make_spec(**MOE, file_weight_bytes=FILE)
    # stage 0 (layers 0-1): body 4000 x 2/4 = 2000, experts 3000 x 1/3 MoE layers = 1000, embedding 1000 -> / tp 2
    # stage 1 (layers 2-3): body 2000, experts 3000 x 2/3 = 2000, lm_head 2000 -> / 2
    assert stage_weight_bytes(spec, [2, 2], "bf16", 2, from_file=True) == [2000, 3000]
    # active: 2 of 8 experts: 3000 x 2 / 8 = 750 -> 250 and 500
    assert stage_weight_bytes(spec, [2, 2], "bf16", 2, active=True, from_file=True) == [1625, 2250]  # 3250/2, 4500/2
    # a decode step of 3 tokens reads 3 of 256 embedding rows: ceil(1000 x 3 / 256) = 12
    assert stage_weight_bytes(spec, [2, 2], "bf16", 2, lookup_tokens=3, from_file=True) == [1506, 3000]  # 3012/2
    assert stage_weight_bytes(spec, [4], "bf16", 1, from_file=True) == [10_000]


def test_a_tied_table_is_copied_to_a_separate_last_stage():
    spec = make_spec(**MOE, tie_word_embeddings=True, file_weight_bytes=dict(FILE, lm_head=0))
    # stage 1: body 2000 + experts 2000 + the embedding again 1000
    assert stage_weight_bytes(spec, [2, 2], "bf16", 1, from_file=True) == [4000, 5000]
    assert stage_weight_bytes(spec, [4], "bf16", 1, from_file=True) == [8000]


def test_catalog_fast_path_rebuilds_the_record():
    from kvplan.model.shape import ModelShape

    spec = make_spec(**MOE, file_weight_bytes=FILE)
    shape = ModelShape(spec.model_dump(mode="json"))
    assert stage_weight_bytes(shape, [2, 2], "bf16", 2, from_file=True) == [2000, 3000]
    assert shape.model_dump()["file_weight_bytes"] == FILE


def spec_yaml(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\nsource: test\nnum_parameters: 1000000\nhidden_size: 64\nnum_hidden_layers: 4\n"
        "num_attention_heads: 4\nvocab_size: 256\n" + extra
    )
    return path


def test_spec_yaml_file_bytes_drive_the_plan(capsys, tmp_path):
    path = spec_yaml(tmp_path, "file_weight_bytes: {source: safetensors, embedding: 32768, lm_head: 32768, body: 123456}\n")
    r = run_cli(capsys, "estimate", str(path), "--gpu", "h100-sxm", "-c", "4096", "-f", "json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["weights_bytes_per_gpu"] == 32768 + 32768 + 123456
    assert plan["weights_source"] == "file headers (safetensors dtypes)"
    r = run_cli(capsys, "estimate", str(path), "--gpu", "h100-sxm", "-c", "4096", "--dtype", "fp32", "-f", "json")
    assert json.loads(r.stdout)["weights_bytes_per_gpu"] == 4 * 1_000_000


@pytest.mark.parametrize("extra, message", [
    ("tie_word_embeddings: true\nfile_weight_bytes: {source: gguf, embedding: 10, lm_head: 5, body: 10}\n",
     "file_weight_bytes.lm_head is 5 but tie_word_embeddings is true (the embedding is the lm_head); set lm_head "
     "to 0 or tie_word_embeddings to false"),
    ("file_weight_bytes: {source: gguf, embedding: 10, body: 10, routed_experts: 7}\n",
     "file_weight_bytes.routed_experts is 7 but the spec has no routed experts; set num_local_experts (or "
     "n_routed_experts) and num_experts_per_tok, or count those bytes in body"),
])
def test_inconsistent_file_bytes_are_refused(capsys, tmp_path, extra, message):
    path = spec_yaml(tmp_path, extra)
    r = run_cli(capsys, "estimate", str(path), "-c", "4096")
    assert r.exit_code == 2
    assert message in r.stderr and r.stderr.startswith("error: ")


def test_decode_reads_the_file_bytes_of_the_active_experts(capsys, tmp_path):
    # 4 layers of 4 heads x 16 (head_dim 64 / 4), every layer MoE: 8 experts, 2 per token; bf16 KV
    path = spec_yaml(tmp_path, "num_local_experts: 8\nnum_experts_per_tok: 2\nnum_active_parameters: 500000\n"
                     "file_weight_bytes: {source: gguf, embedding: 32768, lm_head: 32768, body: 100000, "
                     "routed_experts: 80000}\n")
    r = run_cli(capsys, "estimate", str(path), "--gpu", "h100-sxm", "-c", "4096", "-f", "json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["weights_bytes_per_gpu"] == 32768 + 32768 + 100000 + 80000  # every expert is held
    # batch 1 reads: the body, 2 of 8 experts (80,000 x 2 / 8), one embedding row (32,768 / 256 rows),
    # the lm_head, and the KV held: 4,096 tokens x 4 layers x (K + V) x 4 heads x 16 x 2 B = 4,194,304
    assert plan["decode_bytes_per_step"] == 100000 + 20000 + 128 + 32768 + 4_194_304


def test_compare_rows_name_the_source(capsys, llama_q4_k_m):
    r = run_cli(capsys, "compare", str(llama_q4_k_m), "--gpu", "rtx-4090", "-c", "8192", "-f", "json")
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 6
    for row in rows:
        assert row["capacity"]["weights_bytes"] == LLAMA_TOTAL
        assert row["capacity"]["weights_source"] == "file headers (GGUF tensor types)"


@pytest.mark.parametrize("name, part", [
    ("token_embd.weight", "embedding"), ("output.weight", "lm_head"), ("output_norm.weight", "body"),
    ("blk.3.ffn_gate_exps.weight", "routed_experts"), ("blk.3.ffn_down_exps.bias", "routed_experts"),
    ("blk.3.ffn_gate.7.weight", "routed_experts"),  # one tensor per expert (llama-arch.cpp LLM_TENSOR_FFN_GATE_EXP)
    ("blk.3.ffn_up_shexp.weight", "body"), ("blk.3.ffn_gate_inp.weight", "body"), ("blk.3.ffn_gate.weight", "body"),
    ("rope_freqs.weight", "body"),
])
def test_gguf_names(name, part):
    from kvplan.sources.file_weights import gguf_part

    assert gguf_part(name) == part


@pytest.mark.parametrize("name, part", [
    ("model.embed_tokens.weight", "embedding"), ("model.language_model.embed_tokens.weight", "embedding"),
    ("transformer.wte.weight", "embedding"), ("transformer.wpe.weight", "body"),
    ("transformer.word_embeddings.weight", "embedding"), ("gpt_neox.embed_in.weight", "embedding"),
    ("lm_head.weight", "lm_head"), ("language_model.lm_head.weight", "lm_head"), ("embed_out.weight", "lm_head"),
    ("model.layers.0.block_sparse_moe.experts.5.w1.weight", "routed_experts"),
    ("model.layers.0.mlp.experts.gate_up_proj_blocks", "routed_experts"),
    ("model.layers.0.mlp.experts.3.down_proj.weight_scale_inv", "routed_experts"),
    ("model.layers.0.mlp.shared_experts.gate_proj.weight", "body"), ("model.layers.0.mlp.shared_expert.up_proj.weight", "body"),
    ("model.layers.0.self_attn.q_proj.qweight", "body"), ("vision_tower.encoder.layers.0.mlp.fc1.weight", "body"),
])
def test_hf_names(name, part):
    from kvplan.sources.file_weights import hf_part

    assert hf_part(name) == part


def test_deepseek_multi_token_prediction_layer_is_left_out(tmp_path):
    # DeepSeek-R1: 61 layers; its MTP module is model.layers.61 (with its own embed_tokens), which vLLM
    # does not load for serving. vocab 129,280 x hidden 7,168 in BF16 = 1,853,358,080 B per table.
    d = tmp_path / "deepseek-r1"
    d.mkdir()
    (d / "config.json").write_text((Path(__file__).parent / "fixtures" / "hf_configs" / "deepseek-r1.json").read_text())
    write_safetensors(d / "model.safetensors", {
        "model.embed_tokens.weight": ("BF16", [129280, 7168]), "lm_head.weight": ("BF16", [129280, 7168]),
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": ("F8_E4M3", [576, 7168]),
        "model.layers.3.mlp.experts.0.up_proj.weight": ("F8_E4M3", [2048, 7168]),
        "model.layers.61.embed_tokens.weight": ("BF16", [129280, 7168]),
        "model.layers.61.mlp.experts.0.up_proj.weight": ("F8_E4M3", [2048, 7168]),
    })
    spec = spec_from_source(str(d))
    assert spec.file_weight_bytes.model_dump() == {"source": "safetensors", "embedding": 1_853_358_080,
                                                   "lm_head": 1_853_358_080, "body": 576 * 7168,
                                                   "routed_experts": 2048 * 7168}
    skipped = 1_853_358_080 + 2048 * 7168
    assert (f"weight bytes leave out 2 tensor(s) of layers past num_hidden_layers (61; multi-token prediction, "
            f"{skipped:,} bytes), which serving does not load") in spec.notes
