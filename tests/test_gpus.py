"""The GPU catalog, user GPUs, flag overrides and `kvplan gpus`.

Golden values are entered by hand from the runtime readings and datasheets named in
kvplan/data/gpus.yaml (nvidia-smi MiB x 2**20, rocm-smi bytes), never computed by the code.
"""

from __future__ import annotations

import csv
import io
import json
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cli_helpers import run_cli
from kvplan.errors import InputError
from kvplan.plan.gpus import GPU, GPU_CATALOG_PATH, custom_gpu, gpu_from_options, load_gpu_catalog, resolve_gpu

CATALOG = load_gpu_catalog()

ISSUE_NAMES = {
    "v100-16gb", "v100-32gb", "t4", "a10g", "a100-40gb-pcie", "a100-40gb-sxm", "a100-80gb-pcie",
    "a100-80gb-sxm", "l4", "l40s", "rtx-3090", "rtx-4090", "rtx-5090", "h100-pcie", "h100-sxm",
    "h100-nvl", "h200", "gh200", "b200", "b300", "mi250x", "mi300x", "mi325x", "mi355x", "gaudi3",
    "tpu-v5e",
}  # fmt: skip

# nvidia-smi "Total" MiB as printed by current drivers (public logs; see each entry's sources).
NVML_MIB = {
    "v100-16gb": 16384,
    "v100-32gb": 32768,
    "t4": 15360,
    "a10g": 23028,
    "a100-40gb-pcie": 40960,
    "a100-40gb-sxm": 40960,
    "a100-80gb-pcie": 81920,
    "a100-80gb-sxm": 81920,
    "l4": 23034,
    "l40s": 46068,
    "rtx-3090": 24576,
    "rtx-4090": 24564,
    "rtx-5090": 32607,
    "h100-pcie": 81559,
    "h100-sxm": 81559,
    "h100-nvl": 95830,
    "h200": 143771,
    "gh200": 97871,
    "b200": 183359,
    "b300": 275040,
}

# Non-NVIDIA runtimes, in bytes as their tools print them.
OTHER_BYTES = {
    "mi300x": 206_141_652_992,  # rocm-smi "VRAM Total Memory (B)"
    "mi355x": 309_220_868_096,  # rocm-smi, MI355X
    "mi250x": 68_702_699_520,  # HIP "Total GPU memory", one GCD
    "mi325x": 256 * 2**30 - 16 * 2**20,  # derived: AMD's "GiB - 16 MiB" rule (not observed)
    "gaudi3": 131072 * 2**20,  # hl-smi 131072 MiB
    "tpu-v5e": 16 * 2**30,  # XLA memory size 17179869184
}

# Peak GB/s, dense bf16 and fp8 TFLOPS, checked against datasheet tables (sparse figures halved).
DATASHEET = {
    "h100-sxm": (3350, 989, 1979),
    "h100-pcie": (2000, 756, 1513),
    "h200": (4800, 989, 1979),
    "b200": (8000, 2250, 4500),
    "mi300x": (5300, 1307.4, 2614.9),
    "a100-80gb-sxm": (2039, 312, None),
}


# ------------------------------------------------------------------ catalog


def test_catalog_has_every_gpu_the_issue_names():
    assert ISSUE_NAMES <= set(CATALOG)
    assert len(CATALOG) >= 25


def test_catalog_ships_inside_the_package():
    import kvplan

    assert GPU_CATALOG_PATH.is_file()
    assert Path(kvplan.__file__).parent in GPU_CATALOG_PATH.parents


@pytest.mark.parametrize("name,mib", sorted(NVML_MIB.items()))
def test_nvml_memory_is_exact(name, mib):
    assert CATALOG[name].memory_bytes == mib * 2**20
    assert CATALOG[name].memory_source.startswith("nvml:")


def test_h100_reports_81559_mib_not_80_gb():
    h100 = CATALOG["h100-sxm"]
    assert h100.memory_bytes == 85_520_809_984
    assert h100.memory_bytes != 80 * 10**9 and h100.memory_bytes != 80 * 2**30


@pytest.mark.parametrize("name,nbytes", sorted(OTHER_BYTES.items()))
def test_other_runtimes_memory_is_exact(name, nbytes):
    assert CATALOG[name].memory_bytes == nbytes


