"""What a user reads from `kvplan measure` (kvplan/measure/report.py): the table rows with
their difference columns, the summary lines, the notes and the --tolerance gate.

Pure formatting of given readings: the records below are filled by hand (no torch, no
measurement), and every expected string is worked out in the comment beside it from the
units' rules: KiB = 1,024 B, two decimals (`f"{x:.2f}"`); seconds as µs below 1 ms, ms
below 1 s; differences are measured - predicted, and the error % is that over predicted.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvplan.measure.report import (
    ALLOCATOR_NOTE,
    RSS_NOTE,
    KindReading,
    MeasureReport,
    RunReading,
    error_pct,
    fmt_seconds,
    memory_comparisons,
    tolerance_failures,
)
from kvplan.cli.measure_report import report_tables, run_rows, run_title, summary_lines

# A 3-layer model (2 sliding-window layers of 8 slots, 1 full layer), fp32, 2 KV heads x 16,
# context 20 + 3 decode steps = 23 tokens, batch 2. One token of one layer: K and V of
# 2 heads x 16 x 4 B = 256 B. Predicted: sliding 2 layers x 8 slots x 2 seqs x 256 = 8,192 B;
# full 1 x 23 x 2 x 256 = 11,776 B; total 19,968 B. The full layer's tensors are read here as
# 12,288 B (24 slots: one too many), so the table must show the +512 B.
CPU_RUN = RunReading(
    context=20,
    decode_steps=3,
    total_tokens=23,
    batch=2,
    predicted_kv_bytes=19_968,
    measured_kv_bytes=20_480,
    kv_by_kind=(
        KindReading("sliding_attention", 2, 8_192, 8_192),
        KindReading("full_attention", 1, 11_776, 12_288),
    ),
    allocated_delta_bytes=21_120,  # malloc in use
    reserved_delta_bytes=135_168,  # malloc held: the heap grew by 132 KiB
    allocator_rounding_bytes=96,  # 6 heap chunks, each tensor + 8 B rounded up to 16 B: +16 B each
    allocator_segment_bytes=0,
    allocator_segments=0,
    predicted_allocated_delta_bytes=20_064,  # 19,968 + 96
    predicted_reserved_delta_bytes=20_064,
    nvml_used_before_bytes=None,
    nvml_used_after_bytes=None,
    nvml_used_delta_bytes=None,
    rss_delta_bytes=139_264,  # 34 pages of 4 KiB
    peak_allocated_bytes=None,
    predicted_peak_bytes=69_206_016,
    weight_bytes_read_per_step=1_000_000,
    kv_bytes_read_per_step=19_968,
    bytes_read_per_step=1_019_968,
    decode_flops_per_step=2_000_000,
    predicted_decode_memory_s=1.019968e-4,  # 1,019,968 B / 10 GB/s read
    predicted_decode_compute_s=2e-6,  # 2,000,000 FLOPs / 1 TFLOP/s GEMV
    decode_bound="memory",
    gemv_tflops=1.0,
    predicted_decode_step_s=1.019968e-4,  # the larger of the two
    measured_decode_step_s=1.5e-4,
    decode_step_min_s=1.4e-4,
    decode_step_max_s=1.7e-4,
    rounds=3,
    stable=True,
    decode_round_medians_s=(1.48e-4, 1.5e-4, 1.53e-4),
    prefill_rounds_s=(0.0101, 0.010, 0.0099),
    decode_spread=0.05 / 1.5,  # (1.53 - 1.48) / 1.50 = 3.33%
    prefill_spread=0.0002 / 0.010,  # (10.1 - 9.9) / 10.0 = 2.0%
    decode_mode="eager",
    achieved_gbps=6.7998,  # 1,019,968 B / 150 µs
    bandwidth_utilisation=0.67998,
    read_gbps=10.0,
    probe_rounds=0,
    prefill_flops=2_500_000_000,
    gemm_tflops=0.2,  # 2.5 GFLOP / 0.2 TFLOP/s = 12.5 ms
    predicted_prefill_s=0.0125,
    measured_prefill_s=0.010,
)

CPU_ROWS = [
    # 19,968 / 1,024 = 19.50; 20,480 / 1,024 = 20.00; +512 B (under 1 KiB: in bytes); 512 / 19,968 = +2.56%
    ["KV cache: tensor storage", "19.50 KiB", "20.00 KiB", "+512 B", "+2.56%"],
    # 8,192 B = 8.00 KiB both: a zero difference has no sign
    ["  sliding window (2 layers)", "8.00 KiB", "8.00 KiB", "0 B", "+0.00%"],
    # 11,776 / 1,024 = 11.50; 12,288 / 1,024 = 12.00; 512 / 11,776 = +4.35%
    ["  full attention (1 layer)", "11.50 KiB", "12.00 KiB", "+512 B", "+4.35%"],
    # predicted 20,064 / 1,024 = 19.59375 -> 19.59; 21,120 / 1,024 = 20.625 -> 20.62 (half to even);
    # 21,120 - 20,064 = 1,056 B = 1.03 KiB; 1,056 / 20,064 = +5.26%
    ["KV cache: malloc in-use Δ", "19.59 KiB", "20.62 KiB", "+1.03 KiB", "+5.26%"],
    # rounding: modelled +96 B; read = in use - storage = 21,120 - 20,480 = +640 B; 640 - 96 = +544 B
    ["  of which allocator rounding (modelled)", "+96 B", "+640 B", "+544 B", ""],
    # 135,168 / 1,024 = 132.00; 135,168 - 20,064 = 115,104 B = 112.41 KiB; 115,104 / 20,064 = +573.68%
    ["KV cache: malloc held Δ", "19.59 KiB", "132.00 KiB", "+112.41 KiB", "+573.68%"],
    # RSS against the predicted allocation: 139,264 / 1,024 = 136.00; 119,200 B = 116.41 KiB; +594.10%
    ["KV cache: process RSS Δ", "19.59 KiB", "136.00 KiB", "+116.41 KiB", "+594.10%"],
    # 101.9968 µs -> 102.0; 150.0 µs; +48.0032 µs; 150 / 101.9968 - 1 = +47.06%; memory 102.0 µs > compute 2.0 µs
    ["decode step (median of rounds, eager), memory-bound", "102.0 µs", "150.0 µs", "+48.0 µs", "+47.06%"],
    # 1,019,968 / 1,024 = 996.06 KiB; 6.7998 GB/s -> 6.8; 0.67998 of the 10 GB/s read bandwidth -> 68.0%
    ["decode bytes read per step", "996.06 KiB", "6.8 GB/s achieved", "", "68.0% of read"],
    ["  weights read", "976.56 KiB", "", "", ""],  # 1,000,000 / 1,024 = 976.5625
    ["  KV cache read", "19.50 KiB", "", "", ""],
    ["  memory time (bytes / read 10.0 GB/s)", "102.0 µs", "", "", ""],  # 1,019,968 B / 10 GB/s
    # 2,000,000 FLOPs = 2.0 MFLOP; 1 TFLOP/s = 1,000.0 GFLOP/s; 2e6 / 1e12 = 2.0 µs
    ["  compute time (2.0 MFLOP / GEMV 1,000.0 GFLOP/s)", "2.0 µs", "", "", ""],
    ["  spread of the judged rounds", "", "3.3% (range / median)", "", ""],  # (153 - 148) / 150
    # 2.5e9 FLOP = 2.5 GFLOP at 0.2 TFLOP/s = 200.0 GFLOP/s: 12.5 ms predicted, 10 ms measured: -2.500 ms, -20.00%
    ["prefill, median of rounds (2.5 GFLOP / GEMM 200.0 GFLOP/s)", "12.500 ms", "10.000 ms", "-2.500 ms", "-20.00%"],
    ["  spread of the judged rounds", "", "2.0% (range / median)", "", ""],  # (10.1 - 9.9) / 10.0
    ["timing rounds", "", "3 rounds, stable", "", ""],
]


def _report(run: RunReading, **fields) -> MeasureReport:
    data = dict(
        kvplan_version="0.0.0",
        model="tiny",
        layers_run=3,
        layers_total=3,
        dtype="fp32",
        kv_cache_dtype="fp32",
        state_dtype="fp32",
        device="cpu",
        allocator="glibc malloc",
        device_name="x86_64",
        driver_version=None,
        cuda_version=None,
        torch_version="2.9.0",
        seed=0,
        read_bandwidth_gbps=10.0,
        read_buffer_bytes=8 << 20,
        copy_bandwidth_gbps=7.0,
        copy_buffer_bytes=8 << 20,
        probes=(),
        parameters_run=1_000,
        predicted_weight_bytes=4_000,
        measured_weight_bytes=4_000,
        weights_allocated_delta_bytes=4_160,
        weights_predicted_allocated_delta_bytes=4_112,
        weights_nvml_delta_bytes=None,
        weights_rss_delta_bytes=8_192,
        nvml_used_before_torch_bytes=None,
        cuda_context_bytes=None,
        memory_needed_bytes=3 * 2**30,
        memory_available_bytes=20 * 2**30,
        notes=("a note",),
        runs=(run,),
    )
    data.update(fields)
    return MeasureReport(**data)


def test_cpu_run_rows():
    assert run_rows(CPU_RUN, exact=False, cuda=False) == CPU_ROWS


def test_a_run_predicted_from_probes_between_rounds_says_so():
    rows = run_rows(replace(CPU_RUN, read_gbps=12.5, probe_rounds=3), exact=False, cuda=False)
    assert ["  memory time (bytes / read 12.5 GB/s, median of the probes after its 3 judged rounds)", "102.0 µs", "", "", ""] in rows
    rows = run_rows(replace(CPU_RUN, read_gbps=12.5, probe_rounds=1), exact=False, cuda=False)
    assert ["  memory time (bytes / read 12.5 GB/s, probed after its round)", "102.0 µs", "", "", ""] in rows


def test_cpu_run_rows_with_exact_bytes():
    # --bytes adds the exact count to every size of 1 KiB or more, and to a signed difference
    rows = run_rows(CPU_RUN, exact=True, cuda=False)
    assert rows[0] == ["KV cache: tensor storage", "19.50 KiB (19,968 B)", "20.00 KiB (20,480 B)", "+512 B", "+2.56%"]
    assert rows[3] == ["KV cache: malloc in-use Δ", "19.59 KiB (20,064 B)", "20.62 KiB (21,120 B)", "+1.03 KiB (1,056 B)", "+5.26%"]
    assert rows[4] == ["  of which allocator rounding (modelled)", "+96 B", "+640 B", "+544 B", ""]


def test_cpu_run_title():
    assert run_title(CPU_RUN) == "context 20 + 3 decode steps = 23 tokens · batch 2"
    wide = replace(CPU_RUN, context=4096, decode_steps=1000, total_tokens=5096, batch=1024)
    assert run_title(wide) == "context 4,096 + 1,000 decode steps = 5,096 tokens · batch 1,024"


def test_one_kind_has_no_per_kind_rows_and_no_allocator_rows_without_readings():
    run = replace(
        CPU_RUN,
        measured_kv_bytes=19_968,
        kv_by_kind=(KindReading("full_attention", 3, 19_968, 19_968),),
        allocated_delta_bytes=None,
        reserved_delta_bytes=None,
        allocator_rounding_bytes=None,
        predicted_allocated_delta_bytes=None,
        predicted_reserved_delta_bytes=None,
        rss_delta_bytes=None,
    )
    rows = run_rows(run, exact=False, cuda=False)
    assert rows[0] == ["KV cache: tensor storage", "19.50 KiB", "19.50 KiB", "0 B", "+0.00%"]
    assert rows[1][0] == "decode step (median of rounds, eager), memory-bound"


def test_rss_without_a_modelled_allocator_is_held_to_the_cache_bytes():
    # no allocator model: the RSS reading is compared with the predicted cache itself (19,968 B);
    # 139,264 - 19,968 = 119,296 B = 116.50 KiB; 139,264 / 19,968 - 1 = +597.44%
    run = replace(CPU_RUN, allocated_delta_bytes=None, allocator_rounding_bytes=None, predicted_allocated_delta_bytes=None)
    rows = run_rows(run, exact=False, cuda=False)
    assert ["KV cache: process RSS Δ", "19.50 KiB", "136.00 KiB", "+116.50 KiB", "+597.44%"] in rows


# A CUDA run of a 2-layer full-attention model, same shapes: 2 x 23 x 2 x 256 = 23,552 B in 4
# tensors of 5,888 B; the caching allocator rounds each up to 512 B: 6,144 B, +256 B each.
CUDA_RUN = replace(
    CPU_RUN,
    predicted_kv_bytes=23_552,
    measured_kv_bytes=23_552,
    kv_by_kind=(KindReading("full_attention", 2, 23_552, 23_552),),
    allocated_delta_bytes=24_576,
    reserved_delta_bytes=2 * 2**20,
    allocator_rounding_bytes=1_024,
    allocator_segment_bytes=2 * 2**20,
    allocator_segments=1,
    predicted_allocated_delta_bytes=24_576,  # 23,552 + 4 x 256
    predicted_reserved_delta_bytes=2 * 2**20,  # one small-pool segment
    nvml_used_before_bytes=1_000 * 2**20,
    nvml_used_after_bytes=1_004 * 2**20,
    nvml_used_delta_bytes=4 * 2**20,
    rss_delta_bytes=None,
    peak_allocated_bytes=3 * 2**20,
    predicted_peak_bytes=66 * 2**20,
    decode_mode="cuda-graph",
    measured_decode_step_s=1.019968e-4 / 2,  # twice as fast as predicted
    verify_max_abs_logit_diff=1.5e-5,
    verify_logit_scale=12.3,
    verify_tolerance=1e-4,
)


def test_cuda_run_rows():
    rows = run_rows(CUDA_RUN, exact=False, cuda=True)
    assert rows[:6] == [
        ["KV cache: tensor storage", "23.00 KiB", "23.00 KiB", "0 B", "+0.00%"],  # 23,552 / 1,024 = 23
        # 24,576 / 1,024 = 24.00, read exactly as modelled
        ["KV cache: torch allocated Δ", "24.00 KiB", "24.00 KiB", "0 B", "+0.00%"],
        # rounding read = 24,576 - 23,552 = 1,024 B: as modelled
        ["  of which allocator rounding (modelled)", "+1.00 KiB", "+1.00 KiB", "0 B", ""],
        ["KV cache: torch reserved Δ", "2.00 MiB", "2.00 MiB", "0 B", "+0.00%"],
        # NVML against the predicted segments: 4 MiB read, 2 MiB predicted: +2.00 MiB, +100.00%
        ["KV cache: NVML used Δ", "2.00 MiB", "4.00 MiB", "+2.00 MiB", "+100.00%"],
        # the peak beside the refusal's margin: 3 - 66 = -63 MiB; 3 / 66 - 1 = -95.45%
        ["peak allocated (prefill + decode)", "66.00 MiB (margin)", "3.00 MiB", "-63.00 MiB", "-95.45%"],
    ]
    # 101.9968 µs predicted, 50.9984 µs measured: -50.9984 µs, -50.00%
    assert rows[6] == ["decode step (median of rounds, cuda-graph), memory-bound", "102.0 µs", "51.0 µs", "-51.0 µs", "-50.00%"]
    # the tolerance times the logit scale (12.3 -> 12.30); 1.5e-05 <= 1e-4 x 12.3: pass
    assert rows[-1] == ["cached decode vs recompute", "max |Δlogit| ≤ 0.0001 × 12.30", "1.5e-05", "", "pass"]


def test_verify_fails_past_the_scaled_tolerance_and_scale_is_at_least_one():
    # at the bound exactly (1e-4 x 2.0 = 2e-4) it passes; the scale below 1 counts as 1
    assert replace(CUDA_RUN, verify_max_abs_logit_diff=2e-4, verify_logit_scale=2.0).verify_ok is True
    assert replace(CUDA_RUN, verify_max_abs_logit_diff=2.5e-4, verify_logit_scale=2.0).verify_ok is False
    small = replace(CUDA_RUN, verify_max_abs_logit_diff=0.9e-4, verify_logit_scale=0.5)
    assert small.verify_ok is True  # 0.9e-4 <= 1e-4 x max(0.5, 1)
    failed = replace(CUDA_RUN, verify_max_abs_logit_diff=1.5e-4, verify_logit_scale=0.5)
    assert failed.verify_ok is False  # 1.5e-4 > 1e-4 x 1 (not x 0.5)
    assert run_rows(failed, exact=False, cuda=True)[-1] == [
        "cached decode vs recompute", "max |Δlogit| ≤ 0.0001 × 1.00", "0.00015", "", "FAIL"]
    assert CPU_RUN.verify_ok is None


@pytest.mark.parametrize(
    "measured, predicted, expected",
    [(110, 100, 0.1), (90, 100, -0.1), (0, 0, 0.0), (5, 0, float("inf")), (0, 100, -1.0)],
)
def test_error_pct(measured, predicted, expected):
    assert error_pct(measured, predicted) == pytest.approx(expected)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.5e-6, "0.5 µs"),
        (999.9e-6, "999.9 µs"),
        (1e-3, "1.000 ms"),  # 1 ms is no longer under 1 ms
        (0.25, "250.000 ms"),
        (1.0, "1.000 s"),
        (1234.5, "1,234.500 s"),
    ],
)
def test_fmt_seconds(seconds, text):
    assert fmt_seconds(seconds) == text


@pytest.mark.parametrize(
    "n, exact, text",
    [
        (0, False, "0 B"),  # no sign on zero
        (1, False, "+1 B"),
        (-1, False, "-1 B"),
        (1023, True, "+1,023 B"),  # under 1 KiB: bytes, nothing to add
        (1024, False, "+1.00 KiB"),
        (1024, True, "+1.00 KiB (1,024 B)"),
        (-1024, True, "-1.00 KiB (-1,024 B)"),
    ],
)
def test_signed_differences(n, exact, text):
    from kvplan.cli.measure_report import _signed_bytes

    assert _signed_bytes(n, exact) == text


def test_an_error_against_a_zero_prediction_is_a_dash():
    run = replace(CPU_RUN, kv_by_kind=(KindReading("full_attention", 2, 0, 512), KindReading("state", 1, 0, 0)))
    rows = run_rows(run, exact=False, cuda=False)
    assert rows[1] == ["  full attention (2 layers)", "0 B", "512 B", "+512 B", "—"]
    assert rows[2] == ["  state (SSM) (1 layer)", "0 B", "0 B", "0 B", "+0.00%"]


def test_memory_comparisons_pair_each_reading_with_its_prediction():
    # CUDA: allocated against predicted + rounding; reserved and NVML against the new segments
    assert memory_comparisons(CUDA_RUN, cuda=True) == [
        ("KV cache: tensor storage", 23_552, 23_552),
        ("KV cache: torch allocated Δ", 24_576, 24_576),
        ("KV cache: torch reserved Δ", 2 * 2**20, 2 * 2**20),
        ("KV cache: NVML used Δ", 2 * 2**20, 4 * 2**20),
    ]
    # without a model of the allocator both fall back to the predicted cache bytes
    bare = replace(CUDA_RUN, predicted_allocated_delta_bytes=None, predicted_reserved_delta_bytes=None)
    assert memory_comparisons(bare, cuda=True)[1:] == [
        ("KV cache: torch allocated Δ", 23_552, 24_576),
        ("KV cache: torch reserved Δ", 23_552, 2 * 2**20),
        ("KV cache: NVML used Δ", 23_552, 4 * 2**20),
    ]


def test_tolerance_gate_lines():
    report = _report(CPU_RUN)
    # gated: storage +2.56%, in use +5.26%, RSS +594.10%, decode +47.06%; held (+573.68%) is not gated
    assert tolerance_failures(report, 0.05) == [
        "context 20, batch 2: KV cache: malloc in-use Δ 20.62 KiB vs 19.59 KiB predicted (+5.26%)",
        "context 20, batch 2: KV cache: process RSS Δ 136.00 KiB vs 19.59 KiB predicted (+594.10%)",
        "context 20, batch 2: decode step 150.0 µs vs 102.0 µs predicted (+47.06%)",
    ]
    # an error exactly at the tolerance passes: storage's 512 / 19,968
    assert not any("tensor storage" in line for line in tolerance_failures(report, 512 / 19_968))
    assert any("tensor storage" in line for line in tolerance_failures(report, 0.025))
    # a run 2x faster than predicted fails by -50.00% (the gate is two-sided)
    fast = _report(replace(CPU_RUN, measured_decode_step_s=1.019968e-4 / 2))
    assert "context 20, batch 2: decode step 51.0 µs vs 102.0 µs predicted (-50.00%)" in tolerance_failures(fast, 0.05)
    assert tolerance_failures(fast, 10.0) == []


def test_tolerance_gate_on_cuda_holds_nvml_not_reserved():
    report = _report(CUDA_RUN, device="cuda:0")
    # NVML +100% fails; reserved (+0%) and the peak are not gated; decode -50.00%
    assert tolerance_failures(report, 0.05) == [
        "context 20, batch 2: KV cache: NVML used Δ 4.00 MiB vs 2.00 MiB predicted (+100.00%)",
        "context 20, batch 2: decode step 51.0 µs vs 102.0 µs predicted (-50.00%)",
    ]


def test_cpu_summary_lines():
    assert summary_lines(_report(CPU_RUN), exact=False) == [
        ("model", "tiny · 3 of 3 layers · fp32 weights · KV fp32 · state fp32 · seed 0"),
        ("device", "cpu · x86_64"),
        ("software", "torch 2.9.0"),
        # 4,000 / 1,024 = 3.906 -> 3.91 KiB
        ("weights", "1,000 parameters · predicted 3.91 KiB · tensor storage 3.91 KiB"),
        # 8,192 = 8.00 KiB; 4,160 / 1,024 = 4.0625 -> 4.06; 4,112 / 1,024 = 4.016 -> 4.02
        ("  weights, process", "RSS Δ 8.00 KiB · malloc in-use Δ 4.06 KiB (predicted with the allocator's rounding 4.02 KiB)"),
        ("memory check", "needs 3.00 GiB of 20.00 GiB available"),
    ]


def test_cuda_summary_lines():
    report = _report(
        CUDA_RUN,
        device="cuda:0",
        device_name="NVIDIA H100",
        cuda_version="12.8",
        driver_version="570.1",
        weights_allocated_delta_bytes=4_608,  # 4,000 B rounded up to 512 B: 9 blocks
        weights_predicted_allocated_delta_bytes=4_608,
        weights_nvml_delta_bytes=2 * 2**20,
        weights_rss_delta_bytes=None,
        nvml_used_before_torch_bytes=0,
        cuda_context_bytes=500 * 2**20,
    )
    lines = dict(summary_lines(report, exact=True))
    assert lines["device"] == "cuda:0 · NVIDIA H100"
    assert lines["software"] == "torch 2.9.0 · CUDA 12.8 · driver 570.1"
    assert lines["  weights, device"] == (
        "torch allocated Δ 4.50 KiB (4,608 B) (predicted with the allocator's rounding 4.50 KiB (4,608 B))"
        " · NVML used Δ 2.00 MiB (2,097,152 B)"
    )
    assert "  weights, process" not in lines
    assert lines["CUDA context"] == "500.00 MiB (524,288,000 B) (NVML, before torch: 0 B used)"


def test_report_tables_end_with_the_notes():
    *_, notes = report_tables(_report(CPU_RUN), exact=False)
    assert notes == f"note: a note\nnote: {RSS_NOTE}"
    *_, notes = report_tables(_report(CUDA_RUN, device="cuda:0", notes=()), exact=False)
    assert notes == f"note: {ALLOCATOR_NOTE}"


def test_json_runs_carry_the_device_fields():
    data = _report(CUDA_RUN, device="cuda:0", device_name="NVIDIA H100").to_dict()
    (run,) = data["runs"]
    assert run["device"] == "cuda:0" and run["device_name"] == "NVIDIA H100" and run["model"] == "tiny"
    assert run["verify_ok"] is True and run["nvml_used_delta_bytes"] == 4 * 2**20
    assert data["memory_needed_bytes"] == 3 * 2**30
