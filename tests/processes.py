"""What the engine-harness tests ask of a process they started: is it gone?"""
from __future__ import annotations

from kvplan.measure import server as srv


def gone(pid: int) -> bool:
    """The process is gone or a zombie (exited, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return srv.parse_proc_stat(f.read())[0] in ("Z", "X")
    except FileNotFoundError:
        return True
