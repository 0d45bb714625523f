"""When a repeated timing has settled: pure, no torch, no I/O.

`kvplan measure` times its prefill and its decode steps in rounds. A round's figure
(one prefill's seconds, the median decode step) moves when other work shares the
machine; the run is called stable once the last STABLE_ROUNDS figures of each agree
within STABLE_TOLERANCE, and the figure it reports, the one the prediction is judged
against, is the median of those rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

STABLE_ROUNDS = 3  # the last rounds that must agree: two could agree by chance mid-drift
STABLE_TOLERANCE = 0.05  # (max - min) / median of those rounds; a quiet machine repeats to 1-2%


def last_rounds(values: Sequence[float], max_rounds: int) -> list[float]:
    """The rounds stability is judged on: the last min(STABLE_ROUNDS, max_rounds)."""
    return list(values[-min(STABLE_ROUNDS, max_rounds):])


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of `values`; 0 for one value (or a zero median)."""
    mid = statistics.median(values)
    return 0.0 if mid == 0 else (max(values) - min(values)) / mid


def is_stable(values: Sequence[float], max_rounds: int, tolerance: float = STABLE_TOLERANCE) -> bool | None:
    """True once the last rounds agree within `tolerance`, False while they do not (or too few ran);
    None when `max_rounds` < 2: one round cannot show stability."""
    if max_rounds < 2:
        return None
    window = last_rounds(values, max_rounds)
    return len(window) == min(STABLE_ROUNDS, max_rounds) and spread(window) <= tolerance


def repeat_until_stable(run_round: Callable[[int], tuple[float, float]], max_rounds: int) -> tuple[list[float], list[float]]:
    """Call `run_round(i)` -> (prefill seconds, median decode step seconds) for i = 0, 1, … until
    both series are stable or `max_rounds` have run; the two series, in order."""
    prefill: list[float] = []
    decode: list[float] = []
    for i in range(max_rounds):
        p, d = run_round(i)
        prefill.append(p)
        decode.append(d)
        if is_stable(decode, max_rounds) and is_stable(prefill, max_rounds):
            break
    return prefill, decode
