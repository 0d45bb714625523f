"""Drive an OpenAI-compatible server with streaming completions and read its Prometheus metrics.

Contract. `run_level(base_url, model, requests, concurrency)` sends `requests` (prompt and output
lengths) to `base_url + /v1/completions` with at most `concurrency` in flight, each a streaming request
whose prompt is a list of token ids (tiny random-weight models have no tokenizer: vLLM runs them with
`--skip-tokenizer-init`; the completions API takes token ids as the prompt) and whose output is held
to exactly its length (`max_tokens`, `min_tokens`, `ignore_eos`). Each request's times are taken
client-side from the stream: TTFT is send -> first chunk carrying a token; the time per output token
(TPOT) is (last token's arrival - first token's) / (tokens - 1), the definition vLLM's own benchmark uses.
`MetricsPoller` reads `/metrics` (Prometheus text) every `interval_s` on its own thread while a level
runs and keeps every reading; `peak` and `last` answer from them.

Pure parts, tested without a server: `parse_sse_lines` (the stream's `data:` lines), `parse_prometheus`
(exposition text -> samples), `percentile`, `expand_requests` (a workload's classes -> one list),
`prompt_ids`, `completion_body`. Standard library only: no HTTP client package is needed.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import re
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

# ------------------------------------------------------------------ pure parts


def percentile(values: Sequence[float], percent: float) -> Optional[float]:
    """The nearest-rank percentile (the smallest value with at least `percent`% of values at or below it);
    None for no values. p50 of [1, 2, 3, 4] is 2, p99 of 100 values is the 99th smallest."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def expand_requests(requests: Iterable[tuple[int, int, int]], total: int) -> list[tuple[int, int]]:
    """A workload's (prompt, output, count) classes as `total` requests: the classes in proportion to
    their counts (largest remainders), then interleaved so that a level's first requests mix the lengths."""
    classes = [(p, o, w) for p, o, w in requests]
    weight = sum(w for _, _, w in classes)
    if total < 1 or weight < 1:
        return []
    shares = [total * w / weight for _, _, w in classes]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(classes)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    out: list[tuple[int, int]] = []
    left = list(counts)
    while len(out) < total:
        for i, (p, o, _) in enumerate(classes):
            if left[i]:
                out.append((p, o))
                left[i] -= 1
    return out


def prompt_ids(length: int, vocab_size: int, rng: random.Random, low: int = 10) -> list[int]:
    """`length` random token ids in [low, vocab_size): no two prompts share a prefix (prefix caching
    would otherwise hold one copy of a shared prefix), and the first ids, where special tokens usually
    sit (BOS, EOS, PAD), are avoided."""
    low = min(low, max(vocab_size - 1, 0))
    return [rng.randrange(low, vocab_size) for _ in range(length)]


def completion_body(model: str, prompt: Sequence[int], max_tokens: int) -> dict:
    """A streaming /v1/completions request for exactly `max_tokens` tokens after a token-id prompt.
    `return_token_ids` makes each chunk list its tokens (vLLM ≥ 0.10; others ignore the key), and
    `stream_options.include_usage` adds a last chunk with the token counts."""
    return {
        "model": model, "prompt": list(prompt), "max_tokens": max_tokens, "min_tokens": max_tokens,
        "ignore_eos": True, "temperature": 0.0, "stream": True,
        "stream_options": {"include_usage": True}, "return_token_ids": True,
    }


def parse_sse_lines(lines: Iterable[bytes | str]) -> Iterator[dict | None]:
    """The JSON objects of a server-sent-event stream's `data:` lines, in order; None for `data: [DONE]`.
    Other lines (blank separators, `event:`, comments) are skipped."""
    for raw in lines:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        line = line.strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield None
            return
        yield json.loads(data)


