"""`kvplan measure MODEL.gguf --engine llama.cpp`: kvplan's llama.cpp prediction beside what llama-server decided.

Pure (no torch, no I/O): `predict(spec, cache, opts)` turns kvplan's llama.cpp answer
(`kvplan.engines.llamacpp.cache`) into the figures llama-server prints or serves; `compare_start(predicted, log,
props, slots)` sets each beside the one the engine reported (its start-up log through
`kvplan.sources.llamacpp_log`, its `/props` and `/slots`), with the error; `compare_refusal` does the same for a
start the engine refused; `level_record` summarises one concurrency level of the load run. The server itself is
started and driven by `kvplan.measure.llamacpp_run`.

What each figure is, in llama.cpp's words (the tree vendored by llama-cpp-python 0.3.36):

- `n_seq_max`, `n_ctx`, `n_ctx_seq`, `n_batch`, `n_ubatch`, `kv_unified`: `llama_context`'s lines
  (src/llama-context.cpp); n_batch = min(-c, -b) before n_ctx is padded (`kvplan.engines.llamacpp.geometry`).
- the cache lines: each `llama_kv_cache: size = ...` line and the `llama_memory_recurrent: size = ...` line, as
  kvplan's rules would print them (`kvplan.engines.llamacpp.size_line`, `recurrent_line`), word for word.
- `kv_cells` / `swa_cells`: the cells per stream of the (non-SWA) cache and of the SWA cache.
- `n_slots`, `n_ctx_slot`: llama-server's slots and the cells each may fill: tools/server/server-context.cpp
  `n_ctx_slot()` = min(n_ctx_seq, the model's training context `{arch}.context_length`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

from kvplan.sources.llamacpp_log import LlamaCppLog

MIB = 2**20


@dataclass(frozen=True, slots=True)
class Check:
    """One figure: kvplan's prediction beside what llama-server reported (`source`: where it was read)."""

    figure: str
    predicted: Any
    observed: Any
    source: str

    @property
    def agrees(self) -> bool:
        return self.predicted == self.observed

    @property
    def error(self) -> Optional[float]:
        """(observed - predicted) / predicted for numbers; None for words and lines (equal or not)."""
        p, o = self.predicted, self.observed
        if isinstance(p, bool) or isinstance(o, bool) or not isinstance(p, (int, float)) or not isinstance(o, (int, float)):
            return None
        return (o - p) / p if p else (0.0 if o == p else None)

    def to_dict(self) -> dict:
        return {"figure": self.figure, "predicted": self.predicted, "observed": self.observed, "source": self.source,
                "agrees": self.agrees, "error": self.error}


def predict(spec, cache, opts) -> dict:
    """The figures llama-server will print or serve, by kvplan's llama.cpp rules (`cache`: its EngineCache)."""
    from kvplan.engines.llamacpp import n_batch, slot_cells

    s = cache.settings
    if cache.refused and "n_ctx" not in s:  # refused before any geometry (a cache type, flash attention)
        return {"refusal": cache.refusals[0]}
    out: dict[str, Any] = {
        "n_seq_max": s["n_seq_max"],
        "n_ctx": s["n_ctx"],
        "n_ctx_seq": s["n_ctx_seq"],
        "n_batch": n_batch(s["n_ctx_requested"], opts),
        "n_ubatch": s["n_ubatch"],
        "kv_unified": s["kv_unified"],
        "n_slots": s["n_seq_max"],
        "n_ctx_slot": slot_cells(s["n_ctx_seq"], getattr(spec, "max_position_embeddings", None)),
    }
    kv_lines = [line for line in cache.log_lines if line.startswith("llama_kv_cache: size")]
    recurrent = [line for line in cache.log_lines if line.startswith("llama_memory_recurrent: size")]
    if kv_lines:
        out["kv_cells"] = s["kv_size"]
    if s.get("swa_cells") is not None:
        out["swa_cells"] = s["swa_cells"]
    out["kv_cache_lines"] = kv_lines
    if recurrent:
        out["recurrent_line"] = recurrent[0]
    out["kv_bytes"] = cache.kv_bytes_total
    if cache.refused:
        # llama-server starts, and refuses the request at its slot's end (a refusal of a request, not of the start)
        out["request_refusal" if cache.refusals[0].startswith("request (") else "refusal"] = cache.refusals[0]
    return out


def observed(log: LlamaCppLog, props: Optional[Mapping], slots: Optional[Sequence[Mapping]]) -> dict:
    """The same figures as llama-server reported them (None where it did not)."""
    out: dict[str, Any] = {k: getattr(log, k) for k in ("n_seq_max", "n_ctx", "n_ctx_seq", "n_batch", "n_ubatch",
                                                        "kv_unified")}
    out["n_slots"] = log.n_slots
    out["n_ctx_slot"] = log.n_ctx_slot
    out["kv_cells"] = log.kv_cells
    out["swa_cells"] = log.swa_cells
    out["kv_cache_lines"] = [c.line for c in log.kv_caches]
    out["recurrent_line"] = log.recurrent.line if log.recurrent else None
    if props:
        out["props_total_slots"] = props.get("total_slots")
        out["props_n_ctx"] = (props.get("default_generation_settings") or {}).get("n_ctx")
    if slots is not None:
        out["slots_count"] = len(slots)
        out["slots_n_ctx"] = sorted({s.get("n_ctx") for s in slots if isinstance(s, Mapping)})
    return out