@pytest.mark.parametrize("name,figures", sorted(DATASHEET.items()))
def test_datasheet_figures(name, figures):
    gpu = CATALOG[name]
    assert (gpu.memory_bandwidth_gbps, gpu.bf16_tflops, gpu.fp8_tflops) == figures


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_entry_is_complete_and_consistent(name):
    gpu = CATALOG[name]
    assert gpu.sources and all(s.strip() for s in gpu.sources)
    assert gpu.usd_per_hour > 0 and gpu.usd_per_hour_source
    assert gpu.bf16_tflops > 0 and gpu.memory_bandwidth_gbps > 0
    if gpu.fp8_tflops is not None:
        assert gpu.fp8_tflops >= gpu.bf16_tflops  # no part runs FP8 slower than BF16
    if gpu.memory_source.startswith("nvml:"):
        assert gpu.memory_bytes % 2**20 == 0  # nvidia-smi prints whole MiB
        assert gpu.nvml_name
    if gpu.usd_per_hour_source.startswith("estimate"):
        assert gpu.confidence != "high"
    # The runtime figure sits near the marketed one: catches a digit dropped in the YAML.
    marketed_gb = int(re.match(r"(\d+) GB", gpu.memory_label).group(1))
    assert 0.9 * marketed_gb * 10**9 <= gpu.memory_bytes <= 1.1 * marketed_gb * 2**30


def test_no_bf16_tensor_cores_is_said_in_notes():
    for name in ("v100-16gb", "v100-32gb", "t4"):
        assert "FP16" in CATALOG[name].notes


# ------------------------------------------------------------------ resolving


@pytest.mark.parametrize(
    "ref,name",
    [
        ("h100", "h100-sxm"),
        ("H100", "h100-sxm"),
        ("h100-sxm", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),  # what NVML / torch report
        ("Tesla T4", "t4"),
        ("v5e", "tpu-v5e"),
        ("  B200 ", "b200"),
    ],
)
def test_resolve_names_aliases_and_nvml_names(ref, name):
    assert resolve_gpu(ref).name == name


@pytest.mark.parametrize(
    "typo,suggestion",
    [("h10", "'h100'"), ("mi300", "'mi300x'"), ("a100", "'a100-80gb'"), ("rtx4090", "'rtx-4090'")],
)
def test_unknown_gpu_gets_did_you_mean(typo, suggestion):
    with pytest.raises(InputError) as err:
        resolve_gpu(typo)
    assert err.value.message.startswith(f"unknown GPU {typo!r}; did you mean ")
    assert suggestion in err.value.message
    assert "`kvplan gpus` lists the catalog" in err.value.message


def test_missing_gpu_file():
    with pytest.raises(InputError, match=r"^nope/gpu\.yaml: no such GPU file$"):
        resolve_gpu("nope/gpu.yaml")


def test_a_folder_is_not_a_gpu_file(tmp_path, capsys, monkeypatch):
    r = run_cli(capsys, "gpus", str(tmp_path))
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {tmp_path}: is a folder, not a GPU YAML file\n")
    monkeypatch.chdir(tmp_path.parent)
    r = run_cli(capsys, "gpus", tmp_path.name)
    assert (r.exit_code, r.stderr) == (
        2, f"error: {tmp_path.name}: is a folder, not a GPU name or GPU YAML file (`kvplan gpus` lists the catalog)\n"
    )


# ------------------------------------------------------------------ user GPU files

USER_GPU = """\
name: my-card
display_name: My Card 48GB
vendor: nvidia
memory_bytes: 46068MiB
memory_bandwidth_gbps: 960
bf16_tflops: 181
fp8_tflops: 362
usd_per_hour: 0.75
memory_source: "nvml: nvidia-smi shows 46068MiB on our box"
sources: [our own nvidia-smi]
confidence: medium
"""


def test_user_gpu_file_loads(tmp_path):
    path = tmp_path / "card.yaml"
    path.write_text(USER_GPU)
    gpu = resolve_gpu(str(path))
    assert gpu.name == "my-card"
    assert gpu.memory_bytes == 46068 * 1048576
    assert gpu.memory_bandwidth_gbps == 960 and gpu.usd_per_hour == 0.75


def test_user_gpu_file_with_integer_bytes(tmp_path):
    path = tmp_path / "card.yml"
    path.write_text(USER_GPU.replace("memory_bytes: 46068MiB", "memory_bytes: 48305799168"))
    assert resolve_gpu(str(path)).memory_bytes == 48_305_799_168


