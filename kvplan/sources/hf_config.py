"""Hugging Face `config.json` -> ModelSpec fields, per `model_type`, with transformers' semantics.

Pure: a config dict in, a `Converted` out; no I/O, nothing from the model's folder
is imported or run (no `trust_remote_code`, `auto_map` is ignored).

What each type means for the KV cache (read from transformers' configuration_*.py):
- a field missing from config.json takes the transformers class default (listed
  in `DEFAULTS`, and named in the spec's notes when used);
- Mistral / Mixtral / Phi-3: `sliding_window` set -> every layer slides; null -> none;
- Qwen2 / Qwen3 (+MoE): `use_sliding_window: false` -> no sliding layers at all;
  true -> Qwen2 / Qwen3: layers from `max_window_layers` on slide; Qwen2-MoE: even layers
  below `max_window_layers` slide; Qwen3-MoE: every layer slides;
- Gemma-2: alternating, layer 0 sliding (`bool((i + 1) % 2)`);
- Gemma-3: `layer_types`, else `sliding_window_pattern` (default 6): layer i slides
  unless (i + 1) % pattern == 0;
- gpt-oss: `layer_types` (alternating, sliding first, when absent);
- Llama-4: `no_rope_layers` (1 = RoPE = chunked local attention of
  `attention_chunk_size` tokens, 0 = NoPE global layer), default a global layer every 4th;
- Jamba: attention where i % attn_layer_period == attn_layer_offset, Mamba elsewhere;
- DeepSeek-V2/V3: MLA (`kv_lora_rank` + `qk_rope_head_dim` cached per token);
- Falcon: `new_decoder_architecture` -> `num_kv_heads`; else `multi_query` -> 1 KV head;
- GPT-2: `n_layer` / `n_head` / `n_embd` / `n_positions`;
- multimodal configs: the nested `text_config` is sized (the vision tower is not);
- gpt_bigcode (StarCoder, SantaCoder): GPT-2's names, `multi_query` (default true) -> 1 KV head;
- MiniMax-M2: every layer full attention (`attn_type_list` must list 1 for each);
- Cohere2: `layer_types`, else sliding unless (i + 1) % `sliding_window_pattern` == 0 (default 4),
  head_dim always hidden / heads;
- SmolLM3: `no_rope_layers` changes only the rotation (NoPE layers cache K and V); a layer slides only
  with `use_sliding_window` and a window;
- GLM-4.5/4.6 (`glm4_moe`): GQA, DeepSeek-style MoE; GLM-4.7-Flash (`glm4_moe_lite`): DeepSeek-V3's MLA.

Fail closed: a field that can change the cache (kvplan.sources.cache_fields) that the type's handler did
not read is refused, naming it, for known and unknown types alike; a handler declares what it reads by
reading it through `_Cfg` (or `c.declare` for a field it weighs without looking up).

`num_parameters` needs weights; `Converted.parameters` is the analytic count of the
(text) model from config.json, for when no safetensors headers are at hand (None for a type without a
formula: the KV cache does not need it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from kvplan.errors import InputError
from kvplan.sources.cache_fields import ReadRecorder, shown, unread_cache_fields
from kvplan.model.shape import LAYER_TYPE_ALIASES
from kvplan.model.spec_rules import SIZE_LIMITS, layer_fields, size_limit_problem

_ABSENT = object()


class ConfigError(InputError):
    """A config.json that cannot be sized (exit 2)."""


# transformers' class defaults for the fields kvplan reads (configuration_<type>.py
# __init__ / dataclass defaults). Used only when config.json leaves a field out.
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, head_dim=None, max_position_embeddings=2048,
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                    sliding_window=4096, tie_word_embeddings=False),
    "mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
                    sliding_window=None, tie_word_embeddings=False, num_local_experts=8, num_experts_per_tok=2),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
                  tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096, max_window_layers=28),
    "qwen2_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=32768,
                      tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096, max_window_layers=28,
                      decoder_sparse_step=1, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                      num_experts_per_tok=4, num_experts=60, mlp_only_layers=[]),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=32768,
                  tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096, max_window_layers=28,
                  attention_bias=False),
    "qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                      num_attention_heads=32, num_key_value_heads=4, head_dim=None, max_position_embeddings=32768,
                      tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096,
                      attention_bias=False, decoder_sparse_step=1, moe_intermediate_size=768, num_experts_per_tok=8,
                      num_experts=128, mlp_only_layers=[]),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, max_position_embeddings=8192,
                  tie_word_embeddings=True, attention_bias=False),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                   sliding_window=4096, tie_word_embeddings=True, attention_bias=False),
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=131072,
                        sliding_window=4096, sliding_window_pattern=6, tie_word_embeddings=True,
                        attention_bias=False),
    # DeepseekV2Config as of transformers 5.25: 32 layers, 64 routed + 2 shared experts (older
    # releases had 30 layers and no experts by default).
    "deepseek_v2": dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008, moe_intermediate_size=1407,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None, n_shared_experts=2,
                        n_routed_experts=64, num_experts_per_tok=None, moe_layer_freq=1, first_k_dense_replace=0,
                        kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                        qk_nope_head_dim=128, max_position_embeddings=2048, tie_word_embeddings=False,
                        attention_bias=False),
    "deepseek_v3": dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                        n_routed_experts=256, num_experts_per_tok=8, moe_layer_freq=1, first_k_dense_replace=3,
                        kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                        qk_nope_head_dim=128, max_position_embeddings=4096, tie_word_embeddings=False,
                        attention_bias=False, num_nextn_predict_layers=0),
    # DeepseekV32Config (transformers 5.25 models/deepseek_v32/configuration_deepseek_v32.py): V3's sizes plus
    # the sparse-attention indexer (index_head_dim 128, index_n_heads 64, index_topk 2048).
    "deepseek_v32": dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                         num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                         n_routed_experts=256, num_experts_per_tok=8, moe_layer_freq=1, first_k_dense_replace=3,
                         kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                         qk_nope_head_dim=128, max_position_embeddings=163840, tie_word_embeddings=False,
                         attention_bias=False, num_nextn_predict_layers=0, index_head_dim=128, index_n_heads=64,
                         index_topk=2048),
    # GlmMoeDsaConfig (transformers 5.25 models/glm_moe_dsa/configuration_glm_moe_dsa.py): GLM-5's sizes, MLA and
    # the sparse-attention indexer; no moe_layer_freq (vLLM's getattr default 1 is set by the handler).
    "glm_moe_dsa": dict(vocab_size=154880, hidden_size=6144, intermediate_size=12288, moe_intermediate_size=2048,
                        num_hidden_layers=78, num_attention_heads=64, num_key_value_heads=64, n_shared_experts=1,
                        n_routed_experts=256, num_experts_per_tok=8, first_k_dense_replace=3, kv_lora_rank=512,
                        q_lora_rank=2048, qk_rope_head_dim=64, v_head_dim=256, qk_nope_head_dim=192,
                        max_position_embeddings=202752, tie_word_embeddings=False, attention_bias=False,
                        index_head_dim=128, index_n_heads=32, index_topk=2048),
    # Gemma3nTextConfig (transformers 5.25 models/gemma3n/configuration_gemma3n.py): the E4B sizes.
    "gemma3n_text": dict(vocab_size=262400, hidden_size=2048, num_hidden_layers=35, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=256, max_position_embeddings=32768, sliding_window=512,
                         tie_word_embeddings=True, num_kv_shared_layers=15),
    # Gemma4TextConfig (transformers 5.25 models/gemma4/configuration_gemma4.py); global_head_dim is popped
    # from the kwargs with default 512 in __post_init__, num_global_key_value_heads with default None.
    "gemma4_text": dict(vocab_size=262144, hidden_size=2304, num_hidden_layers=30, num_attention_heads=8,
                        num_key_value_heads=4, head_dim=256, max_position_embeddings=131072, sliding_window=512,
                        tie_word_embeddings=True, attention_k_eq_v=False, num_kv_shared_layers=0,
                        global_head_dim=512, num_global_key_value_heads=None, use_bidirectional_attention=None),
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                 tie_word_embeddings=True),
    # GPTBigCodeConfig (5.25): multi_query defaults to true (StarCoder, SantaCoder).
    "gpt_bigcode": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                        multi_query=True, tie_word_embeddings=True),
    "minimax_m2": dict(vocab_size=200064, hidden_size=3072, intermediate_size=1536, num_hidden_layers=62,
                       num_attention_heads=48, num_key_value_heads=8, head_dim=128, max_position_embeddings=196608,
                       tie_word_embeddings=False, num_experts_per_tok=8, num_local_experts=256),
    "cohere2": dict(vocab_size=256000, hidden_size=8192, intermediate_size=22528, num_hidden_layers=40,
                    num_attention_heads=64, num_key_value_heads=None, max_position_embeddings=8192,
                    tie_word_embeddings=True, attention_bias=False, sliding_window=4096, sliding_window_pattern=4),
    "smollm3": dict(vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=32768,
                    use_sliding_window=False, sliding_window=None, no_rope_layers=None, no_rope_layer_interval=4,
                    attention_bias=False, mlp_bias=False, tie_word_embeddings=True),
    "glm4_moe": dict(vocab_size=151552, hidden_size=4096, intermediate_size=10944, num_hidden_layers=46,
                     num_attention_heads=96, num_key_value_heads=8, max_position_embeddings=131072,
                     tie_word_embeddings=False, attention_bias=False, moe_intermediate_size=1408,
                     num_experts_per_tok=8, n_shared_experts=1, n_routed_experts=128, first_k_dense_replace=1,
                     use_qk_norm=False),
    "glm4_moe_lite": dict(vocab_size=154880, hidden_size=2048, intermediate_size=10240, moe_intermediate_size=1536,
                          num_hidden_layers=47, num_attention_heads=20, num_key_value_heads=20, n_shared_experts=1,
                          n_routed_experts=64, kv_lora_rank=512, q_lora_rank=768, qk_rope_head_dim=64,
                          v_head_dim=256, qk_nope_head_dim=192, num_experts_per_tok=4,
                          max_position_embeddings=202752, tie_word_embeddings=False, attention_bias=False),
    "gpt_neox": dict(vocab_size=50432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
                     intermediate_size=24576, max_position_embeddings=2048, tie_word_embeddings=False,
                     attention_bias=True),
    "falcon": dict(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                   num_kv_heads=None, new_decoder_architecture=False, multi_query=True, parallel_attn=True,
                   bias=False, ffn_hidden_size=None, num_ln_in_parallel_attn=None, max_position_embeddings=2048,
                   tie_word_embeddings=True),
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=4096,
                 sliding_window=None, tie_word_embeddings=False),
    "jamba": dict(vocab_size=65536, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=262144,
                  sliding_window=None, tie_word_embeddings=False, num_experts_per_tok=2, num_experts=16,
                  expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8, attn_layer_offset=4,
                  mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto", mamba_conv_bias=True,
                  mamba_proj_bias=False),
    "gpt_oss": dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=36,
                    num_attention_heads=64, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                    sliding_window=128, num_local_experts=128, num_experts_per_tok=4, tie_word_embeddings=False,
                    attention_bias=True),
    "llama4_text": dict(vocab_size=202048, hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384,
                        num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
                        max_position_embeddings=131072, tie_word_embeddings=False, num_experts_per_tok=1,
                        num_local_experts=16, moe_layers=None, interleave_moe_layer_step=1, no_rope_layers=None,
                        no_rope_layer_interval=4, attention_chunk_size=8192, attention_bias=False),
    # issue #13's state models (transformers 5.25 configuration_*.py defaults)
    "qwen3_next": dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=48,
                       num_attention_heads=16, num_key_value_heads=2, head_dim=256, max_position_embeddings=32768,
                       tie_word_embeddings=False, attention_bias=False, linear_conv_kernel_dim=4,
                       linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                       linear_num_value_heads=32, full_attention_interval=4, moe_intermediate_size=512,
                       shared_expert_intermediate_size=512, num_experts=512, num_experts_per_tok=10,
                       decoder_sparse_step=1, mlp_only_layers=[]),
    "qwen3_5_text": dict(vocab_size=248320, hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
                         num_attention_heads=16, num_key_value_heads=4, head_dim=256, max_position_embeddings=32768,
                         tie_word_embeddings=False, attention_bias=False, linear_conv_kernel_dim=4,
                         linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                         linear_num_value_heads=32, full_attention_interval=4),
    "qwen3_5_moe_text": dict(vocab_size=248320, hidden_size=2048, num_hidden_layers=40, num_attention_heads=16,
                             num_key_value_heads=2, head_dim=256, max_position_embeddings=32768,
                             tie_word_embeddings=False, attention_bias=False, linear_conv_kernel_dim=4,
                             linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                             linear_num_value_heads=32, full_attention_interval=4, moe_intermediate_size=512,
                             shared_expert_intermediate_size=512, num_experts=256, num_experts_per_tok=8),
    "nemotron_h": dict(vocab_size=131072, hidden_size=4096, intermediate_size=21504, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, max_position_embeddings=4096, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, ssm_state_size=128, mamba_num_heads=128,
                       mamba_head_dim=64, n_groups=8, conv_kernel=4, use_conv_bias=True, mamba_proj_bias=False,
                       mamba_ssm_cache_dtype="float32", moe_intermediate_size=7688,
                       moe_shared_expert_intermediate_size=7688, n_routed_experts=8, num_experts_per_tok=2),
    "mamba2": dict(vocab_size=32768, hidden_size=4096, num_hidden_layers=64, num_heads=128, head_dim=64,
                   state_size=128, n_groups=8, conv_kernel=4, expand=2, use_conv_bias=True, use_bias=False,
                   tie_word_embeddings=False),
    "kimi_linear": dict(vocab_size=163840, hidden_size=2304, intermediate_size=9216, moe_intermediate_size=1024,
                        num_hidden_layers=27, num_attention_heads=32, num_key_value_heads=32, kv_lora_rank=512,
                        qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, max_position_embeddings=1048576,
                        tie_word_embeddings=False),
    "lfm2": dict(vocab_size=65536, hidden_size=2560, intermediate_size=12288, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=128000,
                 tie_word_embeddings=True, conv_L_cache=3, conv_bias=False, block_multiple_of=256,
                 block_ffn_dim_multiplier=1.0, block_auto_adjust_ff_dim=True),
    "lfm2_moe": dict(vocab_size=65536, hidden_size=2048, intermediate_size=7168, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=128000,
                     tie_word_embeddings=True, conv_L_cache=3, conv_bias=False, moe_intermediate_size=1792,
                     num_dense_layers=2, num_experts_per_tok=4, num_experts=32, use_expert_bias=True),
    "granitemoehybrid": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048,
                             tie_word_embeddings=False, attention_bias=False, mamba_n_heads=128, mamba_n_groups=1,
                             mamba_d_state=256, mamba_d_head="auto", mamba_d_conv=4, mamba_expand=2,
                             mamba_conv_bias=True, mamba_proj_bias=False, shared_intermediate_size=1024,
                             num_local_experts=8, num_experts_per_tok=2),
}

# transformers' config class names the title-cased model_type does not spell.
_CONFIG_CLASSES = {"gpt_bigcode": "GPTBigCode", "smollm3": "SmolLM3", "minimax_m2": "MiniMaxM2", "lfm2_moe": "Lfm2Moe"}

# Old or wrapper `model_type`s that read as a known one.
TYPE_ALIASES = {
    "RefinedWebModel": "falcon",  # Falcon-7B before transformers' port (n_layer, n_head, multi_query)
    "RefinedWeb": "falcon",  # Falcon-40B before the port (new decoder architecture)
    "gemma3": "gemma3_text",
    "llama4": "llama4_text",
    "gemma3n": "gemma3n_text",
    "gemma4": "gemma4_text",
}

# Multimodal wrappers: the `model_type` their `text_config` has when it names none.
TEXT_CONFIG_TYPES = {
    "gemma3": "gemma3_text",
    "gemma3n": "gemma3n_text",
    "gemma4": "gemma4_text",
    "llama4": "llama4_text",
    "llava": "llama",
    "llava_next": "llama",
    "mistral3": "mistral",
    "qwen3_5": "qwen3_5_text",
    "qwen3_5_moe": "qwen3_5_moe_text",
}

# When config.json has a model_type kvplan does not know, its `architectures` class
# may still be one it does (e.g. Kimi-K2: model_type kimi_k2, DeepseekV3ForCausalLM).
ARCHITECTURE_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "GPTBigCodeForCausalLM": "gpt_bigcode",
    "MiniMaxM2ForCausalLM": "minimax_m2",
    "Cohere2ForCausalLM": "cohere2",
    "SmolLM3ForCausalLM": "smollm3",
    "Glm4MoeForCausalLM": "glm4_moe",
    "Glm4MoeLiteForCausalLM": "glm4_moe_lite",
    "DeepseekV32ForCausalLM": "deepseek_v32",
    "GlmMoeDsaForCausalLM": "glm_moe_dsa",
    "Gemma3nForCausalLM": "gemma3n_text",
    "Gemma4ForCausalLM": "gemma4_text",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "FalconForCausalLM": "falcon",
    "Phi3ForCausalLM": "phi3",
    "JambaForCausalLM": "jamba",
    "GptOssForCausalLM": "gpt_oss",
    "Llama4ForCausalLM": "llama4_text",
    "Qwen3NextForCausalLM": "qwen3_next",
    "NemotronHForCausalLM": "nemotron_h",
    "Mamba2ForCausalLM": "mamba2",
    "GraniteMoeHybridForCausalLM": "granitemoehybrid",
    # refused by name (HANDLERS' _not_yet): the published MiniMax-Text-01 / M1 configs name their own model_type
    "MiniMaxForCausalLM": "minimax",
    "MiniMaxText01ForCausalLM": "minimax",
    "MiniMaxM1ForCausalLM": "minimax",
    "DeepseekV4ForCausalLM": "deepseek_v4",
    "KimiLinearForCausalLM": "kimi_linear",
    "Lfm2ForCausalLM": "lfm2",
    "Lfm2MoeForCausalLM": "lfm2_moe",
}

# Fields an unknown model_type must carry to be sized (generic HF names only).
GENERIC_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class Converted:
    """ModelSpec fields from one config.json, plus an analytic parameter count."""

    model_type: str
    fields: dict[str, Any]  # ModelSpec fields, without name / source / num_parameters / notes
    parameters: Optional[int]  # analytic count of the (text) model; None for an unknown type
    inactive_parameters: int = 0  # MoE: expert weights a token does not read (0 when dense)
    notes: tuple[str, ...] = ()
    quantization: Optional[str] = None  # quantization_config.quant_method, when the weights are quantized
    weights_dtype: Optional[str] = None  # ModelSpec.weights_dtype for that quantization, when kvplan knows it
    weights_quantized: str = "all_linear"  # ModelSpec.weights_quantized: which body weights weights_dtype covers
    multimodal: bool = False
    mtp_layers: int = 0  # DeepSeek multi-token-prediction layers (weights not counted)


def supported_model_types() -> list[str]:
    """model_types with their own rules (plus the multimodal wrappers that nest one)."""
    return sorted((set(DEFAULTS) | set(TYPE_ALIASES) | set(TEXT_CONFIG_TYPES)) - {"RefinedWeb", "RefinedWebModel"})


# config.json keys that are not spec fields, mapped to the spec field whose bound
# (kvplan.model.spec_rules.SIZE_LIMITS) they share: layer periods and offsets are bounded like
# layers, so no per-layer loop below ever runs past MAX_LAYERS.
_BOUND_LIKE = {
    "n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size",
    "n_inner": "intermediate_size", "n_positions": "max_position_embeddings", "num_kv_heads": "num_key_value_heads",
    "ffn_hidden_size": "intermediate_size", "intermediate_size_mlp": "intermediate_size",
    "shared_expert_intermediate_size": "intermediate_size", "num_experts": "num_local_experts",
    "experts_per_token": "num_experts_per_tok", "attn_layer_period": "num_hidden_layers",
    "attn_layer_offset": "num_hidden_layers", "decoder_sparse_step": "num_hidden_layers",
    "interleave_moe_layer_step": "num_hidden_layers", "max_window_layers": "num_hidden_layers",
    "moe_layer_freq": "num_hidden_layers", "no_rope_layer_interval": "num_hidden_layers",
    "sliding_window_pattern": "num_hidden_layers", "num_ln_in_parallel_attn": "num_hidden_layers",
    "full_attention_interval": "num_hidden_layers", "ssm_state_size": "mamba_d_state", "state_size": "mamba_d_state",
    "conv_kernel": "mamba_d_conv", "expand": "mamba_expand", "n_groups": "mamba_n_groups",
    "mamba_num_heads": "mamba_n_heads", "num_heads": "mamba_n_heads", "mamba_d_head": "mamba_head_dim",
    "moe_shared_expert_intermediate_size": "intermediate_size", "shared_intermediate_size": "intermediate_size",
    "index_topk_freq": "num_hidden_layers", "index_skip_topk_offset": "num_hidden_layers",
}


# Every config.json key kvplan reads as a number (or a list of numbers): a JSON `true` there is
# refused (model_source.read_config), never read as 1.
NUMBER_KEYS = frozenset(SIZE_LIMITS) | frozenset(_BOUND_LIKE) | frozenset(GENERIC_REQUIRED) | {
    "mamba_dt_rank", "num_nextn_predict_layers", "mlp_only_layers", "moe_layers", "no_rope_layers",
}


def booleans_as_numbers(raw: Any, path: tuple = ()) -> list[tuple[tuple, bool]]:
    """(key path, value) of each boolean under a NUMBER_KEYS key, nested configs included (text_config)."""
    found = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key in NUMBER_KEYS:
                items = value if isinstance(value, list) else [value]
                found += [(path + (key,), v) for v in items if isinstance(v, bool)]
            elif isinstance(value, dict):
                found += booleans_as_numbers(value, path + (key,))
    return found


class _Cfg:
    """Field access with transformers' defaults, remembering which defaults were used."""

    def __init__(self, raw: dict[str, Any], defaults: dict[str, Any], where: str):
        # every key a handler looks up is recorded: what it reads is what it declares it understands
        # (kvplan.sources.cache_fields refuses a cache-relevant field it left unread)
        self.raw, self.defaults, self.where = ReadRecorder(raw), defaults, where
        self.defaulted: list[str] = []
        self.notes: list[str] = []  # what a converter could not say in spec fields

    def get(self, key: str, fallback: Any = _ABSENT) -> Any:
        if key in self.raw:
            return self.raw[key]
        if key in self.defaults:
            value = self.defaults[key]
            if value is not None and key not in self.defaulted:
                self.defaulted.append(key)
            return value
        return None if fallback is _ABSENT else fallback

    def int(self, key: str, *, required: bool = True, zero_ok: bool = False) -> Optional[int]:
        value = self.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero_ok else 1):
            what = "a non-negative integer" if zero_ok else "a positive integer"
            shown = "missing" if value is None else repr(value)
            raise ConfigError(f"{self.where}: {key} is {shown}, not {what}")
        field = key if key in SIZE_LIMITS else _BOUND_LIKE.get(key)
        problem = size_limit_problem(field, value) if field else None
        if problem:  # before any per-layer loop: 1e11 layers would never finish
            raise ConfigError(f"{self.where}: {key}: {problem}")
        return value

    def flag(self, key: str) -> bool:
        return bool(self.get(key, False))

    def peek(self, key: str) -> Any:
        """config.json's value of `key` (None when absent) without counting it as read."""
        return dict.get(self.raw, key)

    def declare(self, *keys: str) -> None:
        """Mark `keys` as weighed by the handler without being looked up (e.g. max_window_layers when
        use_sliding_window is false: it then means nothing)."""
        self.raw.read.update(keys)

    def refuse_unread(self, model_type: str) -> None:
        """Refuse the first cache-relevant field of config.json the handler did not read (fail closed)."""
        for key, value, why in unread_cache_fields(self.raw, self.raw.read)[:1]:
            raise ConfigError(
                f"{self.where}: {key} is {shown(value)}, a field that can change the KV cache ({why}), and kvplan "
                f"does not read it for model_type {model_type!r}; refused rather than guessed (write a spec YAML "
                "that states the layers as the model runs them)"
            )


