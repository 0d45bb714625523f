"""The arithmetic behind `kvplan measure`'s readings (kvplan/measure/readings.py), given inputs.

No GPU here, and no GPU result is faked as measured: the /proc files, glibc's mallinfo2,
NVML and the clock are replaced in-process by stand-ins that return chosen numbers, and the
tests check what the readings make of them (units, which fields add up, which device is
picked, how a median becomes GB/s and FLOP/s). Expected values are worked by hand beside
each case, from the sources the module cites (proc(5), malloc.h, NVML's API).
"""

from __future__ import annotations

import io
import sys
import types
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from kvplan.measure import readings as rd  # noqa: E402

CPU = torch.device("cpu")


def _files(monkeypatch, contents: dict[str, str]) -> None:
    """`open` inside readings.py sees these files; any other path is missing (OSError)."""

    def fake_open(path, *args, **kwargs):
        if path not in contents:
            raise FileNotFoundError(path)
        return io.StringIO(contents[path])

    monkeypatch.setattr(rd, "open", fake_open, raising=False)


# ------------------------------------------------------------------ /proc


def test_rss_from_smaps_rollup_in_kib(monkeypatch):
    # proc(5): smaps_rollup "Rss:  1234 kB" means KiB: 1,234 x 1,024 = 1,263,616 B
    _files(monkeypatch, {"/proc/self/smaps_rollup": "00400000-ffffffff ---p 00000000 00:00 0 [rollup]\nRss:            1234 kB\nPss:   99 kB\n"})
    assert rd.rss_bytes() == 1_263_616


def test_rss_falls_back_to_statm_pages(monkeypatch):
    # proc(5): statm fields are size resident shared ... in pages; resident = 300 pages
    _files(monkeypatch, {"/proc/self/statm": "1000 300 50 1 0 200 0\n"})
    monkeypatch.setattr(rd.os, "sysconf", lambda name: 4096 if name == "SC_PAGE_SIZE" else 0)
    assert rd.rss_bytes() == 300 * 4096  # 1,228,800


def test_rss_without_an_rss_line_falls_back_too(monkeypatch):
    _files(monkeypatch, {"/proc/self/smaps_rollup": "Pss: 5 kB\n", "/proc/self/statm": "10 7 1 1 0 2 0\n"})
    monkeypatch.setattr(rd.os, "sysconf", lambda name: 16384)  # a 16 KiB-page kernel
    assert rd.rss_bytes() == 7 * 16384


def test_mem_available_in_kib(monkeypatch):
    meminfo = "MemTotal:       32000000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n"
    _files(monkeypatch, {"/proc/meminfo": meminfo})
    assert rd.mem_available_bytes() == 20_000_000 * 1024  # 20,480,000,000 B, not MemFree


def test_mem_available_missing_is_an_error(monkeypatch):
    _files(monkeypatch, {"/proc/meminfo": "MemTotal: 1 kB\nMemFree: 1 kB\n"})
    with pytest.raises(OSError, match="no MemAvailable line"):
        rd.mem_available_bytes()


def test_the_real_proc_files_read():
    # this process holds at least torch's libraries resident, and Linux reports some memory free
    assert rd.rss_bytes() > 10 * 2**20
    assert rd.mem_available_bytes() > 0


# ------------------------------------------------------------------ glibc malloc


class FakeLibc:
    """mallinfo2 and mallopt as glibc declares them (malloc.h), with chosen numbers."""

    def __init__(self, info: dict[str, int], mallopt_result: int = 1) -> None:
        self.info = info
        self.mallopt_calls: list[tuple[int, int]] = []
        self.mallopt_result = mallopt_result

    def mallinfo2(self):
        return SimpleNamespace(**self.info)

    def mallopt(self, param: int, value: int) -> int:
        self.mallopt_calls.append((param, value))
        return self.mallopt_result


def _malloc(libc: FakeLibc) -> rd.GlibcMalloc:
    m = object.__new__(rd.GlibcMalloc)
    m.libc = libc
    return m


MALLINFO = dict(arena=1_000_000, uordblks=600_000, hblkhd=4_194_304, keepcost=12_345, fordblks=400_000)


def test_malloc_in_use_and_held():
    # in use = heap blocks in use (uordblks) + mmapped (hblkhd) = 600,000 + 4,194,304
    # held = the heap (arena) + mmapped = 1,000,000 + 4,194,304
    assert _malloc(FakeLibc(MALLINFO)).reading() == rd.AllocatorReading(4_794_304, 5_194_304)
    assert _malloc(FakeLibc(MALLINFO)).heap_top_bytes() == 12_345


