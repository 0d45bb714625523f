"""kvplan: exact KV-cache sizing, GPU capacity planning and on-device validation for LLMs.

The Python API (`kvplan.api`, loaded on first use so that `kvplan estimate`'s cold start does not grow):

- `kvplan.estimate(model, context=..., batch=..., engine=..., **options)` -> an answer whose `to_dict()` is
  `kvplan estimate --format json`;
- `kvplan.compare(model, context=..., batch=..., engines=None, **options)` -> a `Comparison`, `to_dict()` as
  `kvplan compare --format json`;
- `kvplan.load_model(source)` -> a model spec (catalog name, spec YAML, config.json or folder, GGUF, hub id).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "compare", "estimate", "load_model"]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports kvplan.api on first use
    from kvplan.api import compare, estimate, load_model


def __getattr__(name: str) -> Any:
    if name in ("estimate", "compare", "load_model"):
        from kvplan import api

        return getattr(api, name)
    raise AttributeError(f"module 'kvplan' has no attribute {name!r}")
