"""ollama:NAME[:TAG] and lmstudio:PUBLISHER/MODEL: fake stores built in tmp_path around a tiny GGUF."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cli_helpers import run_cli
from kvplan.errors import InputError
from kvplan.sources.resolve import spec_from_source
from kvplan.sources.runners import parse_ollama_name
from test_import_gguf import EMBED, llama_metadata, write_gguf


def tiny_gguf(path: Path) -> Path:
    return write_gguf(path, llama_metadata(), EMBED)  # 4 layers, 8 heads, 2 KV heads of 64 / 8 = 8 dims


def ollama_store(root: Path, name: str = "library/tiny", tag: str = "latest", params: dict | None = None,
                 host: str = "registry.ollama.ai") -> Path:
    """Ollama's layout: blobs/sha256-<hex> and manifests/<host>/<namespace>/<model>/<tag> naming them."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    gguf = tiny_gguf(root / "tmp.gguf")
    layers = []
    for media, data in [("application/vnd.ollama.image.model", gguf.read_bytes()),
                        ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
                        *([("application/vnd.ollama.image.params", json.dumps(params).encode())] if params else [])]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        layers.append({"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)})
    gguf.unlink()
    manifest = root / "manifests" / host / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                               "digest": "sha256:" + "0" * 64, "size": 2}, "layers": layers}))
    return root


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    for var in ("OLLAMA_CONTEXT_LENGTH", "OLLAMA_NUM_PARALLEL"):
        monkeypatch.delenv(var, raising=False)
    return root


def test_names_take_ollamas_defaults():
    assert parse_ollama_name("llama3.2") == ("registry.ollama.ai", "library", "llama3.2", "latest")
    assert parse_ollama_name("llama3.2:3b") == ("registry.ollama.ai", "library", "llama3.2", "3b")
    assert parse_ollama_name("me/mine:q4") == ("registry.ollama.ai", "me", "mine", "q4")
    assert parse_ollama_name("hf.co/org/repo:Q4_K_M") == ("hf.co", "org", "repo", "Q4_K_M")
    for bad in ("", "a/b/c/d", "../x", "a:b:c"):
        with pytest.raises(InputError):
            parse_ollama_name(bad)


def test_an_ollama_model_is_its_gguf_blob(store):
    ollama_store(store, params={"num_ctx": 8192, "stop": ["<|eot|>"]})
    spec = spec_from_source("ollama:tiny")
    assert (spec.num_hidden_layers, spec.num_attention_heads, spec.num_key_value_heads) == (4, 8, 2)
    assert spec.num_parameters == 2 * 64 * 100
    assert spec.name == "tiny-latest"
    assert spec.source.startswith("ollama:tiny:latest (") and "/blobs/sha256-" in spec.source
    assert (
        "Ollama: num_ctx 4096 (the model's PARAMETER num_ctx, 8192 cut to the GGUF's context_length), "
        "OLLAMA_NUM_PARALLEL 1: llama.cpp --ctx-size 4096 --parallel 1 (ollama llm/server.go KvSize = NumCtx * "
        "numParallel); size it with `--engine llama.cpp --context 4096 --parallel 1`"
    ) in spec.notes  # llama_metadata's context_length is 4096


def test_num_ctx_from_the_environment_and_parallel_slots_multiply(store, monkeypatch):
    ollama_store(store, name="me/mine", tag="q4")
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "2048")
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "3")
    notes = spec_from_source("ollama:me/mine:q4").notes
    assert "Ollama: num_ctx 2048 (OLLAMA_CONTEXT_LENGTH), OLLAMA_NUM_PARALLEL 3: " in notes
    assert "llama.cpp --ctx-size 6144 --parallel 3 " in notes  # 2048 x 3 cells, 3 slots
    monkeypatch.delenv("OLLAMA_CONTEXT_LENGTH")
    assert "no num_ctx in the model's params and OLLAMA_CONTEXT_LENGTH unset (Ollama picks one)" in spec_from_source(
        "ollama:me/mine:q4").notes


