"""`kvplan search`: the cheapest deployment meeting latency targets (kvplan/plan/search.py, kvplan/cli/search.py).

The hand-worked case restates the planner's rules with the catalog's numbers (llama-3.1-70b's config.json,
gpus.yaml's h100-sxm): vLLM's budget (`gpu_worker.py::determine_available_memory`), its blocks
(`kv_cache_utils.py`), the roofline's decode step and prefill (README "Latency and cost") and the workload's
replicas (`Planner.gpus_for_workload`). The property test brute-forces the same space through estimate's own
pipeline (`kvplan.plan.pipeline.run`), one candidate at a time, and holds the search to it.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from cli_helpers import run_cli

# ------------------------------------------------------------------ the hand-worked case

# llama-3.1-70b (model_specs/llama-3.1-70b.yaml, from its config.json)
PARAMS = 70_553_706_496
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 8192, 80, 64, 8, 128, 28672, 128_256
EMBED = VOCAB * HIDDEN  # 1,050,673,152; untied, so the lm_head is as large
BODY = PARAMS - 2 * EMBED  # 68,452,360,192
# h100-sxm (kvplan/plan/data/gpus.yaml): NVML total 81,559 MiB, 3,350 GB/s, 989 dense bf16 TFLOPS, $2.99/h
H100_BYTES, H100_GBPS, H100_TFLOPS, H100_USD = 81_559 * 2**20, 3350, 989, 2.99
RPS, PROMPT, OUTPUT, TTFT, TPOT = 10, 2048, 256, 0.5, 0.05


# h100-sxm's NVLink (gpus.yaml): 900 GB/s both ways = 450 GB/s a direction, 0.4 us a ring step (NCCL tuning.cc
# hwLat Ring/LL) and NCCL's 3.6 us base latency an all-reduce (tuning.cc baseLat)
LINK_BYTES_PER_S, STEP_LATENCY_S, NCCL_BASE_S = 450e9, 0.4e-6, 3.6e-6


def comm(tp: int, tokens: int) -> float:
    """One forward's all-reduces over the tp ranks: 2 a layer + 1 for the vocab-parallel embedding, each a ring
    (Patarasuk & Yuan 2009): base + 2(tp - 1) steps + 2(tp - 1)/tp x the tokens x hidden bf16 message on the link."""
    message = tokens * HIDDEN * 2
    ring = NCCL_BASE_S + 2 * (tp - 1) * STEP_LATENCY_S + -(-2 * (tp - 1) * message // tp) / LINK_BYTES_PER_S
    return (2 * LAYERS + 1) * ring


def hand_candidate(tp: int, max_num_seqs: int) -> dict:
    """One vllm deployment of llama-3.1-70b on h100-sxm at bf16, worked from the rules above."""
    context = PROMPT + OUTPUT  # 2,304: the request is one sequence
    usable = -(-H100_BYTES * 920_000 // 10**6)  # ceil(total x 0.92), vLLM 0.32's default (vllm/config/cache.py)
    weights = -(-2 * PARAMS // tp)  # bf16, everything sharded over tp
    # profile run: 8,192 tokens x (2 x MLP / tp + 4 x hidden) x 2 B, + the sampler's fp32 logits for max_num_seqs
    activation = 8192 * (2 * MLP // tp + 4 * HIDDEN) * 2 + max_num_seqs * -(-VOCAB // tp) * 4
    non_torch = 2**30  # tp > 1: NCCL
    budget = usable - weights - activation - non_torch
    kv_token_layer = (KV_HEADS // tp) * HEAD_DIM * 2 * 2  # K and V, bf16, per rank
    block_set = LAYERS * 16 * kv_token_layer  # one 16-token block of every layer
    # 2,304 tokens = 144 whole blocks, from the blocks less the null block vLLM 0.32 holds back
    capacity = (budget // block_set - 1) // (context // 16)
    batch = min(max_num_seqs, capacity)
    bandwidth, peak = H100_GBPS * 1e9 * 0.8, H100_TFLOPS * 1e12 * 0.5
    # decode step: the weights (the embedding only its looked-up rows) + every KV byte held, or the FLOPs
    read = -(-(2 * BODY + 2 * batch * HIDDEN + 2 * EMBED) // tp) + batch * LAYERS * kv_token_layer * context
    flops = batch * ((2 * BODY + 2 * VOCAB * HIDDEN) // tp + LAYERS * 2 * (HEADS // tp) * 2 * HEAD_DIM * context)
    step = max(read / bandwidth, flops / peak) + comm(tp, batch)
    # prefill: 2 x body x prompt + one row of logits, + causal attention pairs; at least the weights' read
    pflops = (2 * BODY * PROMPT + 2 * VOCAB * HIDDEN) // tp + LAYERS * 2 * (HEADS // tp) * 2 * HEAD_DIM * (
        PROMPT * (PROMPT + 1) // 2)
    prefill = max(pflops / peak, weights / bandwidth) + comm(tp, PROMPT)
    replicas = max(1, -(-int(RPS * (prefill + OUTPUT * step / batch) * 10**6) // 10**6))
    gpus = replicas * tp
    cost = gpus * H100_USD / (RPS * 3600 * (PROMPT + OUTPUT)) * 1e6
    return dict(tp=tp, seqs=max_num_seqs, capacity=capacity, batch=batch, step=step, prefill=prefill, gpus=gpus, cost=cost,
                latency=prefill + OUTPUT * step, ok=prefill <= TTFT and step <= TPOT and batch >= 1)


def test_llama_70b_at_10_requests_a_second_by_hand(capsys):
    seqs = (16, 32, 64, 128, 256)
    hand = [hand_candidate(tp, s) for tp in (4, 8) for s in seqs]
    chosen = min((c for c in hand if c["ok"]), key=lambda c: (c["cost"], c["latency"]))
    # worked out (communication included): at tp 4 a replica decodes 32 sequences in 16.47 ms and prefills 2k tokens
    # in 163.5 ms, so 10 req/s need ceil(10 x (0.1635 + 256 x 0.01647 / 32)) = 3 replicas of 4 GPUs = 12; more
    # sequences (64, 128, 220 fit) also need 12 and cost the same, but decode slower; tp 8 needs 16 GPUs at any
    # batch of 32 or more (its 161 all-reduces of a 2k-token prefill take 21 ms on NVLink), 24 at 16
    assert (chosen["tp"], chosen["seqs"], chosen["batch"], chosen["gpus"]) == (4, 32, 32, 12)
    assert round(chosen["step"] * 1000, 2) == 16.47
    r = run_cli(capsys, "search", "llama-3.1-70b", "--requests-per-s", "10", "--prompt-tokens", "2k",
                "--output-tokens", "256", "--ttft-ms", "500", "--tpot-ms", "50", "--gpu", "h100-sxm",
                "--kv-cache-dtype", "auto", "--tp", "4,8", "--max-num-seqs", ",".join(map(str, seqs)), "-f", "json",
                "--no-queueing")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["rows"][0]
    assert (row["gpu"], row["tensor_parallel_size"], row["max_num_seqs"], row["batch"], row["gpus"]) == (
        "h100-sxm", chosen["tp"], chosen["seqs"], chosen["batch"], chosen["gpus"])
    assert row["usd_per_million_tokens"] == pytest.approx(chosen["cost"], rel=1e-12)
    assert row["tpot_s"] == pytest.approx(chosen["step"], rel=1e-12)
    assert row["ttft_s"] == pytest.approx(chosen["prefill"], rel=1e-12)
    # 12 GPUs at $2.99 for 10 x 2,304 tokens a second: $0.43258 per million tokens
    assert row["usd_per_million_tokens"] == pytest.approx(12 * 2.99 / (10 * 3600 * 2304) * 1e6, rel=1e-12)


def queued_candidate(c: dict) -> dict:
    """The hand candidate with TTFT queued (docs/search.md "TTFT with queueing"): each replica an M/D/1 queue (every
    request alike, so its service S is fixed: S^2 = E[S^2]) fed 10 / r requests a second, S = its prefill + 256 x its
    decode step / batch (the GPU time the replica count charges a request). Pollaczek-Khinchine: mean wait
    W = lambda S^2 / (2 (1 - rho)), rho = lambda S; p99 wait W / rho x ln(rho / 0.01) (an atom 1 - rho at 0, else
    exponential). Replicas: the fewest from estimate's count up with rho < 1 and prefill + p99 wait <= 500 ms."""
    service = c["prefill"] + OUTPUT * c["step"] / c["batch"]
    r = c["gpus"] // c["tp"]
    ok = c["ok"]
    while ok:
        lam = RPS / r
        rho = lam * service
        if rho < 1:
            wait = lam * service**2 / (2 * (1 - rho))
            p99 = wait / rho * math.log(rho / 0.01) if rho > 0.01 else 0.0
            if c["prefill"] + p99 <= TTFT:
                break
        r += 1
    ttft = c["prefill"] + p99 if ok else math.inf
    cost = r * c["tp"] * H100_USD / (RPS * 3600 * (PROMPT + OUTPUT)) * 1e6
    return dict(c, replicas=r, gpus=r * c["tp"], cost=cost, ttft=ttft, rho=RPS / r * service,
                latency=ttft + OUTPUT * c["step"])


