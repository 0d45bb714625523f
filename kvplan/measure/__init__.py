"""`kvplan measure`: build a spec as a real torch decoder, run it, and read the hardware.

Modules:
- `predict`: what the run should cost, from the spec alone (no torch): the spec cut
  to the layers that run, the calculator's cache bytes for it, weight bytes read
  per decode step, prefill FLOPs, and the memory a run needs before it starts.
- `cache`: pre-allocated per-layer caches sized by the calculator's rules.
- `model`: the decoder (every attention kind, state layers, RMSNorm, SwiGLU MLP).
- `readings`: NVML, torch allocator, resident memory, copy bandwidth, timers.
- `run`: the orchestration; returns a frozen `MeasureReport` (`report`).
- `server`, `load`: an engine's HTTP server as a child process group (always torn down) and the
  streaming OpenAI-compatible client and /metrics poller that load it (standard library only).
- `engine_vllm`: `measure --engine vllm`, the real vLLM started with the plan's flags and held to it.

torch is imported by `cache`, `model`, `readings` and `run` only; `predict` and
`report` stay importable without it, and nothing here is imported by
`kvplan estimate`.
"""