def test_the_ollama_model_sizes_like_its_file(store, capsys):
    ollama_store(store, params={"num_ctx": 4096})
    blob = next(p for p in (store / "blobs").iterdir() if p.read_bytes()[:4] == b"GGUF")  # no .gguf suffix
    args = ["-c", "4096", "--engine", "llama.cpp", "--parallel", "2", "-f", "json"]
    via_ollama = run_cli(capsys, "estimate", "ollama:tiny:latest", *args)
    via_file = run_cli(capsys, "estimate", str(blob), *args)
    assert via_ollama.exit_code == 0 and via_file.exit_code == 0, via_ollama.stderr + via_file.stderr
    assert via_ollama.stderr == via_file.stderr == ""
    a, b = json.loads(via_ollama.stdout), json.loads(via_file.stdout)
    for doc in (a, b):
        doc.pop("model", None)
    assert a == b


def test_ollama_errors_name_the_fix(store):
    with pytest.raises(InputError) as err:
        spec_from_source("ollama:absent:7b")
    assert err.value.message == (
        f"ollama:absent:7b: Ollama has no manifest {store}/manifests/registry.ollama.ai/library/absent/7b "
        f"(OLLAMA_MODELS: {store}); `ollama pull absent:7b` fetches it, `ollama list` shows what is there")
    ollama_store(store)
    blob = next(p for p in (store / "blobs").iterdir() if p.read_bytes()[:4] == b"GGUF")
    blob.unlink()
    with pytest.raises(InputError) as err:
        spec_from_source("ollama:tiny")
    assert err.value.message.endswith(f"its blob {blob} is missing; `ollama pull` the model again")


@pytest.fixture
def lmstudio(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path / ".lmstudio" / "models"


def test_an_lmstudio_model_folder(lmstudio):
    folder = lmstudio / "lmstudio-community" / "Tiny-GGUF"
    folder.mkdir(parents=True)
    tiny_gguf(folder / "Tiny-Q8_0.gguf")
    (folder / "mmproj-Tiny-F16.gguf").write_bytes(b"GGUF")  # a vision projector is not the model
    spec = spec_from_source("lmstudio:lmstudio-community/Tiny-GGUF")
    assert spec.num_key_value_heads == 2 and spec.source == str(folder / "Tiny-Q8_0.gguf")
    tiny_gguf(folder / "Tiny-Q4_K_M.gguf")
    with pytest.raises(InputError) as err:
        spec_from_source("lmstudio:lmstudio-community/Tiny-GGUF")
    assert err.value.message == (
        f"lmstudio:lmstudio-community/Tiny-GGUF: {folder} holds 2 GGUF files (Tiny-Q4_K_M.gguf, Tiny-Q8_0.gguf); "
        "name one, e.g. lmstudio:lmstudio-community/Tiny-GGUF/Tiny-Q4_K_M.gguf")
    assert spec_from_source("lmstudio:lmstudio-community/Tiny-GGUF/Tiny-Q8_0.gguf").num_hidden_layers == 4


def test_the_older_lmstudio_folder_and_a_missing_model(lmstudio, tmp_path):
    old = tmp_path / ".cache" / "lm-studio" / "models" / "pub" / "m"
    old.mkdir(parents=True)
    tiny_gguf(old / "m.gguf")
    assert spec_from_source("lmstudio:pub/m").num_hidden_layers == 4
    with pytest.raises(InputError) as err:
        spec_from_source("lmstudio:pub/none")
    assert err.value.message == (
        f"lmstudio:pub/none: no folder pub/none in LM Studio's models ({lmstudio} or "
        f"{tmp_path / '.cache' / 'lm-studio' / 'models'}); `lms ls` lists the models LM Studio holds")


def test_an_output_may_not_replace_the_ollama_blob(store, capsys):
    ollama_store(store)
    blob = next(p for p in (store / "blobs").iterdir() if p.read_bytes()[:4] == b"GGUF")
    before = blob.read_bytes()
    result = run_cli(capsys, "estimate", "ollama:tiny", "-c", "1024", "-f", "json", "-o", str(blob), "--force")
    assert result.exit_code == 2 and str(blob) in result.stderr and "the model being" in result.stderr
    assert blob.read_bytes() == before
