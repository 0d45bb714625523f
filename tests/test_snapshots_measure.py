"""What users read of `kvplan measure`, kept as reviewed snapshot files (as tests/test_snapshots.py).

`measure` reads a clock and the process's memory, so two runs never print the same figures. Here
the clock is given: every probe and step really runs (the real model, cache and probes, their
method text included), but the timers report chosen seconds, so each timing figure, prediction and
error is a fixed number and the whole table is pinned. What stays the machine's own is masked
with `…`: the CPU's name, torch's version, and the process-level memory readings (RSS Δ, malloc
in-use / held Δ: glibc's heap and Python's arenas move them; tests/test_measure_run.py checks their
rules). Byte figures the calculator predicts and the cache's tensor storage are exact and kept.
Rows are compared with runs of spaces collapsed, since a masked figure's width sets the columns'.

A deliberate change of output: rerun with `KVPLAN_UPDATE_SNAPSHOTS=1` and review the diff of
`tests/snapshots/measure/` in the commit.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")

from cli_helpers import run_cli  # noqa: E402
from kvplan.measure import readings as rd  # noqa: E402

SNAPSHOTS = Path(__file__).parent / "snapshots" / "measure"

# The test spec of tests/test_measure_run.py: hidden 64, 4 heads x 16, 2 KV heads, MLP 128, vocab 256, fp32.
TINY = dict(
    name="tiny", source="test", num_parameters=10**10, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=256, intermediate_size=128, torch_dtype="float32",
)
SPECS = {
    "sliding": dict(num_hidden_layers=3, layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=8),
    "state": dict(layer_types=["mamba", "full_attention"], mamba_d_state=8, mamba_d_conv=4, mamba_expand=2),
}

# name -> (spec, arguments, seconds of one GEMV product in the probe)
CASES = {
    # a window shorter than the context, three rounds that agree, a GEMV fast enough to leave the step memory-bound
    "measure-sliding": ("sliding", "--context 16 --decode-steps 3 --warmup-steps 1", 1e-6),
    # a Mamba layer's state beside attention, exact bytes, one round, a slow GEMV: the step is compute-bound
    "measure-state-bytes": ("state", "--context 12 --batch 2 --decode-steps 2 --warmup-steps 0 --max-rounds 1 --bytes", 1e-4),
}

STEP_SECONDS = [0.003, 0.001, 0.002]  # every StepTimer: median 2 ms, best 1 ms, range 2 ms
ONCE_SECONDS = 0.005  # every synchronised single call: a prefill, a GEMM row search


class _Clock:
    """StepTimer's interface: runs each step for real and reports the given seconds."""

    seconds_each: list[float] = STEP_SECONDS

    def __init__(self, device) -> None:
        pass

    def time(self, fn) -> None:
        fn()

    def seconds(self) -> list[float]:
        return list(self.seconds_each)


def _given_clock(monkeypatch, gemv_seconds: float) -> None:
    class GemvClock(_Clock):
        seconds_each = [gemv_seconds]

    real_read, real_linear = rd.read_bandwidth, rd.linear_throughput

    def read_bandwidth(device, buffer_bytes, repeats):
        return real_read(device, buffer_bytes, repeats, timer=_Clock)

    def linear_throughput(device, dtype, rows, in_features, out_features, repeats, **_):
        return real_linear(device, dtype, rows, in_features, out_features, repeats, timer=GemvClock)

    def timed_once(device, fn):
        fn()
        return ONCE_SECONDS

    monkeypatch.setattr(rd, "StepTimer", _Clock)
    monkeypatch.setattr(rd, "read_bandwidth", read_bandwidth)
    monkeypatch.setattr(rd, "linear_throughput", linear_throughput)
    monkeypatch.setattr(rd, "timed_once", timed_once)
    # the probes' buffer is free memory / 16 (100 MiB -> 6.25 MiB); the memory check prints it
    monkeypatch.setattr(rd, "mem_available_bytes", lambda: 100 * 2**20)


MASKED_ROWS = ("KV cache: malloc", "KV cache: process", "of which allocator rounding")


def _mask(text: str) -> str:
    """The machine's own figures as `…`. A table row keeps its first column as printed (the labels,
    a fixed width) and its other cells stripped; a rule collapses to one stroke per column."""
    out = []
    for line in text.splitlines():
        if line[:1] in ("│", "┃"):
            sep = line[0]
            cells = line.split(sep)[1:-1]
            rest = [c.strip() for c in cells[1:]]
            if cells[0].strip().startswith(MASKED_ROWS):  # reading │ predicted │ measured │ error │ error %
                rest[1:] = ["…" if c else c for c in rest[1:]]
            line = sep + cells[0] + sep + "".join(f" {c} {sep}" if c else f" {sep}" for c in rest)
        elif line[:1] in ("┏", "┡", "└"):
            line = re.sub(r"([━─])\1+", r"\1", line)
        else:
            line = re.sub(r"^(device +cpu · ).*", r"\1…", line)
            line = re.sub(r"^(software +torch ).*", r"\1…", line)
            line = re.sub(r"^(  weights, process +RSS Δ )[^·]*(· malloc in-use Δ ).*?( \(predicted|$)", r"\1… \2…\3", line)
        out.append(line.rstrip())
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_measure_output_matches_its_snapshot(name, capsys, monkeypatch, tmp_path):
    kind, args, gemv_seconds = CASES[name]
    _given_clock(monkeypatch, gemv_seconds)
    monkeypatch.setenv("COLUMNS", "200")  # no label wraps
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({**TINY, **SPECS[kind]}))
    result = run_cli(capsys, "measure", str(spec), "--device", "cpu", *shlex.split(args))
    shown = f"$ kvplan measure tiny.yaml --device cpu {args}\nexit {result.exit_code}\n"
    text = shown + "--- stdout\n" + _mask(result.stdout) + "--- stderr\n" + _mask(result.stderr)
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("KVPLAN_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no snapshot {path.name}: run with KVPLAN_UPDATE_SNAPSHOTS=1 and review it"
    assert text == path.read_text(encoding="utf-8")


def test_every_measure_snapshot_file_has_a_case():
    assert sorted(p.stem for p in SNAPSHOTS.glob("*.txt")) == sorted(CASES)


def test_the_mask_leaves_the_predictions():
    row = "│ KV cache: malloc in-use Δ   │   8.84 KiB │   12.38 KiB │   +3.53 KiB │   +39.93% │"
    assert _mask(row) == "│ KV cache: malloc in-use Δ   │ 8.84 KiB │ … │ … │ … │\n"
    row = "│   of which allocator rounding (modelled) │      +96 B │  +3.62 KiB │   +3.53 KiB │         │"
    assert _mask(row) == "│   of which allocator rounding (modelled) │ +96 B │ … │ … │ │\n"
    row = "│ decode step (median of rounds, eager), memory-bound │    92.7 µs │ 2.000 ms │ +1.907 ms │ +2057.61% │"
    assert _mask(row) == "│ decode step (median of rounds, eager), memory-bound │ 92.7 µs │ 2.000 ms │ +1.907 ms │ +2057.61% │\n"
    assert _mask("  weights, process    RSS Δ 864.00 KiB · malloc in-use Δ 607.95 KiB (predicted with the allocator's "
                 "rounding 562.22 KiB)") == (
        "  weights, process    RSS Δ … · malloc in-use Δ … (predicted with the allocator's rounding 562.22 KiB)\n")
