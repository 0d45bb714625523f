"""Writing files so that a reader never sees half of one: a temporary file in the same
folder, flushed to disk, then renamed over the target (atomic on POSIX).

Whether the target may be written at all (not an input, not someone else's file, a
folder that exists and can be written in) is `kvplan.cli.outputs.check_output`, which every
command runs before its work; this module only writes.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from kvplan.errors import InputError
from kvplan.interrupts import pause_for_test


def write_text_atomically(path: str | Path, text: str, flag: str) -> Path:
    """Write `text` to `path` atomically; `flag` names the option in errors (e.g. '--output').

    A link is followed: the file it names is replaced and the link kept. Any OSError
    (a full disk, a folder made read-only since the check) is an InputError naming the flag.
    """
    return write_bytes_atomically(path, text.encode("utf-8"), flag)


def write_bytes_atomically(path: str | Path, data: bytes, flag: str) -> Path:
    """Write `data` to `path` atomically (a PNG from `--plot`, or encoded text), as `write_text_atomically`."""
    shown = os.fspath(path)
    target = Path(os.path.realpath(os.path.expanduser(shown)))
    if target.is_dir():
        raise InputError(f"{flag} {shown}: is a folder; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {shown}: folder {os.path.dirname(os.path.abspath(shown))} does not exist")
    # The temporary file's name is chosen before it is created, so a signal at any point (kvplan.interrupts
    # raises out of wherever it lands) still finds it for the `finally`: the target is then either the
    # old file untouched or the new one complete, and no temporary file is left behind.
    tmp = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask: the user's usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        pause_for_test("atomic-write")
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"{flag} {shown}: cannot be written ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)  # gone already once replaced
    return target
