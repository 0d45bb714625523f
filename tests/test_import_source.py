"""Resolving a model reference: config.json, folder, hub cache, GGUF; weights' headers; nothing executed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvplan.sources.catalog import resolve_spec
from kvplan.errors import InputError
from kvplan.sources.resolve import hub_cache_dir, looks_like_hub_id, spec_from_source
from test_import_gguf import EMBED, U16, llama_metadata, write_gguf
from test_import_safetensors import write_safetensors

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"

TINY = {
    "model_type": "llama", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "intermediate_size": 32, "vocab_size": 50, "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}
# By hand: embed + lm_head 2 x 50 x 16; per layer q, o 16 x 16, k, v 16 x 8, MLP 3 x 16 x 32, two norms 16.
TINY_PARAMS = 2 * 50 * 16 + 2 * (2 * 256 + 2 * 128 + 3 * 512 + 2 * 16) + 16


def model_dir(root: Path, config: dict, name: str = "tiny-model") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    return d


def hub_snapshot(cache: Path, repo: str, config: dict, commit: str = "0123abcd" * 5) -> Path:
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    blobs = repo_dir / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "cfgblob").write_text(json.dumps(config))
    (snap / "config.json").symlink_to(Path("../../blobs/cfgblob"))  # the hub cache links into blobs/
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


def test_config_file_and_folder(tmp_path):
    d = model_dir(tmp_path, TINY)
    for ref in (str(d), str(d / "config.json")):
        spec = spec_from_source(ref)
        assert spec.name == "tiny-model"
        assert spec.num_parameters == TINY_PARAMS
        assert "num_parameters estimated from config.json" in spec.notes
        assert spec.source == str((d / "config.json").absolute())


def test_safetensors_headers_give_the_exact_count(tmp_path):
    d = model_dir(tmp_path, TINY)
    # Not the analytic count on purpose: the headers win, whatever the config implies.
    write_safetensors(d / "model.safetensors", {"a": ("BF16", [2000]), "b": ("F32", [37])})
    spec = spec_from_source(str(d))
    assert spec.num_parameters == 2037
    assert "num_parameters exact from 1 safetensors header(s) (BF16 2,000, F32 37)" in spec.notes


def test_quantized_weights_fall_back_to_the_config(tmp_path):
    d = model_dir(tmp_path, dict(TINY, quantization_config={"quant_method": "gptq", "bits": 4}))
    write_safetensors(d / "model.safetensors", {"qweight": ("I8", [100])})
    spec = spec_from_source(str(d))
    assert spec.num_parameters == TINY_PARAMS
    assert spec.weights_dtype == "int4"
    assert "gptq-quantized weights" in spec.notes


def test_missing_torch_dtype_taken_from_weights(tmp_path):
    config = {k: v for k, v in TINY.items() if k != "torch_dtype"}
    d = model_dir(tmp_path, config)
    write_safetensors(d / "model.safetensors", {"w": ("F16", [4000])})
    spec = spec_from_source(str(d))
    assert spec.torch_dtype == "float16"


def test_unknown_type_sized_without_weights_parameters_only_with_them(tmp_path):
    """The KV cache never waits for the weights: an unknown type with no formula and no weights is sized
    (num_parameters unknown, said in the notes); the safetensors headers give the count when present."""
    config = dict(TINY, model_type="brand_new")
    d = model_dir(tmp_path, config)
    spec = spec_from_source(str(d))
    assert spec.num_parameters is None
    assert "num_parameters unknown: model_type 'brand_new' has no parameter formula" in spec.notes
    # by hand: 2 layers x 2 KV heads x head_dim 16 / 4 = 4 x (K + V) x 2 B (bfloat16) = 64 B per token
    from kvplan.model.formats import parse_format_pair
    from kvplan.model.layout import CacheLayout

    assert CacheLayout(spec, parse_format_pair("bf16", "bf16")).kv_bytes_per_token == 2 * 2 * 4 * 2 * 2 == 64
    write_safetensors(d / "model.safetensors", {"w": ("BF16", [5000])})
    assert spec_from_source(str(d)).num_parameters == 5000


def test_hub_cache_via_hf_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    hub_snapshot(cache, "acme/Tiny-Model-7B", TINY)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    spec = spec_from_source("acme/Tiny-Model-7B")
    assert spec.name == "tiny-model-7b"
    assert spec.source == f"https://huggingface.co/acme/Tiny-Model-7B/blob/{'0123abcd' * 5}/config.json"
    assert resolve_spec("acme/Tiny-Model-7B").num_parameters == TINY_PARAMS  # through estimate's resolver


def test_hub_cache_via_hf_home_and_revision(tmp_path, monkeypatch):
    home = tmp_path / "hfhome"
    hub_snapshot(home / "hub", "acme/m", TINY, commit="c1" * 20)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    assert hub_cache_dir() == home / "hub"
    assert spec_from_source("acme/m@" + "c1" * 20).name == "m"


def test_default_hub_cache_location(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"


def test_not_cached_and_offline_gives_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # online, kvplan fetches it: tests/test_hub_fetch.py
    with pytest.raises(InputError) as err:
        spec_from_source("acme/absent")
    assert err.value.message == (
        f"acme/absent is not in the Hugging Face cache ({tmp_path}) and HF_HUB_OFFLINE is set; unset it to let "
        "kvplan fetch config.json and the safetensors headers (a few KB), or download the config with "
        "`hf download acme/absent config.json`"
    )


@pytest.mark.parametrize(
    "ref, expected",
    [("org/name", True), ("Qwen/Qwen2.5-7B", True), ("org/name@main", True), ("specs/x.yaml", False),
     ("org/name.json", False), ("llama-3.1-8b", False), ("/abs/path", False), ("a/b/c", False)],
)
def test_hub_id_shape(ref, expected):
    assert looks_like_hub_id(ref) is expected


def test_gguf_file_and_folder(tmp_path):
    d = tmp_path / "gg"
    d.mkdir()
    f = write_gguf(d / "Tiny-Q8_0.gguf", llama_metadata(), EMBED)
    (d / "mmproj-tiny-f16.gguf").write_bytes(b"not read")  # a vision projector is skipped
    for ref in (str(f), str(d)):
        spec = spec_from_source(ref)
        assert spec.name == "tiny-q8_0".replace("_", "-")
        assert spec.num_parameters == 2 * 6400


def test_split_gguf_counts_every_file(tmp_path):
    meta = llama_metadata() + [("split.count", U16, 2)]
    write_gguf(tmp_path / "m-00001-of-00002.gguf", meta, EMBED[:1])
    write_gguf(tmp_path / "m-00002-of-00002.gguf", [("split.count", U16, 2)], EMBED[1:])
    spec = spec_from_source(str(tmp_path / "m-00001-of-00002.gguf"))
    assert spec.name == "m"
    assert spec.num_parameters == 2 * 6400
    (tmp_path / "m-00002-of-00002.gguf").unlink()
    with pytest.raises(InputError) as err:
        spec_from_source(str(tmp_path / "m-00001-of-00002.gguf"))
    assert "split file m-00002-of-00002.gguf (2 of 2) is missing" in err.value.message


def test_folder_with_two_ggufs_asks_for_one(tmp_path):
    write_gguf(tmp_path / "a.gguf", llama_metadata(), EMBED)
    write_gguf(tmp_path / "b.gguf", llama_metadata(), EMBED)
    with pytest.raises(InputError) as err:
        spec_from_source(str(tmp_path))
    assert "holds 2 GGUF models (a.gguf, b.gguf); pass one file" in err.value.message


def test_empty_folder(tmp_path):
    with pytest.raises(InputError) as err:
        spec_from_source(str(tmp_path))
    assert err.value.message == f"{tmp_path}: no config.json and no .gguf file in this folder"


def test_malformed_config_names_file_and_line(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": ,\n}')
    with pytest.raises(InputError) as err:
        spec_from_source(str(d))
    assert err.value.message.startswith(f"{d / 'config.json'}:3: malformed JSON")


def test_nothing_in_the_model_folder_is_executed(tmp_path):
    d = model_dir(tmp_path, dict(TINY, auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                 "AutoModelForCausalLM": "modeling_evil.EvilModel"}))
    sentinel = tmp_path / "executed"
    code = f"open({str(sentinel)!r}, 'w').write('ran')\n"
    for name in ("configuration_evil.py", "modeling_evil.py", "__init__.py"):
        (d / name).write_text(code)
    spec = spec_from_source(str(d))
    assert spec.num_parameters == TINY_PARAMS
    assert not sentinel.exists()
    assert "configuration_evil" not in sys.modules and "modeling_evil" not in sys.modules


def test_estimate_on_a_folder_without_torch(tmp_path):
    d = model_dir(tmp_path, TINY)
    code = (
        "import sys; from kvplan.cli.app import main; sys.argv = ['kvplan', 'estimate', %r, '-c', '100', '-f', 'json'];\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    ) % str(d)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # 2 layers x 2 KV heads x (4 + 4) elements x 2 bytes (bf16) per token
    assert out["kv_bytes_per_token"] == 2 * 2 * 8 * 2


def test_fixture_folder_copy_round_trip(tmp_path):
    # A real published config, as a user's download folder would hold it.
    d = tmp_path / "Qwen3-8B"
    d.mkdir()
    shutil.copy(FIXTURES / "qwen3-8b.json", d / "config.json")
    spec = spec_from_source(str(d))
    assert (spec.name, spec.num_parameters, spec.num_key_value_heads) == ("qwen3-8b", 8_190_735_360, 8)


def test_a_broken_symlink_is_named_as_one_not_as_an_unknown_model(tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli

    monkeypatch.chdir(tmp_path)
    for name, target in (("mymodel", "/nonexistent/x"), ("my.gguf", "gone/model.gguf")):
        (tmp_path / name).symlink_to(target)
        r = run_cli(capsys, "estimate", name)
        assert r.exit_code == 2
        assert r.stderr == f"error: {name}: is a broken symbolic link to '{target}', which does not exist; point it at the model's files\n"


def test_a_hub_snapshot_whose_config_blob_is_gone_says_so(tmp_path, capsys):
    from cli_helpers import run_cli

    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "config.json").symlink_to("../../blobs/abc")
    r = run_cli(capsys, "estimate", str(snapshot))
    assert r.exit_code == 2
    assert r.stderr == (f"error: {snapshot}/config.json: is a broken symbolic link to '../../blobs/abc', which does not exist; "
                        "download the config again\n")


@pytest.mark.parametrize("model", ["", "  "])
def test_an_empty_model_says_model_is_empty(model, capsys):
    from cli_helpers import run_cli

    r = run_cli(capsys, "estimate", model)
    assert r.exit_code == 2
    assert r.stderr == (f"error: MODEL is empty ({model!r}); give a catalog name (`kvplan models`), a spec YAML, config.json, "
                        "model folder, .gguf, hub id org/name or ollama:NAME\n")


@pytest.mark.parametrize("flag, fix", [("--gpu", "; point it at a GPU YAML file"), ("--calibration", "")])
def test_a_broken_symlink_given_to_a_file_flag_is_named_as_one(tmp_path, capsys, flag, fix):
    from cli_helpers import run_cli

    link = tmp_path / "file.yaml"
    link.symlink_to("gone.yaml")
    extra = ("--gpu", "h100-sxm") if flag == "--calibration" else ()
    r = run_cli(capsys, "estimate", "llama-3.1-8b", flag, str(link), *extra)
    shown = f"--calibration {link}" if flag == "--calibration" else str(link)
    assert (r.exit_code, r.stderr) == (2, f"error: {shown}: is a broken symbolic link to 'gone.yaml', which does not exist{fix}\n")
