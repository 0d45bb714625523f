"""`--engine hf` against transformers itself for attention that varies by layer (issue #13): Gemma 4's
full layers with their own head size and KV heads, Gemma-3n / Gemma 4 KV sharing, DeepSeek-V3.2's
sparse-attention indexer keys.

Each model is built from transformers' own config class with random weights (tests/hf_real.py), saved with
`save_pretrained` (config.json as transformers 5.25 writes it, model.safetensors beside it: the parameter count
comes from the headers, as for any downloaded model folder) and read back tensor by tensor. The expected bytes are
what transformers allocates, not kvplan's figures: the oracle is the engine.
"""

from __future__ import annotations

import json

import pytest

import kvplan
from hf_real import forward_cache, generate_cache, prompt, tiny_model

# Gemma 4: 8 layers, two full layers own KV (2 and 4), layer 7 full but KV-shared; sliding window 6.
GEMMA4_LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                      "full_attention", "sliding_attention", "sliding_attention", "full_attention"]


def _gemma4(k_eq_v: bool = True):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(
        hidden_size=64, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        global_head_dim=32, num_global_key_value_heads=1, attention_k_eq_v=k_eq_v, sliding_window=6,
        num_kv_shared_layers=2, intermediate_size=64, vocab_size=128, hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=128, layer_types=list(GEMMA4_LAYER_TYPES), dtype="bfloat16",
    )


def _gemma3n():
    from transformers import Gemma3nTextConfig

    # 10 layers, one full in five (4 and 9), the last 4 shared: layers 0-5 own KV (4 the only full one)
    return Gemma3nTextConfig(
        hidden_size=64, num_hidden_layers=10, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        sliding_window=6, num_kv_shared_layers=4, intermediate_size=64, vocab_size=128,
        vocab_size_per_layer_input=128, hidden_size_per_layer_input=8, laurel_rank=4, altup_num_inputs=2,
        dtype="bfloat16",
    )


def _deepseek_v32():
    from transformers import DeepseekV32Config

    return DeepseekV32Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
        q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, index_head_dim=128,
        index_n_heads=2, index_topk=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        intermediate_size=64, first_k_dense_replace=1, vocab_size=128, n_group=1, topk_group=1, dtype="bfloat16",
    )


MODELS = {"gemma4": _gemma4, "gemma3n": _gemma3n, "deepseek_v32": _deepseek_v32}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (config, model, folder holding config.json + model.safetensors)."""
    out = {}
    for name, make in MODELS.items():
        config = make()
        model = tiny_model(config)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = (config, model, str(folder))
    return out


def _hf(folder: str, context: int, batch: int, **options) -> int:
    return kvplan.estimate(folder, engine="hf", context=context, batch=batch, **options).to_dict()["kv_bytes_total"]


def test_the_oracle_sees_per_layer_heads_sharing_and_indexer_keys(saved):
    # what transformers 5.25 holds, read by hand from the tensors: the premises of the tests below
    config, model, _ = saved["gemma4"]
    shapes = {(t.layer, t.name): t.shape for t in forward_cache(model, prompt(config, 2, 10)).tensors}
    assert shapes[(0, "keys")] == (2, 2, 5, 16)  # sliding: 2 KV heads x head_dim 16, W - 1 = 5 tokens
    assert shapes[(2, "keys")] == shapes[(2, "values")] == (2, 1, 10, 32)  # full: 1 KV head x 32, K and V both
    assert {layer for layer, _ in shapes} == {0, 1, 2, 3, 4, 5}  # 6 and 7 share: no cache tensors
    config, model, _ = saved["deepseek_v32"]
    names = {(t.layer, t.name): t.shape for t in forward_cache(model, prompt(config, 2, 10)).tensors}
    assert names[(0, "indexer_keys")] == (2, 10, 128)  # [B, T, index_head_dim], bf16


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("batch, tokens", [(1, 7), (2, 10)])
def test_dynamic_cache_matches_transformers(saved, name, batch, tokens):
    config, model, folder = saved[name]
    real = forward_cache(model, prompt(config, batch, tokens))
    assert real.cache_class == "DynamicCache"
    assert _hf(folder, tokens, batch) == real.total


@pytest.mark.parametrize("name", list(MODELS))
def test_generate_matches_transformers(saved, name):
    # prompt 10 + 3 new tokens: generate() caches 12
    config, model, folder = saved[name]
    real = generate_cache(model, prompt(config, 2, 10), 3)
    assert _hf(folder, 13, 2, generate=True) == real.total


@pytest.mark.parametrize("name", list(MODELS))
def test_generate_static_matches_transformers(saved, name):
    # generate(cache_implementation="static") builds a StaticCache of max_length - 1 = 12 slots per full layer,
    # min(W, 12) = 6 per sliding layer (transformers 5.25 generation/utils.py; StaticSlidingWindowLayer)
    config, model, folder = saved[name]
    real = generate_cache(model, prompt(config, 2, 10), 3, cache_implementation="static")
    assert real.cache_class == "StaticCache"
    assert _hf(folder, 13, 2, generate=True, hf_cache="static") == real.total


def test_gemma4_by_hand(saved):
    # The same figure worked from the shapes: batch 2, 10 tokens, bf16.
    # sliding layers 0, 1, 3, 5: 2 heads x (16 + 16) x 2 B x min(10, W - 1 = 5) tokens = 640 B each per sequence
    # full layers 2, 4: 1 head x (32 + 32) x 2 B x 10 tokens = 1,280 B each; layers 6, 7 shared: 0
    _, _, folder = saved["gemma4"]
    assert _hf(folder, 10, 2) == 2 * (4 * 640 + 2 * 1280) == 10240


def test_gemma4_k_eq_v_false_keeps_the_sliding_kv_heads_on_full_layers(tmp_path):
    # Gemma4TextConfig: num_global_key_value_heads applies only with attention_k_eq_v; without it the
    # full layers keep num_key_value_heads (2) at global_head_dim (32)
    config = _gemma4(k_eq_v=False)
    model = tiny_model(config)
    model.save_pretrained(tmp_path)
    real = forward_cache(model, prompt(config, 1, 10))
    assert {t.shape for t in real.tensors if t.layer == 2} == {(1, 2, 10, 32)}
    assert _hf(str(tmp_path), 10, 1) == real.total


def test_saved_gemma4_config_holds_per_layer_config(saved):
    # transformers 5.25 writes the full layers' sizes as per_layer_config, not global_head_dim: both forms are read
    _, _, folder = saved["gemma4"]
    written = json.loads((__import__("pathlib").Path(folder) / "config.json").read_text())
    assert "global_head_dim" not in written
    assert written["per_layer_config"] == {key: {"head_dim": 32, "num_key_value_heads": 1} for key in ("2", "4", "7")}


def test_deepseek_v32_by_hand(saved):
    # 2 layers x (latent 32 + RoPE key 8 + indexer key 128) x 2 B (bf16) x batch 2 x 10 tokens
    _, _, folder = saved["deepseek_v32"]
    assert _hf(folder, 10, 2) == 2 * (32 + 8 + 128) * 2 * 2 * 10 == 13440
