"""Report files: no writer replaces its own inputs or a file the user wrote, and every refusal
comes before the work (kvplan.cli.outputs). CLI cases assert the exact message, exit 2, and that
the file in the way is byte-for-byte unchanged."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import pytest

from cli_helpers import run_cli
from kvplan.cli import outputs
from kvplan.atomic import write_text_atomically
from kvplan.errors import InputError

REPO = Path(__file__).resolve().parent.parent

TINY_SPEC = """\
name: tiny-out
source: test
num_parameters: 1000000
hidden_size: 64
num_hidden_layers: 2
num_attention_heads: 4
num_key_value_heads: 2
vocab_size: 256
intermediate_size: 128
torch_dtype: float32
"""

GPU_YAML = """\
name: my-card
display_name: My Card 1GB
vendor: nvidia
memory_bytes: 1GiB
memory_bandwidth_gbps: 1000
bf16_tflops: 100
fp8_tflops: null
usd_per_hour: 1
memory_source: test
sources: [test]
confidence: low
"""

CONFIG = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 256, "intermediate_size": 128, "torch_dtype": "float32",
    "max_position_embeddings": 2048,
}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with a plan that reads a spec and a GPU file beside it, as cwd."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "tiny.yaml").write_text(TINY_SPEC)
    (tmp_path / "gpu.yaml").write_text(GPU_YAML)
    (tmp_path / "plan.yaml").write_text(textwrap.dedent("""\
        version: 1
        deployments:
          - name: tiny
            model: specs/tiny.yaml
            gpu: gpu.yaml
            context: 1k
            budgets:
              max_kv_bytes_per_token: 1MiB
        """))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def unchanged(path: Path):
    """A context that asserts `path` has the same bytes afterwards."""
    before = path.read_bytes()

    class Same:
        def __enter__(self):
            return path

        def __exit__(self, *exc):
            assert path.read_bytes() == before, f"{path} was changed"

    return Same()


def cannot_write_in(folder: str) -> str:
    """Why no file can be created in `folder` (its strerror); skips where one can."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError as exc:
        return exc.strerror
    os.close(fd)
    os.unlink(probe)
    pytest.skip(f"{folder} is writable here")


# ------------------------------------------------------------------ 1a: never an input of the command


@pytest.mark.parametrize("fmt", ["junit", "json", "table"])
def test_check_refuses_to_write_over_its_plan(work, capsys, fmt):
    with unchanged(work / "plan.yaml"):
        r = run_cli(capsys, "check", "plan.yaml", "-f", fmt, "-o", "plan.yaml")
        assert (r.exit_code, r.stdout) == (2, "")
        assert r.stderr == "error: --output plan.yaml is the plan being checked; choose another file\n"
        # another spelling, a link, and --force all name the same file
        r = run_cli(capsys, "check", "plan.yaml", "-f", fmt, "-o", "specs/../plan.yaml", "--force")
        assert r.exit_code == 2
        assert r.stderr == "error: --output specs/../plan.yaml is the plan being checked; choose another file\n"
        os.symlink("plan.yaml", "link.xml")
        r = run_cli(capsys, "check", "plan.yaml", "-f", fmt, "-o", "link.xml", "--force")
        assert r.stderr == "error: --output link.xml is the plan being checked; choose another file\n"


def test_check_refuses_the_files_its_plan_reads(work, capsys):
    with unchanged(work / "specs" / "tiny.yaml"), unchanged(work / "gpu.yaml"):
        r = run_cli(capsys, "check", "plan.yaml", "-o", "specs/tiny.yaml", "--force")
        assert r.exit_code == 2
        assert r.stderr == "error: --output specs/tiny.yaml is the model being checked by this plan; choose another file\n"
        r = run_cli(capsys, "check", "plan.yaml", "-f", "junit", "-o", "gpu.yaml", "--force")
        assert r.exit_code == 2
        assert r.stderr == "error: --output gpu.yaml is a file this plan reads; choose another file\n"


