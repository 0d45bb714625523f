"""What the hardware reports: memory (NVML, torch allocator, resident set), bandwidth, time.

Measurement discipline (kvplan style rule 7): synchronise before every clock
read, warm up before timing, take medians, read memory before and after.

NVML comes from `pynvml` (the nvidia-ml-py package), imported only on CUDA runs.
On the CPU torch allocates with glibc malloc: its statistics (mallinfo2) stand in
for the caching allocator's, beside the process's resident set (/proc/self/statm);
free memory is /proc/meminfo MemAvailable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from kvplan.measure.allocator import free_blocks
from kvplan.units import fmt_bytes


def sync(device: torch.device) -> None:
    """Wait for all queued work on `device` (a no-op on the CPU, where ops are synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def settle(device: torch.device, collect: bool = True) -> None:
    """Drop freed tensors and hand cached blocks back, so a following reading starts clean.

    `collect` runs the cycle collector too (~0.2 s in a big process): needed only where
    a reference cycle might still hold a tensor; plain `del` frees by refcount.
    """
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ CPU memory


def rss_bytes() -> int:
    """Resident set size of this process, bytes.

    /proc/self/smaps_rollup walks the page tables, so it is exact (a few ms); statm
    and VmRSS read the kernel's per-CPU RSS counters, which may lag by a batch of
    pages per CPU (Linux 6.2+ `percpu_counter_read_positive`). statm is the fallback.
    """
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except OSError:
        pass
    with open("/proc/self/statm", encoding="ascii") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def mem_available_bytes() -> int:
    """MemAvailable from /proc/meminfo, bytes: what the kernel can give without swapping."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file says kB and means KiB
    raise OSError("/proc/meminfo has no MemAvailable line")


@dataclass(frozen=True, slots=True)
class AllocatorReading:
    """An allocator's bytes in live blocks (allocated) and bytes it holds from the system (reserved).

    CUDA: torch's caching allocator. CPU: glibc malloc, which torch's CPU allocator calls.
    """

    allocated: int
    reserved: int


class _MallInfo2(ctypes.Structure):
    # glibc malloc.h `struct mallinfo2` (glibc 2.33+): every field a size_t
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


# glibc's initial mmap threshold (malloc.c DEFAULT_MMAP_THRESHOLD_MIN): pinned with
# mallopt, blocks at least this big always get fresh pages from mmap and go back to
# the kernel on free, instead of the threshold creeping up to 32 MiB after frees
# and later blocks reusing resident heap memory (which hides them from RSS).
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # malloc.h
_M_TRIM_THRESHOLD = -1  # malloc.h: free top memory above this goes back to the kernel


class GlibcMalloc:
    """glibc malloc statistics: in use = main-arena blocks in use + mmapped blocks;
    held = main-arena heap + mmapped blocks (mallinfo2). OSError where glibc is absent."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        self.libc = ctypes.CDLL(name)
        if not hasattr(self.libc, "mallinfo2"):
            raise OSError(f"{name} has no mallinfo2 (glibc 2.33 or later needed)")
        self.libc.mallinfo2.restype = _MallInfo2
        self.libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]

    def pin_mmap_threshold(self, nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
        """Fix the mmap threshold, and the trim threshold at glibc's default pairing (2x): freed
        memory atop the heap is then given back, so the top chunk stays small and a large tensor
        gets its own mapping (glibc's dynamic thresholds may have raised the trim threshold to 64 MiB)."""
        return self.libc.mallopt(_M_MMAP_THRESHOLD, nbytes) == 1 and self.libc.mallopt(_M_TRIM_THRESHOLD, 2 * nbytes) == 1

    def reading(self) -> AllocatorReading:
        m = self.libc.mallinfo2()
        return AllocatorReading(m.uordblks + m.hblkhd, m.arena + m.hblkhd)

    def heap_top_bytes(self) -> int:
        """The main heap's top chunk (mallinfo2 keepcost): what a request above the mmap
        threshold may still be carved from instead of a fresh mmap."""
        return int(self.libc.mallinfo2().keepcost)


# ------------------------------------------------------------------ CUDA memory


def allocator_reading(device: torch.device) -> AllocatorReading | None:
    if device.type != "cuda":
        return None
    return AllocatorReading(torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device))


# Settings that change the caching allocator's rules (torch 2.9+ also reads the
# device-generic PYTORCH_ALLOC_CONF): with either set, its rounding is not modelled.
ALLOC_CONF_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def allocator_settings() -> str | None:
    """`NAME=value` of the first allocator setting in the environment, None when at defaults."""
    for name in ALLOC_CONF_VARIABLES:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