# ------------------------------------------------------------------ parameter pieces


def _linear(n_in: int, n_out: int, bias: bool = False) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _gated_mlp(hidden: int, inter: int, bias: bool = False) -> int:
    """gate, up (hidden -> inter) and down (inter -> hidden): SwiGLU / GeGLU blocks."""
    return 2 * _linear(hidden, inter, bias) + _linear(inter, hidden, bias)


def _attention(hidden: int, heads: int, kv_heads: int, head_dim: int, qkv_bias: bool, o_bias: bool) -> int:
    return (
        _linear(hidden, heads * head_dim, qkv_bias)
        + 2 * _linear(hidden, kv_heads * head_dim, qkv_bias)
        + _linear(heads * head_dim, hidden, o_bias)
    )


@dataclass
class _Layers:
    """Per-model pieces the generic decoder sum needs."""

    attention: int  # one attention block
    norms: int  # norm weights in one layer
    mlp: Callable[[int], int]  # layer index -> MLP / MoE parameters
    inactive: Callable[[int], int] = lambda i: 0  # layer index -> expert weights a token skips
    extra_per_layer: int = 0


def _decoder_total(hidden: int, layers: int, vocab: int, tie: bool, parts: _Layers, final_norm: int) -> tuple[int, int]:
    """(total, inactive): embeddings, every layer, final norm, untied lm_head."""
    total = vocab * hidden + final_norm + (0 if tie else vocab * hidden)
    inactive = 0
    for i in range(layers):
        total += parts.attention + parts.norms + parts.mlp(i) + parts.extra_per_layer
        inactive += parts.inactive(i)
    return total, inactive


# ------------------------------------------------------------------ layer kinds


def _check_layer_types(c: _Cfg, layers: int) -> Optional[list[str]]:
    value = c.raw.get("layer_types")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != layers:
        count = len(value) if isinstance(value, list) else 0
        raise ConfigError(f"{c.where}: layer_types has {count} entries but num_hidden_layers is {layers}")
    bad = [v for v in value if not isinstance(v, str) or v not in LAYER_TYPE_ALIASES]  # in file order: any JSON value
    if bad:
        raise ConfigError(f"{c.where}: layer_types has {bad[0]!r}, not one of {sorted(LAYER_TYPE_ALIASES)}")
    # transformers 5 config classes build layer_types from these in __post_init__ and save both; the modeling
    # files then read layer_types alone (Qwen2/Qwen3 max_window_layers, Gemma-3's _sliding_window_pattern)
    c.declare("max_window_layers", "_sliding_window_pattern", "sliding_window_pattern")
    return list(value)


def _windowed_layers(
    c: _Cfg, layers: int, slides: Callable[[int, int], bool]
) -> tuple[Optional[list[str]], Optional[int]]:
    """Qwen-style: with use_sliding_window, layer i slides when slides(i, max_window_layers); an explicit
    layer_types wins."""
    window = c.get("sliding_window") if c.flag("use_sliding_window") else None
    explicit = _check_layer_types(c, layers)
    if explicit is not None:
        return explicit, window
    if window is None:
        c.declare("sliding_window", "max_window_layers")  # use_sliding_window false: neither means anything
        return None, None
    limit = c.int("max_window_layers", zero_ok=True)
    return ["sliding_attention" if slides(i, limit) else "full_attention" for i in range(layers)], window


def _qwen_layers(c: _Cfg, layers: int) -> tuple[Optional[list[str]], Optional[int]]:
    """Qwen2/Qwen3: sliding only when use_sliding_window, from layer max_window_layers on."""
    return _windowed_layers(c, layers, lambda i, first: i >= first)


def _qwen2_moe_layers(c: _Cfg, layers: int) -> tuple[Optional[list[str]], Optional[int]]:
    """Qwen2-MoE (transformers 5.25 Qwen2MoeConfig.__post_init__): with use_sliding_window, layer i
    slides when bool((i + 1) % 2) and i < max_window_layers."""
    return _windowed_layers(c, layers, lambda i, below: bool((i + 1) % 2) and i < below)


def _qwen3_moe_layers(c: _Cfg, layers: int) -> tuple[Optional[list[str]], Optional[int]]:
    """Qwen3-MoE (transformers 5.25): Qwen3MoeConfig has no layer_types and no max_window_layers (a
    config.json's are not read); with use_sliding_window every Qwen3MoeAttention takes sliding_window."""
    window = c.get("sliding_window") if c.flag("use_sliding_window") else None
    # Qwen3MoeConfig has no layer_types nor max_window_layers, and vLLM 0.32's qwen3_moe.py reads neither
    c.declare("sliding_window", "max_window_layers", "layer_types")
    return (["sliding_attention"] * layers if window is not None else None), window


def _every_layer_slides(c: _Cfg, layers: int) -> tuple[Optional[list[str]], Optional[int]]:
    """Mistral / Mixtral / Phi-3: a set sliding_window applies to every layer; null means none."""
    window = c.get("sliding_window")
    explicit = _check_layer_types(c, layers)
    if explicit is not None:
        return explicit, window
    return (["sliding_attention"] * layers if window is not None else None), window


def _pattern_layers(c: _Cfg, layers: int, period: int) -> tuple[Optional[list[str]], Optional[int]]:
    """Gemma-2/3, gpt-oss: layer i slides unless (i + 1) % period == 0."""
    window = c.get("sliding_window")
    explicit = _check_layer_types(c, layers)
    if explicit is not None:
        return explicit, window
    if window is None:
        return None, None
    return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(layers)], window


# ------------------------------------------------------------------ per-type rules


