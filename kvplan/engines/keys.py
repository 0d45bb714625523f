"""The engines kvplan models and each engine's option keys (flags and plan keys alike): no imports,
so the CLI can read them without loading the engines."""

from __future__ import annotations

# Every engine, in the order `kvplan compare` shows them: the one registry of engine names
# (`kvplan.engines.get(name)` gives the module). ideal and vllm are sized by kvplan's planner
# (kvplan.plan.planner); the others have their own budget rules in their modules.
NAMES: tuple[str, ...] = ("ideal", "vllm", "hf", "llama.cpp", "sglang", "trtllm")
PLANNED: tuple[str, ...] = ("ideal", "vllm")
PROFILES: tuple[str, ...] = tuple(n for n in NAMES if n not in PLANNED)
# The same names as --engine and a plan's `engine:` list them (vllm, the default, first).
CHOICES: tuple[str, ...] = ("vllm", "ideal") + PROFILES

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