def cuda_free_blocks(device: torch.device) -> list[tuple[int, bool]]:
    """(bytes, in the small pool) of every free block the caching allocator holds in its
    default pool on `device` for the current stream: blocks a new tensor may reuse
    instead of a fresh segment (torch.cuda.memory_snapshot)."""
    stream = torch.cuda.current_stream(device).cuda_stream
    return free_blocks(torch.cuda.memory_snapshot(), device.index, stream)


class Nvml:
    """Device memory used as NVML reports it (all processes and the CUDA context included).

    Construct before torch creates a CUDA context: `baseline` keeps every device's
    used bytes by UUID, so the context's cost can be separated once the device torch
    runs on is known.
    """

    def __init__(self) -> None:
        import pynvml  # nvidia-ml-py; only CUDA runs get here

        self.nv = pynvml
        pynvml.nvmlInit()
        self.baseline: dict[str, int] = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            self.baseline[self._uuid(pynvml.nvmlDeviceGetUUID(handle))] = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        self.handle = None
        self.uuid: str | None = None

    @staticmethod
    def _uuid(text) -> str:
        text = text.decode() if isinstance(text, bytes) else str(text)
        text = text.lower()
        return text if text.startswith(("gpu-", "mig-")) else f"gpu-{text}"

    def attach(self, device: torch.device) -> bool:
        """Find the NVML handle of torch's `device` by UUID (CUDA_VISIBLE_DEVICES may reorder),
        falling back to its PCI bus id; False if neither matches."""
        nv = self.nv
        props = torch.cuda.get_device_properties(device)
        want = self._uuid(getattr(props, "uuid", ""))
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            if self._uuid(nv.nvmlDeviceGetUUID(handle)) == want:
                self.handle, self.uuid = handle, want
                return True
        try:
            bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
            self.handle = nv.nvmlDeviceGetHandleByPciBusId(bus)
            self.uuid = self._uuid(nv.nvmlDeviceGetUUID(self.handle))
            return True
        except (nv.NVMLError, AttributeError):
            return False

    @property
    def baseline_used(self) -> int | None:
        return self.baseline.get(self.uuid) if self.uuid else None

    def used(self) -> int | None:
        """Bytes used on the device; None if NVML does not answer (the reading is then left out)."""
        assert self.handle is not None
        try:
            return int(self.nv.nvmlDeviceGetMemoryInfo(self.handle).used)
        except self.nv.NVMLError:
            return None

    def driver_version(self) -> str | None:
        try:
            version = self.nv.nvmlSystemGetDriverVersion()
        except self.nv.NVMLError:
            return None
        return version.decode() if isinstance(version, bytes) else str(version)

    def close(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except self.nv.NVMLError:
            pass


# ------------------------------------------------------------------ time


class StepTimer:
    """Seconds of individual steps: CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._seconds: list[float] = []

    def time(self, fn: Callable[[], object]) -> None:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            fn()
            self._seconds.append(time.perf_counter() - t0)

    def seconds(self) -> list[float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return [s.elapsed_time(e) / 1e3 for s, e in self._events]  # elapsed_time is in ms
        return list(self._seconds)


def timed_once(device: torch.device, fn: Callable[[], object]) -> float:
    """Seconds of one call, synchronised before and after (a synchronised clock)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------ probes


@dataclass(frozen=True, slots=True)
class BandwidthReading:
    """Device copy bandwidth: a buffer copied to another; read + write bytes per second."""

    gbps: float  # 1e9 bytes per second, read + write counted (as STREAM copy)
    buffer_bytes: int
    repeats: int
    method: str  # how it was taken, for the report


def copy_bandwidth(device: torch.device, buffer_bytes: int, repeats: int) -> BandwidthReading:
    """Median bandwidth of `dst.copy_(src)` over `repeats` after two warm-up copies."""
    src = torch.ones(buffer_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    try:
        for _ in range(2):
            dst.copy_(src)
        sync(device)
        timer = StepTimer(device)
        for _ in range(repeats):
            timer.time(lambda: dst.copy_(src))
        seconds = statistics.median(timer.seconds())
    finally:
        del src, dst
        settle(device, collect=False)
    method = (
        f"dst.copy_(src) of a {fmt_bytes(buffer_bytes)} buffer, median of {repeats} after 2 warm-up copies; "
        "(read + write bytes) / time"
    )
    return BandwidthReading(2 * buffer_bytes / seconds / 1e9, buffer_bytes, repeats, method)


@dataclass(frozen=True, slots=True)
class ReadBandwidthReading:
    """Device read-streaming bandwidth: what a decode step does to its weights and cache."""

    gbps: float  # 1e9 bytes read per second
    buffer_bytes: int  # bytes one pass reads
    repeats: int
    method: str  # how it was taken, for the report


READ_PROBE_WARMUPS = 2


def read_bandwidth(
    device: torch.device, buffer_bytes: int, repeats: int, timer: Callable[[torch.device], StepTimer] = StepTimer
) -> ReadBandwidthReading:
    """Best bandwidth of `buf.sum()` over a float32 buffer of `buffer_bytes` (rounded down to
    whole elements) after READ_PROBE_WARMUPS passes: bytes read / seconds of one pass.

    A reduction reads every byte once and writes a scalar, as STREAM's read-only kernels do;
    float32 because its sum is vectorised on every CPU (a bf16 sum converts each element).
    Best rather than median: other work on the machine only ever slows a pass, so the
    fastest is the closest to what the hardware streams.
    """
    elements = buffer_bytes // 4
    read = elements * 4
    buf = torch.ones(elements, dtype=torch.float32, device=device)
    try:
        for _ in range(READ_PROBE_WARMUPS):
            buf.sum()
        sync(device)
        clock = timer(device)
        for _ in range(repeats):
            clock.time(lambda: buf.sum())
        seconds = min(clock.seconds())
    finally:
        del buf
        settle(device, collect=False)
    method = (
        f"float32 .sum() over a {fmt_bytes(read)} buffer, best of {repeats} after {READ_PROBE_WARMUPS} "
        "warm-up passes; bytes read / time"
    )
    return ReadBandwidthReading(read / seconds / 1e9, read, repeats, method)


@dataclass(frozen=True, slots=True)
class LinearReading:
    """Throughput of one projection at the model's shape and dtype: `x @ w.T`, x (rows x in), w (out x in).

    rows = the batch: a GEMV-like product, what a decode step runs; rows = prompt tokens: a GEMM,
    what a prefill runs.
    """

    flops_per_s: float  # 2 x rows x in x out per product / seconds
    rows: int
    in_features: int
    out_features: int
    repeats: int
    method: str  # how it was taken, for the report


LINEAR_PROBE_WARMUPS = 2


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def linear_throughput(
    device: torch.device, dtype: torch.dtype, rows: int, in_features: int, out_features: int, repeats: int,
    timer: Callable[[torch.device], StepTimer] = StepTimer, rotate_bytes: int = 0,
) -> LinearReading:
    """Best FLOP/s of `torch.nn.functional.linear(x, w)` on random operands in `dtype`, after
    LINEAR_PROBE_WARMUPS products; best, as the bandwidth probes, since other work only slows a product.
    Random operands: constant ones toggle fewer bits, so a GPU draws less power and clocks higher.

    `rotate_bytes`: cycle through as many copies of the weight as it takes to hold that many bytes, so
    each product reads its weight from memory, as a decode step reads each of its weights once; a
    weight smaller than the last-level cache, multiplied again and again, would be read from the cache."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, in_features, dtype=dtype, device=device, generator=gen)
    weight_bytes = out_features * in_features * torch.empty((), dtype=dtype).element_size()
    copies = max(1, -(-rotate_bytes // weight_bytes))
    # one allocation for every copy (each ws[i] a contiguous view): many small weights freed one by one
    # would leave holes in the heap that the cache allocated next falls into (CPU malloc readings)
    ws = torch.randn(copies, out_features, in_features, dtype=dtype, device=device, generator=gen)
    turn = iter(range(1 << 62))
    try:
        for i in range(max(LINEAR_PROBE_WARMUPS, copies)):
            torch.nn.functional.linear(x, ws[i % copies])
        sync(device)
        clock = timer(device)
        for _ in range(repeats):
            clock.time(lambda: torch.nn.functional.linear(x, ws[next(turn) % copies]))
        seconds = min(clock.seconds())
    finally:
        del x, ws
        settle(device, collect=False)
    rotation = (f", cycling through {copies} copies of the weight ({copies * weight_bytes / 2**20:,.0f} MiB, each "
                "read from memory as a decode step reads it)" if copies > 1 else "")
    method = (
        f"linear: {rows:,} x {in_features:,} input, {out_features:,} x {in_features:,} weight, {dtype_name(dtype)}, "
        f"best of {repeats} after {max(LINEAR_PROBE_WARMUPS, copies)} warm-ups{rotation}; 2 x rows x in x out / time"
    )
    return LinearReading(2 * rows * in_features * out_features / seconds, rows, in_features, out_features, repeats, method)


GEMM_START_ROWS = 128
ATTENTION_PROBE_MAX_TOKENS = 4096  # the probe's prompt stops here: its cost grows with the square
# ... and where batch x heads x tokens^2 fp32 scores would pass this, should the kernel materialise them
ATTENTION_PROBE_SCORE_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class AttentionReading:
    """Throughput of a prefill's causal attention at the model's shape: useful QK + PV FLOPs per second."""

    flops_per_s: float
    tokens: int
    method: str


def attention_throughput(
    device: torch.device, dtype: torch.dtype, batch: int, heads: int, tokens: int, qk: int, v: int, v_kernel: int,
    repeats: int = 3,
) -> AttentionReading:
    """Best FLOP/s of `scaled_dot_product_attention(q, k, v, is_causal=True)` over `tokens` (at most
    ATTENTION_PROBE_MAX_TOKENS) on random operands, counted as 2 x batch x heads x the causal pairs
    x (qk + v): the FLOPs `measure.predict.prefill_attention_flops` counts, so a kernel that pads V
    (MLA) shows as a lower rate. The prompt is cut to ATTENTION_PROBE_MAX_TOKENS, and to the length whose
    fp32 scores fit ATTENTION_PROBE_SCORE_BYTES (a kernel without a fused path materialises them)."""
    tokens = min(tokens, ATTENTION_PROBE_MAX_TOKENS, math.isqrt(ATTENTION_PROBE_SCORE_BYTES // (4 * batch * heads)))
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, heads, tokens, qk, dtype=dtype, device=device, generator=gen)
    k = torch.randn(batch, heads, tokens, qk, dtype=dtype, device=device, generator=gen)
    vv = torch.randn(batch, heads, tokens, v_kernel, dtype=dtype, device=device, generator=gen)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        sdpa(q, k, vv, is_causal=True)
        sync(device)
        clock = StepTimer(device)
        for _ in range(repeats):
            clock.time(lambda: sdpa(q, k, vv, is_causal=True))
        seconds = min(clock.seconds())
    finally:
        del q, k, vv
        settle(device, collect=False)
    flops = 2 * batch * heads * (tokens * (tokens + 1) // 2) * (qk + v)
    padded = f" (V padded to {v_kernel} for the kernel)" if v_kernel != v else ""
    method = (f"scaled_dot_product_attention, causal: {batch} x {heads} heads x {tokens:,} tokens, QK {qk}, V {v}{padded}, "
              f"{dtype_name(dtype)}, best of {repeats} after 1 warm-up; 2 x heads x causal pairs x (QK + V) / time")
    return AttentionReading(flops / seconds, tokens, method)
SCAN_PROBE_WARMUPS = 2


@dataclass(frozen=True, slots=True)
class StepReading:
    """Seconds of one call of a step the model repeats per token (a state layer's scan step)."""

    seconds: float
    repeats: int
    method: str


def step_time(device: torch.device, fn: Callable[[], object], repeats: int, what: str) -> StepReading:
    """Best seconds of `fn()` over `repeats` calls after SCAN_PROBE_WARMUPS; best, as the other probes,
    since other work only slows a call."""
    for _ in range(SCAN_PROBE_WARMUPS):
        fn()
    sync(device)
    clock = StepTimer(device)
    for _ in range(repeats):
        clock.time(fn)
    seconds = min(clock.seconds())
    return StepReading(seconds, repeats, f"{what}, best of {repeats} after {SCAN_PROBE_WARMUPS} warm-ups")


def gemm_throughput(
    device: torch.device, dtype: torch.dtype, max_rows: int, in_features: int, out_features: int, target_s: float = 0.05,
) -> LinearReading:
    """`linear_throughput` for a prefill of `max_rows` tokens: rows double from GEMM_START_ROWS until one
    product takes `target_s` (or reaches `max_rows`), so a long prompt on a slow CPU does not stall the
    run (a GEMM's rate stops growing with rows well before that)."""
    rows = min(GEMM_START_ROWS, max_rows)
    gen = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(out_features, in_features, dtype=dtype, device=device, generator=gen)
    while True:
        x = torch.randn(rows, in_features, dtype=dtype, device=device, generator=gen)
        torch.nn.functional.linear(x, w)
        once = timed_once(device, lambda: torch.nn.functional.linear(x, w))
        if once >= target_s or rows >= max_rows:
            break
        rows = min(2 * rows, max_rows)
    del x, w
    repeats = max(3, min(10, int(0.3 / max(once, 1e-6))))
    reading = linear_throughput(device, dtype, rows, in_features, out_features, repeats)
    if rows < max_rows:
        method = f"{reading.method} (rows stop at {rows:,} of the {max_rows:,} prompt rows: one product took at least {target_s * 1e3:g} ms)"
        reading = LinearReading(reading.flops_per_s, rows, in_features, out_features, repeats, method)
    return reading
