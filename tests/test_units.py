"""kvplan.units: counts with k/m multipliers (decimals when the product is whole) and GPU memory bounds."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvplan.errors import InputError
from kvplan.units import (
    MAX_GPU_MEMORY_BYTES,
    MIN_GPU_MEMORY_BYTES,
    NotWholeError,
    gpu_memory_problem,
    parse_count,
    parse_gpu_memory,
)

SUFFIXES = {"k": 1024, "m": 1024**2}


@pytest.mark.parametrize(
    "text, value",
    [("8192", 8192), ("32k", 32768), ("32K", 32768), ("1.5k", 1536), ("0.5m", 524288), ("1m", 1048576),
     ("1_024", 1024), ("0.0009765625k", 1), ("1.0", 1), (".5k", 512), (" 2k ", 2048), (4096, 4096)],
)
def test_counts(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize(
    "text, message",
    [
        ("1.3k", "is 1.3 × 1,024 = 1,331.2, not a whole number; write 1331 or 1332"),
        ("1.5", "is 1.5, not a whole number; write 1 or 2"),
        ("0.1m", "is 0.1 × 1,048,576 = 104,857.6, not a whole number; write 104857 or 104858"),
    ],
)
def test_a_fractional_count_is_refused_with_its_exact_value(text, message):
    with pytest.raises(NotWholeError) as err:
        parse_count(text)
    assert str(err.value) == message


@pytest.mark.parametrize("text", ["abc", "1.", "1e3", "k", "", "1.5x", True])
def test_not_a_count(text):
    with pytest.raises(ValueError) as err:
        parse_count(text)
    assert not isinstance(err.value, NotWholeError)


@given(n=st.integers(0, 10**12), suffix=st.sampled_from(sorted(SUFFIXES)))
def test_every_whole_count_round_trips_through_a_decimal_multiplier(n, suffix):
    # n / 1024**j is a finite decimal (the divisor is a power of two): written out
    # exactly with its suffix it reads back as n, e.g. 1536 -> '1.5k'.
    text = f"{Decimal(n) / Decimal(SUFFIXES[suffix]):f}{suffix}"
    assert parse_count(text) == n
    assert parse_count(f"{n}{suffix}") == n * SUFFIXES[suffix]


@given(whole=st.integers(0, 10**6), tenths=st.integers(1, 9), suffix=st.sampled_from(["", "k", "m"]))
def test_a_decimal_is_accepted_exactly_when_the_product_is_whole(whole, tenths, suffix):
    text = f"{whole}.{tenths}{suffix}"
    exact = Fraction(f"{whole}.{tenths}") * {"": 1, **SUFFIXES}[suffix]
    if exact.denominator == 1:
        assert parse_count(text) == exact
    else:
        with pytest.raises(NotWholeError):
            parse_count(text)


# ------------------------------------------------------------------ GPU memory


@pytest.mark.parametrize(
    "text, message",
    [
        ("80", "--gpu-memory 80: a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean 80GiB?"),
        ("81559", "--gpu-memory 81559: a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean 81559MiB?"),
        ("0.5", "--gpu-memory 0.5: a bare number is bytes, and GPU memory must be at least 1 GiB; "
                "write the unit, e.g. 80GiB or 81559MiB"),
        ("512MiB", "--gpu-memory 512MiB: 512.00 MiB is less than 1 GiB, the least GPU memory kvplan plans for; "
                   "give the total the runtime reports, e.g. 24GiB"),
        ("2048TiB", "--gpu-memory 2048TiB: 2,048.00 TiB is more than 1 PiB, far above any GPU "
                                         "(the largest has 288 GB); check the unit"),
    ],
)
def test_gpu_memory_outside_what_a_gpu_has_is_refused(text, message):
    with pytest.raises(InputError) as err:
        parse_gpu_memory(text, "--gpu-memory")
    assert err.value.message == message


@pytest.mark.parametrize("text, nbytes", [("1GiB", 2**30), ("80GB", 80 * 10**9), ("85520809984", 85520809984), (2**30, 2**30)])
def test_gpu_memory_within_bounds(text, nbytes):
    assert parse_gpu_memory(text, "--gpu-memory") == nbytes


@given(nbytes=st.integers(1, 2**52))
def test_gpu_memory_is_refused_exactly_outside_1_gib_to_1_pib(nbytes):
    problem = gpu_memory_problem(nbytes, nbytes)
    assert (problem is None) == (MIN_GPU_MEMORY_BYTES <= nbytes <= MAX_GPU_MEMORY_BYTES)


@given(n=st.integers(1, 1023))
def test_a_bare_gib_count_gets_the_gib_hint(n):
    assert gpu_memory_problem(str(n), n).endswith(f"did you mean {n}GiB?")


def test_fmt_flops_picks_the_largest_unit_that_is_at_least_one():
    from kvplan.units import fmt_flops

    # 715.0e9 (deepseek-v2-lite's 2-layer prefill), 892.2e6 (its decode step), a tiny model's 38,400, 512
    assert [fmt_flops(715.0e9), fmt_flops(892.2e6), fmt_flops(38_400), fmt_flops(512), fmt_flops(2.5e12)] == [
        "715.0 GFLOP", "892.2 MFLOP", "38.4 kFLOP", "512 FLOP", "2.5 TFLOP"]
    assert fmt_flops(999) == "999 FLOP" and fmt_flops(1000) == "1.0 kFLOP"
