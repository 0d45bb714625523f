"""Real transformers, as a test oracle: build a tiny random-weight model from a config class
and read back the bytes its cache holds (kvplan's `--engine hf` is checked against these).

transformers (pinned in the `test` extra) and torch run on CPU; nothing is downloaded. The
walk counts every tensor a cache layer holds (keys, values, conv and recurrent states, ...),
each storage once, and lists bookkeeping tensors (0-d counters such as a linear-attention
layer's `cumulative_length_linear`) apart, so a test states which of them an engine rule counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class CacheTensor:
    layer: int
    layer_class: str
    name: str  # attribute path inside the layer, e.g. "keys", "conv_states[0]"
    shape: tuple
    dtype: str
    nbytes: int


@dataclass
class CacheBytes:
    """What one transformers cache holds after a run."""

    cache_class: str
    tensors: list[CacheTensor] = field(default_factory=list)  # every non-scalar tensor
    bookkeeping: list[CacheTensor] = field(default_factory=list)  # 0-d tensors (counters)

    @property
    def total(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def per_layer(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for t in self.tensors:
            out[t.layer] = out.get(t.layer, 0) + t.nbytes
        return out


def _walk(value, path: str, out: list, seen: set) -> None:
    """Plain tensors under `value`, each storage once; a wrapper tensor (optimum-quanto's packed data, scale and
    shift) opened by `__tensor_flatten__`, hqq's (packed tensor, meta dict) pairs walked as containers."""
    if isinstance(value, torch.Tensor) and hasattr(value, "__tensor_flatten__") and type(value) is not torch.Tensor:
        names, _ = value.__tensor_flatten__()
        for name in names:
            _walk(getattr(value, name), f"{path}.{name}", out, seen)
    elif isinstance(value, torch.Tensor):
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if key not in seen:
            seen.add(key)
            out.append((path, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(v, f"{path}[{k!r}]", out, seen)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _walk(v, f"{path}[{i}]", out, seen)


def cache_bytes(cache, attributes=None) -> CacheBytes:
    """Every tensor each layer of a transformers `Cache` holds, with its bytes (only the layers' `attributes`,
    when given)."""
    result = CacheBytes(type(cache).__name__)
    seen: set = set()
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"{type(cache).__name__} has no .layers: not a transformers >= 5 Cache")
    for i, layer in enumerate(layers):
        found: list = []
        for name, value in vars(layer).items():
            if attributes is None or name in attributes:
                _walk(value, name, found, seen)
        for path, t in found:
            row = CacheTensor(i, type(layer).__name__, path, tuple(t.shape), str(t.dtype).replace("torch.", ""),
                              t.numel() * t.element_size())
            (result.bookkeeping if t.dim() == 0 else result.tensors).append(row)
    return result


def tiny_model(config, dtype=torch.bfloat16, seed: int = 0):
    """A random-weight causal LM built from `config` (a transformers config object), in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def parameter_count(model) -> int:
    """The parameters a model holds, each storage counted once (tied embeddings share one)."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total


def prompt(config, batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, tokens), generator=g)


def forward_cache(model, ids: torch.Tensor) -> CacheBytes:
    """The DynamicCache one forward pass over `ids` leaves (prefill)."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
    return cache_bytes(out.past_key_values)


def generate_cache(model, ids: torch.Tensor, new_tokens: int, cache_implementation=None) -> CacheBytes:
    """The cache `generate()` leaves after `new_tokens` greedy tokens (None: its default cache)."""
    kw = {"cache_implementation": cache_implementation} if cache_implementation else {}
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             return_dict_in_generate=True, pad_token_id=0, **kw)
    return cache_bytes(out.past_key_values)


def quantized_cache_bytes(cache) -> CacheBytes:
    """As `cache_bytes`, for a `QuantizedCache`: the bytes its backend's tensors really hold (quanto's packed
    uint8 data, scales and shifts; hqq's packed words, scales and zeros; fp8's values and scale), not the
    logical shape a wrapper tensor reports, plus the full-precision residual `keys` / `values`."""
    return cache_bytes(cache, ("keys", "values", "_quantized_keys", "_quantized_values"))


def quantized_generate_cache(model, ids: torch.Tensor, new_tokens: int, **cache_config) -> CacheBytes:
    """The `QuantizedCache` `generate(cache_implementation="quantized", cache_config=...)` leaves."""
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             return_dict_in_generate=True, pad_token_id=0, cache_implementation="quantized",
                             cache_config=cache_config)
    return quantized_cache_bytes(out.past_key_values)


def static_cache(model, ids: torch.Tensor, max_cache_len: int) -> CacheBytes:
    """The StaticCache(config, max_cache_len) you build yourself, after one forward pass over `ids`."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    with torch.no_grad():
        out = model(ids, cache=cache, use_cache=True)
    return cache_bytes(out.past_key_values)
