"""`--plot`: the charts' data (kvplan.plan.charts, pure) and their drawing (kvplan.cli.plot, matplotlib).

Expected figures are worked by hand from the specs in model_specs/ (bytes per token = layers x KV heads x
head_dim x 2 (K and V) x 2 bytes for bf16) and the layer rules of kvplan.model.kinds (a sliding layer holds
min(context, window) tokens); the capacity figures each point repeats are the planner's own (tested in
test_planner.py / test_engine_capacity_planned.py), read here from `kvplan estimate --format json`.
"""

from __future__ import annotations

import html.parser
import json
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cli_helpers import run_cli
from kvplan.cli import plot
from kvplan.plan import charts
from kvplan.plan.pipeline import Settings
from kvplan.sources.catalog import resolve_spec

H100_BYTES = 85_520_809_984  # kvplan/plan/data/gpus.yaml: h100-sxm memory_bytes
LLAMA_8B_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # 131,072: 32 layers x 8 KV heads x 128 x K,V x bf16
MISTRAL_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # mistral-7b-v0.1: the same geometry, every layer sliding 4,096
PHI3_BYTES_PER_TOKEN = 32 * 32 * 96 * 2 * 2  # 393,216: phi-3-mini, 32 KV heads x 96, every layer sliding 2,047


def _spec(name):
    return resolve_spec(name, fast=True)


# ------------------------------------------------------------------ the context axis


def test_context_points_are_powers_of_two_and_midpoints_to_the_limit_with_the_asked_context():
    # llama-3.1-8b: max_position_embeddings 131,072 = 2**17; 1k, 1.5k, 2k, 3k, ... 96k, 128k, and 10,000 asked
    assert charts.context_points(_spec("llama-3.1-8b"), [10_000]) == [
        1024, 1536, 2048, 3072, 4096, 6144, 8192, 10_000, 12_288, 16_384, 24_576, 32_768, 49_152, 65_536, 98_304,
        131_072]


def test_context_points_hold_a_window_where_the_curve_bends():
    # phi-3-mini: sliding_window 2,047, max_position_embeddings 4,096
    spec = _spec("phi-3-mini")
    assert charts.context_points(spec) == [1024, 1536, 2047, 2048, 3072, 4096]
    assert charts.curve_marks(spec, [3000]) == ((3000, "--context 3,000"), (2047, "sliding window 2,047"))
    assert charts.windows(_spec("llama-4-scout")) == [(8192, "chunk 8,192")]


def test_the_x_axis_labels_powers_of_two_and_the_marks_never_two_side_by_side():
    xs = [1024, 1536, 2047, 2048, 3072, 4096]
    assert plot.tick_contexts(xs, [2047]) == [1024, 2047, 4096]  # 2,048 is within 15% of 2,047: not printed over it
    assert plot.tick_contexts(xs, []) == [1024, 2048, 4096]
    assert plot.tick_contexts([1024, 1177, 2048], [1177]) == [1177, 2048]  # 1,024 x 1.15 = 1,177.6
    assert plot.tick_contexts([1024, 1178, 2048], [1178]) == [1024, 1178, 2048]


# ------------------------------------------------------------------ KV against context


def test_kv_series_of_a_dense_model_is_bytes_per_token_times_context():
    spec = _spec("llama-3.1-8b")
    s = charts.kv_series(spec, "ideal", Settings(), [1024, 8192, 131_072], "ideal")
    assert s.y == (1024 * LLAMA_8B_BYTES_PER_TOKEN, 8192 * LLAMA_8B_BYTES_PER_TOKEN, 131_072 * LLAMA_8B_BYTES_PER_TOKEN)
    assert charts.dense_reference(spec, "auto", [1024]) is None  # every layer already holds every token


