"""Reading a file the user named: the two ways it used to go wrong, in one place.

- `read_text` opens without blocking and reads only a regular file: a FIFO (`mkfifo plan.yaml`) made
  `check` and `--calibration` wait forever; now it is an OSError (like a missing file) that each
  loader reports as `PATH: cannot be read (...)`, exit 2.
- `loads_json`: `json.loads` raises RecursionError on a document nested deeper than Python's
  recursion limit (`[[[[…]]]]` a few thousand deep): malformed input, not a bug. It becomes the
  `json.JSONDecodeError` every caller already reports as malformed JSON naming the file.

(YAML nesting is checked where YAML is parsed: kvplan.sources.catalog.read_yaml_text.)
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Any


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of a regular file. IsADirectoryError for a folder, OSError(EINVAL) for a FIFO,
    device or socket (opened non-blocking, so a FIFO with no writer never hangs), UnicodeDecodeError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file: a pipe, device or socket", os.fspath(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # closed with fh
            data = fh.read()
    finally:
        if fd >= 0:
            os.close(fd)
    return data.decode("utf-8")

def read_user_text(path: str | os.PathLike, what: str, hint: str = "") -> str:
    """`read_text` for a file the user named, its failures as one-line InputErrors naming the file:
    `PATH: no such file{hint}`, `PATH: is a folder, not {what}`, `PATH: cannot be read (why)` (exit 2)."""
    from kvplan.errors import InputError

    try:
        return read_text(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file{hint}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


_BRACKETS = re.compile(r"[\[\]{}]")
DEEP = 1000  # where the message points: the first bracket this deep (no real config nests beyond ~5)


def loads_json(text: str | bytes) -> Any:
    """json.loads; too deep a nesting raises JSONDecodeError('nested too deeply …') at its first bracket DEEP deep."""
    try:
        return json.loads(text)
    except RecursionError:
        doc = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
        raise json.JSONDecodeError("nested too deeply to parse (kvplan's files nest a few levels)", doc, _deep_position(doc)) from None


def _deep_position(doc: str) -> int:
    """Where the bracket depth first passes DEEP (brackets inside strings counted too: an estimate for the message)."""
    depth = 0
    for m in _BRACKETS.finditer(doc):
        depth += 1 if m.group() in "[{" else -1
        if depth > DEEP:
            return m.start()
    return 0
