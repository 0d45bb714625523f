"""Sizes and counts: parsing `5GiB` / `80GB` / `1234` bytes and `32k` / `1.5k` counts, rendering bytes.

GiB = 2**30 and GB = 10**9 are never mixed: a suffix says which. Counts (tokens,
sequences) take k = 1024 and m = 1024**2, as context lengths are written (32k =
32768), and a decimal multiplier when the product is whole (1.5k = 1536).
"""

from __future__ import annotations

import re
from typing import Optional, Union

from kvplan.errors import InputError

def boolean_problem(value: object, yaml: bool = True) -> Optional[str]:
    """Why `value` cannot stand where a number is expected, when it is a boolean; else None.

    Python counts True as the integer 1 (`isinstance(True, int)`), and YAML reads `yes`,
    `on` and `true` all as True: `num_hidden_layers: on` would size a one-layer model.
    `yaml`: say so (a JSON file's `true` needs no such word).
    """
    if not isinstance(value, bool):
        return None
    why = " (YAML reads true/false, yes/no and on/off as booleans)" if yaml else ""
    return f"{str(value).lower()} is a boolean, not a number{why}; write the number"


def not_a_boolean(value: object) -> object:
    """A pydantic before-validator for every number field: a boolean is refused (see boolean_problem)."""
    problem = boolean_problem(value)
    if problem:
        raise ValueError(problem)
    return value


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


def is_bare_number(text: Union[str, int, float]) -> bool:
    """True for a size written without a unit (`80`, `80.5`): parse_bytes reads it as bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return True
    match = _SIZE.match(str(text))
    return bool(match) and match.group(2) == ""


# GPU memory below 1 GiB is refused: no accelerator kvplan plans for has less (the
# catalog's smallest, the T4, has 15 GiB), the CUDA context alone takes ~512 MiB
# (the --non-torch-memory default), and a bare `80` -- read as 80 bytes -- is the
# usual slip for 80GiB. Above 1 PiB is refused too: the largest device has 288 GB
# (B300, MI355X), so a PiB is a unit slip (80PB, or bits), never a GPU.
MIN_GPU_MEMORY_BYTES = 2**30
MAX_GPU_MEMORY_BYTES = 2**50


def gpu_memory_problem(text: Union[str, int, float], nbytes: int) -> Optional[str]:
    """Why `nbytes` (parsed from `text`) is no GPU's memory, the fix last; None when it is plausible.

    A bare number below 1 GiB gets the unit it most likely lacks: `80` -> 80GiB,
    `81559` -> 81559MiB (what nvidia-smi prints).
    """
    if MIN_GPU_MEMORY_BYTES <= nbytes <= MAX_GPU_MEMORY_BYTES:
        return None
    if nbytes > MAX_GPU_MEMORY_BYTES:
        return f"{fmt_bytes(nbytes)} is more than 1 PiB, far above any GPU (the largest has 288 GB); check the unit"
    if not is_bare_number(text):
        return f"{fmt_bytes(nbytes)} is less than 1 GiB, the least GPU memory kvplan plans for; give the total the runtime reports, e.g. 24GiB"
    number = str(text).strip()
    for unit in ("GiB", "MiB"):  # the first that makes a plausible GPU (1 GiB .. 1 TiB)
        guess = float(number) * _UNITS[unit.lower()]
        if MIN_GPU_MEMORY_BYTES <= guess <= 2**40:
            return f"a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean {number}{unit}?"
    return "a bare number is bytes, and GPU memory must be at least 1 GiB; write the unit, e.g. 80GiB or 81559MiB"


def parse_gpu_memory(text: Union[str, int], flag: str) -> int:
    """--gpu-memory: a size (`80GiB`, `81559MiB`, or bytes), refused below 1 GiB or above 1 PiB."""
    nbytes = text if isinstance(text, int) and not isinstance(text, bool) else parse_bytes(str(text), flag)
    problem = gpu_memory_problem(text, nbytes)
    if problem:
        raise InputError(f"{flag} {str(text).strip()}: {problem}")
    return nbytes


# ----------------------------------------------------------------- comma lists


def split_list(text: str, flag: str, choices: tuple[str, ...] = ()) -> list[str]:
    """'8k, 16k' -> ['8k', '16k']: the one rule for every comma-list flag.

    Spaces around an entry are dropped; an empty entry (`8k,,16k`, `h100-sxm,`,
    `,`) is refused, never skipped, so a slip cannot silently shorten a sweep.
    `choices`, when the flag has a fixed set, are named in the message.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1 and not parts[0]:
        of = ", ".join(choices) if choices else "values"
        raise InputError(f"{flag} {text!r}: is empty; give a value, or a comma list of {of}")
    for i, part in enumerate(parts):
        if not part:
            raise InputError(f"{flag} {text!r}: entry {i + 1} of {len(parts)} is empty; remove the stray comma")
    return parts


