"""The option keys of each engine profile (flags and plan keys alike): no imports, so the CLI
can read them without loading the engines."""

from __future__ import annotations

OPTION_KEYS: dict[str, tuple[str, ...]] = {
    "hf": ("hf_cache", "max_cache_len", "generate", "transformers_version", "quant_backend", "nbits",
           "q_group_size", "residual_length"),
    "llama.cpp": ("parallel", "ctx_size", "ubatch_size", "n_batch", "swa_full", "flash_attn", "cache_type_k",
                  "cache_type_v", "kv_unified"),
    "sglang": ("mem_fraction_static", "page_size", "swa_full_tokens_ratio", "max_total_tokens"),
    "trtllm": ("tokens_per_block", "free_gpu_memory_fraction"),
}
ALL_OPTION_KEYS = tuple(k for keys in OPTION_KEYS.values() for k in keys)


def given_engine_options(values: dict) -> dict:
    """Every engine option key of `values` (a command's parameters), in OPTION_KEYS order."""
    return {k: values[k] for k in ALL_OPTION_KEYS}