def test_kv_series_of_a_sliding_model_stops_growing_at_its_window():
    spec = _spec("phi-3-mini")
    s = charts.kv_series(spec, "ideal", Settings(), [1024, 2047, 2048, 4096], "ideal")
    assert s.y == (1024 * PHI3_BYTES_PER_TOKEN, 2047 * PHI3_BYTES_PER_TOKEN, 2047 * PHI3_BYTES_PER_TOKEN,
                   2047 * PHI3_BYTES_PER_TOKEN)
    ref = charts.dense_reference(spec, "auto", [1024, 4096])
    assert ref.reference and ref.y == (1024 * PHI3_BYTES_PER_TOKEN, 4096 * PHI3_BYTES_PER_TOKEN)
    assert ref.label == "dense reference: 32 layers of full attention (12,288 B / token / layer)"


def test_kv_series_in_fp8_is_half_of_bf16():
    spec = _spec("mistral-7b-v0.1")
    s = charts.kv_series(spec, "ideal", Settings(kv_cache_dtype="fp8"), [8192], "fp8")
    assert s.y == (4096 * MISTRAL_BYTES_PER_TOKEN // 2,)


def test_dense_reference_of_a_hybrid_counts_its_token_mixing_layers():
    # nemotron-3-nano-30b-a3b: 6 full attention, 23 state (Mamba-2), 23 MLP / MoE blocks that hold nothing
    spec = _spec("nemotron-3-nano-30b-a3b")
    ref = charts.dense_reference(spec, "auto", [1024])
    per_layer = spec.num_key_value_heads * spec.head_dim * 2 * 2
    assert ref.y == (29 * per_layer * 1024,)
    assert ref.label.startswith("dense reference: 29 layers of full attention")


# ------------------------------------------------------------------ concurrency against context


def test_concurrency_series_is_each_contexts_own_capacity(capsys):
    spec = _spec("gemma-3-27b")  # sliding 1,024 and vLLM's window reservation: not budget / context
    s = charts.concurrency_series(spec, "vllm", Settings(gpu="h100"), [1024, 8192, 32_768], "vllm")
    for x, y in zip(s.x, s.y):
        r = run_cli(capsys, "estimate", "gemma-3-27b", "--gpu", "h100", "-c", str(x), "-f", "json")
        assert y == json.loads(r.stdout)["max_concurrent_sequences"]
    assert s.y[0] > s.y[1] > s.y[2] >= 1


def test_concurrency_of_a_model_that_does_not_fit_is_zero():
    s = charts.concurrency_series(_spec("llama-3.1-70b"), "vllm", Settings(gpu="l4"), [1024], "vllm")
    assert s.y == (0,)


# ------------------------------------------------------------------ the memory map


def test_memory_map_of_one_deployment(capsys):
    spec = _spec("llama-3.1-8b")
    r = json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100", "-f", "json").stdout)
    from kvplan.plan.pipeline import run

    bars = charts.answer_bars(run(spec, "vllm", Settings(gpu="h100")), "vllm", 1)
    assert len(bars) == 1 and bars[0].gpu_memory_bytes == H100_BYTES
    seg = dict(bars[0].segments)
    assert seg["KV in use"] == 8192 * LLAMA_8B_BYTES_PER_TOKEN  # 1 GiB: one sequence of 8,192 tokens
    assert seg["KV free"] == r["kv_budget_bytes_per_gpu"] - 8192 * LLAMA_8B_BYTES_PER_TOKEN
    assert seg["weights"] == r["weights_bytes_per_gpu"]
    assert seg["reserved"] == H100_BYTES - r["usable_bytes_per_gpu"]  # 1 - gpu_memory_utilization 0.9
    assert seg["over"] == 0
    assert sum(seg.values()) == H100_BYTES  # every byte of the GPU is in exactly one segment


@pytest.mark.parametrize("engine", ["ideal", "vllm", "hf", "llama.cpp", "sglang", "trtllm"])
def test_every_engines_map_accounts_for_the_whole_gpu(engine):
    from kvplan.plan.pipeline import run

    answer = run(_spec("qwen3-8b"), engine, Settings(gpu="h100"))
    (bar,) = charts.answer_bars(answer, engine, 1)
    assert [name for name, _ in bar.segments] == list(charts.MEMORY_SEGMENTS)
    assert sum(n for _, n in bar.segments) == H100_BYTES


def test_a_model_larger_than_the_gpu_shows_what_is_over():
    from kvplan.plan.pipeline import run

    answer = run(_spec("llama-3.1-70b"), "vllm", Settings(gpu="l4"))
    seg = dict(charts.answer_bars(answer, "vllm", 1)[0].segments)
    assert seg["KV in use"] == 0 and seg["KV free"] == 0 and seg["over"] > 0


def test_pipeline_stages_get_a_bar_each():
    from kvplan.plan.pipeline import run

    answer = run(_spec("llama-3.1-70b"), "vllm", Settings(gpu="h100", pp=2))
    assert [b.label for b in charts.answer_bars(answer, "vllm", 1)] == ["vllm · stage 0", "vllm · stage 1"]


def test_an_estimate_under_pp_names_it_in_every_title(capsys, tmp_path):
    from kvplan.plan.pipeline import sweep

    spec, base = _spec("llama-3.1-70b"), Settings(gpu="h100", pp=2)
    answers = sweep(spec, "vllm", base, [8192], [1])
    made = charts.estimate_charts(spec, "vllm", base, answers, dtypes=["auto"], tps=[1], gpus=["h100"],
                                  contexts=[8192], batches=[1])
    assert [c.kind for c in made] == ["memory", "concurrency", "kv"]
    assert all(c.title.endswith("· pp 2") for c in made)
    assert made[2].y_label == "KV bytes per sequence, all ranks"


# ------------------------------------------------------------------ labels: what varies


def test_estimate_charts_label_series_by_what_varies():
    from kvplan.plan.pipeline import sweep

    spec = _spec("mistral-7b-v0.1")
    base = Settings()
    answers = [a for g in ("h100", "l4") for d in ("bf16", "fp8")
               for a in sweep(spec, "vllm", base._replace(gpu=g, kv_cache_dtype=d), [8192], [1])]
    memory, conc, kv = charts.estimate_charts(spec, "vllm", base, answers, dtypes=["bf16", "fp8"], tps=[1],
                                              gpus=["h100", "l4"], contexts=[8192], batches=[1])
    assert [b.label for b in memory.bars] == ["h100-sxm · KV bf16", "h100-sxm · KV fp8", "l4 · KV bf16", "l4 · KV fp8"]
    assert [s.label for s in conc.series] == ["h100-sxm · KV bf16", "h100-sxm · KV fp8", "l4 · KV bf16", "l4 · KV fp8"]
    assert [s.label for s in kv.series] == ["KV bf16", "KV fp8", "dense reference: 32 layers of full attention "
                                                                 "(4,096 B / token / layer)"]
    assert "tp 1" in kv.title and "mistral-7b-v0.1" in kv.title and conc.marks == ((8192, "--context 8,192"), (4096, "sliding window 4,096"))


def test_compare_charts_have_a_series_and_a_bar_per_engine():
    spec = _spec("gemma-2-9b")
    engines = ("ideal", "vllm", "hf", "llama.cpp", "sglang", "trtllm")
    memory, conc, kv = charts.compare_charts(spec, Settings(gpu="h100"), engines)
    assert [b.label for b in memory.bars] == list(engines)
    assert [s.label for s in conc.series] == list(engines)
    assert [s.label for s in kv.series][:6] == list(engines) and kv.series[6].reference
    assert "KV bf16" in kv.title and "h100-sxm" in conc.title


# ------------------------------------------------------------------ drawing: every kind, every format


def _one_of_each():
    spec = _spec("gemma-3-27b")
    return charts.compare_charts(spec, Settings(gpu="h100"), ("ideal", "vllm", "llama.cpp"))


@pytest.fixture(scope="module")
def each_chart():
    return {c.kind: c for c in _one_of_each()}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _svg_text(data: bytes) -> str:
    root = ET.fromstring(data)  # parses: a well-formed SVG document
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return " ".join(t for t in root.itertext())


def _labels(chart) -> list[str]:
    return [b.label for b in chart.bars] + [s.label for s in chart.series]


@pytest.mark.parametrize("kind", charts.CHART_KINDS)
def test_each_kind_renders_to_png(each_chart, kind):
    data = plot.render_plot([each_chart[kind]], "png")
    width, height = _png_size(data)
    assert width == 1320 and 200 < height < 800  # 12 in at 110 dpi; one panel
    assert len(data) > 10_000  # drawn, not blank


@pytest.mark.parametrize("kind", charts.CHART_KINDS)
def test_each_kind_renders_to_svg_with_its_labels(each_chart, kind):
    chart = each_chart[kind]
    text = _svg_text(plot.render_plot([chart], "svg"))
    for label in _labels(chart) + [chart.title]:
        assert label in text
    if kind == "memory":
        for name in ("weights", "KV in use", "KV free", "activations", "non-torch", "reserved"):
            assert name in text


@pytest.mark.parametrize("kind", charts.CHART_KINDS)
def test_each_kind_renders_to_a_self_contained_html_page(each_chart, kind):
    chart = each_chart[kind]
    page = plot.render_plot([chart], "html").decode("utf-8")
    assert page.startswith("<!DOCTYPE html>\n<!-- kvplan plot -->\n")
    parser = html.parser.HTMLParser()
    parser.feed(page)  # no exception: it parses
    for fetches in ("<script", "<link", "<img", "<iframe", " src=", 'href="http', "url(http", "@import"):  # nothing loaded
        assert fetches not in page
    svg = page[page.index("<svg"):page.index("</svg>") + 6]
    _svg_text(svg.encode("utf-8"))
    for label in _labels(chart):
        assert f"<td>{label.replace('&', '&amp;')}</td>" in page  # the figures' table under the picture


def test_the_same_charts_give_the_same_svg(each_chart):
    assert plot.render_plot([each_chart["kv"]], "svg") == plot.render_plot([each_chart["kv"]], "svg")


def test_a_model_that_fits_nowhere_draws_an_empty_concurrency_panel():
    spec = _spec("llama-3.1-70b")
    conc = charts.Chart("concurrency", "t", "context, tokens", "max concurrent sequences",
                        (charts.concurrency_series(spec, "vllm", Settings(gpu="l4"), [1024, 2048], "vllm"),))
    assert "not one sequence fits" in _svg_text(plot.render_plot([conc], "svg"))


def test_axis_texts():
    assert [plot.tokens_text(v) for v in (1024, 2047, 131_072, 2**20)] == ["1k", "2,047", "128k", "1M"]
    assert [plot.bytes_text(v) for v in (512, 2**20, 1.5 * 2**30)] == ["512 B", "1 MiB", "1.5 GiB"]


# ------------------------------------------------------------------ the command line


def test_estimate_plot_writes_all_three_charts(tmp_path, capsys):
    out = tmp_path / "plan.svg"
    r = run_cli(capsys, "estimate", "gemma-3-27b", "--gpu", "h100,l40s", "--kv-cache-dtype", "bf16,fp8", "--plot",
                str(out))
    assert r.exit_code == 0, r.stderr
    assert r.stderr.endswith(f"saved {out}\n")
    text = _svg_text(out.read_bytes())
    for title in ("Memory per GPU", "Max concurrent sequences vs context", "KV cache of one sequence vs context"):
        assert title in text
    for label in ("h100-sxm · KV bf16", "l40s · KV fp8", "dense reference: 62 layers of full attention"):
        assert label in text


def test_estimate_plot_without_a_gpu_draws_the_kv_chart(tmp_path, capsys):
    out = tmp_path / "kv.png"
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--plot", str(out))
    assert r.exit_code == 0, r.stderr
    _png_size(out.read_bytes())
    svg = tmp_path / "kv.svg"
    run_cli(capsys, "estimate", "llama-3.1-8b", "--plot", str(svg))
    text = _svg_text(svg.read_bytes())
    assert "KV cache of one sequence vs context" in text and "Memory per GPU" not in text


@pytest.mark.parametrize("engine", ["hf", "llama.cpp", "sglang", "trtllm"])
def test_estimate_plot_under_an_engine_profile(tmp_path, capsys, engine):
    out = tmp_path / "p.svg"
    r = run_cli(capsys, "estimate", "mistral-7b-v0.1", "--engine", engine, "--gpu", "l40s", "--plot", str(out))
    assert r.exit_code == 0, r.stderr
    text = _svg_text(out.read_bytes())
    assert f"mistral-7b-v0.1 · {engine}" in text and "Memory per GPU" in text


def test_compare_plot_html(tmp_path, capsys):
    out = tmp_path / "compare.html"
    r = run_cli(capsys, "compare", "jamba-v0.1", "--gpu", "h200", "--plot", str(out))
    assert r.exit_code == 0, r.stderr
    page = out.read_text()
    for engine in ("ideal", "vllm", "hf", "llama.cpp", "sglang", "trtllm"):
        assert f"<td>{engine}</td>" in page
    assert "dense reference: 32 layers of full attention" in page


def test_plot_refuses_another_extension_before_any_work(tmp_path, capsys):
    r = run_cli(capsys, "estimate", "no-such-model", "--plot", str(tmp_path / "x.pdf"))
    assert r.exit_code == 2
    assert r.stderr == f"error: --plot {tmp_path / 'x.pdf'}: the file name must end in .png, .svg or .html\n"


def test_plot_keeps_a_file_that_is_not_a_plot(tmp_path, capsys):
    out = tmp_path / "notes.png"
    out.write_text("my notes")
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--plot", str(out))
    assert r.exit_code == 2 and "already exists and is not a PNG image" in r.stderr
    assert out.read_text() == "my notes"
    assert run_cli(capsys, "estimate", "llama-3.1-8b", "--plot", str(out), "--force").exit_code == 0
    _png_size(out.read_bytes())
    assert run_cli(capsys, "estimate", "llama-3.1-8b", "--plot", str(out)).exit_code == 0  # its own: replaced


def test_plot_draws_a_sweep_of_24_bars(tmp_path, capsys):
    out = tmp_path / "x.svg"
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100", "-c", "1k,2k,4k,8k", "-b", "1,2,3,4,5,6",
                "--plot", str(out))
    assert r.exit_code == 0, r.stderr
    assert "1,024 tokens · batch 1" in _svg_text(out.read_bytes())


