"""`kvplan explain`: vLLM start-up logs parsed (goldens read by hand from the fixtures' text), the budget
reconstructed (arithmetic worked by hand), the calibration it saves, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvplan.errors import InputError
from kvplan.plan.explain import GIB, explain, logged_terms
from kvplan.sources.catalog import resolve_spec
from kvplan.sources.vllm_log import parse_vllm_log, read_vllm_log

from cli_helpers import run_cli as _run


def run_cli(capsys, args):
    r = _run(capsys, *args)
    return r.exit_code, r.stdout, r.stderr

LOGS = Path(__file__).parent / "fixtures" / "vllm_logs"
TINY_MAMBA2 = str(LOGS / "tiny-mamba2" / "config.json")


def parsed(name: str):
    return parse_vllm_log((LOGS / name).read_text())


# ------------------------------------------------------------------ parser goldens (read by hand from each file)


def test_cpu_0_32_log():
    log = parsed("vllm-0.32.0-cpu-tiny-mamba2.log")
    # "Initializing a V1 LLM engine (v0.32.0) with config: model='/tmp/vcheck/tiny-mamba2', ... dtype=torch.bfloat16,
    # max_seq_len=512, ... tensor_parallel_size=1, pipeline_parallel_size=1, ... kv_cache_dtype=auto, device_config=cpu,
    # ... enable_prefix_caching=False"
    assert (log.version, log.engine, log.device, log.model) == ("0.32.0", "V1", "cpu", "/tmp/vcheck/tiny-mamba2")
    assert (log.dtype, log.max_model_len, log.tensor_parallel_size, log.pipeline_parallel_size) == ("bfloat16", 512, 1, 1)
    assert (log.kv_cache_dtype, log.enable_prefix_caching) == ("auto", False)
    # non-default args: {... 'max_num_seqs': 8 ...}; "Chunked prefill is enabled with max_num_batched_tokens=4096."
    assert (log.max_num_seqs, log.max_num_batched_tokens, log.block_size) == (8, 4096, None)
    # "Explicitly set (1.0/23.54) GiB for KV cache on node 0."
    assert (log.available_kv_gib, log.total_memory_gib) == (1.0, 23.54)
    # "CPU KV cache size: 30,034,432 tokens, Maximum concurrency for 512 tokens per request: 58661.00x"
    assert (log.kv_cache_tokens, log.concurrency_tokens, log.max_concurrency) == (30_034_432, 512, 58661.0)
    # "Reset SSM cache type to float32 for accelerated GDN mamba backend 'mamba2'."
    assert log.ssm_cache_dtype == "float32"
    assert log.weights_gib is None and log.activation_gib is None  # the CPU worker prints neither


def test_0_6_one_line_profiling_log():
    log = parsed("vllm-0.6-llama-3.1-8b-rtx3090-20k.log")
    assert log.weights_gib == 14.9888  # "Loading model weights took 14.9888 GB" (GiB, printed "GB")
    assert (log.total_memory_gib, log.peak_torch_gib, log.non_torch_gib, log.available_kv_gib,
            log.gpu_memory_utilization) == (23.58, 17.06, 0.35, 3.81, 0.90)
    assert (log.num_blocks, log.concurrency_tokens, log.max_concurrency) == (1952, 20000, 1.56)
    assert log.version is None and log.refusal is None


def test_0_6_refusal_is_kept_in_vllms_words():
    log = parsed("vllm-0.6-llama-3.1-8b-rtx3090-29k-refused.log")
    assert log.refusal.startswith("The model's max seq len (29000) is larger than the maximum number of tokens "
                                  "that can be stored in KV cache (23648).")
    assert (log.num_blocks, log.max_concurrency) == (1478, 0.82)


def test_0_6_5_table_log():
    log = parsed("vllm-0.6.5-llama-3-8b-h100.log")
    assert (log.total_memory_gib, log.gpu_memory_utilization, log.requested_gib) == (79.22, 0.90, 71.29)
    assert (log.weights_gib, log.non_torch_gib, log.activation_gib, log.available_kv_gib) == (14.96, 1.79, 1.26, 53.29)
    assert log.lines["weights_gib"] == 7  # the line it came from (1-based)


def test_0_8_v0_tp_log_keeps_the_first_workers_figures():
    log = parsed("vllm-0.8-v0-tp4-profiling.log")
    assert (log.total_memory_gib, log.gpu_memory_utilization, log.requested_gib) == (23.58, 0.99, 23.35)
    assert (log.weights_gib, log.non_torch_gib, log.activation_gib, log.available_kv_gib) == (21.21, 0.20, 0.37, 1.57)
    assert log.lines["weights_gib"] == 1


def test_v1_logs():
    log = parsed("vllm-v1-qwen3-14b.log")
    assert (log.available_kv_gib, log.kv_cache_tokens, log.concurrency_tokens, log.max_concurrency, log.device) == (
        6.51, 42_656, 32_768, 1.30, "cuda")
    old = parsed("vllm-0.7.4-v1-blocks.log")
    assert (old.num_blocks, old.concurrency_tokens, old.max_concurrency) == (127_626, 2048, 997.08)


def test_0_32_gpu_lines_as_its_source_formats_them():
    # vllm 0.32 v1/worker/gpu_worker.py compile_or_warm_up_model and v1/core/kv_cache_utils.py
    # update_kv_cache_capacity, filled in by hand (no published 0.32 GPU log is stored here)
    text = "\n".join([
        "(Worker pid=1) INFO 12-07 10:00:00 [gpu_model_runner.py:5150] Model loading took 14.99 GiB memory and "
        "3.100000 seconds",
        "(Worker pid=1) INFO 12-07 10:00:09 [gpu_worker.py:759] Available KV cache memory: 54.12 GiB",
        "(Worker pid=1) INFO 12-07 10:00:20 [gpu_worker.py:971] CUDA graph pool memory: 0.53 GiB (actual), 0.61 GiB "
        "(estimated), difference: 0.08 GiB (15.1%).",
        "(Worker pid=1) INFO 12-07 10:00:20 [gpu_worker.py:1034] Free memory on device (78.69/79.18 GiB) on startup. "
        "Desired GPU memory utilization is (0.9, 71.26 GiB). Actual usage is 15.5 GiB for consumed memory (weights + "
        "non-torch), 1.64 GiB for peak activation, and 0.53 GiB for CUDAGraph memory. Replace gpu_memory_utilization "
        "config with `--kv-cache-memory=57356455014` (53.42 GiB) to fit into requested memory, or "
        "`--kv-cache-memory=65034231808` (60.57 GiB) to fully utilize gpu memory. Current kv cache memory in use is "
        "54.12 GiB.",
        "(EngineCore pid=2) INFO 12-07 10:00:21 [kv_cache_utils.py:2327] GPU KV cache size: 443,328 tokens, Maximum "
        "concurrency for 131,072 tokens per request: 3.38x",
    ])
    log = parse_vllm_log(text)
    assert (log.weights_gib, log.available_kv_gib, log.cuda_graph_gib) == (14.99, 54.12, 0.53)
    assert (log.total_memory_gib, log.gpu_memory_utilization, log.requested_gib) == (79.18, 0.9, 71.26)
    assert (log.consumed_gib, log.activation_gib) == (15.5, 1.64)
    assert (log.kv_cache_tokens, log.concurrency_tokens, log.max_concurrency) == (443_328, 131_072, 3.38)
    terms = logged_terms(log)
    # non-torch = consumed (weights + non-torch) - weights = 15.50 - 14.99 = 0.51 GiB
    assert terms["non_torch"] == (round(15.5 * GIB) - round(14.99 * GIB), "consumed (weights + non-torch) - weights")


def test_a_file_with_no_vllm_line_is_refused_naming_it():
    with pytest.raises(InputError, match=r"^notes\.txt: no vLLM start-up line found"):
        read_vllm_log("hello\nworld\n", "notes.txt")


# ------------------------------------------------------------------ the reconstruction, worked by hand


def test_0_6_budget_and_pool_on_the_logged_budget():
    log = parsed("vllm-0.6-llama-3.1-8b-rtx3090-20k.log")
    result = explain(log, resolve_spec("llama-3.1-8b"), context=20000)
    terms = {t.term: t for t in result.terms}
    # activation = torch peak - weights = round(17.06 GiB) - round(14.9888 GiB) bytes
    assert terms["activation peak"].logged == round(17.06 * GIB) - round(14.9888 * GIB)
    # usable = 23.58 GiB x 0.90 (the line prints no product in 0.6.x)
    assert terms["usable (total x utilisation)"].logged == round(23.58 * 0.9 * GIB)
    # 21.222 - 14.9888 - 2.0712 - 0.35 = 3.812 GiB: the logged 3.81 within the rounding
    assert "add up" in terms["KV budget"].note
    # kvplan's pool on vLLM's 3.81 GiB: Llama-3.1-8B pages 16 tokens x 32 layers x 8 heads x 128 x 2 (K, V) x 2 B
    # = 2,097,152 B a block; floor(round(3.81 x 2**30) / 2,097,152) = floor(1950.7) = 1950 blocks (vLLM: 1952,
    # from the bytes behind its rounded 3.81); 1950 x 16 = 31,200 tokens; 1950 / ceil(20000 / 16) = 1.56x
    assert "1,950 on vLLM's logged budget" in terms["blocks"].note
    assert "31,200 on vLLM's logged budget" in terms["KV cache tokens"].note
    assert "1.56x on vLLM's logged budget" in terms["maximum concurrency"].note
    assert terms["maximum concurrency"].logged == 1.56


def test_cpu_mamba2_pool_matches_the_real_engine_to_the_last_digit():
    log = parsed("vllm-0.32.0-cpu-tiny-mamba2.log")
    result = explain(log, resolve_spec(TINY_MAMBA2))
    terms = {t.term: t for t in result.terms}
    # Mamba-2 state per layer (vllm 0.32 mamba_utils.py mamba2_state_shape): conv (intermediate 128 + 2 x 1 group x
    # 16 state) x (4 - 1) = 480 bf16 = 960 B; SSM 8 heads x 16 head_dim x 16 state = 2048 float32 (the CPU reset)
    # = 8192 B; 9152 B a layer, 2 layers share a block: floor(2**30 / 18,304) = 58,661 blocks, each one request
    # of 512 tokens: 58,661 x 512 = 30,034,432 tokens, 58661.00x, as vLLM logged.
    assert terms["KV cache tokens"].kvplan == terms["KV cache tokens"].logged == 30_034_432
    assert terms["maximum concurrency"].kvplan == terms["maximum concurrency"].logged == 58661.0
    assert terms["blocks"].kvplan == 58_661
    assert result.settings["state_dtype"] == "bf16/fp32"


def test_cpu_0_32_attention_log_from_the_real_engine():
    log = parsed("vllm-0.32.0-cpu-tiny-llama.log")
    # non-default args: {... 'max_model_len': 1000, 'block_size': 32, 'max_num_seqs': 4 ...}
    assert (log.block_size, log.max_num_seqs, log.max_model_len) == (32, 4, 1000)
    # "CPU KV cache size: 2,048,000 tokens, Maximum concurrency for 1,000 tokens per request: 2048.00x"
    assert (log.kv_cache_tokens, log.max_concurrency) == (2_048_000, 2048.0)
    result = explain(log, resolve_spec(str(LOGS / "tiny-llama" / "config.json")))
    terms = {t.term: t for t in result.terms}
    # a block: 32 tokens x 2 layers x 2 KV heads x 32 x 2 (K, V) x 2 B = 16,384 B; 2**30 / 16,384 = 65,536 blocks;
    # a 1,000-token request takes ceil(1000 / 32) = 32 of them: 65,536 / 32 = 2048.00x, as vLLM logged
    assert terms["blocks"].kvplan == 65_536
    assert terms["maximum concurrency"].kvplan == terms["maximum concurrency"].logged == 2048.0
    # vLLM 0.32 logs int(2048.00 x 1000) = 2,048,000 tokens (kv_cache_utils.get_kv_cache_capacity), not
    # 65,536 x 32 = 2,097,152: kvplan's 0.32 rules give the same figure, so no note is needed
    assert terms["KV cache tokens"].kvplan == terms["KV cache tokens"].logged == 2_048_000
    assert not any("max concurrency x max_model_len" in n for n in result.notes)
    assert "kvplan's pool follows vLLM 0.32's rules on its CPU platform" in result.notes


def test_without_a_model_only_the_log_is_shown():
    result = explain(parsed("vllm-v1-qwen3-14b.log"), None)
    assert all(t.kvplan is None for t in result.terms)
    assert any("pass MODEL" in n for n in result.notes)


# ------------------------------------------------------------------ the CLI and the calibration it saves


def test_cli_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    code, out, err = run_cli(capsys, ["explain", str(empty)])
    assert code == 2 and f"{empty}: no vLLM start-up line found" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, ["explain", str(tmp_path / "missing.log")])
    assert code == 2 and "missing.log: no such file" in err
    code, out, err = run_cli(capsys, ["explain", str(tmp_path)])
    assert code == 2 and "a folder, not a vLLM log" in err


def test_save_calibration_and_estimate_reads_it(tmp_path, capsys):
    cal = tmp_path / "cal.json"
    code, out, err = run_cli(capsys, ["explain", str(LOGS / "vllm-0.6.5-llama-3-8b-h100.log"), "llama-3.1-8b", "-c", "8192",
                              "--save-calibration", str(cal), "-f", "json"])
    assert code == 0, err
    data = json.loads(cal.read_text())
    # 1.26 GiB and 1.79 GiB as vLLM 0.6.5 printed them
    assert (data["activation_bytes"], data["non_torch_bytes"]) == (round(1.26 * GIB), round(1.79 * GIB))
    assert (data["weights_bytes"], data["gpu_memory_bytes"]) == (round(14.96 * GIB), round(79.22 * GIB))
    base = ["estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-f", "json"]
    code, out, err = run_cli(capsys, base + ["--calibration", str(cal)])
    assert code == 0, err
    calibrated = json.loads(out)
    code, out, _ = run_cli(capsys, base + ["--activation-memory", str(round(1.26 * GIB)),
                                   "--non-torch-memory", str(round(1.79 * GIB))])
    assert calibrated == json.loads(out)  # the same plan as the two terms given by hand
    code, out, err = run_cli(capsys, base + ["--calibration", str(cal), "--activation-memory", "1GiB"])
    assert code == 2 and "both set activation memory" in err


def test_save_calibration_needs_the_terms(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["explain", str(LOGS / "vllm-v1-qwen3-14b.log"), "--save-calibration",
                              str(tmp_path / "c.json")])
    assert code == 2 and "does not give the activation peak or non-torch memory" in err
    assert not (tmp_path / "c.json").exists()
