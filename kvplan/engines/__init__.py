"""Engine profiles: what one inference engine really allocates for a model's KV cache.

The same model at the same context costs different bytes in different engines:
HF transformers keeps W - 1 tokens in a dynamic sliding layer, llama.cpp pads its
context to 256 cells and gives sliding layers window + micro-batch cells, SGLang
and TensorRT-LLM split GPU memory by their own fractions. One pure module per
engine (`hf`, `llamacpp`, `sglang`, `trtllm`) restates that engine's rules, each
with the source file and function it was read from
(`shared/reference/engine-rules.md` lists them; the module docstrings say which
were re-read at the source and which were not).

Every engine returns the same frozen `EngineCache`: tokens held and bytes per
layer kind, the total, every difference from the ideal cache (exactly the
tokens a sequence needs, `kvplan.model.layout`) named by cause, the line the engine
itself would log, and the refusals it would make, worded as it words them.
With a GPU, `EngineCapacity` applies the engine's own memory-budget rule.

Pure: no I/O, no printing, no torch.
"""

# The package's names load on first use (`kvplan.engines.base` holds them): importing one engine
# module, e.g. vLLM's rules on `kvplan estimate`'s cold-start path, does not pay for the others.
# The one registry of engine names (kvplan.options, import-free for the CLI): NAMES in the order
# `kvplan compare` shows them; PLANNED (ideal, vllm) are sized on a GPU by kvplan's planner,
# PROFILES (hf, llama.cpp, sglang, trtllm) by their own budget rules (`capacity` in their modules).
from kvplan.options import NAMES, PLANNED, PROFILES  # noqa: F401


def __getattr__(name: str):
    import importlib

    base = importlib.import_module("kvplan.engines.base")
    try:
        return getattr(base, name)
    except AttributeError:
        raise AttributeError(f"module 'kvplan.engines' has no attribute {name!r}") from None
