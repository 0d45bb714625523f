"""Fetch what kvplan reads of a hub repository, and no tensor data: config.json and the safetensors headers.

`kvplan estimate ORG/NAME[@REV]` for a repository that is not in the local Hugging Face cache asks
the hub (`$HF_ENDPOINT`, else https://huggingface.co) for:

1. the repository's file list at the revision (`GET /api/models/{repo}/revision/{rev}`), which also
   pins the revision to one commit, so every later request names that commit;
2. `model.safetensors.index.json` when the checkpoint is sharded (its `weight_map` names the shards);
3. each safetensors file's header: two HTTP range requests, `bytes=0-7` (the header length N, and the
   file's size from `Content-Range`), then `bytes=8-(8+N-1)` (the header). A server that ignores the
   range (HTTP 200, the whole file from byte 0) is streamed and closed as soon as byte 8 + N has
   arrived;
4. config.json, last, so that a run cut short leaves no snapshot kvplan would take for complete.

All of it is stored in the Hugging Face cache layout (`$HF_HUB_CACHE`, `$HF_HOME/hub`, ...) by
huggingface_hub itself (`hf_hub_download`: blobs/, snapshots/<commit>/, refs/<rev>), except the
headers: they are not files of the repository, so they go in one kvplan sidecar in the snapshot
folder, `.kvplan-safetensors-headers.json` ({file: {size, header}}; kvplan.sources.safetensors_header
reads it, and prefers a real shard when one is downloaded later). The next run finds the snapshot
and answers offline, the same answer. huggingface_hub never sees a partial safetensors file it could
mistake for the weights; `hf cache rm` removes the sidecar with its snapshot.

`HF_HUB_OFFLINE=1` (huggingface_hub's own switch) keeps kvplan off the network: huggingface_hub is
then not even imported. `HF_TOKEN` (or the token `hf auth login` saved) is sent, for gated and
private repositories. huggingface_hub is an optional dependency (`pip install 'kvplan[hub]'`),
imported only here, only when a fetch is needed.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Optional

from kvplan.errors import InputError
from kvplan.sources.safetensors_header import (
    INDEX_NAME,
    MAX_INDEX_BYTES,
    SIDECAR_FORMAT,
    SIDECAR_NAME,
    _tensors,
    check_header_length,
    checkpoint_files,
    parse_header,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
# The repository files kvplan reads (kvplan.sources.resolve.spec_from_config_file): config.json only;
# params.json, generation_config.json and the tokenizer change nothing kvplan computes.
CONFIG_NAME = "config.json"
TIMEOUT_S = 30.0  # per request; a hub that sends nothing for this long is reported as unreachable
# huggingface_hub's own truthy spellings for HF_HUB_OFFLINE (constants.ENV_VARS_TRUE_VALUES)
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """True when HF_HUB_OFFLINE forbids the network, read as huggingface_hub reads it (constants.py:
    `_is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))`)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return (value or "").upper() in _TRUE


def endpoint() -> str:
    """The hub to ask: $HF_ENDPOINT (a mirror, or the test's fake hub), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


class HubError(InputError):
    """The hub could not give what kvplan needs (exit 2); the message says how to fix it."""


def fetch_to_cache(repo: str, revision: Optional[str], cache: Path) -> str:
    """Fetch config.json, the index and the safetensors headers of `repo` at `revision` (None: main) into
    the HF cache at `cache`; returns the commit. Raises HubError with a one-line fix on any failure."""
    try:
        import huggingface_hub  # noqa: F401  (optional: kvplan[hub])
    except ImportError:
        raise HubError(
            f"{repo} is not in the Hugging Face cache ({cache}); fetching its config and safetensors headers "
            "needs huggingface_hub: `pip install 'kvplan[hub]'` (or `hf download "
            f"{repo} config.json`, then run again)"
        ) from None
    hub = endpoint()
    shown = f"{repo}@{revision}" if revision else repo
    step = "the file list"
    try:
        commit, files = _file_list(repo, revision, hub)
        if CONFIG_NAME not in files:
            ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
            hint = (
                f"; it holds GGUF files ({', '.join(ggufs[:3])}): download one with `hf download {repo} {ggufs[0]}` "
                "and pass the file" if ggufs else ""
            )
            raise HubError(f"{shown}: the repository has no config.json at commit {commit[:12]}{hint}")
        step = INDEX_NAME if INDEX_NAME in files else "the file list"
        names = _checkpoint_names(repo, commit, files, cache, hub)
        headers: dict[str, dict[str, Any]] = {}
        for name in names:
            step = name
            headers[name] = _fetch_header(repo, commit, name, hub)
        step = "the headers' sidecar"
        snapshot = cache / _repo_folder(repo) / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        _write_sidecar(snapshot, repo, commit, hub, headers)
        step = CONFIG_NAME
        _download(repo, commit, CONFIG_NAME, cache, hub)  # last: its presence marks the snapshot complete
        _write_ref(cache / _repo_folder(repo), revision or "main", commit)
    except InputError:  # kvplan's own one-line refusals: a bad header (SafetensorsError), the cache not writable
        raise
    except Exception as exc:  # noqa: BLE001  every failure of the hub or the connection, as one line
        raise _as_input_error(exc, shown, step, hub) from None
    return commit


# ------------------------------------------------------------------ the requests


def _file_list(repo: str, revision: Optional[str], hub: str) -> tuple[str, set[str]]:
    """(commit, file names) at `revision`: GET /api/models/{repo}/revision/{rev}."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub).model_info(repo, revision=revision or "main", timeout=TIMEOUT_S)
    if not info.sha:
        raise HubError(f"{repo}: {hub} answered without a commit for revision {revision or 'main'!r}; is HF_ENDPOINT a hub?")
    return info.sha, {s.rfilename for s in (info.siblings or [])}