def test_llama_70b_at_10_requests_a_second_with_queueing_by_hand(capsys):
    """Queueing moves the hand-worked answer. tp 4 x 32 sequences needs 3 replicas to carry 10 req/s, but each then
    runs at rho = 10/3 x (0.1635 + 256 x 0.01647 / 32) = 0.984: its p99 wait is seconds, and only 37 replicas bring
    TTFT p99 under 500 ms. tp 8 prefills 2k tokens in 94.8 ms; at 128 sequences a request holds a replica for
    0.0948 + 256 x 0.01379 / 128 = 0.1223 s: 2 replicas (estimate's count) run at rho 0.612, p99 TTFT 0.0948 +
    0.611 s; 3 at rho 0.408: W = 3.33 x 0.1223^2 / (2 x 0.592) = 0.0421 s, p99 wait 0.0421 / 0.408 x ln(40.8) =
    0.383 s, TTFT p99 0.478 s: 24 GPUs, $0.8652 / 1M tokens (tp 8 x 256 costs the same and decodes slower)."""
    seqs = (16, 32, 64, 128, 256)
    hand = [queued_candidate(hand_candidate(tp, s)) for tp in (4, 8) for s in seqs]
    chosen = min((c for c in hand if c["ok"]), key=lambda c: (c["cost"], c["latency"]))
    assert (chosen["tp"], chosen["seqs"], chosen["batch"], chosen["replicas"], chosen["gpus"]) == (8, 128, 128, 3, 24)
    assert round(chosen["ttft"], 3) == 0.478 and round(chosen["rho"], 3) == 0.408
    four = next(c for c in hand if (c["tp"], c["seqs"]) == (4, 32))
    assert four["replicas"] == 37
    r = run_cli(capsys, "search", "llama-3.1-70b", "--requests-per-s", "10", "--prompt-tokens", "2k",
                "--output-tokens", "256", "--ttft-ms", "500", "--tpot-ms", "50", "--gpu", "h100-sxm",
                "--kv-cache-dtype", "auto", "--tp", "4,8", "--max-num-seqs", ",".join(map(str, seqs)), "-f", "json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["rows"][0]
    assert (row["tensor_parallel_size"], row["max_num_seqs"], row["batch"], row["replicas"], row["gpus"]) == (
        8, 128, 128, 3, 24)
    assert row["ttft_s"] == pytest.approx(chosen["ttft"], rel=1e-9)
    assert row["utilization"] == round(chosen["rho"], 6)
    assert row["ttft_p50_s"] == pytest.approx(chosen["prefill"], rel=1e-12)  # rho < 0.5: half the requests wait not
    assert row["usd_per_million_tokens"] == pytest.approx(24 * 2.99 / (10 * 3600 * 2304) * 1e6, rel=1e-12)


# a deployment's figures: prefill of the p50 / p99 prompt, moments of (prefill, output) over the requests
_STATS = st.builds(lambda a, o, extra: (a, o, extra), st.floats(0.001, 2.0), st.integers(1, 4000),
                   st.floats(0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(stats=_STATS, tpot=st.floats(0.001, 0.2), batch=st.integers(1, 512), replicas=st.integers(1, 64),
       rps=st.lists(st.floats(0.01, 500.0), min_size=2, max_size=6))
def test_queued_ttft_never_falls_as_the_rate_rises(stats, tpot, batch, replicas, rps):
    """On one deployment (replicas fixed), TTFT p50 and p99 do not fall as requests/s rises; at rho >= 1 the queue
    never drains: inf. And the replica count the search takes is always below 100% utilisation."""
    from kvplan.plan.search import QueueStats, queue_replicas, queue_ttft

    a, o, extra = stats
    q = QueueStats(a, a * a * (1 + extra), a * o, o, o * o, a, a * (1 + extra))
    last = (-1.0, -1.0, -1.0)
    for rate in sorted(rps):
        rho, p50, p99 = (float(x[0]) for x in queue_ttft(q, rate, [replicas], [tpot], [batch]))
        assert rho == pytest.approx(rate / replicas * (a + o * tpot / batch), rel=1e-12)
        if rho >= 1:
            assert p50 == p99 == math.inf
        else:
            assert a <= p50 and a * (1 + extra) <= p99 < math.inf
        assert p50 >= last[1] and p99 >= last[2]
        last = (rho, p50, p99)
        taken = int(queue_replicas(q, rate, [replicas], [tpot], [batch], None)[0])
        assert taken >= replicas and rate / taken * (a + o * tpot / batch) < 1
        if taken > replicas:  # one fewer would be at or above 100%
            assert rate / (taken - 1) * (a + o * tpot / batch) >= 1


@pytest.mark.parametrize("queueing", [False, True])
def test_the_hand_worked_front_is_the_pareto_front_of_the_hand_candidates(capsys, queueing):
    seqs = (16, 32, 64, 128, 256)
    hand = [hand_candidate(tp, s) for tp in (4, 8) for s in seqs]
    if queueing:
        hand = [queued_candidate(c) for c in hand]
    hand = sorted((c for c in hand if c["ok"]), key=lambda c: (c["cost"], c["latency"]))
    front, best = [], math.inf
    for c in hand:
        if c["latency"] < best:
            front.append((c["tp"], c["seqs"], c["gpus"]))
            best = c["latency"]
    r = run_cli(capsys, "search", "llama-3.1-70b", "--requests-per-s", "10", "--prompt-tokens", "2k",
                "--output-tokens", "256", "--ttft-ms", "500", "--tpot-ms", "50", "--gpu", "h100-sxm",
                "--kv-cache-dtype", "auto", "--tp", "4,8", "--max-num-seqs", ",".join(map(str, seqs)), "-f", "json",
                *([] if queueing else ["--no-queueing"]))
    rows = json.loads(r.stdout)["rows"]
    assert [(x["tensor_parallel_size"], x["max_num_seqs"], x["gpus"]) for x in rows] == front


# ------------------------------------------------------------------ the property: estimate agrees, nothing dropped


def _brute_force(model, engine, gpus, tps, dtypes, seqs, prompt, output, rps, ttft, tpot):
    """Every candidate through estimate's pipeline, one at a time: (cost, latency, key, plan) of the feasible."""
    from kvplan.errors import InputError
    from kvplan.plan.pipeline import Settings, run
    from kvplan.sources.catalog import resolve_spec

    spec = resolve_spec(model, fast=True)
    out = []
    for gpu in gpus:
        for tp in tps:
            for dtype in dtypes:
                for s in seqs:
                    base = Settings(context=prompt + output, gpu=gpu, tp=tp, kv_cache_dtype=dtype, max_num_seqs=s,
                                    prompt_tokens=prompt, output_tokens=output, requests_per_s=rps)
                    try:
                        first = run(spec, engine, base, engine_rows=False).plan
                    except InputError:  # tp that does not divide the heads; a dtype vLLM refuses
                        continue
                    batch = min(s, first.max_concurrent_sequences)
                    if batch < 1 or first.vllm_starts is False:
                        continue
                    plan = run(spec, engine, base._replace(batch=batch), engine_rows=False).plan
                    if plan.gpus_needed is None or plan.prefill_s > ttft or plan.decode_step_s > tpot:
                        continue
                    cost = plan.gpus_needed * plan.usd_per_hour / (tp * rps * 3600 * (prompt + output)) * 1e6
                    out.append((cost, plan.prefill_s + output * plan.decode_step_s, (gpu, tp, dtype, s), plan))
    return out


MODELS = ["llama-3.1-8b", "gemma-3-27b", "mixtral-8x7b", "qwen3-8b", "deepseek-v2-lite"]


@settings(max_examples=6, deadline=None)
@given(model=st.sampled_from(MODELS), prompt=st.integers(16, 6000), output=st.integers(1, 1500),
       rps=st.sampled_from([0.5, 3.0, 20.0]), ttft=st.sampled_from([0.05, 0.3, 2.0]),
       tpot=st.sampled_from([0.008, 0.02, 0.06]))
def test_every_row_meets_the_targets_under_estimate_and_nothing_cheaper_is_dropped(model, prompt, output, rps, ttft,
                                                                                     tpot):
    check_against_estimate(model, prompt, output, rps, ttft, tpot)


@pytest.mark.parametrize("model, prompt, output, rps, ttft, tpot", [
    ("llama-3.1-8b", 2048, 256, 10.0, 0.5, 0.05),
    ("gemma-3-27b", 8000, 500, 2.0, 2.0, 0.06),  # sliding + full: vLLM's groups and window reservation
    ("mixtral-8x7b", 1000, 1000, 5.0, 0.3, 0.03),  # MoE: the experts a batch touches
    ("deepseek-v2-lite", 3000, 200, 20.0, 0.3, 0.02),  # MLA, 64-token blocks
])
def test_the_property_on_workloads_that_have_answers(model, prompt, output, rps, ttft, tpot):
    assert check_against_estimate(model, prompt, output, rps, ttft, tpot) > 0


def queued(plan, tp: int, output: int, rps: float, ttft: float) -> tuple[int, float]:
    """(replicas, TTFT p99) of an estimate plan under the queue, worked apart from the code (queued_candidate's M/D/1:
    every request alike): the fewest replicas from estimate's count with rho < 1 and the TTFT p99 within `ttft`."""
    service = plan.prefill_s + output * plan.decode_step_s / plan.batch
    r = plan.gpus_needed // tp
    while True:
        lam = rps / r
        rho = lam * service
        if rho < 1:
            wait = lam * service**2 / (2 * (1 - rho))
            p99 = plan.prefill_s + (wait / rho * math.log(rho / 0.01) if rho > 0.01 else 0.0)
            if p99 <= ttft:
                return r, p99
        r += 1


@pytest.mark.parametrize("model, prompt, output, rps, ttft, tpot", [
    ("llama-3.1-8b", 2048, 256, 10.0, 0.5, 0.05),
    ("mixtral-8x7b", 1000, 1000, 5.0, 0.3, 0.03),
    ("deepseek-v2-lite", 3000, 200, 20.0, 0.3, 0.02),
])
def test_the_property_with_queueing(model, prompt, output, rps, ttft, tpot):
    assert check_against_estimate(model, prompt, output, rps, ttft, tpot, queueing=True) > 0


def check_against_estimate(model, prompt, output, rps, ttft, tpot, queueing: bool = False) -> int:
    """Every printed row meets the targets under estimate; the cheapest feasible candidate is row 1; the rows form
    the Pareto front of the brute-forced feasible set. Returns how many rows the search printed. `queueing`: the
    brute force's replicas and TTFT are `queued`'s, and each row's GPUs are at least estimate's."""
    from kvplan.errors import InputError
    from kvplan.plan import search as core
    from kvplan.plan.gpus import resolve_gpu
    from kvplan.plan.pipeline import Settings, run
    from kvplan.sources.catalog import resolve_spec

    gpus, tps, dtypes, seqs = ("h100-sxm", "l4", "a100-40gb-pcie"), (1, 2, 4), ("auto", "fp8"), (1, 2, 5, 16, 64, 256)
    spec = resolve_spec(model, fast=True)
    space = core.Space(tuple((g, resolve_gpu(g)) for g in gpus), tps, (1,), dtypes, seqs)
    settings_ = Settings(context=None, prompt_tokens=prompt, output_tokens=output, requests_per_s=rps)
    brute = _brute_force(model, "vllm", gpus, tps, dtypes, seqs, prompt, output, rps, ttft, tpot)
    if queueing:  # the same candidates (the prefill alone meets the target), more replicas, a queued TTFT
        brute = [(queued(p, k[1], output, rps, ttft)[0] * k[1] * p.usd_per_hour / (k[1] * rps * 3600 * (prompt + output))
                  * 1e6, queued(p, k[1], output, rps, ttft)[1] + output * p.decode_step_s, k, p) for _, _, k, p in brute]
    try:
        result = core.search(spec, "vllm", core.fixed_workload(prompt, output, rps), core.Targets(ttft, tpot), space,
                             settings_, queueing=queueing)
    except InputError as exc:
        assert brute == [], f"search found nothing ({exc}) but estimate meets the targets at {brute[0][2]}"
        return 0
    rows = result.rows
    assert rows and brute
    for row in rows:  # estimate, with the row's own settings, meets the targets and gives its figures
        plan = run(spec, "vllm", Settings(context=prompt + output, batch=row.batch, gpu=row.gpu,
                                          tp=row.tensor_parallel_size, kv_cache_dtype=row.kv_cache_dtype,
                                          max_num_seqs=row.max_num_seqs, prompt_tokens=prompt, output_tokens=output,
                                          requests_per_s=rps), engine_rows=False).plan
        assert plan.fits and plan.vllm_starts
        assert plan.prefill_s <= ttft and plan.decode_step_s <= tpot
        if queueing:
            replicas, p99 = queued(plan, row.tensor_parallel_size, output, rps, ttft)
            assert plan.decode_step_s == row.tpot_s and row.gpus >= plan.gpus_needed
            assert (row.replicas, row.gpus) == (replicas, replicas * row.tensor_parallel_size)
            assert row.ttft_s == pytest.approx(p99, rel=1e-9) and plan.prefill_s <= row.ttft_s <= ttft
            continue
        assert (plan.decode_step_s, plan.prefill_s, plan.gpus_needed) == (row.tpot_s, row.ttft_s, row.gpus)
    # the cheapest feasible candidate of the whole space is the first row's cost
    assert rows[0].usd_per_million_tokens == pytest.approx(min(c for c, *_ in brute), rel=1e-12)
    assert result.feasible == len(brute)
    # no feasible candidate beats a row on both axes (the front is a front)
    for row in rows:
        better = [k for c, lat, k, _ in brute if c <= row.usd_per_million_tokens * (1 + 1e-12)
                  and lat < row.request_latency_s * (1 - 1e-12)]
        assert better == [], (row, better)
    return len(rows)


def test_the_numpy_screen_is_the_planners_arithmetic():
    """Each family's screened batch, decode step and GPUs equal estimate's, kind by kind (MoE, MLA, sliding,
    Mamba hybrids, pipeline stages), so the screen drops nothing estimate would keep. The largest --max-num-seqs is
    above what the KV memory holds, so the screen's capacity is the pool's (0.32's null block, Mamba state pages);
    the 8,500-token workload reaches past gemma-3's 1,024-token window plus the tokens in flight (2 x 8,192)."""
    from kvplan.plan import search as core
    from kvplan.plan.gpus import resolve_gpu
    from kvplan.plan.pipeline import Settings, run
    from kvplan.sources.catalog import resolve_spec

    seqs = (1, 2, 7, 64, 255, 2048)
    cases = [(m, 1000, 200) for m in ("llama-3.1-8b", "gemma-3-27b", "mixtral-8x7b", "deepseek-v2-lite", "jamba-v0.1",
                                      "gpt-oss-20b")] + [("gemma-3-27b", 8000, 500), ("jamba-v0.1", 8000, 500)]
    for model, prompt, output in cases:
        spec = resolve_spec(model, fast=True)
        for engine in ("vllm", "ideal"):
            for tp, pp in ((1, 1), (2, 1), (2, 2)):
                s = Settings(context=None, prompt_tokens=prompt, output_tokens=output, requests_per_s=3.0)
                ctx = core._Context(spec, engine, core.fixed_workload(prompt, output, 3.0), core.Targets(10.0, 1.0), s,
                                    queueing=False)  # estimate's replica count (queueing adds to it)
                f = core._family(ctx, "h200", resolve_gpu("h200"), tp, pp, "auto", seqs)
                assert f.arrays is not None, (model, f.reason)
                for j, n in enumerate(seqs):
                    one = s._replace(gpu="h200", tp=tp, pp=pp, max_num_seqs=n, context=prompt + output)
                    batch = min(n, run(spec, engine, one, engine_rows=False).plan.max_concurrent_sequences)
                    assert batch == f.arrays["batch"][j], (model, engine, tp, pp, n)
                    plan = run(spec, engine, one._replace(batch=batch), engine_rows=False).plan
                    assert f.arrays["tpot"][j] == pytest.approx(plan.decode_step_s, rel=1e-12)
                    assert f.arrays["gpus"][j] == plan.gpus_needed


# ------------------------------------------------------------------ workloads as distributions


def test_a_jsonl_histogram_gives_means_p99_and_the_kv_in_use(tmp_path):
    from kvplan.plan import search as core
    from kvplan.plan.gpus import resolve_gpu
    from kvplan.plan.pipeline import Settings
    from kvplan.sources.catalog import resolve_spec

    f = tmp_path / "w.jsonl"
    # 99 requests of 100 + 4 tokens and one of 1,000 + 2 (a histogram's bins, then a trace's single line)
    f.write_text('{"prompt_tokens": 100, "output_tokens": 4, "count": 98}\n\n'
                 '{"prompt_tokens": 100, "output_tokens": 4}\n{"prompt_tokens": 1000, "output_tokens": 2}\n')
    w = core.read_workload(str(f), 2.0)
    assert w.requests == ((100, 4, 99), (1000, 2, 1))
    assert (w.count, w.prompt_mean, w.output_mean, w.longest) == (100, 109, 4, 1002)  # ceil(10,900/100), ceil(398/100)
    assert w.prompt_percentile(99) == 100 and w.prompt_percentile(100) == 1000
    assert w.tokens_per_request == pytest.approx((99 * 104 + 1002) / 100)
    spec = resolve_spec("llama-3.1-8b", fast=True)
    space = core.Space((("h100-sxm", resolve_gpu("h100-sxm")),), (1,), (1,), ("auto",), (3,))
    result = core.search(spec, "vllm", w, core.Targets(1.0, 1.0), space,
                         Settings(context=None, prompt_tokens=109, output_tokens=4, requests_per_s=2.0), queueing=False)
    row = result.rows[0]
    assert row.batch == 3
    # vLLM reserves whole 16-token blocks of 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 B = 131,072 B a token:
    # a 100-token prompt at decode step t = 1..4 holds 101..104 tokens = 7 blocks; the long one 1,001..1,002 = 63
    block = 16 * 131_072
    states = [(7 * block, 99 * 4), (63 * block, 1 * 2)]  # (bytes, weight: requests x decode steps)
    total = sum(n for _, n in states)
    mean = sum(b * n for b, n in states) / total
    sd = math.sqrt(sum(b * b * n for b, n in states) / total - mean * mean)
    assert row.kv_bytes_per_gpu_avg == int(3 * mean)
    assert row.kv_bytes_per_gpu_p99 == min(3 * 63 * block, int(3 * mean + 2.3263478740408408 * math.sqrt(3) * sd))
    assert row.kv_bytes_per_gpu_worst == 3 * 63 * block  # ceil(1,002 / 16) = 63 blocks each
    # estimate at the mean request (109 + 4 tokens) gives its TPOT and GPUs; the p99 prompt's prefill its TTFT
    from kvplan.plan.pipeline import run

    mean = run(spec, "vllm", Settings(context=113, batch=3, gpu="h100-sxm", max_num_seqs=3, prompt_tokens=109,
                                      output_tokens=4, requests_per_s=2.0), engine_rows=False).plan
    assert (mean.decode_step_s, mean.gpus_needed) == (row.tpot_s, row.gpus)
    p99 = run(spec, "vllm", Settings(context=1002, gpu="h100-sxm", max_num_seqs=3, prompt_tokens=100),
              engine_rows=False).plan
    assert p99.prefill_s == row.ttft_s
    assert result.workload["max_model_len"] == 1002 and result.workload["prompt_tokens_p99"] == 100


# ------------------------------------------------------------------ bad input


def test_impossible_targets_name_the_target_and_the_closest_candidate(capsys):
    r = run_cli(capsys, "search", "llama-3.1-8b", "--requests-per-s", "1", "--prompt-tokens", "1k",
                "--output-tokens", "100", "--ttft-ms", "1000", "--tpot-ms", "0.1", "--gpu", "h100-sxm",
                "--tp", "1,2", "--kv-cache-dtype", "auto")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr.startswith("error: no deployment of llama-3.1-8b meets --tpot-ms 0.1: the closest is h100-sxm tp 2, "
                               "KV auto, --max-num-seqs 1: TTFT ")
    assert r.stderr.count("\n") == 1


def test_an_empty_gpu_list_is_refused(capsys):
    r = run_cli(capsys, "search", "llama-3.1-8b", "--requests-per-s", "1", "--prompt-tokens", "1k",
                "--output-tokens", "100", "--tpot-ms", "50", "--gpu", "")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == ("error: --gpu '': the list of GPUs to search is empty; name at least one "
                        "(`kvplan gpus` lists them)\n")


@pytest.mark.parametrize("text, line, message", [
    ('{"prompt_tokens": 10, "output_tokens": 5}\nnot json\n', 2, "not JSON (Expecting value)"),
    ('{"prompt_tokens": 10, "output_tokens": 5}\n\n{"prompt_tokens": -3, "output_tokens": 5}\n', 3,
     "prompt_tokens -3 must be at least 1 (a request has a prompt and generates a token)"),
    ('{"prompt_tokens": 10, "output_tokens": 0}\n', 1,
     "output_tokens 0 must be at least 1 (a request has a prompt and generates a token)"),
    ('{"prompt_tokens": 10}\n', 1, "output_tokens is missing"),
    ('{"prompt_tokens": 10.5, "output_tokens": 3}\n', 1, "prompt_tokens 10.5 is not a whole number"),
    ('[10, 5]\n', 1, "a line is one JSON object with prompt_tokens and output_tokens, not list"),
    ('{"prompt": 10, "output_tokens": 5}\n', 1, "'prompt' is not a workload key (one of prompt_tokens, "
                                                 "output_tokens, count)"),
])
def test_a_bad_workload_file_names_the_file_and_line(capsys, tmp_path, text, line, message):
    f = tmp_path / "trace.jsonl"
    f.write_text(text)
    r = run_cli(capsys, "search", "llama-3.1-8b", "--requests-per-s", "1", "--workload", str(f), "--tpot-ms", "50",
                "--gpu", "h100-sxm")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr.startswith(f"error: {f}:{line}: {message}")
    assert r.stderr.count("\n") == 1


def test_each_dimension_says_why_none_of_its_candidates_is_feasible(capsys):
    """A KV dtype vLLM refuses gives vLLM's words; a GPU whose weights never fit names the family nearest to fitting
    (the largest tp); a tp past the KV heads says the heads are replicated."""
    from kvplan.plan.pipeline import Settings, run
    from kvplan.sources.catalog import resolve_spec

    r = run_cli(capsys, "search", "deepseek-v3.2", "--requests-per-s", "1", "--prompt-tokens", "4k", "--output-tokens",
                "512", "--ttft-ms", "3000", "--tpot-ms", "100", "--gpu", "b300,h100-sxm", "--tp", "4,8",
                "--kv-cache-dtype", "auto,fp8", "--max-num-seqs", "1,8,64", "-f", "json")
    assert r.exit_code == 0, r.stderr
    why = {(f["dimension"], f["value"]): f for f in json.loads(r.stdout)["families"]}
    assert why["kv_cache_dtype", "fp8"]["feasible"] == 0
    assert why["kv_cache_dtype", "fp8"]["reason"].startswith(
        "--kv-cache-dtype fp8: vllm refuses: kvplan: vLLM runs DeepSeek sparse attention's latent in auto/bfloat16")
    spec = resolve_spec("deepseek-v3.2", fast=True)
    tp8 = run(spec, "vllm", Settings(context=4608, gpu="h100-sxm", tp=8), engine_rows=False).plan
    assert tp8.kv_budget_bytes_per_gpu <= 0  # even at tp 8 the weights leave nothing
    assert why["gpu", "h100-sxm"]["reason"] == (
        f"the weights ({tp8.weights_bytes_per_gpu / 2**30:,.1f} GiB a GPU) leave no KV budget of the "
        f"{tp8.usable_bytes_per_gpu / 2**30:,.1f} GiB vLLM may use (tp 8, KV auto)")
    r = run_cli(capsys, "search", "llama-3.1-8b", "--requests-per-s", "1", "--prompt-tokens", "1k", "--output-tokens",
                "100", "--tpot-ms", "50", "--gpu", "h100-sxm", "--tp", "8,16", "--max-num-seqs", "1", "-f", "json")
    notes = {f["value"]: f["note"] for f in json.loads(r.stdout)["families"] if f["dimension"] == "tp"}
    assert notes == {"8": "", "16": "8 KV heads: each replicated on 2 ranks, no KV saved per GPU"}


def test_no_target_and_a_missing_workload_are_refused(capsys):
    r = run_cli(capsys, "search", "llama-3.1-8b", "--requests-per-s", "1", "--prompt-tokens", "1k",
                "--output-tokens", "100")
    assert (r.exit_code, r.stderr) == (2, "error: give --ttft-ms, --tpot-ms or both: the search finds the cheapest "
                                          "deployment that meets them\n")
    r = run_cli(capsys, "search", "llama-3.1-8b", "--requests-per-s", "1", "--tpot-ms", "50")
    assert r.exit_code == 2 and r.stderr.startswith("error: give --prompt-tokens and --output-tokens")


def test_search_leaves_torch_out(capsys):
    import sys

    r = run_cli(capsys, "search", "llama-3.1-8b", "--requests-per-s", "1", "--prompt-tokens", "1k",
                "--output-tokens", "100", "--tpot-ms", "50", "--gpu", "h100-sxm", "-f", "json")
    assert r.exit_code == 0, r.stderr
    import subprocess

    code = ("import sys\nfrom kvplan.cli.app import main\nsys.argv=['kvplan','search','llama-3.1-8b','--requests-per-s',"
            "'1','--prompt-tokens','1k','--output-tokens','100','--tpot-ms','50','--gpu','h100-sxm','-f','json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_estimate_max_num_seqs_caps_the_cost_batch_and_profiles_refuse_it(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-70b", "--gpu", "h100-sxm", "--tp", "4", "--context", "2304",
                "--prompt-tokens", "2048", "--output-tokens", "256", "--requests-per-s", "10", "--max-num-seqs", "64",
                "-f", "json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["cost_batch"] == 64 and d["max_concurrent_sequences"] > 64
    assert d["assumptions"]["max_num_seqs"] == 64
    hand = hand_candidate(4, 64)
    assert d["gpus_needed"] == hand["gpus"] and d["max_concurrent_sequences"] == hand["capacity"]
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", "sglang", "--gpu", "h100-sxm", "--max-num-seqs", "4")
    assert (r.exit_code, r.stderr) == (2, "error: --max-num-seqs is only for --engine vllm and ideal (kvplan's "
                                          "planner); --engine sglang has its own budget rule\n")


def test_emit_prints_the_launch_command_of_row_1(capsys):
    """--emit vllm: `vllm serve` for the cheapest row, in vLLM's flags: max_model_len the longest request
    (2,048 + 256), and the row's tp, KV dtype, --max-num-seqs and the --max-num-batched-tokens its estimate states."""
    args = ("search", "llama-3.1-70b", "--requests-per-s", "10", "--prompt-tokens", "2k", "--output-tokens", "256",
            "--ttft-ms", "500", "--tpot-ms", "50", "--gpu", "h100-sxm")
    row = json.loads(run_cli(capsys, *args, "-f", "json").stdout)["rows"][0]
    given = row["estimate_args"]
    tokens = given[given.index("--max-num-batched-tokens") + 1]
    r = run_cli(capsys, *args, "--emit", "vllm")
    assert r.exit_code == 0, r.stderr
    words = ["vllm", "serve", "meta-llama/Llama-3.1-70B", "--max-model-len", "2304"]
    if row["kv_cache_dtype"] != "auto":
        words += ["--kv-cache-dtype", row["kv_cache_dtype"]]
    if row["tensor_parallel_size"] > 1:
        words += ["--tensor-parallel-size", str(row["tensor_parallel_size"])]
    words += ["--max-num-batched-tokens", tokens, "--max-num-seqs", str(row["max_num_seqs"])]
    assert r.stdout == " ".join(words) + "\n"
    r = run_cli(capsys, *args, "--engine", "ideal", "--emit", "vllm")
    assert r.exit_code == 2 and "ideal" in r.stderr and "Traceback" not in r.stderr
