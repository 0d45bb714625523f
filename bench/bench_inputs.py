"""Benchmark: `kvplan estimate REF --format json` cold start on every input path.

One model (Llama-3.1-8B's shape) asked about seven ways: the catalog name, a spec
YAML, a config.json file, a folder holding config.json, a hub id in a Hugging
Face cache (`HF_HUB_CACHE`), a GGUF file, and a folder holding config.json and
a model.safetensors. The inputs are written to a temporary folder first: header-
only files (the tensor data is a sparse hole, so an 8B model takes a few KB of
disk), the config from tests/fixtures/hf_configs/llama-3.1-8b-instruct.json.

Each run is a fresh process, against one that merely imports typer, rich,
pydantic and yaml (kvplan's dependency-import floor; goal: every path <= 1.0x
of it). Every process reads compiled bytecode, as an installed kvplan does (pip
writes it at install; the dependencies' own is there already): the children
write and read it under a temporary PYTHONPYCACHEPREFIX, whatever
PYTHONDONTWRITEBYTECODE says, and the warm-up run fills it. `--no-bytecode-cache`
instead runs with the environment as it is (with PYTHONDONTWRITEBYTECODE=1 and no
__pycache__, kvplan's modules are then compiled from source on every run while
the dependencies load theirs from site-packages). Runs are interleaved so that load on the machine hits every side alike;
the ratio is the median child CPU time (user + system) over the baseline's
median, CPU time being less disturbed by other processes than wall time.
Prints one JSON line per input path, then a summary line last.

    python bench/bench_inputs.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
from pathlib import Path

from _child import child_seconds

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "fixtures" / "hf_configs" / "llama-3.1-8b-instruct.json"
SPEC = ROOT / "model_specs" / "llama-3.1-8b.yaml"
BASELINE = [sys.executable, "-c", "import typer, rich, pydantic, yaml"]
GOAL_RATIO = 1.0
HUB_COMMIT = "0e9e39f249a16976918f6564b8830bc894c89659"  # any 40-hex snapshot name

# Llama-3.1-8B's tensors: (name, shape) per layer, and the embedding, norm and lm_head.
HIDDEN, FFN, VOCAB, LAYERS, KV = 4096, 14336, 128256, 32, 1024
LAYER_TENSORS = [
    ("self_attn.q_proj.weight", [HIDDEN, HIDDEN]),
    ("self_attn.k_proj.weight", [KV, HIDDEN]),
    ("self_attn.v_proj.weight", [KV, HIDDEN]),
    ("self_attn.o_proj.weight", [HIDDEN, HIDDEN]),
    ("mlp.gate_proj.weight", [FFN, HIDDEN]),
    ("mlp.up_proj.weight", [FFN, HIDDEN]),
    ("mlp.down_proj.weight", [HIDDEN, FFN]),
    ("input_layernorm.weight", [HIDDEN]),
    ("post_attention_layernorm.weight", [HIDDEN]),
]


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_safetensors(path: Path) -> None:
    """A bf16 model.safetensors with Llama-3.1-8B's 291 tensors; the data is a sparse hole."""
    names = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    names += [(f"model.layers.{i}.{n}", s) for i in range(LAYERS) for n, s in LAYER_TENSORS]
    names += [("model.norm.weight", [HIDDEN]), ("lm_head.weight", [VOCAB, HIDDEN])]
    header, offset = {}, 0
    for name, shape in names:
        n = 2 * _numel(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def _gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(path: Path) -> None:
    """A GGUF v3 header for Llama-3.1-8B (f16 tensors, llama.cpp's names); the data is a sparse hole."""
    u32, f32, string = 4, 6, 8  # GGUF value types (gguf.md)
    metadata = [
        ("general.architecture", string, "llama"),
        ("general.name", string, "Llama 3.1 8B Instruct"),
        ("llama.block_count", u32, LAYERS),
        ("llama.context_length", u32, 131072),
        ("llama.embedding_length", u32, HIDDEN),
        ("llama.feed_forward_length", u32, FFN),
        ("llama.attention.head_count", u32, 32),
        ("llama.attention.head_count_kv", u32, 8),
        ("llama.rope.freq_base", f32, 500000.0),
        ("llama.attention.layer_norm_rms_epsilon", f32, 1e-5),
        ("llama.vocab_size", u32, VOCAB),
        ("general.file_type", u32, 1),
    ]
    gguf_layer = {
        "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
    }
    tensors = [("token_embd.weight", [HIDDEN, VOCAB])]
    tensors += [(f"blk.{i}.{gguf_layer[n]}", s[::-1]) for i in range(LAYERS) for n, s in LAYER_TENSORS]
    tensors += [("output_norm.weight", [HIDDEN]), ("output.weight", [HIDDEN, VOCAB])]
    f32_type, f16_type = 0, 1
    body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, vtype, value in metadata:
        packed = _gguf_string(value) if vtype == string else struct.pack("<I" if vtype == u32 else "<f", value)
        body += _gguf_string(key) + struct.pack("<I", vtype) + packed
    offset = 0
    for name, shape in tensors:
        ggml_type = f32_type if len(shape) == 1 else f16_type  # norms stay f32, as llama.cpp stores them
        nbytes = _numel(shape) * (4 if ggml_type == f32_type else 2)
        body += _gguf_string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        body += struct.pack("<IQ", ggml_type, offset)
        offset += -(-nbytes // 32) * 32
    body += bytes(-len(body) % 32)
    with open(path, "wb") as f:
        f.write(body)
        f.truncate(len(body) + offset)


def write_inputs(tmp: Path) -> dict[str, str]:
    """Every input path's reference (what `kvplan estimate` is given), written under `tmp`."""
    spec = tmp / "spec" / "my-llama.yaml"
    spec.parent.mkdir()
    shutil.copy(SPEC, spec)
    config_file = tmp / "configs" / "llama-3.1-8b-instruct.json"
    config_file.parent.mkdir()
    shutil.copy(CONFIG, config_file)
    folder = tmp / "Llama-3.1-8B-Instruct"
    folder.mkdir()
    shutil.copy(CONFIG, folder / "config.json")
    repo = tmp / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct"
    (repo / "snapshots" / HUB_COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    shutil.copy(CONFIG, repo / "snapshots" / HUB_COMMIT / "config.json")
    gguf = tmp / "Llama-3.1-8B-Instruct-F16.gguf"
    write_gguf(gguf)
    weights = tmp / "Llama-3.1-8B-Instruct-safetensors"
    weights.mkdir()
    shutil.copy(CONFIG, weights / "config.json")
    write_safetensors(weights / "model.safetensors")
    return {
        "catalog": "llama-3.1-8b",
        "spec_yaml": str(spec),
        "config_file": str(config_file),
        "config_folder": str(folder),
        "hf_cache_id": "meta-llama/Llama-3.1-8B-Instruct",
        "gguf": str(gguf),
        "safetensors": str(weights),
    }


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run; a failed run stops the benchmark."""
    return child_seconds(cmd, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved runs of each command (default 21)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="run with the environment's bytecode settings as they are")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvplan-bench-") as tmp_name:
        tmp = Path(tmp_name)
        refs = write_inputs(tmp)
        env = dict(os.environ, HF_HUB_CACHE=str(tmp / "hub"))
        if not args.no_bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        commands = {"baseline": BASELINE}
        for path, ref in refs.items():
            commands[path] = [sys.executable, "-m", "kvplan", "estimate", ref, "--format", "json"]
        for cmd in commands.values():
            run_once(cmd, env)  # warm the file cache; a path that fails stops here
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
        for _ in range(args.rounds):
            for key, cmd in commands.items():
                samples[key].append(run_once(cmd, env))
    wall = {k: statistics.median(w for w, _ in v) for k, v in samples.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in samples.items()}
    ratios = {}
    for path in refs:
        ratios[path] = round(cpu[path] / cpu["baseline"], 3)
        print(json.dumps({
            "path": path, "wall_s": round(wall[path], 4), "cpu_s": round(cpu[path], 4),
            "baseline_cpu_s": round(cpu["baseline"], 4), "ratio": ratios[path], "goal_ratio": GOAL_RATIO,
            "bytecode_cache": not args.no_bytecode_cache,
        }))
    print(json.dumps({
        "baseline_wall_s": round(wall["baseline"], 4), "baseline_cpu_s": round(cpu["baseline"], 4),
        "rounds": args.rounds, "worst_path": max(ratios, key=ratios.get), "worst_ratio": max(ratios.values()),
        "all_within_goal": all(r <= GOAL_RATIO for r in ratios.values()), "goal_ratio": GOAL_RATIO,
        "bytecode_cache": not args.no_bytecode_cache,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