@pytest.mark.parametrize(
    "replace,expected",
    [
        (("vendor: nvidia", "vendor: nvidia\nmemroy_bytes: 1"), ":4: memroy_bytes: unknown field; did you mean 'memory_bytes'?"),
        (("vendor: nvidia", "vendor: nvidia\nbf16_tflop: 1"), ":4: bf16_tflop: unknown field; did you mean 'bf16_tflops'?"),
        (("memory_bytes: 46068MiB", "memory_bytes: lots"), ":4: memory_bytes: 'lots' is not a size"),
        (("memory_bytes: 46068MiB", "memory_bytes: -5"), ":4: memory_bytes: Input should be greater than 0"),
        (("usd_per_hour: 0.75", "usd_per_hour: -1"), ":8: usd_per_hour: Input should be greater than or equal to 0"),
        (("confidence: medium", "confidence: sure"), ":11: confidence: Input should be 'high', 'medium' or 'low'"),
        (("memory_bandwidth_gbps: 960\n", ""), ": memory_bandwidth_gbps: required field is missing"),
        (("bf16_tflops: 181", "bf16_tflops: [181"), ":7: malformed YAML"),
        (("memory_bandwidth_gbps: 960", "memory_bandwidth_gbps: .inf"), ":5: memory_bandwidth_gbps: Input should be a finite number"),
    ],
)
def test_malformed_user_gpu_names_file_and_line(tmp_path, replace, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(USER_GPU.replace(*replace))
    with pytest.raises(InputError) as err:
        resolve_gpu(str(path))
    assert err.value.message.startswith(str(path))
    assert expected in err.value.message


@pytest.mark.parametrize(
    "memory, message",
    [
        ("45", "45: a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean 45GiB?"),
        ("'45'", "45: a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean 45GiB?"),
        ("46068", "46068: a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean 46068MiB?"),
        ("900MB", "900MB: 858.31 MiB is less than 1 GiB, the least GPU memory kvplan plans for; "
                  "give the total the runtime reports, e.g. 24GiB"),
    ],
)
def test_gpu_file_memory_below_1_gib_is_refused_with_a_hint(tmp_path, capsys, memory, message):
    path = tmp_path / "card.yaml"
    path.write_text(USER_GPU.replace("memory_bytes: 46068MiB", f"memory_bytes: {memory}"))
    r = run_cli(capsys, "gpus", str(path))
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {path}:4: memory_bytes: {message}\n")


@pytest.mark.parametrize("flag", ["--gpu-memory"])
def test_gpu_memory_flag_below_1_gib_is_refused_with_a_hint(capsys, flag):
    r = run_cli(capsys, "gpus", "h100", flag, "80")
    assert (r.exit_code, r.stdout, r.stderr) == (
        2, "", "error: --gpu-memory 80: a bare number is bytes, and GPU memory must be at least 1 GiB; did you mean 80GiB?\n"
    )


def test_a_gpu_file_field_given_twice_is_an_error(tmp_path, capsys):
    path = tmp_path / "card.yaml"
    path.write_text(USER_GPU + "memory_bytes: 80GiB\n")
    r = run_cli(capsys, "gpus", str(path))
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {path}:12: duplicate key 'memory_bytes' (first at line 4)\n")


def test_malformed_user_gpu_via_cli_exits_2_with_one_clear_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(USER_GPU.replace("confidence: medium", "confidence: sure"))
    r = run_cli(capsys, "gpus", str(path))
    assert r.exit_code == 2
    assert r.stderr == f"error: {path}:11: confidence: Input should be 'high', 'medium' or 'low'\n"


def test_broken_catalog_names_file_and_line(tmp_path):
    entry = textwrap.indent(USER_GPU, "    ")[4:]
    catalog = tmp_path / "gpus.yaml"
    catalog.write_text(
        "schema_version: 1\ngpus:\n  - " + entry + "  - " + entry.replace("name: my-card", "name: other").replace(
            "bf16_tflops: 181", "bf16_tflops: fast"
        )
    )
    with pytest.raises(InputError) as err:
        load_gpu_catalog(catalog)
    assert err.value.message == (
        f"{catalog}:19: gpus.1.bf16_tflops: Input should be a valid number, unable to parse string as a number"
    )


def test_catalog_refuses_a_name_used_twice(tmp_path):
    entry = textwrap.indent(USER_GPU, "    ")[4:]
    catalog = tmp_path / "gpus.yaml"
    catalog.write_text("gpus:\n  - " + entry + "  - " + entry.replace("name: my-card", "name: other\n    aliases: [my-card]"))
    with pytest.raises(InputError) as err:
        load_gpu_catalog(catalog)
    assert err.value.message == f"{catalog}:14: gpus.1.aliases.0: 'my-card' is already used by 'my-card'"


def test_gpu_is_frozen_and_strict():
    h100 = CATALOG["h100-sxm"]
    with pytest.raises(ValidationError):
        h100.memory_bytes = 1
    with pytest.raises(ValidationError, match="extra"):
        GPU.model_validate({**h100.model_dump(), "colour": "green"})
    with pytest.raises(ValidationError, match="true/false"):
        GPU.model_validate({**h100.model_dump(), "memory_bytes": True})


# ------------------------------------------------------------------ overrides


def test_custom_gpu_overrides_make_a_new_object():
    h100 = CATALOG["h100-sxm"]
    out = custom_gpu(h100, memory_bytes=80 * 10**9, bandwidth_gbps=None, usd_per_hour=1.25)
    assert out is not h100
    assert out.memory_bytes == 80_000_000_000 and out.memory_source == "--gpu-memory"
    assert out.usd_per_hour == 1.25 and out.usd_per_hour_source == "--usd-per-hour"
    assert out.memory_bandwidth_gbps == 3350 and out.bf16_tflops == 989
    assert "--gpu-memory" in out.display_name and "--usd-per-hour" in out.display_name
    assert h100.memory_bytes == 81559 * 2**20 and h100.usd_per_hour == 2.99  # untouched
    assert load_gpu_catalog()["h100-sxm"] == h100


def test_custom_gpu_without_overrides_is_the_base():
    assert custom_gpu(CATALOG["l4"], None, None, None) is CATALOG["l4"]


def test_bandwidth_override_drops_the_measured_copy_figure():
    out = custom_gpu(CATALOG["h100-sxm"], None, bandwidth_gbps=2000, usd_per_hour=None, bf16_tflops=500)
    assert out.memory_bandwidth_gbps == 2000 and out.bf16_tflops == 500
    assert out.achieved_copy_gbps is None and out.achieved_copy_source is None


def test_custom_gpu_from_scratch():
    out = custom_gpu(None, memory_bytes=24 * 2**30, bandwidth_gbps=1000, usd_per_hour=None)
    assert (out.name, out.memory_bytes, out.memory_bandwidth_gbps) == ("custom", 25_769_803_776, 1000)
    assert out.usd_per_hour == 0 and out.bf16_tflops == 0 and out.confidence == "low"
    assert out.notes == "not given, taken as 0: bf16 TFLOPS, price"


@pytest.mark.parametrize(
    "memory,bandwidth,missing",
    [
        (None, 1000.0, "needs --gpu-memory;"),
        (24 * 2**30, None, "needs --gpu-bandwidth;"),
        (None, None, "needs --gpu-memory and --gpu-bandwidth;"),
    ],
)
def test_custom_gpu_from_scratch_names_the_missing_flag(memory, bandwidth, missing):
    with pytest.raises(InputError, match=missing):
        custom_gpu(None, memory, bandwidth, 1.0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(memory_bytes=0), "--gpu-memory 0 must be more than 0"),
        (dict(bandwidth_gbps=-5.0), "--gpu-bandwidth -5.0 must be more than 0"),
        (dict(usd_per_hour=-0.5), "--usd-per-hour -0.5 must be 0 or more"),
        (dict(bandwidth_gbps=float("nan")), "--gpu-bandwidth nan is not a finite number"),
    ],
)
def test_bad_override_values_name_the_flag(kwargs, message):
    args = dict(memory_bytes=None, bandwidth_gbps=None, usd_per_hour=None) | kwargs
    with pytest.raises(InputError) as err:
        custom_gpu(CATALOG["a10g"], **args)
    assert err.value.message == message


