"""One child run timed: the wall seconds and the CPU seconds it used (user + system, from getrusage), shared by
the benchmarks here (`python bench/bench_*.py` puts this folder first on sys.path)."""
from __future__ import annotations

import resource
import subprocess
import time
from typing import Optional


def child_seconds(cmd: list[str], env: Optional[dict[str, str]] = None) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run of `cmd`, its output discarded; a failed run stops the
    benchmark (CalledProcessError)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
