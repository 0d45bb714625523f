"""`--engine hf` against transformers itself, model type by model type, cache by cache.

Every model type kvplan sizes from a config.json (kvplan/sources/hf_config.py HANDLERS) is built
here from transformers' own config class, tiny and with random weights (tests/hf_real.py), with
windows, chunks and layer patterns small enough to bite at the test's context (a 4-token sliding
window or chunk against 10 prompt tokens). Each cache transformers holds is read back tensor by
tensor and must equal kvplan's `kv_bytes_total` for the same config.json, to the byte:

- DynamicCache after one forward pass (`--hf-cache dynamic`, the default);
- generate(), default cache (`--generate`: the last sampled token is never cached);
- a StaticCache built with `max_cache_len` (`--hf-cache static --max-cache-len`);
- generate(cache_implementation="static") (`--hf-cache static --generate`): transformers sizes it
  `max_length - 1` = prompt + new tokens - 1 (generation/utils.py, 5.25);
- QuantizedCache, backend fp8 (`--hf-cache quantized --quant-backend fp8`; needs no extra package):
  full-attention types match to the byte, the others are refused in transformers' words.

The quanto and hqq backends need optimum-quanto and hqq, which are not in the test extra: their
rule was checked against transformers 5.25 with optimum-quanto 0.2.7 and hqq 0.2.8.post1 installed
beside it (`tests/hf_real.py` `quantized_generate_cache`), and tests/test_engines_hf.py pins the
numbers measured then and the source lines; in this suite that check is source-read only.

Expected values are the bytes transformers allocates, not kvplan's: the oracle is the engine.
"""

from __future__ import annotations

import pytest

import kvplan
from hf_real import generate_cache, prompt, quantized_generate_cache, static_cache, tiny_model

# hidden 64, 4 query heads, 2 KV heads of 16: the small shapes every row shares (DeepSeek's MLA
# needs as many KV heads as query heads; GPT-2, GPT-NeoX and Falcon name their fields otherwise)
BASE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=128,
            dtype="bfloat16")
EXPERTS = dict(num_experts_per_tok=1)
MLA = dict(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=2,
           n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1, **EXPERTS,
           **{**BASE, "num_key_value_heads": 4})

# model_type: (transformers config class, its arguments, the layer kinds kvplan must find)
CONFIGS = {
    "llama": ("LlamaConfig", dict(num_hidden_layers=2, **BASE), {"full_attention"}),
    "mistral": ("MistralConfig", dict(num_hidden_layers=2, sliding_window=4, **BASE), {"sliding_attention"}),
    "mixtral": ("MixtralConfig", dict(num_hidden_layers=2, sliding_window=4, num_local_experts=2, **EXPERTS, **BASE),
                {"sliding_attention"}),
    # layers from max_window_layers on slide
    "qwen2": ("Qwen2Config", dict(num_hidden_layers=3, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                  **BASE), {"full_attention", "sliding_attention"}),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_hidden_layers=3, use_sliding_window=True, sliding_window=4,
                                         max_window_layers=2, num_experts=2, moe_intermediate_size=32,
                                         shared_expert_intermediate_size=32, **EXPERTS, **BASE),
                  {"full_attention", "sliding_attention"}),
    "qwen3": ("Qwen3Config", dict(num_hidden_layers=3, head_dim=16, use_sliding_window=True, sliding_window=4,
                                  max_window_layers=1, **BASE), {"full_attention", "sliding_attention"}),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_hidden_layers=2, head_dim=16, use_sliding_window=True, sliding_window=4,
                                         num_experts=2, moe_intermediate_size=32, **EXPERTS, **BASE),
                  {"sliding_attention"}),
    "gemma": ("GemmaConfig", dict(num_hidden_layers=2, head_dim=16, **BASE), {"full_attention"}),
    "gemma2": ("Gemma2Config", dict(num_hidden_layers=3, head_dim=16, sliding_window=4, **BASE),
               {"full_attention", "sliding_attention"}),
    "gemma3_text": ("Gemma3TextConfig", dict(num_hidden_layers=3, head_dim=16, sliding_window=4,
                                             layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                             **BASE), {"full_attention", "sliding_attention"}),
    "deepseek_v2": ("DeepseekV2Config", dict(num_hidden_layers=2, q_lora_rank=None, **MLA), {"mla"}),
    "deepseek_v3": ("DeepseekV3Config", dict(num_hidden_layers=2, q_lora_rank=16, n_group=1, topk_group=1, **MLA),
                    {"mla"}),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64, dtype="bfloat16"),
             {"full_attention"}),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, vocab_size=128, dtype="bfloat16"), {"full_attention"}),
    # the class default: multi_query, one KV head
    "falcon": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                                    dtype="bfloat16"), {"full_attention"}),
    "phi3": ("Phi3Config", dict(num_hidden_layers=2, sliding_window=4, pad_token_id=0, **BASE), {"sliding_attention"}),
    # attention where i % 2 == 1, Mamba-1 state elsewhere
    "jamba": ("JambaConfig", dict(num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                  expert_layer_offset=1, num_experts=2, mamba_d_state=8, mamba_d_conv=4,
                                  mamba_expand=2, **EXPERTS, **BASE), {"full_attention", "state"}),
    "gpt_oss": ("GptOssConfig", dict(num_hidden_layers=2, head_dim=16, sliding_window=4, num_local_experts=2,
                                     **EXPERTS, **BASE), {"full_attention", "sliding_attention"}),
    # no_rope_layers 1 = chunked (RoPE) layer, 0 = global NoPE layer
    "llama4_text": ("Llama4TextConfig", dict(num_hidden_layers=4, head_dim=16, attention_chunk_size=4,
                                             num_local_experts=2, intermediate_size_mlp=64, no_rope_layers=[1, 1, 1, 0],
                                             **EXPERTS, **BASE), {"full_attention", "chunked_attention"}),
}