def compare_start(predicted: Mapping, log: LlamaCppLog, props: Optional[Mapping] = None,
                  slots: Optional[Sequence[Mapping]] = None) -> list[Check]:
    """Each predicted figure beside llama-server's (its log, /props, /slots)."""
    seen = observed(log, props, slots)
    checks = [Check(k, predicted[k], seen[k], "log") for k in
              ("n_seq_max", "n_ctx", "n_ctx_seq", "n_batch", "n_ubatch", "kv_unified", "kv_cells", "swa_cells",
               "n_slots", "n_ctx_slot") if k in predicted]
    for i, line in enumerate(predicted.get("kv_cache_lines", ())):
        got = seen["kv_cache_lines"][i] if i < len(seen["kv_cache_lines"]) else None
        checks.append(Check(f"kv cache line {i + 1}", line, got, "log"))
    extra = seen["kv_cache_lines"][len(predicted.get("kv_cache_lines", ())):]
    for j, line in enumerate(extra):  # a cache kvplan did not predict
        checks.append(Check(f"kv cache line {len(predicted.get('kv_cache_lines', ())) + j + 1}", None, line, "log"))
    if "recurrent_line" in predicted or seen["recurrent_line"] is not None:
        checks.append(Check("recurrent state line", predicted.get("recurrent_line"), seen["recurrent_line"], "log"))
    if props:
        checks.append(Check("/props total_slots", predicted["n_slots"], seen["props_total_slots"], "/props"))
        checks.append(Check("/props n_ctx (per slot)", predicted["n_ctx_slot"], seen["props_n_ctx"], "/props"))
    if slots is not None:
        checks.append(Check("/slots count", predicted["n_slots"], seen["slots_count"], "/slots"))
        checks.append(Check("/slots n_ctx", [predicted["n_ctx_slot"]], seen["slots_n_ctx"], "/slots"))
    return checks


def compare_refusal(predicted: Mapping, log: LlamaCppLog) -> Check:
    """A refused start: kvplan's refusal beside the first line llama.cpp stopped with that says the same
    (else its first error line)."""
    want = predicted.get("refusal")
    errors = log.errors
    got = next((e for e in errors if want and want in e), errors[0] if errors else None)
    return Check("refusal", want, want if (want and got and want in got) else got, "log")


def compare_request_refusal(predicted: Mapping, answer: Optional[str]) -> list[Check]:
    """A sequence of the plan's context (a prompt of context - 1 tokens, one out): refused or served, as kvplan
    predicts and as llama-server answered (`answer`: its error message, None: served); when refused, the slot size
    its message names ("... exceeds the available context size (%d tokens)", server-context.cpp update_slots)."""
    import re

    want = predicted.get("request_refusal")
    checks = [Check("a request of the whole context refused", want is not None, answer is not None, "/completion")]
    if want is not None and answer is not None:
        size = re.search(r"available context size \((\d+) tokens\)", answer)
        checks.append(Check("refusal's context size", predicted["n_ctx_slot"], int(size.group(1)) if size else answer,
                            "/completion"))
    return checks


# ---------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Level:
    """One concurrency level of the load run: client-side timings and what /slots showed while it ran."""

    concurrency: int
    requests: int
    prompt_tokens: int
    output_tokens: int
    ttft_s: tuple[float, ...]  # each request's time to its first streamed token
    tpot_s: tuple[float, ...]  # each request's mean time per output token after the first
    peak_busy_slots: int  # the most slots /slots showed processing at once
    peak_tokens_held: int  # the most tokens (prompt + decoded) the busy slots held at once
    predicted_busy_slots: int  # min(concurrency, slots): llama-server admits one request per slot, queues the rest
    predicted_tokens_held: int  # predicted busy slots x held_per_request (prompt + output - 1)
    predicted_tpot_s: Optional[float]  # kvplan's roofline decode step (None: no bandwidth given)
    kv_bytes_per_token: Optional[int]  # to turn tokens held into bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ttft_p50_s=pct(self.ttft_s, 50), ttft_p99_s=pct(self.ttft_s, 99), tpot_p50_s=pct(self.tpot_s, 50),
                 tpot_p99_s=pct(self.tpot_s, 99))
        d["ttft_s"], d["tpot_s"] = list(self.ttft_s), list(self.tpot_s)
        return d


def held_per_request(prompt_tokens: int, output_tokens: int) -> int:
    """The most cells one request fills: its prompt and every output token but the last, which is returned and never
    decoded into the cache (server-context.cpp: a sampled token is fed back on the next step, and the request ends
    once it has n_predict of them)."""
    return prompt_tokens + output_tokens - 1


def pct(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile, nearest rank (p50 of 4 values: the 2nd; p99 of 4: the 4th)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


def achieved_gbps(bytes_per_step: int, tpot_s: Sequence[float]) -> Optional[float]:
    """The decode bytes per step over the median measured step, in 1e9 B/s (a calibration's `achieved_gbps`)."""
    if not tpot_s:
        return None
    median = statistics.median(tpot_s)
    return bytes_per_step / median / 1e9 if median > 0 else None
