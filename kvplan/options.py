"""Every deployment and engine option, declared once: flags, kind of value, default, help, readers, plan key.

`OPTIONS` is the one table. The CLI builds every command's flags from it
(`kvplan.cli.options`), the plan file's schema is checked against it
(`kvplan.plan.gating.DeploymentEntry`: a test asserts they hold the same keys),
and `parse_option` reads a flag's text by its kind, so `--context 32k`,
`--batch 8`, `--tp 2`, `--ubatch-size 1k` or `--activation-memory 2GiB` mean the
same in every command. No imports beyond typing: the CLI reads it at start-up
without loading the engines.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

# Every engine, in the order `kvplan compare` shows them: the one registry of engine names
# (`kvplan.engines.get(name)` gives the module). ideal and vllm are sized by kvplan's planner
# (kvplan.plan.planner); the others have their own budget rules in their modules.
NAMES: tuple[str, ...] = ("ideal", "vllm", "hf", "llama.cpp", "sglang", "trtllm")
PLANNED: tuple[str, ...] = ("ideal", "vllm")
PROFILES: tuple[str, ...] = tuple(n for n in NAMES if n not in PLANNED)
# The same names as --engine and a plan's `engine:` list them (vllm, the default, first).
CHOICES: tuple[str, ...] = ("vllm", "ideal") + PROFILES
# The engines that read an option: the planner's two (vllm first, as --help lists them), or all.
PLANNER: tuple[str, ...] = CHOICES[:2]
ALL_ENGINES: tuple[str, ...] = CHOICES

# What a flag's text is (`parse_option`), and the type its typer parameter has:
#   counts     whole numbers >= 1 with k = 1024, m = 1024**2 ("8k", "1.5k"); a comma list sweeps where the
#              command sweeps, and is refused with the flag named where it takes one value (`one_value`)
#   tokens     one such count (a number of tokens)
#   int        one whole number (a count of things that are not tokens: bits, slots, tokens per block)
#   bytes      a size: bytes, or a number with a unit (2GiB = 2 * 2**30, 80GB = 80 * 10**9)
#   share      a fraction in (0, 1]
#   float      a positive number
#   str        a word; str_list: a comma list of words
#   bool       an on/off flag
#   path       a file to write
#   choice     one of the command's own choices (the command gives the Enum)
KINDS = ("counts", "tokens", "int", "bytes", "share", "float", "str", "str_list", "bool", "path", "choice")


class Option(NamedTuple):
    """One option. `key` is the plan-file key and (unless `param`) the command parameter's name."""

    key: str
    flags: tuple[str, ...]  # the long name first, then the aliases --help shows
    kind: str
    help: str
    engines: tuple[str, ...] = ALL_ENGINES  # who reads it; another engine's option is refused, never ignored
    default: Any = None  # None: not given, so the engine's (or the planner's) own default applies
    plan: bool = True  # also a key of a plan file's deployment (`kvplan check`)
    hidden: tuple[str, ...] = ()  # older spellings that keep working, not shown in --help
    param: Optional[str] = None  # the parameter's name where it is not `key` (a Python keyword, a clash)

    @property
    def name(self) -> str:
        return self.param or self.key

    @property
    def flag(self) -> str:
        return self.flags[0]


