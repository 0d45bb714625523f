"""Start an inference engine's HTTP server as a child process, wait for it, and always tear it down.

Contract. `EngineServer(argv, log_path=..., ready_url=...)` is a context manager: `start()` runs
`argv` in a process group of its own (`start_new_session`), its stdout and stderr appended to
`log_path`; `wait_ready(timeout_s)` polls `ready_url` until it answers 200, and raises `EngineFailed`
with the log's last lines when the engine exits first (`EngineExited`) or the time runs out
(`EngineTimeout`); leaving the block, for any reason (an error, a timeout, Ctrl-C as
`kvplan.interrupts.Interrupted`), sends SIGTERM to the whole group, then SIGKILL to what is left after
`grace_s`, and waits until no process of the group is left (`group_alive`). The engine's workers
(vLLM's EngineCore, llama-server's threads) are in the same group, so they go too.

Ports: `free_port()` asks the kernel for an unused one; `port_in_use(host, port)` says whether a
given `--port` is taken (the caller refuses it, naming the port, before anything starts).

Only the standard library: the engines live in their own environments and are never imported.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from kvplan.errors import KvplanError

LOG_TAIL_LINES = 20  # the engine's last log lines an error shows: enough for a Python traceback's end
POLL_S = 0.5  # readiness and exit checks; an engine start takes seconds to minutes
GRACE_S = 10.0  # SIGTERM -> SIGKILL: vLLM shuts its EngineCore down within a few seconds on SIGTERM


class EngineFailed(KvplanError):
    """The engine did not start or died; `log_tail` holds its last log lines (exit 1: not bad input)."""

    exit_code = 1

    def __init__(self, message: str, log_tail: Sequence[str] = ()) -> None:
        self.log_tail = tuple(log_tail)
        shown = message if not self.log_tail else message + "\n" + "\n".join(f"  | {line}" for line in self.log_tail)
        super().__init__(shown)
        self.reason = message


class EngineExited(EngineFailed):
    """The engine's process ended (start-up refusal, crash, killed) while kvplan waited on it."""

    def __init__(self, message: str, log_tail: Sequence[str] = (), returncode: Optional[int] = None) -> None:
        super().__init__(message, log_tail)
        self.returncode = returncode


class EngineTimeout(EngineFailed):
    """The engine did not answer within the time given."""


# ------------------------------------------------------------------ ports


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is unused now (bind to 0). The engine binds it moments later; a race with
    another program is possible but rare, and shows as the engine's own 'address in use' exit."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when `port` on `host` cannot be bound now (someone listens there or holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
        return False


# ------------------------------------------------------------------ logs and process groups


def log_tail(path: str | os.PathLike, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` non-empty lines of a log file ([] when there is none yet); undecodable bytes replaced."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    kept: deque[str] = deque(maxlen=lines)
    for line in text.splitlines():
        line = line.rstrip()
        if line:
            kept.append(line)
    return list(kept)


def group_members(pgid: int, proc_root: str = "/proc") -> list[int]:
    """Live (not zombie) process ids whose process group is `pgid`, read from /proc (Linux).

    A zombie has exited and holds no memory or port; it waits for its parent (or init) to reap it, which
    kvplan cannot hasten for a grandchild, so it does not count as left running."""
    found = []
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, name, "stat"), encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        state, pgrp = parse_proc_stat(stat)
        if pgrp == pgid and state not in ("Z", "X"):
            found.append(int(name))
    return sorted(found)


def parse_proc_stat(stat: str) -> tuple[str, int]:
    """(state, process group) from a /proc/PID/stat line. The command name (field 2) is in parentheses
    and may itself hold spaces or ')', so the fields are read after its last ')'
    (proc(5): pid (comm) state ppid pgrp ...)."""
    rest = stat[stat.rindex(")") + 1:].split()
    return rest[0], int(rest[2])


def group_alive(pgid: int) -> bool:
    """Whether any live process of group `pgid` is left (zombies excluded where /proc can tell)."""
    if os.path.isdir("/proc/self"):
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------ the server


def _hold_signals():
    """Block SIGINT and SIGTERM for this thread; the previous mask, or None where it cannot be set."""
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, OSError, ValueError):
        return None


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when GET `url` answers 200 (connection refused, reset, timeouts and other codes: False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class EngineServer:
    """One engine server process (group): start, wait until ready, stop; see the module's contract."""

    def __init__(self, argv: Sequence[str], *, log_path: str | os.PathLike, ready_url: str,
                 env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None, name: str = "the engine",
                 grace_s: float = GRACE_S, poll_s: float = POLL_S,
                 probe: Callable[[str], bool] = http_ok) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.ready_url = ready_url
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.probe = probe
        self.proc: Optional[subprocess.Popen] = None
        self.pgid: Optional[int] = None
        self.started_at: Optional[float] = None
        self.ready_s: Optional[float] = None  # seconds from start to the first 200 on ready_url

    # -- lifecycle

    def start(self) -> "EngineServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                cwd=self.cwd, start_new_session=True,  # its own session and process group: one killpg ends it all
            )
        except FileNotFoundError:
            raise EngineFailed(f"{self.name}: {self.argv[0]} not found") from None
        except PermissionError:
            raise EngineFailed(f"{self.name}: {self.argv[0]} cannot be run (permission denied)") from None
        finally:
            log.close()  # the child holds its own copy
        self.pgid = self.proc.pid  # a new session's leader: its pid is the group id
        self.started_at = time.monotonic()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        return log_tail(self.log_path, lines)

    def check_alive(self) -> None:
        """Raise EngineExited (with the log's tail) when the engine's process has ended."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
                else f"exited with code {code}"
            raise EngineExited(f"{self.name} {how}; its last log lines ({self.log_path}):", self.tail(), code)

    def wait_ready(self, timeout_s: float) -> float:
        """Poll `ready_url` until it answers; return the seconds since start. EngineExited / EngineTimeout."""
        assert self.proc is not None and self.started_at is not None, "start() first"
        deadline = self.started_at + timeout_s
        while True:
            self.check_alive()
            if self.probe(self.ready_url):
                self.ready_s = time.monotonic() - self.started_at
                return self.ready_s
            if time.monotonic() >= deadline:
                raise EngineTimeout(f"{self.name} was not ready at {self.ready_url} within {timeout_s:g} s "
                                    f"(give more with --timeout); its last log lines ({self.log_path}):", self.tail())
            time.sleep(self.poll_s)

    def stop(self) -> Optional[int]:
        """End the whole group: SIGTERM, then SIGKILL after `grace_s`; wait until none is left. Idempotent.
        Returns the engine's exit code (None if it never started)."""
        if self.proc is None or self.pgid is None:
            return None
        # A second Ctrl-C while tearing down must not leave the group half-killed: SIGINT and SIGTERM are
        # held until the group is gone, then delivered (kvplan.interrupts raises them as usual).
        held = _hold_signals()
        try:
            return self._stop_group(self.proc, self.pgid)
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _stop_group(self, proc: subprocess.Popen, pgid: int) -> int:
        if group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline:
                proc.poll()  # reap our own child as soon as it ends
                if not group_alive(pgid):
                    break
                time.sleep(0.1)
            else:
                _signal_group(pgid, signal.SIGKILL)
        code = proc.wait()  # SIGKILL cannot be ignored: this returns
        deadline = time.monotonic() + self.grace_s  # killed grandchildren leave as the kernel frees them
        while group_alive(pgid) and time.monotonic() < deadline:
            _signal_group(pgid, signal.SIGKILL)
            time.sleep(0.05)
        return code

    def __enter__(self) -> "EngineServer":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