# ----------------------------------------------------------------- counts

COUNT_SUFFIX = {"": 1, "k": 1024, "m": 1024 * 1024}
_COUNT = re.compile(r"^([+-]?)(\d+(?:\.\d+)?|\.\d+)([km]?)$")


class NotWholeError(ValueError):
    """A count whose decimal multiplier leaves a fraction ('1.3k' = 1331.2); the message says so."""


def parse_count(text: Union[str, int]) -> int:
    """'32k' -> 32768, '1.5k' -> 1536, '1m' -> 1048576, '8192' -> 8192 (k = 1024; `_` ignored).

    Exact: the decimal is multiplied as a fraction, so '0.0009765625k' is 1 and
    '1.3k' (1331.2) is refused with NotWholeError. Anything else that is not a
    count raises ValueError; callers word that one for their flag or key.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a count")
    if isinstance(text, int):
        return text
    part = str(text).strip().lower().replace("_", "")
    match = _COUNT.match(part)
    if not match:
        raise ValueError(f"{text!r} is not a count")
    sign, number, suffix = match.groups()
    mult = COUNT_SUFFIX[suffix] * (-1 if sign == "-" else 1)
    if "." not in number:
        return int(number) * mult
    from decimal import Decimal, localcontext  # only for a decimal: estimate's cold start skips them
    from fractions import Fraction

    value = Fraction(number) * mult
    mult = abs(mult)
    if value.denominator != 1:
        low = value.numerator // value.denominator
        # mult is a power of two, so the product is a finite decimal: print it exactly
        with localcontext() as ctx:
            ctx.prec = len(number) + 30  # enough digits that the quotient is exact
            exact = f"{Decimal(value.numerator) / Decimal(value.denominator):,f}"
        shown = f"{sign}{number} × {mult:,} = {exact}" if mult != 1 else exact
        raise NotWholeError(f"is {shown}, not a whole number; write {low} or {low + 1}")
    return int(value)


def parse_count_as(text: Union[str, int], not_a: str) -> int:
    """parse_count with both refusals worded after the quoted value, for a flag or a plan key to prefix:
    "'1.3k' is 1,331.2, not a whole number; ..." or "'x' is not " + not_a (e.g. "a whole number (e.g. 8 or 1k)")."""
    try:
        return parse_count(text)
    except NotWholeError as exc:
        raise ValueError(f"{text!r} {exc}") from None
    except ValueError:
        raise ValueError(f"{text!r} is not {not_a}") from None


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


def fmt_flops(n: float) -> str:
    """'715.0 GFLOP', '892.2 MFLOP', '38.4 kFLOP', '512 FLOP': one decimal in the largest unit that is at least 1."""
    for scale, unit in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} FLOP"


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """'1 sequence', '13 sequences', '1,024 GPUs': the count and the word in the number it takes."""
    return f"{n:,} {singular if n == 1 else (plural or singular + 's')}"
