"""Models a local runner already holds: Ollama's blobs and LM Studio's models folder, both GGUF files.

`ollama:NAME[:TAG]` reads Ollama's own store, `$OLLAMA_MODELS` else `~/.ollama/models`:
`manifests/<host>/<namespace>/<name>/<tag>` is an OCI-style manifest whose layer of mediaType
`application/vnd.ollama.image.model` names the GGUF blob by digest, `blobs/sha256-<hex>`. NAME
takes Ollama's defaults (types/model/name.go): host `registry.ollama.ai`, namespace `library`, tag
`latest`; `user/name:tag` and `hf.co/org/repo:quant` name the others.

How Ollama sizes the cache is llama.cpp's rule with two numbers of its own: the context per request
`num_ctx` (the model's `PARAMETER num_ctx` in its params layer, else `$OLLAMA_CONTEXT_LENGTH`, else
Ollama's own default, which newer versions pick from the GPU's memory), cut to the GGUF's
`context_length`; and `OLLAMA_NUM_PARALLEL` slots (default 1). The runner is started with
`KvSize = NumCtx * numParallel` and `Parallel = numParallel` (ollama llm/server.go), which is
llama.cpp's `--ctx-size N*P --parallel P`: kvplan's `--engine llama.cpp --context N --parallel P`.
The spec's notes carry the numbers found.

`lmstudio:PUBLISHER/MODEL[/FILE.gguf]` reads LM Studio's folder, `~/.lmstudio/models` (LM Studio
0.3) else `~/.cache/lm-studio/models` (earlier), laid out `PUBLISHER/MODEL/FILE.gguf`; a model
folder holding several quantizations needs the file named.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from kvplan.errors import InputError

RUNNER_PREFIXES = ("ollama:", "lmstudio:")
OLLAMA_HOST = "registry.ollama.ai"  # ollama types/model/name.go defaultHost
OLLAMA_NAMESPACE = "library"  # defaultNamespace
OLLAMA_TAG = "latest"  # defaultTag
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"
MAX_MANIFEST_BYTES = 1024 * 1024  # a manifest is a few hundred bytes; params a few KB
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


def ollama_models_dir() -> Path:
    """Ollama's store: $OLLAMA_MODELS, else ~/.ollama/models (envconfig.Models)."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def lmstudio_models_dirs() -> list[Path]:
    """LM Studio's models folders, newest layout first."""
    return [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]


def locate_runner_model(ref: str):
    """The Located GGUF for `ollama:...` or `lmstudio:...` (kvplan.sources.resolve.Located)."""
    if ref.startswith("ollama:"):
        return _locate_ollama(ref, ref[len("ollama:"):])
    return _locate_lmstudio(ref, ref[len("lmstudio:"):])


# ------------------------------------------------------------------ Ollama


def parse_ollama_name(name: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) of `[host/][namespace/]model[:tag]`, with Ollama's defaults."""
    path, _, tag = name.partition(":")
    parts = path.split("/") if path else []
    if not 1 <= len(parts) <= 3 or not all(_PART.match(p) for p in parts) or (tag and not _PART.match(tag)):
        raise InputError(f"ollama:{name}: expected ollama:NAME[:TAG] (e.g. ollama:llama3.2:3b, ollama:user/model:tag)")
    host = parts[0] if len(parts) == 3 else OLLAMA_HOST
    namespace = parts[-2] if len(parts) >= 2 else OLLAMA_NAMESPACE
    return host, namespace, parts[-1], tag or OLLAMA_TAG


def _read_json(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InputError(f"{path}: {what} is above the {MAX_MANIFEST_BYTES:,}-byte cap")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: {what} cannot be read ({exc})") from None


def _locate_ollama(ref: str, name: str):
    from kvplan.sources.resolve import Located, _name

    host, namespace, model, tag = parse_ollama_name(name)
    store = ollama_models_dir()
    manifest_path = store / "manifests" / host / namespace / model / tag
    if not manifest_path.is_file():
        raise InputError(
            f"{ref}: Ollama has no manifest {manifest_path} (OLLAMA_MODELS: {store}); "
            f"`ollama pull {model}:{tag}` fetches it, `ollama list` shows what is there"
        )
    manifest = _read_json(manifest_path, "the Ollama manifest")
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list):
        raise InputError(f"{manifest_path}: the Ollama manifest has no `layers` list")
    models = [l for l in layers if isinstance(l, dict) and l.get("mediaType") == MODEL_MEDIA_TYPE]
    if len(models) != 1:
        raise InputError(f"{manifest_path}: expected one layer of mediaType {MODEL_MEDIA_TYPE}, found {len(models)}")
    blob = _blob(store, manifest_path, models[0])
    params = [l for l in layers if isinstance(l, dict) and l.get("mediaType") == PARAMS_MEDIA_TYPE]
    num_ctx = _num_ctx(store, manifest_path, params[0]) if params else None
    notes = ollama_notes(num_ctx, _train_ctx(blob))
    display = f"{model}:{tag}" if namespace == OLLAMA_NAMESPACE and host == OLLAMA_HOST else name
    return Located("gguf", blob, _name(display.replace(":", "-")), f"ollama:{display} ({blob})", notes)


