"""Resolve a model reference to a ModelSpec from the model's own files, offline.

A reference is one of:
- a `config.json` (Hugging Face), or a folder holding one;
- a `.gguf` file (llama.cpp), or a folder holding one (or one split set);
- a hub id `org/name` (optionally `org/name@revision`) found in the local Hugging
  Face cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
  `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, laid out as
  `models--org--name/snapshots/<commit>/config.json`. A hub id not in the cache is
  fetched into it (config.json and the safetensors headers only: kvplan.sources.hub_fetch)
  unless `HF_HUB_OFFLINE=1`;
- `ollama:NAME[:TAG]`, `lmstudio:PUBLISHER/MODEL[/FILE.gguf]`: a local runner's GGUF
  (kvplan.sources.runners).

Nothing in a model folder is executed or imported: only JSON and binary headers
are read. `num_parameters` comes from the safetensors headers when they are all
there (exact), else from the index's `total_parameters`, else is computed from
config.json (and the spec's notes say so), else stays unknown: the KV cache does not need it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from kvplan.errors import InputError
from kvplan.model.shape import DTYPE_ALIASES, ModelShape
from kvplan.model.spec_rules import NAME_PATTERN, shape_if_valid, slugify
from kvplan.userfiles import loads_json, read_text

if TYPE_CHECKING:  # pydantic is imported only when the cheap check does not accept a spec (kvplan.model.spec_rules)
    from kvplan.model.spec import ModelSpec

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config.json is a few KB; Phi-3's rope tables make ~10 KB
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")
SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")

# safetensors dtype -> torch_dtype, for a config.json that names none.
_WEIGHT_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


@dataclass(frozen=True)
class Located:
    """Where a reference points: a config.json or a GGUF file, and what to call it."""

    kind: str  # "config" or "gguf"
    path: Path
    default_name: str
    source: str  # a hub URL when the file is in the HF cache, else the absolute path
    notes: str = ""  # what the place itself says about serving it (an Ollama model's num_ctx), added to the spec's notes


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (constants.py)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HUGGINGFACE_HUB_CACHE"):  # the older name, still honoured by huggingface_hub
        return Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def looks_like_hub_id(ref: str) -> bool:
    """'org/name' or 'org/name@rev' that is not a path on disk and not a spec file name."""
    if not HUB_ID.match(ref) or Path(ref).expanduser().exists():
        return False
    return not ref.lower().endswith((".yaml", ".yml", ".json", ".gguf"))


def _name(text: str) -> str:
    name = slugify(text)[:80].strip("-.") or "imported-model"
    if not re.match(NAME_PATTERN, name):
        name = "m-" + name
    return name[:80]


def _hub_parts(path: Path) -> Optional[tuple[str, str]]:
    """(repo id, revision) when `path` lies in a hub cache snapshot folder."""
    parts = path.absolute().parts  # not resolve(): snapshot files are symlinks into blobs/
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots" and i + 2 < len(parts):
            repo = part[len("models--"):].replace("--", "/", 1)
            return repo, parts[i + 2]
    return None


def _source_for(path: Path) -> str:
    hub = _hub_parts(path.absolute())
    if hub is not None:
        repo, rev = hub
        snapshot_index = path.absolute().parts.index(rev)
        inner = "/".join(path.absolute().parts[snapshot_index + 1:])
        return f"https://huggingface.co/{repo}/blob/{rev}/{inner}"
    return str(path.absolute())


def _default_name(path: Path) -> str:
    hub = _hub_parts(path.absolute())
    if hub is not None:
        return _name(hub[0].split("/")[-1])
    if path.suffix.lower() == ".gguf":
        m = SPLIT_GGUF.match(path.name)
        return _name(m.group("stem") if m else path.stem)
    if path.name != "config.json":  # e.g. gemma-3-27b-it.json
        return _name(path.stem)
    return _name(path.absolute().parent.name)


def _gguf_magic(path: Path) -> bool:
    """True when the file starts with GGUF's magic (gguf.md: the 4 bytes 'GGUF')."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _gguf_in(folder: Path) -> Optional[Path]:
    """The one GGUF model in a folder (first file of a split set); projector files are skipped."""
    files = sorted(p for p in folder.glob("*.gguf") if p.is_file() and not p.name.lower().startswith("mmproj"))
    firsts = [p for p in files if not SPLIT_GGUF.match(p.name) or SPLIT_GGUF.match(p.name).group("index") == "00001"]
    if len(firsts) > 1:
        shown = ", ".join(p.name for p in firsts[:4])
        raise InputError(f"{folder}: holds {len(firsts)} GGUF models ({shown}); pass one file")
    return firsts[0] if firsts else None


