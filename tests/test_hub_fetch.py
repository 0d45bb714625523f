"""A hub id not in the cache: config.json and the safetensors headers fetched from a fake hub on 127.0.0.1.

The fake hub answers what huggingface_hub 2.5 asks (hf_api.py model_info: GET /api/models/{repo}/revision/{rev};
file_download.py hf_hub_download: HEAD then GET /{repo}/resolve/{rev}/{file}, the HEAD's X-Repo-Commit and ETag
required) and kvplan's range requests, counts every byte it writes to the socket, and serves safetensors files
whose tensor data is tens of MB of zeros, so that a fetch of anything past the headers shows in the count.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cli_helpers import run_cli
from test_import_safetensors import safetensors_prefix
from kvplan.errors import InputError
from kvplan.sources.resolve import spec_from_source

COMMIT = "a1b2c3d4" * 5
TOKEN = "hf_goodtoken"

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512, "num_attention_heads": 8,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 1024, "vocab_size": 32000,
    "torch_dtype": "bfloat16", "tie_word_embeddings": False, "max_position_embeddings": 4096,
}


def layer(i: int) -> dict[str, tuple[str, list[int]]]:
    p = f"model.layers.{i}."
    return {
        p + "self_attn.q_proj.weight": ("BF16", [512, 512]), p + "self_attn.k_proj.weight": ("BF16", [128, 512]),
        p + "self_attn.v_proj.weight": ("BF16", [128, 512]), p + "self_attn.o_proj.weight": ("BF16", [512, 512]),
        p + "mlp.gate_proj.weight": ("BF16", [1024, 512]), p + "mlp.up_proj.weight": ("BF16", [1024, 512]),
        p + "mlp.down_proj.weight": ("BF16", [512, 1024]), p + "input_layernorm.weight": ("BF16", [512]),
        p + "post_attention_layernorm.weight": ("BF16", [512]),
    }


SHARDS = {
    "model-00001-of-00002.safetensors": {"model.embed_tokens.weight": ("BF16", [32000, 512]), **layer(0)},
    "model-00002-of-00002.safetensors": {**layer(1), "model.norm.weight": ("BF16", [512]), "lm_head.weight": ("BF16", [32000, 512])},
}
# By hand: embed and lm_head 32000 x 512 each; per layer q, o 512 x 512, k, v 128 x 512, MLP 3 x 1024 x 512,
# two norms 512; the final norm 512. All BF16: 2 bytes each.
PARAMS = 2 * 32000 * 512 + 2 * (2 * 512 * 512 + 2 * 128 * 512 + 3 * 1024 * 512 + 2 * 512) + 512
assert PARAMS == 37_227_008  # 32,768,000 + 2 x 2,229,248 + 512


def safetensors_header(tensors: dict[str, tuple[str, list[int]]]) -> tuple[bytes, int]:
    """(the first 8 + N bytes, the file's size) of a safetensors file holding `tensors` (zeros)."""
    prefix, data = safetensors_prefix(tensors)
    return prefix, len(prefix) + data


class Blob:
    """A file the hub serves: `prefix` then zeros up to `size` (the tensor data, never materialised)."""

    def __init__(self, prefix: bytes, size: int | None = None) -> None:
        self.prefix, self.size = prefix, len(prefix) if size is None else size
        self.etag = hashlib.sha1(prefix + str(self.size).encode()).hexdigest()

    def read(self, start: int, end: int) -> bytes:  # [start, end)
        head = self.prefix[start:end]
        return head + bytes(max(0, end - max(start, len(self.prefix))))


def sharded_repo(**extra) -> dict:
    files = {"config.json": Blob(json.dumps(CONFIG).encode()), "README.md": Blob(b"# a model\n")}
    weight_map = {}
    for shard, tensors in SHARDS.items():
        files[shard] = Blob(*safetensors_header(tensors))
        weight_map.update(dict.fromkeys(tensors, shard))
    index = {"metadata": {"total_size": sum(f.size for n, f in files.items() if n.endswith(".safetensors"))}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = Blob(json.dumps(index).encode())
    return {"commit": COMMIT, "refs": {"main": COMMIT}, "files": files, **extra}


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.sent = 0  # bytes written to sockets: status lines, headers and bodies
        self.requests: list[str] = []
        self.lock = threading.Lock()
        hub = self

        class Counting:
            def __init__(self, raw):
                self.raw = raw

            def write(self, data):
                with hub.lock:
                    hub.sent += len(data)
                return self.raw.write(data)

            def flush(self):
                return self.raw.flush()

            def __getattr__(self, name):
                return getattr(self.raw, name)

        class Handler(BaseHTTPRequestHandler):
            def setup(self):
                super().setup()
                self.wfile = Counting(self.wfile)

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):  # the client closed a stream it had read enough of
                    pass

            def do_HEAD(self):
                hub.handle(self, head=True)

            def do_GET(self):
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ the endpoints

    def _reply(self, h, status, body=b"", headers=(), head=False, length=None):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _commit(self, repo, rev):
        return repo["refs"].get(rev) or (rev if rev == repo["commit"] else None)

    def handle(self, h, head):
        with self.lock:
            self.requests.append(f"{h.command} {h.path} {h.headers.get('Range', '')}".strip())
        m = re.match(r"^/api/models/([^/]+/[^/]+)/revision/([^/?]+)", h.path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._reply(h, 404, b'{"error":"Repository not found"}', [("X-Error-Code", "RepoNotFound")], head)
            commit = self._commit(repo, m.group(2))
            if commit is None:
                return self._reply(h, 404, b'{"error":"Invalid rev id"}', [("X-Error-Code", "RevisionNotFound")], head)
            info = {"id": m.group(1), "sha": commit, "gated": "manual" if repo.get("gated") else False,
                    "siblings": [{"rfilename": n} for n in repo["files"]]}
            return self._reply(h, 200, json.dumps(info).encode(), [("Content-Type", "application/json")], head)
        cdn = re.match(r"^/cdn/([^/]+/[^/]+)/(.+)$", h.path)
        if cdn:
            repo = self.repos[cdn.group(1)]
            return self.serve(h, repo, repo["files"][cdn.group(2)], [("ETag", '"x"')], head)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", h.path)
        repo = self.repos.get(m.group(1)) if m else None
        if repo is None:
            return self._reply(h, 404, b"not found", [("X-Error-Code", "RepoNotFound")], head)
        commit = self._commit(repo, m.group(2))
        if commit is None:
            return self._reply(h, 404, b"", [("X-Error-Code", "RevisionNotFound")], head)
        if repo.get("gated"):
            auth = h.headers.get("Authorization")
            if auth != f"Bearer {TOKEN}":
                status = 401 if auth is None else 403
                return self._reply(h, status, b"gated", [("X-Error-Code", "GatedRepo"), ("X-Error-Message", "Access restricted")], head)
        blob = repo["files"].get(m.group(3))
        if blob is None:
            return self._reply(h, 404, b"", [("X-Error-Code", "EntryNotFound"), ("X-Repo-Commit", commit)], head)
        common = [("X-Repo-Commit", commit), ("ETag", f'"{blob.etag}"'), ("Accept-Ranges", "bytes")]
        if m.group(3).endswith(".safetensors") and not head and repo.get("cdn"):
            # the hub answers an LFS file with a redirect to its storage (the client keeps the Range header)
            return self._reply(h, 302, b"", [*common, ("Location", f"/cdn/{m.group(1)}/{m.group(3)}")])
        return self.serve(h, repo, blob, common, head)

    def serve(self, h, repo, blob, common, head=False):
        rng = re.match(r"^bytes=(\d+)-(\d+)$", h.headers.get("Range", ""))
        if head or not rng or repo.get("no_ranges"):
            return self._reply(h, 200, b"" if head else blob.read(0, blob.size), common, head, blob.size)
        start, end = int(rng.group(1)), min(int(rng.group(2)) + 1, blob.size)
        body = blob.read(start, end)
        if repo.get("drop") and start == 8:  # the header request: promise it all, send half, hang up
            h.send_response(206)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._reply(h, 206, body, [*common, ("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")])


@pytest.fixture
def hub(monkeypatch, tmp_path):
    fake = FakeHub()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))  # no saved token from the machine
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: another test may have imported it (transformers does)
    # under conftest's HF_HUB_OFFLINE=1. A kvplan process imports it only after deciding to fetch.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield fake
    fake.close()