_O = Option
OPTIONS: tuple[Option, ...] = (
    # ---- the deployment: model placement, sizes, formats
    _O("context", ("--context", "-c"), "counts", "Tokens per sequence (8k = 8192, 1.5k = 1536); a comma list sweeps "
       "where the command sweeps.", default="8192"),
    _O("batch", ("--batch", "-b"), "counts", "Concurrent sequences; a comma list sweeps where the command sweeps.",
       default="1"),
    _O("kv_cache_dtype", ("--kv-cache-dtype",), "str_list",
       "KV element format: auto (the model's dtype, or --dtype's float cast), fp16, bf16, fp32, float16, bfloat16, fp8, fp8_e4m3, fp8_e5m2, int8, "
       "fp8_per_token_head, int8_per_token_head, nvfp4, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, "
       "int4[_gN][_fp16|_bf16|_fp32][_sym]; K/V differ as q8_0/q4_0; an engine that lacks it refuses; "
       "a comma list sweeps in estimate.", default="auto"),
    _O("tp", ("--tensor-parallel-size", "--tp"), "counts", "Tensor-parallel ranks (hf and llama.cpp run on one "
       "device); a comma list sweeps in estimate.", default="1"),
    _O("pp", ("--pipeline-parallel-size", "--pp"), "counts", "Pipeline stages (uneven splits allowed; the engine "
       "profiles model one stage).", PLANNER, default="1"),
    _O("dp", ("--data-parallel-size", "--dp"), "int", "MoE models: engine instances of tp x pp GPUs (vLLM "
       "--data-parallel-size), each with its own KV pool and sequences (an MLA latent held once per instance, not "
       "on every tp rank), routed experts over tp x dp GPUs; --batch is all instances' (default 1).", PLANNER,
       default=1, plan=False),
    _O("engine", ("--engine",), "str", "Whose allocation rules: vllm (blocks, groups, windows as vLLM reserves "
       "them), ideal (exactly the tokens held), or hf, llama.cpp, sglang, trtllm (kvplan.engines profiles).",
       default="vllm"),
    _O("state_dtype", ("--state-dtype",), "str", "Element format of SSM state (default: the model's dtype)."),
    _O("dtype", ("--dtype",), "str", "Weights dtype: bf16, fp16, fp32, fp8, int8, int4 (+fp16 scale per 128), "
       "mxfp4, or vLLM's auto, half, float16, bfloat16, float, float32 (default: the model's; a float cast moves "
       "--kv-cache-dtype auto with it); a quantised dtype covers the body weights the spec's weights_quantized "
       "names (all linear, or the routed experts)."),
    _O("weights_bytes", ("--weights-bytes",), "bytes", "The weights' total bytes (160GB, 80GiB), for a model whose "
       "weights kvplan cannot size: no safetensors or GGUF headers and no parameter formula for its model_type; "
       "split evenly per layer (only capacity, latency and cost read it)."),
    _O("block_size", ("--block-size",), "int", "Tokens per paged block; 1 = no paging. Default: the engine's "
       "(vllm: 16, 64 for MLA; ideal: 1).", PLANNER),
    # ---- the GPU and what sits on it besides the KV cache
    _O("gpu", ("--gpu",), "str_list", "A catalog GPU (`kvplan gpus`) or a GPU YAML file: KV budget and capacity "
       "(estimate: latency and cost too; a comma list compares there)."),
    _O("gpu_memory", ("--gpu-memory",), "bytes", "GPU memory: bytes or a size (24GiB, 80GB, 81559MiB as the runtime reports it); overrides the named GPU's."),
    _O("gpu_bandwidth", ("--gpu-bandwidth",), "float", "Peak memory bandwidth, GB/s (1e9 B/s); overrides the named GPU's."),
    _O("usd_per_hour", ("--usd-per-hour",), "float", "US dollars per GPU-hour; overrides the named GPU's."),
    _O("gpu_bf16_tflops", ("--gpu-bf16-tflops",), "float", "Dense bf16 tensor peak, TFLOPS; overrides the named GPU's."),
    _O("gpu_memory_utilization", ("--gpu-memory-utilization",), "share", "Share of GPU memory vLLM may use "
       "(default: vLLM's at --vllm-version, 0.92 at 0.32, 0.9 at 0.10).", PLANNER),
    _O("cuda_total_memory", ("--cuda-total-memory",), "bytes", "The device total torch.cuda.mem_get_info "
       "(cudaMemGetInfo) reports, which vLLM budgets from: usable = ceil(it x --gpu-memory-utilization) (default: "
       "the GPU's memory, NVML's total; CUDA reports less, e.g. 81082-81090MiB of an H100 SXM's 81559MiB).",
       PLANNER),
    _O("activation_memory", ("--activation-memory",), "bytes", "Peak activation memory per GPU, e.g. 2GiB "
       "(default: estimated from max_num_batched_tokens)."),
    _O("non_torch_memory", ("--non-torch-memory",), "bytes", "CUDA context, cuBLAS, NCCL per GPU (default 512MiB; "
       "1GiB with tp/pp > 1)."),
    _O("max_num_batched_tokens", ("--max-num-batched-tokens",), "tokens", "vLLM's tokens per scheduler step "
       "(sliding-window reservation, profile run; default: vLLM's for the GPU, 8192 on an H100, 2048 on an A100 "
       "or a card under 70 GiB, 16384 from 160 GiB).", PLANNER),
    _O("max_num_seqs", ("--max-num-seqs",), "counts", "vLLM's sequences per scheduler step: caps the batch "
       "throughput and cost run at (default: vLLM's for the GPU, 1024 on an H100 or larger, 256 on an A100 or a "
       "card under 70 GiB); search: the values to try, a comma list (default: 1 to 512).", PLANNER),
    # ---- kvplan's roofline: latency, cost, workload (every engine, over the KV bytes that engine reads)
    _O("bandwidth_efficiency", ("--bandwidth-efficiency",), "share", "Share of peak bandwidth a decode step "
       "reaches (default 0.8)."),
    _O("compute_efficiency", ("--compute-efficiency", "--mfu"), "share", "Share of peak FLOPS prefill reaches "
       "(default 0.5)."),
    _O("link_gbps", ("--link-gbps",), "float", "GPU-to-GPU bandwidth per direction, GB/s, that tp all-reduces and pp "
       "hand-offs run at (default: the GPU catalog's interconnect: NVLink, PCIe, Infinity Fabric).", plan=False),
    _O("link_latency_us", ("--link-latency-us",), "float", "Latency of one ring all-reduce step, µs (default: the "
       "catalog's, from NCCL's tuning table).", plan=False),
    _O("expert_parallel", ("--expert-parallel",), "bool", "MoE: experts whole, spread over the tp ranks (E / tp "
       "each), dispatched and combined by all-to-alls instead of the MLP's all-reduce (vLLM --enable-expert-parallel).",
       default=False, plan=False),
    _O("no_communication", ("--no-communication",), "bool", "Leave tp all-reduces and pp hand-offs out of decode and "
       "prefill times (the pre-communication roofline).", default=False, plan=False),
    _O("calibration", ("--calibration",), "str", "A `kvplan measure --output` JSON report: use its measured "
       "bandwidth efficiency."),
    _O("prompt_tokens", ("--prompt-tokens",), "tokens", "Prompt tokens per request (prefill, cost per input token; "
       "hf quantized: the prefill quantised at once; default: --context less --output-tokens)."),
    _O("output_tokens", ("--output-tokens",), "tokens", "Output tokens per request (workload sizing).", plan=False),
    _O("requests_per_s", ("--requests-per-s",), "float", "Workload: requests per second to size GPUs for.",
       plan=False),
    # ---- kvplan search: the targets and the workload a deployment must meet
    _O("ttft_ms", ("--ttft-ms",), "float", "search: time to first token a deployment must meet, ms (the p99: "
       "the wait in a replica's queue + the prefill of the p99 prompt).", PLANNER, plan=False),
    _O("no_queueing", ("--no-queueing",), "bool", "search: TTFT is the prefill alone, no wait in a replica's "
       "queue (default: an M/G/1 queue at the workload's rate, replicas added until TTFT p99 meets --ttft-ms).",
       PLANNER, default=False, plan=False),
    _O("tpot_ms", ("--tpot-ms",), "float", "search: time per output token a deployment must meet, ms (a decode "
       "step with every running sequence at the longest context).", PLANNER, plan=False),
    _O("workload", ("--workload",), "str", "search: a JSONL file of requests, one {\"prompt_tokens\": P, "
       "\"output_tokens\": O} object a line (a trace), with \"count\": N for a histogram's bin.", PLANNER,
       plan=False),
    _O("shared_prefix_tokens", ("--shared-prefix-tokens",), "tokens", "Prompt tokens every request shares, cached "
       "once (prefix caching).", PLANNER, default="0", plan=False),
    # ---- vllm (vLLM's own flags, its names and values; kvplan.engines.vllm_rules.VllmRules)
    _O("vllm_version", ("--vllm-version",), "str", "vllm: the release whose rules apply: 0.32 (default) or 0.10 "
       "(the logged token figure, hybrid block sizes, Mamba cache modes, window reservations, refusals).",
       ("vllm",)),
    _O("vllm_device", ("--device",), "str", "vllm: cuda (default) or cpu (vLLM's CPU backend: 128-token blocks, 16 for "
       "MLA; no async scheduling; the budget is --kv-cache-memory-bytes, as VLLM_CPU_KVCACHE_SPACE GiB sets it).",
       ("vllm",)),
    _O("max_model_len", ("--max-model-len",), "tokens", "vllm: max_model_len, the length its log's concurrency and "
       "its start-up checks are at (default: --context; --context may not exceed it).", ("vllm",)),
    _O("enable_prefix_caching", ("--enable-prefix-caching/--no-enable-prefix-caching",), "bool", "vllm: prefix "
       "caching (default: on, off for an attention-free model); on, a Mamba hybrid keeps 2 state pages per request "
       "(mamba_cache_mode align).", ("vllm",)),
    _O("mamba_cache_mode", ("--mamba-cache-mode",), "str", "vllm 0.32: none or align (vLLM turns it to align "
       "with prefix caching on, to none with it off).", ("vllm",)),
    _O("disable_hybrid_kv_cache_manager", ("--disable-hybrid-kv-cache-manager",), "bool", "vllm: page sliding and "
       "chunked layers as full attention (one group) when the model has full-attention layers.", ("vllm",)),
    _O("num_gpu_blocks_override", ("--num-gpu-blocks-override",), "int", "vllm: the number of KV blocks, "
       "whatever the memory holds.", ("vllm",)),
    _O("kv_cache_memory_bytes", ("--kv-cache-memory-bytes",), "bytes", "vllm: KV cache bytes per rank (4GiB, "
       "4294967296), replacing the gpu_memory_utilization budget rule.", ("vllm",)),
    # ---- hf (transformers)
    _O("hf_cache", ("--hf-cache",), "str", "hf: dynamic (DynamicCache, generate()'s default), static (StaticCache) "
       "or quantized (QuantizedCache).", ("hf",), default="dynamic"),
    _O("max_cache_len", ("--max-cache-len",), "tokens", "hf static: slots preallocated per layer (default: "
       "--context; with --generate, generate()'s max_length - 1 = --context - 1, raised to this when given).",
       ("hf",)),
    _O("generate", ("--generate",), "bool", "hf: the sequence came from generate(), whose last sampled token is "
       "never cached.", ("hf",), default=False),
    _O("transformers_version", ("--transformers-version",), "str", "hf: 4 (4.x: MLA cached decompressed; "
       "StaticCache fails when V is narrower than K) or 5 (5.x: MLA latent; QuantizedCache full-attention models "
       "only).", ("hf",), default="5"),
    _O("quant_backend", ("--quant-backend",), "str", "hf quantized: quanto, hqq or fp8 (5.x; per-tensor, "
       "no residual).", ("hf",), default="quanto"),
    _O("nbits", ("--nbits",), "int", "hf quantized: bits per value (quanto 2, 4; hqq 1, 2, 3, 4, 8).", ("hf",),
       default=4),
    _O("q_group_size", ("--q-group-size",), "int", "hf quantized: values per scale / zero-point.", ("hf",),
       default=64),
    _O("residual_length", ("--residual-length",), "int", "hf quantized: recent tokens kept in full precision.",
       ("hf",), default=128),
    # ---- llama.cpp (its own short flags spelled out: kvplan's -c / -b are --context / --batch)
    _O("parallel", ("--parallel",), "int", "llama.cpp --parallel (-np): sequence slots (default: --batch).",
       ("llama.cpp",)),
    _O("ctx_size", ("--ctx-size",), "tokens", "llama.cpp --ctx-size: cells of all slots together (default: "
       "--context x --parallel).", ("llama.cpp",)),
    _O("ubatch_size", ("--ubatch-size",), "tokens", "llama.cpp --ubatch-size: micro-batch; sliding layers get "
       "window + ubatch cells.", ("llama.cpp",), default=512),
    _O("n_batch", ("--n-batch",), "tokens", "llama.cpp --batch-size: logical batch (caps the micro-batch).",
       ("llama.cpp",), default=2048),
    _O("swa_full", ("--swa-full",), "bool", "llama.cpp --swa-full: sliding layers get the full context.",
       ("llama.cpp",), default=False),
    _O("flash_attn", ("--flash-attn",), "str", "llama.cpp --flash-attn: on, off or auto (a quantized V cache "
       "needs it on).", ("llama.cpp",), default="auto"),
    _O("cache_type_k", ("--cache-type-k",), "str", "llama.cpp --cache-type-k: f32, f16, bf16, q8_0, q4_0, q4_1, "
       "iq4_nl, q5_0, q5_1 (default: from --kv-cache-dtype, auto = f16).", ("llama.cpp",)),
    _O("cache_type_v", ("--cache-type-v",), "str", "llama.cpp --cache-type-v (default: from --kv-cache-dtype, "
       "auto = f16).", ("llama.cpp",)),
    _O("kv_unified", ("--kv-unified",), "bool", "llama.cpp --kv-unified: one cell pool shared by all slots.",
       ("llama.cpp",), default=False),
    # ---- sglang
    _O("mem_fraction_static", ("--mem-fraction-static",), "share", "sglang: share of free memory for weights + KV "
       "(default: the tp table of SGLang <= 0.4: 0.88, 0.87 at tp>=2, 0.85 at >=4, 0.81 at >=8, 0.79 at >=16; "
       "0.5.x derives it from GPU memory and logs it).", ("sglang",)),
    _O("page_size", ("--page-size",), "int", "sglang: tokens per page.", ("sglang",), default=1),
    _O("swa_full_tokens_ratio", ("--swa-full-tokens-ratio",), "share", "sglang: SWA pool tokens / full pool "
       "tokens.", ("sglang",), default=0.8),
    _O("max_total_tokens", ("--max-total-tokens",), "tokens", "sglang: cap on the token pool.", ("sglang",)),
    # ---- trtllm
    _O("tokens_per_block", ("--tokens-per-block",), "int", "trtllm: tokens per KV block.", ("trtllm",), default=32),
    _O("free_gpu_memory_fraction", ("--free-gpu-memory-fraction",), "share", "trtllm: share of the memory left "
       "after the profiling peak.", ("trtllm",), default=0.9),
    _O("emit", ("--emit",), "str", "Print the launch command that realises the plan instead of the report: vllm "
       "(vllm serve), sglang (python -m sglang.launch_server) or llama.cpp (llama-server), the --engine planned; "
       "one value per setting.", plan=False),
    # ---- output: one convention in every command (README "Output files")
    _O("format", ("--format", "-f"), "choice", "Output format.", plan=False, param="fmt", default="table"),
    _O("bytes", ("--bytes",), "bool", "Show exact byte counts beside binary units.", plan=False, param="exact",
       default=False),
    _O("output", ("--output", "-o"), "path", "Also write the report to this file, atomically: what stdout shows "
       "(check: the report in --format, the table still on stdout; measure: its JSON readings); see --force.",
       plan=False, hidden=("--json",)),
    _O("svg", ("--svg",), "path", "Also save what the table shows as an SVG file (an existing file only if it is an "
       "SVG; see --force).", plan=False),
    _O("plot", ("--plot",), "path", "Also draw charts into this .png, .svg or .html file: the memory map per GPU, max "
       "concurrency and KV bytes against context (search: the cost / latency front; needs the extra kvplan[plot]).",
       plan=False),
    _O("force", ("--force",), "bool", "Let --output, --svg or --plot replace an existing file that is not a report of the "
       "kind being written.", plan=False, default=False),
)
BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
_TOKEN_FLAGS = frozenset(o.flag for o in OPTIONS if o.key == "context" or o.kind == "tokens")

