"""Write the tiny random-weight GGUF models `kvplan measure --engine llama.cpp` was validated on.

    python tools/llamacpp_models.py OUT_DIR      # needs `pip install gguf` (llama.cpp's gguf-py, 0.19.0 here)

Three architectures, one per llama.cpp KV memory kind, and a second llama whose heads a quantized cache's block
divides (tests/fixtures/llamacpp_real/ records what llama-server made of each):

- `llama-gqa.gguf`: llama, 2 layers, 4 query heads over 2 KV heads of 16 (one `llama_kv_cache`);
- `llama-hd32.gguf`: the same with heads of 32 (q8_0 and q4_0 caches: 32-value blocks);
- `gemma2-swa.gguf`: gemma2, 4 layers alternating sliding (window 128) and global, 4 heads over 2 KV heads of 16
  (`llama_kv_cache_iswa`: a non-SWA and a SWA cache);
- `jamba-hybrid.gguf`: jamba, 4 layers, the second attention (head_count_kv 0 elsewhere: Mamba-1 blocks, d_inner
  2 x 64, d_state 16, d_conv 4), dense MLPs (`llama_memory_hybrid`: a KV cache and `llama_memory_recurrent`).

Each carries a 259-token SentencePiece vocabulary (`<unk>`, `<s>`, `</s>`, 128 ASCII byte pieces, 128 plain pieces),
enough for llama-server to load, to accept prompts given as token ids and to stream one chunk per token. Weights are normal(0, 0.02) from a fixed seed, f16
matrices (f32 norms of 1.0, conv, A, D), so a file is 100-300 KB. The tensor names and shapes are the ones each architecture's loader
asks for (llama.cpp src/models/llama.cpp, gemma2.cpp, jamba.cpp `load_arch_tensors`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

VOCAB = 259
HIDDEN = 64
FF = 128
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16
# weights stored f16 (matrix products); norms, conv, A, D and biases stay f32 as llama.cpp's converter keeps them
F16_MATRICES = {"token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                "ffn_down", "ssm_in", "ssm_x", "ssm_out"}
CONTEXT = 8192  # {arch}.context_length: the training context -c 0 would take


def _vocab(w) -> None:
    """SentencePiece ("llama"): unknown, control <s> </s>, the 128 ASCII byte pieces (token type 6 = byte), then 128
    plain pieces "▁t128".. (type 1): every token a model samples is whole UTF-8, so llama-server streams one chunk per
    token (it holds back a chunk while the text ends in an incomplete UTF-8 sequence, server-context.cpp
    process_token)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(128)] + [f"\u2581t{b}" for b in range(128, 256)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3] + [6] * 128 + [1] * 128)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)


def _writer(path: Path, arch: str, layers: int):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(path.stem)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(layers)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _vocab(w)
    return w


def _tensors(w, rng, names: dict[str, tuple[int, ...]]) -> None:
    """Add each tensor: numpy shape (rows, cols) is llama.cpp's {cols, rows}; 1-D norms are ones."""
    for name, shape in names.items():
        if len(shape) == 1 and ("norm" in name):
            data = np.ones(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
            if name in ("output.weight", "token_embd.weight"):
                data[:3] = 0.0  # <unk> <s> </s> score 0: greedy decoding never picks them over 256 random logits
            if name.split(".")[-2] in F16_MATRICES:  # matrix products take f16 weights on the CPU
                data = data.astype(np.float16)
        w.add_tensor(name, data)


def _attention(i: int, q_heads: int = HEADS, head_dim: int = HEAD_DIM) -> dict[str, tuple[int, ...]]:
    return {
        f"blk.{i}.attn_q.weight": (q_heads * head_dim, HIDDEN),
        f"blk.{i}.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
        f"blk.{i}.attn_v.weight": (KV_HEADS * head_dim, HIDDEN),
        f"blk.{i}.attn_output.weight": (HIDDEN, q_heads * head_dim),
    }


def _mlp(i: int) -> dict[str, tuple[int, ...]]:
    return {
        f"blk.{i}.ffn_norm.weight": (HIDDEN,),
        f"blk.{i}.ffn_gate.weight": (FF, HIDDEN),
        f"blk.{i}.ffn_up.weight": (FF, HIDDEN),
        f"blk.{i}.ffn_down.weight": (HIDDEN, FF),
    }


def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_gqa(path: Path) -> None:
    layers = 2
    w = _writer(path, "llama", layers)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(VOCAB)
    names = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,), "output.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        names.update({f"blk.{i}.attn_norm.weight": (HIDDEN,)}, **_attention(i), **_mlp(i))
    _tensors(w, np.random.default_rng(0), names)
    _finish(w)


