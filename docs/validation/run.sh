#!/usr/bin/env bash
# GPU validation of `kvplan measure`: a GQA, an MLA and a sliding-window spec on the local NVIDIA GPU.
# Usage (from the repository root, after the README's install): bash docs/validation/run.sh [OUT_DIR]
# Writes one JSON report and one table per model, plus nvidia-smi's view, into OUT_DIR
# (default docs/validation/<date>-<gpu>), to be committed as the project's evidence.
set -euo pipefail
# the installed command, else the checkout run in place (an offline GPU machine with torch already there)
if command -v kvplan >/dev/null; then kvplan=(kvplan); else kvplan=(env "PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 -m kvplan); fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr ' ' '-')
out=${1:-docs/validation/$(date +%F)-${gpu}}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt"
status=0
run() {  # one model; a failure (or a tolerance/verify exit 1) is recorded and the next model still runs
  local name=$1; shift
  set +e
  "${kvplan[@]}" measure "$name" --device cuda --verify --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.txt"
  local code=${PIPESTATUS[0]}
  set -e
  echo "exit status $code" >> "$out/$name.txt"
  if [ "$code" -ne 0 ]; then status=$code; fi
}
run llama-3.1-8b --context 1024,8192,32768 --batch 1,8          # GQA, every layer
run deepseek-v2-lite --context 1024,8192,32768 --batch 1,8      # MLA latent cache
run gemma-3-27b --layers 12 --context 1024,8192,32768 --batch 1 # 10 sliding + 2 full layers
echo "reports in $out"
exit $status