# Each engine profile's own option keys (flags and plan keys alike), in the table's order.
# vllm's own keys (its flags beyond the planner's) come first, as the engines' order has it.
OPTION_KEYS: dict[str, tuple[str, ...]] = {
    e: tuple(o.key for o in OPTIONS if o.engines == (e,)) for e in ("vllm",) + PROFILES
}
ALL_OPTION_KEYS = tuple(k for keys in OPTION_KEYS.values() for k in keys)
# Groups of options several commands take alike, in --help's order; a command takes a group as one parameter
# (kvplan.cli.options.flag_group) and reads it with `read_group`, so each flag reads the same in every command.
GPU_FIGURES = ("gpu_memory", "gpu_bandwidth", "usd_per_hour", "gpu_bf16_tflops")  # overrides of --gpu's figures
WEIGHTS = ("dtype", "weights_bytes")  # the weights: their dtype, or their total bytes where kvplan cannot size them
BUDGET = ("gpu_memory_utilization", "activation_memory", "non_torch_memory", "max_num_batched_tokens", "max_num_seqs",
          "cuda_total_memory")  # the planner's memory budget: what sits beside the KV cache, vLLM's scheduler limits
# Keys only kvplan's planner reads that the profiles replace with their own budget rules (a profile refuses them;
# the roofline's keys, also the planner's only, are refused by `estimate` itself with its own words).
PLANNER_KEYS = ("block_size", "gpu_memory_utilization", "max_num_batched_tokens", "max_num_seqs", "cuda_total_memory")
assert all(BY_KEY[k].engines == PLANNER for k in PLANNER_KEYS)


