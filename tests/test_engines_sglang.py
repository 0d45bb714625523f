"""SGLang profile: cell sizes, pools and the mem_fraction_static budget, worked by hand.

Sources: sgl-project/sglang model_runner_kv_cache_mixin.py
(ModelRunnerKVCacheMixin.get_cell_size_per_token, profile_max_num_token,
_resolve_hybrid_swa_tokens), mem_cache/memory_pool.py
(MHATokenToKVPool._create_buffers: size + page_size slots; the allocation log line as
sglang 0.5.23 prints it), server_args.py (mem_fraction_static defaults up to 0.4,
swa_full_tokens_ratio 0.8).
"""

from __future__ import annotations

import pytest

from kvplan.sources.catalog import resolve_spec
from kvplan.engines import GIB, MIB, MemoryInputs
from kvplan.engines import sglang as S
from kvplan.model.formats import parse_format_pair


def spec(name):
    return resolve_spec(name)


def run(name, context, batch=1, kv="auto", **opts):
    s = spec(name)
    return S.cache(s, context, batch, S.SGLangOptions(**opts), kv_cache_dtype=kv,
                   ideal_format=parse_format_pair("auto", s.dtype))


@pytest.mark.parametrize(
    "model, esz, tp, cell",
    [
        ("llama-3.1-8b", 2, 1, 8 * (128 + 128) * 32 * 2),  # 131,072 B: the same as every engine's
        ("llama-3.1-8b", 1, 1, 8 * (128 + 128) * 32 * 1),  # fp8: 1 byte, no scales in the pool
        ("llama-3.1-8b", 2, 4, 2 * (128 + 128) * 32 * 2),  # 8 KV heads // 4 ranks
        ("llama-3.1-8b", 2, 16, 1 * (128 + 128) * 32 * 2),  # max(1, 8 // 16): a head replicated
        ("deepseek-v3", 2, 1, (512 + 64) * 61 * 2),  # MLA: 70,272 B, no factor 2, no heads
        ("deepseek-v3", 2, 8, (512 + 64) * 61 * 2),  # ... and whole on every rank
        ("gemma-3-27b", 2, 1, 16 * 256 * (10 + 52) * 2),  # hybrid SWA: F n_full + S n_swa
    ],
)
def test_cell_size_per_token(model, esz, tp, cell):
    assert S.cell_size(spec(model), esz, tp) == cell


def test_padding_page_per_buffer_and_log_line():
    """Each layer's K and V buffers hold size + page_size slots (slot 0 takes padded tokens' writes)."""
    c = run("llama-3.1-8b", 8192)
    assert c.kv_bytes_total == 32 * (8192 + 1) * 4096
    assert c.overhead_bytes == {"one 1-slot padding page per K/V buffer (slot 0 takes padded tokens' writes)": 32 * 4096}
    # K: 32 layers x 8193 slots x 8 heads x 128 x 2 B = 536,936,448 B = 0.50 GiB
    assert c.log_lines == ("KV Cache is allocated. dtype: torch.bfloat16, #tokens: 8192, K size: 0.50 GB, V size: 0.50 GB",)


def test_pages_round_each_sequence_up():
    c = run("llama-3.1-8b", 1000, batch=2, page_size=64)
    assert c.by_kind[0].tokens_per_sequence == 1024
    assert c.kv_bytes_total == 32 * (2 * 1024 + 64) * 4096
    assert c.overhead_bytes == {
        "64-token pages": 32 * 2 * 24 * 4096,
        "one 64-slot padding page per K/V buffer (slot 0 takes padded tokens' writes)": 32 * 64 * 4096,
    }


def test_mla_pool_line():
    c = run("deepseek-v3", 4096)
    assert c.kv_bytes_total == 61 * 4097 * 576 * 2
    assert c.log_lines == ("KV Cache is allocated. dtype: torch.bfloat16, #tokens: 4096, KV size: 0.27 GB",)


CHOICES = "'auto', 'fp8_e5m2', 'fp8_e4m3', 'mxfp8', 'bf16', 'bfloat16', 'nvfp4', 'fp4_mx_block16'"


@pytest.mark.parametrize("kv, refusal", [
    # argparse's refusal with sglang 0.5.23's choices (arg_groups/fields/model.py)
    ("q8_0", f"error: argument --kv-cache-dtype: invalid choice: 'q8_0' (choose from {CHOICES})"),
    ("int4", f"error: argument --kv-cache-dtype: invalid choice: 'int4' (choose from {CHOICES})"),
])
def test_kv_dtype_refusal(kv, refusal):
    assert run("llama-3.1-8b", 1024, kv=kv).refusals == (refusal,)