def test_pin_mmap_threshold_sets_both_thresholds():
    libc = FakeLibc(MALLINFO)
    assert _malloc(libc).pin_mmap_threshold() is True
    # malloc.h: M_MMAP_THRESHOLD = -3 at 128 KiB; M_TRIM_THRESHOLD = -1 at twice that
    assert libc.mallopt_calls == [(-3, 131_072), (-1, 262_144)]
    libc = FakeLibc(MALLINFO)
    _malloc(libc).pin_mmap_threshold(1 << 20)
    assert libc.mallopt_calls == [(-3, 1 << 20), (-1, 2 << 20)]


def test_pin_mmap_threshold_reports_a_refusal():
    # mallopt returns 0 on error (mallopt(3))
    libc = FakeLibc(MALLINFO, mallopt_result=0)
    assert _malloc(libc).pin_mmap_threshold() is False
    assert libc.mallopt_calls == [(-3, 131_072)]  # the second is not tried


def test_glibc_without_mallinfo2_is_refused(monkeypatch):
    monkeypatch.setattr(rd.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=None))
    with pytest.raises(OSError, match="no mallinfo2"):
        rd.GlibcMalloc()


def test_the_real_glibc_reads():
    m = rd.GlibcMalloc()
    r = m.reading()
    assert 0 < r.allocated <= r.reserved  # live blocks fit in what malloc holds
    assert m.heap_top_bytes() >= 0


# ------------------------------------------------------------------ CUDA allocator, settings


def test_no_allocator_reading_on_the_cpu():
    assert rd.allocator_reading(CPU) is None


def test_allocator_settings(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    assert rd.allocator_settings() is None
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    assert rd.allocator_settings() == "PYTORCH_ALLOC_CONF=expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")  # the CUDA one is named first
    assert rd.allocator_settings() == "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "")  # set but empty: at defaults
    assert rd.allocator_settings() == "PYTORCH_ALLOC_CONF=expandable_segments:True"


# ------------------------------------------------------------------ NVML


class NVMLError(Exception):
    pass


def _fake_pynvml(devices: list[dict], fail_memory: bool = False, driver=b"570.86.15", bus: dict | None = None):
    """A pynvml module over `devices` ({"uuid", "used"}), in NVML's call shapes."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.calls = []
    nv.nvmlInit = lambda: nv.calls.append("init")
    nv.nvmlShutdown = lambda: nv.calls.append("shutdown")
    nv.nvmlDeviceGetCount = lambda: len(devices)
    nv.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    nv.nvmlDeviceGetUUID = lambda h: h["uuid"]

    def memory(h):
        if fail_memory and nv.calls.count("init") and "attached" in nv.calls:
            raise NVMLError("GPU is lost")
        return SimpleNamespace(used=h["used"], total=80 * 2**30)

    nv.nvmlDeviceGetMemoryInfo = memory

    def by_bus(text):
        if bus is None or text not in bus:
            raise NVMLError(f"no device at {text}")
        return bus[text]

    nv.nvmlDeviceGetHandleByPciBusId = by_bus

    def driver_version():
        if driver is None:
            raise NVMLError("not supported")
        return driver

    nv.nvmlSystemGetDriverVersion = driver_version
    return nv


DEVICES = [
    {"uuid": b"GPU-AAAA-1111", "used": 500 * 2**20},
    {"uuid": "GPU-BBBB-2222", "used": 700 * 2**20},
]


def _nvml(monkeypatch, nv, props) -> rd.Nvml:
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.setattr(rd.torch.cuda, "get_device_properties", lambda device: props)
    return rd.Nvml()


def test_nvml_baseline_by_uuid_and_attach_by_uuid(monkeypatch):
    # CUDA_VISIBLE_DEVICES=1: torch's cuda:0 is NVML's device 1; torch gives the UUID without "GPU-"
    nvml = _nvml(monkeypatch, _fake_pynvml(DEVICES), SimpleNamespace(uuid="BBBB-2222"))
    assert nvml.baseline == {"gpu-aaaa-1111": 500 * 2**20, "gpu-bbbb-2222": 700 * 2**20}
    assert nvml.baseline_used is None  # not attached yet
    assert nvml.attach(torch.device("cuda", 0)) is True
    assert nvml.uuid == "gpu-bbbb-2222" and nvml.handle is DEVICES[1]
    assert nvml.baseline_used == 700 * 2**20
    assert nvml.used() == 700 * 2**20


def test_nvml_uuid_spellings():
    assert rd.Nvml._uuid(b"GPU-Ab12") == "gpu-ab12"
    assert rd.Nvml._uuid("MIG-9f") == "mig-9f"  # a MIG instance keeps its prefix
    assert rd.Nvml._uuid("ab12") == "gpu-ab12"  # torch's props.uuid has no prefix


def test_nvml_attach_falls_back_to_the_pci_bus_id(monkeypatch):
    # NVML's bus id text: domain 8 hex digits, bus and device 2 each, function 0
    target = {"uuid": b"GPU-CCCC", "used": 1}
    nv = _fake_pynvml(DEVICES, bus={"0000000A:1B:02.0": target})
    props = SimpleNamespace(uuid="no-such", pci_domain_id=10, pci_bus_id=27, pci_device_id=2)
    nvml = _nvml(monkeypatch, nv, props)
    assert nvml.attach(torch.device("cuda", 0)) is True
    assert nvml.handle is target and nvml.uuid == "gpu-cccc"


def test_nvml_attach_fails_when_nothing_matches(monkeypatch):
    props = SimpleNamespace(uuid="no-such", pci_domain_id=0, pci_bus_id=1, pci_device_id=0)
    nvml = _nvml(monkeypatch, _fake_pynvml(DEVICES), props)
    assert nvml.attach(torch.device("cuda", 0)) is False
    assert nvml.baseline_used is None


def test_nvml_unanswered_readings_are_none(monkeypatch):
    nv = _fake_pynvml(DEVICES, fail_memory=True, driver=None)
    nvml = _nvml(monkeypatch, nv, SimpleNamespace(uuid="AAAA-1111"))
    assert nvml.attach(torch.device("cuda", 0))
    nv.calls.append("attached")
    assert nvml.used() is None
    assert nvml.driver_version() is None
    nvml.close()
    assert nv.calls[-1] == "shutdown"


def test_nvml_driver_version_text(monkeypatch):
    nvml = _nvml(monkeypatch, _fake_pynvml(DEVICES), SimpleNamespace(uuid=""))
    assert nvml.driver_version() == "570.86.15"


# ------------------------------------------------------------------ time


class FakeClock:
    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def perf_counter(self) -> float:
        return self.readings.pop(0)


def test_step_timer_and_timed_once_on_the_cpu(monkeypatch):
    monkeypatch.setattr(rd, "time", FakeClock(10.0, 10.25, 20.0, 20.5, 30.0, 30.125))
    calls = []
    timer = rd.StepTimer(CPU)
    timer.time(lambda: calls.append(1))
    timer.time(lambda: calls.append(2))
    assert timer.seconds() == [0.25, 0.5]
    assert calls == [1, 2]
    assert rd.timed_once(CPU, lambda: calls.append(3)) == 0.125
    assert calls == [1, 2, 3]


class FakeTimer:
    """StepTimer's interface, returning chosen step times; counts the steps it was given."""

    steps: list[float] = []
    timed = 0

    def __init__(self, device) -> None:
        FakeTimer.timed = 0

    def time(self, fn) -> None:
        fn()
        FakeTimer.timed += 1

    def seconds(self) -> list[float]:
        return list(FakeTimer.steps)