def parse_option(key: str, value: Any, flag: Optional[str] = None) -> Any:
    """A flag's value read by its option's kind (None stays None: not given).

    counts -> [int, ...]; tokens -> int (k, m); bytes -> int; others pass through as typer
    parsed them. Errors are InputError naming `flag` (default: the option's long flag).
    """
    if value is None:
        return None
    option = BY_KEY[key]
    flag = flag or option.flag
    if option.kind == "counts":
        return parse_counts(value, flag)
    if option.kind == "tokens" and not isinstance(value, int):
        return parse_count_value(value, flag)
    if option.kind == "bytes" and not isinstance(value, int):
        from kvplan.units import parse_bytes

        return parse_bytes(value, flag)
    return value


def parse_counts(text: Any, flag: str, minimum: int = 1, single: bool = False) -> list[int]:
    """'1024,8k,1.5k' -> [1024, 8192, 1536]; k = 1024 (kvplan.units.parse_count). `single`: refuse a list."""
    from kvplan.errors import InputError
    from kvplan.units import NotWholeError, parse_count, split_list

    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    parts = split_list(text, flag)
    if single and len(parts) > 1:
        raise InputError(f"{flag} {text!r}: give one value here, not a list")
    values = []
    for part in parts:
        try:
            value = parse_count(part)
        except NotWholeError as exc:
            raise InputError(f"{flag} {text!r}: {part!r} {exc}") from None
        except ValueError:
            raise InputError(f"{flag} {text!r}: {part!r} is not a whole number") from None
        if value < minimum:
            raise InputError(f"{flag} {text!r}: values must be at least {minimum}")
        values.append(value)
    return values