def _locate_in_folder(folder: Path, ref: str) -> Located:
    config = folder / "config.json"
    from kvplan.sources.catalog import broken_link

    if broken_link(config):  # a hub snapshot whose blob was deleted
        raise InputError(f"{config}: {broken_link(config)}; download the config again")
    if config.is_file():
        return Located("config", config, _default_name(config), _source_for(config))
    gguf = _gguf_in(folder)
    if gguf is not None:
        return Located("gguf", gguf, _default_name(gguf), _source_for(gguf))
    if folder.name.startswith("models--") and (folder / "snapshots").is_dir():
        return _locate_in_repo_cache(folder, folder.name[len("models--"):].replace("--", "/", 1), None)
    raise InputError(f"{ref}: no config.json and no .gguf file in this folder")


class NotCached(InputError):
    """A hub id the cache does not hold (or holds without its config): fetched when the network is allowed."""


def _locate_in_repo_cache(repo_dir: Path, repo: str, revision: Optional[str]) -> Located:
    snapshots = repo_dir / "snapshots"
    ref_name = revision or "main"
    ref_file = repo_dir / "refs" / ref_name
    commit: Optional[str] = None
    if ref_file.is_file():
        commit = ref_file.read_text(encoding="utf-8", errors="replace").strip()
    elif revision and (snapshots / revision).is_dir():
        commit = revision
    elif revision is None:
        candidates = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
        commit = candidates[-1].name if candidates else None
    if not commit or not (snapshots / commit).is_dir():
        wanted = f"revision {revision!r}" if revision else "a snapshot"
        raise NotCached(
            f"{repo}: the Hugging Face cache ({repo_dir}) has no {wanted}; download its config with "
            f"`hf download {repo} config.json`"
        )
    snapshot = snapshots / commit
    from kvplan.sources.catalog import broken_link

    if not ((snapshot / "config.json").is_file() or broken_link(snapshot / "config.json") or _gguf_in(snapshot)):
        # a snapshot holding other files only (a fetch cut short, a README downloaded alone)
        raise NotCached(
            f"{repo}: the Hugging Face cache's snapshot {snapshot} has no config.json; download it with "
            f"`hf download {repo} config.json`"
        )
    return _locate_in_folder(snapshot, repo)


def locate(ref: str, *, network: bool = True) -> Located:
    """Where a model reference points; raises InputError with the fix when it points nowhere.

    `network`: a hub id missing from the cache is fetched into it (unless HF_HUB_OFFLINE=1);
    False looks in the cache only (kvplan.cli.outputs, listing the files an output must not replace).
    """
    from kvplan.sources.runners import RUNNER_PREFIXES, locate_runner_model

    if ref.startswith(RUNNER_PREFIXES):
        return locate_runner_model(ref)
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _gguf_magic(path):  # Ollama's blobs/sha256-… have no suffix
            return Located("gguf", path, _default_name(path), _source_for(path))
        return Located("config", path, _default_name(path), _source_for(path))
    if path.is_dir():
        return _locate_in_folder(path, ref)
    if looks_like_hub_id(ref):
        repo, _, revision = ref.partition("@")
        cache = hub_cache_dir()
        try:
            return _locate_hub_id(cache, repo, revision or None)
        except NotCached as exc:
            if not network:
                raise
            missing = exc.message.split(";")[0]
        from kvplan.sources import hub_fetch

        if hub_fetch.offline():
            raise NotCached(
                f"{missing} and HF_HUB_OFFLINE is set; unset it to let kvplan fetch config.json and the safetensors "
                f"headers (a few KB), or download the config with `hf download {repo} config.json`"
            )
        hub_fetch.fetch_to_cache(repo, revision or None, cache)  # outside the except: its errors stand alone
        return _locate_hub_id(cache, repo, revision or None)
    raise InputError(f"{ref}: no such file or folder")


def _locate_hub_id(cache: Path, repo: str, revision: Optional[str]) -> Located:
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    if not repo_dir.is_dir():
        raise NotCached(f"{repo} is not in the Hugging Face cache ({cache}); download just its config with "
                        f"`hf download {repo} config.json`")
    return _locate_in_repo_cache(repo_dir, repo, revision)


# ------------------------------------------------------------------ reading


