"""typer parameters built from the one option table (`kvplan.options.OPTIONS`).

A command declares `context: O.context = "8192"`: the flags, the help and the
typer type come from the table, so a flag is spelled, typed and explained the
same in every command. `O.format(CheckFormat)` gives `--format` with a command's
own choices. Options are built on first use (a command's module builds only its
own; `kvplan estimate`'s cold start pays for its flags only).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional

import typer

from kvplan.options import BY_KEY, OPTION_KEYS, PROFILES, Option

# The typer type of each kind: counts, token counts and sizes are text, read by
# kvplan.options.parse_option (k / m suffixes, units, comma lists) in every command alike.
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
        raise ValueError(f"{flag} is not an old spelling of {BY_KEY[key].flag} in kvplan.options.OPTIONS")
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


def engine_flags(after: str, *, engines: Iterable[str] = ("vllm",) + PROFILES, table_defaults: bool = False) -> Callable:
    """Every engine profile's own flags (`kvplan.options.OPTION_KEYS`, in the table's order; those of `engines`) as
    parameters of a command, placed after its parameter `after`; the command takes them as `**engine_options`.

    typer reads a command's parameters from `inspect.signature`, so this sets `__signature__`: the
    command's own parameters (annotations evaluated) with the table's inserted. Each defaults to None,
    "not given" (the engine's own default applies, and a flag given to another engine is refused), or
    with `table_defaults` to the table's default.
    """
    import inspect

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        at = [p.name for p in own].index(after) + 1
        added = [inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotated(key),
                                   default=BY_KEY[key].default if table_defaults else None)
                 for engine in engines for key in OPTION_KEYS[engine]]
        command.__signature__ = signature.replace(parameters=own[:at] + added + own[at:])
        return command

    return decorate


def flag_group(name: str, keys: Iterable[str], *, after: str) -> Callable:
    """The table's options `keys` (a group of kvplan.options: GPU_FIGURES, BUDGET) as parameters of a command,
    placed after its parameter `after`, in the group's order; the command receives them as one dict, its
    parameter `name` (key -> the text given, None: not given), so a group is declared once for every command.

    Each defaults to the table's default. Like `engine_flags`, this sets the `__signature__` typer reads.
    """
    import inspect

    keys = tuple(keys)

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != name]
        at = [p.name for p in own].index(after) + 1
        added = [inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotated(key),
                                   default=BY_KEY[key].default) for key in keys]

        @functools.wraps(command)
        def run(**params: Any) -> Any:
            params[name] = {key: params.pop(key) for key in keys}
            return command(**params)

        run.__signature__ = signature.replace(parameters=own[:at] + added + own[at:])
        return run

    return decorate


def tees_output(inputs: Callable[[dict], Iterable[tuple[str, str]]]) -> Callable:
    """A command's `-o/--output FILE`: what it prints on stdout, written to FILE as well (atomically).

    The destination is checked before the command does any work (kvplan.cli.outputs.check_output:
    `inputs(params)` names the files the command reads, never to be replaced); the report is
    rendered into a buffer, then printed and written, also when the command exits 1 (a failed
    `diff --fail-on-increase` gate). A command that stops with an error writes nothing. The
    command keeps its `output` and `force` parameters (typer reads its signature).
    """

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def run(**params: Any) -> Any:
            output = params.get("output")
            if output is None:
                return command(**params)
            import contextlib
            import io
            import sys

            from kvplan.cli import outputs

            fmt = getattr(params.get("fmt"), "value", params.get("fmt"))
            kind = outputs.KVPLAN_JSON if fmt == "json" else outputs.KVPLAN_TEXT
            outputs.check_output(output, "--output", kind, inputs=inputs(params), force=params.get("force", False))
            buffer = io.StringIO()
            try:
                with contextlib.redirect_stdout(buffer):
                    result = command(**params)
            except SystemExit as exc:
                if exc.code in (None, 0, 1):  # 1: a failed gate; its report stands, written as printed
                    _emit(buffer.getvalue(), output)
                else:
                    sys.stdout.write(buffer.getvalue())
                raise
            except BaseException:  # an error: what was printed is shown, no file is written
                sys.stdout.write(buffer.getvalue())
                raise
            _emit(buffer.getvalue(), output)
            return result

        return run

    return decorate


def _emit(text: str, output: str) -> None:
    """The buffered report: on stdout, and atomically in `output`."""
    import sys

    from kvplan.atomic import write_text_atomically

    sys.stdout.write(text)
    write_text_atomically(output, text, "--output")
    sys.stderr.write(f"wrote {output}\n")