def test_gpu_from_options_parses_sizes_with_units():
    assert gpu_from_options(None, None, None, None) is None
    assert gpu_from_options("h100", "80GB", None, None).memory_bytes == 80 * 10**9
    assert gpu_from_options(None, "24GiB", 936.0, 0.3).memory_bytes == 24 * 2**30
    with pytest.raises(InputError, match=r"^--gpu-memory 'lots' is not a size"):
        gpu_from_options("h100", "lots", None, None)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(CATALOG)),
    memory=st.none() | st.integers(2**30, 2**42),  # GPU memory starts at 1 GiB
    bandwidth=st.none() | st.floats(1, 20_000),
    price=st.none() | st.floats(0, 100),
    tflops=st.none() | st.floats(1, 10_000),
)
def test_overrides_set_exactly_what_was_given(name, memory, bandwidth, price, tflops):
    base = CATALOG[name]
    out = custom_gpu(base, memory, bandwidth, price, tflops)
    assert out.memory_bytes == (base.memory_bytes if memory is None else memory)
    assert out.memory_bandwidth_gbps == (base.memory_bandwidth_gbps if bandwidth is None else bandwidth)
    assert out.usd_per_hour == (base.usd_per_hour if price is None else price)
    assert out.bf16_tflops == (base.bf16_tflops if tflops is None else tflops)
    assert (out.name, out.vendor, out.fp8_tflops, out.sources) == (base.name, base.vendor, base.fp8_tflops, base.sources)
    assert CATALOG[name] is base and load_gpu_catalog()[name] == base


