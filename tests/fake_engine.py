"""A fake inference engine server for kvplan's tests (standard library only; no vLLM needed).

It behaves as `vllm serve` does where kvplan looks: prints a recorded real start log (`--log`), then
listens on `--port` and serves GET /health (200 once ready), GET /metrics (vLLM's Prometheus names)
and POST /v1/completions (a streaming token-id completion, one chunk per step of `--step-s`).
Requests beyond `--max-num-seqs` wait, as the scheduler's waiting queue; KV usage is the blocks the
running requests hold (ceil(tokens / block_size) each) over `--num-blocks`.

Misbehaviours for the clean-up tests: `--exit-code N` prints the log and exits N before listening (a
start-up refusal); `--never-ready` answers /health 503 for ever; `--crash-after N` kills itself (and
its worker) once N completion requests have started; `--worker` starts a child process in the same
process group that sleeps until killed (vLLM's EngineCore); `--ignore-sigterm` makes both ignore
SIGTERM (a hung engine: only SIGKILL ends it). `--pid-file` records the server's and worker's pids.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", help="a recorded start log, printed to stdout first")
    p.add_argument("--startup-s", type=float, default=0.0, help="seconds before /health answers 200")
    p.add_argument("--exit-code", type=int, help="print the log and exit with this code")
    p.add_argument("--never-ready", action="store_true")
    p.add_argument("--crash-after", type=int, help="die once this many completions have started")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--pid-file")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=1000)
    p.add_argument("--max-num-seqs", type=int, default=4)
    p.add_argument("--step-s", type=float, default=0.01, help="seconds per decode step")
    p.add_argument("--prefill-s", type=float, default=0.02, help="seconds before the first token")
    p.add_argument("--hold-s", type=float, default=0.01, help="seconds a finished request keeps its blocks")
    p.add_argument("--served-model-name", default="fake")
    return p.parse_args(argv)


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.slots = threading.Semaphore(args.max_num_seqs)
        self.running: dict[int, int] = {}  # request id -> tokens held (prompt + generated)
        self.waiting = 0
        self.started = 0
        self.next_id = 0
        self.peak_usage = 0.0
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.ready_at = time.monotonic() + args.startup_s

    def usage(self) -> float:
        blocks = sum(math.ceil(t / self.args.block_size) for t in self.running.values())
        return blocks / self.args.num_blocks


BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def histogram(name: str, values: list[float], labels: str) -> list[str]:
    lines = [f"# TYPE {name} histogram"]
    for b in BUCKETS:
        lines.append(f'{name}_bucket{{{labels},le="{b}"}} {float(sum(v <= b for v in values))}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(len(values))}')
    lines.append(f"{name}_count{{{labels}}} {float(len(values))}")
    lines.append(f"{name}_sum{{{labels}}} {sum(values)}")
    return lines


def metrics_text(state: State) -> str:
    a = state.args
    labels = f'engine="0",model_name="{a.served_model_name}"'
    with state.lock:
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(len(state.running))}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(state.waiting)}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {state.usage()}",
            "# TYPE vllm:num_preemptions_total counter",
            f"vllm:num_preemptions_total{{{labels}}} 0.0",
            "# TYPE vllm:cache_config_info gauge",
            f'vllm:cache_config_info{{block_size="{a.block_size}",cache_dtype="auto",engine="0",'
            f'num_gpu_blocks="{a.num_blocks}",num_cpu_blocks="None"}} 1.0',
        ]
        lines += histogram("vllm:time_to_first_token_seconds", state.ttft, labels)
        lines += histogram("vllm:inter_token_latency_seconds", state.tpot, labels)
    return "\n".join(lines) + "\n"


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # an access log line per request, as uvicorn prints
            sys.stdout.write(f"INFO: {self.address_string()} - {fmt % args}\n")
            sys.stdout.flush()

        def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                ok = not state.args.never_ready and time.monotonic() >= state.ready_at
                self._send(200 if ok else 503, "")
            elif self.path == "/metrics":
                self._send(200, metrics_text(state), "text/plain; version=0.0.4")
            else:
                self._send(404, "not found")

        def do_POST(self):
            if self.path != "/v1/completions":
                self._send(404, "not found")
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            prompt, max_tokens = body["prompt"], body["max_tokens"]
            with state.lock:
                state.started += 1
                crash = state.args.crash_after is not None and state.started >= state.args.crash_after
                state.waiting += 1
                rid = state.next_id
                state.next_id += 1
            if crash:
                sys.stdout.write("ERROR fake engine: EngineCore died unexpectedly\n")
                sys.stdout.flush()
                os.killpg(os.getpgrp(), signal.SIGKILL)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(obj) -> None:
                data = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            t0 = time.monotonic()
            with state.slots:
                with state.lock:
                    state.waiting -= 1
                    state.running[rid] = len(prompt)
                time.sleep(state.args.prefill_s)
                last = None
                for i in range(max_tokens):
                    if i:
                        time.sleep(state.args.step_s)
                    now = time.monotonic()
                    with state.lock:
                        state.running[rid] = len(prompt) + i + 1
                        if last is None:
                            state.ttft.append(now - t0)
                        else:
                            state.tpot.append(now - last)
                    last = now
                    chunk({"id": f"cmpl-{rid}", "object": "text_completion", "model": body.get("model"),
                           "choices": [{"index": 0, "text": "", "token_ids": [7],
                                        "finish_reason": "length" if i == max_tokens - 1 else None}]})
                time.sleep(state.args.hold_s)  # the scheduler frees a finished request's blocks at a later step
                with state.lock:
                    del state.running[rid]
            chunk({"id": f"cmpl-{rid}", "object": "text_completion", "choices": [],
                   "usage": {"prompt_tokens": len(prompt), "completion_tokens": max_tokens,
                             "total_tokens": len(prompt) + max_tokens}})
            chunk("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = None
    if args.worker:  # inherits the group (and an ignored SIGTERM)
        worker = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()} {worker.pid if worker else ''}\n")
    if args.log:
        with open(args.log, encoding="utf-8") as f:
            sys.stdout.write(f.read())
        sys.stdout.flush()
    if args.exit_code is not None:
        if worker:
            worker.kill()
            worker.wait()
        return args.exit_code
    state = State(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    server.daemon_threads = True
    sys.stdout.write(f"INFO: Uvicorn running on http://{args.host}:{args.port} (Press CTRL+C to quit)\n")
    sys.stdout.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