def llama_hd32(path: Path) -> None:
    """The GQA llama with heads of 32: a q8_0 / q4_0 block (32 values) divides them, so quantized caches start."""
    layers, head_dim = 2, 32
    w = _writer(path, "llama", layers)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(VOCAB)
    names = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,), "output.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        names.update({f"blk.{i}.attn_norm.weight": (HIDDEN,)}, **_attention(i, head_dim=head_dim), **_mlp(i))
    _tensors(w, np.random.default_rng(3), names)
    _finish(w)


def gemma2_swa(path: Path) -> None:
    layers = 4
    w = _writer(path, "gemma2", layers)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_sliding_window(128)
    w.add_attn_logit_softcapping(50.0)
    w.add_final_logit_softcapping(30.0)
    names = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(layers):
        names.update({f"blk.{i}.attn_norm.weight": (HIDDEN,)}, **_attention(i))
        names[f"blk.{i}.post_attention_norm.weight"] = (HIDDEN,)
        names.update(_mlp(i))
        names[f"blk.{i}.post_ffw_norm.weight"] = (HIDDEN,)
    _tensors(w, np.random.default_rng(1), names)
    _finish(w)


def jamba_hybrid(path: Path) -> None:
    layers, d_inner, d_state, d_conv, dt_rank = 4, 2 * HIDDEN, 16, 4, 4
    attention = {1}
    w = _writer(path, "jamba", layers)
    w.add_head_count_kv([KV_HEADS if i in attention else 0 for i in range(layers)])
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_vocab_size(VOCAB)
    names = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,), "output.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        names[f"blk.{i}.attn_norm.weight"] = (HIDDEN,)
        if i in attention:
            names.update(_attention(i))
        else:
            names.update({
                f"blk.{i}.ssm_in.weight": (2 * d_inner, HIDDEN),
                f"blk.{i}.ssm_conv1d.weight": (d_inner, d_conv),
                f"blk.{i}.ssm_conv1d.bias": (d_inner,),
                f"blk.{i}.ssm_x.weight": (dt_rank + 2 * d_state, d_inner),
                f"blk.{i}.ssm_dt_norm.weight": (dt_rank,),
                f"blk.{i}.ssm_dt.weight": (d_inner, dt_rank),
                f"blk.{i}.ssm_dt.bias": (d_inner,),
                f"blk.{i}.ssm_b_norm.weight": (d_state,),
                f"blk.{i}.ssm_c_norm.weight": (d_state,),
                f"blk.{i}.ssm_a": (d_inner, d_state),
                f"blk.{i}.ssm_d": (d_inner,),
                f"blk.{i}.ssm_out.weight": (HIDDEN, d_inner),
            })
        names.update(_mlp(i))
    _tensors(w, np.random.default_rng(2), names)
    _finish(w)


MODELS = {"llama-gqa": llama_gqa, "llama-hd32": llama_hd32, "gemma2-swa": gemma2_swa, "jamba-hybrid": jamba_hybrid}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, write in MODELS.items():
        path = out / f"{name}.gguf"
        write(path)
        print(f"{path}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