def test_a_sharded_model_is_sized_from_its_headers_alone_then_offline(hub, capsys, tmp_path, monkeypatch):
    hub.repos["acme/Shard-7B"] = sharded_repo()
    data_bytes = sum(f.size for n, f in hub.repos["acme/Shard-7B"]["files"].items() if n.endswith(".safetensors"))
    assert data_bytes > 69_000_000  # what a download of the weights would move

    online = run_cli(capsys, "estimate", "acme/Shard-7B", "--context", "4096", "--format", "json")
    assert online.exit_code == 0, online.stderr
    assert hub.sent < 1_000_000, hub.sent
    ranges = [r for r in hub.requests if "bytes=" in r]
    assert sorted(r.split()[-1] for r in ranges) == sorted(
        ["bytes=0-7", "bytes=0-7", *(f"bytes=8-{len(hub.repos['acme/Shard-7B']['files'][s].prefix) - 1}" for s in SHARDS)])
    assert not any(r.startswith("GET") and "safetensors " in r + " " and "bytes=" not in r for r in hub.requests)

    spec = spec_from_source("acme/Shard-7B")
    assert spec.num_parameters == PARAMS
    assert spec.file_weight_bytes.embedding == 32000 * 512 * 2
    assert spec.file_weight_bytes.lm_head == 32000 * 512 * 2
    assert spec.file_weight_bytes.body == 2 * PARAMS - 2 * 32000 * 512 * 2
    assert spec.source == f"https://huggingface.co/acme/Shard-7B/blob/{COMMIT}/config.json"
    assert "num_parameters exact from 2 safetensors header(s) (BF16 37,227,008)" in spec.notes

    # the cache holds what huggingface_hub would have written, and the headers' sidecar; no weights
    repo_dir = tmp_path / "hub" / "models--acme--Shard-7B"
    assert (repo_dir / "refs" / "main").read_text() == COMMIT
    snap = repo_dir / "snapshots" / COMMIT
    assert sorted(p.name for p in snap.iterdir()) == [
        ".kvplan-safetensors-headers.json", "config.json", "model.safetensors.index.json"]
    assert (snap / "config.json").is_symlink()
    sidecar = json.loads((snap / ".kvplan-safetensors-headers.json").read_text())
    for shard in SHARDS:
        blob = hub.repos["acme/Shard-7B"]["files"][shard]
        assert sidecar["files"][shard] == {"size": blob.size, "header": blob.prefix[8:].decode()}

    from huggingface_hub import scan_cache_dir

    scanned = scan_cache_dir(tmp_path / "hub")  # huggingface_hub reads the cache kvplan wrote, sidecar and all
    assert scanned.warnings == [] and [r.repo_id for r in scanned.repos] == ["acme/Shard-7B"]

    before = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = run_cli(capsys, "estimate", "acme/Shard-7B", "--context", "4096", "--format", "json")
    assert offline.exit_code == 0, offline.stderr
    assert offline.stdout == online.stdout
    monkeypatch.delenv("HF_HUB_OFFLINE")
    again = run_cli(capsys, "estimate", "acme/Shard-7B", "--context", "4096", "--format", "json")
    assert again.stdout == online.stdout
    assert len(hub.requests) == before  # the cache answers: no request, offline or not