def _common(c: _Cfg) -> dict[str, Any]:
    hidden = c.int("hidden_size")
    heads = c.int("num_attention_heads")
    kv = c.int("num_key_value_heads", required=False) or heads
    head_dim = c.int("head_dim", required=False) or None
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(f"{c.where}: no head_dim and hidden_size {hidden} is not a multiple of {heads} heads")
        head_dim = hidden // heads
    fields = {
        "hidden_size": hidden,
        "num_hidden_layers": c.int("num_hidden_layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "vocab_size": c.int("vocab_size"),
        "tie_word_embeddings": bool(c.get("tie_word_embeddings", False)),
    }
    inter = c.int("intermediate_size", required=False)
    if inter:
        fields["intermediate_size"] = inter
    max_pos = c.int("max_position_embeddings", required=False)
    if max_pos:
        fields["max_position_embeddings"] = max_pos
    return fields


def _llama_like(
    c: _Cfg,
    *,
    qkv_bias: bool,
    o_bias: bool,
    norms_per_layer: int = 2,
    qk_norm: bool = False,
    mlp_bias: bool = False,
    kinds: Callable[[_Cfg, int], tuple[Optional[list[str]], Optional[int]]] = lambda c, n: (None, None),
) -> tuple[dict, int, int]:
    f = _common(c)
    h, L = f["hidden_size"], f["num_hidden_layers"]
    inter = c.int("intermediate_size")
    layer_types, window = kinds(c, L)
    _apply_kinds(f, layer_types, window, None, c.where)
    parts = _Layers(
        attention=_attention(h, f["num_attention_heads"], f["num_key_value_heads"], f["head_dim"], qkv_bias, o_bias),
        norms=norms_per_layer * h + (2 * f["head_dim"] if qk_norm else 0),
        mlp=lambda i: _gated_mlp(h, inter, mlp_bias),
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, h)
    return f, total, inactive


def _apply_kinds(fields: dict, layer_types: Optional[list[str]], window: Any, chunk: Any, where: str) -> None:
    if layer_types is None:
        return
    kinds = [LAYER_TYPE_ALIASES[t].value for t in layer_types]
    if "sliding_attention" in kinds:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ConfigError(f"{where}: sliding layers need a positive sliding_window, not {window!r}")
        fields["sliding_window"] = window
    if "chunked_attention" in kinds:
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ConfigError(f"{where}: chunked layers need a positive attention_chunk_size, not {chunk!r}")
        fields["attention_chunk_size"] = chunk
    fields.update(layer_fields(kinds))


def _llama(c: _Cfg):
    bias = c.flag("attention_bias")
    return _llama_like(c, qkv_bias=bias, o_bias=bias, mlp_bias=c.flag("mlp_bias"))


def _mistral(c: _Cfg):
    return _llama_like(c, qkv_bias=False, o_bias=False, kinds=_every_layer_slides)


def _phi3(c: _Cfg):
    # qkv_proj and gate_up_proj are fused in Phi-3; the sizes are the same as separate q/k/v, gate/up.
    return _llama_like(c, qkv_bias=False, o_bias=False, kinds=_every_layer_slides)


def _qwen2(c: _Cfg, kinds=_qwen_layers):
    return _llama_like(c, qkv_bias=True, o_bias=False, kinds=kinds)


def _qwen3(c: _Cfg, kinds=_qwen_layers):
    bias = c.flag("attention_bias")
    return _llama_like(c, qkv_bias=bias, o_bias=bias, qk_norm=True, kinds=kinds)


def _gemma(c: _Cfg):
    bias = c.flag("attention_bias")
    return _llama_like(c, qkv_bias=bias, o_bias=bias)


def _gemma2(c: _Cfg):
    # Gemma2Config (5.25) has no sliding_window_size, an older name google/gemma-2-* configs still carry beside
    # sliding_window (the same 4096); transformers and vLLM (models/gemma2.py) read sliding_window only.
    c.declare("sliding_window_size")
    bias = c.flag("attention_bias")
    return _llama_like(c, qkv_bias=bias, o_bias=bias, norms_per_layer=4, kinds=lambda c, n: _pattern_layers(c, n, 2))


def _gemma3(c: _Cfg):
    bias = c.flag("attention_bias")
    period = c.int("sliding_window_pattern")
    return _llama_like(
        c, qkv_bias=bias, o_bias=bias, norms_per_layer=4, qk_norm=True, kinds=lambda c, n: _pattern_layers(c, n, period)
    )


def _moe_fields(
    f: dict, experts: int, used: int, moe_inter: Optional[int], c: Optional[_Cfg] = None,
    moe_layers: Optional[list[int]] = None,
) -> None:
    f["num_local_experts"] = experts
    f["num_experts_per_tok"] = used
    if moe_inter:
        f["moe_intermediate_size"] = moe_inter
    if moe_layers is not None and c is not None:
        _moe_layer_fields(f, c, moe_layers)


def _moe_layer_fields(f: dict, c: _Cfg, moe_layers: list[int]) -> None:
    """expert_layer_period / expert_layer_offset for MoE in every p-th layer from o; a note
    where the layers follow no such pattern (measure then runs every layer as MoE)."""
    L = f["num_hidden_layers"]
    if not moe_layers or len(moe_layers) == L:
        return
    offset = moe_layers[0]
    period = moe_layers[1] - moe_layers[0] if len(moe_layers) > 1 else L
    if offset < period and moe_layers == list(range(offset, L, period)):
        f["expert_layer_period"], f["expert_layer_offset"] = period, offset
    else:
        c.notes.append(
            f"experts sit in layers {moe_layers}, a pattern the spec cannot state (expert_layer_period/offset); "
            "kvplan measure runs every layer as MoE"
        )


def _mixtral(c: _Cfg):
    f, _, _ = _llama_like(c, qkv_bias=False, o_bias=False, kinds=_every_layer_slides)
    h, L, inter = f["hidden_size"], f["num_hidden_layers"], c.int("intermediate_size")
    E, k = c.int("num_local_experts"), c.int("num_experts_per_tok")
    expert = _gated_mlp(h, inter)
    parts = _Layers(
        attention=_attention(h, f["num_attention_heads"], f["num_key_value_heads"], f["head_dim"], False, False),
        norms=2 * h,
        mlp=lambda i: E * expert + _linear(h, E),  # experts + router
        inactive=lambda i: (E - k) * expert,
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, h)
    _moe_fields(f, E, k, None)
    return f, total, inactive


def _qwen_moe(c: _Cfg, *, shared: bool):
    base = _qwen2 if shared else _qwen3
    f, _, _ = base(c, kinds=_qwen2_moe_layers if shared else _qwen3_moe_layers)
    h, L, hd = f["hidden_size"], f["num_hidden_layers"], f["head_dim"]
    # transformers 5.x Qwen3MoeConfig.attribute_map {"num_experts": "num_local_experts"}: a config it saves
    # writes num_local_experts, and reading num_experts alone would take the 128 default silently
    experts_key = "num_local_experts" if "num_experts" not in c.raw and "num_local_experts" in c.raw else "num_experts"
    E, k = c.int(experts_key), c.int("num_experts_per_tok")
    moe_inter, dense_inter = c.int("moe_intermediate_size"), c.int("intermediate_size")
    step = c.int("decoder_sparse_step")
    dense_only = set(c.get("mlp_only_layers") or [])
    is_moe = lambda i: i not in dense_only and E > 0 and (i + 1) % step == 0  # noqa: E731 (modeling_qwen*_moe)
    expert = _gated_mlp(h, moe_inter)
    shared_mlp = _gated_mlp(h, c.int("shared_expert_intermediate_size")) + _linear(h, 1) if shared else 0
    bias = not shared and c.flag("attention_bias")
    parts = _Layers(
        attention=_attention(h, f["num_attention_heads"], f["num_key_value_heads"], hd, True if shared else bias, bias),
        norms=2 * h + (0 if shared else 2 * hd),
        mlp=lambda i: (E * expert + _linear(h, E) + shared_mlp) if is_moe(i) else _gated_mlp(h, dense_inter),
        inactive=lambda i: (E - k) * expert if is_moe(i) else 0,
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, h)
    _moe_fields(f, E, k, moe_inter, c, [i for i in range(L) if is_moe(i)])
    return f, total, inactive


def _deepseek(c: _Cfg, *, v3: bool):
    hidden, heads = c.int("hidden_size"), c.int("num_attention_heads")
    L, vocab = c.int("num_hidden_layers"), c.int("vocab_size")
    kv_lora, rope = c.int("kv_lora_rank"), c.int("qk_rope_head_dim")
    nope, v_dim = c.int("qk_nope_head_dim"), c.int("v_head_dim")
    q_lora = c.int("q_lora_rank", required=False)
    bias = c.flag("attention_bias")
    if c.peek("head_dim") == rope:  # DeepseekV2/V3/V32Config.head_dim = qk_rope_head_dim: RoPE's width, not a cache
        c.declare("head_dim")
    if c.peek("qk_head_dim") == nope + rope:  # the configs' qk_head_dim = nope + rope: the query's width, derived
        c.declare("qk_head_dim")
    f: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": L,
        "num_attention_heads": heads,
        "num_key_value_heads": c.int("num_key_value_heads", required=False) or heads,
        "v_head_dim": v_dim,
        "vocab_size": vocab,
        "tie_word_embeddings": bool(c.get("tie_word_embeddings", False)),
        "kv_lora_rank": kv_lora,
        "qk_rope_head_dim": rope,
        "qk_nope_head_dim": nope,
        "intermediate_size": c.int("intermediate_size"),
    }
    if q_lora:
        f["q_lora_rank"] = q_lora
    max_pos = c.int("max_position_embeddings", required=False)
    if max_pos:
        f["max_position_embeddings"] = max_pos
    q_dim = heads * (nope + rope)
    # modeling_deepseek_v2/v3 DeepseekV*Attention: low-rank q (or one q_proj), the
    # compressed kv_a projection with its RMSNorm, kv_b decompression, o_proj.
    attention = (
        (_linear(hidden, q_lora, bias) + q_lora + _linear(q_lora, q_dim) if q_lora else _linear(hidden, q_dim))
        + _linear(hidden, kv_lora + rope, bias)
        + kv_lora
        + _linear(kv_lora, heads * (nope + v_dim))
        + _linear(heads * v_dim, hidden, bias)
    )
    E = c.int("n_routed_experts", required=False)
    k = c.int("num_experts_per_tok", required=False)
    first_dense = c.int("first_k_dense_replace", zero_ok=True) if E else 0
    freq = c.int("moe_layer_freq") if E else None  # read only with experts
    moe_inter = c.int("moe_intermediate_size") if E else 0
    n_shared = c.int("n_shared_experts", required=False, zero_ok=True) or 0
    is_moe = lambda i: bool(E) and i >= first_dense and i % freq == 0  # noqa: E731
    expert = _gated_mlp(hidden, moe_inter) if E else 0
    # V3's router adds e_score_correction_bias (one per expert) to its weight.
    router = _linear(hidden, E) + (E if v3 else 0) if E else 0
    shared = _gated_mlp(hidden, moe_inter * n_shared) if n_shared else 0
    dense = _gated_mlp(hidden, f["intermediate_size"])
    parts = _Layers(
        attention=attention,
        norms=2 * hidden,
        mlp=lambda i: (E * expert + router + shared) if is_moe(i) else dense,
        inactive=lambda i: (E - (k or E)) * expert if is_moe(i) else 0,
    )
    total, inactive = _decoder_total(hidden, L, vocab, f["tie_word_embeddings"], parts, hidden)
    if E:
        f["n_routed_experts"] = E
        if k:
            f["num_experts_per_tok"] = k
        f["moe_intermediate_size"] = moe_inter
        f["n_shared_experts"] = n_shared
        f["first_k_dense_replace"] = first_dense
    return f, total, inactive


def _deepseek_v2(c: _Cfg):
    return _deepseek(c, v3=False)


def _deepseek_v32(c: _Cfg):
    """DeepSeek-V3.2: V3 plus the sparse-attention indexer on every layer.

    transformers 5.25 models/deepseek_v32: `DeepseekV32Config.__post_init__` makes every layer
    "indexed_attention" (a `DynamicIndexedLayer`: the MLA latent plus a [B, T, index_head_dim] indexer key
    cache); `DeepseekV32Indexer` holds wq_b (q_lora_rank -> index_n_heads x index_head_dim), wk (hidden ->
    index_head_dim), k_norm (a LayerNorm: weight and bias) and weights_proj (hidden -> index_n_heads).
    """
    layer_types = c.raw.get("layer_types")
    if layer_types is not None and (
        not isinstance(layer_types, list) or any(t != "indexed_attention" for t in layer_types)
    ):
        bad = next((t for t in layer_types if t != "indexed_attention"), layer_types) if isinstance(layer_types, list) else layer_types
        raise ConfigError(
            f"{c.where}: layer_types has {bad!r}; kvplan sizes deepseek_v32 only with every layer "
            "'indexed_attention' (DeepseekV32Config's default)"
        )
    f, total, inactive = _deepseek(c, v3=True)
    index_dim, index_heads, topk = c.int("index_head_dim"), c.int("index_n_heads"), c.int("index_topk")
    q_lora = c.int("q_lora_rank")  # the indexer's queries come from the q_lora latent
    hidden, L = f["hidden_size"], f["num_hidden_layers"]
    indexer = _linear(q_lora, index_heads * index_dim) + _linear(hidden, index_dim) + 2 * index_dim + _linear(hidden, index_heads)
    f.update(index_head_dim=index_dim, index_n_heads=index_heads, index_topk=topk)
    return f, total + L * indexer, inactive


def _gemma_shared_kv(c: _Cfg, layer_types: list[str], shared: int) -> None:
    """Refuse a KV-sharing layout transformers refuses: every layer type among the last `shared` layers
    must have a layer of its type before them to read (Gemma3nTextConfig / Gemma4TextConfig
    `kv_sharing_modes`: "The set of layer types producing a cache is different than the set of layer
    types using them"); note where vLLM's Gemma-3n reads another layer than transformers does."""
    L = len(layer_types)
    if shared >= L:
        raise ConfigError(
            f"{c.where}: num_kv_shared_layers is {shared} of {L} layers; at least one layer must keep its own KV"
        )
    first = L - shared
    owners = layer_types[:first]
    missing = sorted(set(layer_types[first:]) - set(owners))
    if missing:
        raise ConfigError(
            f"{c.where}: num_kv_shared_layers {shared} leaves no {missing[0]} layer before layer {first} for the "
            "shared layers of that type to read (transformers refuses this config)"
        )


def _gemma_layer_types(c: _Cfg, L: int, period: int) -> list[str]:
    """layer_types as given, else layer i full when (i + 1) % period == 0 (Gemma3nTextConfig: 5,
    Gemma4TextConfig: 6)."""
    explicit = _check_layer_types(c, L)
    kinds = explicit if explicit is not None else [
        "full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(L)
    ]
    bad = [t for t in kinds if t not in ("full_attention", "sliding_attention")]
    if bad:
        raise ConfigError(f"{c.where}: layer_types has {bad[0]!r}; Gemma layers are full_attention or sliding_attention")
    return list(kinds)


def _gemma_kv_fields(c: _Cfg, period: int) -> tuple[dict[str, Any], list[str]]:
    """The cache fields Gemma-3n and Gemma 4 share: sizes, layer types, window, KV sharing."""
    hidden, heads, L = c.int("hidden_size"), c.int("num_attention_heads"), c.int("num_hidden_layers")
    kv = c.int("num_key_value_heads")
    f: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": L,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": c.int("head_dim"),
        "vocab_size": c.int("vocab_size"),
        "tie_word_embeddings": bool(c.get("tie_word_embeddings", True)),
    }
    max_pos = c.int("max_position_embeddings", required=False)
    if max_pos:
        f["max_position_embeddings"] = max_pos
    inter = c.get("intermediate_size")
    if isinstance(inter, int) and not isinstance(inter, bool) and inter > 0:
        f["intermediate_size"] = c.int("intermediate_size")  # Gemma-3n may list one per layer: weights only
    layer_types = _gemma_layer_types(c, L, period)
    shared = c.int("num_kv_shared_layers", zero_ok=True)
    return f | {"num_kv_shared_layers": shared} if shared else f, layer_types