BATCH, PROMPT, NEW, MAX_CACHE_LEN = 2, 10, 3, 16


def _build(model_type):
    import transformers

    cls, kwargs, kinds = CONFIGS[model_type]
    config = getattr(transformers, cls)(**kwargs)
    assert config.model_type == model_type
    return config, kinds


def _config_file(tmp_path, config) -> str:
    path = tmp_path / "config.json"
    path.write_text(config.to_json_string())
    return str(path)


# mode: (what transformers runs, kvplan's context and options for it)
def _dynamic(model, ids):
    from hf_real import forward_cache

    return forward_cache(model, ids)


MODES = {
    "dynamic": (_dynamic, dict(context=PROMPT)),
    "generate": (lambda m, ids: generate_cache(m, ids, NEW), dict(context=PROMPT + NEW, generate=True)),
    "static": (lambda m, ids: static_cache(m, ids, MAX_CACHE_LEN),
               dict(context=PROMPT, hf_cache="static", max_cache_len=MAX_CACHE_LEN)),
    "generate_static": (lambda m, ids: generate_cache(m, ids, NEW, cache_implementation="static"),
                        dict(context=PROMPT + NEW, generate=True, hf_cache="static")),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model_type", CONFIGS)
def test_hf_engine_holds_what_transformers_holds(tmp_path, model_type, mode):
    config, kinds = _build(model_type)
    run, options = MODES[mode]
    real = run(tiny_model(config), prompt(config, BATCH, PROMPT))
    answer = kvplan.estimate(_config_file(tmp_path, config), engine="hf", batch=BATCH, **options).to_dict()
    assert not answer["refusals"]
    assert answer["kv_bytes_total"] == real.total
    assert {row["kind"] for row in answer["by_kind"]} == kinds
    held = answer["tokens_held_by_kind"]
    # the window or chunk bites: a windowed layer holds fewer tokens than a full one
    cached = answer["settings"]["tokens_cached"]
    for kind in kinds & {"sliding_attention", "chunked_attention"}:
        assert held[kind] < cached


def test_generate_static_allocates_max_length_minus_one(tmp_path):
    """generate(cache_implementation="static") preallocates max_length - 1 = 10 + 3 - 1 = 12 slots per full layer:
    2 layers x (K + V) x batch 2 x 2 KV heads x 12 x 16 x 2 B (bf16)."""
    config, _ = _build("llama")
    real = generate_cache(tiny_model(config), prompt(config, BATCH, PROMPT), NEW, cache_implementation="static")
    assert real.cache_class == "StaticCache"
    assert {t.shape for t in real.tensors} == {(BATCH, 2, 12, 16)}
    answer = kvplan.estimate(_config_file(tmp_path, config), engine="hf", batch=BATCH, context=PROMPT + NEW,
                             generate=True, hf_cache="static").to_dict()
    assert answer["settings"]["max_cache_len"] == 12
    assert answer["kv_bytes_total"] == real.total == 2 * 2 * 2 * 2 * 12 * 16 * 2


QUANTIZABLE = [t for t, (_, _, kinds) in CONFIGS.items() if kinds <= {"full_attention", "mla"}]


@pytest.mark.parametrize("model_type", QUANTIZABLE)
def test_fp8_quantized_cache_matches_transformers(tmp_path, model_type):
    """QuantizedCache(backend="fp8"): every token in float8_e4m3fn, no residual, one float32 scale per K and V per
    layer (0-d tensors, which hf_real lists as bookkeeping and kvplan counts)."""
    config, _ = _build(model_type)
    real = quantized_generate_cache(tiny_model(config), prompt(config, BATCH, PROMPT), NEW, backend="fp8")
    scales = [t for t in real.bookkeeping if t.name.endswith("[1]")]
    assert {t.dtype for t in scales} == {"float32"}
    answer = kvplan.estimate(_config_file(tmp_path, config), engine="hf", batch=BATCH, context=PROMPT + NEW,
                             generate=True, hf_cache="quantized", quant_backend="fp8").to_dict()
    assert answer["kv_bytes_total"] == real.total + sum(t.nbytes for t in scales)


@pytest.mark.parametrize("model_type", sorted(set(CONFIGS) - set(QUANTIZABLE)))
def test_quantized_cache_refuses_what_transformers_refuses(tmp_path, model_type):
    config, _ = _build(model_type)
    with pytest.raises(ValueError) as raised:
        quantized_generate_cache(tiny_model(config), prompt(config, BATCH, PROMPT), NEW, backend="fp8")
    answer = kvplan.estimate(_config_file(tmp_path, config), engine="hf", batch=BATCH, context=PROMPT + NEW,
                             generate=True, hf_cache="quantized", quant_backend="fp8").to_dict()
    assert answer["kv_bytes_total"] is None
    assert list(answer["refusals"]) == [str(raised.value)]


def test_a_config_without_dtype_is_sized_in_float32(tmp_path):
    """transformers 5 writes no `dtype` when the config class was left at its default (None); from_config then
    builds the model in torch's default dtype, float32 (PreTrainedModel._from_config), and from_pretrained's
    dtype="auto" falls back to the weights' dtype (_get_dtype), which kvplan reads from the safetensors headers
    when they are beside config.json. With config.json alone kvplan says float32, as transformers builds it."""
    import json

    from transformers import AutoModelForCausalLM, LlamaConfig

    from hf_real import forward_cache

    config = LlamaConfig(**{**CONFIGS["llama"][1], "dtype": None})
    path = _config_file(tmp_path, config)
    assert "dtype" not in json.loads(open(path).read())
    model = AutoModelForCausalLM.from_config(config).eval()
    real = forward_cache(model, prompt(config, BATCH, PROMPT))
    assert {t.dtype for t in real.tensors} == {"float32"}
    answer = kvplan.estimate(path, engine="hf", batch=BATCH, context=PROMPT).to_dict()
    assert answer["kv_cache_dtype"] == "torch.float32"
    assert answer["kv_bytes_total"] == real.total == 2 * 2 * BATCH * 2 * PROMPT * 16 * 4


def test_generate_static_keeps_the_largest_cache_a_model_has_used(tmp_path):
    """_prepare_static_cache sizes the cache max(max_cache_len, the model's _previous_max_cache_length): after
    generate(10 + 8 tokens) -> 17 slots, generate(4 + 2 tokens) on the same model gets 17 slots again, not 5.
    kvplan sizes one call on a fresh model and says so in a note."""
    config, _ = _build("llama")
    model = tiny_model(config)
    first = generate_cache(model, prompt(config, 1, 10), 8, cache_implementation="static")
    second = generate_cache(model, prompt(config, 1, 4), 2, cache_implementation="static")
    assert {t.shape for t in first.tensors} == {t.shape for t in second.tensors} == {(1, 2, 17, 16)}
    answer = kvplan.estimate(_config_file(tmp_path, config), engine="hf", context=6, generate=True,
                             hf_cache="static").to_dict()
    assert answer["settings"]["max_cache_len"] == 5
    assert any("_previous_max_cache_length" in note for note in answer["notes"])