def _checkpoint_names(repo: str, commit: str, files: set[str], cache: Path, hub: str) -> list[str]:
    """The safetensors files kvplan.sources.safetensors_header.find_weights would read, in the same order."""
    if INDEX_NAME in files:
        index_path = Path(_download(repo, commit, INDEX_NAME, cache, hub))
        if index_path.stat().st_size > MAX_INDEX_BYTES:
            raise HubError(f"{repo}: {INDEX_NAME} is above the {MAX_INDEX_BYTES:,}-byte cap for an index")
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map")
        except (ValueError, AttributeError):
            weight_map = None
        if not isinstance(weight_map, dict):
            raise HubError(f"{repo}: {INDEX_NAME} at commit {commit[:12]} has no `weight_map` object")
        names: list[str] = []
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors") or shard.startswith("."):
                raise HubError(f"{repo}: {INDEX_NAME}: weight_map[{tensor!r}]: {shard!r} is not a shard file name")
            if shard not in names:
                names.append(shard)
        return names
    if "model.safetensors" in files:
        return ["model.safetensors"]
    names = checkpoint_files(f for f in files if "/" not in f)
    if not names:
        weights = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".gguf")))
        held = f" (it holds {', '.join(weights[:3])})" if weights else ""
        raise HubError(
            f"{repo}: the repository has no *.safetensors at commit {commit[:12]}{held}, and kvplan reads weights "
            f"only from safetensors headers; to size it from config.json alone: `hf download {repo} config.json`, "
            "then run again"
        )
    return names


def _fetch_header(repo: str, commit: str, name: str, hub: str) -> dict[str, Any]:
    """{size, header} of one safetensors file: its first 8 bytes, then its N header bytes, nothing more."""
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo, name, revision=commit, endpoint=hub)
    prefix, size = _range(url, 0, 8)
    (declared,) = struct.unpack("<Q", prefix)
    where = f"{repo}/{name}"
    check_header_length(where, declared, size)
    raw, _ = _range(url, 8, declared)
    header = parse_header(where, raw)
    _tensors(where, header, size - 8 - declared)  # the same checks as a file on disk, before anything is stored
    return {"size": size, "header": raw.decode("utf-8")}