def _gemma3n(c: _Cfg):
    """Gemma-3n (transformers 5.25 models/gemma3n): Gemma-3-style sliding/full layers (one full in five by
    default) whose last num_kv_shared_layers layers compute no K/V of their own and get no cache layer
    (cache_utils: a "reuse" layer of `kv_sharing_modes` becomes a dummy layer). No parameter formula
    (AltUp, LAuReL and per-layer embeddings): the count comes from the weights' headers."""
    f, layer_types = _gemma_kv_fields(c, 5)
    shared = f.get("num_kv_shared_layers", 0)
    if shared:
        _gemma_shared_kv(c, layer_types, shared)
        first = len(layer_types) - shared
        # transformers: the last owning layer of the same type; vLLM 0.32 gemma3n.py: first - 2 for sliding,
        # first - 1 for full layers (and llama.cpp the same offsets). The bytes agree; the layer read may not.
        for kind, offset in (("sliding_attention", 2), ("full_attention", 1)):
            if kind in layer_types[first:]:
                hf_target = first - 1 - layer_types[:first][::-1].index(kind)
                if hf_target != first - offset:
                    c.notes.append(
                        f"shared {kind} layers read layer {hf_target} in transformers but layer {first - offset} in "
                        "vLLM and llama.cpp (fixed offsets); the cache bytes are the same"
                    )
    _apply_kinds(f, layer_types, c.get("sliding_window"), None, c.where)
    return f, None, 0


def _gemma4(c: _Cfg):
    """Gemma 4 (transformers 5.25 models/gemma4): sliding layers of head_dim and num_key_value_heads; full
    layers of global_head_dim and, when attention_k_eq_v, num_global_key_value_heads; KV sharing as Gemma-3n.

    `Gemma4TextConfig.__post_init__`: layer i full when (i + 1) % 6 == 0, the last layer forced to
    full_attention; per_layer_config {head_dim: global_head_dim, num_key_value_heads: num_global_key_value_heads
    if attention_k_eq_v} on every full layer. attention_k_eq_v does not halve the cache: V is the pre-norm key
    projection, but K then gets k_norm and RoPE and V v_norm, so both are cached
    (`Gemma4TextAttention.forward`; vLLM 0.32 gemma4.py loads K's weights into both slots).
    No parameter formula (MoE blocks, per-layer inputs): the count comes from the weights' headers.
    """
    bidirectional = c.get("use_bidirectional_attention")
    if bidirectional not in (None, "vision"):
        raise ConfigError(
            f"{c.where}: use_bidirectional_attention is {bidirectional!r}; a non-causal Gemma 4 (its sliding window "
            "becomes W // 2 + 1 both ways) is not a decoder kvplan sizes"
        )
    f, layer_types = _gemma_kv_fields(c, 6)
    if layer_types[-1] != "full_attention":
        layer_types[-1] = "full_attention"
        c.notes.append("layer_types' last layer made full_attention, as Gemma4TextConfig forces it")
    per_layer = c.raw.get("per_layer_config")
    if per_layer is not None:
        # per_layer_config holds each full layer's resolved head size and KV heads (attention_k_eq_v applied)
        c.declare("attention_k_eq_v")
        global_dim, global_kv = _gemma4_per_layer(c, per_layer, layer_types, f)
    else:
        global_dim = c.int("global_head_dim")
        global_kv = c.int("num_global_key_value_heads", required=False) if c.flag("attention_k_eq_v") else None
        if c.raw.get("num_global_key_value_heads") is not None and not c.flag("attention_k_eq_v"):
            c.notes.append("num_global_key_value_heads not used: attention_k_eq_v is false (Gemma4TextConfig gates it)")
    if global_dim != f["head_dim"]:
        f["global_head_dim"] = global_dim
    if global_kv is not None and global_kv != f["num_key_value_heads"]:
        f["num_global_key_value_heads"] = global_kv
    shared = f.get("num_kv_shared_layers", 0)
    if shared:
        _gemma_shared_kv(c, layer_types, shared)
    _apply_kinds(f, layer_types, c.get("sliding_window"), None, c.where)
    if "full_attention" not in layer_types[: len(layer_types) - shared]:
        f.pop("global_head_dim", None)
        f.pop("num_global_key_value_heads", None)
    return f, None, 0


def _gemma4_per_layer(c: _Cfg, per_layer: Any, layer_types: list[str], f: dict) -> tuple[int, Optional[int]]:
    """(global head size, global KV heads) from a per_layer_config (how transformers 5.25 saves a Gemma 4
    config: {"05": {"head_dim": 512, "num_key_value_heads": 2}, ...}); refused unless every full layer, and
    only they, carry the same override of those two fields."""
    where = f"{c.where}: per_layer_config"
    if not isinstance(per_layer, dict):
        raise ConfigError(f"{where} is {per_layer!r}, not a mapping of layer index to fields")
    overrides: dict[int, dict] = {}
    for key, value in per_layer.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} has key {key!r}, not a layer index") from None
        if not isinstance(value, dict) or not set(value) <= {"head_dim", "num_key_value_heads"} or not (0 <= index < len(layer_types)):
            raise ConfigError(
                f"{where}.{key} is {value!r}; kvplan reads only head_dim and num_key_value_heads overrides of existing layers"
            )
        overrides[index] = value
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    distinct = {tuple(sorted(v.items())) for v in overrides.values()}
    if sorted(overrides) != full or len(distinct) > 1:
        raise ConfigError(
            f"{where} overrides layers {sorted(overrides)} (full_attention layers: {full}); kvplan sizes only one "
            "override shared by every full_attention layer"
        )
    override = overrides[full[0]] if full else {}
    dim = override.get("head_dim", f["head_dim"])
    kv = override.get("num_key_value_heads")
    for name, value in (("head_dim", dim), ("num_key_value_heads", kv)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{where}: {name} is {value!r}, not a positive integer")
    return dim, kv


def _deepseek_v3(c: _Cfg):
    return _deepseek(c, v3=True)


def _gpt2(c: _Cfg, kv_heads: Optional[Callable[[int], int]] = None):
    """GPT-2's field names and layout (modeling_gpt2): wte + wpe; per block ln_1, c_attn (n -> n + 2 x kv x
    head_dim), c_proj, ln_2, c_fc, mlp c_proj (Conv1D with biases, LayerNorms with biases); ln_f. `kv_heads`
    maps n_head to the KV heads cached (GPT-2: every head)."""
    n = c.int("n_embd")
    L, heads, vocab = c.int("n_layer"), c.int("n_head"), c.int("vocab_size")
    positions = c.int("n_positions")
    inner = c.int("n_inner", required=False) or 4 * n
    if n % heads:
        raise ConfigError(f"{c.where}: n_embd {n} is not a multiple of n_head {heads}")
    hd = n // heads
    kv = kv_heads(heads) if kv_heads else heads
    f = {
        "hidden_size": n,
        "num_hidden_layers": L,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hd,
        "intermediate_size": inner,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "tie_word_embeddings": bool(c.get("tie_word_embeddings", True)),
    }
    parts = _Layers(
        attention=_linear(n, n + 2 * kv * hd, True) + _linear(n, n, True),
        norms=2 * (2 * n),
        mlp=lambda i: _linear(n, inner, True) + _linear(inner, n, True),
    )
    total, inactive = _decoder_total(n, L, vocab, f["tie_word_embeddings"], parts, 2 * n)
    return f, total + positions * n, inactive


def _gpt_bigcode(c: _Cfg):
    """StarCoder / SantaCoder (transformers 5.25 modeling_gpt_bigcode): GPT-2's field names and layout;
    multi_query (default true) caches one KV head, else n_head (GPTBigCodeAttention.__init__: kv_heads = 1
    if multi_query), so c_attn is n -> n + 2 x kv x head_dim; lm_head tied."""
    multi_query = c.flag("multi_query")
    c.declare("num_key_value_heads")  # GPTBigCodeConfig.__post_init__ derives it from multi_query, as here
    return _gpt2(c, lambda heads: 1 if multi_query else heads)


def _minimax_m2(c: _Cfg):
    """MiniMax-M2.x: every layer full attention (transformers 5.25 modeling_minimax_m2: "No sliding window";
    vLLM 0.32 minimax_m2.py passes no window). attn_type_list is MiniMax-Text-01's per-layer switch (0 = linear
    "lightning" attention, 1 = softmax attention): M2 lists 1 for every layer; any 0 is refused, as neither
    engine would run it for this model_type."""
    f = _common(c)
    h, L, hd = f["hidden_size"], f["num_hidden_layers"], f["head_dim"]
    heads, kv = f["num_attention_heads"], f["num_key_value_heads"]
    types = c.get("attn_type_list")
    if types is not None:
        if not isinstance(types, list) or len(types) != L:
            count = len(types) if isinstance(types, list) else 0
            raise ConfigError(f"{c.where}: attn_type_list has {count} entries but num_hidden_layers is {L}")
        other = next((t for t in types if t != 1 or isinstance(t, bool)), None)
        if other is not None:
            raise ConfigError(
                f"{c.where}: attn_type_list has {other!r}: MiniMax-M2 runs every layer as full attention (1); "
                "0 is MiniMax-Text-01's linear attention, which neither transformers nor vLLM runs for minimax_m2"
            )
    inter = c.int("intermediate_size")
    E, k = c.int("num_local_experts"), c.int("num_experts_per_tok")
    expert = _gated_mlp(h, inter)
    # modeling_minimax_m2: q/k/v/o without bias, q_norm over heads x head_dim and k_norm over kv x head_dim
    # (RMSNorm weights), a router (E x h) and its e_score_correction_bias (E, a stored buffer), E experts.
    parts = _Layers(
        attention=_attention(h, heads, kv, hd, False, False) + heads * hd + kv * hd,
        norms=2 * h,
        mlp=lambda i: E * expert + _linear(h, E) + E,
        inactive=lambda i: (E - k) * expert,
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, h)
    _moe_fields(f, E, k, None)
    return f, total, inactive


def _cohere2(c: _Cfg):
    """Command R7B / A (transformers 5.25 Cohere2Config.__post_init__): head_dim is always hidden / heads;
    layer_types, else sliding unless (i + 1) % sliding_window_pattern == 0 (default 4).

    vLLM 0.32 (commandr.py) gives a sliding layer sliding_window + 1 tokens ("cohere swa layer sees [pos -
    sliding_window, pos]"); kvplan sizes the window transformers gives (a note says so)."""
    c.declare("head_dim")  # Cohere2Config overwrites it with hidden_size // num_attention_heads
    h, heads = c.int("hidden_size"), c.int("num_attention_heads")
    if h % heads:
        raise ConfigError(f"{c.where}: hidden_size {h} is not a multiple of num_attention_heads {heads}")
    f = _common(c)
    f["head_dim"] = h // heads
    L = f["num_hidden_layers"]
    inter = c.int("intermediate_size")
    explicit = _check_layer_types(c, L)
    window = c.get("sliding_window")
    if explicit is not None:
        layer_types = explicit
        c.declare("sliding_window_pattern")  # layer_types wins (Cohere2Config)
    else:
        period = c.int("sliding_window_pattern")
        layer_types = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(L)]
    if window is None:  # a null window: no layer slides (Cohere2Attention: sliding_window None)
        layer_types = ["full_attention"] * L
    _apply_kinds(f, layer_types, window, None, c.where)
    if "sliding_attention" in layer_types:
        c.notes.append(
            f"sliding layers hold {window:,} tokens, as transformers' Cohere2 runs them; vLLM 0.32 (commandr.py) "
            f"gives them sliding_window + 1 = {window + 1:,}"
        )
    bias = c.flag("attention_bias")
    # modeling_cohere2: one LayerNorm (weight only) per layer before the parallel attention and MLP.
    parts = _Layers(
        attention=_attention(h, heads, f["num_key_value_heads"], f["head_dim"], bias, bias),
        norms=h,
        mlp=lambda i: _gated_mlp(h, inter),
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, h)
    return f, total, inactive


def _smollm3(c: _Cfg):
    """SmolLM3 (transformers 5.25 SmolLM3Config): no_rope_layers (1 = RoPE, default a NoPE layer every
    no_rope_layer_interval-th) changes only the rotation: NoPE layers still cache K and V. A layer slides only
    when use_sliding_window and sliding_window are set (SmolLM3Attention), in layer_types or, by default, on
    NoPE layers."""
    L = c.int("num_hidden_layers")
    no_rope = c.get("no_rope_layers")
    if no_rope is None:
        no_rope = [int((i + 1) % c.int("no_rope_layer_interval") != 0) for i in range(L)]
    elif not isinstance(no_rope, list) or len(no_rope) != L or any(v not in (0, 1) for v in no_rope):
        raise ConfigError(f"{c.where}: no_rope_layers is {shown(no_rope)}, not {L} entries of 0 or 1")
    # no_rope_layer_interval builds the default above; max_window_layers is no SmolLM3Config field (HuggingFaceTB/
    # SmolLM3-3B's config.json carries 28 from Qwen2's template; transformers and vLLM's transformers backend
    # never read it)
    c.declare("no_rope_layer_interval", "max_window_layers")
    use_window = c.flag("use_sliding_window")
    window = c.get("sliding_window") if use_window else None
    explicit = _check_layer_types(c, L)
    if not use_window or window is None:
        if explicit is not None and "sliding_attention" in explicit:
            raise ConfigError(
                f"{c.where}: layer_types names sliding layers but use_sliding_window is false or sliding_window "
                "null: transformers runs them as full attention, vLLM's transformers backend may slide them; "
                "refused rather than guessed"
            )
        c.declare("sliding_window")
        layer_types = None
    else:
        layer_types = explicit or ["full_attention" if no_rope[i] else "sliding_attention" for i in range(L)]

    def kinds(c, n):
        return layer_types, window

    bias = c.flag("attention_bias")
    return _llama_like(c, qkv_bias=bias, o_bias=bias, mlp_bias=c.flag("mlp_bias"), kinds=kinds)


def _glm4_moe(c: _Cfg):
    """GLM-4.5 / 4.6 / 4.7 (transformers 5.25 modeling_glm4_moe; vLLM 0.32 glm4_moe.py): grouped-query
    attention (head_dim from config.json, else hidden / heads), DeepSeek-style MoE from layer
    first_k_dense_replace on; the multi-token-prediction layers (num_nextn_predict_layers) are not counted."""
    f = _common(c)
    h, L, hd = f["hidden_size"], f["num_hidden_layers"], f["head_dim"]
    heads, kv = f["num_attention_heads"], f["num_key_value_heads"]
    inter, moe_inter = c.int("intermediate_size"), c.int("moe_intermediate_size")
    E, k = c.int("n_routed_experts"), c.int("num_experts_per_tok")
    n_shared = c.int("n_shared_experts", zero_ok=True)
    first_dense = c.int("first_k_dense_replace", zero_ok=True)
    bias = c.flag("attention_bias")
    expert = _gated_mlp(h, moe_inter)
    # Glm4MoeAttention: q/k/v with attention_bias, o_proj without; q_norm / k_norm (head_dim each) when
    # use_qk_norm. Glm4MoeMoE: router (E x h) + e_score_correction_bias (E), E experts, shared experts of
    # moe_intermediate_size x n_shared_experts.
    attention = _attention(h, heads, kv, hd, bias, False) + (2 * hd if c.flag("use_qk_norm") else 0)
    shared = _gated_mlp(h, moe_inter * n_shared) if n_shared else 0
    parts = _Layers(
        attention=attention,
        norms=2 * h,
        mlp=lambda i: (E * expert + _linear(h, E) + E + shared) if i >= first_dense else _gated_mlp(h, inter),
        inactive=lambda i: (E - k) * expert if i >= first_dense else 0,
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, h)
    f.update(n_routed_experts=E, num_experts_per_tok=k, moe_intermediate_size=moe_inter,
             n_shared_experts=n_shared, first_k_dense_replace=first_dense)
    return f, total, inactive


