"""Reading a llama-server start-up log: the context, the KV caches and the slots llama.cpp decided on.

Pure: `parse_llamacpp_log(text)` takes the log's text and returns a frozen `LlamaCppLog`. Every figure is the
one llama.cpp printed (MiB to two decimals, counts exact), and each cache keeps its summary line as printed, so
a prediction can be compared with it word for word. The formats, read in the llama.cpp tree vendored by
llama-cpp-python 0.3.36 (and checked on the recorded logs of tests/fixtures/llamacpp_real/):

- `src/llama-context.cpp`, `llama_context::llama_context`: `llama_context: n_seq_max = %u`, `n_ctx`, `n_ctx_seq`,
  `n_batch`, `n_ubatch`, `causal_attn`, `flash_attn = auto|enabled|disabled`, `kv_unified = true|false`,
  `n_rs_seq`; the warning `n_ctx is not divisible by n_seq_max - rounding down to %u`; `%10s compute buffer
  size = %8.2f MiB` (printed by `sched_reserve:` in the recorded build) and `%10s  output buffer size = %8.2f MiB`
  per device buffer.
- `src/llama-kv-cache.cpp`, `llama_kv_cache::llama_kv_cache`: `%10s KV buffer size = %8.2f MiB` and `size = %7.2f
  MiB (%6u cells, %3d layers, %2u/%u seqs), K (%s): %7.2f MiB, V (%s): %7.2f MiB`; `llama-kv-cache-iswa.cpp`
  announces each of its two caches first: `creating non-SWA KV cache, size = %u cells`, `creating     SWA KV
  cache, size = %u cells`.
- `src/llama-memory-recurrent.cpp`: `%10s RS buffer size = %8.2f MiB` and `size = %7.2f MiB (%6u cells, %3d layers,
  %2u seqs %2u rs_seq), R (%s): %7.2f MiB, S (%s): %7.2f MiB, P (%s): %7.2f MiB`.
- `ggml/src/ggml-cuda/ggml-cuda.cpp`, `ggml_cuda_init`: `Device %d: %s, compute capability %d.%d, ...` (the GPU).
- llama-server prints the lines above only at log verbosity 4 (`-lv 4`), each after a time stamp and a level
  letter (`0.00.036.895 I llama_context: n_ctx = 2048`); they are found anywhere in a line.
- `tools/server/server-context.cpp`, `load_model`: `initializing, n_slots = %d, n_ctx_slot = %d, kv_unified =
  '%s'`; `main`: `listening on http://HOST:PORT`; refusals (lines of level E, or, in a log
  without levels, lines in these words): `failed to create_context with model`,
  `failed to load model`, and what the argument parser or llama.cpp said before them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

MIB = 2**20


@dataclass(frozen=True, slots=True)
class KvCacheLine:
    """One `llama_kv_cache: size = ...` line: one cache object (the model's, or the iSWA's non-SWA / SWA half)."""

    role: str  # "kv" (a model's only cache), "non-SWA" or "SWA" (llama_kv_cache_iswa)
    size_mib: float
    cells: int
    layers: int
    n_seq_max: int
    n_stream: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float
    line: str  # as printed, from "llama_kv_cache:" on


@dataclass(frozen=True, slots=True)
class RecurrentLine:
    """The `llama_memory_recurrent: size = ...` line: the recurrent state cells."""

    size_mib: float
    cells: int
    layers: int
    n_seq_max: int
    n_rs_seq: int
    type_r: str
    r_mib: float
    type_s: str
    s_mib: float
    p_mib: float
    line: str


@dataclass(frozen=True, slots=True)
class LlamaCppLog:
    """What one llama-server start-up log says. None: the log does not say it."""

    n_seq_max: Optional[int] = None
    n_ctx: Optional[int] = None
    n_ctx_seq: Optional[int] = None
    n_batch: Optional[int] = None
    n_ubatch: Optional[int] = None
    flash_attn: Optional[str] = None  # "auto", "enabled", "disabled" (llama_flash_attn_type_name)
    kv_unified: Optional[bool] = None
    n_rs_seq: Optional[int] = None
    rounded_down_to: Optional[int] = None  # the n_ctx of "not divisible by n_seq_max - rounding down to"
    kv_caches: tuple[KvCacheLine, ...] = ()
    recurrent: Optional[RecurrentLine] = None
    kv_buffer_mib: tuple[float, ...] = ()  # each "KV buffer size" line, in order
    rs_buffer_mib: tuple[float, ...] = ()
    compute_buffer_mib: dict = field(default_factory=dict)  # device buffer name -> MiB ("CPU", "CUDA0", ...)
    output_buffer_mib: dict = field(default_factory=dict)
    n_slots: Optional[int] = None
    n_ctx_slot: Optional[int] = None
    listening: Optional[str] = None  # "http://127.0.0.1:8080"
    gpu_name: Optional[str] = None  # ggml-cuda's "Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, ..."
    errors: tuple[str, ...] = ()  # the error lines (level E), as printed: why a start stopped

    @property
    def kv_bytes_printed(self) -> Optional[float]:
        """The caches' sizes as printed, summed, in bytes (two-decimal MiB: within 0.005 MiB per line)."""
        if not self.kv_caches and self.recurrent is None:
            return None
        return (sum(c.size_mib for c in self.kv_caches) + (self.recurrent.size_mib if self.recurrent else 0)) * MIB

    @property
    def swa_cells(self) -> Optional[int]:
        return next((c.cells for c in self.kv_caches if c.role == "SWA"), None)

    @property
    def kv_cells(self) -> Optional[int]:
        """The cells of the full-attention cache (the iSWA's non-SWA half), per stream."""
        return next((c.cells for c in self.kv_caches if c.role != "SWA"), None)