# ------------------------------------------------------------------ CLI


def test_cli_typo_exits_2_with_did_you_mean(capsys):
    r = run_cli(capsys, "gpus", "h10")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.startswith("error: unknown GPU 'h10'; did you mean 'h100'")
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_cli_json_lists_the_catalog_and_parses_back(capsys):
    r = run_cli(capsys, "gpus", "--format", "json")
    assert r.exit_code == 0, r.stderr
    records = json.loads(r.stdout)
    assert {x["name"] for x in records} == set(CATALOG)
    h100 = next(x for x in records if x["name"] == "h100-sxm")
    assert h100["memory_bytes"] == 81559 * 2**20
    assert h100["fp8_tflops"] == 1979 and h100["aliases"] == ["h100", "h100-80gb", "h100-sxm5"]
    assert h100.pop("schema_version") == 1  # every JSON object kvplan writes says its schema (kvplan.schema)
    assert GPU.model_validate(h100) == CATALOG["h100-sxm"]  # the rest round-trips to the same GPU
    t4 = next(x for x in records if x["name"] == "t4")
    assert t4["fp8_tflops"] is None


def test_cli_csv_parses_back(capsys):
    r = run_cli(capsys, "gpus", "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == len(CATALOG)
    b200 = next(x for x in rows if x["name"] == "b200")
    assert int(b200["memory_bytes"]) == 183359 * 2**20
    assert b200["fp8_tflops"] == "4500.0" and b200["sources"].count("; ") == len(CATALOG["b200"].sources) - 1


def test_cli_table_and_markdown(capsys):
    r = run_cli(capsys, "gpus")
    assert r.exit_code == 0 and "h100-sxm" in r.stdout and "79.65 GiB" in r.stdout
    r = run_cli(capsys, "gpus", "-f", "markdown", "--bytes")
    assert "| h100-sxm | 79.65 GiB (85,520,809,984 B) | 3,350 | 989 | 1,979 | 2.99 | high |" in r.stdout


def test_cli_shows_one_gpu_with_its_sources(capsys):
    r = run_cli(capsys, "gpus", "H200", "-f", "markdown")
    assert r.exit_code == 0, r.stderr
    assert "| memory_bytes | 150,754,820,096 B = 140.40 GiB = 143,771 MiB |" in r.stdout
    assert "nvidia-smi logs: 'NVIDIA H200 ... 143771MiB'" in r.stdout


def test_cli_overrides_on_a_catalog_gpu(capsys):
    r = run_cli(capsys, "gpus", "h100", "--usd-per-hour", "1.25", "--gpu-memory", "80GB", "-f", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["usd_per_hour"] == 1.25 and data["memory_bytes"] == 80_000_000_000
    assert data["memory_bandwidth_gbps"] == 3350


def test_cli_user_gpu_file(tmp_path, capsys):
    path = tmp_path / "card.yaml"
    path.write_text(USER_GPU)
    r = run_cli(capsys, "gpus", str(path), "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["memory_bytes"] == 48_305_799_168


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gpu-memory", "24GiB"], "error: a GPU not in the catalog needs --gpu-bandwidth;"),
        (["--gpu-memory", "lots", "--gpu-bandwidth", "5"], "error: --gpu-memory 'lots' is not a size"),
        (["t4", "--gpu-bandwidth", "0"], "error: --gpu-bandwidth 0.0 must be more than 0"),
    ],
)
def test_cli_bad_flags_exit_2(capsys, args, message):
    r = run_cli(capsys, "gpus", *args)
    assert r.exit_code == 2
    assert r.stderr.startswith(message)
