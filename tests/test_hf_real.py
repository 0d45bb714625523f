"""`--engine hf` against transformers itself: tiny random-weight models built from transformers'
own config classes (transformers is pinned in the `test` extra; nothing is downloaded), their
caches read back tensor by tensor (tests/hf_real.py), and kvplan's bytes for the same config.json.

Each new layer kind adds its config class here (issue #13's "done when"). Expected values are the
bytes transformers allocates, not kvplan's: the oracle is the engine.
"""

from __future__ import annotations

import json

import pytest

import kvplan  # noqa: E402
from hf_real import forward_cache, generate_cache, prompt, tiny_model  # noqa: E402


def _config_file(tmp_path, config) -> str:
    path = tmp_path / "config.json"
    path.write_text(config.to_json_string())
    return str(path)


def _llama():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=128, dtype="bfloat16")


def test_the_oracle_reads_a_dynamic_cache_by_hand():
    # 2 layers x (K + V) x batch 2 x 2 KV heads x 10 tokens x head_dim 16 x 2 bytes (bf16)
    model = _llama()
    cache = forward_cache(tiny_model(model), prompt(model, 2, 10))
    assert cache.cache_class == "DynamicCache"
    assert cache.total == 2 * 2 * 2 * 2 * 10 * 16 * 2 == 5120
    assert [t.name for t in cache.tensors] == ["keys", "values", "keys", "values"]


@pytest.mark.parametrize("batch, tokens", [(1, 7), (2, 10)])
def test_full_attention_dynamic_cache_matches_transformers(tmp_path, batch, tokens):
    config = _llama()
    real = forward_cache(tiny_model(config), prompt(config, batch, tokens)).total
    answer = kvplan.estimate(_config_file(tmp_path, config), engine="hf", context=tokens, batch=batch)
    assert answer.to_dict()["kv_bytes_total"] == real


def test_full_attention_generate_matches_transformers(tmp_path):
    # generate() never caches its last sampled token: prompt 10 + 3 new -> 12 cached
    config = _llama()
    real = generate_cache(tiny_model(config), prompt(config, 2, 10), 3)
    assert real.cache_class == "DynamicCache"
    answer = kvplan.estimate(_config_file(tmp_path, config), engine="hf", context=13, batch=2, generate=True)
    assert answer.to_dict()["kv_bytes_total"] == real.total == 2 * 2 * 2 * 2 * 12 * 16 * 2


def test_starcoder2_by_the_generic_field_names_matches_transformers(tmp_path):
    # starcoder2 has no handler: HF's generic names size it, and a sliding_window with no layer_types slides
    # every layer (DynamicSlidingWindowLayer keeps the last W tokens; W = 4 bites at a 10-token prompt)
    from transformers import Starcoder2Config

    config = Starcoder2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=128, vocab_size=128, sliding_window=4, dtype="bfloat16")
    path = _config_file(tmp_path, config)
    model, ids = tiny_model(config), prompt(config, 2, 10)
    real = forward_cache(model, ids).total
    assert kvplan.estimate(path, engine="hf", context=10, batch=2).to_dict()["kv_bytes_total"] == real
    assert real < 2 * 2 * 2 * 2 * 10 * 16 * 2  # the window bit: fewer than every token's K and V
    static = generate_cache(model, ids, 3, "static").total
    assert kvplan.estimate(path, engine="hf", context=13, batch=2, generate=True, hf_cache="static").to_dict()[
        "kv_bytes_total"] == static