def _glm4_moe_lite(c: _Cfg):
    """GLM-4.7-Flash: DeepSeek-V3's MLA and MoE (vLLM 0.32 glm4_moe_lite.py builds DeepseekV2 attention; MoE
    where layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0, moe_layer_freq default 1).
    transformers 5.25 places the MoE by mlp_layer_types (default: layer 0 dense, the rest sparse) instead."""
    _dense_first(c, c.int("num_hidden_layers"))
    c.raw.setdefault("first_k_dense_replace", 1)  # Glm4MoeLiteConfig's default mlp_layer_types: one dense layer
    c.raw.setdefault("moe_layer_freq", 1)  # vLLM's getattr default; transformers has no such field
    c.declare("qk_head_dim")  # Glm4MoeLiteConfig.__post_init__ derives it: qk_nope_head_dim + qk_rope_head_dim
    return _deepseek(c, v3=True)


def _dense_first(c: _Cfg, L: int) -> None:
    """transformers' mlp_layer_types (GLM's "dense" / "sparse" per layer) read as first_k_dense_replace: only
    dense layers first, then sparse ones, is a layout kvplan counts."""
    types = c.get("mlp_layer_types")
    if types is not None:
        dense = next((i for i, t in enumerate(types) if t != "dense"), len(types)) if isinstance(types, list) else 0
        if not isinstance(types, list) or len(types) != L or any(t != "sparse" for t in types[dense:]):
            raise ConfigError(f"{c.where}: mlp_layer_types is {shown(types)}: kvplan counts only dense layers "
                              f"first, then sparse ones, over {L} layers")
        c.raw.setdefault("first_k_dense_replace", dense)


def _glm_dsa_every_layer_indexes(c: _Cfg, L: int) -> None:
    """Refuse a GLM-5 layout where a layer reuses another layer's top-k ("IndexCache"): such a layer builds no
    indexer and caches no indexer keys (transformers 5.25 GlmMoeDsaAttention: `indexer = None` when
    `indexer_types[i] == "shared"`; vLLM 0.32 deepseek_v2.py DeepseekV2MLAAttention: `_skip_topk` from
    index_topk_pattern "S", else `max(i - index_skip_topk_offset + 1, 0) % index_topk_freq != 0`, offset default 2;
    llama.cpp llama-model.cpp: only `is_indexer_full(il)` layers get indexer keys), while kvplan's spec gives every
    MLA layer its indexer keys. transformers reads indexer_types first, then index_topk_pattern, then the
    frequency; vLLM never reads indexer_types: every source present is checked."""
    def refuse(key: str, shared: list[int]) -> None:
        raise ConfigError(
            f"{c.where}: {key} is {shown(c.get(key))}, which makes {len(shared)} of {L} layers (first: {shared[0]}) "
            "reuse another layer's top-k and cache no indexer keys; kvplan sizes indexer keys on every layer, "
            "so it refuses rather than over-count them")

    types = c.get("indexer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != L or any(t not in ("full", "shared") for t in types):
            raise ConfigError(f"{c.where}: indexer_types is {shown(types)}: expected {L} entries, each 'full' or "
                              "'shared'")
        shared = [i for i, t in enumerate(types) if t == "shared"]
        if shared:
            refuse("indexer_types", shared)
    pattern = c.get("index_topk_pattern")
    if pattern is not None:
        marks = list(pattern) if isinstance(pattern, (str, list)) else None
        if marks is None or any(m not in ("F", "S", "full", "shared") for m in marks):
            raise ConfigError(f"{c.where}: index_topk_pattern is {shown(pattern)}: expected 'F' / 'S' per layer")
        shared = [i for i, m in enumerate(marks[:L]) if m in ("S", "shared")]
        if shared:
            refuse("index_topk_pattern", shared)
    freq = c.int("index_topk_freq", required=False) or 1
    if freq > 1:
        offset = c.int("index_skip_topk_offset", required=False, zero_ok=True)
        offset = 2 if offset is None else offset  # both sources' default
        shared = [i for i in range(L) if max(i - offset + 1, 0) % freq]
        if shared:
            refuse("index_topk_freq", shared)
    else:
        c.declare("index_skip_topk_offset")  # with a frequency of 1 every layer indexes, whatever the offset


def _glm_moe_dsa(c: _Cfg):
    """GLM-5 / GLM-5.1 (`glm_moe_dsa`): DeepSeek-V3.2's MLA latent and sparse-attention indexer keys with GLM's
    sizes (transformers 5.25 models/glm_moe_dsa: every layer "indexed_attention", a GlmMoeDsaIndexer of wq_b, wk,
    k_norm (LayerNorm) and weights_proj as DeepseekV32Indexer's; vLLM 0.32 builds GlmMoeDsaForCausalLM as
    DeepseekV2ForCausalLM with an indexer wherever the config has index_topk). MoE layers by mlp_layer_types
    (default first_k_dense_replace dense layers, then sparse); no moe_layer_freq in transformers (vLLM's default 1)."""
    L = c.int("num_hidden_layers")
    _glm_dsa_every_layer_indexes(c, L)
    _dense_first(c, L)
    c.raw.setdefault("moe_layer_freq", 1)
    c.declare("index_share_for_mtp_iteration")  # the MTP draft layer's top-k reuse; MTP layers are not sized
    # GlmMoeDsaConfig.__post_init__ overwrites both whatever config.json says: head_dim = qk_rope_head_dim,
    # qk_head_dim = qk_nope_head_dim + qk_rope_head_dim (vLLM's DeepseekV2 attention reads neither)
    c.declare("head_dim", "qk_head_dim")
    layer_types = c.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list) or len(layer_types) != L
                                    or any(t != "indexed_attention" for t in layer_types)):
        raise ConfigError(f"{c.where}: layer_types is {shown(layer_types)}; kvplan sizes glm_moe_dsa only with "
                          "every layer 'indexed_attention' (GlmMoeDsaConfig's default)")
    f, total, inactive = _deepseek(c, v3=True)
    index_dim, index_heads, topk = c.int("index_head_dim"), c.int("index_n_heads"), c.int("index_topk")
    q_lora = c.int("q_lora_rank")  # the indexer's queries come from the q_lora latent
    hidden = f["hidden_size"]
    indexer = _linear(q_lora, index_heads * index_dim) + _linear(hidden, index_dim) + 2 * index_dim + _linear(hidden, index_heads)
    f.update(index_head_dim=index_dim, index_n_heads=index_heads, index_topk=topk)
    return f, total + L * indexer, inactive


def _gpt_neox(c: _Cfg):
    f = _common(c)
    h, L = f["hidden_size"], f["num_hidden_layers"]
    inter = c.int("intermediate_size")
    bias = c.flag("attention_bias")
    # modeling_gpt_neox: query_key_value (h -> 3h), dense; MLP dense_h_to_4h / dense_4h_to_h with
    # biases; input and post-attention LayerNorms; final_layer_norm; embed_in and embed_out.
    parts = _Layers(
        attention=_linear(h, 3 * h, bias) + _linear(h, h, bias),
        norms=2 * (2 * h),
        mlp=lambda i: _linear(h, inter, True) + _linear(inter, h, True),
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, 2 * h)
    return f, total, inactive


def _falcon(c: _Cfg):
    h, heads = c.int("hidden_size"), c.int("num_attention_heads")
    L, vocab = c.int("num_hidden_layers"), c.int("vocab_size")
    new_arch = c.flag("new_decoder_architecture")
    multi_query = c.flag("multi_query")
    if c.peek("n_head_kv") == c.peek("num_kv_heads"):  # RefinedWeb's name, copied by _normalise (or agreeing)
        c.declare("n_head_kv")
    if h % heads:
        raise ConfigError(f"{c.where}: hidden_size {h} is not a multiple of {heads} heads")
    hd = h // heads
    # modeling_falcon FalconAttention: num_kv_heads if new_decoder_architecture or not
    # multi_query, else 1 (config num_kv_heads defaults to the head count).
    if new_arch or not multi_query:
        kv = c.int("num_kv_heads", required=False) or heads
    else:
        kv = 1
        c.declare("num_kv_heads")  # multi_query, old architecture: FalconAttention caches one KV head whatever it says
    if c.peek("num_key_value_heads") == kv:  # FalconConfig.num_key_value_heads: the KV heads resolved as above
        c.declare("num_key_value_heads")
    if new_arch:
        qkv_out = (heads + 2 * kv) * hd
    elif multi_query:
        qkv_out = h + 2 * hd
    else:
        qkv_out = 3 * h
    bias = c.flag("bias")
    ffn = c.int("ffn_hidden_size", required=False) or 4 * h
    if new_arch:
        n_ln = c.int("num_ln_in_parallel_attn", required=False) or 2
    else:
        n_ln = 1 if c.get("parallel_attn", True) else 2
    f = {
        "hidden_size": h,
        "num_hidden_layers": L,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hd,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "tie_word_embeddings": bool(c.get("tie_word_embeddings", True)),
    }
    max_pos = c.int("max_position_embeddings", required=False)
    if max_pos:
        f["max_position_embeddings"] = max_pos
    parts = _Layers(
        attention=_linear(h, qkv_out, bias) + _linear(h, h, bias),
        norms=n_ln * 2 * h,  # LayerNorms with bias
        mlp=lambda i: _linear(h, ffn, bias) + _linear(ffn, h, bias),
    )
    total, inactive = _decoder_total(h, L, vocab, f["tie_word_embeddings"], parts, 2 * h)
    return f, total, inactive


def _jamba(c: _Cfg):
    f = _common(c)
    h, L = f["hidden_size"], f["num_hidden_layers"]
    inter = c.int("intermediate_size")
    period, offset = c.int("attn_layer_period"), c.int("attn_layer_offset", zero_ok=True)
    e_period, e_offset = c.int("expert_layer_period"), c.int("expert_layer_offset", zero_ok=True)
    E, k = c.int("num_experts"), c.int("num_experts_per_tok")
    d_state, d_conv, expand = c.int("mamba_d_state"), c.int("mamba_d_conv"), c.int("mamba_expand")
    dt_rank = c.get("mamba_dt_rank")
    if dt_rank == "auto":
        dt_rank = math.ceil(h / 16)  # JambaConfig: "auto" means ceil(hidden_size / 16)
    elif not isinstance(dt_rank, int) or dt_rank < 1:
        raise ConfigError(f"{c.where}: mamba_dt_rank is {dt_rank!r}, not 'auto' or a positive integer")
    proj_bias, conv_bias = c.flag("mamba_proj_bias"), c.flag("mamba_conv_bias")
    is_attn = lambda i: i % period == offset  # noqa: E731 (JambaConfig.layers_block_type)
    is_moe = lambda i: E > 1 and i % e_period == e_offset  # noqa: E731 (layers_num_experts)
    window = c.get("sliding_window")
    attn_kind = "sliding_attention" if window is not None else "full_attention"
    kinds = [attn_kind if is_attn(i) else "mamba" for i in range(L)]
    _apply_kinds(f, kinds, window, None, c.where)
    f.update(mamba_d_state=d_state, mamba_d_conv=d_conv, mamba_expand=expand)
    d_inner = expand * h
    # modeling_jamba JambaMambaMixer: in_proj, depthwise conv1d, x_proj, dt_proj, A_log, D,
    # out_proj and the dt / B / C RMSNorms.
    mamba = (
        _linear(h, 2 * d_inner, proj_bias)
        + d_inner * d_conv
        + (d_inner if conv_bias else 0)
        + _linear(d_inner, dt_rank + 2 * d_state)
        + _linear(dt_rank, d_inner, True)
        + d_inner * d_state
        + d_inner
        + _linear(d_inner, h, proj_bias)
        + dt_rank
        + 2 * d_state
    )
    attention = _attention(h, f["num_attention_heads"], f["num_key_value_heads"], f["head_dim"], False, False)
    expert = _gated_mlp(h, inter)
    total = f["vocab_size"] * h * (1 if f["tie_word_embeddings"] else 2) + h
    inactive = 0
    for i in range(L):
        total += (attention if is_attn(i) else mamba) + 2 * h
        if is_moe(i):
            total += E * expert + _linear(h, E)
            inactive += (E - k) * expert
        else:
            total += expert
    _moe_fields(f, E, k, None, c, [i for i in range(L) if is_moe(i)])
    return f, total, inactive


def _gpt_oss(c: _Cfg):
    f = _common(c)
    h, L, hd = f["hidden_size"], f["num_hidden_layers"], f["head_dim"]
    heads, kv = f["num_attention_heads"], f["num_key_value_heads"]
    inter = c.int("intermediate_size")
    E = c.int("num_local_experts")
    k = c.int("num_experts_per_tok", required=False) or c.int("experts_per_token")
    layer_types, window = _pattern_layers(c, L, 2)
    _apply_kinds(f, layer_types, window, None, c.where)
    bias = c.flag("attention_bias")
    # modeling_gpt_oss: q/k/v/o with biases plus one attention-sink logit per head; router
    # with bias; experts hold gate_up (h -> 2*inter) and down projections, each with a bias.
    expert = _linear(h, 2 * inter, True) + _linear(inter, h, True)
    parts = _Layers(
        attention=_attention(h, heads, kv, hd, bias, bias) + heads,
        norms=2 * h,
        mlp=lambda i: E * expert + _linear(h, E, True),
        inactive=lambda i: (E - k) * expert,
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, h)
    _moe_fields(f, E, k, None)
    return f, total, inactive


