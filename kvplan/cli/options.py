"""typer parameters built from the one option table (`kvplan.engines.keys.OPTIONS`).

A command declares `context: O.context = "8192"`: the flags, the help and the
typer type come from the table, so a flag is spelled, typed and explained the
same in every command. `O.format(CheckFormat)` gives `--format` with a command's
own choices. Options are built on first use (a command's module builds only its
own; `kvplan estimate`'s cold start pays for its flags only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kvplan.engines.keys import BY_KEY, Option

# The typer type of each kind: counts, token counts and sizes are text, read by
# kvplan.engines.keys.parse_option (k / m suffixes, units, comma lists) in every command alike.
_TYPES = {"counts": str, "tokens": str, "int": int, "bytes": str, "share": float, "float": float, "str": str,
          "str_list": str, "bool": bool, "path": str}


def typer_type(option: Option, choices: Any = None) -> Any:
    """The Python type typer parses `option`'s text into (Optional unless a bool)."""
    base = choices if option.kind == "choice" else _TYPES[option.kind]
    return base if option.kind in ("bool", "choice") else Optional[base]


def annotated(key: str, choices: Any = None, path: bool = False) -> Any:
    """`Annotated[type, typer.Option(flags..., help=...)]` for the table's option `key`."""
    option = BY_KEY[key]
    kind = typer_type(option, choices)
    if path:  # measure hands its report path on as a Path
        kind = Optional[Path]
    path_kind = option.kind == "path"
    info = typer.Option(*option.flags, help=option.help, show_default=not path_kind, metavar="FILE" if path_kind else None)
    return Annotated[kind, info]


def hidden_alias(flag: str, key: str, help: str) -> Any:
    """An old spelling of option `key` kept working, not shown in --help (the table names it in `hidden`)."""
    if flag not in BY_KEY[key].hidden:
        raise ValueError(f"{flag} is not an old spelling of {BY_KEY[key].flag} in kvplan.engines.keys.OPTIONS")
    return Annotated[Optional[str], typer.Option(flag, hidden=True, help=help, show_default=False)]


class _Options:
    """`O.context` etc.: the Annotated parameter of each option, built once, on first use."""

    def __getattr__(self, key: str) -> Any:
        if key not in BY_KEY:
            raise AttributeError(key)
        value = annotated(key)
        setattr(self, key, value)
        return value

    def format(self, choices: Any) -> Any:  # noqa: A003  (the flag's name)
        """--format / -f with a command's own choices (an Enum)."""
        return annotated("format", choices)


O = _Options()
