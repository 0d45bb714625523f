"""`estimate --emit vllm|sglang|llama.cpp`: the launch command that realises the plan (goldens per engine), and
what it refuses (named). Flag spellings as each engine's source names them: vLLM 0.32 (vllm/engine/arg_utils.py,
vllm/config/cache.py CacheDType / MambaDType, config/model.py ModelDType), SGLang's server_args.py, llama.cpp's
common/arg.cpp (the vendored copy in llama-cpp-python 0.3.36)."""

from __future__ import annotations

import pytest

from cli_helpers import run_cli
from test_import_gguf import EMBED, llama_metadata, write_gguf


def emitted(capsys, *args: str) -> str:
    r = run_cli(capsys, "estimate", *args)
    assert r.exit_code == 0, r.stderr
    return r.stdout


def refused(capsys, *args: str) -> str:
    r = run_cli(capsys, "estimate", *args)
    assert r.exit_code == 2 and r.stdout == "" and "Traceback" not in r.stderr, (r.exit_code, r.stdout, r.stderr)
    return r.stderr


# ------------------------------------------------------------------ vLLM


def test_vllm_default_plan_sets_only_its_context(capsys):
    # the catalog spec's source is huggingface.co/meta-llama/Llama-3.1-8B: the checkpoint vLLM loads
    assert emitted(capsys, "llama-3.1-8b", "--emit", "vllm") == "vllm serve meta-llama/Llama-3.1-8B --max-model-len 8192\n"


def test_vllm_every_flag_the_plan_sets(capsys):
    out = emitted(capsys, "llama-3.1-8b", "-c", "32k", "-b", "64", "--tp", "2", "--pp", "2", "--kv-cache-dtype",
                  "fp8_e5m2", "--block-size", "32", "--gpu", "h100-sxm", "--gpu-memory-utilization", "0.95",
                  "--max-num-batched-tokens", "4096", "--dtype", "fp16", "--emit", "vllm")
    assert out == ("vllm serve meta-llama/Llama-3.1-8B --max-model-len 32768 --max-num-seqs 64 "
                   "--gpu-memory-utilization 0.95 --kv-cache-dtype fp8_e5m2 --tensor-parallel-size 2 "
                   "--pipeline-parallel-size 2 --block-size 32 --max-num-batched-tokens 4096 --dtype float16\n")


def test_vllm_state_dtypes_and_a_quoted_path(capsys, tmp_path):
    out = emitted(capsys, "jamba-v0.1", "--state-dtype", "bf16/fp32", "--emit", "vllm")
    assert out == ("vllm serve ai21labs/Jamba-v0.1 --max-model-len 8192 --mamba-cache-dtype bfloat16 "
                   "--mamba-ssm-cache-dtype float32\n")
    folder = tmp_path / "my model"
    folder.mkdir()
    (folder / "config.json").write_text((__import__("pathlib").Path(__file__).parent / "fixtures" / "vllm_logs" /
                                         "tiny-mamba2" / "config.json").read_text())
    out = emitted(capsys, str(folder / "config.json"), "-c", "512", "--emit", "vllm")
    assert out == f"vllm serve '{folder}' --max-model-len 512\n"  # a config.json: vLLM loads its folder


def test_vllm_refusals_are_named(capsys):
    assert "--dtype fp8 sizes quantised weights" in refused(capsys, "llama-3.1-8b", "--dtype", "fp8", "--emit", "vllm")
    assert "invalid choice: 'q8_0'" in refused(capsys, "llama-3.1-8b", "--kv-cache-dtype", "q8_0", "--emit", "vllm")
    err = refused(capsys, "llama-3.1-8b", "-c", "200k", "--emit", "vllm")
    assert "--emit vllm: vllm would refuse this plan: Value error, User-specified max_model_len (204800)" in err
    assert "--context: --emit writes one plan's command" in refused(capsys, "llama-3.1-8b", "-c", "1k,2k", "--emit", "vllm")
    err = refused(capsys, "llama-3.1-8b", "--emit", "sglang")
    assert "--emit sglang writes the command of an --engine sglang plan; this plan's engine is vllm" in err
    assert "--emit 'tgi' is not one of vllm, sglang, llama.cpp" in refused(capsys, "llama-3.1-8b", "--emit", "tgi")


# ------------------------------------------------------------------ SGLang