def test_block_scaled_pools_are_not_modelled():
    c = run("llama-3.1-8b", 1024, kv="nvfp4")
    assert c.kv_bytes_total is None and not c.refused
    assert "does not size SGLang's nvfp4" in c.notes[0]


def test_vllm_fp8_name_is_e4m3():
    c = run("llama-3.1-8b", 1024, kv="fp8")
    assert c.kv_cache_dtype == "fp8_e4m3"
    assert c.kv_bytes_total == 32 * 1025 * 8 * 256


@pytest.mark.parametrize("tp, fraction", [(1, 0.88), (2, 0.87), (3, 0.87), (4, 0.85), (8, 0.81), (16, 0.79)])
def test_default_mem_fraction_static(tp, fraction):
    assert S.default_mem_fraction_static(tp) == fraction


H100 = 81559 * MIB  # NVML total of an H100 SXM 80GB


def test_capacity_llama_on_h100():
    """rest = free_after_weights - free_at_start x (1 - 0.88), in GiB floats; tokens = int(rest x 2^30) // cell."""
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("h100", H100, weights, 512 * MIB, 0, "n/a")
    cap = S.capacity(spec("llama-3.1-8b"), 8192, 1, S.SGLangOptions(), mem,
                     ideal_format=parse_format_pair("auto", "bf16"))
    # free_at_start = 81,047 MiB = 84,983,939,072 B; after weights 68,923,416,576 B
    # rest = 64.1907... - 79.1474... x 0.12 = 54.69223846435547 GiB -> 58,725,343,887 B
    assert cap.kv_budget_bytes == 58_725_343_887
    assert cap.max_total_tokens == 58_725_343_887 // 131_072 == 448_038
    assert cap.max_concurrent_sequences == 448_038 // 8192 == 54
    assert cap.log_lines == ("KV Cache is allocated. dtype: torch.bfloat16, #tokens: 448038, K size: 27.35 GB, V size: 27.35 GB",)


def test_capacity_gemma_3_splits_full_and_swa_pools_by_ratio():
    """_resolve_hybrid_swa_tokens: full = T x (F 10 + S 52) / (F 10 + 0.8 S 52), swa = 0.8 full."""
    weights = 27_432_406_640 * 2
    mem = MemoryInputs("h100", H100, weights, 512 * MIB, 0, "n/a")
    cap = S.capacity(spec("gemma-3-27b"), 8192, 1, S.SGLangOptions(), mem,
                     ideal_format=parse_format_pair("auto", "bf16"))
    tokens = 19_921_053_103 // 507_904  # rest = 18.55... GiB -> 39,222 tokens of 507,904 B
    assert cap.max_total_tokens == tokens == 39_222
    assert cap.settings["full_layer_tokens"] == int(39_222 * 62 / 51.6) == 47_127
    assert cap.settings["swa_layer_tokens"] == int(47_127 * 0.8) == 37_701
    # a sequence of 8192 tokens needs 8192 full slots and 1024 SWA slots: min(5, 36)
    assert cap.max_concurrent_sequences == 5
    assert cap.log_lines[0] == "Use sliding window memory pool. full_layer_tokens=47127, swa_layer_tokens=37701"


def test_capacity_of_a_model_whose_every_layer_slides():
    """Mistral-7B-v0.1 slides every layer (window 4,096): _resolve_hybrid_swa_tokens gives the full pool
    nothing and the SWA pool every token; a sequence of 8,192 tokens keeps its last 4,096."""
    weights = 7_241_732_096 * 2
    mem = MemoryInputs("h100", H100, weights, 512 * MIB, 0, "n/a")
    cap = S.capacity(spec("mistral-7b-v0.1"), 8192, 1, S.SGLangOptions(), mem,
                     ideal_format=parse_format_pair("auto", "bf16"))
    # free_at_start 84,983,939,072 B, after weights 70,500,474,880 B: rest = 65.6584... - 79.1474... x 0.12
    # = 56.16098846435547 GiB -> 60,302,402,191 B; a cell of 32 layers x 8 heads x (128 + 128) x 2 B = 131,072 B
    assert cap.max_total_tokens == 60_302_402_191 // 131_072 == 460_070
    assert (cap.settings["full_layer_tokens"], cap.settings["swa_layer_tokens"]) == (0, 460_070)
    assert cap.log_lines[0] == "Use sliding window memory pool. full_layer_tokens=0, swa_layer_tokens=460070"
    assert cap.max_concurrent_sequences == 460_070 // 4096 == 112
    # the one pool is the SWA pool, sized at every token: (460,070 + 1 padding page) x 32 layers x 8 heads x
    # 128 x 2 B = 30,151,213,056 B for K (and V) = 28.08 GiB, which SGLang prints as "GB" (GB = 1024 ** 3)
    assert cap.log_lines[1:] == ("KV Cache is allocated. dtype: torch.bfloat16, #tokens: 460070, K size: 28.08 GB, "
                                 "V size: 28.08 GB",)


