"""Weight bytes as a checkpoint's own headers declare them, split the way the planner places them.

The planner puts the input embedding on the first pipeline stage, the lm_head on
the last, splits the rest of the body evenly per layer and the routed experts by
the MoE layers each stage holds. So a file's tensors are summed into four parts
by name: `embedding`, `lm_head`, `routed_experts`, `body` (everything else).

Every tensor the file stores is weight memory on the GPU, whatever it holds: a
GPTQ/AWQ `qweight` (I32 packing 8 int4), its `scales`, `qzeros` and `g_idx`, an
fp8 `weight_scale_inv`, MXFP4 `_blocks` / `_scales`, an NVFP4 `weight_scale_2`.
Each is counted at its stored size (dtype x elements, or ggml blocks), which is
what the loader copies to the device. Pure: names and byte counts in, integers out.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Optional

PARTS = ("embedding", "lm_head", "body", "routed_experts")

# llama.cpp tensor names (src/llama-arch.cpp LLM_TENSOR_NAMES): token_embd, output,
# blk.N.ffn_{gate,up,down,gate_up}_exps (routed experts, stacked; their biases too),
# or blk.N.ffn_{gate,up,down}.E (one per expert: Mixtral files converted before the
# stacked tensors, which llama.cpp still loads); blk.N.ffn_*_shexp (shared experts:
# body, every token reads them).
_GGUF_EMBEDDING = "token_embd.weight"
_GGUF_LM_HEAD = "output.weight"
_GGUF_EXPERTS = re.compile(r"_exps\.|\.ffn_(?:gate|up|down)\.\d+\.")

# Hugging Face names: model.embed_tokens (Llama and most), transformer.wte (GPT-2),
# transformer.word_embeddings (Falcon), gpt_neox.embed_in; lm_head.weight, gpt_neox's
# embed_out. Routed experts sit under `.experts.` (Mixtral block_sparse_moe.experts.N,
# Qwen/DeepSeek mlp.experts.N, gpt-oss mlp.experts.gate_up_proj_blocks); shared experts
# (DeepSeek mlp.shared_experts, Qwen2-MoE mlp.shared_expert) do not match and stay body.
_HF_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in)\.")
_HF_LM_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.")
_HF_EXPERTS = re.compile(r"\.experts\.")
_HF_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def gguf_part(name: str) -> str:
    """Which part a llama.cpp tensor belongs to; an unknown name is body (it is held all the same)."""
    if name == _GGUF_EMBEDDING:
        return "embedding"
    if name == _GGUF_LM_HEAD:
        return "lm_head"
    if _GGUF_EXPERTS.search(name):
        return "routed_experts"
    return "body"


def hf_part(name: str) -> str:
    """Which part a Hugging Face tensor belongs to; an unknown name (a vision tower, a projector,
    position embeddings) is body: the loader puts it on the GPU all the same."""
    if _HF_LM_HEAD.search(name):
        return "lm_head"
    if _HF_EMBEDDING.search(name):
        return "embedding"
    if _HF_EXPERTS.search(name):
        return "routed_experts"
    return "body"


def layer_index(name: str) -> Optional[int]:
    """The decoder layer a Hugging Face tensor belongs to (`model.layers.12.mlp...` -> 12), else None."""
    m = _HF_LAYER.search(name)
    return int(m.group(1)) if m else None


def split_weight_bytes(tensors: Iterable[tuple[str, int]], part_of: Callable[[str], str]) -> dict[str, int]:
    """Bytes per part ({embedding, lm_head, body, routed_experts}) of (name, bytes) pairs."""
    out = dict.fromkeys(PARTS, 0)
    for name, num_bytes in tensors:
        out[part_of(name)] += num_bytes
    return out