def test_copy_bandwidth_counts_read_and_write(monkeypatch):
    # median of (0.004, 0.001, 0.002) = 0.002 s; a 1,000,000 B copy reads and writes 2,000,000 B:
    # 2e6 / 0.002 / 1e9 = 1.0 GB/s
    FakeTimer.steps = [0.004, 0.001, 0.002]
    monkeypatch.setattr(rd, "StepTimer", FakeTimer)
    reading = rd.copy_bandwidth(CPU, 1_000_000, 3)
    assert (reading.gbps, reading.buffer_bytes, reading.repeats) == (1.0, 1_000_000, 3)
    assert FakeTimer.timed == 3


def test_copy_bandwidth_warms_up_twice_then_times_each_repeat(monkeypatch):
    # two untimed copies first, then one per repeat: 2 + 3 = 5 copies into the destination
    copies = []

    class CountingDestination:
        def __init__(self, tensor):
            self.tensor = tensor

        def copy_(self, src):
            copies.append(1)
            return self.tensor.copy_(src)

    empty_like = torch.empty_like
    monkeypatch.setattr(rd.torch, "empty_like", lambda like: CountingDestination(empty_like(like)))
    FakeTimer.steps = [0.001]
    monkeypatch.setattr(rd, "StepTimer", FakeTimer)
    rd.copy_bandwidth(CPU, 4096, 3)
    assert len(copies) == 5 and FakeTimer.timed == 3


def test_settle_collects_reference_cycles_unless_told_not_to():
    import gc
    import weakref

    class Holder:
        pass

    gc.disable()  # only settle may collect here
    try:
        for collect, alive in ((False, True), (True, False)):
            a = Holder()
            a.self, a.tensor = a, torch.zeros(4)  # a cycle: refcounting alone never frees it
            ref = weakref.ref(a)
            del a
            rd.settle(CPU, collect=collect)
            assert (ref() is not None) is alive
        a = Holder()
        a.self = a
        ref = weakref.ref(a)
        del a
        rd.settle(CPU)  # collecting is the default
        assert ref() is None
    finally:
        gc.enable()


def test_copy_bandwidth_really_copies():
    reading = rd.copy_bandwidth(CPU, 1 << 20, 2)
    assert reading.gbps > 0 and reading.buffer_bytes == 1 << 20 and reading.repeats == 2