def test_once_cached_no_run_imports_huggingface_hub(hub, tmp_path):
    import os
    import subprocess
    import sys

    hub.repos["acme/Shard-7B"] = sharded_repo()
    spec_from_source("acme/Shard-7B")
    code = (
        "import sys\nfrom kvplan.sources.resolve import spec_from_source\n"
        "print(spec_from_source('acme/Shard-7B').num_parameters, 'huggingface_hub' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    env.pop("HF_HUB_OFFLINE", None)  # the network allowed: the cache answers all the same
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out == f"{PARAMS} False\n"


def test_the_fetched_headers_give_what_the_files_themselves_give(hub, tmp_path):
    hub.repos["acme/Shard-7B"] = sharded_repo()
    fetched = spec_from_source("acme/Shard-7B")
    local = tmp_path / "local"
    local.mkdir()
    for name, blob in hub.repos["acme/Shard-7B"]["files"].items():
        with open(local / name, "wb") as f:  # the whole file, its zeros as a hole
            f.write(blob.prefix)
            f.truncate(blob.size)
    on_disk = spec_from_source(str(local))
    skip = {"name", "source"}
    assert {k: v for k, v in fetched.model_dump().items() if k not in skip} == {
        k: v for k, v in on_disk.model_dump().items() if k not in skip}


def test_a_revision_is_pinned_and_recorded_as_a_ref(hub, tmp_path):
    hub.repos["acme/m"] = sharded_repo(refs={"main": "f" * 40, "v1.0": COMMIT})
    spec = spec_from_source("acme/m@v1.0")
    assert spec.num_parameters == PARAMS
    assert (tmp_path / "hub" / "models--acme--m" / "refs" / "v1.0").read_text() == COMMIT
    assert all("/resolve/" + COMMIT + "/" in r for r in hub.requests if "/resolve/" in r)
    assert any(r.startswith("GET /api/models/acme/m/revision/v1.0") for r in hub.requests)
    assert spec_from_source("acme/m@" + COMMIT).num_parameters == PARAMS  # a commit: the cache has it, no ref
    assert sorted(p.name for p in (tmp_path / "hub" / "models--acme--m" / "refs").iterdir()) == ["v1.0"]


def test_a_damaged_header_on_the_hub_is_named_not_taken_for_a_network_error(hub, tmp_path):
    repo = sharded_repo()
    bad = b"{not json" + b" " * 7
    repo["files"]["model-00002-of-00002.safetensors"] = Blob(struct.pack("<Q", len(bad)) + bad, 10_000)
    hub.repos["acme/bad"] = repo
    assert _error("acme/bad") == (
        "acme/bad/model-00002-of-00002.safetensors: header is not valid JSON (Expecting property name enclosed in "
        "double quotes at byte 1)")
    assert not (tmp_path / "hub" / "models--acme--bad" / "snapshots" / COMMIT / "config.json").exists()


def test_storage_redirects_and_a_server_that_ignores_ranges(hub):
    hub.repos["acme/cdn"] = sharded_repo(cdn=True)
    assert spec_from_source("acme/cdn").num_parameters == PARAMS
    assert any(r.startswith("GET /cdn/acme/cdn/model-00001-of-00002.safetensors bytes=0-7") for r in hub.requests)
    hub.repos["acme/plain"] = sharded_repo(no_ranges=True)  # HTTP 200 and the whole file to every request
    assert spec_from_source("acme/plain").num_parameters == PARAMS


def test_a_single_file_checkpoint(hub):
    repo = sharded_repo()
    prefix, size = safetensors_header({"model.embed_tokens.weight": ("BF16", [32000, 512]),
                                       "lm_head.weight": ("BF16", [32000, 512]), "w": ("F32", [3, 5])})
    repo["files"] = {"config.json": repo["files"]["config.json"], "model.safetensors": Blob(prefix, size),
                     "consolidated.safetensors": Blob(b"never read")}
    hub.repos["acme/one"] = repo
    spec = spec_from_source("acme/one")
    assert spec.num_parameters == 2 * 32000 * 512 + 3 * 5
    assert spec.file_weight_bytes.body == 3 * 5 * 4
    assert not any("consolidated" in r for r in hub.requests)


def _error(ref: str) -> str:
    with pytest.raises(InputError) as err:
        spec_from_source(ref)
    assert "\n" not in err.value.message
    return err.value.message


def test_a_gated_repo_says_how_to_log_in_and_works_with_a_token(hub, monkeypatch):
    hub.repos["meta/Gated"] = sharded_repo(gated=True)
    assert _error("meta/Gated") == (
        f"meta/Gated is gated: accept its terms at {hub.url}/meta/Gated, then log in with `hf auth login` or set HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert _error("meta/Gated") == (
        f"meta/Gated is gated and your token has no access yet: accept its terms at {hub.url}/meta/Gated, then run again")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert spec_from_source("meta/Gated").num_parameters == PARAMS


def test_missing_repo_revision_and_config(hub):
    assert _error("acme/nothing") == (
        f"acme/nothing: no such repository on {hub.url}, or it is private: log in with `hf auth login` or set HF_TOKEN")
    hub.repos["acme/m"] = sharded_repo()
    assert _error("acme/m@v9") == f"acme/m@v9: {hub.url} has no revision 'v9' for this repository"
    hub.repos["acme/gguf"] = {"commit": COMMIT, "refs": {"main": COMMIT}, "files": {"m-Q4_K_M.gguf": Blob(b"GGUF")}}
    assert _error("acme/gguf") == (
        f"acme/gguf: the repository has no config.json at commit {COMMIT[:12]}; it holds GGUF files (m-Q4_K_M.gguf): "
        "download one with `hf download acme/gguf m-Q4_K_M.gguf` and pass the file")


def test_a_repo_without_safetensors(hub, tmp_path):
    repo = sharded_repo()
    repo["files"] = {"config.json": repo["files"]["config.json"], "pytorch_model.bin": Blob(b"\0" * 64)}
    hub.repos["acme/old"] = repo
    assert _error("acme/old") == (
        f"acme/old: the repository has no *.safetensors at commit {COMMIT[:12]} (it holds pytorch_model.bin), and "
        "kvplan reads weights only from safetensors headers; to size it from config.json alone: "
        "`hf download acme/old config.json`, then run again")
    assert not (tmp_path / "hub" / "models--acme--old" / "snapshots" / COMMIT / "config.json").exists()


def test_a_dropped_connection_stores_nothing_complete_and_the_next_run_fetches_again(hub, tmp_path):
    hub.repos["acme/flaky"] = sharded_repo(drop=True)
    message = _error("acme/flaky")
    assert message.startswith(
        f"acme/flaky: the connection to {hub.url} failed while fetching model-00001-of-00002.safetensors (")
    assert message.endswith("check the network and run again, or set HF_HUB_OFFLINE=1 to stay offline")
    snap = tmp_path / "hub" / "models--acme--flaky" / "snapshots" / COMMIT
    assert not (snap / "config.json").exists() and not (snap / ".kvplan-safetensors-headers.json").exists()
    hub.repos["acme/flaky"]["drop"] = False
    assert spec_from_source("acme/flaky").num_parameters == PARAMS


def test_an_unreachable_hub(hub, monkeypatch):
    hub.close()
    message = _error("acme/m")
    assert message.startswith(f"acme/m: the connection to {hub.url} failed while fetching the file list (")


def test_offline_names_the_switch_and_imports_no_huggingface_hub(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\nfrom kvplan.sources.resolve import spec_from_source\nfrom kvplan.errors import InputError\n"
        "try:\n    spec_from_source('acme/absent')\nexcept InputError as e:\n    print(e.message)\n"
        "print('huggingface_hub' in sys.modules)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out == (
        f"acme/absent is not in the Hugging Face cache ({tmp_path}) and HF_HUB_OFFLINE is set; unset it to let "
        "kvplan fetch config.json and the safetensors headers (a few KB), or download the config with "
        "`hf download acme/absent config.json`\nFalse\n")


def test_cli_exit_code_and_one_line(hub, capsys):
    result = run_cli(capsys, "estimate", "acme/nothing")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_cache_that_cannot_be_written_is_named(hub, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "a-file" / "hub"))  # a folder under a file: ENOTDIR
    hub.repos["acme/m"] = sharded_repo()
    message = _error("acme/m")
    assert message.startswith("acme/m: what was fetched cannot be stored in the Hugging Face cache (")
    assert message.endswith("); point HF_HUB_CACHE at a folder you can write")


@pytest.mark.parametrize(("hf_hub_offline", "transformers_offline", "expected"), [
    (None, None, False), ("1", None, True), ("yes", None, True), ("0", None, False), (None, "1", True),
    ("0", "1", False),  # HF_HUB_OFFLINE set wins, as in huggingface_hub's constants.py
    ("", "TRUE", True), ("2", None, False),
])
def test_offline_reads_the_variables_as_huggingface_hub_does(monkeypatch, hf_hub_offline, transformers_offline, expected):
    from kvplan.sources.hub_fetch import offline

    for var, value in (("HF_HUB_OFFLINE", hf_hub_offline), ("TRANSFORMERS_OFFLINE", transformers_offline)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    assert offline() is expected
