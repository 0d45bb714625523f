"""`estimate ... --emit vllm|sglang|llama.cpp`: the engine's command line that realises the plan.

`emit(engine, spec, model, settings)` turns a plan's settings (option keys of `kvplan.options`,
values as the pipeline reads them) into that engine's launch command, one flag per setting the
plan fixes, in the engine's own spelling, each word shell-quoted. A setting at the engine's own
default is left out (vLLM's `--tensor-parallel-size 1`); a setting that describes the machine or
the workload rather than the engine (`--gpu`, `--usd-per-hour`, `--prompt-tokens`, ...) has no flag
(`NOT_ENGINE_SETTINGS`); anything else the engine's table does not translate is refused, named.

Each engine's translation is a table keyed by option name (`VLLM`, `SGLANG`, `LLAMA_SERVER`): adding
an option is one entry. Pure: no I/O.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from kvplan.errors import InputError

EMIT_ENGINES = ("vllm", "sglang", "llama.cpp")

# Settings that describe the machine, the workload or kvplan's own model of them: no engine has a flag for them,
# so they are not emitted (and not refused): the command realises the engine's side of the plan.
NOT_ENGINE_SETTINGS = frozenset({
    "gpu", "gpu_memory", "gpu_bandwidth", "usd_per_hour", "gpu_bf16_tflops",  # the device, as kvplan prices it
    "activation_memory", "non_torch_memory", "weights_bytes",  # what the engine will measure, given to kvplan
    "bandwidth_efficiency", "compute_efficiency", "calibration",  # kvplan's roofline
    "prompt_tokens", "output_tokens", "requests_per_s",  # the workload the requests bring
    "shared_prefix_tokens",  # the prompts' shared prefix: reused by the engines' prefix caching, on by default
    "engine",
    "cuda_total_memory",  # the total the device reports (kvplan's budget term), not an engine flag
})

Words = list
Rule = Callable[[Any, "Context"], Words]


class Context:
    """What a rule may read besides its own value: the spec and every setting of the plan."""

    def __init__(self, spec, settings: Mapping[str, Any]):
        self.spec, self.settings = spec, settings


def _flag(name: str, skip: Any = None) -> Rule:
    """`name value`, left out when the value is `skip` (the engine's own default)."""
    return lambda value, ctx: [] if value == skip else [name, str(value)]


def _always(name: str) -> Rule:
    return lambda value, ctx: [name, str(value)]


def _switch(name: str) -> Rule:
    return lambda value, ctx: [name] if value else []


# ------------------------------------------------------------------ vLLM (vllm serve, 0.32 argument names)

# kvplan's weight dtypes that are vLLM's --dtype (ModelDType, vllm/config/model.py: auto, half, float16, bfloat16,
# float, float32); the quantised ones come from the checkpoint or --quantization, not --dtype
_VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# vLLM's MambaDType (vllm/config/cache.py: auto, float32, float16, bfloat16)
_VLLM_STATE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _vllm_kv(value: str, ctx: Context) -> Words:
    """--kv-cache-dtype: vLLM's own names (CacheDType, vllm/config/cache.py); the model's dtype is "auto"."""
    from kvplan.engines.vllm_rules import VLLM_KV_DTYPES, kv_cache_dtype_refusal

    name = value.strip().lower()
    refusal = kv_cache_dtype_refusal(ctx.spec, value)
    if refusal:
        raise InputError(f"--emit vllm: vLLM would refuse --kv-cache-dtype {value}: {refusal}")
    if name in ("auto", ctx.spec.dtype) or _VLLM_DTYPES.get(name) == _VLLM_DTYPES.get(ctx.spec.dtype):
        return []
    if name in VLLM_KV_DTYPES:
        return ["--kv-cache-dtype", name]
    if name in ("bf16", "bfloat16", "fp16", "float16", "half"):  # a 16-bit cache other than the model's dtype
        return ["--kv-cache-dtype", "bfloat16" if name.startswith("b") else "float16"]
    raise InputError(f"--emit vllm: vLLM has no --kv-cache-dtype for {value} (a {ctx.spec.dtype} model's cache is "
                     "auto, float16, bfloat16 or an fp8 format)")


def _vllm_dtype(value: str, ctx: Context) -> Words:
    if value not in _VLLM_DTYPES:
        raise InputError(f"--emit vllm: --dtype {value} sizes quantised weights; vLLM takes them from a quantised "
                         "checkpoint or --quantization, which kvplan cannot choose: emit without --dtype")
    return [] if value == ctx.spec.dtype else ["--dtype", _VLLM_DTYPES[value]]


def _vllm_state(value: str, ctx: Context) -> Words:
    """--state-dtype conv[/ssm] as --mamba-cache-dtype (both states) and --mamba-ssm-cache-dtype (the SSM state)."""
    parts = [p.strip().lower() for p in value.split("/")]
    names = [_VLLM_STATE.get(p) for p in parts]
    if None in names:
        raise InputError(f"--emit vllm: --state-dtype {value}: vLLM's Mamba state dtypes are float32, float16 and "
                         "bfloat16 (--mamba-cache-dtype, --mamba-ssm-cache-dtype)")
    words = ["--mamba-cache-dtype", names[0]]
    return words + (["--mamba-ssm-cache-dtype", names[-1]] if names[-1] != names[0] else [])


def _vllm_utilization(value: float, ctx: Context) -> Words:
    """--gpu-memory-utilization, left out at the default of the vLLM release the plan follows (0.32: 0.92), which
    `vllm serve` then takes itself (vllm_rules.GPU_MEMORY_UTILIZATION)."""
    from kvplan.engines.vllm_rules import VllmRules

    version = ctx.settings.get("vllm_version")
    default = (VllmRules(version=str(version)) if version else VllmRules()).default_gpu_memory_utilization
    return [] if value == default else ["--gpu-memory-utilization", str(value)]


VLLM: dict[str, Rule] = {
    "context": _always("--max-model-len"),  # the context the plan sizes (vLLM's default: the model's whole length)
    # the sequences the plan runs at once (1: vLLM's own default stays), unless --max-num-seqs says it
    # under --data-parallel-size each instance's scheduler runs its own ⌈batch / dp⌉ (max_num_seqs is per instance)
    "batch": lambda value, ctx: [] if value == 1 or ctx.settings.get("max_num_seqs") is not None
    else ["--max-num-seqs", str(-(-value // (ctx.settings.get("dp") or 1)))],
    "max_num_seqs": _always("--max-num-seqs"),
    "gpu_memory_utilization": _vllm_utilization,
    "kv_cache_dtype": _vllm_kv,
    "tp": _flag("--tensor-parallel-size", 1),
    "pp": _flag("--pipeline-parallel-size", 1),
    "dp": _flag("--data-parallel-size", 1),
    "expert_parallel": lambda value, ctx: ["--enable-expert-parallel"] if value else [],
    "block_size": _always("--block-size"),
    "max_num_batched_tokens": _always("--max-num-batched-tokens"),
    "dtype": _vllm_dtype,
    "state_dtype": _vllm_state,
    # vLLM's own flags kvplan's vllm rules read (kvplan.options' "vllm" options), in vLLM's spelling
    "kv_cache_memory_bytes": _always("--kv-cache-memory-bytes"),
    "enable_prefix_caching": lambda value, ctx: ["--enable-prefix-caching" if value else "--no-enable-prefix-caching"],
    "mamba_cache_mode": _always("--mamba-cache-mode"),
    "num_gpu_blocks_override": _always("--num-gpu-blocks-override"),
    "disable_hybrid_kv_cache_manager": _switch("--disable-hybrid-kv-cache-manager"),
    # the release and the platform are the installed vLLM's, not flags: kvplan's rules follow them
    "vllm_version": lambda value, ctx: [], "vllm_device": lambda value, ctx: [],
}


# ------------------------------------------------------------------ SGLang (python -m sglang.launch_server)


def _sglang_kv(value: str, ctx: Context) -> Words:
    from kvplan.engines.sglang import kv_dtype

    name, refusal = kv_dtype(ctx.spec, value)
    if refusal:
        raise InputError(f"--emit sglang: SGLang would refuse --kv-cache-dtype {value}: {refusal}")
    return [] if name == "auto" else ["--kv-cache-dtype", name]


def _sglang_dtype(value: str, ctx: Context) -> Words:
    if value not in _VLLM_DTYPES:  # SGLang's --dtype takes the same names as vLLM's
        raise InputError(f"--emit sglang: --dtype {value} sizes quantised weights; SGLang takes them from a "
                         "quantised checkpoint or --quantization, which kvplan cannot choose: emit without --dtype")
    return [] if value == ctx.spec.dtype else ["--dtype", _VLLM_DTYPES[value]]


SGLANG: dict[str, Rule] = {
    "context": _always("--context-length"),
    "batch": _flag("--max-running-requests", 1),
    "mem_fraction_static": _always("--mem-fraction-static"),
    "kv_cache_dtype": _sglang_kv,
    "tp": _flag("--tp-size", 1),
    "page_size": _always("--page-size"),
    "swa_full_tokens_ratio": _always("--swa-full-tokens-ratio"),
    "max_total_tokens": _always("--max-total-tokens"),
    "dtype": _sglang_dtype,
    "pp": _flag("--pp-size", 1),  # refused before: kvplan's SGLang profile models one pipeline stage
}


# ------------------------------------------------------------------ llama.cpp (llama-server)


def _llama_slots(ctx: Context) -> int:
    return ctx.settings.get("parallel") or ctx.settings.get("batch") or 1


def _llama_ctx(value: int, ctx: Context) -> Words:
    """-c is the cells of all slots together (llama-context.cpp: n_ctx_seq = n_ctx / n_seq_max when not unified):
    --ctx-size as given, else the plan's context x its slots."""
    cells = ctx.settings.get("ctx_size") or value * _llama_slots(ctx)
    return ["-c", str(cells)]


def _llama_kv(value: str, ctx: Context) -> Words:
    """-ctk / -ctv from --cache-type-k / -v, else --kv-cache-dtype as llama.cpp names it (auto: f16, its default)."""
    from kvplan.engines import llamacpp
    from kvplan.engines.compare import llamacpp_types

    k_default, v_default = llamacpp_types(value)
    k = llamacpp.cache_type(ctx.settings.get("cache_type_k") or k_default)
    v = llamacpp.cache_type(ctx.settings.get("cache_type_v") or v_default)
    for flag, name in (("-ctk", k), ("-ctv", v)):
        if name not in llamacpp.CACHE_TYPES:
            raise InputError(f"--emit llama.cpp: llama.cpp has no {flag} {name} (one of "
                             f"{', '.join(llamacpp.CACHE_TYPES)})")
    return (["-ctk", k] if k != "f16" else []) + (["-ctv", v] if v != "f16" else [])


LLAMA_SERVER: dict[str, Rule] = {
    "context": _llama_ctx,
    # always: llama-server's own default is "auto" (4 slots sharing one unified pool, tools/server/server.cpp)
    "batch": lambda value, ctx: ["--parallel", str(_llama_slots(ctx))],
    "kv_cache_dtype": _llama_kv,
    "flash_attn": _flag("--flash-attn", "auto"),
    "ubatch_size": _flag("-ub", 512),
    "n_batch": _flag("-b", 2048),
    "swa_full": _switch("--swa-full"),
    "kv_unified": _switch("--kv-unified"),
    # read by the rules above (-c, --parallel, -ctk / -ctv)
    "parallel": lambda value, ctx: [], "ctx_size": lambda value, ctx: [],
    "cache_type_k": lambda value, ctx: [], "cache_type_v": lambda value, ctx: [],
    # refused before (kvplan.engines.options.check_flags): kvplan's llama.cpp profile is one device, one stage
    "tp": _flag("--tensor-parallel-size", 1), "pp": _flag("--pipeline-parallel-size", 1),
}

TABLES: dict[str, dict[str, Rule]] = {"vllm": VLLM, "sglang": SGLANG, "llama.cpp": LLAMA_SERVER}
_FLAG_NAMES = {"tp": "--tensor-parallel-size", "pp": "--pipeline-parallel-size", "context": "--context",
               "batch": "--batch", "dp": "--data-parallel-size", "expert_parallel": "--expert-parallel"}


def checkpoint(model: str, spec, engine: str) -> str:
    """What the engine loads: a path as given (a config.json: its folder), a hub id as given, a catalog name or
    spec YAML by the hub id of its source; llama-server loads a GGUF file only."""
    path = Path(model).expanduser()
    if engine == "llama.cpp":
        if path.suffix.lower() == ".gguf":
            return model
        raise InputError(f"--emit llama.cpp: llama-server loads a GGUF file (-m FILE.gguf); {model!r} is not one: "
                         "pass the .gguf as MODEL")
    if path.exists():
        return str(path.parent) if path.is_file() and path.name == "config.json" else model
    if path.suffix.lower() in (".yaml", ".yml") or "/" not in model:  # a spec: the checkpoint its source names
        import re

        m = re.search(r"https://huggingface\.co/([\w.-]+/[\w.-]+)", getattr(spec, "source", "") or "")
        if m:
            return m.group(1)
        raise InputError(f"--emit {engine}: {model!r} names no checkpoint kvplan can give {engine} (its source is no "
                         "Hugging Face URL): pass the model folder or hub id as MODEL")
    return model  # org/name: a hub id


def emit(engine: str, spec, model: str, settings: Mapping[str, Any]) -> str:
    """The launch command of `engine` that realises `settings` (option key -> value; None: not given)."""
    if engine not in TABLES:
        raise InputError(f"--emit {engine!r} is not one of {', '.join(EMIT_ENGINES)}")
    table = TABLES[engine]
    ctx = Context(spec, settings)
    head = {"vllm": ["vllm", "serve", checkpoint(model, spec, engine)],
            "sglang": ["python", "-m", "sglang.launch_server", "--model-path", checkpoint(model, spec, engine)],
            "llama.cpp": ["llama-server", "-m", checkpoint(model, spec, engine)]}[engine]
    words: list[str] = []
    for key, value in settings.items():
        if value is None or key in NOT_ENGINE_SETTINGS:
            continue
        rule = table.get(key)
        if rule is None:
            flag = _FLAG_NAMES.get(key, f"--{key.replace('_', '-')}")
            raise InputError(f"--emit {engine}: {flag} has no {_ENGINE_NAME[engine]} flag kvplan can write; "
                             "drop it or emit for the engine that reads it")
        words += rule(value, ctx)
    if engine == "llama.cpp":
        # every layer on the GPU, as kvplan sizes the plan (-ngl takes a count; 999 is above any model's layers)
        words += ["-ngl", "999"]
    return " ".join(shlex.quote(w) for w in head + words)


_ENGINE_NAME = {"vllm": "vLLM", "sglang": "SGLang", "llama.cpp": "llama-server"}


def plan_settings(*, context: int, batch: int, kv_cache_dtype: str, tp: int, pp: int, block_size: Optional[int],
                  state_dtype: Optional[str], dtype: Optional[str], gpu_memory_utilization: Optional[float],
                  max_num_batched_tokens: Optional[int], engine_options: Mapping[str, Any],
                  others: Mapping[str, Any], max_num_seqs: Optional[int] = None) -> dict:
    """The settings `emit` reads, in the order the command shows them (`others`: the machine and workload flags)."""
    return {"context": context, "batch": batch, "gpu_memory_utilization": gpu_memory_utilization,
            "kv_cache_dtype": kv_cache_dtype, "tp": tp, "pp": pp, "block_size": block_size,
            "max_num_batched_tokens": max_num_batched_tokens, "max_num_seqs": max_num_seqs, "dtype": dtype,
            "state_dtype": state_dtype, **{k: v for k, v in engine_options.items() if v is not None}, **others}
