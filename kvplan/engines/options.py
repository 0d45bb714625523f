"""Engine options from keyword values: which keys each engine reads, and its own defaults.

`kvplan estimate --engine`, `kvplan compare`, `kvplan diff` and `kvplan check` plan
entries name an engine's options by its CLI flags (`--ubatch-size` on the
command line, `ubatch_size` in a plan). `engine_options` builds the engine's
option object from those values; a key left out (or None) keeps the default of
the option dataclass in the engine's module, so each default is written once,
there. Pure: no I/O; the engine modules are imported only when options are built.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Optional

# Each engine's option keys (the snake_case of its flags), in the order its --help lists them.
from kvplan.options import OPTION_KEYS, PLANNER_KEYS  # the option table's (kvplan.options.OPTIONS)

# A key whose option field is named otherwise (the flag follows the engine's own CLI).
_FIELD = {"hf_cache": "cache", "n_batch": "batch_size"}

# Profiles that run on one device (llama.cpp splits layers, not heads; transformers' tp_plan is not modelled).
SINGLE_DEVICE = ("hf", "llama.cpp")


def owner(key: str) -> Optional[str]:
    """The engine whose option `key` is (None: no engine's)."""
    return next((engine for engine, keys in OPTION_KEYS.items() if key in keys), None)


def misplaced(engine: str, keys) -> list[tuple[str, str]]:
    """(key, the engine it belongs to) for each of `keys` that is another engine's option."""
    out = []
    for key in keys:
        belongs = owner(key)
        if belongs is not None and belongs != engine:
            out.append((key, belongs))
    return out


@dataclass(frozen=True, slots=True)
class KeyProblem:
    """A setting `engine` does not take: another engine's key, a planner key, or a parallel size.

    `kind` is "engine" (the key is `owner`'s), "planner" (vllm / ideal only),
    "tp" or "pp" (`value` is the size asked for). `message` words it for a plan
    entry (keys) or for a command line (flags); both come from here, so
    `estimate`, `diff` and `check` refuse the same settings in the same words.
    """

    key: str
    kind: str
    owner: Optional[str] = None
    value: Optional[int] = None

    def message(self, engine: str, command: Optional[str] = None) -> str:
        """Plan wording (`command` None: 'only for engine hf (...)'), or a flag's ('--hf-cache is only for ...')."""
        cli = command is not None
        name = f"--{self.key.replace('_', '-')}" if cli else self.key
        eng = "--engine" if cli else "engine"
        if self.kind == "engine":
            whose = f"this {command}'s" if cli else "this deployment's"
            text = f"only for {eng} {self.owner} ({whose} engine is {engine})"
        elif self.kind == "planner":
            text = (f"only for {eng + ' vllm' if cli else 'engines vllm'} and ideal (kvplan's planner); "
                    f"{eng} {engine} has its own budget rule")
        elif self.kind == "tp":
            text = f"kvplan's {engine} profile is for one device; use {name} 1"
        else:
            text = f"kvplan's {engine} profile models one pipeline stage; use {name} 1"
        if not cli:
            return text
        return f"{name} {self.value}: {text}" if self.kind in ("tp", "pp") else f"{name} is {text}"


def key_problems(engine: str, keys: Iterable[str], *, tp: int = 1, pp: int = 1) -> list[KeyProblem]:
    """Every key of `keys` (given settings, snake_case) that `engine` does not read, then tp / pp it cannot take.

    Another engine's option is an error under any engine (vllm and ideal read
    none); the planner's keys are errors under a profile; a profile models one
    pipeline stage, and hf and llama.cpp one device.
    """
    keys = list(keys)
    out = [KeyProblem(k, "engine", owner) for k, owner in misplaced(engine, keys)]
    if engine in OPTION_KEYS and engine != "vllm":
        out += [KeyProblem(k, "planner") for k in keys if k in PLANNER_KEYS]
        if tp > 1 and engine in SINGLE_DEVICE:
            out.append(KeyProblem("tp", "tp", value=tp))
        if pp > 1:
            out.append(KeyProblem("pp", "pp", value=pp))
    return out


def check_flags(engine: str, given: Iterable[str], *, tp: int = 1, pp: int = 1, command: str) -> None:
    """Raise InputError for the first flag `engine` does not take (`kvplan estimate` and `kvplan diff`)."""
    from kvplan.errors import InputError

    for problem in key_problems(engine, given, tp=tp, pp=pp):
        raise InputError(problem.message(engine, command))


def engine_options(engine: str, kv_cache_dtype: str = "auto", values: Optional[Mapping[str, Any]] = None, *,
                   tp: int = 1, pp: int = 1, prompt_tokens: Optional[int] = None):
    """`engine`'s option object (IdealOptions, VllmOptions, HFOptions, LlamaCppOptions, SGLangOptions, TrtllmOptions).

    `values` maps option keys to values; keys of other engines are skipped (compare
    passes every flag to every engine) and None keeps the engine's default.
    llama.cpp's -ctk / -ctv default to `kv_cache_dtype` as llama.cpp names it
    (auto -> f16); `prompt_tokens` is hf's prefill size for a quantized cache;
    `tp` is the tensor-parallel size of ideal, vllm, SGLang and TensorRT-LLM;
    ideal and vllm read the planner's keys (`block_size`, `gpu_memory_utilization`,
    `max_num_batched_tokens`) from `values` and `pp`.
    """
    import importlib

    from kvplan.engines import hf, llamacpp, sglang, trtllm
    from kvplan.engines.compare import llamacpp_types

    if engine in ("ideal", "vllm"):  # the planner's keys (block_size, gpu_memory_utilization, ...) and the sizes
        module = importlib.import_module(f"kvplan.engines.{engine}")
        cls = module.IdealOptions if engine == "ideal" else module.VllmOptions
        planned = {k: v for k, v in (values or {}).items() if k in PLANNER_KEYS and v is not None}
        if engine == "vllm":
            planned["rules"] = vllm_rules(values)
        return replace(cls(), tp=tp, pp=pp, **planned)
    given = {_FIELD.get(k, k): v for k, v in (values or {}).items() if k in OPTION_KEYS[engine] and v is not None}
    if engine == "hf":
        if "transformers_version" in given:  # a YAML 4 or a flag "4"
            given["transformers_version"] = str(given["transformers_version"])
        if prompt_tokens is not None:
            given["prompt_tokens"] = prompt_tokens
        return replace(hf.HFOptions(), **given)
    if engine == "llama.cpp":
        k_default, v_default = llamacpp_types(kv_cache_dtype)
        given["cache_type_k"] = llamacpp.cache_type(given["cache_type_k"]) if "cache_type_k" in given else k_default
        given["cache_type_v"] = llamacpp.cache_type(given["cache_type_v"]) if "cache_type_v" in given else v_default
        return replace(llamacpp.LlamaCppOptions(), **given)
    if engine == "sglang":
        return replace(sglang.SGLangOptions(), tp=tp, **given)
    if engine == "trtllm":
        return replace(trtllm.TrtllmOptions(), tp=tp, **given)
    raise ValueError(f"no engine profile {engine!r}; one of {', '.join(OPTION_KEYS)}")


def vllm_rules(values: Optional[Mapping[str, Any]] = None):
    """vLLM's version and the flags of its own that move the pool (`kvplan.engines.vllm_rules.VllmRules`), from
    option keys; a value vLLM does not accept is refused in its terms (InputError naming the flag)."""
    from kvplan.engines.vllm_rules import MAMBA_CACHE_MODES, VLLM_DEVICES, VLLM_VERSIONS, VllmRules
    from kvplan.errors import InputError

    given = {k: v for k, v in (values or {}).items() if k in OPTION_KEYS["vllm"] and v is not None}
    version = str(given.pop("vllm_version", VLLM_VERSIONS[0]))
    if version not in VLLM_VERSIONS:
        raise InputError(f"--vllm-version {version!r}: kvplan has vLLM's rules for {', '.join(VLLM_VERSIONS)}")
    device = str(given.pop("vllm_device", "cuda")).lower()
    if device not in VLLM_DEVICES:
        raise InputError(f"--device {device!r}: one of {', '.join(VLLM_DEVICES)} (vLLM's CUDA or CPU platform)")
    mode = given.get("mamba_cache_mode")
    if mode is not None:
        if version == "0.10":
            raise InputError("--mamba-cache-mode is a flag of vLLM 0.32 (vLLM 0.10 has one Mamba cache mode); "
                             "drop it or use --vllm-version 0.32")
        if mode not in MAMBA_CACHE_MODES:
            choices = ", ".join(f"'{c}'" for c in MAMBA_CACHE_MODES)
            raise InputError(f"argument --mamba-cache-mode: invalid choice: '{mode}' (choose from {choices})")
    for key, flag in (("num_gpu_blocks_override", "--num-gpu-blocks-override"),
                      ("kv_cache_memory_bytes", "--kv-cache-memory-bytes"), ("max_model_len", "--max-model-len")):
        if isinstance(given.get(key), str):  # a flag's or a plan's text ("4GiB", "32k"), as the API may pass it
            from kvplan.options import parse_option

            given[key] = parse_option(key, given[key])
        if key in given and given[key] < 1:
            raise InputError(f"{flag} must be at least 1, got {given[key]}")
    if version == "0.10":
        later = [f for k, f in (("kv_cache_memory_bytes", "--kv-cache-memory-bytes"),
                                ("num_gpu_blocks_override", "--num-gpu-blocks-override"),
                                ("max_model_len", "--max-model-len"),
                                ("disable_hybrid_kv_cache_manager", "--disable-hybrid-kv-cache-manager"))
                 if k in given and given[k] not in (False, "cuda")]
        if device != "cuda":
            later.insert(0, "--device")
        if later:
            raise InputError(f"{later[0]}: kvplan models it under --vllm-version 0.32 only (0.10 keeps the rules as "
                             "transcribed then); use --vllm-version 0.32")
    return VllmRules(version=version, device=device, **given)
