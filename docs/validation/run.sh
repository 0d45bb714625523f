#!/usr/bin/env bash
# GPU validation of `kvplan measure`: a GQA, an MLA and a sliding-window spec on the local NVIDIA GPU.
# Usage (from the repository root, after the README's install): bash docs/validation/run.sh [OUT_DIR]
# Writes one JSON report and one table per model, plus nvidia-smi's view, into OUT_DIR
# (default docs/validation/<date>-<gpu>), to be committed as the project's evidence.
set -euo pipefail
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr ' ' '-')
out=${1:-docs/validation/$(date +%F)-${gpu}}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt"
run() {
  local name=$1; shift
  kvplan measure "$name" --device cuda --verify --json "$out/$name.json" "$@" | tee "$out/$name.txt"
}
run llama-3.1-8b --context 1024,8192,32768 --batch 1,8          # GQA, every layer
run deepseek-v2-lite --context 1024,8192,32768 --batch 1,8      # MLA latent cache
run gemma-3-27b --layers 12 --context 1024,8192,32768 --batch 1 # 10 sliding + 2 full layers
echo "reports in $out"
