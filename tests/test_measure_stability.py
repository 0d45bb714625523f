"""kvplan/measure/stability.py: when repeated rounds of a timing agree."""

from __future__ import annotations

import pytest

from kvplan.measure.stability import STABLE_ROUNDS, STABLE_TOLERANCE, is_stable, last_rounds, repeat_until_stable, spread


def test_constants():
    assert (STABLE_ROUNDS, STABLE_TOLERANCE) == (3, 0.05)


def test_spread_is_range_over_median():
    # (1.10 - 1.00) / 1.05 = 0.095238...
    assert spread([1.00, 1.05, 1.10]) == pytest.approx(0.1 / 1.05)
    assert spread([2.0]) == 0.0
    assert spread([0.0, 0.0]) == 0.0


def test_last_rounds_are_the_last_three_or_fewer_when_capped():
    assert last_rounds([5.0, 1.0, 2.0, 3.0], 10) == [1.0, 2.0, 3.0]
    assert last_rounds([5.0, 1.0], 2) == [5.0, 1.0]


def test_stable_once_the_last_three_agree_within_five_percent():
    # last three 1.00, 1.02, 1.04: (1.04 - 1.00) / 1.02 = 3.9% <= 5%
    assert is_stable([2.0, 1.00, 1.02, 1.04], max_rounds=5) is True
    # 1.00, 1.03, 1.06: 0.06 / 1.03 = 5.8% > 5%
    assert is_stable([1.00, 1.03, 1.06], max_rounds=5) is False
    # two rounds of three needed: not yet
    assert is_stable([1.0, 1.0], max_rounds=5) is False
    # a cap of two judges two
    assert is_stable([1.0, 1.01], max_rounds=2) is True
    # one round cannot show it
    assert is_stable([1.0], max_rounds=1) is None


def _rounds(prefill: list[float], decode: list[float]):
    calls: list[int] = []

    def run_round(i: int) -> tuple[float, float]:
        calls.append(i)
        return prefill[i], decode[i]

    return run_round, calls


def test_rounds_repeat_until_both_series_agree():
    # decode settles at rounds 1-3 (2.00, 2.02, 2.04: 2.0% spread), prefill at rounds 1-3 too (3.0 x 3)
    run_round, calls = _rounds([5.0, 3.0, 3.0, 3.0, 9.0], [1.0, 2.00, 2.02, 2.04, 9.0])
    prefill, decode = repeat_until_stable(run_round, max_rounds=5)
    assert calls == [0, 1, 2, 3]
    assert prefill == [5.0, 3.0, 3.0, 3.0] and decode == [1.0, 2.00, 2.02, 2.04]


def test_rounds_wait_for_the_prefill_too():
    # decode agrees from round 0; prefill only over rounds 2-4
    run_round, calls = _rounds([1.0, 2.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    repeat_until_stable(run_round, max_rounds=5)
    assert calls == [0, 1, 2, 3, 4]


def test_rounds_stop_at_the_cap_when_never_stable():
    run_round, calls = _rounds([1.0, 2.0, 1.0, 2.0], [1.0, 2.0, 1.0, 2.0])
    prefill, decode = repeat_until_stable(run_round, max_rounds=4)
    assert calls == [0, 1, 2, 3]
    assert is_stable(decode, 4) is False


def test_one_round_when_capped_at_one():
    run_round, calls = _rounds([1.0, 2.0], [1.0, 2.0])
    repeat_until_stable(run_round, max_rounds=1)
    assert calls == [0]


def test_spread_with_a_median_of_exactly_one():
    # (2.0 - 0.5) / 1.0: the zero-median guard must be for 0 only
    assert spread([0.5, 1.0, 2.0]) == 1.5


def test_a_spread_equal_to_the_tolerance_is_stable():
    # (1.5 - 1.0) / 1.0 = 0.5 exactly in binary floating point: "within" includes the boundary
    assert is_stable([1.0, 1.0, 1.5], max_rounds=5, tolerance=0.5) is True
    assert is_stable([1.0, 1.0, 1.5], max_rounds=5, tolerance=0.25) is False
