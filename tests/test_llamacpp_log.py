"""kvplan.sources.llamacpp_log on start-up logs recorded from the real llama-server (tests/fixtures/llamacpp_real/,
build b1-0c1e570, the llama.cpp vendored by llama-cpp-python 0.3.36, `-lv 4`). Each expected figure is worked by
hand from the model (tools/llamacpp_models.py) and llama.cpp's rules, cited beside it, not from kvplan's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvplan.sources.llamacpp_log import parse_llamacpp_log

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llamacpp_real"


def log_of(model: str, rid: str) -> str:
    data = json.loads((FIXTURES / f"{model}.json").read_text())
    return next(r for r in data["records"] if r["id"] == rid)["log"]


def test_gqa_default_context_and_one_cache():
    # -c 2048 --parallel 2: n_ctx = pad(2048, 256) = 2048; not unified, so n_ctx_seq = pad(2048 / 2, 256) = 1024
    # (src/llama-context.cpp); n_batch = min(2048, -b 2048), n_ubatch = min(n_batch, -ub 512)
    log = parse_llamacpp_log(log_of("llama-gqa", "default"))
    assert (log.n_seq_max, log.n_ctx, log.n_ctx_seq, log.n_batch, log.n_ubatch) == (2, 2048, 1024, 2048, 512)
    assert (log.flash_attn, log.kv_unified, log.n_rs_seq, log.rounded_down_to) == ("auto", False, 0, None)
    (kv,) = log.kv_caches
    # 2 layers x 1024 cells x 2 streams x (2 KV heads x 16) f16 = 262,144 B each of K and V = 0.25 MiB, 0.5 together
    assert (kv.role, kv.cells, kv.layers, kv.n_seq_max, kv.n_stream) == ("kv", 1024, 2, 2, 2)
    assert (kv.type_k, kv.k_mib, kv.type_v, kv.v_mib, kv.size_mib) == ("f16", 0.25, "f16", 0.25, 0.5)
    assert kv.line == ("llama_kv_cache: size =    0.50 MiB (  1024 cells,   2 layers,  2/2 seqs), "
                       "K (f16):    0.25 MiB, V (f16):    0.25 MiB")
    assert log.kv_buffer_mib == (0.5,) and log.recurrent is None
    assert (log.n_slots, log.n_ctx_slot, log.kv_cells, log.swa_cells) == (2, 1024, 1024, None)
    assert log.listening.startswith("http://127.0.0.1:") and log.errors == ()
    assert set(log.compute_buffer_mib) == {"CPU"} and log.output_buffer_mib == {"CPU": 0.0}
    assert log.kv_bytes_printed == 0.5 * 2**20


def test_rounded_streams_warning():
    # -c 2000 --parallel 3: n_ctx = pad(2000) = 2048, n_ctx_seq = pad(2048 // 3 = 682) = 768, n_ctx = 3 x 768 = 2304
    # != 2048: "n_ctx is not divisible by n_seq_max - rounding down to 2304"; n_batch = min(2000, 2048) = 2000
    log = parse_llamacpp_log(log_of("llama-gqa", "rounded-3"))
    assert (log.n_seq_max, log.n_ctx, log.n_ctx_seq, log.n_batch, log.rounded_down_to) == (3, 2304, 768, 2000, 2304)
    (kv,) = log.kv_caches
    # 2 layers x 768 cells x 3 streams x 32 values x 2 B = 294,912 B = 0.28125 MiB each of K and V
    assert (kv.cells, kv.n_stream, kv.k_mib, kv.size_mib) == (768, 3, 0.28, 0.56)


def test_unified_one_stream():
    log = parse_llamacpp_log(log_of("llama-gqa", "unified-4"))
    (kv,) = log.kv_caches
    # --kv-unified: one stream of n_ctx = pad(512 x 4) = 2048 cells shared by 4 sequences; each slot may fill them all
    assert (log.kv_unified, log.n_ctx_seq, kv.cells, kv.n_seq_max, kv.n_stream) == (True, 2048, 2048, 4, 1)
    assert (log.n_slots, log.n_ctx_slot) == (4, 2048)


def test_sliding_window_two_caches():
    # gemma2: layers 0, 2 slide (set_swa_pattern(2)), window 128; the SWA cache holds
    # pad(min(1024, 128 + n_ubatch 512), 256) = 768 cells per stream (src/llama-kv-cache-iswa.cpp)
    log = parse_llamacpp_log(log_of("gemma2-swa", "default"))
    full, swa = log.kv_caches
    assert (full.role, full.cells, full.layers, full.size_mib) == ("non-SWA", 1024, 2, 0.5)
    # 2 layers x 768 x 2 streams x 32 x 2 B = 196,608 B = 0.1875 MiB each ("0.19"), 0.375 together ("0.38")
    assert (swa.role, swa.cells, swa.layers, swa.k_mib, swa.size_mib) == ("SWA", 768, 2, 0.19, 0.38)
    assert (log.kv_cells, log.swa_cells, log.kv_buffer_mib) == (1024, 768, (0.5, 0.38))


def test_sliding_window_full_and_small_ubatch():
    assert parse_llamacpp_log(log_of("gemma2-swa", "swa-full")).swa_cells == 1024  # --swa-full: the whole n_ctx_seq
    # -ub 128 -b 256: pad(min(1024, 128 + 128), 256) = 256
    log = parse_llamacpp_log(log_of("gemma2-swa", "ubatch-128"))
    assert (log.n_batch, log.n_ubatch, log.swa_cells) == (256, 128, 256)


def test_hybrid_recurrent_state_line():
    # jamba: layer 1 attention, layers 0, 2, 3 Mamba-1 (d_inner 128, d_state 16, d_conv 4); 2 cells, one per slot.
    # R = (d_conv - 1) x d_inner = 384 f32 = 1,536 B per cell per layer: 3 layers x 2 cells = 9,216 B ("0.01");
    # S = d_state x d_inner = 2,048 f32 = 8,192 B: x 3 x 2 = 49,152 B ("0.05"); 58,368 B together ("0.06");
    # "4 layers": the model's n_layer (src/llama-memory-recurrent.cpp)
    log = parse_llamacpp_log(log_of("jamba-hybrid", "default"))
    r = log.recurrent
    assert (r.cells, r.layers, r.n_seq_max, r.n_rs_seq) == (2, 4, 2, 0)
    assert (r.type_r, r.r_mib, r.type_s, r.s_mib, r.p_mib, r.size_mib) == ("f32", 0.01, "f32", 0.05, 0.0, 0.06)
    (kv,) = log.kv_caches  # the one attention layer: 1024 x 2 x 32 x 2 B = 131,072 B each of K and V ("0.12",
    # printf's round-half-even of 0.125), 0.25 MiB together
    assert (kv.layers, kv.cells, kv.k_mib, kv.size_mib) == (1, 1024, 0.12, 0.25)
    assert log.rs_buffer_mib == (0.06,) and log.errors == ()


@pytest.mark.parametrize("rid, first", [
    ("q8-cache", "llama_init_from_model: K cache type q8_0 with block size 32 does not divide n_embd_head_k=16"),
    ("qv-fa-off-refused", "llama_init_from_model: quantized V cache requires flash_attn to be enabled"),
])
def test_refused_starts_keep_their_error_lines(rid, first):
    log = parse_llamacpp_log(log_of("llama-gqa", rid))
    assert log.n_ctx is None and log.kv_caches == () and log.n_slots is None
    assert log.errors[0].endswith(" E " + first)
    assert log.errors[-1].endswith("llama_server: exiting due to model loading error")


def test_a_log_without_levels_is_read_by_its_words():
    text = ("llama_context: n_ctx                 = 4096\n"
            "llama_kv_cache: size =   64.00 MiB (  4096 cells,  32 layers,  1/1 seqs), K (q8_0):   34.00 MiB, "
            "V (f16):   30.00 MiB\n"
            "some info line that does not support anything\n"
            "error: invalid argument: --cache-type-k q3\n")
    log = parse_llamacpp_log(text)
    assert log.n_ctx == 4096 and log.kv_caches[0].type_k == "q8_0" and log.kv_caches[0].k_mib == 34.0
    assert log.errors == ("some info line that does not support anything", "error: invalid argument: --cache-type-k q3")


def test_quantized_cache_rows_and_flash_attention_turned_on():
    # llama-hd32, -ctk q8_0 -ctv q8_0: a quantized V cache turns flash attention on (src/llama-context.cpp
    # llama_init_from_model, "enabling flash_attn since it is required for quantized V cache"); a K row of 2 KV heads
    # x 32 = 64 values is 2 q8_0 blocks of 34 B (ggml-common.h block_q8_0) = 68 B: 2 layers x 1024 cells x 2 streams
    # x 68 B = 278,528 B = 0.265625 MiB ("0.27") each of K and V, 0.53125 together ("0.53")
    log = parse_llamacpp_log(log_of("llama-hd32", "q8-cache"))
    (kv,) = log.kv_caches
    assert (log.flash_attn, kv.type_k, kv.k_mib, kv.type_v, kv.v_mib, kv.size_mib) == (
        "enabled", "q8_0", 0.27, "q8_0", 0.27, 0.53)
    # -ctk q4_0: 2 blocks of 18 B = 36 B a row: 147,456 B = 0.140625 MiB ("0.14"); V q8_0 as above; 0.40625 ("0.41")
    (kv,) = parse_llamacpp_log(log_of("llama-hd32", "q4k-q8v")).kv_caches
    assert (kv.type_k, kv.k_mib, kv.type_v, kv.v_mib, kv.size_mib) == ("q4_0", 0.14, "q8_0", 0.27, 0.41)