def parse_count_value(text: str, flag: str) -> int:
    """'32k' -> 32768: one count, k = 1024, m = 1024**2; 0 and up (the caller checks its own bound)."""
    from kvplan.errors import InputError
    from kvplan.units import NotWholeError, parse_count

    try:
        return parse_count(text)
    except NotWholeError as exc:
        raise InputError(f"{flag} {text!r} {exc}") from None
    except ValueError:
        noun = " of tokens (e.g. 32768 or 32k)" if flag in _TOKEN_FLAGS else ""
        raise InputError(f"{flag} {text!r} is not a whole number{noun}") from None


def one_value(key: str, text: Any, command: str, hint: str = "") -> int:
    """The single count a command takes for option `key`; a comma list is refused with the flag named."""
    from kvplan.errors import InputError

    flag = BY_KEY[key].flag
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if text.strip() and "," not in text:  # one count, worded as a plan's value is
        value = parse_count_value(text, flag)
        if value < 1:  # in the words the planner uses for the same bound (kvplan.plan.deploy.plan_options)
            raise InputError(f"{flag} must be at least 1{_UNIT.get(key, '')}, got {value}")
        return value
    values = parse_counts(text, flag)
    if len(values) > 1:
        raise InputError(f"{flag} {text!r}: {command} takes one {_NOUN.get(key, 'value')}, not a list{hint}")
    return values[0]


