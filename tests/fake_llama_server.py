"""A stand-in for llama-server in the tests: prints a recorded real start-up log and serves what measure reads.

    python tests/fake_llama_server.py -m MODEL.gguf ... --host 127.0.0.1 --port P

Takes llama-server's command line (reads only --port and --parallel), prints the log named by FAKE_LLAMA_LOG
(a log recorded from the real llama-server, tests/fixtures/llamacpp_real/), then serves /health, /props, /slots
and a streaming /v1/completions (FAKE_LLAMA_STEP_S seconds per token) on 127.0.0.1. FAKE_LLAMA_MODE: `ok`; `hang`
(never healthy: the start-up timeout); `refuse` (prints the log and exits 1, as a refused start does); `die`
(exits 137 at the first completion: an engine killed mid-run); `child` (starts a sleeping child process in its
group first, so a test sees the whole group torn down). It writes its pid (and the child's) to FAKE_LLAMA_PIDS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def arg(name: str, default: str) -> str:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else default


PORT = int(arg("--port", "8080"))
SLOTS = int(arg("--parallel", "1"))
MODE = os.environ.get("FAKE_LLAMA_MODE", "ok")
STEP_S = float(os.environ.get("FAKE_LLAMA_STEP_S", "0.002"))
N_CTX_SLOT = int(os.environ.get("FAKE_LLAMA_N_CTX_SLOT", "1024"))
busy: dict[int, dict] = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def _json(self, data, status=200):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self._json({"status": "ok"})
        if self.path == "/props":
            return self._json({"total_slots": SLOTS, "default_generation_settings": {"n_ctx": N_CTX_SLOT},
                               "build_info": "fake"})
        if self.path == "/slots":
            return self._json([{"id": i, "n_ctx": N_CTX_SLOT, "is_processing": i in busy,
                                **({"n_prompt_tokens": busy[i]["prompt"] + busy[i]["decoded"],
                                    "next_token": [{"n_decoded": busy[i]["decoded"]}]} if i in busy else {})}
                               for i in range(SLOTS)])
        self._json({"error": "not found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/completion":  # not streamed: refused as llama-server refuses a prompt of the slot's size
            if len(body["prompt"]) >= N_CTX_SLOT:
                return self._json({"error": {"code": 400, "type": "exceed_context_size_error", "message":
                                             f"request ({len(body['prompt'])} tokens) exceeds the available context "
                                             f"size ({N_CTX_SLOT} tokens), try increasing it"}}, 400)
            return self._json({"content": "x", "stop": True})
        if MODE == "die":
            os._exit(137)
        while True:  # a free slot, else queued, as llama-server defers a task until a slot frees
            with LOCK:
                slot = next((i for i in range(SLOTS) if i not in busy), None)
                if slot is not None:
                    busy[slot] = {"prompt": len(body["prompt"]), "decoded": 0}
                    break
            time.sleep(STEP_S)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for n in range(body["max_tokens"]):
                time.sleep(STEP_S)
                busy[slot]["decoded"] = n + 1
                chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
        finally:
            busy.pop(slot, None)


def main() -> None:
    pids = [os.getpid()]
    if MODE == "child":
        pids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid)
    if os.environ.get("FAKE_LLAMA_PIDS"):
        with open(os.environ["FAKE_LLAMA_PIDS"], "w") as f:
            f.write(" ".join(map(str, pids)))
    log = os.environ.get("FAKE_LLAMA_LOG")
    if log:
        sys.stdout.write(open(log).read())
        sys.stdout.flush()
    if MODE == "refuse":
        sys.exit(1)
    if MODE == "hang":
        time.sleep(600)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()


if __name__ == "__main__":
    main()