def test_capacity_with_large_pages_pads_the_pool_by_one_page():
    """MHATokenToKVPool._create_buffers allocates size + page_size slots (slot 0 is the padding page)."""
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("h100", H100, weights, 512 * MIB, 0, "n/a")
    cap = S.capacity(spec("llama-3.1-8b"), 8192, 1, S.SGLangOptions(page_size=4096), mem,
                     ideal_format=parse_format_pair("auto", "bf16"))
    # 448,038 tokens (test_capacity_llama_on_h100) rounded down to whole 4,096-token pages: 109 pages
    assert cap.max_total_tokens == 109 * 4096 == 446_464
    # K: 32 layers x (446,464 + 4,096) x 8 heads x 128 x 2 B = 29,527,900,160 B = 27.50 GiB
    assert cap.log_lines == ("KV Cache is allocated. dtype: torch.bfloat16, #tokens: 446464, K size: 27.50 GB, "
                             "V size: 27.50 GB",)
    assert cap.max_concurrent_sequences == 446_464 // 8192 == 54


def test_capacity_not_enough_memory():
    mem = MemoryInputs("small", 20 * GIB, 8_030_261_248 * 2, 0, 0, "n/a")
    cap = S.capacity(spec("llama-3.1-8b"), 8192, 1, S.SGLangOptions(mem_fraction_static=0.5), mem,
                     ideal_format=parse_format_pair("auto", "bf16"))
    assert cap.max_concurrent_sequences == 0 and not cap.fits
    # rest = 4.67... GiB - 10 GiB < 0: no token at all, not a negative count
    assert cap.kv_budget_bytes < 0 and cap.max_total_tokens == 0
    assert cap.refusals == ("RuntimeError: Not enough memory. Please try to increase --mem-fraction-static. "
                            "Current value: mem_fraction_static=0.5",)


def test_the_ideal_beside_sglang_is_unpaged():
    # llama-3.1-8b at 1,001 tokens x 2: 2 x 1,001 x 131,072 B exactly (a 2-token page would make it 1,002)
    c = run("llama-3.1-8b", 1001, batch=2)
    assert c.ideal_bytes_total == 2 * 1001 * 131_072


def test_rows_say_per_rank_only_under_tensor_parallelism():
    assert run("llama-3.1-8b", 4096).by_kind[0].note == ""
    assert run("llama-3.1-8b", 4096, tp=2).by_kind[0].note == "per rank x tp ranks"


@pytest.mark.parametrize("ratio", [0.0, 1.5])
def test_capacity_refuses_a_swa_ratio_outside_zero_to_one(ratio):
    mem = MemoryInputs("h100", 81559 * MIB, 8_030_261_248 * 2, 0, 0, "n/a")
    with pytest.raises(Exception, match=rf"--swa-full-tokens-ratio {ratio} must be in \(0, 1\]"):
        S.capacity(spec("gemma-3-27b"), 8192, 1, S.SGLangOptions(swa_full_tokens_ratio=ratio), mem,
                   ideal_format=parse_format_pair("auto", "bf16"))


@pytest.mark.parametrize("kv", ["bf16", "bfloat16"])
def test_bf16_cache_for_an_fp16_model(kv):
    """SGLang ModelRunner: `elif server_args.kv_cache_dtype in ("bf16", "bfloat16"): kv_cache_dtype =
    torch.bfloat16`, whatever the model's dtype. Llama-2-7B is float16; its pool: 32 layers x (1,024 + 1
    slots) x 32 KV heads x 128 x 2 B, for K and for V."""
    c = run("llama-2-7b", 1024, kv=kv)
    assert c.kv_bytes_total == 32 * 1025 * 32 * 128 * 2 * 2 == 537_395_200
    assert c.log_lines == ("KV Cache is allocated. dtype: torch.bfloat16, #tokens: 1024, K size: 0.25 GB, V size: 0.25 GB",)
    assert run("llama-2-7b", 1024).log_lines[0].startswith("KV Cache is allocated. dtype: torch.float16,")


def test_the_mla_rank_note_only_under_tensor_parallelism():
    # one rank holds the whole latent anyway; the note speaks of ranks only when there are several
    note = "MLA latent whole on every tensor-parallel rank (no head split)."
    assert note not in run("deepseek-v3", 1024).notes
    assert note in run("deepseek-v3", 1024, tp=8).notes
