"""kvplan/sources/resolve.py: where a model reference points, at the edges the other tests leave open.

Found by `python tools/mutate.py kvplan/sources/resolve.py --sample 15 --seed 1` (docs/mutation.md). The
Hugging Face cache layout is huggingface_hub's (file_download.py: `models--{org}--{name}/refs/{revision}`
holds a commit hash; `snapshots/{commit}/` holds the files).
"""

from __future__ import annotations

import pytest

from kvplan.errors import InputError
from kvplan.sources.resolve import locate, read_config


def test_a_folder_of_five_gguf_models_is_refused_naming_the_first_four(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / f"{name}.gguf").write_bytes(b"")
    with pytest.raises(InputError) as err:
        locate(str(tmp_path))
    assert err.value.message == f"{tmp_path}: holds 5 GGUF models (a.gguf, b.gguf, c.gguf, d.gguf); pass one file"


def test_a_repo_folder_of_the_hub_cache_is_read_through_its_main_ref(tmp_path):
    repo = tmp_path / "models--org--tiny"
    config = repo / "snapshots" / "0123abc" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"model_type": "llama"}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc\n")
    got = locate(str(repo))
    assert (got.kind, got.path) == ("config", config)
    assert got.source == "https://huggingface.co/org/tiny/blob/0123abc/config.json"


def test_a_boolean_number_whose_key_is_written_escaped_is_placed_on_the_first_line(tmp_path):
    # JSON may spell a key with escapes ("hidden\\u005fsize" is hidden_size); the line search looks for the
    # key as written, finds nothing, and names line 1 rather than a line that does not hold it
    path = tmp_path / "config.json"
    path.write_text('{\n "model_type": "llama",\n "hidden\\u005fsize": true\n}\n')
    with pytest.raises(InputError) as err:
        read_config(path)
    assert err.value.message.startswith(f"{path}:1: hidden_size: ")


def test_a_boolean_number_is_placed_on_its_own_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n "model_type": "llama",\n "hidden_size": true\n}\n')
    with pytest.raises(InputError) as err:
        read_config(path)
    assert err.value.message.startswith(f"{path}:3: hidden_size: ")