_UNIT = {"context": " token", "batch": " sequence"}


_NOUN = {"context": "context", "batch": "batch size", "tp": "tensor-parallel size", "pp": "pipeline-parallel size",
         "gpu": "GPU", "kv_cache_dtype": "KV format"}


def one_word(key: str, text: Optional[str], command: str, hint: str = "") -> Optional[str]:
    """The single word (a GPU, a KV format) a command takes for option `key`; a comma list is refused."""
    if text is None or "," not in text:
        return text
    from kvplan.errors import InputError
    from kvplan.units import split_list

    words = split_list(text, BY_KEY[key].flag)
    if len(words) > 1:
        raise InputError(f"{BY_KEY[key].flag} {text!r}: {command} takes one {_NOUN.get(key, 'value')}, not a list{hint}")
    return words[0]


def read_group(values: dict, command: str) -> dict:
    """A flag group's values (key -> text) read by kind: sizes in bytes, token counts with k / m, and a `counts`
    option (--max-num-seqs) as the one value a deployment takes (`one_value`); None stays None (not given)."""
    return {k: None if v is None else one_value(k, v, command) if BY_KEY[k].kind == "counts" else parse_option(k, v)
            for k, v in values.items()}


def given_engine_options(values: dict) -> dict:
    """Every engine option key of `values` (a command's parameters), in OPTION_KEYS order, read by kind."""
    return {k: parse_option(k, values.get(k)) for k in ALL_OPTION_KEYS}
