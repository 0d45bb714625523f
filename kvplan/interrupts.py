"""SIGINT and SIGTERM end any command with exit 128 + the signal (130, 143) and one line on stderr.

Python raises KeyboardInterrupt on SIGINT, which typer turns into `Exit(130)` and,
called with `standalone_mode=False`, *returns* instead of raising; SIGTERM kills the
process with no word at all. So the console entry (`kvplan.cli.app.main`) installs one
handler for both that raises `Interrupted`, a BaseException nobody's `except
Exception` catches and neither click nor typer converts: it unwinds every `finally`
(the model freed, an atomic write's temporary file removed) to `main`, which prints
`interrupted (SIGINT)` and exits 130 (143 for SIGTERM).

Nothing here imports anything beyond the standard library: `estimate` starts fast.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked kvplan to stop; `exit_code` is 128 + the signal number (the shell's convention)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # SIGINT 2 -> 130, SIGTERM 15 -> 143
        super().__init__(f"interrupted ({self.name})")


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted; the previous handlers come back after
    (so an in-process test run leaves pytest's own Ctrl-C handling alone)."""
    previous = {}
    try:
        for signum in HANDLED:
            previous[signum] = signal.signal(signum, _raise_interrupted)
    except ValueError:  # not the main thread: signals cannot be handled here; leave them as they are
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def raise_if_interrupted(exc: BaseException) -> None:
    """Re-raise the interrupt behind `exc`, if any, from a broad `except Exception`.

    An interrupt that lands inside a context manager can be replaced by the error its
    `__exit__` raises while unwinding (torch.cuda.graph's capture_end: "operation not
    permitted when stream is capturing"); that error carries the interrupt as its
    `__context__`. A best-effort `except Exception` that swallowed it would carry on
    as if nothing had been asked: the interrupt ignored.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            raise exc
        exc = exc.__cause__ or exc.__context__


# Test-only: KVPLAN_TEST_PAUSE_AT=<point> makes the command say `kvplan-test: paused at <point>` on
# stderr and wait there for a signal, so a test can interrupt it at a known place without racing a
# clock. Unset (always, outside kvplan's own tests) it does nothing but read one environment variable.
PAUSE_ENV = "KVPLAN_TEST_PAUSE_AT"


def pause_for_test(point: str) -> None:
    """Wait for a signal at `point` when the test-only KVPLAN_TEST_PAUSE_AT names it; else return."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    sys.stderr.write(f"kvplan-test: paused at {point}\n")
    sys.stderr.flush()
    while True:  # the signal's handler raises out of here
        signal.pause()