def test_check_of_the_shipped_example_keeps_it(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_bytes((REPO / "examples" / "plan.yaml").read_bytes())
    with unchanged(plan):
        r = run_cli(capsys, "check", str(plan), "-f", "junit", "-o", str(plan))
    assert r.exit_code == 2 and r.stderr == f"error: --output {plan} is the plan being checked; choose another file\n"


def test_estimate_svg_refuses_the_model_gpu_and_calibration(work, capsys):
    report = work / "cal.json"
    report.write_text(json.dumps({"kvplan_version": "x", "model": "tiny", "runs": [{"achieved_gbps": 500.0}]}))
    for path, args, what in [
        ("specs/tiny.yaml", ["specs/tiny.yaml"], "the model being estimated"),
        ("gpu.yaml", ["specs/tiny.yaml", "--gpu", "gpu.yaml"], "the --gpu file"),
        ("cal.json", ["specs/tiny.yaml", "--gpu", "gpu.yaml", "--calibration", "cal.json"], "the --calibration report"),
    ]:
        with unchanged(work / path):
            r = run_cli(capsys, "estimate", *args, "--svg", path, "--force")
            assert (r.exit_code, r.stdout) == (2, "")
            assert r.stderr == f"error: --svg {path} is {what}; choose another file\n"


def test_import_refuses_the_models_own_files(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    with unchanged(model / "config.json"):
        for source in (str(model / "config.json"), str(model)):
            r = run_cli(capsys, "import", source, "-o", str(model / "config.json"), "--force")
            assert r.exit_code == 2
            assert r.stderr == f"error: -o {model / 'config.json'} is the model being imported; choose another file\n"
    # a new file in the model's folder is fine
    r = run_cli(capsys, "import", str(model), "-o", str(model / "spec.yaml"))
    assert r.exit_code == 0, r.stderr


def test_import_without_force_keeps_its_old_rule_and_words(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    r = run_cli(capsys, "import", str(model), "-o", str(empty))  # even an empty file needs --force here
    assert r.exit_code == 2 and r.stderr == f"error: {empty} already exists; pass --force to overwrite it\n"


# ------------------------------------------------------------------ 1b: an existing file of another kind needs --force


def test_estimate_svg_keeps_a_yaml_the_user_wrote(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "myplan.yaml"
    mine.write_text("deployments: []  # mine\n")
    with unchanged(mine):
        r = run_cli(capsys, "estimate", "gemma-3-27b", "--gpu", "h200", "--svg", "myplan.yaml")
        assert (r.exit_code, r.stdout) == (2, "")
        assert r.stderr == (
            "error: --svg myplan.yaml already exists and is not an SVG image; choose another file, or pass --force to replace it\n"
        )
    r = run_cli(capsys, "estimate", "gemma-3-27b", "--gpu", "h200", "--svg", "myplan.yaml", "--force")
    assert r.exit_code == 0 and mine.read_text().startswith("<svg")


@pytest.mark.parametrize(
    "fmt, kind",
    [
        ("table", "a kvplan check table"),
        ("json", "a kvplan check JSON report"),
        ("junit", "a JUnit XML report (<testsuites>)"),
        ("markdown", "a kvplan check Markdown report"),
        ("github", "a file of GitHub workflow annotations"),
    ],
)
def test_check_output_keeps_a_file_the_user_wrote(work, capsys, fmt, kind):
    keep = work / "keep.txt"
    keep.write_text("notes I wrote\n")
    with unchanged(keep):
        r = run_cli(capsys, "check", "plan.yaml", "-f", fmt, "-o", "keep.txt")
        assert (r.exit_code, r.stdout) == (2, "")
        assert r.stderr == f"error: --output keep.txt already exists and is not {kind}; choose another file, or pass --force to replace it\n"
    r = run_cli(capsys, "check", "plan.yaml", "-f", fmt, "-o", "keep.txt", "--force")
    assert r.exit_code == 0, r.stderr
    assert keep.read_text() != "notes I wrote\n"


def test_one_format_does_not_replace_another_without_force(work, capsys):
    assert run_cli(capsys, "check", "plan.yaml", "-f", "json", "-o", "r.out").exit_code == 0
    with unchanged(work / "r.out"):
        r = run_cli(capsys, "check", "plan.yaml", "-f", "junit", "-o", "r.out")
        assert r.exit_code == 2
        assert "is not a JUnit XML report (<testsuites>)" in r.stderr


# ------------------------------------------------------------------ CI re-runs overwrite their own reports


@pytest.mark.parametrize("fmt", ["junit", "json", "markdown", "github", "table"])
def test_ci_rerun_replaces_its_own_check_report(work, capsys, fmt):
    for _ in range(2):
        r = run_cli(capsys, "check", "plan.yaml", "-f", fmt, "-o", "report.out")
        assert r.exit_code == 0, r.stderr
        assert r.stderr == "wrote report.out\n"
    assert sorted(os.listdir(work)) == ["gpu.yaml", "plan.yaml", "report.out", "specs"]  # no temporary file left


def test_ci_rerun_replaces_its_own_svg(tmp_path, capsys):
    svg = tmp_path / "plan.svg"
    for _ in range(2):
        r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--svg", str(svg))
        assert r.exit_code == 0, r.stderr
    assert svg.read_text().startswith("<svg")


def test_an_empty_file_and_a_link_to_a_report_are_replaced(work, capsys):
    Path("empty.xml").write_text("")  # e.g. made by mktemp in a CI step
    assert run_cli(capsys, "check", "plan.yaml", "-f", "junit", "-o", "empty.xml").exit_code == 0
    os.symlink("empty.xml", "latest.xml")
    assert run_cli(capsys, "check", "plan.yaml", "-f", "junit", "-o", "latest.xml").exit_code == 0
    assert os.path.islink("latest.xml")  # the link is kept; the report it names is replaced
    assert Path("empty.xml").read_text().startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites')


def test_a_device_is_never_replaced(work, capsys):
    r = run_cli(capsys, "check", "plan.yaml", "-o", "/dev/null", "--force")
    assert r.exit_code == 2 and r.stderr == "error: --output /dev/null is not a regular file; choose a file name\n"


# ------------------------------------------------------------------ 2, 3: unwritable, folders, files as folders


def test_unwritable_folders_exit_2_naming_the_flag(work, capsys):
    why = cannot_write_in("/sys")
    model = work / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    cases = [
        (["check", "plan.yaml", "-o", "/sys/x.xml"], "--output /sys/x.xml"),
        (["import", str(model), "-o", "/sys/q.yaml"], "-o /sys/q.yaml"),
        (["estimate", "llama-3.1-8b", "--gpu", "h100", "--svg", "/sys/p.svg"], "--svg /sys/p.svg"),
    ]
    for args, named in cases:
        r = run_cli(capsys, *args)
        assert (r.exit_code, r.stdout) == (2, ""), args
        assert r.stderr == f"error: {named}: cannot write in folder /sys ({why})\n"


def test_import_over_proc_version_with_force(tmp_path, capsys):
    if not os.path.isfile("/proc/version"):
        pytest.skip("no /proc/version here")
    why = cannot_write_in("/proc")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    r = run_cli(capsys, "import", str(model), "-o", "/proc/version", "--force")
    assert r.exit_code == 2 and r.stderr == f"error: -o /proc/version: cannot write in folder /proc ({why})\n"


def test_a_read_only_folder(work):
    """A folder without write permission, also as root: root writes anywhere while it holds
    CAP_DAC_OVERRIDE, so the command runs under `setpriv` (util-linux) without that
    capability (and without CAP_DAC_READ_SEARCH), and the folder's mode bits apply to it too."""
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    command = [sys.executable, "-m", "kvplan", "check", "plan.yaml", "-o", "locked/r.txt"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to test a read-only folder as root"
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        r = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=60)
    finally:
        locked.chmod(0o755)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"error: --output locked/r.txt: cannot write in folder {locked} (Permission denied)\n"
    assert os.listdir(locked) == []


def test_a_file_where_a_folder_should_be(work, capsys):
    keep = work / "keep.txt"
    keep.write_text("mine\n")
    with unchanged(keep):
        r = run_cli(capsys, "check", "plan.yaml", "-o", "keep.txt/x.xml")
        assert r.exit_code == 2 and r.stderr == f"error: --output keep.txt/x.xml: {keep} is a file, not a folder\n"
        r = run_cli(capsys, "estimate", "llama-3.1-8b", "--svg", "keep.txt/x.svg")
        assert r.exit_code == 2 and r.stderr == f"error: --svg keep.txt/x.svg: {keep} is a file, not a folder\n"


def test_a_late_write_error_is_one_message(tmp_path, monkeypatch):
    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(InputError) as exc:
        write_text_atomically(tmp_path / "r.xml", "<testsuites/>", "--output")
    assert exc.value.message == f"--output {tmp_path / 'r.xml'}: cannot be written (No space left on device)"
    assert os.listdir(tmp_path) == []  # the temporary file is removed


# ------------------------------------------------------------------ measure refuses before it runs


@pytest.fixture
def no_run(monkeypatch):
    """kvplan.measure.run replaced by a module whose use fails the test: nothing may be built or run."""
    def refuse(*_a, **_k):
        raise AssertionError("measure ran before its --json was checked")

    stub = types.ModuleType("kvplan.measure.run")
    stub.MeasureOptions = refuse
    stub.measure = refuse
    monkeypatch.setitem(sys.modules, "kvplan.measure.run", stub)


def test_measure_refuses_before_the_run(work, capsys, no_run):
    keep = work / "keep.txt"
    keep.write_text("mine\n")
    base = ["measure", "specs/tiny.yaml", "--layers", "1", "--context", "64", "--device", "cpu"]
    cases = [
        (["--json", str(work)], f"error: --json {work}: is a folder; give a file name\n"),
        (["--json", "keep.txt"], "error: --json keep.txt already exists and is not a kvplan measure JSON report; "
                                 "choose another file, or pass --force to replace it\n"),
        (["--json", "keep.txt/x.json"], f"error: --json keep.txt/x.json: {keep} is a file, not a folder\n"),
        (["--json", "specs/tiny.yaml", "--force"], "error: --json specs/tiny.yaml is the model being measured; choose another file\n"),
    ]
    with unchanged(keep), unchanged(work / "specs" / "tiny.yaml"):
        for args, message in cases:
            r = run_cli(capsys, *base, *args)
            assert (r.exit_code, r.stdout, r.stderr) == (2, "", message)


def test_measure_refuses_an_unwritable_folder_before_the_run(work, capsys, no_run):
    why = cannot_write_in("/sys")
    r = run_cli(capsys, "measure", "llama-3.1-8b", "--layers", "1", "--context", "64", "--device", "cpu", "--json", "/sys/x.json")
    assert (r.exit_code, r.stderr) == (2, f"error: --json /sys/x.json: cannot write in folder /sys ({why})\n")


def test_ci_rerun_replaces_its_own_measure_report(work, capsys, monkeypatch):
    pytest.importorskip("torch")
    from kvplan.measure import run as measure_run

    monkeypatch.setitem(measure_run.COPY_BUFFER_BYTES, "cpu", 8 << 20)  # a small copy probe: well under a second
    for _ in range(2):
        r = run_cli(capsys, "measure", "specs/tiny.yaml", "--context", "8", "--decode-steps", "2", "--warmup-steps", "1",
                    "--device", "cpu", "--json", "m.json")
        assert r.exit_code == 0, r.stderr
    assert json.loads(Path("m.json").read_text())["model"] == "tiny-out"


# ------------------------------------------------------------------ 4: --svg without --gpu


def test_svg_without_gpu_saves_the_table(tmp_path, capsys):
    svg = tmp_path / "s1.svg"
    r = run_cli(capsys, "estimate", "gemma-3-27b", "--svg", str(svg))
    assert r.exit_code == 0 and r.stderr == f"saved {svg}\n"
    text = svg.read_text()
    assert text.startswith("<svg") and "gemma-3-27b" in text.replace("&#160;", " ")


def test_svg_under_an_engine_profile_saves_the_table(tmp_path, capsys):
    svg = tmp_path / "e.svg"
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", "llama.cpp", "--svg", str(svg))
    assert r.exit_code == 0 and r.stderr == f"saved {svg}\n" and svg.read_text().startswith("<svg")


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown"])
def test_svg_needs_the_table_format(tmp_path, capsys, fmt):
    r = run_cli(capsys, "estimate", "gemma-3-27b", "--gpu", "h200", "-f", fmt, "--svg", str(tmp_path / "s.svg"))
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == f"error: --svg saves the table; it cannot be used with --format {fmt} (drop one of them)\n"
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ the rule per kind


@pytest.mark.parametrize(
    "kind, text, ours",
    [
        (outputs.SVG, '<svg class="rich-terminal" viewBox="0 0 10 10">', True),
        (outputs.SVG, '<?xml version="1.0"?>\n<!-- drawn -->\n<svg xmlns="http://www.w3.org/2000/svg"/>', True),
        (outputs.SVG, '<?xml version="1.0"?>\n<testsuites/>', False),
        (outputs.SVG, "name: my-plan\n", False),
        (outputs.JUNIT, '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="kvplan check">', True),
        (outputs.JUNIT, "<!-- from jest -->\n<testsuites>\n</testsuites>", True),
        (outputs.JUNIT, '<?xml version="1.0"?>\n<testsuite name="one">', False),
        (outputs.JUNIT, '<svg class="rich-terminal">', False),
        (outputs.CHECK_JSON, '{"plan": "p.yaml", "passed": true, "summary": {}, "deployments": []}', True),
        (outputs.CHECK_JSON, '{"plan": "p.yaml"}', False),
        (outputs.CHECK_JSON, "[1, 2]", False),
        (outputs.MEASURE_JSON, '{"kvplan_version": "0.1", "model": "x", "runs": []}', True),
        (outputs.MEASURE_JSON, '{"plan": "p.yaml", "passed": true, "summary": {}, "deployments": []}', False),
        (outputs.MEASURE_JSON, "not json", False),
        (outputs.CHECK_MARKDOWN, "### ✅ kvplan check `p.yaml`: 1 deployment, 1 budget: all pass\n\n| a |", True),
        (outputs.CHECK_MARKDOWN, "# My notes\n", False),
        (outputs.CHECK_GITHUB, "::error file=p.yaml,line=3::x\n::notice file=p.yaml::kvplan check: ...\n", True),
        (outputs.CHECK_GITHUB, "::notice::x\nplain text\n", False),
        (outputs.CHECK_TABLE, "kvplan check p.yaml          \n┏━━━", True),
        (outputs.CHECK_TABLE, "keep me\n", False),
    ],
)
def test_what_each_kind_replaces(tmp_path, kind, text, ours):
    existing = tmp_path / "existing"
    existing.write_text(text)
    if ours:
        outputs.check_output(existing, "--output", kind)
    else:
        with pytest.raises(InputError, match="already exists and is not"):
            outputs.check_output(existing, "--output", kind)
    outputs.check_output(existing, "--output", kind, force=True)  # --force replaces any regular file


# ------------------------------------------------------------------ torch stays out


def test_writers_of_estimate_and_check_never_import_torch(work):
    probe = (
        "import sys\nfrom kvplan.cli.app import main\n"
        "for argv in (['estimate', 'llama-3.1-8b', '--gpu', 'h100-sxm', '--svg', 'p.svg'],\n"
        "             ['check', 'plan.yaml', '-f', 'junit', '-o', 'r.xml'], ['check', 'plan.yaml', '-o', 'plan.yaml']):\n"
        "    sys.argv = ['kvplan', *argv]\n"
        "    try:\n        main()\n    except SystemExit as exc:\n        assert exc.code in (0, 2, None), exc.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=work)
    assert done.returncode == 0, done.stderr


def test_a_catalog_models_own_spec_is_an_input(capsys, tmp_path):
    from kvplan.sources.catalog import SPECS_DIR

    spec = SPECS_DIR / "llama-3.1-8b.yaml"
    with unchanged(spec):
        r = run_cli(capsys, "estimate", "llama-3.1-8b", "--svg", str(spec), "--force")
    assert r.exit_code == 2 and r.stderr == f"error: --svg {spec} is the model being estimated; choose another file\n"
