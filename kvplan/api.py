"""The Python API: `kvplan.estimate`, `kvplan.compare`, `kvplan.load_model` (imported lazily by `kvplan`).

Each call asks the question the CLI command of the same name asks, through the
same pipeline (`kvplan.plan.pipeline`), and returns frozen result objects whose
`to_dict()` is exactly what `--format json` prints for it. Bad input raises
`kvplan.errors.InputError` with the CLI's words (its `.message`).

    >>> import kvplan
    >>> kvplan.estimate("llama-3.1-8b", context=32768, batch=16).kv_bytes_total  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from kvplan.plan.pipeline import Answer, Settings


def load_model(source: Any):
    """A model spec from a catalog name, a spec YAML, a config.json or model folder, a .gguf file or a hub id
    (org/name) in the local Hugging Face cache; a spec passes through."""
    if not isinstance(source, (str, bytes)) and hasattr(source, "num_hidden_layers"):
        return source
    from kvplan.sources.catalog import resolve_spec

    return resolve_spec(str(source), fast=True)


def _settings(context: int, batch: int, options: dict) -> Settings:
    """Settings from keywords: a Settings field by name, or an engine option key (hf_cache, parallel, page_size, ...)."""
    from kvplan.options import ALL_OPTION_KEYS
    from kvplan.errors import InputError

    names = set(Settings._fields) - {"engine_options", "concurrency_curve", "roofline"}
    engine_options = {k: options.pop(k) for k in list(options) if k in ALL_OPTION_KEYS}
    unknown = sorted(set(options) - names)
    if unknown:
        raise InputError(f"{unknown[0]!r} is not an option of kvplan's (one of {', '.join(sorted(names))} or an "
                         "engine's option key)")
    return Settings(context=context, batch=batch, engine_options=engine_options, **options)


def estimate(model: Any, *, context: int = 8192, batch: int = 1, engine: str = "vllm", **options) -> Answer:
    """`kvplan estimate MODEL --engine ENGINE` for one context and batch; `options` are the other flags by their
    Python names (kv_cache_dtype, tp, pp, gpu, gpu_memory, dtype, block_size, prompt_tokens, ...) and the engine's
    own options (hf_cache, parallel, ctx_size, page_size, tokens_per_block, ...).

    `.to_dict()` equals `json.loads` of `kvplan estimate ... --format json`; ideal and vllm answers carry
    `.estimate` (the layer table) and, with a GPU, `.plan` (capacity, latency, cost); every engine's
    `.cache` / `.capacity` are its `EngineCache` / `EngineCapacity` where it has them, and a profile's
    `.roofline` (with a GPU) its latency, cost and workload (`kvplan.plan.planner.Roofline`).
    """
    from kvplan.plan.pipeline import check_estimate, run

    spec = load_model(model)
    settings = _settings(context, batch, dict(options))
    check_estimate(spec, engine, settings, contexts=[context], tps=[settings.tp],
                   kv_cache_dtypes=[settings.kv_cache_dtype])
    return run(spec, engine, settings, engine_rows=False)


def compare(model: Any, *, context: int = 8192, batch: int = 1, engines: Optional[Sequence[str]] = None,
            **options):
    """`kvplan compare MODEL`: every engine (or `engines`) side by side; `.to_dict()` equals its `--format json`.

    `options` as for `estimate` (kv_cache_dtype, tp, pp, gpu, gpu_memory, dtype, block_size, the engines' own keys).
    """
    from kvplan.plan.pipeline import compare as run_compare

    spec = load_model(model)
    settings = _settings(context, batch, dict(options))._replace(roofline=False)  # compare reports memory only
    if settings.gpu is None and settings.gpu_memory is not None and settings.gpu_bandwidth is None:
        settings = settings._replace(gpu_bandwidth=1.0)  # as the CLI: compare reports memory only
    return run_compare(spec, settings, engines)