def read_config(path: Path) -> dict[str, Any]:
    """Parse a config.json with a size cap; errors name the file and line."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise InputError(f"{path}: {size:,} bytes is too large for a config.json (cap {MAX_CONFIG_BYTES:,})")
        text = read_text(path)
    except UnicodeDecodeError:
        raise InputError(f"{path}: is not UTF-8 text; expected a config.json") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = loads_json(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top level")
    from kvplan.sources.hf_config import booleans_as_numbers
    from kvplan.units import boolean_problem

    for keys, value in booleans_as_numbers(data)[:1]:  # the first: one line
        raise InputError(f"{path}:{_json_line(text, keys[-1], value)}: {'.'.join(keys)}: {boolean_problem(value, yaml=False)}")
    return data


def _json_line(text: str, key: str, value: bool) -> int:
    """The line of the first `"key": true` (or false) in a JSON text; json.loads keeps no lines."""
    word = str(value).lower()  # the value itself, or inside the key's list of numbers
    found = re.search(rf'"{re.escape(key)}"\s*:\s*(\[[^\]]*?)?\b{word}\b', text)
    return text.count("\n", 0, found.start()) + 1 if found else 1


def _build(fields: dict[str, Any], where: str, fast: bool = False) -> Union["ModelSpec", ModelShape]:
    """The spec `fields` describe; `fast`: a ModelShape when the cheap check accepts them (no pydantic)."""
    if fast:
        shape = shape_if_valid(fields)
        if shape is not None:
            return shape
    from pydantic import ValidationError

    from kvplan.model.spec import ModelSpec

    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "spec"
        raise InputError(f"{where}: {loc}: {err['msg'].removeprefix('Value error, ')}") from None


def spec_from_config_file(path: Path, name: str, source: str, fast: bool = False) -> "ModelSpec":
    """A spec from config.json, with parameters from the safetensors headers beside it when present."""
    from kvplan.sources.hf_config import convert_config
    from kvplan.sources.safetensors_header import find_weights

    conv = convert_config(read_config(path), str(path))
    fields = dict(conv.fields)
    notes = list(conv.notes)
    weights = find_weights(path.parent)

    if fields.get("torch_dtype") is None:
        dominant = weights.dominant_dtype if weights and weights.complete else None
        if dominant in _WEIGHT_DTYPES:
            fields["torch_dtype"] = _WEIGHT_DTYPES[dominant]
            notes.append(f"config.json names no torch_dtype; {fields['torch_dtype']} taken from the weights")
        else:
            fields["torch_dtype"] = "float32"
            notes.append("config.json names no torch_dtype; float32 assumed (transformers' default load dtype)")
    elif fields["torch_dtype"] not in DTYPE_ALIASES:
        notes.append(
            f"torch_dtype {fields['torch_dtype']!r} is not a KV dtype kvplan knows; bfloat16 assumed "
            "(pass --kv-cache-dtype to choose)"
        )
        fields["torch_dtype"] = "bfloat16"

    total: Optional[int] = None
    if weights is not None and weights.complete and conv.quantization is None:
        total = weights.num_parameters
        dtypes = ", ".join(f"{k} {v.parameters:,}" for k, v in weights.by_dtype.items())
        notes.append(f"num_parameters exact from {len(weights.files)} safetensors header(s) ({dtypes})")
        if conv.mtp_layers:
            notes.append(f"the safetensors total includes {conv.mtp_layers} multi-token-prediction layer(s)")
    elif weights is not None and not weights.complete and weights.index_total_parameters and conv.quantization is None:
        total = weights.index_total_parameters
        notes.append("num_parameters from model.safetensors.index.json metadata.total_parameters")
    elif conv.parameters is not None:
        total = conv.parameters
        why = "estimated from config.json"
        if conv.quantization is not None and weights is not None:
            why += (
                f" (the safetensors hold {conv.quantization}-quantized weights: "
                f"{weights.num_bytes:,} bytes of tensors, not one element per parameter)"
            )
        elif weights is not None and not weights.complete:
            why += f" (safetensors shards missing: {', '.join(weights.missing_files[:3])})"
        if conv.multimodal:
            why += "; text model only"
        if conv.mtp_layers:
            why += f"; {conv.mtp_layers} multi-token-prediction layer(s) not counted"
        notes.append(f"num_parameters {why}")
    elif weights is not None and weights.complete:
        total = weights.num_parameters
        notes.append(
            f"num_parameters = elements in the safetensors headers; the weights are {conv.quantization}-quantized, "
            "so packed elements may hold several parameters"
        )
    if total is None:
        # The KV cache does not depend on the weights: every KV answer stands; capacity and latency on a GPU
        # refuse until the weights' bytes are known (kvplan.plan.planner.missing_weights_problem).
        notes.append(
            f"num_parameters unknown: model_type {conv.model_type!r} has no parameter formula in kvplan and no "
            "complete *.safetensors sit beside config.json"
        )
    else:
        fields["num_parameters"] = total
    if weights is not None and weights.complete and weights.num_tensors:
        fields["file_weight_bytes"] = _safetensors_weight_bytes(weights, fields, notes, conv.mtp_layers)
    elif weights is not None:
        notes.append(
            f"weight bytes from the parameter formula: safetensors shards missing ({', '.join(weights.missing_files[:3])})"
        )
    if conv.inactive_parameters and total is not None and total > conv.inactive_parameters:
        fields["num_active_parameters"] = total - conv.inactive_parameters
        notes.append("num_active_parameters = num_parameters minus the experts a token skips (from config.json)")
    fields.update(name=name, source=source, notes="; ".join(notes))
    return _build(fields, str(path), fast)


def _safetensors_weight_bytes(weights, fields: dict[str, Any], notes: list[str], mtp_layers: int) -> dict[str, Any]:
    """`file_weight_bytes` from the safetensors headers: every tensor the loader puts on the GPU, at its
    stored size (packed int4 / fp4 and the scale tensors included), by part (kvplan.sources.file_weights)."""
    from kvplan.sources.file_weights import hf_part, layer_index, split_weight_bytes

    layers = fields["num_hidden_layers"]
    kept = list(zip(weights.tensor_names, weights.tensor_bytes))
    if mtp_layers:
        kept = [(n, b) for n, b in kept if (layer_index(n) or 0) < layers]
    if len(kept) < weights.num_tensors:
        # DeepSeek's multi-token-prediction layer is model.layers.<num_hidden_layers>: vLLM skips it when it
        # loads the model for serving (deepseek_v2.py load_weights: get_spec_layer_idx_from_weight_name)
        skipped = sum(weights.tensor_bytes) - sum(b for _, b in kept)
        notes.append(
            f"weight bytes leave out {weights.num_tensors - len(kept)} tensor(s) of layers past num_hidden_layers "
            f"({layers}; multi-token prediction, {skipped:,} bytes), which serving does not load"
        )
    parts = split_weight_bytes(kept, hf_part)
    if fields.get("tie_word_embeddings") and parts["lm_head"]:
        # vLLM skips a stored lm_head.weight when the embeddings are tied (models/llama.py load_weights)
        notes.append(f"weight bytes leave out the stored lm_head ({parts['lm_head']:,} bytes): tie_word_embeddings is true")
        parts["lm_head"] = 0
    if parts["routed_experts"] and not (fields.get("num_local_experts") or fields.get("n_routed_experts")):
        notes.append("tensors named '.experts.' counted as body: config.json names no routed experts")
        parts["body"] += parts.pop("routed_experts")
        parts["routed_experts"] = 0
    total = sum(parts.values())
    dtypes = ", ".join(f"{k} {v.num_bytes:,}" for k, v in weights.by_dtype.items())
    notes.append(f"weight bytes from the safetensors headers: {total:,} ({dtypes})")
    if weights.index_total_bytes is not None and weights.index_total_bytes != weights.num_bytes:
        notes.append(
            f"model.safetensors.index.json metadata.total_size ({weights.index_total_bytes:,}) disagrees with the "
            f"sum of the shards' headers ({weights.num_bytes:,}); the headers are used"
        )
    return {"source": "safetensors", **parts}


def spec_from_gguf_file(path: Path, name: str, source: str, fast: bool = False, extra_notes: str = "") -> "ModelSpec":
    """A spec from a GGUF header (all split files, when the model is split)."""
    from kvplan.sources.gguf import GGUFHeader, read_gguf, spec_fields_from_gguf

    header = read_gguf(path)
    split = SPLIT_GGUF.match(path.name)
    count = header.metadata.get("split.count")
    if split and isinstance(count, int) and count > 1:
        tensors = list(header.tensors)
        for i in range(2, count + 1):
            part = path.with_name(f"{split.group('stem')}-{i:05d}-of-{count:05d}.gguf")
            if not part.is_file():
                raise InputError(f"{path}: split file {part.name} ({i} of {count}) is missing")
            tensors.extend(read_gguf(part).tensors)
        header = GGUFHeader(header.path, header.version, header.metadata, tuple(tensors))
    fields, notes = spec_fields_from_gguf(header)
    fields.update(name=name, source=source, notes="; ".join([*notes, *([extra_notes] if extra_notes else [])]))
    return _build(fields, str(path), fast)


def spec_from_source(ref: str, name: Optional[str] = None, *, fast: bool = False) -> "ModelSpec":
    """A ModelSpec from a config.json, model folder, .gguf file, hub id (fetched when not cached), or a
    local runner's model (`ollama:NAME[:TAG]`, `lmstudio:PUBLISHER/MODEL[/FILE.gguf]`).

    `fast`: a ModelShape (same fields and derived sizes) when the spec passes kvplan.model.spec_rules'
    cheap check, as `kvplan.sources.catalog.resolve_spec(fast=True)` serves it; a spec it does not accept
    goes through ModelSpec, which accepts it or refuses it with today's message.
    """
    where = locate(ref)
    spec_name = _name(name) if name else where.default_name
    if name and spec_name != name:
        raise InputError(f"--name {name!r}: use lowercase letters, digits, '.' and '-' (e.g. {spec_name!r})")
    if where.kind == "gguf":
        return spec_from_gguf_file(where.path, spec_name, where.source, fast, where.notes)
    return spec_from_config_file(where.path, spec_name, where.source, fast)
