"""`kvplan import`: the file it writes, overwrite refusal, and agreement with the shipped catalog."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import run_cli
from kvplan.sources.catalog import SPECS_DIR, load_spec_file
from kvplan.sources.resolve import spec_from_source

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def folder(tmp_path: Path, fixture: str) -> Path:
    d = tmp_path / fixture
    d.mkdir()
    shutil.copy(FIXTURES / f"{fixture}.json", d / "config.json")
    return d


def test_import_writes_a_spec_that_reads_back(tmp_path, capsys):
    src = folder(tmp_path, "mistral-7b-v0.1")
    out = tmp_path / "specs" / "mistral.yaml"
    out.parent.mkdir()
    r = run_cli(capsys, "import", str(src), "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert r.stderr == f"wrote {out}: mistral-7b-v0.1, 32 layers, 7,241,732,096 parameters\n"
    assert load_spec_file(out) == spec_from_source(str(src))
    text = out.read_text()
    assert text.startswith(f"# written by `kvplan import` from {src / 'config.json'}\n")
    assert "num_parameters: 7241732096  # estimated from config.json (see notes)\n" in text
    assert f"source: {src / 'config.json'}\n" in text
    assert not list(out.parent.glob(".*.tmp"))  # the temporary file was renamed, not left behind


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    src = folder(tmp_path, "qwen3-8b")
    out = tmp_path / "q.yaml"
    out.write_text("keep me\n")
    r = run_cli(capsys, "import", str(src), "-o", str(out))
    assert r.exit_code == 2
    assert r.stderr == f"error: {out} already exists; pass --force to overwrite it\n"
    assert out.read_text() == "keep me\n"
    r = run_cli(capsys, "import", str(src), "-o", str(out), "--force")
    assert r.exit_code == 0
    assert load_spec_file(out).name == "qwen3-8b"


def test_stdout_and_name(tmp_path, capsys):
    src = folder(tmp_path, "gpt2")
    r = run_cli(capsys, "import", str(src), "-o", "-", "--name", "my-gpt2")
    assert r.exit_code == 0
    assert "\nname: my-gpt2\n" in r.stdout and "\ntorch_dtype: float32\n" in r.stdout
    r = run_cli(capsys, "import", str(src), "-o", "-", "--name", "My GPT2")
    assert r.exit_code == 2
    assert r.stderr == "error: --name 'My GPT2': use lowercase letters, digits, '.' and '-' (e.g. 'my-gpt2')\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "/no/such/dir", "-o", "-"], "error: /no/such/dir: no such file or folder\n"),
        (["import", "{src}", "-o", "/no/such/folder/x.yaml"], "error: -o /no/such/folder/x.yaml: folder /no/such/folder does not exist\n"),
    ],
)
def test_bad_paths_exit_2(tmp_path, capsys, args, message):
    src = folder(tmp_path, "gpt2")
    r = run_cli(capsys, *[a.format(src=src) for a in args])
    assert r.exit_code == 2
    assert r.stderr == message


LAYERS_BOUND = (
    "100,000,000,000 is more than 10,000, kvplan's limit, far above any real model "
    "(DeepNet, the deepest transformer trained, has 1,000 layers); check the value"
)


@pytest.mark.parametrize(
    "fixture, key, value, message",
    [
        # refused before the per-layer parameter count (which would never finish)
        ("llama-3.1-8b-instruct", "num_hidden_layers", 10**11, f"num_hidden_layers: {LAYERS_BOUND}"),
        ("gpt2", "n_layer", 10**11, f"n_layer: {LAYERS_BOUND}"),
        ("jamba-1.5-mini", "attn_layer_period", 10**11, f"attn_layer_period: {LAYERS_BOUND}"),
        ("llama-3.1-8b-instruct", "num_attention_heads", 10**9,
         "num_attention_heads: 1,000,000,000 is more than 65,536, kvplan's limit, far above any real model "
         "(Llama-3.1-405B's and DeepSeek-V3's 128 heads are the most released); check the value"),
        ("qwen3-30b-a3b", "num_experts", 10**9,
         "num_experts: 1,000,000,000 is more than 65,536, kvplan's limit, far above any real model "
         "(Qwen3-Next's 512 routed experts is the most released); check the value"),
        ("mistral-7b-v0.1", "sliding_window", 10**13,
         "sliding_window: 10,000,000,000,000 is more than 1,073,741,824, kvplan's limit, far above any real model "
         "(Llama-4 Scout's 10,485,760 tokens is the longest context released); check the value"),
    ],
)
def test_a_huge_config_value_is_refused_fast(tmp_path, capsys, fixture, key, value, message):
    src = folder(tmp_path, fixture)
    config = json.loads((src / "config.json").read_text())
    config[key] = value
    (src / "config.json").write_text(json.dumps(config))
    r = run_cli(capsys, "import", str(src), "-o", "-")
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {src / 'config.json'}: {message}\n")


def test_estimate_same_from_config_and_imported_yaml(tmp_path, capsys):
    src = folder(tmp_path, "gemma-3-27b-it")
    out = tmp_path / "g.yaml"
    assert run_cli(capsys, "import", str(src), "-o", str(out)).exit_code == 0
    a = run_cli(capsys, "estimate", str(src), "-c", "32768", "-f", "json")
    b = run_cli(capsys, "estimate", str(out), "-c", "32768", "-f", "json")
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    # 10 full layers x 32768 + 52 sliding layers x 1024 (paged: 1040) tokens, 16 KV heads x 256 B each
    assert ja["kv_bytes_per_token"] == jb["kv_bytes_per_token"] == 62 * 16 * 2 * 128 * 2
    assert ja["kv_bytes_total"] == jb["kv_bytes_total"] == (10 * 32768 + 52 * 1040) * 16 * 2 * 128 * 2


# ------------------------------------------------------------ import equals the catalog

# The catalog spec each fixture is compared with. Fixtures of a sibling checkpoint are
# compared on the KV fields only: same shapes, a different training run.
CATALOG_FOR = {
    "llama-3.1-8b-instruct": "llama-3.1-8b",
    "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "qwen2-7b-instruct": "qwen2.5-7b",  # Qwen2.5-7B keeps Qwen2-7B's shapes
    "gemma-3-27b-it": "gemma-3-27b",
    "gemma-3-4b-it": "gemma-3-4b",
    "gemma-3-1b-it": "gemma-3-1b",
    "deepseek-r1": "deepseek-v3",  # DeepSeek-R1 is a DeepSeek-V3 checkpoint
    "gpt2": "gpt-2",
    "falcon-7b-instruct": "falcon-7b",
    "phi-3-mini-4k-instruct": "phi-3-mini",
    "jamba-1.5-mini": "jamba-v0.1",  # same layer layout and sizes as Jamba-v0.1
    "llama-4-maverick-17b-128e": "llama-4-scout",  # same attention; Maverick has 128 experts
    "llava-1.5-7b-hf": "llama-2-7b",  # LLaVA-1.5's language model is Llama-2-7B (vocab differs)
}


def kv_fields(spec) -> dict:
    return {
        "layer_kinds": [k.value for k in spec.layer_kinds],
        "num_hidden_layers": spec.num_hidden_layers,
        "hidden_size": spec.hidden_size,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "k_head_dim": spec.k_head_dim,
        "v_head_dim": spec.v_head_dim_resolved,
        "sliding_window": spec.sliding_window if spec.sliding_window and any(k.value == "sliding_attention" for k in spec.layer_kinds) else None,
        "attention_chunk_size": spec.attention_chunk_size,
        "kv_lora_rank": spec.kv_lora_rank,
        "qk_rope_head_dim": spec.qk_rope_head_dim,
        "state_elements_per_layer": spec.state_elements_per_layer_resolved,
    }


# Fixtures of models the catalog also ships (the others have no counterpart to compare with).
WITH_CATALOG = [f for f in FIXTURE_NAMES if (SPECS_DIR / f"{CATALOG_FOR.get(f, f)}.yaml").is_file()]


def test_most_fixtures_have_a_catalog_counterpart():
    assert len(WITH_CATALOG) >= 16


@pytest.mark.parametrize("fixture", WITH_CATALOG)
def test_import_equals_catalog(tmp_path, fixture):
    catalog_name = CATALOG_FOR.get(fixture, fixture)
    catalog_file = SPECS_DIR / f"{catalog_name}.yaml"
    imported = spec_from_source(str(folder(tmp_path, fixture)))
    shipped = load_spec_file(catalog_file)
    expected = kv_fields(shipped)
    got = kv_fields(imported)
    if fixture != "llava-1.5-7b-hf":  # LLaVA adds 64 image tokens to Llama-2's 32000
        assert imported.vocab_size == shipped.vocab_size
    assert got == expected


# Same checkpoint shapes on both sides, text-only: the parameter counts must agree too.
SAME_COUNT = [
    ("llama-3.1-8b-instruct", "llama-3.1-8b"),
    ("mistral-7b-v0.1", "mistral-7b-v0.1"),
    ("mixtral-8x7b-v0.1", "mixtral-8x7b"),
    ("qwen2-7b-instruct", "qwen2.5-7b"),
    ("qwen3-8b", "qwen3-8b"),
    ("gemma-2-9b", "gemma-2-9b"),
    ("deepseek-v2-lite", "deepseek-v2-lite"),
    ("deepseek-r1", "deepseek-v3"),
    ("gpt2", "gpt-2"),
    ("falcon-7b-instruct", "falcon-7b"),
    ("phi-3-mini-4k-instruct", "phi-3-mini"),
    ("jamba-1.5-mini", "jamba-v0.1"),
    ("gpt-oss-20b", "gpt-oss-20b"),
]


@pytest.mark.parametrize("fixture, catalog_name", SAME_COUNT, ids=[s[0] for s in SAME_COUNT])
def test_import_parameter_count_equals_catalog(tmp_path, fixture, catalog_name):
    catalog_file = SPECS_DIR / f"{catalog_name}.yaml"
    assert catalog_file.is_file(), catalog_name
    imported = spec_from_source(str(folder(tmp_path, fixture)))
    shipped = load_spec_file(catalog_file)
    assert (imported.num_parameters, imported.num_active_parameters) == (
        shipped.num_parameters,
        shipped.num_active_parameters,
    )
