"""The one option table (kvplan.options.OPTIONS): every command's flags and the plan schema come from it.

Expected figures are computed by hand here from the catalog's numbers (gpus.yaml, the spec's
config.json) and vLLM's budget rule (kvplan.plan.planner's docstring: KV budget =
ceil(total x gpu_memory_utilization) - weights - activations - non-torch).
"""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli

# Options a command declares itself, with why they are not the table's.
COMMAND_OWN = {
    "compare": {"engines"},  # which rows to show
    "diff": {"base", "fail_on_increase"},  # a git revision; the gate
    "check": {"fmt"},  # its own formats (junit, github), each explained in the help
    "import": {"output", "name", "force"},  # -o is the product (required), not a copy of stdout; '-' prints it
    "explain": {"save_calibration"},  # the measured terms of the log (kvplan.plan.explain.calibration)
    # a run on this machine: torch dtypes and run controls, not a deployment's (kvplan.measure)
    "measure": {"layers", "decode_steps", "warmup_steps", "max_rounds", "dtype", "kv_cache_dtype", "device", "seed",
                "cuda_graphs", "verify", "tolerance", "timeout",  # --timeout: how long the --tp/--pp ranks may run
                # --engine vllm / llama.cpp: which engine, where it is, how it is loaded (kvplan.measure.engine_vllm,
                # kvplan.cli.measure_llamacpp: llama-server's path and threads)
                "engine", "vllm_python", "vllm", "vllm_arg", "port", "concurrency", "requests", "engine_log",
                "save_calibration", "llama_server", "threads"},
    "search": {"limit"},  # how many rows of the front to print
}


# A default that is a command's own: measure runs a short context on this machine; diff needs one GPU.
DEFAULT_OWN = {("measure", "context"): "1024", ("diff", "gpu"): "h100-sxm",
               ("search", "tp"): "1,2,4,8"}  # search enumerates the usual tensor-parallel sizes


def _commands():
    import typer

    from kvplan.cli import app as cli

    cli.register_commands(["--help"])
    group = typer.main.get_command(cli.app)
    return {name: group.get_command(None, name) for name in group.list_commands(None)}


def _click_type_name(kind: str) -> str:
    return {"counts": "text", "tokens": "text", "bytes": "text", "str": "text", "str_list": "text", "path": "text",
            "int": "integer", "share": "float", "float": "float", "bool": "boolean", "choice": "choice"}[kind]


def test_every_commands_flags_come_from_the_table():
    """Each option's flags, hidden spellings, help and type are the table's; the rest are named above."""
    from kvplan.options import OPTIONS

    by_param = {o.name: o for o in OPTIONS}
    seen = set()
    commands = _commands()
    assert set(commands) >= {"estimate", "compare", "check", "diff", "measure", "gpus", "import", "models", "show"}
    for name, command in commands.items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            if param.name in COMMAND_OWN.get(name, set()):
                continue
            if param.hidden:  # an old spelling: it must be one the table lists for its option
                assert any(flag in o.hidden or flag in o.flags for o in OPTIONS for flag in param.opts), (name, param.opts)
                continue
            assert param.name in by_param, f"{name} {param.opts}: not in kvplan.options.OPTIONS"
            option = by_param[param.name]
            opts = tuple(param.opts)
            if param.secondary_opts:  # an on/off pair, as vLLM spells it: --enable-prefix-caching/--no-...
                opts = tuple(f"{a}/{b}" for a, b in zip(param.opts, param.secondary_opts))
            assert opts == option.flags, (name, param.name)
            assert param.help == option.help, (name, param.name)
            assert param.type.name == _click_type_name(option.kind), (name, param.name, param.type.name)
            # the table's default, or None: "not given", the engine's own default applies (kvplan.engines.options)
            if (name, param.name) not in DEFAULT_OWN:
                assert param.default in (None, option.default), (name, param.name, param.default)
            seen.add(option.key)
    assert {"context", "batch", "tp", "pp", "gpu_memory_utilization", "max_num_batched_tokens",
            "activation_memory", "non_torch_memory", "output", "svg"} <= seen


def test_the_same_flag_is_the_same_option_in_every_command():
    """No flag means two things: one table entry per flag, across all commands (measure's own run flags aside)."""
    from kvplan.options import OPTIONS

    flags = [f for o in OPTIONS for f in o.flags + o.hidden]
    assert len(flags) == len(set(flags))


def test_the_plan_schema_holds_the_tables_plan_keys():
    from kvplan.options import OPTIONS
    from kvplan.plan.gating import DeploymentEntry

    plan_only = {"name", "model", "budgets"}  # a deployment's label, what it runs, its limits
    assert set(DeploymentEntry.model_fields) - plan_only == {o.key for o in OPTIONS if o.plan}


