"""Kill tests for the survivors of the spot check on this session's new modules (docs/mutation.md, "Spot check of
2026-12-08"): each expected value is worked by hand here, not taken from the code under test."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvplan.measure import load
from kvplan.plan import comm
from kvplan.sources.llamacpp_log import LlamaCppLog, RecurrentLine


def test_one_rank_gathers_nothing_and_pays_no_base_latency():
    # NCCL is not called at one rank: no base latency, no steps (comm.py ring_allgather_seconds)
    assert comm.ring_allgather_seconds(1_000_000, 1, 450.0, 0.4e-6, 3.6e-6) == 0.0
    # two ranks: 3.6 us + 1 step x 0.4 us + half of 1,000,000 B over 450 GB/s
    assert comm.ring_allgather_seconds(1_000_000, 2, 450.0, 0.4e-6, 3.6e-6) == pytest.approx(
        3.6e-6 + 0.4e-6 + 500_000 / 450e9, rel=1e-12)


def test_mamba1_x_proj_width_rounds_dt_rank_up():
    # dt_rank "auto" = ceil(hidden / 16): a hidden size of 4,100 gives 257 (256.25 rounded up), + 2 x 16
    spec = SimpleNamespace(hidden_size=4100, mamba_d_state=16)
    width = comm.mamba1_x_proj_width(spec)
    assert width == 289 and isinstance(width, int)


def _recurrent(size_mib: float) -> RecurrentLine:
    return RecurrentLine(size_mib, 1, 2, 1, 1, "f32", size_mib / 2, "f32", size_mib / 2, 0.0, "")


def test_a_recurrent_only_log_prints_its_state_bytes():
    # a Mamba-only model has no llama_kv_cache line: the printed total is the recurrent state's 1.50 MiB
    assert LlamaCppLog(recurrent=_recurrent(1.5)).kv_bytes_printed == 1.5 * 2**20
    assert LlamaCppLog().kv_bytes_printed is None  # neither line: the log does not say


@pytest.mark.parametrize("url", ["https://127.0.0.1:8000", "http://:8000", "ftp://host:1"])
def test_only_an_http_url_with_a_host_is_taken(url):
    with pytest.raises(ValueError, match="an http://host:port URL is expected"):
        load._split(url)


def test_the_level_p99_is_the_99th_of_100():
    # 100 requests: request i's first token at i ms and its second i/10 ms later (TPOT i/10 ms): nearest-rank p99
    # is the 99th smallest (TTFT 99 ms, TPOT 9.9 ms), p50 the 50th (50 ms, 5.0 ms)
    results = [load.RequestResult(10, 2, 0.0, [i / 1000, i / 1000 + i / 10000]) for i in range(1, 101)]
    times = load.summarize(results)
    assert times.ttft_p99_s == pytest.approx(0.099) and times.ttft_p50_s == pytest.approx(0.050)
    assert times.tpot_p99_s == pytest.approx(0.0099) and times.tpot_p50_s == pytest.approx(0.0050)


def test_vllm_options_default_to_one_gpu_one_stage():
    # kvplan.estimate()'s and the engines' default deployment is one GPU (tp 1) in one pipeline stage (pp 1),
    # vLLM's own defaults (--tensor-parallel-size 1, --pipeline-parallel-size 1: vllm/config/parallel.py)
    from kvplan.engines.vllm import VllmOptions

    options = VllmOptions()
    assert (options.tp, options.pp) == (1, 1)
