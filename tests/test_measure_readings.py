"""The probes of `kvplan measure` (kvplan/measure/readings.py): the arithmetic each one reports.

The clock is replaced by a fake whose seconds are given, so bytes / time is checked
exactly; the tensor work itself still runs (on the CPU).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kvplan.measure import readings as rd  # noqa: E402

CPU = torch.device("cpu")


class FakeTimer:
    """A StepTimer whose passes take the given seconds (each pass still runs)."""

    def __init__(self, seconds: list[float]) -> None:
        self.given = list(seconds)
        self.calls = 0

    def __call__(self, device: torch.device) -> "FakeTimer":
        return self

    def time(self, fn) -> None:
        fn()
        self.calls += 1

    def seconds(self) -> list[float]:
        return self.given[: self.calls]


def test_read_bandwidth_is_bytes_read_over_the_best_pass():
    timer = FakeTimer([0.004, 0.002, 0.003])
    # 1,000,003 B holds 250,000 whole float32 elements = 1,000,000 B read per pass;
    # best pass 0.002 s -> 1e6 / 0.002 / 1e9 = 0.5 GB/s
    reading = rd.read_bandwidth(CPU, 1_000_003, 3, timer=timer)
    assert timer.calls == 3
    assert reading.buffer_bytes == 1_000_000
    assert reading.gbps == pytest.approx(0.5)
    assert reading.repeats == 3
    # 1,000,000 B / 1024 = 976.5625 KiB
    assert reading.method == (
        "float32 .sum() over a 976.56 KiB buffer, best of 3 after 2 warm-up passes; bytes read / time"
    )


def test_read_bandwidth_takes_the_fastest_not_the_median():
    # median 0.004 s would give 0.25 GB/s; the best, 0.001 s, gives 1.0 GB/s
    reading = rd.read_bandwidth(CPU, 1_000_000, 3, timer=FakeTimer([0.004, 0.005, 0.001]))
    assert reading.gbps == pytest.approx(1.0)


def test_copy_bandwidth_says_how_it_was_taken():
    reading = rd.copy_bandwidth(CPU, 1 << 20, 3)
    assert reading.method == "dst.copy_(src) of a 1.00 MiB buffer, median of 3 after 2 warm-up copies; (read + write bytes) / time"
    assert reading.gbps > 0


def test_linear_throughput_is_flops_over_the_best_product():
    timer = FakeTimer([3e-6, 1e-6, 2e-6])
    # 2 x rows 2 x in 8 x out 16 = 512 FLOPs per product; best 1e-6 s -> 5.12e8 FLOP/s
    reading = rd.linear_throughput(CPU, torch.bfloat16, 2, 8, 16, 3, timer=timer)
    assert timer.calls == 3
    assert (reading.rows, reading.in_features, reading.out_features) == (2, 8, 16)
    assert reading.flops_per_s == pytest.approx(5.12e8)
    assert reading.method == (
        "linear: 2 x 8 input, 16 x 8 weight, bfloat16, best of 3 after 2 warm-ups; 2 x rows x in x out / time"
    )


def test_gemm_takes_every_prompt_row_when_few():
    reading = rd.gemm_throughput(CPU, torch.float32, 64, 8, 16)
    assert reading.rows == 64  # under GEMM_START_ROWS (128): all of them
    assert "rows stop" not in reading.method


def test_gemm_rows_stop_once_a_product_takes_the_target():
    # target 0 s: the first size (128 rows) already takes at least that long
    reading = rd.gemm_throughput(CPU, torch.float32, 1_000, 8, 16, target_s=0.0)
    assert reading.rows == 128
    assert reading.method.endswith("(rows stop at 128 of the 1,000 prompt rows: one product took at least 0 ms)")


def test_the_gemv_probe_cycles_through_weight_copies_past_the_cache():
    import torch

    from kvplan.measure.readings import linear_throughput

    cpu = torch.device("cpu")
    # a 64 x 32 fp32 weight is 8,192 B: 40,000 B of rotation take ceil(40,000 / 8,192) = 5 copies
    r = linear_throughput(cpu, torch.float32, 1, 32, 64, 3, rotate_bytes=40_000)
    assert "cycling through 5 copies of the weight" in r.method and "after 5 warm-ups" in r.method
    assert r.flops_per_s > 0 and (r.rows, r.in_features, r.out_features) == (1, 32, 64)
    # no rotation asked, or a weight already as large as it: one weight, as before
    assert "cycling" not in linear_throughput(cpu, torch.float32, 1, 32, 64, 3).method
    assert "cycling" not in linear_throughput(cpu, torch.float32, 1, 32, 64, 3, rotate_bytes=8_192).method