def _range(url: str, start: int, length: int) -> tuple[bytes, int]:
    """Bytes [start, start + length) of the file at `url` and the file's size; never more bytes than asked."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers()  # HF_TOKEN or the saved token; dropped by the client on a redirect to another host
    headers["Range"] = f"bytes={start}-{start + length - 1}"
    headers["Accept-Encoding"] = "identity"  # the bytes as stored: a compressed range is not the file's range
    got = bytearray()
    with get_session().stream("GET", url, headers=headers, timeout=TIMEOUT_S) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        if response.status_code == 206:
            size = _total_from_content_range(response.headers.get("Content-Range"))
        elif response.status_code == 200:  # the range ignored (a plain mirror): the whole file comes from byte 0
            size = _int(response.headers.get("Content-Length"))
        else:
            raise HubError(f"{url}: unexpected HTTP {response.status_code} to a range request")
        skip = start if response.status_code == 200 else 0  # then read bytes 0..start+length and close: still the header only
        for chunk in response.iter_raw():
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            got += chunk[: length - len(got)]
            if len(got) >= length:
                break
    if size is None:
        raise HubError(f"{url}: the server sent no file size (Content-Range) with the range")
    if len(got) < length:
        raise ConnectionError(f"the connection closed after {len(got)} of {length} bytes")
    return bytes(got), size


def _total_from_content_range(value: Optional[str]) -> Optional[int]:
    """'bytes 0-7/4294967304' -> 4294967304; None when absent or '*'."""
    if not value or "/" not in value:
        return None
    return _int(value.rsplit("/", 1)[1])


def _int(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _download(repo: str, commit: str, name: str, cache: Path, hub: str) -> str:
    """A small repository file into the cache, by huggingface_hub (blobs/ + snapshots/<commit>/)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, name, revision=commit, cache_dir=cache, endpoint=hub, etag_timeout=TIMEOUT_S)


# ------------------------------------------------------------------ the cache


def _repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")  # huggingface_hub's repo_folder_name for a model


def _write_sidecar(snapshot: Path, repo: str, commit: str, hub: str, headers: dict[str, dict[str, Any]]) -> None:
    from kvplan.atomic import write_text_atomically

    doc = {
        "format": SIDECAR_FORMAT,
        "about": "the header (first 8 + N bytes) of each safetensors file, fetched by kvplan with HTTP range "
        "requests; no tensor data. Not a file of the repository.",
        "repo": repo,
        "commit": commit,
        "endpoint": hub,
        "files": headers,
    }
    write_text_atomically(snapshot / SIDECAR_NAME, json.dumps(doc, indent=1) + "\n", "the Hugging Face cache")


def _write_ref(repo_dir: Path, revision: str, commit: str) -> None:
    """refs/<revision> = commit, as huggingface_hub writes it for a branch or tag (none for a commit)."""
    if revision == commit:
        return
    from kvplan.atomic import write_text_atomically

    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(ref, commit, "the Hugging Face cache")


# ------------------------------------------------------------------ errors


def _as_input_error(exc: Exception, shown: str, step: str, hub: str) -> HubError:
    """One line for a person: what failed, and the fix last."""
    from huggingface_hub import errors

    repo = shown.split("@", 1)[0]
    login = "log in with `hf auth login` or set HF_TOKEN"
    if isinstance(exc, errors.GatedRepoError):
        if _token_sent():
            return HubError(
                f"{shown} is gated and your token has no access yet: accept its terms at {hub}/{repo}, then run again"
            )
        return HubError(f"{shown} is gated: accept its terms at {hub}/{repo}, then {login}")
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"{shown}: {hub} has no revision {shown.partition('@')[2] or 'main'!r} for this repository")
    if isinstance(exc, errors.RepositoryNotFoundError):
        why = "your token cannot see it" if _token_sent() else f"it is private: {login}"
        return HubError(f"{repo}: no such repository on {hub}, or {why}")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return HubError(f"{shown}: {step} is listed but {hub} does not serve it (HTTP 404)")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        if status in (401, 403):
            return HubError(f"{shown}: {hub} refused {step} (HTTP {status}): {login}")
        return HubError(f"{shown}: {hub} answered HTTP {status} for {step}; try again later")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError(f"{shown}: HF_HUB_OFFLINE forbids the network; unset it to fetch the config and headers")
    reason = _reason(exc)
    if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, errors.LocalEntryNotFoundError):
        # a file system error (a read-only or full cache); the network's errors carry no errno here
        return HubError(
            f"{shown}: what was fetched cannot be stored in the Hugging Face cache ({reason}); "
            "point HF_HUB_CACHE at a folder you can write"
        )
    return HubError(
        f"{shown}: the connection to {hub} failed while fetching {step} ({reason}); nothing was stored as "
        "complete: check the network and run again, or set HF_HUB_OFFLINE=1 to stay offline"
    )


def _reason(exc: BaseException) -> str:
    """The innermost cause's text, on one line (a refused connection, a dropped stream)."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen or isinstance(nxt, InputError):
            break
        seen.add(id(nxt))
        exc = nxt
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


def _token_sent() -> bool:
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:  # noqa: BLE001  a token file that cannot be read is no token
        return False

