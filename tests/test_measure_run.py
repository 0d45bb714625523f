"""`kvplan measure` end to end, on the CPU for real: readings, JSON, gates, refusal, errors.

The NVML path runs only where torch sees a CUDA device; elsewhere that one test is
skipped (never faked).
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import textwrap

import pytest
import yaml

torch = pytest.importorskip("torch")

from cli_helpers import run_cli  # noqa: E402
from kvplan.sources.catalog import SPECS_DIR  # noqa: E402
from kvplan.errors import InputError  # noqa: E402
from kvplan.measure import run as measure_run  # noqa: E402
from kvplan.measure.model import Decoder  # noqa: E402
from kvplan.measure.run import MeasureOptions, measure  # noqa: E402

TINY = dict(
    name="tiny",
    source="test",
    num_parameters=10**10,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    intermediate_size=128,
    torch_dtype="float32",
)

KIND_FIELDS = {
    "gqa": {},
    "sliding": dict(num_hidden_layers=3, layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=8),
    "chunked": dict(layer_types=["chunked_attention", "full_attention"], attention_chunk_size=8),
    "mla": dict(num_key_value_heads=None, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16),
    "state": dict(layer_types=["mamba", "full_attention"], mamba_d_state=8, mamba_d_conv=4, mamba_expand=2),
    "kv-shared": dict(num_hidden_layers=3, num_kv_shared_layers=1),
}

CPU_READINGS = [
    "device",
    "predicted_kv_bytes",
    "measured_kv_bytes",
    "rss_delta_bytes",
    "allocated_delta_bytes",  # glibc malloc in use on the CPU
    "reserved_delta_bytes",
    "allocator_rounding_bytes",
    "predicted_allocated_delta_bytes",
    "predicted_reserved_delta_bytes",
    "weight_bytes_read_per_step",
    "kv_bytes_read_per_step",
    "decode_flops_per_step",
    "predicted_decode_memory_s",
    "predicted_decode_compute_s",
    "decode_bound",
    "predicted_decode_step_s",
    "gemv_tflops",
    "gemm_tflops",
    "measured_decode_step_s",
    "rounds",
    "stable",
    "decode_round_medians_s",
    "prefill_rounds_s",
    "decode_spread",
    "prefill_spread",
    "achieved_gbps",
    "bandwidth_utilisation",
    "read_bandwidth_gbps",
    "copy_bandwidth_gbps",
    "prefill_flops",
    "predicted_prefill_s",
    "measured_prefill_s",
    "torch_version",
]
CUDA_ONLY = ["nvml_used_delta_bytes", "nvml_used_before_bytes", "peak_allocated_bytes"]
# the probe sizes as the module sets them, before the fixture below shrinks the CPU's copy buffer
PROBE_SIZES = (dict(measure_run.COPY_BUFFER_BYTES), dict(measure_run.COPY_REPEATS), dict(measure_run.READ_REPEATS), dict(measure_run.GEMV_REPEATS))


@pytest.fixture(autouse=True)
def small_probes(monkeypatch):
    # an 8 MiB copy buffer keeps each run under a second on 2 cores (a real copy all the same)
    monkeypatch.setitem(measure_run.COPY_BUFFER_BYTES, "cpu", 8 << 20)


def _spec(spec_factory, **fields):
    data = {**TINY, **fields}
    data = {k: v for k, v in data.items() if v is not None}
    return spec_factory(**data)


def _yaml(tmp_path, **fields) -> str:
    data = {**TINY, **fields}
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("kind", sorted(KIND_FIELDS))
def test_every_kind_measures_exactly_on_the_cpu(spec_factory, kind):
    spec = _spec(spec_factory, **KIND_FIELDS[kind])
    report = measure(MeasureOptions(spec=spec, contexts=(20,), batches=(2,), decode_steps=3, warmup_steps=1, device="cpu", verify=True))
    assert report.device == "cpu" and report.dtype == "fp32"
    (run,) = report.runs
    assert run.total_tokens == 23
    assert run.measured_kv_bytes == run.predicted_kv_bytes > 0
    assert all(k.measured_bytes == k.predicted_bytes for k in run.kv_by_kind)
    assert report.measured_weight_bytes == report.predicted_weight_bytes
    assert run.verify_ok, (run.verify_max_abs_logit_diff, run.verify_logit_scale)
    record = report.to_dict()["runs"][0]
    for key in CPU_READINGS:
        assert record[key] is not None, key
    for key in CUDA_ONLY:
        assert record[key] is None, key  # CPU: no NVML readings, reported as absent
    assert run.measured_decode_step_s > 0 and run.measured_prefill_s > 0
    assert math.isclose(run.achieved_gbps, run.bytes_read_per_step / run.measured_decode_step_s / 1e9)
    assert math.isclose(run.predicted_decode_memory_s, run.bytes_read_per_step / (run.read_gbps * 1e9))
    # on the CPU each judged round (the last 3, stability.STABLE_ROUNDS) probed again after its decode steps
    assert run.probe_rounds == min(run.rounds, 3)
    assert run.predicted_decode_step_s == max(run.predicted_decode_memory_s, run.predicted_decode_compute_s) + run.scan_s_per_token
    assert [p.name for p in report.probes] == ["read bandwidth", "copy bandwidth", "GEMV, batch 2", "GEMM, 40 prompt rows",
                                               "attention, batch 2, 20 tokens"] + (
        ["scan step, batch 2"] if kind == "state" else [])


def test_decode_prediction_divides_bytes_read_by_the_read_bandwidth(spec_factory, monkeypatch):
    from kvplan.measure.readings import ReadBandwidthReading

    monkeypatch.setattr(measure_run.rd, "read_bandwidth", lambda device, nbytes, repeats: ReadBandwidthReading(2.0, nbytes, repeats, "fixed"))
    monkeypatch.setattr(measure_run.rd, "linear_throughput", _fixed_linear(1e15))  # compute negligible
    report = measure(MeasureOptions(spec=_spec(spec_factory), contexts=(20,), batches=(1,), decode_steps=3, warmup_steps=1, device="cpu"))
    (run,) = report.runs
    assert run.decode_bound == "memory"
    # TINY, fp32 (4 B): per layer q 64x64 + k,v 2 x 64x32 + o 64x64 + MLP 3 x 64x128 = 36,864 weights + 2 x 64 norms;
    # 2 layers = 73,984; + final norm 64 + LM head 256 x 64 = 16,384 + 1 embedding row of 64 = 90,496 weights
    # = 361,984 B; KV: 2 layers x (K + V) x 2 heads x 16 x 4 B = 512 B/token x 23 tokens = 11,776 B
    assert run.bytes_read_per_step == 361_984 + 11_776
    assert report.read_bandwidth_gbps == 2.0
    assert run.predicted_decode_step_s == pytest.approx(373_760 / 2.0e9)  # 186.88 µs
    assert report.probes[0].method == "fixed"


def test_rounds_report_the_median_of_the_last_three(spec_factory):
    report = measure(MeasureOptions(spec=_spec(spec_factory), contexts=(20,), batches=(1,), decode_steps=3, warmup_steps=1, device="cpu", max_rounds=4))
    (run,) = report.runs
    assert 3 <= run.rounds <= 4 and run.stable in (True, False)
    assert len(run.decode_round_medians_s) == len(run.prefill_rounds_s) == run.rounds
    last = run.decode_round_medians_s[-3:]
    assert run.measured_decode_step_s == sorted(last)[1]  # the middle of three
    assert run.measured_prefill_s == sorted(run.prefill_rounds_s[-3:])[1]
    assert run.decode_spread == pytest.approx((max(last) - min(last)) / sorted(last)[1])
    if run.rounds == 3:  # stopped early: it had settled
        assert run.stable is True and run.decode_spread <= 0.05


def test_one_round_is_not_judged_for_stability(capsys, tmp_path):
    r = run_cli(capsys, "measure", _yaml(tmp_path), "--context", "16", "--decode-steps", "2", "--max-rounds", "1", "--format", "json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    (run,) = json.loads(r.stdout)["runs"]
    assert run["rounds"] == 1 and run["stable"] is None
    assert run["decode_spread"] == 0.0 and run["prefill_spread"] == 0.0
    assert run["measured_prefill_s"] == run["prefill_rounds_s"][0]
    r = run_cli(capsys, "measure", _yaml(tmp_path), "--context", "16", "--decode-steps", "2", "--max-rounds", "1", "--device", "cpu")
    assert "1 round," in r.stdout and "judged" in r.stdout  # "1 round, stability not judged", maybe wrapped


def _fixed_linear(flops_per_s: float):
    from kvplan.measure.readings import LinearReading

    def probe(device, dtype, rows, in_features, out_features, repeats, timer=None, rotate_bytes=0):
        return LinearReading(flops_per_s, rows, in_features, out_features, repeats, "fixed")

    return probe


def test_decode_step_is_compute_bound_when_the_gemv_is_slow(spec_factory, monkeypatch):
    from kvplan.measure.readings import ReadBandwidthReading

    monkeypatch.setattr(measure_run.rd, "read_bandwidth", lambda device, nbytes, repeats: ReadBandwidthReading(2.0, nbytes, repeats, "fixed"))
    monkeypatch.setattr(measure_run.rd, "linear_throughput", _fixed_linear(1e6))
    monkeypatch.setattr(measure_run.rd, "attention_throughput",
                        lambda device, dtype, b, h, t, qk, v, vk: measure_run.rd.AttentionReading(1e5, t, "fixed"))
    report = measure(MeasureOptions(spec=_spec(spec_factory), contexts=(20,), batches=(1,), decode_steps=3, warmup_steps=1, device="cpu"))
    (run,) = report.runs
    # TINY at batch 1: projections 73,728 + LM head 256 x 64 = 16,384 -> 2 x 90,112 = 180,224 FLOPs;
    # attention: 2 layers x 2 x 4 heads x 23 slots x (16 + 16) = 11,776 -> 192,000 FLOPs / 1e6 FLOP/s = 0.192 s,
    # beside memory 373,760 B / 2e9 B/s = 186.88 µs
    assert run.decode_flops_per_step == 192_000
    assert run.predicted_decode_compute_s == pytest.approx(0.192)
    assert run.predicted_decode_memory_s == pytest.approx(186.88e-6)
    assert run.decode_bound == "compute"
    assert run.predicted_decode_step_s == pytest.approx(0.192)
    # prefill: the projections 2 x 20 tokens x 73,728 = 2,949,120 and the last token's LM head 32,768 at the
    # GEMM probe's 1e6 FLOP/s (2.981888 s), the causal attention 2 layers x 2 x 4 heads x 210 pairs x
    # (16 + 16) = 107,520 FLOPs at the attention probe's 1e5 FLOP/s (1.0752 s)
    assert run.gemm_tflops == pytest.approx(1e-6) and run.attention_tflops == pytest.approx(1e-7)
    assert run.prefill_attention_flops == 107_520 and run.prefill_flops == 2_949_120 + 32_768 + 107_520
    assert run.predicted_prefill_s == pytest.approx(2.981888 + 1.0752)


def test_a_context_sweep_reads_each_context(spec_factory):
    report = measure(MeasureOptions(spec=_spec(spec_factory), contexts=(8, 40), batches=(1, 3), decode_steps=2, warmup_steps=1, device="cpu"))
    assert [(r.context, r.batch) for r in report.runs] == [(8, 1), (8, 3), (40, 1), (40, 3)]
    # 2 layers x 2 KV heads x (16 + 16) x 4 B = 512 B per token; context + 2 tokens x batch
    assert [r.predicted_kv_bytes for r in report.runs] == [512 * 10, 512 * 10 * 3, 512 * 42, 512 * 42 * 3]
    assert [r.measured_kv_bytes for r in report.runs] == [512 * 10, 512 * 10 * 3, 512 * 42, 512 * 42 * 3]
    # weights read per step: layers 2 x (12,288 + 24,576 + 128) + norm 64 + LM head 16,384 + one
    # 64-wide embedding row per sequence, 4 B each
    assert [r.weight_bytes_read_per_step for r in report.runs] == [4 * (73_984 + 64 + 16_384 + 64 * b) for b in (1, 3, 1, 3)]
    assert [r.kv_bytes_read_per_step for r in report.runs] == [r.predicted_kv_bytes for r in report.runs]


def test_cpu_memory_readings_track_the_cache(spec_factory):
    # 4,094 + 2 tokens: each of the 4 K/V tensors is 2 x 2 x 4,096 x 16 x 4 B = 1 MiB, above glibc's
    # pinned 128 KiB mmap threshold, so each gets its own mapping: 1 MiB + 64 + 32 B of alignment
    # slack + the headers round up to one more 4 KiB page per tensor, as the model predicts. Beside
    # them malloc serves torch's tensor objects (a few hundred bytes each); Python's own allocator
    # can map or unmap a 256 KiB arena in between, so RSS is held to 512 KiB either way.
    report = measure(MeasureOptions(spec=_spec(spec_factory), contexts=(4094,), batches=(2,), decode_steps=2, warmup_steps=0, device="cpu"))
    assert report.allocator == "glibc malloc (mallinfo2)"
    run = report.runs[0]
    storage = run.measured_kv_bytes
    assert storage == run.predicted_kv_bytes == 4 * 2**20
    assert (run.allocator_rounding_bytes, run.allocator_segments, run.allocator_segment_bytes) == (4 * 4096, 4, storage + 4 * 4096)
    assert run.predicted_allocated_delta_bytes == run.predicted_reserved_delta_bytes == storage + 4 * 4096
    assert 0 <= run.allocated_delta_bytes - run.predicted_allocated_delta_bytes <= 4 * 1024
    assert abs(run.rss_delta_bytes - run.predicted_allocated_delta_bytes) <= 512 * 1024


def test_layers_runs_the_first_layers_and_predicts_for_them(spec_factory):
    spec = _spec(spec_factory, num_hidden_layers=6, layer_types=["sliding_attention", "full_attention"] * 3, sliding_window=4)
    report = measure(MeasureOptions(spec=spec, layers=3, contexts=(10,), decode_steps=2, warmup_steps=0, device="cpu"))
    assert (report.layers_run, report.layers_total) == (3, 6)
    # sliding layers 0 and 2 hold min(12, 4) = 4 tokens, full layer 1 holds 12; 256 B per token-layer
    assert report.runs[0].measured_kv_bytes == report.runs[0].predicted_kv_bytes == 256 * (4 + 12 + 4)


def test_fp8_cache_on_the_cpu(spec_factory):
    report = measure(MeasureOptions(spec=_spec(spec_factory), contexts=(10,), decode_steps=2, warmup_steps=0, device="cpu", kv_cache_dtype="fp8"))
    run = report.runs[0]
    assert report.kv_cache_dtype == "fp8"
    assert run.measured_kv_bytes == run.predicted_kv_bytes == 128 * 12  # 1 byte per element


def test_ctrl_c_drops_the_model(spec_factory):
    def interrupt(message: str) -> None:
        if message.startswith("context"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure(MeasureOptions(spec=_spec(spec_factory), contexts=(10,), decode_steps=2, device="cpu", progress=interrupt))
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is Decoder]


def test_out_of_memory_anyway_is_caught(spec_factory, monkeypatch):
    # pretend the memory check passed; the cache (2^61 bytes) then fails in torch's CPU allocator for real
    monkeypatch.setattr(measure_run.rd, "mem_available_bytes", lambda: 1 << 70)
    spec = _spec(spec_factory)
    with pytest.raises(Exception) as info:
        measure(MeasureOptions(spec=spec, contexts=(1 << 40,), batches=(1 << 14,), decode_steps=1, device="cpu"))
    assert getattr(info.value, "exit_code", None) == 2
    assert "out of memory on cpu while running context" in str(info.value)
    assert "try fewer --layers, a smaller --batch or a shorter --context" in str(info.value)


# ------------------------------------------------------------------ the CLI


def test_cli_table_and_atomic_json(capsys, tmp_path, monkeypatch):
    # wide enough that no label wraps: the columns' widths follow the measured figures, which vary run to run
    monkeypatch.setenv("COLUMNS", "400")
    spec = _yaml(tmp_path)
    out = tmp_path / "reports" / "measure.json"
    out.parent.mkdir()
    r = run_cli(capsys, "measure", spec, "--context", "16,32", "--decode-steps", "3", "--warmup-steps", "1", "--json", str(out), "--device", "cpu", "--tolerance", "1e9")
    assert r.exit_code == 0, r.stderr  # a loose gate passes
    assert "KV cache: tensor storage" in r.stdout and "KV cache: process RSS Δ" in r.stdout
    assert "KV cache: malloc in-use Δ" in r.stdout and "KV cache: malloc held Δ" in r.stdout
    assert "context 16 + 3 decode steps = 19 tokens · batch 1" in r.stdout
    # labels may wrap in the first column: look for words that stay on one line
    assert "decode step (median of rounds," in r.stdout and "-bound" in r.stdout
    assert "timing rounds" in r.stdout and "spread of the judged rounds" in r.stdout
    assert "stable" in r.stdout  # "N rounds, stable" or "N rounds, not stable (machine loaded)"
    assert "memory time (bytes / read" in r.stdout and "FLOP / GEMV" in r.stdout
    assert "read bandwidth" in r.stdout and "float32 .sum() over a 8.00 MiB buffer, best of 10" in r.stdout
    assert "copy bandwidth" in r.stdout and "dst.copy_(src) of a 8.00 MiB buffer" in r.stdout
    assert data_probes(out) == ["read bandwidth", "copy bandwidth", "GEMV, batch 1", "GEMM, 16 prompt rows", "GEMM, 32 prompt rows",
                                "attention, batch 1, 16 tokens", "attention, batch 1, 32 tokens"]
    assert [p.name for p in out.parent.iterdir()] == ["measure.json"]  # no temp file left behind
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["torch_version"] == torch.__version__
    assert data["driver_version"] is None and data["cuda_context_bytes"] is None
    assert [run["context"] for run in data["runs"]] == [16, 32]
    for run in data["runs"]:
        for key in ("device", "predicted_kv_bytes", "measured_kv_bytes", "predicted_decode_step_s", "measured_decode_step_s", "read_bandwidth_gbps", "copy_bandwidth_gbps", "nvml_used_delta_bytes"):
            assert key in run, key
        assert run["nvml_used_delta_bytes"] is None
        # 2 layers x 2 heads x 32 x 4 B = 512 B per token
        assert run["measured_kv_bytes"] == run["predicted_kv_bytes"] == 512 * (run["context"] + 3)


def data_probes(path) -> list[str]:
    return [p["name"] for p in json.loads(path.read_text())["probes"]]


def test_cli_json_to_stdout_with_verify(capsys, tmp_path):
    r = run_cli(capsys, "measure", _yaml(tmp_path, **KIND_FIELDS["sliding"]), "--context", "12", "--decode-steps", "2", "--verify", "--format", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["runs"][0]["verify_ok"] is True


def test_cli_catalog_spec_one_layer(capsys):
    r = run_cli(capsys, "measure", "llama-3.1-8b", "--layers", "1", "--context", "32", "--decode-steps", "2", "--warmup-steps", "1", "--format", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["layers_run"], data["layers_total"], data["dtype"]) == (1, 32, "bf16")
    run = data["runs"][0]
    # one layer x 8 KV heads x (128 + 128) x 2 B = 4,096 B per token; 32 + 2 tokens
    assert run["predicted_kv_bytes"] == run["measured_kv_bytes"] == 4_096 * 34
    # 1 layer: q 4096^2 + k, v 4096*1024 each + o 4096^2 + MLP 3*4096*14336 + norms 2*4096 = 218,112,000;
    # + embedding and LM head 128256*4096 each + final norm 4096
    assert data["parameters_run"] == 218_112_000 + 2 * 525_336_576 + 4_096
    assert data["measured_weight_bytes"] == data["predicted_weight_bytes"] == 2 * data["parameters_run"]


def test_cli_tolerance_gate_exits_1(capsys, tmp_path):
    r = run_cli(capsys, "measure", _yaml(tmp_path), "--context", "8", "--decode-steps", "2", "--tolerance", "0")
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]  # progress lines come first on stderr
    assert last.startswith("error: ") and "beyond --tolerance 0: " in last
    assert "decode step" in r.stderr
    assert "Traceback" not in r.stderr
    assert "KV cache: tensor storage" in r.stdout  # the table is printed before the gate


REFUSAL_CHILD = textwrap.dedent(
    """
    import sys
    from kvplan.cli.app import main
    sys.argv = ["kvplan", *sys.argv[1:]]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    # VmHWM: this process's peak resident set since exec (ru_maxrss would carry pytest's over exec)
    peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    print("peak_rss_kib", peak, file=sys.stderr)
    sys.exit(code)
    """
)


def test_refusal_exits_2_before_allocating(tmp_path):
    # 10^9 tokens x 64 sequences x 512 B = 30 TiB of cache: refused from the prediction alone
    spec = _yaml(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", REFUSAL_CHILD, "measure", spec, "--context", "1000000000", "--batch", "64", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr  # one line, whatever torch itself may warn about
    assert errors[0].startswith("error: kvplan measure tiny (2 of 2 layers) needs ")
    assert "KV cache 29.80 TiB" in errors[0] and "free (MemAvailable)" in errors[0]
    assert errors[0].endswith("; even --layers 1 at batch 1 does not fit: try a shorter --context")
    assert "Traceback" not in proc.stderr
    peak_rss = int(lines[-1].split()[1]) * 1024
    assert peak_rss < 1 << 30  # nothing big was allocated (torch itself is a few hundred MiB)


def test_refusal_suggests_fewer_layers(capsys):
    if not (SPECS_DIR / "llama-3.1-70b.yaml").is_file():
        pytest.skip("llama-3.1-70b is not in the catalog")
    # 80 layers of Llama-3.1-70B in bf16 are ~131 GiB of weights: more than this machine has free
    r = run_cli(capsys, "measure", "llama-3.1-70b", "--context", "1024", "--device", "cpu")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: kvplan measure llama-3.1-70b (80 of 80 layers) needs ")
    assert "; try --layers " in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kv-cache-dtype", "q4_0"], "--kv-cache-dtype q4_0: kvplan measure stores bf16, fp16, fp32, fp8, fp8_e4m3, fp8_e5m2; q4_0 is sized by `kvplan estimate` only"),
        (["--kv-cache-dtype", "nope"], "--kv-cache-dtype: unknown KV cache dtype 'nope'"),
        (["--layers", "3"], "--layers 3: tiny has 2 layers; use 1 to 2"),
        (["--decode-steps", "0"], "--decode-steps must be at least 1, got 0"),
        (["--max-rounds", "0"], "--max-rounds must be at least 1, got 0"),
        (["--context", "0"], "--context '0': values must be at least 1"),
        (["--tolerance", "-1"], "--tolerance -1.0: give a fraction of 0 or more"),
        (["--json", "/nonexistent-kvplan-dir/m.json"], "--json /nonexistent-kvplan-dir/m.json: folder /nonexistent-kvplan-dir does not exist"),
    ],
)
def test_cli_bad_input_exits_2(capsys, tmp_path, args, message):
    r = run_cli(capsys, "measure", _yaml(tmp_path), *args)
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_cli_device_cuda_without_a_gpu(capsys, tmp_path):
    r = run_cli(capsys, "measure", _yaml(tmp_path), "--device", "cuda")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: --device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu (or auto)")


def test_mla_rejects_different_k_and_v_formats(spec_factory):
    spec = _spec(spec_factory, **KIND_FIELDS["mla"])
    with pytest.raises(InputError, match="uses MLA, which caches one latent vector"):
        measure(MeasureOptions(spec=spec, contexts=(8,), device="cpu", kv_cache_dtype="fp32/bf16"))


# ------------------------------------------------------------------ CUDA (skipped without a GPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the NVML path is never faked")
def test_nvml_and_allocator_readings_on_cuda(tmp_path):
    pytest.importorskip("pynvml")
    # a fresh process, so NVML's "before" reading precedes any CUDA context
    spec = _yaml(tmp_path, torch_dtype="bfloat16")
    out = tmp_path / "cuda.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kvplan", "measure", spec, "--device", "cuda", "--context", "4096", "--batch", "4",
         "--decode-steps", "8", "--verify", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["device"].startswith("cuda:") and data["driver_version"] and data["cuda_version"]
    assert data["allocator"] == "torch CUDA caching allocator"
    assert data["cuda_context_bytes"] > 0 and data["nvml_used_before_torch_bytes"] is not None
    run = data["runs"][0]
    # 2 layers x 2 KV heads x 32 x 2 B = 256 B per token; 4,104 tokens x 4 sequences. Each of the
    # 4 tensors (525,312 B) is a multiple of 512 B, so the caching allocator adds nothing to it
    assert run["measured_kv_bytes"] == run["predicted_kv_bytes"] == 256 * 4104 * 4
    assert run["allocated_delta_bytes"] == run["predicted_allocated_delta_bytes"] == run["predicted_kv_bytes"]
    # the caching allocator's segments, from the free blocks it held just before: exact
    assert run["reserved_delta_bytes"] == run["predicted_reserved_delta_bytes"]
    assert run["allocator_segment_bytes"] % (2 * 2**20) == 0
    assert run["nvml_used_delta_bytes"] is not None and run["nvml_used_delta_bytes"] >= 0
    assert run["peak_allocated_bytes"] >= run["predicted_kv_bytes"]
    assert run["decode_mode"] == "cuda-graph" or run["decode_mode"].startswith("eager (graph capture failed")
    assert run["verify_ok"] is True


def test_context_beyond_the_model_warns(capsys, tmp_path):
    # TINY has max_position_embeddings 16 here: 14 + 4 decode steps = 18 positions
    spec = _yaml(tmp_path, max_position_embeddings=16)
    r = run_cli(capsys, "measure", spec, "--context", "14", "--decode-steps", "4", "--warmup-steps", "0", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.startswith(
        "warning: --context + --decode-steps 18 exceeds tiny's max_position_embeddings (16); "
        "run as asked (the random-weight decoder has no position limit)\n"
    )


def test_the_docs_name_every_json_field_of_a_measurement(capsys, tmp_path):
    """The docs' measure page (docs/measure.md) names every key `measure --format json` writes, nested ones too."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "measure.md").read_text()
    named = set(re.findall(r"`([a-z0-9_]+)`", readme))
    r = run_cli(capsys, "measure", _yaml(tmp_path), "--context", "8", "--decode-steps", "1", "--max-rounds", "1", "--format", "json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    (run,) = data["runs"]
    keys = set(data) | set(run) | set(data["probes"][0]) | set(run["kv_by_kind"][0])
    missing = sorted(keys - named)
    assert missing == [], f"docs/measure.md does not name {missing}"


# ------------------------------------------------------------------ predictions from given probe readings


class _Timer:
    """StepTimer's interface returning chosen step times (the steps still run)."""

    def __init__(self, device) -> None:
        pass

    def time(self, fn) -> None:
        fn()

    def seconds(self) -> list[float]:
        return [0.003, 0.001, 0.002]  # median 2 ms, min 1 ms, max 3 ms


def test_predictions_from_given_probe_readings(spec_factory, monkeypatch):
    # The probes and clocks are given (2 GB/s read, 3 GB/s copy, a GEMV so fast the step is memory-bound,
    # a 1 GFLOP/s GEMM, 2 ms steps, 5 ms prefill) so the run's arithmetic is checked exactly; the model and
    # cache are real. TINY: hidden 64, 4 heads x 16, 2 KV heads, MLP 128, vocab 256, 2 layers, fp32;
    # context 20 + 3 decode steps = 23 tokens, batch 2.
    from kvplan.measure.readings import BandwidthReading, LinearReading, ReadBandwidthReading

    probes: dict[str, list] = {}  # every call of each probe, in order

    def read_bandwidth(device, buffer_bytes, repeats):
        probes.setdefault("read", []).append((buffer_bytes, repeats))
        return ReadBandwidthReading(2.0, buffer_bytes, repeats, "given")

    def copy_bandwidth(device, buffer_bytes, repeats):
        probes.setdefault("copy", []).append((buffer_bytes, repeats))
        return BandwidthReading(3.0, buffer_bytes, repeats, "given")

    def linear_throughput(device, dtype, rows, in_features, out_features, repeats, timer=None, rotate_bytes=0):
        probes.setdefault("gemv", []).append((dtype, rows, in_features, out_features, repeats))
        # the GEMV at the batch's 2 rows; the GEMM probed again between rounds at its 40 rows
        return LinearReading(1e15 if rows == 2 else 1e9, rows, in_features, out_features, repeats, "given")

    def gemm_throughput(device, dtype, max_rows, in_features, out_features, target_s=0.05):
        probes.setdefault("gemm", []).append((dtype, max_rows, in_features, out_features))
        return LinearReading(1e9, max_rows, in_features, out_features, 1, "given")

    def timed_once(device, fn):
        fn()
        return 0.005

    def attention_throughput(device, dtype, batch, heads, tokens, qk, v, v_kernel):
        probes.setdefault("attention", []).append((dtype, batch, heads, tokens, qk, v, v_kernel))
        return measure_run.rd.AttentionReading(1e8, tokens, "given")

    monkeypatch.setattr(measure_run.rd, "attention_throughput", attention_throughput)
    monkeypatch.setattr(measure_run.rd, "read_bandwidth", read_bandwidth)
    monkeypatch.setattr(measure_run.rd, "copy_bandwidth", copy_bandwidth)
    monkeypatch.setattr(measure_run.rd, "linear_throughput", linear_throughput)
    monkeypatch.setattr(measure_run.rd, "gemm_throughput", gemm_throughput)
    monkeypatch.setattr(measure_run.rd, "timed_once", timed_once)
    monkeypatch.setattr(measure_run.rd, "StepTimer", _Timer)
    monkeypatch.setattr(measure_run.rd, "mem_available_bytes", lambda: 100 * 2**20)
    report = measure(MeasureOptions(spec=_spec(spec_factory), contexts=(20,), batches=(2,), decode_steps=3, warmup_steps=2, device="cpu"))
    # buffer: 100 MiB free / 16 = 6,553,600 B, under the (test's) 8 MiB cap; 10 read and 5 copy passes on the
    # CPU; GEMV at the batch (2 rows) and GEMM at batch x context = 40 prompt rows, both over the widest
    # projection: hidden 64 -> the MLP's width 128 (gate, up)
    assert {key: calls[0] for key, calls in probes.items()} == {
        "read": (6_553_600, 10), "copy": (6_553_600, 5),
        "gemv": (torch.float32, 2, 64, 128, 10), "gemm": (torch.float32, 40, 64, 128),
        "attention": (torch.float32, 2, 4, 20, 16, 16, 16),  # batch 2 x 4 heads over the 20-token prompt
    }
    (run,) = report.runs
    # the given clock makes 3 rounds agree; after each one's decode steps the CPU probes again at the same
    # shapes: read, GEMV at the batch and the GEMM at the first probe's 40 rows (its 1 repeat), attention
    assert (run.rounds, run.probe_rounds) == (3, 3)
    assert probes["read"] == [(6_553_600, 10)] * 4 and probes["copy"] == [(6_553_600, 5)]
    assert probes["gemv"] == [(torch.float32, 2, 64, 128, 10)] + [(torch.float32, 2, 64, 128, 10), (torch.float32, 40, 64, 128, 1)] * 3
    assert probes["gemm"] == [(torch.float32, 40, 64, 128)] and len(probes["attention"]) == 4
    # weights per layer: attention 64x64 (q) + 2 x 64x32 (k, v) + 64x64 (o) = 12,288; MLP 3 x 64 x 128 = 24,576;
    # 2 norms x 64 = 128: 36,992. Model: 2 layers + embedding 16,384 + final norm 64 + LM head 16,384 = 106,816
    assert report.parameters_run == 106_816
    assert report.predicted_weight_bytes == report.measured_weight_bytes == 427_264  # x 4 B
    # 21 parameter tensors (embedding, 9 per layer, final norm, LM head), each under the mmap threshold: a heap
    # chunk of the tensor + 8 B in 16 B steps, +16 B each as every size is a multiple of 16 (glibc request2size)
    assert report.weights_predicted_allocated_delta_bytes == 427_264 + 21 * 16
    # KV: 2 layers x 23 tokens x 2 sequences x 2 heads x (16 + 16) x 4 B = 23,552 B
    assert run.predicted_kv_bytes == run.measured_kv_bytes == run.kv_bytes_read_per_step == 23_552
    # weights read: layers 73,984 + final norm 64 + LM head 16,384 + 2 embedding rows x 64 = 90,560 x 4 B
    assert run.weight_bytes_read_per_step == 362_240
    assert run.bytes_read_per_step == 385_792  # 362,240 + 23,552
    assert run.predicted_decode_memory_s == pytest.approx(385_792 / 2e9, rel=1e-12)  # 192.896 µs at the read bandwidth
    assert run.decode_bound == "memory"
    assert run.predicted_decode_step_s == run.predicted_decode_memory_s
    assert (run.measured_decode_step_s, run.decode_step_min_s, run.decode_step_max_s) == (0.002, 0.001, 0.003)
    assert run.achieved_gbps == pytest.approx(385_792 / 0.002 / 1e9, rel=1e-12)  # 0.192896 GB/s
    assert run.bandwidth_utilisation == pytest.approx(0.192896 / 2.0, rel=1e-12)
    # prefill FLOPs: 2 x 2 x 20 x 73,728 projection weights = 5,898,240; LM head for the last token
    # 2 x 2 x 64 x 256 = 65,536; attention 2 layers x 2 x 2 x 4 heads x 210 causal pairs (20 x 21 / 2)
    # x (16 + 16) = 215,040; total 6,178,816
    assert run.prefill_flops == 6_178_816 and run.prefill_attention_flops == 215_040
    # the projections and LM head at the 1 GFLOP/s GEMM, the attention at the given 0.1 GFLOP/s
    assert run.predicted_prefill_s == pytest.approx((6_178_816 - 215_040) / 1e9 + 215_040 / 1e8, rel=1e-12)
    assert run.measured_prefill_s == 0.005
    assert run.gemm_tflops == pytest.approx(1e-3, rel=1e-12)
    assert (report.read_bandwidth_gbps, report.copy_bandwidth_gbps, report.copy_buffer_bytes) == (2.0, 3.0, 6_553_600)
    # the memory the refusal checks: weights 427,264 + KV 23,552 + activations 2 x 2 x 23 x 4 B x (4 x 64
    # + the widest layer's 3 x 128 = 384) = 235,520, + 2 x 256 fp32 logits x 4 B = 2,048, + 64 MiB scratch
    assert report.memory_needed_bytes == run.predicted_peak_bytes == 427_264 + 23_552 + 235_520 + 2_048 + 64 * 2**20
    assert report.memory_available_bytes == 100 * 2**20
    # the 4 cache tensors of 5,888 B (23 x 2 x 2 x 16 x 4 B) are far under the 128 KiB mmap threshold: heap
    # chunks of 5,888 + 8 B rounded up to 16 B = 5,904 B, +16 B each; nothing mmapped
    assert (run.allocator_rounding_bytes, run.allocator_segments, run.allocator_segment_bytes) == (64, 0, 0)
    assert run.predicted_allocated_delta_bytes == run.predicted_reserved_delta_bytes == 23_552 + 64
    assert (run.context, run.decode_steps, run.total_tokens, run.batch, run.decode_mode) == (20, 3, 23, 2, "eager")
    assert report.notes[-4:] == (
        "the cache holds context + 3 decode-step tokens and is predicted at that count; decode attends over every "
        "pre-allocated slot with a mask (static shapes, as CUDA graphs need), so a step reads the whole cache",
        "predicted decode step = the larger of memory time = (weights read + KV read) / measured read bandwidth "
        "(a step streams reads; the copy figure, read + write, is shown beside it) and compute time = the step's "
        "FLOPs / the GEMV throughput measured at the model's widest projection, batch rows, run dtype; predicted "
        "prefill = the projections' and the last token's LM head FLOPs / the GEMM throughput at the same "
        "projection with prompt rows, plus the causal attention's FLOPs / the attention probe's throughput "
        "(scaled_dot_product_attention at the model's heads and head sizes over the prompt; windowed layers "
        "are counted at their pairs but timed at the full causal rate); norms and activations are left out",
        "the probes run again after each round's decode steps, and each run is predicted from the medians of its "
        "judged rounds' probes (a shared CPU's speed moves over minutes); the probe table shows the probes taken "
        "before the runs",
        "decode feeds fixed random token ids (no sampling); a round is one prefill (after a 16-token warm-up "
        "before the first) and 3 decode steps (after 2 warm-up steps before the first); rounds repeat, at most "
        "5, until the last 3 agree within 5% (range / median); the measured figures are the medians of those "
        "rounds, and the error is judged against them",
    )
    assert report.notes[0] == (
        "glibc's mmap threshold is pinned at 128 KiB (mallopt), so each cache tensor above it gets fresh pages, "
        "and the chunk header and page rounding it adds are modelled"
    )


# Refusals worked by hand for TINY at context 998 + 2 decode steps = 1,000 tokens, batch 8, fp32.
# One layer: weights (36,992 + embedding 16,384 + norm 64 + LM head 16,384) x 4 B = 279,296 B; two: 427,264 B.
# KV: 256 B per token, layer and sequence. Activations at batch b: 2 x b x 1,000 x 4 B x (4 x 64 + 384)
# + b x 256 x 4 B of logits + 64 MiB scratch. So 1 layer needs 67,388,160 + 5,377,024 b bytes:
# 110,404,352 at b = 8, 83,519,232 at b = 3; 2 layers at b = 8 need 112,600,320 (KV 4,096,000,
# activations 108,077,056).
REFUSAL_HEAD = (
    "kvplan measure tiny (2 of 2 layers) needs 107.38 MiB (weights 417.25 KiB + KV cache 3.91 MiB + "
    "activations 103.07 MiB) but cpu has {free} free (MemAvailable)"
)


@pytest.mark.parametrize(
    "available, free, advice",
    [
        # one layer fits at batch 8 exactly (the check is need <= free)
        (110_404_352, "105.29 MiB", "try --layers 1 or a smaller --batch"),
        # one layer fits at batch 7 exactly (67,388,160 + 7 x 5,377,024), the largest batch under the 8 asked
        (105_027_328, "100.16 MiB", "try --layers 1 --batch 7"),
        # one layer fits at batch 3 exactly, not at 4 (88,896,256)
        (83_519_232, "79.65 MiB", "try --layers 1 --batch 3"),
        (83_519_231, "79.65 MiB", "try --layers 1 --batch 2"),
        # not even batch 1 (72,765,184)
        (72_765_183, "69.39 MiB", "even --layers 1 at batch 1 does not fit: try a shorter --context"),
    ],
)
def test_refusal_advice_at_its_boundaries(spec_factory, monkeypatch, available, free, advice):
    monkeypatch.setattr(measure_run.rd, "mem_available_bytes", lambda: available)
    with pytest.raises(InputError) as info:
        measure(MeasureOptions(spec=_spec(spec_factory), contexts=(998,), batches=(8,), decode_steps=2, device="cpu"))
    assert str(info.value) == f"{REFUSAL_HEAD.format(free=free)}; {advice}"


def test_refusal_at_batch_1_names_no_batch(spec_factory, monkeypatch):
    # 2 layers at batch 1 need 73,169,152 B; one byte short, 1 layer (72,765,184) still fits
    monkeypatch.setattr(measure_run.rd, "mem_available_bytes", lambda: 73_169_151)
    with pytest.raises(InputError, match=r"; try --layers 1$"):
        measure(MeasureOptions(spec=_spec(spec_factory), contexts=(998,), decode_steps=2, device="cpu"))


def test_probe_sizes_and_the_copy_buffer_cap(spec_factory, monkeypatch):
    # the copy buffer is free memory / 16, capped past the last-level cache: 1 GiB on CUDA (H100/H200 L2
    # is 50 MiB), 128 MiB on the CPU; 20 and 5 timed copies; 20 and 10 read passes and GEMVs
    copy, repeats, reads, gemvs = PROBE_SIZES
    assert (copy, repeats, reads, gemvs) == ({"cuda": 2**30, "cpu": 128 * 2**20}, {"cuda": 20, "cpu": 5}, {"cuda": 20, "cpu": 10}, {"cuda": 20, "cpu": 10})
    monkeypatch.setitem(measure_run.COPY_BUFFER_BYTES, "cpu", copy["cpu"])
    buffers = []

    def copy_bandwidth(device, buffer_bytes, repeats):
        buffers.append(buffer_bytes)
        raise KeyboardInterrupt  # enough: the buffer size is what is checked

    monkeypatch.setattr(measure_run.rd, "copy_bandwidth", copy_bandwidth)
    for available in (4 * 2**30, 2**30):
        monkeypatch.setattr(measure_run.rd, "mem_available_bytes", lambda: available)
        with pytest.raises(KeyboardInterrupt):
            measure(MeasureOptions(spec=_spec(spec_factory), contexts=(8,), decode_steps=1, device="cpu"))
    assert buffers == [128 * 2**20, 64 * 2**20]  # 4 GiB / 16 = 256 MiB, capped; 1 GiB / 16 = 64 MiB


def test_library_defaults_are_the_cli_defaults(spec_factory):
    # README: --context 1024, --batch 1, --decode-steps 32, --warmup-steps 4, --seed 0, --max-rounds 5, CUDA graphs on,
    # dtype, KV dtype and device auto, no --verify; the progress callback is not part of what is run
    spec = _spec(spec_factory)
    assert MeasureOptions(spec=spec) == MeasureOptions(
        spec=spec, layers=None, contexts=(1024,), batches=(1,), decode_steps=32, warmup_steps=4, dtype="auto",
        kv_cache_dtype="auto", device="auto", seed=0, cuda_graphs=True, verify=False, progress=print, max_rounds=5,
    )
    # and a run at those defaults (on the CPU) reads them back
    report = measure(MeasureOptions(spec=spec, device="cpu"))
    (run,) = report.runs
    assert (run.context, run.batch, run.decode_steps, report.seed, run.verify_ok) == (1024, 1, 32, 0, None)
    assert "and 32 decode steps (after 4 warm-up steps before the first); rounds repeat, at most 5," in report.notes[-1]


def test_a_dtype_measure_cannot_run_is_refused(spec_factory):
    with pytest.raises(InputError, match=r"^--dtype 'fp64': use auto, bf16, fp16 or fp32$"):
        measure(MeasureOptions(spec=_spec(spec_factory), dtype="fp64", device="cpu"))
    with pytest.raises(InputError, match=r"^--warmup-steps must be 0 or more, got -1$"):
        measure(MeasureOptions(spec=_spec(spec_factory), warmup_steps=-1, device="cpu"))


@pytest.mark.parametrize(
    "exc, oom",
    [
        (MemoryError(), True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("shape mismatch"), False),  # another RuntimeError is a bug, not memory
        (ValueError("out of memory"), False),  # only torch's RuntimeError carries it as text
    ],
)
def test_what_counts_as_out_of_memory(exc, oom):
    assert measure_run._is_oom(exc) is oom


def test_a_state_layer_scan_is_probed_and_added_to_the_predicted_times(spec_factory):
    # one mamba layer + one full-attention layer (KIND_FIELDS["state"]): one state layer scans per token
    spec = _spec(spec_factory, **KIND_FIELDS["state"])
    report = measure(MeasureOptions(spec=spec, contexts=(20,), batches=(2,), decode_steps=3, warmup_steps=1,
                                    device="cpu", max_rounds=1))
    (run,) = report.runs
    scan = [p for p in report.probes if p.name.startswith("scan step")]
    assert [p.name for p in scan] == ["scan step, batch 2"] and scan[0].unit == "ms" and scan[0].value > 0
    assert "mamba1" in scan[0].method and "best of 10" in scan[0].method
    # the probe cycles through SCAN_COPIES_MAX = 16 copies of the step's fp32 parameters (its buffer holds far
    # more): d_inner 128 (expand 2 x hidden 64), dt_rank ceil(64 / 16) = 4, d_state 8, d_conv 4: conv 128 x 4 +
    # bias 128, x_proj (4 + 2 x 8) x 128, dt_proj 128 x 4 + bias 128, A 128 x 8, D 128 = 4,992 floats = 19,968 B;
    # x 16 = 319,488 B = 312.00 KiB
    assert "cycling through 16 copies of its fp32 step parameters (312.00 KiB in all)" in scan[0].method
    # the full-attention layer's prefill pairs over 20 tokens: 20 x 21 / 2 = 210, x 2 sequences x 4 heads
    # x (16 + 16) x 2 FLOPs = 107,520 (head size 64 / 4 heads = 16)
    assert run.prefill_attention_flops == 2 * 2 * 4 * 210 * (16 + 16)
    assert run.state_layers == 1
    # one round (--max-rounds 1), probed again after it on the CPU: the scan figure is that probe's, not the
    # table's probe before the run
    assert run.probe_rounds == 1 and run.scan_s_per_token > 0
    # the stated rule: decode = max(memory, compute) + scan; prefill = FLOPs / GEMM + context x scan
    assert run.predicted_decode_step_s == pytest.approx(
        max(run.predicted_decode_memory_s, run.predicted_decode_compute_s) + run.scan_s_per_token)
    attention = run.prefill_attention_flops / (run.attention_tflops * 1e12)
    assert run.predicted_prefill_s == pytest.approx(
        (run.prefill_flops - run.prefill_attention_flops) / (run.gemm_tflops * 1e12) + attention + 20 * run.scan_s_per_token)
    assert any("state layers scan token by token" in n for n in report.notes)


def test_a_model_without_state_layers_has_no_scan_probe(spec_factory):
    report = measure(MeasureOptions(spec=_spec(spec_factory), contexts=(20,), batches=(1,), decode_steps=2,
                                    warmup_steps=1, device="cpu", max_rounds=1))
    (run,) = report.runs
    assert not [p for p in report.probes if p.name.startswith("scan step")]
    assert (run.state_layers, run.scan_s_per_token) == (0, 0.0)
    assert run.predicted_decode_step_s == max(run.predicted_decode_memory_s, run.predicted_decode_compute_s)


def test_cuda_reserved_prediction_is_the_new_segments_shifted_by_a_storage_miss(spec_factory):
    """The CUDA branch of the reserved-memory prediction is arithmetic on readings, so it is checked
    here without a GPU (`measure` takes it only on CUDA; `_predicted_reserved` is its one caller's
    helper, tested directly for that reason). TINY, fp32, 23 tokens x batch 2: 4 cache tensors (K and
    V of 2 layers) of 23 x 2 x 2 heads x 16 x 4 B = 5,888 B, 23,552 B in all."""
    from kvplan.measure.allocator import cuda_allocations
    from kvplan.measure.predict import build_arch, cache_layout
    from kvplan.model.formats import parse_format, parse_format_pair

    arch = build_arch(_spec(spec_factory))
    est = cache_layout(arch, parse_format_pair("fp32", "fp32"), parse_format("fp32")).at(23, 2)
    assert est.kv_bytes_total == 23_552
    cuda = torch.device("cuda", 0)  # a device name only: nothing runs on it
    # The caching allocator rounds 5,888 B up to 6,144 B (512 B steps), a small-pool block: the first
    # has no free block and cudaMallocs a 2 MiB segment, split; the other three take its rest.
    # c10/cuda/CUDACachingAllocator.cpp round_size, get_allocation_size (kSmallBuffer), should_split.
    segments = cuda_allocations([5_888] * 4)
    assert (segments.reserved_bytes, segments.segments) == (2 * 2**20, 1)
    # storage as calculated: the prediction is the segment itself
    assert measure_run._predicted_reserved(cuda, est, 23_552, segments) == 2_097_152
    # tensors 512 B larger in all than calculated: the modelled segments came from the measured
    # sizes, so the prediction is put back on the calculator's bytes, 512 B lower
    assert measure_run._predicted_reserved(cuda, est, 24_064, segments) == 2_097_152 - 512
    # the CPU's rule is different: every chunk counts, the calculator's bytes + the rounding
    assert measure_run._predicted_reserved(torch.device("cpu"), est, 24_064, segments) == 23_552 + (6_144 * 4 - 23_552)
    assert measure_run._predicted_reserved(cuda, est, 23_552, None) is None  # allocator settings: not modelled
