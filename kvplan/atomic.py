"""Writing files so that a reader never sees half of one: a temporary file in the same
folder, flushed to disk, then renamed over the target (atomic on POSIX)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvplan.errors import InputError


def write_text_atomically(path: str | Path, text: str, flag: str) -> Path:
    """Write `text` to `path` atomically; `flag` names the option in errors (e.g. '--output')."""
    target = Path(os.path.abspath(path))
    if target.is_dir():
        raise InputError(f"{flag} {path}: is a folder; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
