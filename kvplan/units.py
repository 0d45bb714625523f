"""Byte sizes: parsing `5GiB` / `80GB` / `1234`, and rendering in labelled binary units.

GiB = 2**30 and GB = 10**9 are never mixed: a suffix says which.
"""

from __future__ import annotations

import re

from kvplan.errors import InputError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str, flag: str) -> int:
    """'5GiB' -> 5368709120; '80GB' -> 80000000000; '1234' -> 1234 (bytes)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise InputError(
            f"{flag} {text!r} is not a size; write bytes or a number with a unit, e.g. 5GiB or 80GB"
        )
    value = float(match.group(1)) * _UNITS[unit]
    return int(round(value))


def fmt_bytes(n: int | float) -> str:
    """Binary units with the unit named: 1536 -> '1.50 KiB'."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{sign}{n / size:,.2f} {unit}"
    return f"{sign}{int(n):,} B"


def fmt_int(n: int) -> str:
    return f"{n:,}"