def test_sglang(capsys):
    out = emitted(capsys, "llama-3.1-8b", "--engine", "sglang", "-c", "32k", "-b", "16", "--tp", "2",
                  "--kv-cache-dtype", "fp8", "--mem-fraction-static", "0.85", "--page-size", "16", "--emit", "sglang")
    # kvplan's fp8 is e4m3 (vLLM's fp8); SGLang names it fp8_e4m3 (kvplan.engines.sglang.kv_dtype)
    assert out == ("python -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B --context-length 32768 "
                   "--max-running-requests 16 --kv-cache-dtype fp8_e4m3 --tp-size 2 --mem-fraction-static 0.85 "
                   "--page-size 16\n")
    err = refused(capsys, "llama-3.1-8b", "--engine", "sglang", "--state-dtype", "fp32", "--emit", "sglang")
    assert "--emit sglang: --state-dtype has no SGLang flag kvplan can write" in err


# ------------------------------------------------------------------ llama-server


def test_llama_server_ctx_is_all_slots_together(capsys, tmp_path):
    # 2 heads of 64 / 2 = 32: q8_0's 32-value blocks divide the head (llama.cpp refuses otherwise; tested below)
    gguf = write_gguf(tmp_path / "tiny model.gguf", llama_metadata(heads=2, kv=2), EMBED)
    # -c is n_ctx of all slots: llama-context.cpp n_ctx_seq = n_ctx / n_seq_max, so 2,048 tokens x 4 slots = 8,192;
    # --parallel always (llama-server's default is auto: 4 slots in one unified pool, tools/server/server.cpp);
    # -ctk / -ctv only away from f16 (common.h's default); -ngl 999: every layer on the GPU, as kvplan sizes it
    out = emitted(capsys, str(gguf), "--engine", "llama.cpp", "-c", "2048", "-b", "4", "--kv-cache-dtype", "q8_0",
                  "--flash-attn", "on", "--emit", "llama.cpp")
    assert out == (f"llama-server -m '{gguf}' -c 8192 --parallel 4 -ctk q8_0 -ctv q8_0 --flash-attn on -ngl 999\n")
    out = emitted(capsys, str(gguf), "--engine", "llama.cpp", "-c", "2048", "--parallel", "2", "--ctx-size", "3000",
                  "--kv-unified", "--emit", "llama.cpp")
    assert out == f"llama-server -m '{gguf}' -c 3000 --parallel 2 --kv-unified -ngl 999\n"
    narrow = write_gguf(tmp_path / "narrow.gguf", llama_metadata(), EMBED)  # 8 heads of 8
    err = refused(capsys, str(narrow), "--engine", "llama.cpp", "--kv-cache-dtype", "q8_0", "--emit", "llama.cpp")
    assert "--emit llama.cpp: llama.cpp would refuse this plan: llama_init_from_model: K cache type q8_0" in err
    err = refused(capsys, "llama-3.1-8b", "--engine", "llama.cpp", "--emit", "llama.cpp")
    assert "llama-server loads a GGUF file (-m FILE.gguf); 'llama-3.1-8b' is not one" in err


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llama.cpp"])
def test_machine_and_workload_flags_are_not_engine_flags(capsys, tmp_path, engine):
    model = "llama-3.1-8b" if engine != "llama.cpp" else str(write_gguf(tmp_path / "m.gguf", llama_metadata(), EMBED))
    # llama.cpp: the file's context_length (4096) caps each llama-server slot (server-context.cpp n_ctx_slot()), so
    # the default --context 8192 is refused there; plan 4096
    base = [model, "--engine", engine, "--emit", engine] + (["--context", "4096"] if engine == "llama.cpp" else [])
    plain = emitted(capsys, *base)
    extra = ["--gpu", "h100-sxm", "--usd-per-hour", "2", "--activation-memory", "1GiB", "--prompt-tokens", "1000"]
    assert emitted(capsys, *base, *extra) == plain


def test_max_num_seqs_given_is_emitted_instead_of_the_batch(capsys):
    """--max-num-seqs is vLLM's own flag: emitted as given; the plan's --batch then does not replace it."""
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "8k", "-b", "32", "--max-num-seqs", "64",
                "--emit", "vllm")
    assert (r.exit_code, r.stdout) == (0, "vllm serve meta-llama/Llama-3.1-8B --max-model-len 8192 --max-num-seqs 64\n")
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-c", "8k", "-b", "32", "--emit", "vllm")
    assert (r.exit_code, r.stdout) == (0, "vllm serve meta-llama/Llama-3.1-8B --max-model-len 8192 --max-num-seqs 32\n")