def chunk_tokens(chunk: dict) -> int:
    """Output tokens a completion chunk carries: its choices' `token_ids` where given, else one per
    choice with text (an engine streams one chunk per step); a usage-only chunk carries none."""
    n = 0
    for choice in chunk.get("choices") or ():
        ids = choice.get("token_ids")
        if ids is not None:
            n += len(ids)
        elif choice.get("text"):
            n += 1
    return n


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> Optional[str]:
        return dict(self.labels).get(key)


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse_prometheus(text: str) -> list[Sample]:
    """Samples of Prometheus text exposition format 0.0.4: `name{label="v",...} value [timestamp]`;
    `# HELP` / `# TYPE` lines and blanks skipped; values NaN, +Inf, -Inf as floats."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, _, labels, value = m.group(1), m.group(2), m.group(3), m.group(4)
        try:
            number = float(value)
        except ValueError:
            continue
        pairs = tuple((k, _unescape(v)) for k, v in _LABEL.findall(labels or ""))
        out.append(Sample(name, pairs, number))
    return out


def metric_sum(samples: Iterable[Sample], name: str) -> Optional[float]:
    """The sum of `name` over its label sets (one per engine / model), None when absent."""
    values = [s.value for s in samples if s.name == name]
    return sum(values) if values else None


def histogram_quantile(samples: Iterable[Sample], name: str, q: float) -> Optional[float]:
    """Prometheus' histogram_quantile over `name`_bucket (summed over label sets but `le`): the linear
    interpolation inside the bucket holding the q-th observation; None with no observations."""
    buckets: dict[float, float] = {}
    for s in samples:
        if s.name == name + "_bucket":
            le = s.label("le")
            if le is None:
                continue
            bound = math.inf if le in ("+Inf", "Inf") else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + s.value
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # Prometheus returns the highest finite bound
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = bound, count
    return lower


# ------------------------------------------------------------------ HTTP


def _split(base_url: str) -> tuple[str, int, str]:
    u = urllib.parse.urlsplit(base_url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"{base_url}: an http://host:port URL is expected")
    return u.hostname, u.port or 80, u.path.rstrip("/")


def get_text(url: str, timeout_s: float = 5.0) -> str:
    host, port, path = _split(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path or "/")
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", errors="replace")
        if resp.status != 200:
            raise OSError(f"GET {url}: HTTP {resp.status}")
        return body
    finally:
        conn.close()


@dataclass
class RequestResult:
    """One streamed request: times in seconds from its send (client clock)."""

    prompt_tokens: int
    output_tokens: int  # asked for
    sent_s: float = 0.0  # from the level's start
    token_times_s: list[float] = field(default_factory=list)  # arrival of each token, from the send
    usage_completion_tokens: Optional[int] = None
    error: Optional[str] = None

    @property
    def tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> Optional[float]:
        return self.token_times_s[0] if self.token_times_s else None

    @property
    def tpot_s(self) -> Optional[float]:
        t = self.token_times_s
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None

    @property
    def end_s(self) -> Optional[float]:
        return self.sent_s + self.token_times_s[-1] if self.token_times_s else None


def stream_completion(base_url: str, body: dict, timeout_s: float,
                      clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], Optional[int]]:
    """POST one streaming completion; (each token's arrival in s from the send, the usage's completion tokens).
    A chunk carrying k tokens records k arrivals at the same time. Raises OSError / ValueError on failure."""
    host, port, path = _split(base_url)
    payload = json.dumps(body).encode()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    times: list[float] = []
    usage = None
    try:
        t0 = clock()
        conn.request("POST", path + "/v1/completions", body=payload,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            detail = resp.read(600).decode("utf-8", errors="replace").strip()
            raise OSError(f"HTTP {resp.status}: {detail}")

        def lines() -> Iterator[bytes]:
            while True:
                line = resp.readline()
                if not line:
                    return
                yield line

        for chunk in parse_sse_lines(lines()):
            if chunk is None:
                break
            now = clock() - t0
            times.extend([now] * chunk_tokens(chunk))
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens")
    finally:
        conn.close()
    return times, usage


def run_level(base_url: str, model: str, requests: Sequence[tuple[int, int]], concurrency: int, *,
              vocab_size: int, seed: int = 0, timeout_s: float = 600.0,
              send: Callable[..., tuple[list[float], Optional[int]]] = stream_completion,
              clock: Callable[[], float] = time.perf_counter) -> list[RequestResult]:
    """Send every request with at most `concurrency` in flight; each result in the order given.
    A failed request keeps its error text (the level goes on); prompts are drawn from `seed`."""
    rng = random.Random(seed)
    bodies = [completion_body(model, prompt_ids(p, vocab_size, rng), o) for p, o in requests]
    results = [RequestResult(p, o) for p, o in requests]
    start = clock()

    def one(i: int) -> None:
        r = results[i]
        r.sent_s = clock() - start
        try:
            r.token_times_s, r.usage_completion_tokens = send(base_url, bodies[i], timeout_s)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            r.error = str(exc) or type(exc).__name__
        else:
            if r.tokens != r.output_tokens:
                r.error = f"{r.tokens} tokens streamed, {r.output_tokens} asked"

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="kvplan-load") as pool:
        list(pool.map(one, range(len(requests))))
    return results


@dataclass(frozen=True)
class LevelTimes:
    """A level's client-side figures (seconds), from `summarize`."""

    requests: int
    failed: int
    ttft_p50_s: Optional[float]
    ttft_p99_s: Optional[float]
    tpot_p50_s: Optional[float]
    tpot_p99_s: Optional[float]
    wall_s: float
    output_tokens_per_s: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summarize(results: Sequence[RequestResult]) -> LevelTimes:
    ok = [r for r in results if r.error is None]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
    ends = [r.end_s for r in ok if r.end_s is not None]
    starts = [r.sent_s for r in ok]
    wall = (max(ends) - min(starts)) if ends else 0.0
    tokens = sum(r.tokens for r in ok)
    return LevelTimes(len(results), len(results) - len(ok), percentile(ttfts, 50), percentile(ttfts, 99),
                      percentile(tpots, 50), percentile(tpots, 99), wall, tokens / wall if wall > 0 else 0.0)


# ------------------------------------------------------------------ the metrics poller


class MetricsPoller:
    """Reads `url` (Prometheus text) every `interval_s` on a thread between `start()` and `stop()`;
    `readings` holds (seconds since start, samples) for each successful read. A failed read is counted
    (`errors`) and skipped: the engine may be busy; the caller checks the engine itself."""

    def __init__(self, url: str, interval_s: float = 0.25, fetch: Callable[[str], str] = get_text) -> None:
        self.url, self.interval_s, self.fetch = url, interval_s, fetch
        self.readings: list[tuple[float, list[Sample]]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = 0.0

    def read_once(self) -> Optional[list[Sample]]:
        try:
            samples = parse_prometheus(self.fetch(self.url))
        except (OSError, ValueError, http.client.HTTPException):
            self.errors += 1
            return None
        self.readings.append((time.monotonic() - self._t0, samples))
        return samples

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.read_once()
            self._stop.wait(self.interval_s)

    def start(self) -> "MetricsPoller":
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="kvplan-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.read_once()  # one last reading after the level: counters at their final values

    def peak(self, name: str) -> Optional[float]:
        """The largest reading of gauge `name` (summed over label sets), None if never seen."""
        values = [v for _, s in self.readings if (v := metric_sum(s, name)) is not None]
        return max(values) if values else None

    def last(self, name: str) -> Optional[float]:
        for _, s in reversed(self.readings):
            v = metric_sum(s, name)
            if v is not None:
                return v
        return None

    def last_samples(self) -> list[Sample]:
        return self.readings[-1][1] if self.readings else []