@pytest.mark.parametrize("key, text, expected", [
    # counts and token counts: k = 1024 (README "Units"); sizes: GiB = 2**30, GB = 10**9
    ("context", "32k", 32_768),
    ("batch", "1.5k", 1_536),
    ("tp", "2", 2),
    ("pp", "2", 2),
    ("max_num_batched_tokens", "4k", 4_096),
    ("ubatch_size", "1k", 1_024),
    ("n_batch", "2k", 2_048),
    ("ctx_size", "16k", 16_384),
    ("max_total_tokens", "1m", 1_048_576),
    ("prompt_tokens", "2k", 2_048),
    ("activation_memory", "2GiB", 2 * 2**30),
    ("non_torch_memory", "512MiB", 512 * 2**20),
    ("gpu_memory", "80GB", 80 * 10**9),
])
def test_a_value_reads_the_same_on_the_command_line_and_in_a_plan(key, text, expected):
    from kvplan.options import parse_option
    from kvplan.plan.gating import DeploymentEntry

    cli = parse_option(key, text)
    assert (cli[0] if isinstance(cli, list) else cli) == expected
    entry = DeploymentEntry.model_validate({"model": "llama-3.1-8b", "context": 8192, key: text,
                                            "budgets": {"max_kv_bytes_per_token": "1MiB"}})
    assert getattr(entry, key) == expected


@pytest.mark.parametrize("command, flag", [(c, f) for c in ("compare", "diff") for f in ("--batch", "--tp", "--pp", "--context")
                                           if (c, f) != ("compare", "--pp")])  # compare sizes one stage: no --pp
def test_a_list_where_one_value_is_taken_is_refused_with_the_flag_named(capsys, command, flag):
    args = ["compare", "llama-3.1-8b"] if command == "compare" else ["diff", "llama-3.1-8b", "qwen3-8b"]
    r = run_cli(capsys, *args, flag, "1,2")
    long = {"--tp": "--tensor-parallel-size", "--pp": "--pipeline-parallel-size"}.get(flag, flag)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith(f"error: {long} '1,2': {command} takes one ")
    assert "not a list" in r.stderr


@pytest.mark.parametrize("args", [["--batch", "1k"], ["--tp", "1"], ["--pp", "1"], ["--batch", "0.5k"]])
def test_counts_take_k_in_every_command(capsys, args):
    """`-b 1k` is 1,024 sequences in estimate, compare and diff alike (a k suffix was estimate's only)."""
    for command in (["estimate", "llama-3.1-8b", "-f", "json"], ["compare", "llama-3.1-8b", "-f", "json"],
                    ["diff", "llama-3.1-8b", "qwen3-8b", "-f", "json"]):
        if command[0] == "compare" and args[0] == "--pp":
            continue  # compare sizes one pipeline stage: it has no --pp
        r = run_cli(capsys, *command, *args)
        assert r.exit_code == 0, (command, args, r.stderr)
        data = json.loads(r.stdout)
        if args[0] == "--batch":
            assert data["batch"] == {"1k": 1024, "0.5k": 512}[args[1]]


# llama-3.1-8b on a 40 GiB GPU at gpu_memory_utilization 0.6, by hand:
#   usable  = ceil(40 x 2**30 x 0.6)            = 25,769,803,776 B
#   weights = 8,030,261,248 params x 2 B (bf16) = 16,060,522,496 B (the spec's num_parameters, config.json's model)
#   budget  = usable - weights - 1 GiB activations - 1 GiB non-torch = 7,561,797,632 B
#   one sequence of 8,192 tokens = 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 B x 8,192 = 1 GiB (16-token blocks: exact)
#   max sequences = floor(7,561,797,632 / 2**30) = 7 (at vLLM's default 0.9 it would be 19)
SETTINGS = ["--gpu", "h100-sxm", "--gpu-memory", "40GiB", "--gpu-memory-utilization", "0.6",
            "--activation-memory", "1GiB", "--non-torch-memory", "1GiB", "--context", "8192"]