def test_plot_refuses_a_sweep_with_too_many_bars(tmp_path, capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100", "-c", "1k,2k,4k,8k,16k", "-b", "1,2,3,4,5",
                "--plot", str(tmp_path / "x.png"))
    assert r.exit_code == 2
    assert "at most 24; this sweep has 25" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_plot_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        f"sys.argv = ['kvplan', 'estimate', 'llama-3.1-8b', '--plot', {str(tmp_path / 'x.png')!r}]\n"
        "from kvplan.cli.app import main\nmain()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == ("error: --plot needs matplotlib, which is not installed: pip install 'kvplan[plot]' "
                           "(in a checkout: pip install -e '.[plot]')\n")
    assert proc.stdout == "" and not (tmp_path / "x.png").exists()


def test_estimate_without_plot_does_not_import_matplotlib():
    code = ("import sys; sys.argv=['kvplan','estimate','llama-3.1-8b','--gpu','h100','-f','json']\n"
            "from kvplan.cli.app import main\ntry:\n    main()\nexcept SystemExit as e:\n    assert not e.code\n"
            "assert 'matplotlib' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ search --plot: the cost / latency front

SEARCH = ("search", "llama-3.1-70b", "--requests-per-s", "10", "--prompt-tokens", "2k", "--output-tokens", "256",
          "--ttft-ms", "500", "--tpot-ms", "50", "--gpu", "h100-sxm,l4", "--tp", "4,8", "--kv-cache-dtype", "auto",
          "--max-num-seqs", "16,32,64,128,256")


def _front_of(capsys) -> tuple[list[dict], list[dict]]:
    """The same search's rows and families as --format json prints them (the file is read against these)."""
    d = json.loads(run_cli(capsys, *SEARCH, "-f", "json").stdout)
    return d["rows"], d["families"]


def _label(r: dict) -> str:
    return (f"{r['gpu']} × {r['gpus']:,}, tp {r['tensor_parallel_size']}, KV {r['kv_cache_dtype']}, "
            f"{r['max_num_seqs']:,} seqs")


def test_search_plot_svg_labels_every_row_of_the_front_and_the_rejected(tmp_path, capsys):
    rows, families = _front_of(capsys)
    out = tmp_path / "front.svg"
    r = run_cli(capsys, *SEARCH, "--plot", str(out))
    assert r.exit_code == 0, r.stderr
    assert r.stderr.endswith(f"saved {out}\n")
    text = _svg_text(out.read_bytes())
    assert "Cost vs TPOT" in text and "Cost vs TTFT p99" in text
    for i, row in enumerate(rows, 1):  # both panels label each row, numbered as the table
        assert text.count(f"{i}: {_label(row)}") == 2
    rejected = [f for f in families if not f["feasible"]]
    assert [f["value"] for f in rejected] == ["l4"]
    assert f"rejected: l4: {rejected[0]['reason']}" in text
    assert "feasible candidates (screened)" in text


def test_search_plot_html_holds_the_fronts_points(tmp_path, capsys):
    rows, _ = _front_of(capsys)
    out = tmp_path / "front.html"
    assert run_cli(capsys, *SEARCH, "--plot", str(out)).exit_code == 0
    page = out.read_text()
    html.parser.HTMLParser().feed(page)

    class Cells(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self._row, self._in = [], None, False

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self._row = []
            self._in = tag == "td"

        def handle_endtag(self, tag):
            if tag == "tr" and self._row:
                self.rows.append(self._row)
            self._in = False

        def handle_data(self, data):
            if self._in:
                self._row.append(data)

    cells = Cells()
    cells.feed(page)
    # two tables (TPOT, then TTFT p99), each row: number, deployment, x in ms, $ per 1M tokens
    want_tpot = [[str(i), _label(r), f"{r['tpot_s'] * 1000:,.3f}", f"{r['usd_per_million_tokens']:,.4f}"]
                 for i, r in enumerate(rows, 1)]
    want_ttft = [[str(i), _label(r), f"{r['ttft_s'] * 1000:,.3f}", f"{r['usd_per_million_tokens']:,.4f}"]
                 for i, r in enumerate(rows, 1)]
    assert cells.rows == want_tpot + want_ttft
    assert "<li>rejected: l4: " in page


def test_search_plot_png_and_a_bad_name_refused_first(tmp_path, capsys):
    out = tmp_path / "front.png"
    assert run_cli(capsys, *SEARCH, "--plot", str(out)).exit_code == 0
    width, height = _png_size(out.read_bytes())
    assert width == 1320 and height > 900  # two panels
    r = run_cli(capsys, "search", "no-such-model", "--plot", str(tmp_path / "x.pdf"))
    assert (r.exit_code, r.stderr) == (2, f"error: --plot {tmp_path / 'x.pdf'}: the file name must end in .png, .svg "
                                          "or .html\n")
