"""`kvplan diff`: two specs, or one spec at a git revision against the working tree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cli_helpers import run_cli

SPEC = """\
name: tiny-diff
source: test
num_parameters: 1000000
hidden_size: 64
num_hidden_layers: 4
num_attention_heads: 4
num_key_value_heads: 2
vocab_size: 256
intermediate_size: 128
"""

# A GPU file with round figures: 2 GiB, so capacity is worked out by hand.
GPU = """\
name: test-gpu
display_name: test GPU
vendor: test
memory_bytes: 2GiB
memory_bandwidth_gbps: 1000
bf16_tflops: 100
fp8_tflops: null
usd_per_hour: 1
memory_source: test
sources: [test]
confidence: low
"""


def kv_per_token(kv_heads: int) -> int:
    return 4 * kv_heads * (16 + 16) * 2  # layers x KV heads x (K + V head dim 64/4) x 2 B


def capacity(kv_heads: int, context: int) -> int:
    """Sequences of `context` tokens on test-gpu, engine ideal, every default of the planner by hand."""
    usable = -(-2 * 2**30 * 92 // 100)  # gpu_memory_utilization 0.92 (vLLM 0.32's default, vllm/config/cache.py)
    weights = 2 * 1_000_000  # bf16
    # vLLM's profile run: 2048 tokens x (2 x MLP width + 4 x hidden) x 2 B + 256 seqs x vocab x 4 B logits
    # (2,048 tokens and 256 sequences: vLLM 0.32 get_batch_defaults for `vllm serve` on a card under 70 GiB)
    activation = 2048 * (2 * 128 + 4 * 64) * 2 + 256 * 256 * 4
    non_torch = 512 * 2**20  # one GPU
    return (usable - weights - activation - non_torch) // (context * kv_per_token(kv_heads))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with specs/tiny.yaml committed, then KV heads doubled in the working tree."""
    root = tmp_path / "repo"
    (root / "specs").mkdir(parents=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "test")
    (root / "specs" / "tiny.yaml").write_text(SPEC)
    (root / "gpu.yaml").write_text(GPU)
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "tiny")
    (root / "specs" / "tiny.yaml").write_text(SPEC.replace("num_key_value_heads: 2", "num_key_value_heads: 4"))
    return root


def diff_json(capsys, *args: str) -> tuple[int, dict, str]:
    r = run_cli(capsys, "diff", *args, "--format", "json")
    return r.exit_code, (json.loads(r.stdout) if r.stdout else {}), r.stderr