def _blob(store: Path, manifest_path: Path, layer: dict) -> Path:
    digest = layer.get("digest")
    m = _DIGEST.match(digest) if isinstance(digest, str) else None
    if m is None:
        raise InputError(f"{manifest_path}: layer digest {digest!r} is not sha256:<64 hex digits>")
    blob = store / "blobs" / f"sha256-{m.group(1)}"
    if not blob.is_file():
        raise InputError(f"{manifest_path}: its blob {blob} is missing; `ollama pull` the model again")
    return blob


def _num_ctx(store: Path, manifest_path: Path, layer: dict) -> Optional[int]:
    params = _read_json(_blob(store, manifest_path, layer), "the Ollama params layer")
    value = params.get("num_ctx") if isinstance(params, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{manifest_path}: the params layer's num_ctx {value!r} is not a positive integer")
    return value


def _train_ctx(blob: Path) -> Optional[int]:
    """The GGUF's `{arch}.context_length` (Ollama's trainCtx), None when it names none."""
    from kvplan.sources.gguf import read_gguf

    meta = read_gguf(blob).metadata
    value = meta.get(f"{meta.get('general.architecture')}.context_length")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _env_count(var: str) -> Optional[int]:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise InputError(f"{var}={raw!r}: expected a whole number")
    return int(raw)


def ollama_notes(num_ctx: Optional[int], train_ctx: Optional[int] = None) -> str:
    """Where Ollama's num_ctx and parallel slots come from, and the llama.cpp flags they are."""
    env_ctx = _env_count("OLLAMA_CONTEXT_LENGTH")
    parallel = _env_count("OLLAMA_NUM_PARALLEL") or 1  # envconfig.NumParallel default 1 (0 also means 1)
    if num_ctx is not None:
        ctx, where = num_ctx, "the model's PARAMETER num_ctx"
    elif env_ctx:
        ctx, where = env_ctx, "OLLAMA_CONTEXT_LENGTH"
    else:
        ctx, where = None, ""
    slots = f"OLLAMA_NUM_PARALLEL {parallel}"
    if ctx is not None and train_ctx is not None and ctx > train_ctx:
        # llm/server.go: `if opts.NumCtx > int(trainCtx) && trainCtx > 0 { opts.NumCtx = int(trainCtx) }`
        where += f", {ctx} cut to the GGUF's context_length"
        ctx = train_ctx
    if ctx is None:
        return (
            f"Ollama: no num_ctx in the model's params and OLLAMA_CONTEXT_LENGTH unset (Ollama picks one), {slots}: "
            f"llama.cpp --ctx-size num_ctx x {parallel} --parallel {parallel} (ollama llm/server.go KvSize = NumCtx * "
            f"numParallel); size it with `--engine llama.cpp --context NUM_CTX --parallel {parallel}`"
        )
    return (
        f"Ollama: num_ctx {ctx} ({where}), {slots}: llama.cpp --ctx-size "
        f"{ctx * parallel} --parallel {parallel} (ollama llm/server.go KvSize = NumCtx * numParallel); size it with "
        f"`--engine llama.cpp --context {ctx} --parallel {parallel}`"
    )


# ------------------------------------------------------------------ LM Studio


def _locate_lmstudio(ref: str, name: str):
    from kvplan.sources.resolve import Located, _default_name, _gguf_in, _source_for

    parts = name.split("/")
    if len(parts) not in (2, 3) or not all(p and p not in (".", "..") for p in parts):
        raise InputError(f"{ref}: expected lmstudio:PUBLISHER/MODEL or lmstudio:PUBLISHER/MODEL/FILE.gguf")
    roots = lmstudio_models_dirs()
    root = next((r for r in roots if (r / parts[0] / parts[1]).is_dir()), None)
    if root is None:
        raise InputError(
            f"{ref}: no folder {parts[0]}/{parts[1]} in LM Studio's models ({' or '.join(str(r) for r in roots)}); "
            "`lms ls` lists the models LM Studio holds"
        )
    folder = root / parts[0] / parts[1]
    if len(parts) == 3:
        path = folder / parts[2]
        if not path.is_file() or path.suffix.lower() != ".gguf":
            raise InputError(f"{ref}: {path} is not a .gguf file")
    else:
        files = sorted(p.name for p in folder.glob("*.gguf") if not p.name.lower().startswith("mmproj"))
        firsts = [f for f in files if not re.search(r"-\d{5}-of-\d{5}\.gguf$", f) or "-00001-of-" in f]
        if len(firsts) > 1:
            raise InputError(
                f"{ref}: {folder} holds {len(firsts)} GGUF files ({', '.join(firsts[:4])}); name one, e.g. "
                f"lmstudio:{parts[0]}/{parts[1]}/{firsts[0]}"
            )
        found = _gguf_in(folder)
        if found is None:
            raise InputError(f"{ref}: {folder} holds no .gguf file")
        path = found
    return Located("gguf", path, _default_name(path), _source_for(path))
