"""`kvplan search`: the cheapest deployments of a model that meet a workload's latency targets.

Contract. In: a model spec, a workload (requests per second; one prompt and output length, or a JSONL
histogram / trace of them), targets (time to first token, time per output token) and a space to
enumerate (GPUs x tensor-parallel sizes x pipeline stages x KV dtypes x vLLM's --max-num-seqs). Out: a
`SearchResult`: the Pareto front of cost per million tokens against request latency over the feasible
candidates, cheapest first, each row the figures `kvplan estimate` gives for the same settings
(`Row.estimate_args`), and for every value of every dimension the cheapest feasible cost or why none is.

A candidate is feasible when vLLM (or the ideal engine) starts at the workload's longest request, the
time to first token of the p99 prompt (`Planner.prefill`) meets --ttft-ms, and the decode step at the
batch the workload runs (`min(--max-num-seqs, the sequences of the mean request that fit)`, the mean
request's length: `Planner.decode_step`) meets --tpot-ms. Its GPUs are `Planner.gpus_for_workload`'s:
replicas = ceil(requests/s x (prefill + output tokens x step / batch)), x tp x pp. Its cost: those GPUs'
$ per hour over the tokens (prompt + output) the workload brings in an hour.

Speed. The planner costs ~50 us to build and ~10 us a decode step, so the search builds one planner per
*family* (GPU, tp, pp, KV dtype: one layout, one set of weights) and evaluates every --max-num-seqs value of
the family at once in numpy: the KV budget falls by the profile run's sampler logits per extra sequence
(`activation_estimate`, linear in max_num_seqs), the pool's capacity is the floor division `Pool.max_sequences`
does, and the decode step is `Planner.decode_step`'s sum over stages of max(bytes / bandwidth, FLOPs / peak)
with each term's batch dependence taken from the planner itself. That screen decides nothing alone: every
row printed is recomputed by `kvplan.plan.pipeline.run` (estimate's own path) and kept only when estimate
agrees, so a change to the planner or to vLLM's rules reaches the printed figures unchanged.

Pure: no printing; reads the GPU catalog and a workload file only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from kvplan.errors import InputError

# The standard normal's 99th percentile: the p99 of KV in use is a normal approximation of the sum over
# the running requests (each at an independent point of its life).
P99_Z = 2.3263478740408408
DEFAULT_MAX_NUM_SEQS = tuple(range(1, 513))  # every value to 512 (vLLM's default is 256 on most GPUs)
DEFAULT_TPS = (1, 2, 4, 8)
DEFAULT_PPS = (1,)
# What vLLM runs besides the model's own dtype ("auto") that kvplan sizes; the other fp8 spellings size alike
DEFAULT_VLLM_KV_DTYPES = ("auto", "fp8")
SCREEN_SLACK = 1e-9  # the numpy screen admits candidates this far past a target; estimate's figures decide


# ------------------------------------------------------------------ the workload


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests as (prompt tokens, output tokens, count): one class for fixed lengths, more for a histogram."""

    requests: tuple[tuple[int, int, int], ...]
    requests_per_s: float
    source: str  # "--prompt-tokens / --output-tokens", or the JSONL file

    @property
    def count(self) -> int:
        return sum(w for _, _, w in self.requests)

    @property
    def prompt_mean(self) -> int:
        """Mean prompt, rounded up (the planner takes whole tokens)."""
        return -(-sum(p * w for p, _, w in self.requests) // self.count)

    @property
    def output_mean(self) -> int:
        return -(-sum(o * w for _, o, w in self.requests) // self.count)

    @property
    def tokens_per_request(self) -> float:
        """Prompt + output tokens of the mean request (exact: what the cost divides by)."""
        return sum((p + o) * w for p, o, w in self.requests) / self.count

    def prompt_percentile(self, percent: int) -> int:
        """The smallest prompt length at or below which `percent`% of the requests lie."""
        need, seen = percent * self.count, 0
        for p, w in sorted((p, w) for p, _, w in self.requests):
            seen += w * 100
            if seen >= need:
                return p
        raise AssertionError("unreachable: the weights sum to the count")

    @property
    def longest(self) -> int:
        """The longest request (prompt + output): vLLM's max_model_len must hold it."""
        return max(p + o for p, o, _ in self.requests)

    @property
    def fixed(self) -> bool:
        return len({(p, o) for p, o, _ in self.requests}) == 1


_WORKLOAD_KEYS = ("prompt_tokens", "output_tokens", "count")


def read_workload(path: str, requests_per_s: float) -> Workload:
    """A JSONL trace (one request a line) or histogram (`count` requests a line); exit 2 naming file:line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"--workload {path}: not UTF-8 text; give a JSONL file, one JSON object a line") from None
    except OSError as exc:
        raise InputError(f"--workload {path}: {exc.strerror or exc}; check the path") from None
    found: dict[tuple[int, int], int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{n}: not JSON ({exc.msg}); each line is one object such as "
                             '{"prompt_tokens": 2048, "output_tokens": 256}') from None
        if not isinstance(item, dict):
            raise InputError(f"{path}:{n}: a line is one JSON object with prompt_tokens and output_tokens, "
                             f"not {type(item).__name__}")
        unknown = [k for k in item if k not in _WORKLOAD_KEYS]
        if unknown:
            raise InputError(f"{path}:{n}: {unknown[0]!r} is not a workload key (one of {', '.join(_WORKLOAD_KEYS)})")
        values = []
        for key in _WORKLOAD_KEYS:
            value = item.get(key, 1 if key == "count" else None)
            if value is None:
                raise InputError(f"{path}:{n}: {key} is missing")
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{path}:{n}: {key} {json.dumps(value)} is not a whole number")
            if value < 1:
                raise InputError(f"{path}:{n}: {key} {value} must be at least 1"
                                 + (" (a request has a prompt and generates a token)" if key != "count" else ""))
            values.append(value)
        prompt, output, count = values
        found[(prompt, output)] = found.get((prompt, output), 0) + count
    if not found:
        raise InputError(f"--workload {path}: no requests (the file has no JSON lines)")
    return Workload(tuple((p, o, w) for (p, o), w in sorted(found.items())), requests_per_s, path)


def fixed_workload(prompt_tokens: int, output_tokens: int, requests_per_s: float) -> Workload:
    return Workload(((prompt_tokens, output_tokens, 1),), requests_per_s, "--prompt-tokens / --output-tokens")


# ------------------------------------------------------------------ the space and the answer


@dataclass(frozen=True, slots=True)
class Space:
    """What the search enumerates. `gpus`: (name or file as given, the GPU object)."""

    gpus: tuple[tuple[str, Any], ...]
    tps: tuple[int, ...] = DEFAULT_TPS
    pps: tuple[int, ...] = DEFAULT_PPS
    kv_cache_dtypes: tuple[str, ...] = DEFAULT_VLLM_KV_DTYPES
    max_num_seqs: tuple[int, ...] = DEFAULT_MAX_NUM_SEQS

    @property
    def size(self) -> int:
        return len(self.gpus) * len(self.tps) * len(self.pps) * len(self.kv_cache_dtypes) * len(self.max_num_seqs)


@dataclass(frozen=True, slots=True)
class Row:
    """One feasible deployment, in estimate's figures."""

    gpu: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    kv_cache_dtype: str
    max_num_seqs: int
    batch: int  # sequences one replica runs at once: min(max_num_seqs, what fits at the mean request)
    replicas: int
    gpus: int
    ttft_s: float  # TTFT p99: the p99 wait in the replica's queue + the prefill of the p99 prompt (--no-queueing: no wait)
    tpot_s: float  # a decode step at `batch`, each sequence at the mean request's length
    request_latency_s: float  # ttft + mean output tokens x tpot
    usd_per_hour: float  # all GPUs
    usd_per_million_tokens: float  # prompt + output tokens
    concurrency: float  # requests in flight per replica at the workload's rate (Little's law), at most `batch`
    kv_bytes_per_gpu_avg: int  # KV in use on the tightest rank at `batch`, averaged over the requests' lives
    kv_bytes_per_gpu_p99: int  # its p99 (normal approximation), at most the worst case
    kv_bytes_per_gpu_worst: int  # `batch` sequences all at the longest request
    kv_budget_bytes_per_gpu: int
    estimate_args: tuple[str, ...]  # `kvplan estimate MODEL <these>` gives tpot, gpus and cost (the --emit hook)
    ttft_p50_s: float = 0.0  # TTFT p50: the median wait + the prefill of the p50 prompt
    utilization: float = 0.0  # rho of one replica's queue: requests/s per replica x the GPU time a request takes

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Family:
    """One value of one dimension: feasible from some cost, or why not one of its candidates is."""

    dimension: str  # gpu, tp, pp, kv_cache_dtype
    value: str
    feasible: int  # candidates that meet every target
    cheapest_usd_per_million_tokens: Optional[float]
    reason: str  # why none is feasible ("" when some are)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SearchResult:
    model: str
    engine: str
    workload: dict
    targets: dict
    candidates: int
    feasible: int
    rows: tuple[Row, ...]
    families: tuple[Family, ...]
    assumptions: dict = field(default_factory=dict)
    # (usd_per_million_tokens, tpot_s, ttft_s) of every candidate the screen found feasible (`keep_cloud`: for
    # `--plot`; not printed)
    cloud: tuple[tuple[float, float, float], ...] = ()

    def to_dict(self) -> dict:
        from kvplan.schema import SCHEMA_VERSION

        return {"schema_version": SCHEMA_VERSION, "model": self.model, "engine": self.engine, "workload": self.workload,
                "targets": self.targets, "candidates": self.candidates, "feasible": self.feasible,
                "rows": [r.to_dict() for r in self.rows], "families": [f.to_dict() for f in self.families],
                "assumptions": self.assumptions}


@dataclass(frozen=True, slots=True)
class Targets:
    ttft_s: Optional[float] = None
    tpot_s: Optional[float] = None


# ------------------------------------------------------------------ queueing (TTFT at the workload's arrival rate)

# The queueing model (docs/search.md "TTFT with queueing"). Each replica is one FCFS server fed by a Poisson stream
# of requests/s / replicas (a Poisson stream split at random stays Poisson). A request holds the replica for the
# GPU time estimate's replica count charges it: S = prefill(its prompt) + its output tokens x TPOT / batch (the
# decode steps are shared by the batch); utilisation rho = lambda x E[S]. The wait before its prefill starts is
# M/G/1's: mean W = lambda x E[S^2] / (2 (1 - rho)) (the Pollaczek-Khinchine formula; Kleinrock, Queueing Systems
# vol. 1, 1975, ch. 5), and its tail P(wait > t) = rho x exp(-rho t / W): an atom 1 - rho at no wait, else
# exponential (exact for M/M/1; Kingman's heavy-traffic approximation for M/G/1, 1962), so the q-quantile is
# W / rho x ln(rho / (1 - q)) where rho > 1 - q, else 0. TTFT p50 / p99 = that quantile's wait + the prefill of
# the p50 / p99 prompt. As rho -> 1 both grow without bound; a replica count at rho >= 1 never drains its queue
# and is never taken: the search takes the fewest replicas, from estimate's count up, with rho < 1 and the p99
# TTFT within --ttft-ms (past rho = 1%, the p99 wait is 0, so any candidate whose prefill meets the target
# meets it with enough replicas).
QUEUE_P99 = 0.99
QUEUE_FLOOR_RHO = 0.01  # at rho <= 1 - 0.99 the p99 wait is 0: more replicas than this shorten nothing


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What the queue needs of a workload on one deployment: the prefill moments over the requests, the output
    moments, the prefill of the p50 and p99 prompt (seconds, tokens)."""

    prefill_mean: float  # E[a], a = prefill(prompt)
    prefill_sq: float  # E[a^2]
    prefill_output: float  # E[a x o]
    output_mean: float  # E[o] (exact: not rounded up)
    output_sq: float  # E[o^2]
    prefill_p50: float
    prefill_p99: float


def queue_stats(workload: Workload, prefill) -> QueueStats:
    """`prefill(prompt)`: seconds (the planner's); one call per distinct prompt length."""
    seen: dict[int, float] = {}

    def a(p: int) -> float:
        if p not in seen:
            seen[p] = prefill(p)
        return seen[p]

    n = workload.count
    m = [0.0] * 5
    for p, o, w in workload.requests:
        x = a(p)
        for i, v in enumerate((x, x * x, x * o, o, o * o)):
            m[i] += w * v
    return QueueStats(*(v / n for v in m), a(workload.prompt_percentile(50)), a(workload.prompt_percentile(99)))


def queue_ttft(stats: QueueStats, requests_per_s: float, replicas, tpot, batch):
    """(rho, TTFT p50, TTFT p99) per replica count (numpy arrays alike; rho >= 1: the TTFTs are inf)."""
    import numpy as np

    d = np.asarray(tpot, dtype=np.float64) / np.asarray(batch, dtype=np.float64)  # GPU time an output token takes
    es = stats.prefill_mean + stats.output_mean * d
    es2 = stats.prefill_sq + 2 * stats.prefill_output * d + stats.output_sq * d * d
    with np.errstate(divide="ignore", invalid="ignore"):  # no replica (a column the bisection leaves): rho inf
        lam = requests_per_s / np.asarray(replicas, dtype=np.float64)
        rho = lam * es
        stable = rho < 1
        mean_wait = np.where(stable, lam * es2 / (2 * (1 - np.where(stable, rho, 0.0))), np.inf)

        def wait(q: float):
            return np.where(~stable, np.inf, np.where(rho > 1 - q, mean_wait / np.where(rho > 0, rho, 1.0)
                                                      * np.log(np.maximum(rho, 1e-300) / (1 - q)), 0.0))

        return rho, stats.prefill_p50 + wait(0.5), stats.prefill_p99 + wait(QUEUE_P99)


def queue_replicas(stats: QueueStats, requests_per_s: float, least, tpot, batch, ttft_s: Optional[float],
                   slack: float = 0.0):
    """The fewest replicas >= `least` (estimate's count) with rho < 1 and TTFT p99 <= ttft_s (x (1 + slack)), per
    column; 0 where none does (the p99 prompt's prefill alone misses the target). A bisection: the p99 wait falls
    as replicas are added."""
    import numpy as np

    least = np.asarray(least, dtype=np.int64)
    d = np.asarray(tpot, dtype=np.float64) / np.asarray(batch, dtype=np.float64)
    es = stats.prefill_mean + stats.output_mean * d
    # the first stable count: rho = rps x E[S] / r < 1
    lo = np.maximum(least, np.floor(requests_per_s * es).astype(np.int64) + 1)
    if ttft_s is None:
        return lo
    limit = ttft_s * (1 + slack)

    def ok(r):
        return queue_ttft(stats, requests_per_s, r, tpot, batch)[2] <= limit

    hi = np.maximum(lo, np.ceil(requests_per_s * es / QUEUE_FLOOR_RHO).astype(np.int64) + 1)
    reachable = ok(hi)
    done = ok(lo)
    lo_bad = lo - 1  # invariant: lo_bad fails (or is below the first stable count), hi meets
    hi = np.where(done, lo, hi)
    while True:
        open_ = reachable & ~done & (hi - lo_bad > 1)
        if not open_.any():
            break
        mid = (lo_bad + hi) // 2
        good = ok(mid)
        hi = np.where(open_ & good, mid, hi)
        lo_bad = np.where(open_ & ~good, mid, lo_bad)
    return np.where(reachable, hi, 0)


# ------------------------------------------------------------------ one family, screened in numpy

# How far a family's candidates got (the furthest decides a dimension's reason): refused by the engine or the
# spec, no price or peak, nothing fits, then a latency target missed.
_REFUSED, _UNPRICED, _NO_FIT, _LATENCY = range(4)


@dataclass
class _Screened:
    key: tuple[str, int, int, str]  # (gpu, tp, pp, kv dtype)
    level: int  # how far it got (the _REFUSED ... constants; feasible candidates are in the arrays)
    reason: str
    closeness: float = math.inf  # the best candidate's worst latency / its target (1 or less: meets them)
    closest: str = ""
    arrays: Optional[dict] = None  # S, batch, tpot, ttft (p99, queued), gpus, usd_h, cost, feasible (numpy arrays)
    ttft: float = 0.0  # the p99 prompt's prefill alone


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


class _Context:
    """What every family shares: the spec, the workload, the targets, the base settings."""

    def __init__(self, spec, engine: str, workload: Workload, targets: Targets, settings, queueing: bool = True):
        self.spec, self.engine, self.workload, self.targets, self.settings = spec, engine, workload, targets, settings
        self.queueing = queueing  # TTFT with the replica's queue (QueueStats); False: the prefill alone
        self.prompt, self.output = workload.prompt_mean, workload.output_mean
        self.mean_len = self.prompt + self.output  # the context the workload runs at (estimate's P + O)
        self.longest = workload.longest if settings.context is None else settings.context
        self.p99_prompt = workload.prompt_percentile(99)
        self.token_budgets: dict[str, int] = {}  # GPU label -> its --max-num-batched-tokens (token_budget)


def _family(ctx: _Context, label: str, gpu, tp: int, pp: int, dtype: str, seqs) -> _Screened:
    import numpy as np

    from kvplan.plan import deploy, pipeline
    from kvplan.plan.planner import Planner, activation_estimate, decode_weight_fraction  # noqa: F401
    from kvplan.engines.vllm_rules import max_model_len_refusal

    spec, key = ctx.spec, (label, tp, pp, dtype)
    vllm = ctx.engine == "vllm"
    if vllm:
        problem = deploy.vllm_kv_dtype_problem(spec, dtype)
        if problem:
            return _Screened(key, _REFUSED, problem.split("; --engine")[0])
        refusal = max_model_len_refusal(spec, ctx.longest)
        if refusal:
            return _Screened(key, _REFUSED, f"vLLM refuses max_model_len {ctx.longest:,}: above the model's "
                                            f"max_position_embeddings ({spec.max_position_embeddings:,})")
    if gpu.usd_per_hour <= 0:
        return _Screened(key, _UNPRICED, f"{label} has no price (give a GPU file with usd_per_hour)")
    if gpu.bf16_tflops <= 0:
        return _Screened(key, _UNPRICED, f"{label} has no bf16 peak: prefill cannot be timed")
    s = ctx.settings._replace(gpu=label, tp=tp, pp=pp, kv_cache_dtype=dtype, context=ctx.mean_len, batch=1,
                              max_num_seqs=1, max_num_batched_tokens=token_budget(ctx, label, gpu))
    try:
        pair, state = pipeline.formats(spec, s)
        if vllm and pipeline.has_state_layers(spec):
            from kvplan.engines.vllm_rules import state_formats

            state = state_formats(spec, state)
        layout = pipeline.planned_layout(spec, ctx.engine, pair, state, s)
        figures = deploy.gpu_figures(gpu, label)
        popts = pipeline.plan_options(spec, ctx.engine, s, ctx.mean_len, 1, layout.block_size, s.bandwidth_efficiency)
        planner = Planner(spec, figures, pair, popts, state_format=state)
    except InputError as exc:  # tp that does not divide the heads, pp above the layers, ...
        return _Screened(key, _REFUSED, exc.message)
    S = np.asarray(seqs, dtype=np.int64)
    # the profile run's sampler logits grow the activation peak by this much per sequence of max_num_seqs
    slope = 0
    if planner.activation_estimated:
        tokens = planner.max_num_batched_tokens
        slope = (activation_estimate(spec, tokens, 2, planner.dtype_bytes, tp)
                 - activation_estimate(spec, tokens, 1, planner.dtype_bytes, tp))
    budgets = np.asarray(planner.stage_budgets, dtype=np.int64)[:, None] - (S - 1)[None, :] * slope
    pool = planner.pool

    def capacity(context: int):
        """Pool.max_sequences at `context` for every budget column (the tightest stage)."""
        per_stage = []
        for i, counts in enumerate(planner.layout.stage_kind_counts):
            b = budgets[i]
            if pool.stages is not None:  # Pool.max_sequences: its usable blocks over the blocks a request needs
                vl = pool.stages[i]
                # the tokens in flight a window keeps and the state pages a request holds, as the version counts them
                own = vl.blocks_per_request(context, pool.in_flight, pool.state_pages)
                blocks = np.maximum(b, 0) // vl.bytes_per_block_set
                if pool.rules.v032:  # 0.32 holds back the null block (Pool.usable_blocks)
                    blocks = np.maximum(blocks - 1, 0)
                n = blocks // own if own else np.full_like(b, 10**9)
            else:
                own = planner.layout.stage_rank_bytes(counts, context, paged=planner.layout.block_size > 1)
                n = np.maximum(b, 0) // own if own else np.full_like(b, 10**9)
            per_stage.append(np.where(b <= 0, 0, n))
        return np.min(np.vstack(per_stage), axis=0)

    starts = capacity(ctx.longest) >= 1
    batch = np.minimum(S, capacity(ctx.mean_len))
    runs = starts & (batch >= 1)
    if not runs.any():
        tight = planner.pool.tight
        # how close: the weights over the memory vLLM may use (the family nearest to fitting names the reason)
        closeness = planner.stage_weights[tight] / planner.usable
        if planner.stage_budgets[tight] <= 0:
            why = (f"the weights ({planner.stage_weights[tight] / 2**30:,.1f} GiB a GPU) leave no KV budget of the "
                   f"{planner.usable / 2**30:,.1f} GiB vLLM may use")
        else:
            why = f"not one request of {ctx.longest:,} tokens fits the KV budget"
        return _Screened(key, _NO_FIT, why, closeness)
    ttft = planner.prefill(ctx.p99_prompt)
    prefill_mean = planner.prefill(ctx.prompt)
    b = np.maximum(batch, 1)
    tpot = _decode_seconds(planner, b, ctx.mean_len)
    per_request = prefill_mean + ctx.output * tpot / b
    rps = ctx.workload.requests_per_s
    replicas = np.maximum(1, -(-np.floor(rps * per_request * 10**6).astype(np.int64) // 10**6))
    t = ctx.targets
    stats = queue_stats(ctx.workload, planner.prefill)
    ok = runs.copy()
    if ctx.queueing:  # the fewest replicas, from estimate's count up, whose queue keeps TTFT p99 within the target
        queued = queue_replicas(stats, rps, replicas, tpot, b, t.ttft_s, SCREEN_SLACK)
        ok &= queued > 0
        replicas = np.where(queued > 0, queued, replicas)
    rho, ttft50, ttft99 = queue_ttft(stats, rps, replicas, tpot, b)
    if not ctx.queueing:
        ttft50, ttft99 = np.full(len(S), stats.prefill_p50), np.full(len(S), ttft)
    gpus = replicas * tp * pp
    usd_h = gpus * gpu.usd_per_hour
    cost = usd_h / (rps * 3600 * ctx.workload.tokens_per_request) * 1e6
    if t.ttft_s is not None and ttft > t.ttft_s * (1 + SCREEN_SLACK):
        ok[:] = False
    if t.tpot_s is not None:
        ok &= tpot <= t.tpot_s * (1 + SCREEN_SLACK)
    # how close the best candidate comes: its worst latency over its target
    ratio = np.zeros(len(S))
    if t.ttft_s is not None:
        ratio = np.maximum(ratio, ttft / t.ttft_s)
    if t.tpot_s is not None:
        ratio = np.maximum(ratio, tpot / t.tpot_s)
    ratio = np.where(runs, ratio, np.inf)
    best = int(np.argmin(ratio))
    closest = (f"{label} tp {tp}" + (f" pp {pp}" if pp > 1 else "") + f", KV {dtype}, --max-num-seqs {int(S[best])}: "
               f"TTFT {_ms(ttft)}, TPOT {_ms(float(tpot[best]))}")
    arrays = dict(S=S, batch=batch, tpot=tpot, ttft=ttft99, ttft50=ttft50, rho=rho, gpus=gpus, replicas=replicas,
                  usd_h=usd_h, cost=cost, ok=ok)
    reason = ""
    if not ok.any():
        missed = []
        if t.ttft_s is not None and ttft > t.ttft_s:
            missed.append(f"TTFT {_ms(ttft)} > {_ms(t.ttft_s)}")
        if t.tpot_s is not None and float(tpot[best]) > t.tpot_s:
            missed.append(f"TPOT {_ms(float(tpot[best]))} > {_ms(t.tpot_s)} even at batch {int(batch[best])}")
        reason = " and ".join(missed) or "misses a target"
    return _Screened(key, _LATENCY, reason, float(ratio[best]), closest, arrays, ttft)


def _decode_seconds(planner, batch, context: int):
    """`Planner.decode_step(batch, context)[0]` for an array of batches (the screen; estimate decides).

    Per stage: max(bytes / (bandwidth x efficiency), FLOPs / (peak x efficiency)), summed over the stages.
    Bytes = the active weights + the share of the other routed experts the batch touches
    (`decode_weight_fraction`) + batch x one sequence's KV held (less the latents sparse attention skips);
    the input embedding's looked-up rows grow by one per sequence (read from the planner at 1 and 2 rows).
    FLOPs = batch x the step's FLOPs for one sequence (`decode_step` at batch 1).
    Plus each stage's all-reduces and hand-off (`Planner.stage_comm_s`), linear in the batch's tokens.
    """
    import numpy as np

    from kvplan.plan.planner import moe_experts, sparse_kv_read_bytes

    spec = planner.spec
    vocab = spec.vocab_size
    rows = np.minimum(batch, vocab).astype(np.float64)
    h1, h2 = planner._stage_weights(lookup_tokens=1), planner._stage_weights(lookup_tokens=2)
    a1, a2 = planner._stage_weights(active=True, lookup_tokens=1), planner._stage_weights(active=True, lookup_tokens=2)
    moe = moe_experts(spec)
    if moe is None:
        share = np.zeros(len(batch))
    else:
        experts, k = moe
        touched = 1 - (1 - k / experts) ** batch.astype(np.float64)
        share = np.maximum(0.0, (touched - k / experts) / (1 - k / experts))
    bandwidth = planner.gpu.memory_bandwidth_gbps * 1e9 * planner.opts.bandwidth_efficiency
    peak = planner._peak_flops() * planner.opts.compute_efficiency
    one = _stage_flops_one(planner, context)
    seconds = np.zeros(len(batch))
    for i, counts in enumerate(planner.layout.stage_kind_counts):
        held = h1[i] + (rows - 1) * (h2[i] - h1[i])
        active = a1[i] + (rows - 1) * (a2[i] - a1[i])
        read = active + np.trunc((held - active) * share)
        kv_seq = planner.layout.stage_rank_bytes(counts, context, paged=False) - sparse_kv_read_bytes(
            planner.layout, counts, context)
        step_bytes = read + batch * kv_seq
        flops = batch * one[i]
        t_mem = step_bytes / bandwidth
        t_compute = flops / peak if peak else np.zeros(len(batch))
        # the stage's communication (Planner.stage_comm_s: linear in the tokens of the step, read at 1 and 2)
        c1, c2 = planner.stage_comm_s(i, 1) or 0.0, planner.stage_comm_s(i, 2) or 0.0
        seconds += np.maximum(t_mem, t_compute) + c1 + (batch - 1) * (c2 - c1)
    return seconds


def _stage_flops_one(planner, context: int) -> list[int]:
    """Each stage's decode FLOPs for one sequence (decode_step's, without the batch factor)."""
    from kvplan.plan.planner import attention_flops_decode, body_parameters, lm_head_flops

    spec, tp = planner.spec, planner.opts.tp
    layers = spec.num_hidden_layers
    stages = planner.layout.layers_per_stage
    out = []
    for i, counts in enumerate(planner.layout.stage_kind_counts):
        body = body_parameters(spec, active=True, total=planner.flop_parameters) * stages[i] // layers
        logits = lm_head_flops(spec) if i == len(stages) - 1 else 0
        out.append((2 * body + logits) // tp + attention_flops_decode(spec, counts, planner.layout, context, tp))
    return out


# ------------------------------------------------------------------ the search


def screen(spec, engine: str, workload: Workload, targets: Targets, space: Space, settings, *,
           queueing: bool = True) -> list[_Screened]:
    """Every family of `space`, its --max-num-seqs values evaluated at once (no estimate run yet)."""
    ctx = _Context(spec, engine, workload, targets, settings, queueing)
    seqs = tuple(space.max_num_seqs)
    return [_family(ctx, label, gpu, tp, pp, dtype, seqs)
            for label, gpu in space.gpus for tp in space.tps for pp in space.pps for dtype in space.kv_cache_dtypes]


def search(spec, engine: str, workload: Workload, targets: Targets, space: Space, settings, *,
           limit: Optional[int] = None, queueing: bool = True, keep_cloud: bool = False) -> SearchResult:
    """The Pareto front (cost per million tokens, request latency), cheapest first, each row confirmed by estimate.

    `settings` is a `kvplan.plan.pipeline.Settings` holding what stays fixed (dtype, efficiencies, memory
    flags; `context`: vLLM's max_model_len, None for the workload's longest request).
    """
    import numpy as np

    if engine not in ("vllm", "ideal"):
        raise InputError(f"--engine {engine}: search plans with vllm's and ideal's rules (kvplan's planner), "
                         "not an engine profile's")
    if not space.gpus:
        raise InputError("--gpu: the list of GPUs to search is empty; name at least one (`kvplan gpus` lists them)")
    if settings.context is not None and settings.context < workload.longest:
        raise InputError(f"--context {settings.context:,} is shorter than the workload's longest request "
                         f"({workload.longest:,} tokens); give a longer --context or leave it out")
    families = screen(spec, engine, workload, targets, space, settings, queueing=queueing)
    ctx = _Context(spec, engine, workload, targets, settings, queueing)
    # every screened-feasible candidate: (cost, latency, family index, column)
    cand = []
    for fi, f in enumerate(families):
        if f.arrays is None:
            continue
        a = f.arrays
        cols = np.nonzero(a["ok"])[0]
        if len(cols):
            lat = a["ttft"][cols] + ctx.output * a["tpot"][cols]
            cand.append(np.stack([a["cost"][cols], lat, np.full(len(cols), fi), cols.astype(np.float64)], axis=1))
    pool = np.vstack(cand) if cand else np.zeros((0, 4))
    order = np.lexsort((pool[:, 3], pool[:, 2], pool[:, 1], pool[:, 0])) if len(pool) else []
    rows: list[Row] = []
    rejected = 0  # screened feasible, but estimate says otherwise (a target met only within the screen's slack)
    best_latency = math.inf
    for idx in order:
        cost, latency, fi, col = pool[idx]
        if latency >= best_latency:
            continue  # dominated: a cheaper (or as cheap) row is as fast
        row = _confirm(ctx, families[int(fi)], int(col), space)
        if row is None:
            rejected += 1
            continue
        rows.append(row)
        best_latency = row.request_latency_s
        if limit is not None and len(rows) >= limit:
            break
    feasible = int(sum(int(f.arrays["ok"].sum()) for f in families if f.arrays is not None)) - rejected
    if not rows:
        raise InputError(_impossible(ctx, families))
    summary = _summaries(spec, families, space)
    w = workload
    workload_dict = {"source": w.source, "requests": w.count, "requests_per_s": w.requests_per_s,
                     "prompt_tokens_mean": w.prompt_mean, "output_tokens_mean": w.output_mean,
                     "prompt_tokens_p99": ctx.p99_prompt, "longest_request_tokens": w.longest,
                     "max_model_len": ctx.longest}
    targets_dict = {"ttft_s": targets.ttft_s, "tpot_s": targets.tpot_s}
    assumptions = {
        "ttft": ("p99: the p99 wait in one replica's M/G/1 queue (Poisson arrivals at requests/s / replicas, each "
                 "request holding the replica for prefill + output x TPOT / batch) + the p99 prompt's prefill; "
                 "replicas: the fewest from estimate's count up that keep it within --ttft-ms"
                 if queueing else "prefill of the p99 prompt alone (--no-queueing: no wait)"),
        "tpot": "a decode step at the batch one replica runs, each sequence at the mean request's length",
        "batch": "min(--max-num-seqs, the mean requests that fit the KV budget)",
        "gpus": "replicas = ceil(requests/s x (prefill of the mean prompt + mean output x step / batch)), x tp x pp",
        "cost": "the GPUs' $ per hour over the prompt + output tokens the workload brings in an hour",
        "kv_in_use": "per GPU (tightest rank): batch x a request's reserved bytes averaged over its decode steps; "
                     "p99 by a normal approximation; worst: every sequence at the longest request",
        "bandwidth_efficiency": settings.bandwidth_efficiency or 0.8,
        "compute_efficiency": settings.compute_efficiency or 0.5,
    }
    cloud = ()
    if keep_cloud:
        cloud = tuple((float(c), float(x), float(y)) for f in families if f.arrays is not None
                      for c, x, y in zip(f.arrays["cost"][f.arrays["ok"]], f.arrays["tpot"][f.arrays["ok"]],
                                         f.arrays["ttft"][f.arrays["ok"]]))
    return SearchResult(spec.name, engine, workload_dict, targets_dict, space.size, feasible, tuple(rows),
                        tuple(summary), assumptions, cloud)


def token_budget(ctx: _Context, label: str, gpu=None) -> int:
    """The --max-num-batched-tokens every candidate on `label` runs with: as given, else vLLM's default for
    the GPU uncapped (`vllm_flags.batch_defaults`). vLLM caps a defaulted budget at max_num_seqs x
    max_model_len, which would make the profile run, and so the KV budget, differ with --max-num-seqs; the
    search fixes it instead, and each row's estimate command (and its deployment) states it. `gpu`: the
    GPU the first call (the screen) resolves for `label`; later calls read what it left."""
    if ctx.settings.max_num_batched_tokens is not None:
        return ctx.settings.max_num_batched_tokens
    if label not in ctx.token_budgets:
        from kvplan.engines.vllm_flags import batch_defaults, vllm_version
        from kvplan.plan import deploy

        figures = deploy.gpu_figures(gpu, label)
        ctx.token_budgets[label] = batch_defaults(figures.memory_bytes, figures.device_name or figures.name,
                                                  vllm_version(ctx.settings))[0]
    return ctx.token_budgets[label]


def estimate_args(label: str, tp: int, pp: int, dtype: str, seqs: int, batch: int, ctx: _Context) -> tuple[str, ...]:
    """estimate's flags for one candidate (its decode step, GPUs and cost: `kvplan estimate MODEL <these>`)."""
    s = ctx.settings
    args = ["--gpu", label, "--tp", str(tp), "--pp", str(pp), "--kv-cache-dtype", dtype, "--max-num-seqs", str(seqs),
            "--context", str(ctx.mean_len), "--batch", str(batch), "--prompt-tokens", str(ctx.prompt),
            "--output-tokens", str(ctx.output), "--requests-per-s", f"{ctx.workload.requests_per_s:g}"]
    if ctx.engine != "vllm":
        args += ["--engine", ctx.engine]
    for flag, value in (("--dtype", s.dtype), ("--weights-bytes", s.weights_bytes),
                        ("--gpu-memory-utilization", s.gpu_memory_utilization),
                        ("--max-num-batched-tokens", token_budget(ctx, label)), ("--block-size", s.block_size),
                        ("--activation-memory", s.activation_memory), ("--non-torch-memory", s.non_torch_memory),
                        ("--bandwidth-efficiency", s.bandwidth_efficiency),
                        ("--compute-efficiency", s.compute_efficiency), ("--state-dtype", s.state_dtype)):
        if value is not None:
            args += [flag, str(value)]
    return tuple(args)


def _confirm(ctx: _Context, f: _Screened, col: int, space: Space) -> Optional[Row]:
    """The candidate in estimate's own figures (`pipeline.run`), or None when estimate says it misses a target."""
    from kvplan.plan import pipeline

    label, tp, pp, dtype = f.key
    a = f.arrays
    seqs, batch = int(a["S"][col]), int(a["batch"][col])
    s = ctx.settings._replace(gpu=label, tp=tp, pp=pp, kv_cache_dtype=dtype, max_num_seqs=seqs,
                              max_num_batched_tokens=token_budget(ctx, label, dict(space.gpus)[label]))
    run = pipeline.run(ctx.spec, ctx.engine, s._replace(context=ctx.mean_len, batch=batch), engine_rows=False)
    plan = run.plan
    t = ctx.targets
    if not plan.fits or plan.vllm_starts is False or plan.gpus_needed is None or plan.decode_step_s is None:
        return None
    tpot = plan.decode_step_s
    if t.tpot_s is not None and tpot > t.tpot_s:
        return None
    longest = plan if ctx.longest == ctx.mean_len else pipeline.run(
        ctx.spec, ctx.engine, s._replace(context=ctx.longest, batch=1, prompt_tokens=None, output_tokens=None,
                                         requests_per_s=None), engine_rows=False).plan
    if longest.max_concurrent_sequences < 1 or longest.vllm_starts is False:
        return None
    # the p99 prompt's prefill (a prefill does not depend on the context; the longest request holds that prompt)
    ttft = plan.prefill_s if ctx.p99_prompt == ctx.prompt else pipeline.run(
        ctx.spec, ctx.engine, s._replace(context=ctx.longest, batch=1, prompt_tokens=ctx.p99_prompt,
                                         output_tokens=None, requests_per_s=None), engine_rows=False).plan.prefill_s
    if t.ttft_s is not None and ttft > t.ttft_s:
        return None
    w = ctx.workload
    replicas = plan.gpus_needed // (tp * pp)  # estimate's: the fewest that carry the rate
    planner = _row_planner(ctx, s)
    stats = queue_stats(w, planner.prefill)
    if ctx.queueing:
        replicas = int(queue_replicas(stats, w.requests_per_s, [replicas], [tpot], [batch], t.ttft_s)[0])
        if replicas == 0:
            return None
    rho, ttft50, ttft99 = (float(x[0]) for x in queue_ttft(stats, w.requests_per_s, [replicas], [tpot], [batch]))
    if ctx.queueing:
        ttft = ttft99
    else:
        ttft50 = stats.prefill_p50
    gpus = replicas * tp * pp
    usd_h = gpus * plan.usd_per_hour / (tp * pp)
    cost = usd_h / (w.requests_per_s * 3600 * w.tokens_per_request) * 1e6
    concurrency = min(batch, w.requests_per_s / replicas * (plan.prefill_s + ctx.output * tpot))
    avg, p99, worst = _kv_in_use(ctx, planner, batch)
    return Row(label, tp, pp, dtype, seqs, batch, replicas, gpus, ttft, tpot, ttft + ctx.output * tpot, usd_h, cost,
               round(concurrency, 3), avg, p99, worst, plan.kv_budget_bytes_per_gpu,
               estimate_args(label, tp, pp, dtype, seqs, batch, ctx), ttft50, round(rho, 6))


def _row_planner(ctx: _Context, s):
    """The planner estimate builds for a row's settings `s` (its prefill per prompt, its reservation per length)."""
    from kvplan.plan import pipeline
    from kvplan.plan.planner import Planner

    spec = ctx.spec
    pair, state = pipeline.formats(spec, s)
    if ctx.engine == "vllm" and pipeline.has_state_layers(spec):
        from kvplan.engines.vllm_rules import state_formats

        state = state_formats(spec, state)
    layout = pipeline.planned_layout(spec, ctx.engine, pair, state, s)
    gpu, label = pipeline.device(s)
    figures, bw = pipeline.roofline_inputs(gpu, label, s)
    popts = pipeline.plan_options(spec, ctx.engine, s, ctx.longest, 1, layout.block_size, bw)
    return Planner(spec, figures, pair, popts, state_format=state)


def _kv_in_use(ctx: _Context, planner, batch: int) -> tuple[int, int, int]:
    """(average, p99, worst) KV bytes in use on the tightest rank with `batch` requests running.

    A request of prompt p and output o holds the engine's reservation for p + t tokens during its t-th decode
    step (t = 1 .. o), so over its life it is found at each of those lengths equally often; the running set is
    `batch` independent draws from that, weighted by the requests' counts. p99: mean + z99 x sqrt(batch) x sd.
    """
    tight = planner.pool.tight
    cache: dict[int, int] = {}

    def held(length: int) -> int:
        if length not in cache:
            cache[length] = planner.reserved_bytes(tight, length, 1)
        return cache[length]

    total = m1 = m2 = 0.0
    for p, o, w in ctx.workload.requests:
        for step in range(1, o + 1):
            x = held(p + step)
            total += w
            m1 += w * x
            m2 += w * x * x
    mean = m1 / total
    sd = math.sqrt(max(0.0, m2 / total - mean * mean))
    worst = batch * held(ctx.longest)
    return int(batch * mean), min(worst, int(batch * mean + P99_Z * math.sqrt(batch) * sd)), worst


def _impossible(ctx: _Context, families: Sequence[_Screened]) -> str:
    """No candidate meets the targets: which target, and the closest candidate."""
    t = ctx.targets
    timed = [f for f in families if f.level == _LATENCY]
    if not timed:
        best = max(families, key=lambda f: f.level)
        return f"no deployment of {ctx.spec.name} in the space searched runs: {best.key[0]} tp {best.key[1]}: {best.reason}"
    best = min(timed, key=lambda f: f.closeness)
    if best.closeness <= 1:  # the screen admitted it, estimate did not: within the screen's slack of a target
        return (f"no deployment of {ctx.spec.name} meets the targets under estimate's figures; the closest, "
                f"{best.closest}, is within {SCREEN_SLACK:g} of a target")
    named = []
    if t.ttft_s is not None and all(f.ttft > t.ttft_s for f in timed):
        named.append(f"--ttft-ms {t.ttft_s * 1000:g}")
    if t.tpot_s is not None and not named:
        named.append(f"--tpot-ms {t.tpot_s * 1000:g}")
    elif t.tpot_s is not None:
        named.append(f"--tpot-ms {t.tpot_s * 1000:g}")
    return (f"no deployment of {ctx.spec.name} meets {' and '.join(named) or 'the targets'}: the closest is "
            f"{best.closest}; relax the target or search more GPUs, tp or KV dtypes")


def _summaries(spec, families: Sequence[_Screened], space: Space) -> list[Family]:
    """For each value of each dimension: its feasible count and cheapest cost, or the furthest family's reason."""
    out = []
    dims = (("gpu", 0, [g for g, _ in space.gpus]), ("tp", 1, list(space.tps)), ("pp", 2, list(space.pps)),
            ("kv_cache_dtype", 3, list(space.kv_cache_dtypes)))
    for name, i, values in dims:
        if len(values) < 2 and name != "gpu":
            continue
        for v in values:
            mine = [f for f in families if f.key[i] == v]
            ok = [f for f in mine if f.arrays is not None and f.arrays["ok"].any()]
            feasible = sum(int(f.arrays["ok"].sum()) for f in ok)
            cheapest = min((float(f.arrays["cost"][f.arrays["ok"]].min()) for f in ok), default=None)
            reason = ""
            if not ok:
                best = max(mine, key=lambda f: (f.level, -f.closeness))
                where = ([f"{best.key[0]}"] if name != "gpu" else []) + ([f"tp {best.key[1]}"] if name != "tp" else [])
                where += [f"pp {best.key[2]}"] if name != "pp" and best.key[2] > 1 else []
                where += [f"KV {best.key[3]}"] if name != "kv_cache_dtype" else []
                reason = f"{best.reason} ({', '.join(where)})"
            note = ""
            kv_heads = spec.num_key_value_heads
            if name == "tp" and not spec.is_mla and kv_heads and v > kv_heads:
                note = f"{kv_heads} KV heads: each replicated on {v // kv_heads} ranks, no KV saved per GPU"
            out.append(Family(name, str(v), feasible, cheapest, reason, note))
    return out