def test_base_revision_against_the_working_tree(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    code, data, err = diff_json(capsys, "specs/tiny.yaml", "--base", "HEAD", "--gpu", "gpu.yaml", "--engine", "ideal", "-c", "1k")
    assert code == 0, err
    assert data["old"]["ref"] == "specs/tiny.yaml@HEAD" and data["new"]["ref"] == "specs/tiny.yaml (working tree)"
    m = data["metrics"]
    assert m["kv_bytes_per_token"] == {"before": 512, "after": 1024, "delta": 512, "delta_pct": 100.0}
    assert m["kv_bytes_per_sequence"] == {"before": 512 * 1024, "after": 1024 * 1024, "delta": 512 * 1024, "delta_pct": 100.0}
    before, after = capacity(2, 1024), capacity(4, 1024)
    assert (before, after) == (2736, 1368)  # 2,654 and 1,327 at 0.9
    assert m["max_concurrent_sequences"]["before"] == before and m["max_concurrent_sequences"]["after"] == after
    assert m["max_concurrent_sequences"]["delta_pct"] == pytest.approx((after - before) / before * 100)
    assert (data["context"], data["batch"], data["tp"], data["engine"]) == (1024, 1, 1, "ideal")
    assert data["passed"] is True and data["failed"] == [] and data["fail_on_increase_pct"] is None


def test_an_engine_profile_gives_capacity_by_its_own_rules(repo, capsys, monkeypatch):
    """llama.cpp: one 1,024-cell slot (pad(1k, 256)) per sequence, in GPU memory less weights, activations, non-torch."""
    monkeypatch.chdir(repo)
    code, data, err = diff_json(capsys, "specs/tiny.yaml", "--base", "HEAD", "--gpu", "gpu.yaml", "--engine", "llama.cpp",
                                "-c", "1k", "--ubatch-size", "256")
    assert code == 0, err
    activation = 8192 * (2 * 128 + 4 * 64) * 2 + 256 * 256 * 4  # the estimate memory_inputs states (as in capacity())
    room = 2 * 2**30 - 2 * 1_000_000 - 512 * 2**20 - activation
    m = data["metrics"]
    assert m["kv_bytes_per_token"]["before"] == 512 and m["kv_bytes_per_sequence"]["after"] == 1024 * 1024  # the spec's
    assert (m["max_concurrent_sequences"]["before"], m["max_concurrent_sequences"]["after"]) == (
        room // (1024 * kv_per_token(2)), room // (1024 * kv_per_token(4))) == (3051, 1525)
    # one sequence: pad(c, 256) cells x bytes per cell <= room (no max_position_embeddings: kvplan's 2**24 cap)
    assert m["max_context_tokens"]["before"] == room // kv_per_token(2) // 256 * 256 == 3124736
    assert (data["engine"], data["engine_options"], data["new"]["kv_cache_dtype"]) == ("llama.cpp", {"ubatch_size": 256}, "f16")


def test_the_spec_path_is_relative_to_where_kvplan_runs(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo.parent)
    code, data, err = diff_json(capsys, "repo/specs/tiny.yaml", "--base", "HEAD", "--gpu", str(repo / "gpu.yaml"))
    assert code == 0, err
    assert data["metrics"]["kv_bytes_per_token"]["before"] == 512


def test_an_older_revision_by_name(repo, capsys, monkeypatch):
    git(repo, "commit", "-q", "-am", "four KV heads")
    (repo / "specs" / "tiny.yaml").write_text(SPEC.replace("num_key_value_heads: 2", "num_key_value_heads: 1"))
    monkeypatch.chdir(repo)
    code, data, _ = diff_json(capsys, "specs/tiny.yaml", "--base", "HEAD~1", "--gpu", "gpu.yaml")
    assert data["metrics"]["kv_bytes_per_token"] == {"before": 512, "after": 256, "delta": -256, "delta_pct": -50.0}
    code, data, _ = diff_json(capsys, "specs/tiny.yaml", "--base", "HEAD", "--gpu", "gpu.yaml")
    assert data["metrics"]["kv_bytes_per_token"] == {"before": 1024, "after": 256, "delta": -768, "delta_pct": -75.0}


@pytest.mark.parametrize(
    "pct, code",
    [
        (None, 0),
        (99.9, 1),  # bytes per token and per sequence both grew 100%
        (100, 0),  # exactly the limit is not more than it
        (0, 1),
    ],
)
def test_fail_on_increase_gates_growth(repo, capsys, monkeypatch, pct, code):
    monkeypatch.chdir(repo)
    args = ["specs/tiny.yaml", "--base", "HEAD", "--gpu", "gpu.yaml"]
    if pct is not None:
        args += ["--fail-on-increase", str(pct)]
    got, data, err = diff_json(capsys, *args)
    assert got == code
    if code == 1:
        assert data["failed"] == ["kv_bytes_per_token", "kv_bytes_per_sequence"]
        assert err == (
            "kvplan diff: kv_bytes_per_token grew +100.00%; kv_bytes_per_sequence grew +100.00% "
            f"(more than --fail-on-increase {pct:g}%)\n"
        )
    else:
        assert err == "" and data["passed"] is True


def test_a_decrease_never_fails(repo, capsys, monkeypatch):
    (repo / "specs" / "tiny.yaml").write_text(SPEC.replace("num_key_value_heads: 2", "num_key_value_heads: 1"))
    monkeypatch.chdir(repo)
    code, data, _ = diff_json(capsys, "specs/tiny.yaml", "--base", "HEAD", "--gpu", "gpu.yaml", "--fail-on-increase", "0")
    assert code == 0 and data["metrics"]["kv_bytes_per_token"]["delta"] == -256


def test_two_files_without_git(tmp_path, capsys):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(SPEC)
    new.write_text(SPEC.replace("num_hidden_layers: 4", "num_hidden_layers: 6"))
    code, data, _ = diff_json(capsys, str(old), str(new), "--kv-cache-dtype", "fp8", "-c", "2048", "--gpu", "h100-sxm")
    assert code == 0
    assert data["metrics"]["kv_bytes_per_token"] == {"before": 256, "after": 384, "delta": 128, "delta_pct": 50.0}
    assert data["metrics"]["kv_bytes_per_sequence"]["after"] == 384 * 2048
    assert data["old"]["kv_cache_dtype"] == data["new"]["kv_cache_dtype"] == "fp8"
    assert data["new"]["gpu"] == "h100-sxm"


def test_catalog_names(capsys):
    code, data, _ = diff_json(capsys, "llama-3.1-8b", "qwen3-8b", "-c", "32k")
    assert code == 0
    # llama-3.1-8b: 32 layers x 8 KV heads x 128 x 2 x 2 B; qwen3-8b: 36 layers, the same heads
    llama, qwen = 32 * 8 * 128 * 2 * 2, 36 * 8 * 128 * 2 * 2
    assert data["metrics"]["kv_bytes_per_token"] == {"before": llama, "after": qwen, "delta": qwen - llama, "delta_pct": 12.5}
    assert data["metrics"]["kv_bytes_per_sequence"]["before"] == llama * 32768
    assert data["new"]["model"] == "qwen3-8b" and data["new"]["gpu"] == "h100-sxm"


def test_markdown_and_table(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    r = run_cli(capsys, "diff", "specs/tiny.yaml", "--base", "HEAD", "--gpu", "gpu.yaml", "-c", "1k", "--engine", "ideal",
                "-f", "markdown", "--fail-on-increase", "10")
    assert r.exit_code == 1
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == ["metric", "before", "after", "delta", "%"]
    assert rows[2] == ["kv_bytes_per_token", "512 B", "1,024 B (1.00 KiB)", "+512 B", "+100.00%"]
    assert rows[3] == ["kv_bytes_per_sequence", "524,288 B (512.00 KiB)", "1,048,576 B (1.00 MiB)", "+524,288 B (+512.00 KiB)", "+100.00%"]
    assert rows[4] == ["max_concurrent_sequences", "2,736", "1,368", "-1,368", "-50.00%"]
    assert "FAIL: kv_bytes_per_token, kv_bytes_per_sequence grew more than 10%" in r.stdout
    r = run_cli(capsys, "diff", "specs/tiny.yaml", "--base", "HEAD", "--gpu", "gpu.yaml")
    assert r.exit_code == 0
    assert "kv_bytes_per_token" in r.stdout and "+100.00%" in r.stdout and "specs/tiny.yaml@HEAD" in r.stdout


# ------------------------------------------------------------------ errors: exit 2, one line


def test_not_a_git_repository(tmp_path, capsys, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path counts
    r = run_cli(capsys, "diff", "tiny.yaml", "--base", "main")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == "error: --base main: tiny.yaml is not inside a git repository\n"


def test_a_file_absent_at_the_revision(repo, capsys, monkeypatch):
    (repo / "specs" / "new.yaml").write_text(SPEC)
    monkeypatch.chdir(repo)
    r = run_cli(capsys, "diff", "specs/new.yaml", "--base", "HEAD")
    assert r.exit_code == 2
    assert r.stderr == "error: --base HEAD: specs/new.yaml does not exist at HEAD (a new file has nothing to compare with)\n"


def test_an_unknown_revision(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    r = run_cli(capsys, "diff", "specs/tiny.yaml", "--base", "origin/nope")
    assert r.exit_code == 2
    assert r.stderr == "error: --base 'origin/nope' is not a revision of this repository (try a branch, tag or commit)\n"


def test_an_invalid_spec_at_the_revision_names_revision_and_line(repo, capsys, monkeypatch):
    (repo / "specs" / "tiny.yaml").write_text(SPEC.replace("num_key_value_heads: 2", "num_key_value_heads: 3"))
    git(repo, "commit", "-q", "-am", "bad heads")
    (repo / "specs" / "tiny.yaml").write_text(SPEC)
    monkeypatch.chdir(repo)
    r = run_cli(capsys, "diff", "specs/tiny.yaml", "--base", "HEAD")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: specs/tiny.yaml@HEAD")
    assert "num_attention_heads (4) must be a multiple of num_key_value_heads (3)" in r.stderr


def test_malformed_yaml_at_the_revision_names_its_line(repo, capsys, monkeypatch):
    (repo / "specs" / "tiny.yaml").write_text(SPEC + "layer_types: [\n")
    git(repo, "commit", "-q", "-am", "broken")
    (repo / "specs" / "tiny.yaml").write_text(SPEC)
    monkeypatch.chdir(repo)
    r = run_cli(capsys, "diff", "specs/tiny.yaml", "--base", "HEAD")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: specs/tiny.yaml@HEAD:11: malformed YAML:")


def test_a_context_past_a_spec_is_compared_not_refused(capsys):
    """diff compares specs at one reference context (CI runs every changed spec at --context 32k): llama-2-7b's
    4,096-token limit caps its max context; vLLM's start-up refusal is for estimate and check."""
    code, data, err = diff_json(capsys, "llama-3.1-8b", "llama-2-7b", "--context", "32k")
    assert code == 0, err
    assert data["metrics"]["max_context_tokens"]["after"] == 4096


def test_a_duplicate_key_at_the_revision_names_both_lines(repo, capsys, monkeypatch):
    (repo / "specs" / "tiny.yaml").write_text(SPEC + "hidden_size: 128\n")
    git(repo, "commit", "-q", "-am", "twice")
    (repo / "specs" / "tiny.yaml").write_text(SPEC)
    monkeypatch.chdir(repo)
    r = run_cli(capsys, "diff", "specs/tiny.yaml", "--base", "HEAD")
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", "error: specs/tiny.yaml@HEAD:10: duplicate key 'hidden_size' (first at line 4)\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["a.yaml"], "diff needs OLD and NEW specs, or one spec and --base REV (e.g. --base origin/main)"),
        (["a.yaml", "b.yaml", "--base", "HEAD"], "--base compares one spec with its past: give OLD only, not NEW"),
        (["missing.yaml", "--base", "HEAD"], "missing.yaml: no such spec file in the working tree (--base compares a file with its past)"),
        (["llama-3.1-8b", "qwen3-8b", "--fail-on-increase", "-1"], "--fail-on-increase -1.0 must be a percentage of 0 or more"),
        (["llama-3.1-8b", "qwen3-8b", "--context", "lots"], "--context 'lots' is not a whole number of tokens (e.g. 32768 or 32k)"),
        (["llama-3.1-8b", "qwen3-8b", "--tp", "3"],
         "--tensor-parallel-size 3 does not divide llama-3.1-8b's 32 attention heads; use a divisor of 32"),
        (["llama-3.1-8b", "qwen3-8b", "--gpu", "h1000"], "unknown GPU 'h1000'"),
        (["llama-3.1-8b", "qwen3-8b", "--engine", "sglang", "--ubatch-size", "256"],
         "--ubatch-size is only for --engine llama.cpp (this diff's engine is sglang)"),
        (["llama-3.1-8b", "qwen3-8b", "--page-size", "16"], "--page-size is only for --engine sglang (this diff's engine is vllm)"),
        (["llama-3.1-8b", "qwen3-8b", "--engine", "llama.cpp", "--tp", "2"],
         "--tp 2: kvplan's llama.cpp profile is for one device; use --tp 1"),
        (["llama-3.1-8b", "qwen3-8b", "--engine", "llama.cpp", "--cache-type-v", "q8_0", "--flash-attn", "off"],
         "llama-3.1-8b: llama.cpp refuses: llama_init_from_model: quantized V cache requires flash_attn to be enabled"),
        (["llama-3.1-8b", "qwen3-8b", "--kv-cache-dtype", "q8_0"],
         "llama-3.1-8b: vllm refuses: error: argument --kv-cache-dtype: invalid choice: 'q8_0' (choose from 'auto', "
         "'bfloat16', 'float16', 'fp8', 'fp8_ds_mla', 'fp8_e4m3', 'fp8_e5m2', 'fp8_inc', 'fp8_per_token_head', "
         "'int4_per_token_head', 'int8_per_token_head', 'nvfp4', 'nvfp4_4over6', 'nvfp4_ds_mla', 'turboquant_3bit_nc', "
         "'turboquant_4bit_nc', 'turboquant_k3v4_nc', 'turboquant_k8v4', 'ultraquant_4bit')\n"),
    ],
)
def test_bad_arguments(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = run_cli(capsys, "diff", *args)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {message}"), r.stderr
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        # each flag is named alone, with its value
        (["--batch", "0"], "--batch must be at least 1 sequence, got 0"),
        (["--context", "0"], "--context must be at least 1 token, got 0"),
        (["--tp", "0"], "--tensor-parallel-size must be at least 1, got 0"),
        (["--pp", "0"], "--pipeline-parallel-size must be at least 1, got 0"),
        (["--context", "1.3k"], "--context '1.3k' is 1.3 × 1,024 = 1,331.2, not a whole number; write 1331 or 1332"),
        (["--gpu", "/"], "/: is a folder, not a GPU YAML file"),
    ],
)
def test_one_bad_flag_is_named_exactly(capsys, args, message):
    r = run_cli(capsys, "diff", "llama-3.1-8b", "qwen3-8b", *args)
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {message}\n")


def test_a_decimal_context_is_read_exactly(capsys):
    r = run_cli(capsys, "diff", "llama-3.1-8b", "qwen3-8b", "--context", "1.5k", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["context"] == 1536