def _llama4(c: _Cfg):
    f = _common(c)
    h, L, hd = f["hidden_size"], f["num_hidden_layers"], f["head_dim"]
    inter, inter_mlp = c.int("intermediate_size"), c.int("intermediate_size_mlp")
    E, k = c.int("num_local_experts"), c.int("num_experts_per_tok")
    step = c.int("interleave_moe_layer_step")
    moe_layers = c.get("moe_layers")
    moe_set = set(moe_layers) if isinstance(moe_layers, list) else set(range(step - 1, L, step))
    chunk = c.get("attention_chunk_size")
    explicit = _check_layer_types(c, L)
    if explicit is not None:
        layer_types = explicit
        c.declare("no_rope_layers", "no_rope_layer_interval")  # Llama4TextConfig derives layer_types from them
    elif chunk is None:
        layer_types = None
    else:
        # Llama4TextConfig: no_rope_layers[i] == 1 -> RoPE layer with chunked attention; an
        # empty or absent list means a NoPE global layer every no_rope_layer_interval layers.
        if c.peek("no_rope_layers"):
            c.declare("no_rope_layer_interval")  # Llama4TextConfig uses the interval only without the list
        no_rope = c.get("no_rope_layers") or [
            int((i + 1) % c.int("no_rope_layer_interval") != 0) for i in range(L)
        ]
        if len(no_rope) < L:
            raise ConfigError(f"{c.where}: no_rope_layers has {len(no_rope)} entries for {L} layers")
        layer_types = ["chunked_attention" if no_rope[i] else "full_attention" for i in range(L)]
    _apply_kinds(f, layer_types, c.get("sliding_window"), chunk, c.where)
    bias = c.flag("attention_bias")
    # modeling_llama4: experts keep gate_up (h -> 2*inter) and down stacked; a router; one
    # shared expert; dense layers use intermediate_size_mlp. QK-norm is an L2 norm (no weights).
    expert = _linear(h, 2 * inter) + _linear(inter, h)
    parts = _Layers(
        attention=_attention(h, f["num_attention_heads"], f["num_key_value_heads"], hd, bias, bias),
        norms=2 * h,
        mlp=lambda i: (E * expert + _linear(h, E) + _gated_mlp(h, inter)) if i in moe_set else _gated_mlp(h, inter_mlp),
        inactive=lambda i: (E - k) * expert if i in moe_set else 0,
    )
    total, inactive = _decoder_total(h, L, f["vocab_size"], f["tie_word_embeddings"], parts, h)
    _moe_fields(f, E, k, None, c, sorted(i for i in moe_set if 0 <= i < L))
    return f, total, inactive


# ------------------------------------------------------------------ state layers (issue #13)
# Mamba-2 and Gated DeltaNet layers keep a conv state and an SSM / recurrent state per sequence
# (kvplan.model.kinds.State); the handlers below read their sizes and which layer has which.


def _refuse_set(c: _Cfg, *keys: str, why: str) -> None:
    """Fail closed: a key that would change the cache in a way kvplan does not model is refused by name."""
    for key in keys:
        value = c.raw.get(key)
        if value not in (None, False, [], 0):
            raise ConfigError(f"{c.where}: {key} is {value!r}; {why}")


def _ssm_dtype(c: _Cfg, key: str) -> Optional[str]:
    """The config's SSM / recurrent state dtype (`mamba_ssm_cache_dtype`, Qwen3.5's `mamba_ssm_dtype`), checked."""
    value = c.get(key)
    if value is None:
        return None
    if value not in ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16"):
        raise ConfigError(f"{c.where}: {key} is {value!r}, not one of float32, float16, bfloat16")
    return value


def _gdn_layer_types(c: _Cfg, layers: int) -> list[str]:
    """Qwen3-Next / Qwen3.5 (transformers 5.25 Qwen3NextConfig / Qwen3_5TextConfig.__post_init__): an explicit
    layer_types wins, else "linear_attention" if (i + 1) % full_attention_interval else "full_attention"."""
    explicit = _check_layer_types(c, layers)
    interval = c.int("full_attention_interval", required=explicit is None)
    if explicit is None:
        return ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(layers)]
    # layer_types wins in transformers; an interval that says otherwise is refused, never chosen between
    if interval and explicit != ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(layers)]:
        raise ConfigError(f"{c.where}: layer_types and full_attention_interval {interval} name different full-attention "
                          "layers; transformers follows layer_types, other engines may not: refused rather than guessed")
    return explicit


def _gated_delta_net(c: _Cfg, *, moe: bool, ssm_key: str):
    """Qwen3-Next (`qwen3_next`) and Qwen3.5 (`qwen3_5_text`, `qwen3_5_moe_text`): Gated DeltaNet layers
    (`linear_attention`) beside gated full attention. Parameters from modeling_qwen3_next /
    modeling_qwen3_5 (transformers 5.25): attention q_proj is doubled for the output gate (hidden ->
    2 x heads x head_dim) with q_norm / k_norm; a GDN layer has in-projections to q, k, v (conv_dim),
    z (value_dim), b and a (Hv each), a depthwise conv1d (conv_dim x K, no bias), dt_bias and A_log
    (Hv each), a norm (dv) and out_proj; the MoE MLP has a router, experts, a shared expert and its
    one-output gate (every layer, decoder_sparse_step 1 and no mlp_only_layers)."""
    f = _common(c)
    h, L, hd = f["hidden_size"], f["num_hidden_layers"], f["head_dim"]
    _refuse_set(c, "use_sliding_window", why="kvplan sizes Qwen3-Next / Qwen3.5 attention without a sliding "
                "window; remove the key or write a spec")
    kinds = _gdn_layer_types(c, L)
    _apply_kinds(f, kinds, None, None, c.where)
    hk, hv = c.int("linear_num_key_heads"), c.int("linear_num_value_heads")
    dk, dv, K = c.int("linear_key_head_dim"), c.int("linear_value_head_dim"), c.int("linear_conv_kernel_dim")
    f.update(linear_num_key_heads=hk, linear_num_value_heads=hv, linear_key_head_dim=dk,
             linear_value_head_dim=dv, linear_conv_kernel_dim=K)
    ssm = _ssm_dtype(c, ssm_key)
    if ssm:
        f["mamba_ssm_cache_dtype"] = ssm
    key_dim, value_dim = hk * dk, hv * dv
    conv_dim = 2 * key_dim + value_dim
    bias = c.flag("attention_bias")
    attention = (_linear(h, 2 * f["num_attention_heads"] * hd, bias) + 2 * _linear(h, f["num_key_value_heads"] * hd, bias)
                 + _linear(f["num_attention_heads"] * hd, h, bias) + 2 * hd)
    gdn = _linear(h, conv_dim) + _linear(h, value_dim) + 2 * _linear(h, hv) + conv_dim * K + 2 * hv + dv + _linear(value_dim, h)
    if moe:
        E, k = c.int("num_experts"), c.int("num_experts_per_tok")
        moe_inter, shared_inter = c.int("moe_intermediate_size"), c.int("shared_expert_intermediate_size")
        _refuse_set(c, "mlp_only_layers", why="kvplan's parameter count puts experts in every layer")
        step = c.int("decoder_sparse_step", required=False) or 1
        if step != 1:
            raise ConfigError(f"{c.where}: decoder_sparse_step is {step}; kvplan's parameter count puts experts in every layer")
        expert = _gated_mlp(h, moe_inter)
        mlp = E * expert + _linear(h, E) + _gated_mlp(h, shared_inter) + _linear(h, 1)
        inactive_per_layer = (E - k) * expert
        _moe_fields(f, E, k, moe_inter)
    else:
        mlp = _gated_mlp(h, c.int("intermediate_size"))
        inactive_per_layer = 0
    total = f["vocab_size"] * h * (1 if f["tie_word_embeddings"] else 2) + h
    for kind in kinds:
        total += (gdn if kind == "linear_attention" else attention) + mlp + 2 * h
    mtp = c.get("mtp_num_hidden_layers")
    if mtp:
        c.notes.append(f"{mtp} multi-token-prediction layer(s) (mtp_num_hidden_layers) not counted: weights and "
                       "cache exist only with speculative decoding")
    return f, total, L * inactive_per_layer


def _mamba2_fields(f: dict, *, d_state: int, d_conv: int, heads: int, head_dim: int, groups: int, d_inner: int,
                   expand: Optional[int] = None) -> None:
    f.update(mamba_d_state=d_state, mamba_d_conv=d_conv, mamba_n_heads=heads, mamba_head_dim=head_dim,
             mamba_n_groups=groups)
    if expand is not None and expand * f["hidden_size"] == d_inner:
        f["mamba_expand"] = expand
    else:
        f["mamba_d_inner"] = d_inner


def _mamba2_mixer(h: int, d_inner: int, groups: int, d_state: int, heads: int, d_conv: int, conv_bias: bool,
                  proj_bias: bool) -> int:
    """Mamba-2 mixer parameters (modeling_mamba2 Mamba2Mixer, NemotronHMamba2Mixer, GraniteMoeHybridMambaLayer):
    in_proj hidden -> 2 d_inner + 2 G N + H, depthwise conv1d over d_inner + 2 G N channels, dt_bias, A_log, D
    (H each), the gated RMSNorm (d_inner) and out_proj."""
    conv_dim = d_inner + 2 * groups * d_state
    return (_linear(h, 2 * d_inner + 2 * groups * d_state + heads, proj_bias) + conv_dim * d_conv
            + (conv_dim if conv_bias else 0) + 3 * heads + d_inner + _linear(d_inner, h, proj_bias))


def _nemotron_h(c: _Cfg):
    """Nemotron-H (`nemotron_h`): `hybrid_override_pattern` M = Mamba-2, * = attention, - = MLP, E = MoE
    (transformers 5.25 NemotronHConfig._pattern_to_list; `layers_block_type` names them linear_attention,
    full_attention, mlp, moe), the layer count is the pattern's length; d_inner = mamba_num_heads x
    mamba_head_dim (NemotronHMamba2Mixer.intermediate_size), not expand x hidden_size."""
    c.declare("expand")  # NemotronHConfig keeps it, but the mixer's width is mamba_num_heads x mamba_head_dim
    pattern = c.raw.get("hybrid_override_pattern")
    listed = c.raw.get("layers_block_type", c.raw.get("layer_types"))
    if isinstance(pattern, str) and pattern:
        mapping = {"M": "mamba", "*": "full_attention", "-": "mlp", "E": "moe"}
        bad = sorted(set(pattern) - set(mapping))
        if bad:
            raise ConfigError(f"{c.where}: hybrid_override_pattern has {bad[0]!r}, not one of M, *, -, E")
        kinds = [mapping[ch] for ch in pattern]
    elif isinstance(listed, list) and listed:
        known = {"linear_attention": "mamba", "mamba": "mamba", "full_attention": "full_attention",
                 "attention": "full_attention", "mlp": "mlp", "moe": "moe"}
        bad = [t for t in listed if t not in known]
        if bad:
            raise ConfigError(f"{c.where}: layers_block_type has {bad[0]!r}, not one of {sorted(known)}")
        kinds = [known[t] for t in listed]
    else:
        raise ConfigError(f"{c.where}: neither hybrid_override_pattern nor layers_block_type says which layer is which")
    _refuse_set(c, "sliding_window", why="kvplan sizes Nemotron-H attention without a sliding window")
    raw = dict(c.raw, num_hidden_layers=len(kinds))
    c2 = _Cfg(raw, c.defaults, c.where)
    f = _common(c2)
    c.declare(*c2.raw.read)  # what _common read through the copy was read
    c.defaulted.extend(k for k in c2.defaulted if k not in c.defaulted)
    if c.raw.get("num_hidden_layers") not in (None, len(kinds)):
        c.notes.append(f"num_hidden_layers {c.raw['num_hidden_layers']} ignored: the layer pattern has {len(kinds)} "
                       "layers (NemotronHConfig.num_hidden_layers is its length)")
    h = f["hidden_size"]
    _apply_kinds(f, kinds, None, None, c.where)
    heads, head_dim = c.int("mamba_num_heads"), c.int("mamba_head_dim")
    d_state, d_conv, groups = c.int("ssm_state_size"), c.int("conv_kernel"), c.int("n_groups")
    d_inner = heads * head_dim
    _mamba2_fields(f, d_state=d_state, d_conv=d_conv, heads=heads, head_dim=head_dim, groups=groups, d_inner=d_inner)
    f["mamba_ssm_cache_dtype"] = _ssm_dtype(c, "mamba_ssm_cache_dtype")
    bias, mlp_bias = c.flag("attention_bias"), c.flag("mlp_bias")
    mamba = _mamba2_mixer(h, d_inner, groups, d_state, heads, d_conv, c.flag("use_conv_bias"), c.flag("mamba_proj_bias"))
    attention = _attention(h, f["num_attention_heads"], f["num_key_value_heads"], f["head_dim"], bias, bias)
    total = f["vocab_size"] * h * (1 if f["tie_word_embeddings"] else 2) + h
    inactive = 0
    moe_layers = [i for i, k in enumerate(kinds) if k == "moe"]
    if "mlp" in kinds:
        inter = c.int("intermediate_size")
    if moe_layers:
        E, k = c.int("n_routed_experts"), c.int("num_experts_per_tok")
        moe_inter, shared_inter = c.int("moe_intermediate_size"), c.int("moe_shared_expert_intermediate_size")
        n_shared = c.int("n_shared_experts", required=False, zero_ok=True)
        n_shared = 1 if n_shared is None else n_shared
        expert = 2 * h * moe_inter  # up and down, no gate (relu2)
        # NemotronHMoE: experts, the router (+ e_score_correction_bias, a buffer the checkpoint holds), shared expert
        moe = E * expert + _linear(h, E) + E + (2 * h * shared_inter if n_shared else 0)
    for kind in kinds:
        total += h  # the block's norm
        if kind == "mamba":
            total += mamba
        elif kind == "full_attention":
            total += attention
        elif kind == "mlp":
            total += _linear(h, inter, mlp_bias) + _linear(inter, h, mlp_bias)
        else:
            total += moe
            inactive += (E - k) * expert
    if moe_layers:
        f["n_routed_experts"], f["num_experts_per_tok"], f["moe_intermediate_size"] = E, k, moe_inter
        f["n_shared_experts"] = n_shared
    if c.raw.get("num_nextn_predict_layers"):
        c.notes.append("multi-token-prediction layers (num_nextn_predict_layers) not counted")
    if f["mamba_ssm_cache_dtype"] is None:
        del f["mamba_ssm_cache_dtype"]
    return f, total, inactive


def _mamba2(c: _Cfg):
    """Mamba-2 (`mamba2`): every layer a Mamba-2 mixer (modeling_mamba2 Mamba2Block), d_inner = expand x hidden,
    no attention; the heads are `num_heads` of `head_dim`, the state `state_size`."""
    h, L = c.int("hidden_size"), c.int("num_hidden_layers")
    expand, heads, head_dim = c.int("expand"), c.int("num_heads"), c.int("head_dim")
    d_state, d_conv, groups = c.int("state_size"), c.int("conv_kernel"), c.int("n_groups")
    d_inner = int(expand * h)
    f: dict[str, Any] = {"hidden_size": h, "num_hidden_layers": L, "num_attention_heads": heads,
                         "num_key_value_heads": heads, "head_dim": head_dim, "vocab_size": c.int("vocab_size"),
                         "tie_word_embeddings": bool(c.get("tie_word_embeddings", False))}
    max_pos = c.int("max_position_embeddings", required=False)  # vLLM's max_model_len limit when the config has it
    if max_pos:
        f["max_position_embeddings"] = max_pos
    f.update(layer_fields(["mamba"] * L))
    _mamba2_fields(f, d_state=d_state, d_conv=d_conv, heads=heads, head_dim=head_dim, groups=groups,
                   d_inner=d_inner, expand=expand)
    mixer = _mamba2_mixer(h, d_inner, groups, d_state, heads, d_conv, c.flag("use_conv_bias"), c.flag("use_bias"))
    total = f["vocab_size"] * h * (1 if f["tie_word_embeddings"] else 2) + h + L * (mixer + h)
    c.notes.append("num_attention_heads / head_dim mirror the Mamba heads (a Mamba-2 model has no attention)")
    return f, total, 0