BUDGET = -(-40 * 2**30 * 6 // 10) - 8_030_261_248 * 2 - 2**30 - 2**30


def test_gpu_memory_utilization_moves_estimate_compare_and_diff_alike(capsys):
    assert BUDGET == 7_561_797_632
    r = run_cli(capsys, "estimate", "llama-3.1-8b", *SETTINGS, "-f", "json")
    assert r.exit_code == 0, r.stderr
    est = json.loads(r.stdout)
    assert (est["kv_budget_bytes_per_gpu"], est["max_concurrent_sequences"]) == (BUDGET, 7)

    r = run_cli(capsys, "compare", "llama-3.1-8b", *SETTINGS, "--engines", "vllm", "-f", "json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["rows"][0]
    assert (row["capacity"]["kv_budget_bytes"], row["capacity"]["max_concurrent_sequences"]) == (BUDGET, 7)

    r = run_cli(capsys, "diff", "llama-3.1-8b", "llama-3.1-8b", *SETTINGS, "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["metrics"]["max_concurrent_sequences"]["after"] == 7


def test_max_num_batched_tokens_moves_compare_and_diff_as_estimate(capsys):
    """A sliding-window model's reservation grows with max_num_batched_tokens (vLLM: window - 1 + B tokens)."""
    common = ["--gpu", "h100-sxm", "--context", "32k", "--max-num-batched-tokens", "1k"]
    figures = []
    r = run_cli(capsys, "estimate", "gemma-3-27b", *common, "-f", "json")
    assert r.exit_code == 0, r.stderr
    figures.append(json.loads(r.stdout)["max_concurrent_sequences"])
    r = run_cli(capsys, "compare", "gemma-3-27b", *common, "--engines", "vllm", "-f", "json")
    assert r.exit_code == 0, r.stderr
    figures.append(json.loads(r.stdout)["rows"][0]["capacity"]["max_concurrent_sequences"])
    r = run_cli(capsys, "diff", "gemma-3-27b", "gemma-3-27b", *common, "-f", "json")
    assert r.exit_code == 0, r.stderr
    figures.append(json.loads(r.stdout)["metrics"]["max_concurrent_sequences"]["after"])
    r = run_cli(capsys, "estimate", "gemma-3-27b", "--gpu", "h100-sxm", "--context", "32k", "-f", "json")
    default = json.loads(r.stdout)["max_concurrent_sequences"]
    assert figures[0] == figures[1] == figures[2] != default


def test_diff_refuses_a_planner_flag_under_an_engine_profile(capsys):
    r = run_cli(capsys, "diff", "llama-3.1-8b", "qwen3-8b", "--engine", "sglang", "--gpu-memory-utilization", "0.5")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == ("error: --gpu-memory-utilization is only for --engine vllm and ideal (kvplan's planner); "
                        "--engine sglang has its own budget rule\n")


def test_every_json_document_carries_the_schema_version(capsys, tmp_path):
    from kvplan.schema import SCHEMA_VERSION

    assert SCHEMA_VERSION == 1
    for args in (["estimate", "llama-3.1-8b"], ["estimate", "llama-3.1-8b", "-c", "1k,2k"],
                 ["compare", "llama-3.1-8b"], ["check", "examples/plan.yaml"],
                 ["diff", "llama-3.1-8b", "qwen3-8b"], ["gpus"], ["gpus", "h100"], ["show", "qwen3-8b"], ["models"],
                 ["estimate", "llama-3.1-8b", "--engine", "hf"]):
        r = run_cli(capsys, *args, "-f", "json")
        assert r.exit_code in (0, 1), (args, r.stderr)
        data = json.loads(r.stdout)
        for doc in data if isinstance(data, list) else [data]:
            assert next(iter(doc.items())) == ("schema_version", 1), args
    out = tmp_path / "report.json"
    r = run_cli(capsys, "check", "examples/plan.yaml", "-f", "json", "-o", str(out))
    assert next(iter(json.loads(out.read_text()).items())) == ("schema_version", 1)


# ------------------------------------------------------------------ -o / --output: one convention


@pytest.mark.parametrize("args", [
    ["estimate", "llama-3.1-8b", "-c", "1k,2k"],
    ["compare", "llama-3.1-8b"],
    ["diff", "llama-3.1-8b", "qwen3-8b"],
])
def test_output_writes_what_stdout_shows(capsys, tmp_path, args):
    plain = run_cli(capsys, *args, "-f", "json")
    target = tmp_path / "report.json"
    r = run_cli(capsys, *args, "-f", "json", "-o", str(target))
    assert (r.exit_code, r.stdout, r.stderr) == (0, plain.stdout, f"wrote {target}\n")
    assert target.read_text() == plain.stdout
    again = run_cli(capsys, *args, "-f", "json", "--output", str(target))  # its own JSON: replaced, no --force
    assert again.exit_code == 0 and target.read_text() == plain.stdout


def test_output_keeps_a_file_that_is_not_its_report(capsys, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-o", str(notes))
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == (f"error: --output {notes} already exists and is not empty (a table, CSV or Markdown report "
                        "is replaced only with --force); choose another file, or pass --force to replace it\n")
    assert notes.read_text() == "my notes\n"
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "-o", str(notes), "--force")
    assert r.exit_code == 0 and notes.read_text() == r.stdout


def test_output_never_replaces_the_model_it_reads(capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text((__import__("pathlib").Path("model_specs") / "llama-3.1-8b.yaml").read_text())
    r = run_cli(capsys, "diff", str(spec), "qwen3-8b", "-o", str(spec), "--force")
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: --output {spec} is the model being compared; choose another file\n")


def test_a_failed_diff_gate_still_writes_its_report(capsys, tmp_path):
    target = tmp_path / "diff.md"
    r = run_cli(capsys, "diff", "mistral-7b-v0.1", "llama-3.1-8b", "-c", "32k", "--fail-on-increase", "0",
                "-f", "markdown", "-o", str(target))
    assert r.exit_code == 1
    assert target.read_text() == r.stdout and r.stdout.startswith("**mistral-7b-v0.1 → llama-3.1-8b")
    assert r.stderr.endswith(f"wrote {target}\n")


def test_measure_json_is_the_hidden_old_spelling_of_output():
    from kvplan.options import BY_KEY

    assert BY_KEY["output"].hidden == ("--json",)
    commands = _commands()
    old = next(p for p in commands["measure"].params if p.name == "json_path")
    assert old.opts == ["--json"] and old.hidden


def test_a_gpu_saved_as_json_reads_back_as_a_gpu_file(capsys, tmp_path):
    """`kvplan gpus NAME -f json > my.json` then `--gpu my.json`: the schema_version is the document's, set aside."""
    saved = tmp_path / "h100.json"
    saved.write_text(run_cli(capsys, "gpus", "h100", "-f", "json").stdout)
    by_name = json.loads(run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-f", "json").stdout)
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", str(saved), "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["kv_budget_bytes_per_gpu"] == by_name["kv_budget_bytes_per_gpu"]
    saved.write_text(saved.read_text().replace('"schema_version": 1', '"schema_version": 2'))
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", str(saved))
    assert (r.exit_code, r.stderr) == (2, f"error: {saved}:2: schema_version: 2 is not 1, the version of kvplan's "
                                          "JSON this kvplan reads\n")


@pytest.mark.parametrize("args, message", [
    (["-c", "-5"], "--context must be at least 1 token, got -5"),
    (["-b", "0"], "--batch must be at least 1 sequence, got 0"),
    (["--tp", "0"], "--tensor-parallel-size must be at least 1, got 0"),
])
def test_one_count_below_one_is_refused_in_the_same_words_in_compare_and_diff(capsys, args, message):
    for command in (["compare", "llama-3.1-8b"], ["diff", "llama-3.1-8b", "qwen3-8b"]):
        r = run_cli(capsys, *command, *args)
        assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {message}\n"), command


@pytest.mark.parametrize("command", ["estimate", "compare"])
def test_gpu_memory_utilization_without_a_gpu_is_refused_not_ignored(capsys, command):
    # it splits a GPU's memory: with no GPU it would change nothing, so it is refused by name
    r = run_cli(capsys, command, "llama-3.1-8b", "--gpu-memory-utilization", "0.5")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: --gpu-memory-utilization needs a GPU: --gpu is needed")


# ------------------------------------------------------------------ every writer: "schema_version" first

LOG = "tests/fixtures/vllm_logs/vllm-0.6.5-llama-3-8b-h100.log"


def _first_key_is_the_schema(doc) -> bool:
    return next(iter(doc.items())) == ("schema_version", 1)


def test_the_writers_beyond_the_table_commands_carry_the_schema_version(capsys, tmp_path):
    """search, explain, explain --save-calibration and measure's report (stdout and -o) stamp their JSON too.

    (`import` writes a spec YAML, not JSON: a spec is checked by its own strict schema, kvplan.model.spec.)
    """
    r = run_cli(capsys, "search", "llama-3.1-8b", "--requests-per-s", "1", "--tpot-ms", "50", "--prompt-tokens", "1k",
                "--output-tokens", "100", "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert _first_key_is_the_schema(json.loads(r.stdout))
    cal = tmp_path / "cal.json"
    r = run_cli(capsys, "explain", LOG, "llama-3.1-8b", "-c", "8192", "--save-calibration", str(cal), "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert _first_key_is_the_schema(json.loads(r.stdout))
    assert _first_key_is_the_schema(json.loads(cal.read_text()))
    # measure's report, without running torch: the one writer of its -o file and its --format json stdout
    from kvplan.cli.measure import MeasureFormat, _show

    report = tmp_path / "measure.json"
    _show({"model": "tiny", "runs": []}, report, "--output", MeasureFormat.json, lambda: [])
    assert json.loads(report.read_text()) == {"schema_version": 1, "model": "tiny", "runs": []}
    assert json.loads(capsys.readouterr().out) == {"schema_version": 1, "model": "tiny", "runs": []}


# ------------------------------------------------------------------ a group's flag reads alike in every command

# What each command needs besides the flag under test (a GPU where the flag needs one).
BASE_ARGS = {
    "estimate": ["llama-3.1-8b", "--gpu", "h100-sxm"],
    "compare": ["llama-3.1-8b", "--gpu", "h100-sxm"],
    "diff": ["llama-3.1-8b", "qwen3-8b"],
    "search": ["llama-3.1-8b", "--requests-per-s", "1", "--tpot-ms", "50", "--prompt-tokens", "1k",
               "--output-tokens", "100"],
    "gpus": [],
    "explain": [LOG, "llama-3.1-8b"],
    "measure": ["llama-3.1-8b", "--engine", "vllm"],
}


def _bad_value(key: str, command: str) -> tuple[str, str]:
    """A value the flag's kind refuses, and the refusal in the words kvplan.options / kvplan.units give it."""
    from kvplan.options import BY_KEY

    option = BY_KEY[key]
    if option.kind == "bytes":
        return "2x", f"error: {option.flag} '2x' is not a size; write bytes or a number with a unit, e.g. 5GiB or 80GB\n"
    if option.kind == "tokens":
        return "x", f"error: {option.flag} 'x' is not a whole number of tokens (e.g. 32768 or 32k)\n"
    assert option.kind == "counts", key
    return "1,2", f"error: {option.flag} '1,2': {command} takes one value, not a list\n"


def _group_params():
    from kvplan.options import BUDGET, GPU_FIGURES, WEIGHTS

    keys = [k for k in GPU_FIGURES + WEIGHTS + BUDGET if _kind(k) in ("bytes", "tokens", "counts")]
    commands = _commands()
    walked = [(name, key) for name, command in commands.items() for key in keys
              if key in {p.name for p in command.params}
              and not (name, key) == ("search", "max_num_seqs")]  # search: the values to try, a list
    return walked


def _kind(key: str) -> str:
    from kvplan.options import BY_KEY

    return BY_KEY[key].kind


def test_every_command_that_takes_a_group_flag_reads_it_alike(capsys):
    """Walk every command's parameters: a size, token count or single count of the flag groups
    (kvplan.options GPU_FIGURES, WEIGHTS, BUDGET) is refused in the same words wherever it is taken."""
    walked = _group_params()
    assert {name for name, _ in walked} == {"estimate", "compare", "diff", "search", "gpus", "explain",
                                                 "measure"}
    assert ("search", "activation_memory") in walked and ("diff", "cuda_total_memory") in walked
    for name, key in walked:
        from kvplan.options import BY_KEY

        value, refusal = _bad_value(key, name)
        r = run_cli(capsys, name, *BASE_ARGS[name], BY_KEY[key].flag, value)
        assert (r.exit_code, r.stdout, r.stderr) == (2, "", refusal), (name, key)


# Each kind's text and its value, by hand: k = 1024 (README "Units"), GiB = 2**30.
_BY_KIND = {"counts": ("2k", 2_048), "tokens": ("2k", 2_048), "bytes": ("2GiB", 2 * 2**30)}


def test_every_plan_key_reads_as_its_flag_does():
    """Walk the table: every plan key that is a count, a token count or a size takes the flag's text in a plan
    (a plan's `max_num_seqs: 1k` was refused while `--max-num-seqs 1k` was taken)."""
    from kvplan.options import OPTIONS, parse_option
    from kvplan.plan.gating import DeploymentEntry

    walked = [o for o in OPTIONS if o.plan and o.kind in _BY_KIND]
    assert {"max_num_seqs", "weights_bytes", "cuda_total_memory", "kv_cache_memory_bytes"} <= {o.key for o in walked}
    for option in walked:
        text, expected = _BY_KIND[option.kind]
        cli = parse_option(option.key, text)
        assert (cli[0] if isinstance(cli, list) else cli) == expected, option.key
        entry = DeploymentEntry.model_validate({"model": "llama-3.1-8b", "context": 8192, option.key: text,
                                                "budgets": {"max_kv_bytes_per_token": "1MiB"}})
        assert getattr(entry, option.key) == expected, option.key