_CONTEXT = re.compile(r"llama_context: (n_seq_max|n_ctx|n_ctx_seq|n_batch|n_ubatch|flash_attn|kv_unified|n_rs_seq)"
                      r"\s+= (\S+)\s*$")
_ROUNDED = re.compile(r"n_ctx is not divisible by n_seq_max - rounding down to (\d+)")
_ISWA = re.compile(r"creating\s+(non-SWA|SWA) KV cache, size = (\d+) cells")
_KV = re.compile(r"(llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\), "
                 r"K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB)")
_RECURRENT = re.compile(r"(llama_memory_recurrent: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+) seqs "
                        r"+(\d+) rs_seq\), R \((\w+)\): +([\d.]+) MiB, S \((\w+)\): +([\d.]+) MiB, "
                        r"P \((\w+)\): +([\d.]+) MiB)")
_BUFFER = re.compile(r"(\w+): +(\S+) +(KV|RS|compute|output) buffer size = +([\d.]+) MiB")
_SLOTS = re.compile(r"initializing, n_slots = (\d+), n_ctx_slot = (\d+)")
_LISTEN = re.compile(r"listening on (http\S+)")
_GPU = re.compile(r"Device \d+: (.+?), compute capability")  # ggml/src/ggml-cuda/ggml-cuda.cpp ggml_cuda_init
# the time stamp and level letter llama-server puts before each line (common/log.cpp): I, W, E, D
_LEVEL = re.compile(r"^\s*\d+\.\d+\.\d+\.\d+ ([IWED]) ")
# the words llama.cpp and llama-server stop with (common/arg.cpp, src/llama-context.cpp, server-context.cpp, main)
_ERROR = re.compile(r"(error:|failed to|Unsupported cache type|requires flash_attn|does not divide|does not support|"
                    r"invalid argument|exiting due to)", re.IGNORECASE)


def parse_llamacpp_log(text: str) -> LlamaCppLog:
    """The decisions a llama-server start-up log prints (see the module docstring for the lines read)."""
    values: dict = {}
    caches: list[KvCacheLine] = []
    role = "kv"
    kv_buf: list[float] = []
    rs_buf: list[float] = []
    compute: dict[str, float] = {}
    output: dict[str, float] = {}
    errors: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        m = _CONTEXT.search(line)
        if m:
            key, value = m.groups()
            if key == "flash_attn":
                values[key] = value
            elif key == "kv_unified":
                values[key] = value == "true"
            else:
                values.setdefault(key, int(value))  # the target context's lines come first (a draft model's follow)
            continue
        m = _ROUNDED.search(line)
        if m:
            values.setdefault("rounded_down_to", int(m.group(1)))
            continue
        m = _ISWA.search(line)
        if m:
            role = m.group(1)
            continue
        m = _KV.search(line)
        if m:
            g = m.groups()
            caches.append(KvCacheLine(role, float(g[1]), int(g[2]), int(g[3]), int(g[4]), int(g[5]), g[6], float(g[7]),
                                      g[8], float(g[9]), g[0]))
            continue
        m = _RECURRENT.search(line)
        if m:
            g = m.groups()
            values.setdefault("recurrent", RecurrentLine(float(g[1]), int(g[2]), int(g[3]), int(g[4]), int(g[5]), g[6],
                                                         float(g[7]), g[8], float(g[9]), float(g[11]), g[0]))
            continue
        m = _BUFFER.search(line)
        if m:
            _, device, kind, mib = m.groups()
            if kind == "KV":
                kv_buf.append(float(mib))
            elif kind == "RS":
                rs_buf.append(float(mib))
            else:
                (compute if kind == "compute" else output).setdefault(device, float(mib))
            continue
        m = _SLOTS.search(line)
        if m:
            values.setdefault("n_slots", int(m.group(1)))
            values.setdefault("n_ctx_slot", int(m.group(2)))
            continue
        m = _LISTEN.search(line)
        if m:
            values.setdefault("listening", m.group(1))
            continue
        m = _GPU.search(line)
        if m:
            values.setdefault("gpu_name", m.group(1))
            continue
        level = _LEVEL.match(line)
        if (level.group(1) == "E") if level else bool(_ERROR.search(line)):  # unstamped logs: by their words
            errors.append(line.strip())
    return LlamaCppLog(kv_caches=tuple(caches), kv_buffer_mib=tuple(kv_buf), rs_buffer_mib=tuple(rs_buf),
                       compute_buffer_mib=compute, output_buffer_mib=output, errors=tuple(errors), **values)
