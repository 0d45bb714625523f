"""Reading a vLLM start-up log: the engine's config, its memory budget terms and its KV pool, as it printed them.

Pure: `parse_vllm_log(text)` takes the log's text and returns a frozen `VllmLog`; the
CLI reads the file (`kvplan explain`). Every figure is the one vLLM printed (GiB to two
decimals, token counts exact), with the line it came from; nothing is derived here
except where a version printed a sum (noted on the field).

The formats, by the vLLM release that prints them (each read from that release's source
or from a published log quoted in tests/fixtures/vllm_logs/SOURCES.md):

- engine config, every release: `Initializing an LLM engine (v0.6.3) with config: model='...',
  ... dtype=torch.bfloat16, max_seq_len=N, ... tensor_parallel_size=N, pipeline_parallel_size=N,
  ... kv_cache_dtype=auto, ... device_config=cuda, ... enable_prefix_caching=False, ...`
  ("a V0 LLM engine" / "a V1 LLM engine" from 0.7.x; v1/engine/core.py at 0.32). The block size
  is not on it: it comes from the `non-default args: {...}` line (0.8+) when the user set it.
- weights: `Loading model weights took 14.9888 GB` (<= 0.7; the figure is GiB, model_memory_usage /
  2**30, printed "GB"), `Model loading took 14.99 GiB and 4.5 seconds` (0.8-0.10), `... GiB memory and
  ... seconds` (0.11+, v1/worker/gpu_model_runner.py at 0.32).
- budget, V0 worker (vllm/worker/worker.py):
  0.6.0-0.6.4 one line `Memory profiling results: total_gpu_memory=23.58GiB initial_memory_usage=...
  peak_torch_memory=17.06GiB memory_usage_post_profile=... non_torch_memory=0.35GiB kv_cache_size=3.81GiB
  gpu_memory_utilization=0.90` (peak_torch_memory holds the weights: activation = peak - weights);
  0.6.5 a table (`total_gpu_memory  79.22GiB`, `model weights take  14.96GiB`, `non_torch_memory  1.79GiB`,
  `PyTorch activation peak memory  1.26GiB`, `available_kv_cache_memory  53.29GiB`);
  0.7-0.10 `the current vLLM instance can use total_gpu_memory (23.67GiB) x gpu_memory_utilization (0.90) =
  21.30GiB` and `model weights take 15.51GiB; non_torch_memory takes 0.28GiB; PyTorch activation peak memory
  takes 1.16GiB; the rest of the memory reserved for KV Cache is 4.36GiB.`
- budget, V1 worker (v1/worker/gpu_worker.py): `Available KV cache memory: 6.51 GiB`; from ~0.11 also
  `Free memory on device (F/T GiB) on startup. Desired GPU memory utilization is (U, R GiB). Actual usage is
  C GiB for consumed memory (weights + non-torch), A GiB for peak activation, and G GiB for CUDAGraph memory.
  ...` (0.32: compile_or_warm_up_model); on the CPU backend `Explicitly set (1.0/23.54) GiB for KV cache on
  node 0.` or `Auto set (K/T) GiB for KV cache ...` (v1/worker/cpu_worker.py determine_available_memory).
- CUDA graphs: `Graph capturing finished in 20 secs, took 0.53 GiB` (0.7+), `CUDA graph pool memory: X GiB
  (actual), ...` (0.2x).
- pool: `# GPU blocks: N, # CPU blocks: M` / `# cuda blocks: N, ...` (V0 executors), `# GPU blocks: N` (V1 <= 0.7.3),
  `GPU KV cache size: 2,042,016 tokens` (V1 0.7.3+), `Maximum concurrency for 2,048 tokens per request: 997.08x`
  (every release; joined to the size line as one line from ~0.2x: v1/core/kv_cache_utils.py
  update_kv_cache_capacity at 0.32, whose device word is GPU, CPU, XPU ...).
- refusals: `The model's max seq len (N) is larger than the maximum number of tokens that can be stored in KV
  cache (M)` (V0), `To serve at least one request with the models's max seq len (N), (X GiB KV cache is needed,
  ...` (V1).

With tensor or pipeline parallelism every worker logs its own lines; the first of each is kept (the
`(VllmWorkerProcess pid=...)` prefix is not read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Optional

from kvplan.errors import InputError

GIB = 2**30


@dataclass(frozen=True, slots=True)
class VllmLog:
    """What one vLLM start-up log says. None: the log does not say it. GiB figures as printed (two decimals)."""

    version: Optional[str] = None  # "0.32.0", from the engine config line
    engine: Optional[str] = None  # "V0" or "V1" where the config line names it
    device: Optional[str] = None  # "cuda", "cpu", ... (device_config=, or the KV size line's device word)
    model: Optional[str] = None  # model='...' as the config line (or non-default args) quotes it
    dtype: Optional[str] = None  # "bfloat16" (torch.bfloat16 on the config line)
    max_model_len: Optional[int] = None  # max_seq_len= on the config line
    tensor_parallel_size: Optional[int] = None
    pipeline_parallel_size: Optional[int] = None
    kv_cache_dtype: Optional[str] = None
    block_size: Optional[int] = None  # only where the user set it (non-default args)
    enable_prefix_caching: Optional[bool] = None
    max_num_seqs: Optional[int] = None  # non-default args
    max_num_batched_tokens: Optional[int] = None  # "Chunked prefill is enabled with max_num_batched_tokens=N"
    gpu_memory_utilization: Optional[float] = None
    total_memory_gib: Optional[float] = None  # the device total vLLM budgets from (torch's, not NVML's)
    requested_gib: Optional[float] = None  # total x utilisation, where printed
    weights_gib: Optional[float] = None
    activation_gib: Optional[float] = None  # the peak it reserves for activations
    non_torch_gib: Optional[float] = None
    consumed_gib: Optional[float] = None  # weights + non-torch, as 0.2x prints them together
    peak_torch_gib: Optional[float] = None  # 0.6.0-0.6.4: weights + activation peak
    cuda_graph_gib: Optional[float] = None
    available_kv_gib: Optional[float] = None  # the KV budget per worker
    kv_cache_tokens: Optional[int] = None  # "GPU KV cache size: N tokens"
    num_blocks: Optional[int] = None  # "# GPU blocks: N" (releases that print blocks)
    max_concurrency: Optional[float] = None
    concurrency_tokens: Optional[int] = None  # the "for N tokens per request" of the concurrency line
    refusal: Optional[str] = None  # vLLM's start-up refusal, in its words
    ssm_cache_dtype: Optional[str] = None  # "Reset SSM cache type to float32 ..." (the CPU platform, 0.32 cpu.py)
    lines: dict = field(default_factory=dict)  # field name -> 1-based line number it was read from

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def said_anything(self) -> bool:
        return bool(self.lines)


_NUM = r"(-?[\d.]+)"
_INT = r"([\d,]+)"

# (field(s), pattern): each pattern's groups fill its fields in order; the first line that matches wins.
_LINE_RULES: tuple[tuple[tuple[str, ...], re.Pattern], ...] = tuple(
    (names, re.compile(pattern))
    for names, pattern in (
        (("weights_gib",), r"Loading model weights took ([\d.]+) GB"),
        (("weights_gib",), r"Model loading took ([\d.]+) Gi?B"),
        # 0.6.0-0.6.4, one line
        (("total_memory_gib",), r"Memory profiling results: total_gpu_memory=([\d.]+)GiB"),
        (("peak_torch_gib",), r"Memory profiling results: .*\bpeak_torch_memory=([\d.]+)GiB"),
        (("non_torch_gib",), r"Memory profiling results: .*\bnon_torch_memory=" + _NUM + "GiB"),
        (("available_kv_gib",), r"Memory profiling results: .*\bkv_cache_size=" + _NUM + "GiB"),
        (("gpu_memory_utilization",), r"Memory profiling results: .*\bgpu_memory_utilization=([\d.]+)"),
        # 0.6.5, a table of one term a line
        (("total_memory_gib",), r"\btotal_gpu_memory\s+([\d.]+)GiB"),
        (("gpu_memory_utilization",), r"\bgpu_memory_utilization\s+([\d.]+)\s*$"),
        (("requested_gib",), r"the current vLLM instance can use\s+([\d.]+)GiB"),
        (("weights_gib",), r"\bmodel weights take\s+([\d.]+)GiB\s*$"),
        (("non_torch_gib",), r"\bnon_torch_memory\s+" + _NUM + r"GiB\s*$"),
        (("activation_gib",), r"PyTorch activation peak memory\s+" + _NUM + r"GiB\s*$"),
        (("available_kv_gib",), r"\bavailable_kv_cache_memory\s+" + _NUM + "GiB"),
        # 0.7-0.10 V0 worker (and V1's debug line)
        (("total_memory_gib", "gpu_memory_utilization", "requested_gib"),
         r"total_gpu_memory \(([\d.]+)GiB\) x gpu_memory_utilization \(([\d.]+)\) = ([\d.]+)GiB"),
        (("weights_gib", "non_torch_gib", "activation_gib", "available_kv_gib"),
         r"model weights take ([\d.]+)GiB; non_torch_memory takes " + _NUM + r"GiB; PyTorch activation peak "
         r"memory takes " + _NUM + r"GiB; the rest of the memory reserved for KV Cache is " + _NUM + "GiB"),
        # V1
        (("available_kv_gib",), r"Available KV cache memory: " + _NUM + " GiB"),
        (("total_memory_gib",), r"Free memory on device (?:\S+ )?\([\d.]+/([\d.]+) GiB\) on startup\. Desired"),
        (("gpu_memory_utilization", "requested_gib"), r"Desired GPU memory utilization is \(([\d.]+), ([\d.]+) GiB\)"),
        (("consumed_gib", "activation_gib", "cuda_graph_gib"),
         r"Actual usage is ([\d.]+) GiB for consumed memory \(weights \+ non-torch\), " + _NUM + r" GiB for peak "
         r"activation, and ([\d.]+) GiB for CUDAGraph memory"),
        (("available_kv_gib", "total_memory_gib"), r"(?:Explicitly|Auto) set \(([\d.]+)/([\d.]+)\) GiB for KV cache"),
        (("cuda_graph_gib",), r"CUDA graph pool memory: ([\d.]+) GiB \(actual\)"),
        (("cuda_graph_gib",), r"Graph capturing finished in [\d.]+ secs?, took ([\d.]+) GiB"),
        # the pool
        (("num_blocks",), r"#?\s*(?:GPU|cuda) blocks: (\d+)"),
        (("device", "kv_cache_tokens"), r"\b([A-Z]+)(?: \+ host)? KV cache size: " + _INT + " tokens"),
        (("concurrency_tokens", "max_concurrency"),
         r"Maximum concurrency for " + _INT + r" tokens per request: ([\d.]+)x"),
        (("ssm_cache_dtype",), r"Reset SSM cache type to (\w+)"),
        (("max_num_batched_tokens",), r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)"),
        (("refusal",), r"(The model's max seq len \(\d+\) is larger than the maximum number of tokens that can be "
                       r"stored in KV cache \(\d+\)\..*)$"),
        # "models's" to 0.2x, "model's" in 0.32 (v1/core/kv_cache_utils.py check_enough_kv_cache_memory)
        (("refusal",), r"(To serve at least one request with the models?'s max seq len \(\d+\).*)$"),
        (("refusal",), r"(No available memory for the cache blocks\..*)$"),
    )
)

_CONFIG = re.compile(r"Initializing an? (?:(V[01]) )?LLM engine \(v([^)]*)\) with config: (.*)$")
_NON_DEFAULT = re.compile(r"non-default args: (\{.*\})\s*$")
# key=value pairs of the config line: model='...' (quoted) or a bare word up to the next comma
_CONFIG_KEYS = {
    "model": ("model", "str"), "dtype": ("dtype", "dtype"), "max_seq_len": ("max_model_len", "int"),
    "tensor_parallel_size": ("tensor_parallel_size", "int"), "pipeline_parallel_size": ("pipeline_parallel_size", "int"),
    "kv_cache_dtype": ("kv_cache_dtype", "str"), "device_config": ("device", "str"),
    "enable_prefix_caching": ("enable_prefix_caching", "bool"),
}
# 'key': value in the non-default args dict (its repr: strings quoted, numbers and booleans bare)
_ARG_KEYS = {
    "model": ("model", "str"), "dtype": ("dtype", "dtype"), "max_model_len": ("max_model_len", "int"),
    "tensor_parallel_size": ("tensor_parallel_size", "int"), "pipeline_parallel_size": ("pipeline_parallel_size", "int"),
    "kv_cache_dtype": ("kv_cache_dtype", "str"), "block_size": ("block_size", "int"),
    "enable_prefix_caching": ("enable_prefix_caching", "bool"), "gpu_memory_utilization": ("gpu_memory_utilization", "float"),
    "max_num_seqs": ("max_num_seqs", "int"), "max_num_batched_tokens": ("max_num_batched_tokens", "int"),
}
_FLOATS = {"gpu_memory_utilization", "max_concurrency"} | {f.name for f in fields(VllmLog) if f.name.endswith("_gib")}
_INTS = {"kv_cache_tokens", "num_blocks", "concurrency_tokens", "max_num_batched_tokens"}


def _value(text: str, kind: str):
    text = text.strip().strip("'\"")
    if kind == "int":
        return int(text.replace(",", ""))
    if kind == "float":
        return float(text)
    if kind == "bool":
        return text == "True"
    if kind == "dtype":
        return text.removeprefix("torch.")
    return text


def _pairs(text: str, keys: dict, sep: str) -> dict:
    """The values of `keys` in a config line (`key=value, `) or an args dict (`'key': value, `)."""
    out = {}
    for key, (name, kind) in keys.items():
        quoted = f"'{key}'" if sep == ":" else key
        m = re.search(rf"(?:^|[\s,{{(]){re.escape(quoted)}\s*{sep}\s*('[^']*'|\"[^\"]*\"|[^,}})]*)", text)
        if m and m.group(1).strip() not in ("None", ""):
            try:
                out[name] = _value(m.group(1), kind)
            except ValueError:
                continue
    return out


def parse_vllm_log(text: str) -> VllmLog:
    """Every start-up figure of a vLLM log (see the module docstring for the formats); the first of each wins."""
    found: dict = {}
    lines: dict = {}

    def take(name: str, value, number: int) -> None:
        if name not in found and value is not None:
            found[name] = value
            lines[name] = number

    for number, line in enumerate(text.splitlines(), 1):
        m = _CONFIG.search(line)
        if m:
            take("engine", m.group(1) or "V0", number)
            take("version", m.group(2), number)
            for name, value in _pairs(m.group(3), _CONFIG_KEYS, "=").items():
                take(name, value, number)
            continue
        m = _NON_DEFAULT.search(line)
        if m:
            for name, value in _pairs(m.group(1), _ARG_KEYS, ":").items():
                take(name, value, number)
            continue
        for names, pattern in _LINE_RULES:
            m = pattern.search(line)
            if not m:
                continue
            for name, raw in zip(names, m.groups()):
                if name in _FLOATS:
                    value = float(raw)
                elif name in _INTS:
                    value = int(raw.replace(",", ""))
                elif name == "device":
                    value = raw.lower().replace("gpu", "cuda")
                else:
                    value = raw.strip()
                take(name, value, number)
    return VllmLog(**found, lines=lines)


def read_vllm_log(text: str, where: str) -> VllmLog:
    """`parse_vllm_log`, refusing a text with no vLLM start-up line (InputError naming `where`)."""
    log = parse_vllm_log(text)
    budget = ("available_kv_gib", "kv_cache_tokens", "num_blocks", "weights_gib", "version", "refusal")
    if not any(getattr(log, name) is not None for name in budget):
        raise InputError(
            f"{where}: no vLLM start-up line found (the engine config, 'Model loading took', 'Available KV cache "
            "memory', 'KV cache size' ...); pass the log vLLM prints while it starts"
        )
    return log