def _granitemoehybrid(c: _Cfg):
    """Granite-4.0-H (`granitemoehybrid`): `layer_types` of mamba / attention (transformers 5.25
    GraniteMoeHybridConfig; default every layer Mamba-2), d_inner = mamba_expand x hidden, mamba_d_head
    "auto" = d_inner / mamba_n_heads; each layer has a shared MLP and, with num_local_experts > 0, experts."""
    f = _common(c)
    h, L = f["hidden_size"], f["num_hidden_layers"]
    raw_types = c.raw.get("layer_types", c.raw.get("layers_block_type"))
    if raw_types is None:
        kinds = ["mamba"] * L
    else:
        if not isinstance(raw_types, list) or len(raw_types) != L:
            raise ConfigError(f"{c.where}: layer_types must list num_hidden_layers ({L}) entries")
        known = {"mamba": "mamba", "linear_attention": "mamba", "attention": "full_attention",
                 "full_attention": "full_attention"}
        bad = [t for t in raw_types if t not in known]
        if bad:
            raise ConfigError(f"{c.where}: layer_types has {bad[0]!r}, not one of {sorted(known)}")
        kinds = [known[t] for t in raw_types]
    _refuse_set(c, "sliding_window", why="kvplan sizes Granite-4.0-H attention without a sliding window")
    _apply_kinds(f, kinds, None, None, c.where)
    expand, heads = c.int("mamba_expand"), c.int("mamba_n_heads")
    d_inner = expand * h
    head_dim = c.get("mamba_d_head")
    if head_dim == "auto":
        head_dim = d_inner // heads
    elif not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
        raise ConfigError(f"{c.where}: mamba_d_head is {head_dim!r}, not 'auto' or a positive integer")
    if head_dim * heads != d_inner:
        raise ConfigError(f"{c.where}: mamba_d_head {head_dim} x mamba_n_heads {heads} is not mamba_expand x "
                          f"hidden_size ({d_inner})")
    d_state, d_conv, groups = c.int("mamba_d_state"), c.int("mamba_d_conv"), c.int("mamba_n_groups")
    _mamba2_fields(f, d_state=d_state, d_conv=d_conv, heads=heads, head_dim=head_dim, groups=groups,
                   d_inner=d_inner, expand=expand)
    bias = c.flag("attention_bias")
    mamba = _mamba2_mixer(h, d_inner, groups, d_state, heads, d_conv, c.flag("mamba_conv_bias"), c.flag("mamba_proj_bias"))
    attention = _attention(h, f["num_attention_heads"], f["num_key_value_heads"], f["head_dim"], bias, bias)
    shared_inter = c.int("shared_intermediate_size")
    E = c.int("num_local_experts", required=False, zero_ok=True) or 0
    k = c.int("num_experts_per_tok") if E else 0
    inter = c.int("intermediate_size") if E else 0
    expert = 3 * h * inter  # GraniteMoeHybridParallelExperts: input_linear (2 x inter) and output_linear
    mlp = _linear(h, 2 * shared_inter) + _linear(shared_inter, h) + (E * expert + _linear(h, E) if E else 0)
    total = f["vocab_size"] * h * (1 if f["tie_word_embeddings"] else 2) + h
    for kind in kinds:
        total += (mamba if kind == "mamba" else attention) + mlp + 2 * h
    if E:
        _moe_fields(f, E, k, None)
    return f, total, L * (E - k) * expert if E else 0


# ------------------------------------------------------------------ KDA and short convolutions (issue #13)

# Kimi-Linear's linear_attn_config keys kvplan reads (transformers 5.25 KimiLinearConfig.__post_init__; vLLM 0.32
# models/kimi_k3/nvidia/model.py get_mamba_state_shape_from_config): any other key is refused by name.
_KDA_CONFIG_KEYS = ("full_attn_layers", "kda_layers", "head_dim", "num_heads", "short_conv_kernel_size")


