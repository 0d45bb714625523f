"""Starting llama-server with a plan's flags, reading what it decided, and driving it under load.

`plan(model, ...)` sizes the plan with kvplan's llama.cpp rules and builds its `llama-server` command with the
same function as `kvplan estimate --emit llama.cpp` (`kvplan.plan.emit.emit`), so the command measured is the
command printed. `start_and_read(plan, server)` starts that command (one process in its own process group, its
log in a file), waits for `/health`, reads `/props` and `/slots`, and returns the log's text with them; it
always stops the server (`kvplan.measure.server_llamacpp`). `run_level` sends N concurrent streaming
completions of token-id prompts (`/completion`: a tiny model may have no usable text) and polls `/slots`.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import shlex
import shutil
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from kvplan.errors import InputError

INSTALL = ("llama-server not found: build it from llama.cpp's source (cmake -S llama.cpp -B build -DLLAMA_CURL=OFF "
           "-DLLAMA_BUILD_SERVER=ON && cmake --build build --target llama-server), then put build/bin on PATH or "
           "pass --llama-server build/bin/llama-server")


# llama-server prints llama.cpp's own lines (llama_context, llama_kv_cache, llama_memory_recurrent: what is compared)
# only at log verbosity 4; its default, 3, shows the server's lines alone (seen on the build recorded in
# tests/fixtures/llamacpp_real/). Logging only: no effect on what it allocates.
LOG_ARGS = ("-lv", "4")


@dataclass(frozen=True)
class Plan:
    """One llama.cpp plan: the spec, kvplan's answer, its options and the llama-server command (argv, no binary)."""

    model: str
    spec: Any
    context: int
    batch: int
    cache: Any  # kvplan.engines.base.EngineCache
    opts: Any  # kvplan.engines.llamacpp.LlamaCppOptions
    settings: dict  # the option keys the command was built from
    args: tuple[str, ...]  # llama-server's arguments, as `estimate --emit llama.cpp` prints them after the binary


def plan(model: str, *, context: int, batch: int, kv_cache_dtype: str = "auto",
         engine_options: Optional[dict] = None) -> Plan:
    """kvplan's llama.cpp answer for MODEL (a .gguf) and the llama-server command that realises it."""
    from kvplan.engines.options import engine_options as options_of
    from kvplan.plan.emit import emit, plan_settings
    from kvplan.plan.pipeline import Settings, run
    from kvplan.sources.catalog import resolve_spec

    given = {k: v for k, v in (engine_options or {}).items() if v is not None}
    spec = resolve_spec(model)
    answer = run(spec, "llama.cpp", Settings(context=context, batch=batch, kv_cache_dtype=kv_cache_dtype,
                                             engine_options=given))
    opts = options_of("llama.cpp", kv_cache_dtype, given)
    settings = plan_settings(context=context, batch=batch, kv_cache_dtype=kv_cache_dtype, tp=1, pp=1, block_size=None,
                             state_dtype=None, dtype=None, gpu_memory_utilization=None, max_num_batched_tokens=None,
                             engine_options=given, others={})
    words = shlex.split(emit("llama.cpp", spec, model, settings))
    return Plan(model, spec, context, batch, answer.cache, opts, settings, tuple(words[1:]))


def find_server(given: Optional[str]) -> str:
    """--llama-server PATH, else `llama-server` on PATH; one line how to build it when neither is there."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise InputError(f"--llama-server {given}: no such file; {INSTALL}")
        return str(path)
    found = shutil.which("llama-server")
    if not found:
        raise InputError(INSTALL)
    return found


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a local server we started)
        return json.loads(response.read().decode("utf-8"))


def request_error(base: str, prompt_tokens: int, timeout: float = 60.0) -> Optional[str]:
    """POST one /completion of `prompt_tokens` token ids and 1 token out: llama-server's error message, or None
    when it served it (tools/server: a prompt of the slot's cells or more is refused before it is processed).
    A sequence of `context` tokens is a prompt of context - 1 and the one token it produces."""
    import urllib.error

    body = json.dumps({"prompt": [1] + [10] * (prompt_tokens - 1), "n_predict": 1, "cache_prompt": False}).encode()
    req = urllib.request.Request(f"{base}/completion", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310 (our own server)
            response.read()
        return None
    except urllib.error.HTTPError as exc:
        data = json.loads(exc.read().decode("utf-8", errors="replace") or "{}")
        error = data.get("error")
        return str(error.get("message") if isinstance(error, dict) else error)


# ---------------------------------------------------------------- load


class SlotsPoller:
    """Reads `/slots` every `interval_s` on a thread between `start()` and `stop()`: the most slots busy at once
    and the most tokens (prompt + decoded) they held at once. A failed read is skipped (the server may be busy)."""

    def __init__(self, base: str, interval_s: float = 0.01):
        self.base, self.interval_s = base, interval_s
        self.peak_busy = self.peak_tokens = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kvplan-slots", daemon=True)

    def read_once(self) -> None:
        try:
            slots = get_json(f"{self.base}/slots", timeout=5.0)
        except Exception:  # noqa: BLE001 (a poll missed; the next one counts)
            return
        busy, held = slots_busy(slots)
        self.peak_busy, self.peak_tokens = max(self.peak_busy, busy), max(self.peak_tokens, held)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.read_once()
            self._stop.wait(self.interval_s)

    def start(self) -> "SlotsPoller":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def slots_busy(slots) -> tuple[int, int]:
    """(slots processing, tokens their cells hold) from a /slots answer (server-context.cpp `server_slot::to_json`:
    `is_processing`; `n_prompt_tokens` is `prompt.tokens.size()`, the slot's cached tokens, which grow by each token
    decoded: the prompt and the output so far, so `next_token[0].n_decoded` is not added)."""
    busy = [s for s in slots if isinstance(s, dict) and s.get("is_processing")]
    return len(busy), sum(int(s.get("n_prompt_tokens") or 0) for s in busy)