def _kimi_linear(c: _Cfg):
    """Kimi-Linear (`kimi_linear`): Kimi Delta Attention layers beside MLA layers.

    Which layers: `linear_attn_config.kda_layers` and `.full_attn_layers`, **1-based** (transformers 5.25
    `KimiLinearConfig.__post_init__`: `layer_types[layer - 1]`; vLLM 0.32 `KimiLinearConfig.is_kda_layer`:
    `(layer_idx + 1) in kda_layers`); both lists must cover every layer once (transformers leaves any other
    layer None, vLLM makes it MLA: refused rather than chosen between). An explicit layer_types must agree.
    KDA state: `num_heads` x `head_dim`, short convs of `short_conv_kernel_size` on q, k and v (vLLM
    `kda_state_shape` with num_k_heads / head_k_dim defaulting to them); the recurrent state is float32 in
    vLLM (`kda_state_dtype`, "auto") and transformers (`chunk_kimi_delta_attention` returns it in float32),
    which the spec states as mamba_ssm_cache_dtype. The full layers are DeepSeek's MLA (kv_lora_rank +
    qk_rope_head_dim per token); `mla_use_nope` drops RoPE from the query's nope part but `kv_a_proj_with_mqa`
    still emits kv_lora_rank + qk_rope_head_dim, all cached. Parameters: DeepSeek-V3's count (MLA, MoE with a
    shared expert and a router with e_score_correction_bias) with each KDA layer's attention replaced by
    KimiLinearDeltaAttention's (modeling_kimi_linear, 5.25): q, k, v projections (hidden -> H d each), the
    depthwise conv1d (3 H d x K, no bias), the forget gate (f_a_proj hidden -> d, f_b_proj d -> H d, dt_bias H d,
    A_log H), b_proj (hidden -> H), g_a_proj (hidden -> d), g_b_proj (d -> H d), o_norm (d) and o_proj (H d ->
    hidden)."""
    L = c.int("num_hidden_layers")
    la = c.get("linear_attn_config")
    if not isinstance(la, dict):
        raise ConfigError(f"{c.where}: linear_attn_config is {shown(la)}; kvplan sizes kimi_linear only from its "
                          "kda_layers, full_attn_layers, num_heads, head_dim and short_conv_kernel_size")
    extra = [k for k in la if k not in _KDA_CONFIG_KEYS and la[k] not in (None, False, 0, [], {})]
    if extra:
        raise ConfigError(f"{c.where}: linear_attn_config.{extra[0]} is {shown(la[extra[0]])}, a KDA setting kvplan "
                          "does not read; refused rather than guessed (write a spec YAML)")
    kda, full = la.get("kda_layers"), la.get("full_attn_layers")
    layers_ok = (isinstance(kda, list) and isinstance(full, list)
                 and all(isinstance(i, int) and not isinstance(i, bool) for i in kda + full)
                 and sorted(kda + full) == list(range(1, L + 1)))
    if not layers_ok:
        raise ConfigError(f"{c.where}: linear_attn_config's kda_layers and full_attn_layers (1-based) must name each "
                          f"of the {L} layers once; transformers and vLLM fill any other layer differently")
    kinds = ["linear_attention" if i + 1 in kda else "full_attention" for i in range(L)]
    explicit = _check_layer_types(c, L)
    if explicit is not None and explicit != kinds:
        raise ConfigError(f"{c.where}: layer_types and linear_attn_config name different KDA layers; transformers "
                          "follows layer_types, vLLM linear_attn_config: refused rather than guessed")
    heads, dim, kernel = la.get("num_heads"), la.get("head_dim"), la.get("short_conv_kernel_size")
    for key, value in (("num_heads", heads), ("head_dim", dim), ("short_conv_kernel_size", kernel)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{c.where}: linear_attn_config.{key} is {shown(value)}, not a positive integer")
    # KimiLinearConfig saves linear_num_heads / linear_head_dim / linear_conv_kernel_dim beside linear_attn_config,
    # which overrides them on load (transformers) and is all vLLM reads: the copies change nothing
    c.declare("linear_num_heads", "linear_head_dim", "linear_conv_kernel_dim")
    c.declare("mla_use_nope")  # no cache change: kv_a_proj_with_mqa emits kv_lora_rank + qk_rope_head_dim either way
    # KimiLinearConfig maps num_experts / num_experts_per_token / num_shared_experts (attribute_map) and reads
    # moe_layer_freq / first_k_dense_replace as DeepSeek does; model_max_length is its max_position_embeddings
    for ours, theirs in (("n_routed_experts", "num_experts"), ("num_experts_per_tok", "num_experts_per_token"),
                         ("n_shared_experts", "num_shared_experts"), ("max_position_embeddings", "model_max_length")):
        if theirs in c.raw and ours not in c.raw:
            c.raw[ours] = c.raw[theirs]
    _dense_first(c, L)  # mlp_layer_types: what KimiLinearConfig saves in place of first_k_dense_replace (default 1)
    c.raw.setdefault("first_k_dense_replace", 1)
    c.raw.setdefault("moe_layer_freq", 1)
    f, total, inactive = _deepseek(c, v3=True)
    h, heads_q, kv_lora, rope = f["hidden_size"], f["num_attention_heads"], f["kv_lora_rank"], f["qk_rope_head_dim"]
    nope, v_dim, bias = f["qk_nope_head_dim"], f["v_head_dim"], c.flag("attention_bias")
    q_lora = f.get("q_lora_rank")
    q_dim = heads_q * (nope + rope)
    mla = ((_linear(h, q_lora, bias) + q_lora + _linear(q_lora, q_dim) if q_lora else _linear(h, q_dim))
           + _linear(h, kv_lora + rope, bias) + kv_lora + _linear(kv_lora, heads_q * (nope + v_dim))
           + _linear(heads_q * v_dim, h, bias))  # as _deepseek counts it
    if c.peek("head_dim") is not None:  # KimiLinearConfig overwrites head_dim with qk_rope_head_dim: no cache of its own
        c.declare("head_dim")
    f.pop("num_key_value_heads", None)
    f["num_key_value_heads"] = c.int("num_key_value_heads", required=False) or f["num_attention_heads"]
    _apply_kinds(f, kinds, None, None, c.where)
    f.update(linear_num_heads=heads, linear_head_dim=dim, linear_conv_kernel_dim=kernel,
             mamba_ssm_cache_dtype="float32")
    c.notes.append("KDA recurrent state in float32 (vLLM kda_state_dtype, transformers chunk_kimi_delta_attention)")
    hd = heads * dim
    kda_attention = (3 * _linear(h, hd) + 3 * hd * kernel + _linear(h, dim) + _linear(dim, hd) + hd + heads
                     + _linear(h, heads) + _linear(h, dim) + _linear(dim, hd) + dim + _linear(hd, h))
    return f, total + len(kda) * (kda_attention - mla), inactive


def _lfm2(c: _Cfg, *, moe: bool):
    """LFM2 (`lfm2`) and LFM2-MoE (`lfm2_moe`): short-convolution layers ("conv") beside GQA layers.

    Which layers: `layer_types` ("conv" / "full_attention"), else (lfm2 only) `full_attn_idxs`, 0-based
    (transformers 5.25 `Lfm2Config.__post_init__`; vLLM 0.32 lfm2.py reads layer_types). Conv state per layer:
    the last conv_L_cache - 1 inputs of a depthwise conv over hidden_size channels (vLLM
    `short_conv_state_shape(tp, conv_dim, conv_L_cache)`, lfm2_moe passing hidden_size; transformers
    `Lfm2ShortConv.conv` is hidden_size wide; llama.cpp `n_embd_r` = n_embd x (n_shortconv_l_cache - 1)).
    A `conv_dim` other than hidden_size is refused (vLLM's lfm2 reads it, transformers does not).
    Parameters (modeling_lfm2 / modeling_lfm2_moe, 5.25): embeddings (tied by default: `tie_embedding`, the older
    name, wins as Lfm2Config pops it), per layer operator_norm and ffn_norm; a conv layer in_proj (hidden ->
    3 hidden), the depthwise conv (hidden x K) and out_proj (biases with conv_bias); an attention layer q, k, v,
    out_proj and q / k layernorms (head_dim each); the MLP w1, w3, w2 (lfm2: intermediate_size, or block_ff_dim,
    cut to 2/3, times block_ffn_dim_multiplier and rounded up to block_multiple_of when block_auto_adjust_ff_dim;
    lfm2_moe: the first num_dense_layers dense at intermediate_size, then a router, num_experts experts of
    moe_intermediate_size and the expert_bias buffer); embedding_norm."""
    f = _common(c)
    L = f["num_hidden_layers"]
    kinds = _check_layer_types(c, L)
    idxs = c.get("full_attn_idxs")
    if kinds is None:
        if moe or not isinstance(idxs, list):
            raise ConfigError(f"{c.where}: no layer_types{'' if moe else ' and no full_attn_idxs'}; kvplan needs to "
                              "know which layers are short convolutions")
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < L for i in idxs):
            raise ConfigError(f"{c.where}: full_attn_idxs is {shown(idxs)}, not layer indices below {L}")
        kinds = ["full_attention" if i in idxs else "conv" for i in range(L)]
    elif isinstance(idxs, list) and ["full_attention" if i in idxs else "conv" for i in range(L)] != kinds:
        raise ConfigError(f"{c.where}: layer_types and full_attn_idxs name different attention layers; refused "
                          "rather than guessed")
    bad = next((t for t in kinds if t not in ("conv", "full_attention")), None)
    if bad is not None:
        raise ConfigError(f"{c.where}: layer_types has {bad!r}; LFM2 layers are 'conv' or 'full_attention'")
    kernel = c.int("conv_L_cache")
    width = c.get("conv_dim")
    if width is not None and width != f["hidden_size"]:
        raise ConfigError(f"{c.where}: conv_dim is {shown(width)}, not hidden_size {f['hidden_size']}: vLLM's lfm2 sizes "
                          "the conv state by conv_dim, transformers by hidden_size; refused rather than chosen between")
    # conv_dim_out (the output projection's width) and conv_use_xavier_init (initialisation) keep no state
    c.declare("conv_dim_out", "conv_use_xavier_init")
    _apply_kinds(f, kinds, None, None, c.where)
    f["conv_L_cache"] = kernel
    if c.get("tie_embedding") is not None:  # Lfm2Config: tie_embedding is the older name of tie_word_embeddings
        f["tie_word_embeddings"] = bool(c.get("tie_embedding"))
    h, hd, bias = f["hidden_size"], f["head_dim"], c.flag("conv_bias")
    conv = _linear(h, 3 * h, bias) + h * kernel + (h if bias else 0) + _linear(h, h, bias)
    attention = _attention(h, f["num_attention_heads"], f["num_key_value_heads"], hd, False, False) + 2 * hd
    inactive = 0
    if moe:
        inter, dense = c.int("intermediate_size"), c.int("num_dense_layers", zero_ok=True)
        E, k, moe_inter = c.int("num_experts"), c.int("num_experts_per_tok"), c.int("moe_intermediate_size")
        expert = _gated_mlp(h, moe_inter)
        sparse = E * expert + _linear(h, E) + (E if c.get("use_expert_bias", True) else 0)
        mlp = lambda i: _gated_mlp(h, inter) if i < dense else sparse  # noqa: E731
        inactive = (L - min(dense, L)) * (E - k) * expert
        f.update(num_local_experts=E, num_experts_per_tok=k, moe_intermediate_size=moe_inter,
                 first_k_dense_replace=dense, intermediate_size=inter)
    else:
        inter = c.int("block_ff_dim", required=False) or c.int("intermediate_size")
        if c.get("block_auto_adjust_ff_dim", True):
            inter = int(2 * inter / 3)
            multiplier = c.get("block_ffn_dim_multiplier", 1.0)
            if multiplier is not None:
                step = c.int("block_multiple_of", required=False) or 256
                inter = step * ((int(multiplier * inter) + step - 1) // step)
        f["intermediate_size"] = inter
        mlp = lambda i: _gated_mlp(h, inter)  # noqa: E731
    total = f["vocab_size"] * h * (1 if f["tie_word_embeddings"] else 2) + h
    for i, kind in enumerate(kinds):
        total += (conv if kind == "conv" else attention) + mlp(i) + 2 * h
    return f, total, inactive


def _not_yet(why: str) -> Callable[[_Cfg], tuple[dict, int, int]]:
    """A type whose cache kvplan cannot state yet: refused by name, never sized by the generic path (which
    would read it as attention only and drop its state)."""
    def refuse(c: _Cfg) -> tuple[dict, int, int]:
        raise ConfigError(f"{c.where}: model_type {c.raw.get('model_type')!r} {why}; kvplan refuses it rather "
                          "than size it as attention alone")
    return refuse


HANDLERS: dict[str, Callable[[_Cfg], tuple[dict, int, int]]] = {
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": lambda c: _qwen_moe(c, shared=True),
    "qwen3": _qwen3,
    "qwen3_moe": lambda c: _qwen_moe(c, shared=False),
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v3,
    "deepseek_v32": _deepseek_v32,
    "glm_moe_dsa": _glm_moe_dsa,
    "gemma3n_text": _gemma3n,
    "gemma4_text": _gemma4,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "gpt_bigcode": _gpt_bigcode,
    "minimax_m2": _minimax_m2,
    "cohere2": _cohere2,
    "smollm3": _smollm3,
    "glm4_moe": _glm4_moe,
    "glm4_moe_lite": _glm4_moe_lite,
    "falcon": _falcon,
    "phi3": _phi3,
    "jamba": _jamba,
    "gpt_oss": _gpt_oss,
    "llama4_text": _llama4,
    "qwen3_next": lambda c: _gated_delta_net(c, moe=True, ssm_key="mamba_ssm_dtype"),
    "qwen3_5_text": lambda c: _gated_delta_net(c, moe=False, ssm_key="mamba_ssm_dtype"),
    "qwen3_5_moe_text": lambda c: _gated_delta_net(c, moe=True, ssm_key="mamba_ssm_dtype"),
    "nemotron_h": _nemotron_h,
    "mamba2": _mamba2,
    "granitemoehybrid": _granitemoehybrid,
    "kimi_linear": _kimi_linear,
    "lfm2": lambda c: _lfm2(c, moe=False),
    "lfm2_moe": lambda c: _lfm2(c, moe=True),
    # transformers 5.25 FalconH1DecoderLayer builds `self.mamba` and `self.self_attn` in every layer
    "falcon_h1": _not_yet("keeps attention K/V and a Mamba-2 state side by side in every layer, which a "
                          "kvplan spec (one kind per layer) cannot state yet"),
    "bamba": _not_yet("(Mamba-2 with attention at attn_layer_indices) has no rule in kvplan yet"),
    # transformers 5.25 models/minimax (MiniMax-Text-01, MiniMax-M1): MiniMaxLightningAttention layers keep one
    # [B, heads, head_dim, head_dim] state (MiniMaxCache.linear_cache) beside softmax layers (attn_type_list /
    # layer_types); vLLM 0.32 dropped the architecture ("was supported in vLLM until v0.23.0")
    "minimax": _not_yet("(MiniMax-Text-01 / MiniMax-M1: lightning-attention layers with a fixed per-head state "
                        "beside softmax attention layers) has no rule in kvplan yet"),
    # transformers 5.25 models/deepseek_v4: layer_types of compressed_sparse_attention / heavily_compressed_attention,
    # each caching compressed KV at its compress_rates
    "deepseek_v4": _not_yet("(compressed sparse and heavily compressed attention layers, compress_rates) has no "
                            "rule in kvplan yet"),
    # transformers 5.25 models/glm5_next: KDA linear-attention layers (linear_attn_config) beside MLA layers with
    # a pooled sparse-attention indexer
    **dict.fromkeys(("glm5_next", "glm5_next_text"), _not_yet(
        "(KDA linear attention beside MLA layers with a pooled sparse-attention indexer) has no rule in kvplan yet")),
}


def _generic(c: _Cfg) -> dict[str, Any]:
    """An unknown model_type: HF's generic field names, every one present, no defaults."""
    missing = [k for k in GENERIC_REQUIRED if not isinstance(c.raw.get(k), int) or c.raw.get(k) < 1]
    if missing:
        raise ConfigError(
            f"{c.where}: model_type {c.raw.get('model_type')!r} is not one kvplan knows, and config.json lacks "
            f"{', '.join(missing)}; kvplan sizes an unknown type only when every field it needs is present "
            f"(known types: {', '.join(supported_model_types())})"
        )
    f = _common(c)
    if c.raw.get("kv_lora_rank") is not None:
        f.pop("head_dim", None)
        f["kv_lora_rank"] = c.int("kv_lora_rank")
        f["qk_rope_head_dim"] = c.int("qk_rope_head_dim")
    window = c.raw.get("sliding_window") if c.raw.get("use_sliding_window", True) else None
    if window is None:
        c.declare("sliding_window", "max_window_layers")  # use_sliding_window false: no layer slides
    layer_types = _check_layer_types(c, f["num_hidden_layers"])
    if layer_types is None and window is not None:
        layer_types = ["sliding_attention"] * f["num_hidden_layers"]  # HF's DynamicCache rule
    _apply_kinds(f, layer_types, window, c.raw.get("attention_chunk_size"), c.where)
    return f


# config.json keys that make attention differ by layer (issue #13), and the handlers that read them. Any other
# type (known or not) carrying one with a value that changes the cache is refused by the key's name: read as
# a plain config it would be sized silently wrong (Gemma 4's global layers at the sliding head size, +44% at 8k).
GEOMETRY_KEYS = ("num_kv_shared_layers", "global_head_dim", "num_global_key_value_heads", "attention_k_eq_v",
                 "per_layer_config", "index_head_dim", "index_n_heads", "index_topk", "indexer_types",
                 "index_topk_pattern", "index_topk_freq")
GEOMETRY_READERS = {
    "gemma3n_text": {"num_kv_shared_layers"},
    "gemma4_text": {"num_kv_shared_layers", "global_head_dim", "num_global_key_value_heads", "attention_k_eq_v",
                    "per_layer_config"},
    "deepseek_v32": {"index_head_dim", "index_n_heads", "index_topk"},
    "glm_moe_dsa": {"index_head_dim", "index_n_heads", "index_topk", "indexer_types", "index_topk_pattern",
                    "index_topk_freq"},
}


def _refuse_unread_geometry(raw: dict[str, Any], handler: Optional[str], where: str) -> None:
    read = GEOMETRY_READERS.get(handler or "", set())
    for key in GEOMETRY_KEYS:
        value = raw.get(key)
        if key in read or value is None or value is False or value == 0 or value == {} or value == []:
            continue  # absent, null, false, 0 or empty: the default, which changes nothing
        kind = f"model_type {raw.get('model_type')!r}"
        raise ConfigError(
            f"{where}: {key} is {value!r}, which makes attention differ by layer, and kvplan does not read it for "
            f"{kind} (it does for gemma3n, gemma4, deepseek_v32 and glm_moe_dsa); refusing rather than sizing every "
            "layer alike"
        )


def _dtype(config: dict[str, Any]) -> Optional[str]:
    value = config.get("torch_dtype", config.get("dtype"))  # transformers >= 4.56 writes `dtype`
    return value if isinstance(value, str) else None


def convert_config(config: Any, where: str = "config.json") -> Converted:
    """ModelSpec fields and an analytic parameter count from one parsed config.json."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object at the top level")
    notes: list[str] = []
    outer_type = config.get("model_type")
    raw = config
    multimodal = False
    text = config.get("text_config")
    if isinstance(text, dict):
        multimodal = True
        raw = dict(text)
        raw.setdefault("model_type", TEXT_CONFIG_TYPES.get(str(outer_type), outer_type))
        # The wrapper's dtype, quantization and an explicit tie apply to its text model.
        for key in ("torch_dtype", "dtype", "quantization_config", "tie_word_embeddings"):
            if key not in raw and key in config:
                raw[key] = config[key]
        where = f"{where}: text_config"
        notes.append(f"the text model of a {outer_type!r} config (text_config); the vision tower is not sized")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(f"{where}: model_type is {model_type!r}; config.json must name its model_type")
    resolved = TYPE_ALIASES.get(model_type, model_type)
    if resolved not in HANDLERS:
        archs = raw.get("architectures") or config.get("architectures") or []
        if not isinstance(archs, list):
            raise ConfigError(f"{where}: architectures is {archs!r}; expected a list of class names")
        arch = next((a for a in archs if isinstance(a, str) and a in ARCHITECTURE_TYPES), None)
        if arch is not None:
            notes.append(f"model_type {model_type!r} read as {ARCHITECTURE_TYPES[arch]!r}, from architectures {arch!r}")
            resolved = ARCHITECTURE_TYPES[arch]
    raw = _normalise(raw, model_type)

    quant = raw.get("quantization_config")
    quant_method = weights_dtype = None
    if isinstance(quant, dict):
        quant_method = str(quant.get("quant_method") or quant.get("quant_type") or "unknown")
        weights_dtype = _weights_dtype(quant, quant_method)
        if weights_dtype is None:
            notes.append(f"weights quantized with {quant_method!r}, a method kvplan does not size; weights_dtype left unset")
    mtp = raw.get("num_nextn_predict_layers") if resolved.startswith(("deepseek", "glm4_moe", "glm_moe_dsa")) else 0

    _refuse_unread_geometry(raw, resolved if resolved in HANDLERS else None, where)
    if resolved not in HANDLERS:
        c = _Cfg(raw, {}, where)
        fields = _generic(c)
        c.refuse_unread(model_type)
        fields["model_type"] = outer_type if multimodal and isinstance(outer_type, str) else model_type
        if _dtype(raw):
            fields["torch_dtype"] = _dtype(raw)
        notes.append(f"model_type {model_type!r} sized from HF's generic field names")
        weights_dtype, scope = _quantized_fields(fields, quant, quant_method, weights_dtype, notes)
        return Converted(model_type, fields, None, 0, tuple(notes), quant_method, weights_dtype, scope, multimodal)

    c = _Cfg(raw, DEFAULTS.get(resolved, {}), where)
    fields, total, inactive = HANDLERS[resolved](c)
    c.refuse_unread(model_type)
    fields["model_type"] = outer_type if multimodal and isinstance(outer_type, str) else model_type
    if _dtype(raw):
        fields["torch_dtype"] = _dtype(raw)
    notes.extend(c.notes)
    if c.defaulted:
        cls = _CONFIG_CLASSES.get(resolved) or resolved.title().replace("_", "")
        notes.append(f"transformers' {cls}Config defaults used for {', '.join(c.defaulted)} (absent from config.json)")
    weights_dtype, scope = _quantized_fields(fields, quant, quant_method, weights_dtype, notes)
    return Converted(
        resolved, fields, total, inactive, tuple(notes), quant_method, weights_dtype, scope, multimodal,
        mtp if isinstance(mtp, int) else 0,
    )


def _quantized_fields(
    fields: dict[str, Any], quant: Any, method: Optional[str], weights_dtype: Optional[str], notes: list[str]
) -> tuple[Optional[str], str]:
    """Set weights_dtype / weights_quantized (and a dtype mxfp4 implies) on `fields`; return both.

    mxfp4 quantises only MoE experts, whatever else the config lists: vLLM's Mxfp4Config
    gives FusedMoE layers Mxfp4MoEMethod and every LinearBase UnquantizedLinearMethod
    (quantization/mxfp4.py get_quant_method), and transformers' Mxfp4HfQuantizer
    quantises only Mxfp4GptOssExperts' weights, not their biases (param_needs_quantization).
    gpt-oss's modules_to_not_convert (self_attn, mlp.router, embed_tokens, lm_head)
    names the rest of the body, so it agrees. Other methods (DeepSeek-V3's block-wise
    fp8, GPTQ, AWQ) quantise every linear layer: all_linear.
    """
    scope = "all_linear"
    if weights_dtype == "mxfp4":
        experts = fields.get("num_local_experts") or fields.get("n_routed_experts")
        if not (experts and fields.get("num_experts_per_tok")):
            notes.append("mxfp4 quantises only MoE experts and config.json names none; weights_dtype left unset")
            return None, scope
        scope = "experts"
        skipped = quant.get("modules_to_not_convert") if isinstance(quant, dict) else None
        if isinstance(skipped, list) and skipped:
            notes.append(
                "MXFP4 holds only the routed experts' weights; quantization_config.modules_to_not_convert keeps "
                f"{', '.join(str(m) for m in skipped)} in torch_dtype (weights_quantized: experts)"
            )
        else:
            notes.append("MXFP4 holds only the routed experts' weights (weights_quantized: experts)")
        if "torch_dtype" not in fields:
            # Mxfp4HfQuantizer.update_dtype loads a dtype-less config in bfloat16; vLLM reads the BF16
            # tensors beside the U8 blocks (openai/gpt-oss-20b and -120b config.json name no torch_dtype).
            fields["torch_dtype"] = "bfloat16"
            notes.append("config.json names no torch_dtype; bfloat16, as transformers' MXFP4 loader and vLLM run it")
    elif weights_dtype and isinstance(quant, dict) and quant.get("modules_to_not_convert"):
        skipped = ", ".join(str(m) for m in quant["modules_to_not_convert"])
        notes.append(
            f"quantization_config.modules_to_not_convert keeps {skipped} unquantised; kvplan counts every "
            f"body weight as {weights_dtype} (weights_quantized: all_linear)"
        )
    if weights_dtype:
        fields["weights_dtype"] = weights_dtype
        if scope != "all_linear":
            fields["weights_quantized"] = scope
    return weights_dtype, scope


def _weights_dtype(quant: dict[str, Any], method: str) -> Optional[str]:
    """ModelSpec.weights_dtype for a quantization_config: fp8 (DeepSeek-V3), mxfp4 (gpt-oss),
    GPTQ / AWQ by their `bits`, bitsandbytes by load_in_4bit / load_in_8bit."""
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8"
    if method == "mxfp4":
        return "mxfp4"
    bits = quant.get("bits", quant.get("w_bit"))
    if method in ("gptq", "awq") and bits in (4, 8):
        return "int4" if bits == 4 else "int8"
    if method == "bitsandbytes":
        if quant.get("load_in_4bit"):
            return "int4"
        if quant.get("load_in_8bit"):
            return "int8"
    return None


def _normalise(raw: dict[str, Any], model_type: str) -> dict[str, Any]:
    """Old Falcon configs (RefinedWeb*) use n_layer / n_head / n_head_kv; map them as FalconConfig does."""
    if model_type not in ("RefinedWebModel", "RefinedWeb"):
        return raw
    out = dict(raw)
    for old, new in (("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("n_head_kv", "num_kv_heads")):
        if old in out and new not in out:
            out[new] = out[old]
    out.setdefault("new_decoder_architecture", model_type == "RefinedWeb")
    return out
