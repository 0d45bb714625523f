"""llama.cpp profile: golden cells, bytes and log lines worked by hand from llama.cpp's source.

Each test names the rule it rests on (ggml-org/llama.cpp file and function, read in
the tree llama-cpp-python 0.3.36 vendors, upstream commit 0c1e570; see
kvplan/engines/llamacpp.py). Byte counts: f16 = 2 B per value; q8_0 = 34 B per
32 values, q4_0 = 18 B per 32 (ggml-common.h block structs).
"""

from __future__ import annotations

import pytest

from kvplan.sources.catalog import resolve_spec
from kvplan.engines import GIB, MIB, MemoryInputs
from kvplan.engines import llamacpp as L
from kvplan.errors import InputError
from kvplan.model.formats import parse_format_pair

from conftest import make_spec


def run(name_or_spec, context, batch=1, ideal="auto", **opts):
    spec = resolve_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    return L.cache(spec, context, batch, L.LlamaCppOptions(**opts), ideal_format=parse_format_pair(ideal, spec.dtype))


# --- llama_kv_cache::llama_kv_cache: K [n_embd_k_gqa, kv_size, n_stream], V likewise; the size log line


@pytest.mark.parametrize(
    "types, total, k_mib, v_mib",
    [
        # 32 layers x 8192 cells x (8 heads x 128) values x 2 B, for K and for V: 512 MiB each
        (("f16", "f16"), 32 * 8192 * 1024 * 2 * 2, "512.00", "512.00"),
        # q8_0: a 1024-value row is 32 blocks x 34 B = 1088 B: 1024 MiB x 34 / 64 = 544 MiB
        (("q8_0", "q8_0"), 32 * 8192 * 1088 * 2, "272.00", "272.00"),
        # q8_0 K + q4_0 V: 1088 + 32 x 18 = 576 B per cell per layer for V
        (("q8_0", "q4_0"), 32 * 8192 * (1088 + 576), "272.00", "144.00"),
    ],
)
def test_llama_31_8b_at_8192_cells(types, total, k_mib, v_mib):
    c = run("llama-3.1-8b", 8192, cache_type_k=types[0], cache_type_v=types[1])
    assert c.kv_bytes_total == total
    assert c.log_lines[-1] == (
        f"llama_kv_cache: size = {int(total) / MIB:7.2f} MiB (  8192 cells,  32 layers,  1/1 seqs), "
        f"K ({types[0]}):  {k_mib} MiB, V ({types[1]}):  {v_mib} MiB"
    )


def test_f16_golden_line_verbatim():
    """The issue's example line, character for character (%7.2f, %6u, %3d, %2u/%u)."""
    c = run("llama-3.1-8b", 8192)
    assert c.kv_bytes_total == 1024 * MIB
    assert c.log_lines == (
        "llama_kv_cache: size = 1024.00 MiB (  8192 cells,  32 layers,  1/1 seqs), K (f16):  512.00 MiB, V (f16):  512.00 MiB",
    )


def test_q8_0_is_544_mib_and_flash_attention_auto_turns_on():
    """llama_init_from_model: a quantized V with -fa auto enables flash attention and says so."""
    c = run("llama-3.1-8b", 8192, cache_type_k="q8_0", cache_type_v="q8_0")
    assert c.kv_bytes_total == 544 * MIB
    assert c.log_lines[0] == "llama_init_from_model: enabling flash_attn since it is required for quantized V cache"


# --- llama_context::llama_context: n_ctx = GGML_PAD(n_ctx, 256); n_ctx_seq = GGML_PAD(n_ctx / n_seq_max, 256)


@pytest.mark.parametrize(
    "context, parallel, unified, kv_size, n_stream, warning",
    [
        (8000, 1, False, 8192, 1, None),  # 8000 -> 8192
        (8192, 1, False, 8192, 1, None),  # already a multiple of 256
        (1, 1, False, 256, 1, None),  # one token still takes 256 cells
        # -c 15000 -np 3: pad -> 15104; 15104 / 3 = 5034 -> 5120 per stream; n_ctx = 15360 != 15104: warned
        (5000, 3, False, 5120, 3, "llama_context: n_ctx is not divisible by n_seq_max - rounding down to 15360"),
        (4096, 4, False, 4096, 4, None),  # -c 16384 -np 4: 4096 per stream, no warning
        (5000, 3, True, 15104, 1, None),  # unified: one stream of pad(15000) cells
    ],
)
def test_context_padding_per_stream(context, parallel, unified, kv_size, n_stream, warning):
    c = run("llama-3.1-8b", context, batch=parallel, kv_unified=unified)
    assert c.settings["kv_size"] == kv_size and c.settings["n_stream"] == n_stream
    # 32 layers x 4096 B (K + V of 8 x 128 f16) per cell
    assert c.kv_bytes_total == 32 * 4096 * kv_size * n_stream
    assert (warning in c.log_lines) if warning else not any("rounding down" in line for line in c.log_lines)


def test_padding_difference_is_named():
    c = run("llama-3.1-8b", 8000)
    assert c.ideal_bytes_total == 32 * 4096 * 8000
    assert [d.bytes for d in c.differences] == [32 * 4096 * 192]  # 8192 - 8000 cells
    assert "padded to 256" in c.differences[0].cause


# --- llama_kv_cache_iswa: size_swa = GGML_PAD(min(size_base, n_swa x (unified ? n_seq_max : 1) + n_ubatch), 256)


def test_a_model_whose_every_layer_slides_allocates_no_full_context():
    # Mistral-7B-v0.1 as its spec gives it, every layer windowed at 4,096: no layer takes the whole padded
    # n_ctx, so the only difference from the ideal (32 layers x 4,096 tokens x 4,096 B) is the SWA cache's
    # pad(4,096 + 512 ubatch, 256) = 4,608 cells: 512 cells x 32 layers x 4,096 B = 64 MiB
    c = run("mistral-7b-v0.1", 8192)
    assert c.ideal_bytes_total == 32 * 4096 * 4096 == 512 * MIB
    assert [d.bytes for d in c.differences] == [512 * 32 * 4096] == [64 * MIB]
    assert c.kv_bytes_total == 32 * 4608 * 4096

GEMMA_CELL = 16 * 128 * 2 * 2  # 16 KV heads x 128 x f16, K + V: 8192 B per cell per layer


@pytest.mark.parametrize(
    "opts, batch, swa_cells",
    [
        ({}, 1, 1536),  # pad(1024 + 512, 256) = 1536, not the 1024-token window
        ({"ubatch_size": 256}, 1, 1280),  # pad(1024 + 256) = 1280
        ({"ubatch_size": 100}, 1, 1280),  # pad(1124) = 1280
        # -ub above -b: n_ubatch = min(n_batch 2048, 4096) (llama_context), so pad(1024 + 2048) = 3072
        ({"ubatch_size": 4096}, 1, 3072),
        ({"swa_full": True}, 1, 8192),  # --swa-full: the base size
        ({}, 4, 1536),  # per stream: the window counts once per stream
        ({"kv_unified": True}, 4, 4608),  # unified: pad(1024 x 4 + 512) = 4608
    ],
)
def test_gemma_3_sliding_layers_get_window_plus_ubatch(opts, batch, swa_cells):
    c = run("gemma-3-27b", 8192, batch=batch, **opts)
    streams = 1 if opts.get("kv_unified") else batch
    kv_size = 8192 * batch if opts.get("kv_unified") else 8192
    assert c.settings["swa_cells"] == swa_cells
    rows = {k.kind: k for k in c.by_kind}
    assert rows["sliding_attention"].slots_per_layer == swa_cells * streams
    assert rows["sliding_attention"].bytes == 52 * GEMMA_CELL * swa_cells * streams
    assert rows["full_attention"].bytes == 10 * GEMMA_CELL * kv_size * streams
    assert c.log_lines[-2] == f"llama_kv_cache_iswa: creating     SWA KV cache, size = {swa_cells} cells"


def test_gemma_3_log_lines_one_per_sub_cache():
    c = run("gemma-3-27b", 8192)
    assert c.log_lines == (
        "llama_kv_cache_iswa: creating non-SWA KV cache, size = 8192 cells",
        # 10 x 8192 x 8192 B = 640 MiB
        "llama_kv_cache: size =  640.00 MiB (  8192 cells,  10 layers,  1/1 seqs), K (f16):  320.00 MiB, V (f16):  320.00 MiB",
        "llama_kv_cache_iswa: creating     SWA KV cache, size = 1536 cells",
        # 52 x 1536 x 8192 B = 624 MiB
        "llama_kv_cache: size =  624.00 MiB (  1536 cells,  52 layers,  1/1 seqs), K (f16):  312.00 MiB, V (f16):  312.00 MiB",
    )
    # ideal: 52 sliding layers x 1024 tokens; llama.cpp: 1536 cells -> 52 x 512 x 8192 B more
    assert c.overhead_bytes == {
        "sliding layers: pad(1,024 window + 512 ubatch, 256) = 1,536 cells per stream": 52 * 512 * GEMMA_CELL
    }


def test_swa_full_warns():
    c = run("gemma-3-27b", 8192, swa_full=True)
    assert c.log_lines[0].startswith("llama_kv_cache_iswa: using full-size SWA cache (ref: ")


def test_gpt_oss_window_128():
    """gpt-oss: n_swa 128 -> pad(128 + 512, 256) = 768 cells; 8 KV heads x 64, f16: 2048 B per cell."""
    c = run("gpt-oss-20b", 16384)
    rows = {k.kind: k for k in c.by_kind}
    assert rows["sliding_attention"].tokens_per_sequence == 768
    assert rows["sliding_attention"].bytes == rows["sliding_attention"].layers * 768 * 2048


# --- MLA: has_v = !is_mla; K is one 576-wide head (kv_lora_rank 512 + qk_rope_head_dim 64)


def test_deepseek_v3_caches_576_and_no_v():
    c = run("deepseek-v3", 4096)
    assert c.kv_bytes_total == 61 * 4096 * 576 * 2 == 287_834_112  # 274.5 MiB
    assert c.log_lines == (
        "llama_kv_cache: size =  274.50 MiB (  4096 cells,  61 layers,  1/1 seqs), K (f16):  274.50 MiB, V (f16):    0.00 MiB",
    )
    assert c.overhead_bytes == {}  # the same 576 per token per layer as the ideal latent


def test_deepseek_v3_q8_0_latent():
    c = run("deepseek-v3", 4096, cache_type_k="q8_0", cache_type_v="q8_0")
    assert c.kv_bytes_total == 61 * 4096 * (576 // 32 * 34)


# --- recurrent state (create_memory: GGML_TYPE_F32, max(1, n_seq_max) cells)


def test_jamba_state_in_f32_one_cell_per_slot():
    c = run("jamba-v0.1", 4096, batch=2)
    d_inner = 2 * 4096
    state_elements = d_inner * (4 - 1) + d_inner * 16  # conv (d_conv - 1) x d_inner + SSM d_state x d_inner
    rows = {k.kind: k for k in c.by_kind}
    assert rows["state"].bytes == 28 * 2 * state_elements * 4
    assert rows["full_attention"].bytes == 4 * 4096 * 2 * 4096  # 2 streams of 4096 cells
    assert c.kv_bytes_total == 4 * 4096 * 2 * 4096 + 28 * 2 * state_elements * 4 == 169_082_880
    # ideal keeps the state in bf16: llama.cpp's f32 doubles it
    assert c.overhead_bytes == {"recurrent state kept in f32, 2 cell(s) per layer": 28 * 2 * state_elements * 2}
    # llama_memory_recurrent: R = 28 x 3 x 8192 x 4 B x 2 cells = 5.25 MiB, S = 28 x 16 x 8192 x 4 B x 2 = 28 MiB;
    # "layers" counts every model layer (32)
    assert c.log_lines[-1] == (
        "llama_memory_recurrent: size =   33.25 MiB (     2 cells,  32 layers,  2 seqs  0 rs_seq), "
        "R (f32):    5.25 MiB, S (f32):   28.00 MiB, P (f32):    0.00 MiB"
    )


# --- refusals, worded as llama.cpp words them


@pytest.mark.parametrize(
    "spec_name, opts, refusal",
    [
        # llama_init_from_model: quantized V with flash attention off
        ("llama-3.1-8b", {"cache_type_k": "q8_0", "cache_type_v": "q8_0", "flash_attn": "off"},
         "llama_init_from_model: quantized V cache requires flash_attn to be enabled"),
        # common/arg.cpp kv_cache_type_from_str
        ("llama-3.1-8b", {"cache_type_k": "fp8", "cache_type_v": "fp8"}, "Unsupported cache type: fp8"),
        # llama_init_from_model: MLA needs one type for K and V
        ("deepseek-v3", {"cache_type_k": "q8_0", "cache_type_v": "f16"},
         "llama_init_from_model: model does not support different K (q8_0) and V (f16) cache types"),
    ],
)
def test_refusals(spec_name, opts, refusal):
    c = run(spec_name, 4096, **opts)
    assert c.refusals == (refusal,)
    assert c.kv_bytes_total is None and c.by_kind == ()


# tools/server/server-context.cpp update_slots: a prompt of slot.n_ctx (= n_ctx_seq) tokens or more is refused


def too_long(tokens: int, slot: int) -> str:
    return f"request ({tokens} tokens) exceeds the available context size ({slot} tokens), try increasing it"


@pytest.mark.parametrize(
    "context, batch, opts, slot",
    [
        # -c 100 -np 4: pad(100) = 256; 256 / 4 = 64 -> pad 256 cells per slot, not 8,192
        (8192, 4, {"ctx_size": 100}, 256),
        # -c 8192 -np 2: 4,096 cells a slot
        (8192, 2, {"ctx_size": 8192}, 4096),
        # --kv-unified: a slot may take the whole pool, pad(100) = 256 cells
        (8192, 4, {"ctx_size": 100, "kv_unified": True}, 256),
        # -np 3 for a batch of 1 with -c 4,097: pad 4,352; / 3 = 1,450 -> pad 1,536 cells a slot
        (4097, 1, {"ctx_size": 4097, "parallel": 3}, 1536),
    ],
)
def test_a_sequence_longer_than_its_slot_is_refused_in_llama_servers_words(context, batch, opts, slot):
    c = run("llama-3.1-8b", context, batch=batch, **opts)
    assert c.refusals == (too_long(context, slot),)
    assert c.kv_bytes_total is None and c.settings["n_ctx_seq"] == slot
    assert c.notes[-1].endswith(f"give -c (--ctx-size) of at least {context * (1 if opts.get('kv_unified') else c.settings['n_seq_max']):,}.")


@pytest.mark.parametrize(
    "context, opts",
    [
        (8192, {"ctx_size": 8192}),
        (256, {"ctx_size": 100}),  # pad(100) = 256 cells
        (4097, {"parallel": 2}),  # no -c: 4,097 x 2 = 8,194 -> pad 8,448; / 2 = 4,224 -> pad 4,352 cells a slot
    ],
)
def test_a_sequence_that_fills_its_slot_exactly_is_sized(context, opts):
    """A slot of n cells holds a sequence of n tokens (a prompt of n - 1, one token out)."""
    c = run("llama-3.1-8b", context, **opts)
    assert not c.refusals and c.kv_bytes_total is not None


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"parallel": 0}, "--parallel 0 must be at least 1 (llama.cpp's -np, its sequence slots; leave it out for one "
                          "slot per --batch sequence)"),
        ({"ctx_size": 0}, "--ctx-size 0 must be at least 1 (llama.cpp's -c 0, the training context, is not modelled: "
                          "give the cells, or leave it out for --context x --parallel)"),
        # 256 cells over 512 slots: n_ctx_seq = pad(256 // 512) = 0, which llama_context refuses
        ({"ctx_size": 256, "parallel": 512}, "llama.cpp: n_ctx_seq == 0 (the context is smaller than one cell per sequence)"),
    ],
)
def test_no_slot_or_no_cell_is_bad_input(opts, message):
    with pytest.raises(InputError) as exc:
        run("llama-3.1-8b", 4096, **opts)
    assert exc.value.message == message


def test_quantized_k_alone_needs_no_flash_attention():
    """Only V is checked: -ctk q8_0 -ctv f16 -fa off starts."""
    c = run("llama-3.1-8b", 4096, cache_type_k="q8_0", cache_type_v="f16", flash_attn="off")
    assert not c.refusals
    assert c.kv_bytes_total == 32 * 4096 * (1088 + 2048)


def test_block_must_divide_head_dim_with_flash_attention():
    """llama_init_from_model: with FA not off, a q8_0 K needs n_embd_head_k % 32 == 0 (here 80)."""
    spec = make_spec(hidden_size=320, num_attention_heads=4, num_key_value_heads=2, head_dim=80)
    c = run(spec, 1024, cache_type_k="q8_0", cache_type_v="f16", flash_attn="on")
    assert c.refusals == ("llama_init_from_model: K cache type q8_0 with block size 32 does not divide n_embd_head_k=80",)


# --- capacity: no budget; the padded cache must fit beside the weights


def test_capacity_counts_slots_that_fit():
    spec = resolve_spec("llama-3.1-8b")
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("24g", 24 * GIB, weights, 512 * MIB, 0, "none")
    cap = L.capacity(spec, 8192, 1, L.LlamaCppOptions(), mem, ideal_format=parse_format_pair("auto", "bf16"))
    budget = 24 * GIB - weights - 512 * MIB  # 9,172,410,368 B
    assert cap.kv_budget_bytes == budget
    assert cap.max_concurrent_sequences == budget // GIB == 8  # each 8192-cell stream is 1 GiB
    assert cap.fits and cap.refusals == ()


def test_capacity_refuses_when_the_buffer_does_not_fit():
    spec = resolve_spec("llama-3.1-8b")
    # 17 GiB - 16,060,522,496 B of weights leaves 2,193,088,512 B: two 1 GiB streams fit, three do not
    mem = MemoryInputs("small", 17 * GIB, 8_030_261_248 * 2, 0, 0, "none")
    cap = L.capacity(spec, 8192, 3, L.LlamaCppOptions(), mem, ideal_format=parse_format_pair("auto", "bf16"))
    assert cap.max_concurrent_sequences == 2
    assert not cap.fits
    assert cap.refusals == (
        "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",
    )


@pytest.mark.parametrize("spare, slots", [(0, 3), (-1, 2), (1, 3)])
def test_capacity_at_the_exact_size_of_three_slots(spare, slots):
    # one slot of 8,192 cells: 8,192 x 32 layers x 8 heads x 128 x 2 (K, V) x 2 B (f16) = 1 GiB exactly
    spec = resolve_spec("llama-3.1-8b")
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("exact", weights + 3 * GIB + spare, weights, 0, 0, "none")
    cap = L.capacity(spec, 8192, 3, L.LlamaCppOptions(), mem, ideal_format=parse_format_pair("auto", "bf16"))
    assert cap.kv_budget_bytes == 3 * GIB + spare
    assert (cap.max_concurrent_sequences, cap.fits) == (slots, slots >= 3)
    assert cap.refusals == (() if slots >= 3 else (
        "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache",))


def test_capacity_when_one_slot_does_not_fit():
    # 512 MiB left after the weights, a slot of 8,192 cells needs 1 GiB: no sequence, not one
    spec = resolve_spec("llama-3.1-8b")
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("half", weights + 512 * MIB, weights, 0, 0, "none")
    cap = L.capacity(spec, 8192, 1, L.LlamaCppOptions(), mem, ideal_format=parse_format_pair("auto", "bf16"))
    assert (cap.kv_budget_bytes, cap.max_concurrent_sequences, cap.fits) == (512 * MIB, 0, False)


def test_capacity_with_nothing_left_after_the_weights():
    spec = resolve_spec("llama-3.1-8b")
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("full", weights, weights, 0, 0, "none")
    cap = L.capacity(spec, 8192, 1, L.LlamaCppOptions(), mem, ideal_format=parse_format_pair("auto", "bf16"))
    assert (cap.kv_budget_bytes, cap.max_concurrent_sequences, cap.fits) == (0, 0, False)


def test_capacity_of_a_refused_cache_is_no_sequence():
    # -c 4096 for one slot, a sequence of 8,192 tokens: llama-server refuses the request whatever the GPU
    # holds, so no sequence runs (not one, as if the slot could be used in part)
    spec = resolve_spec("llama-3.1-8b")
    weights = 8_030_261_248 * 2
    mem = MemoryInputs("24g", 24 * GIB, weights, 0, 0, "none")
    cap = L.capacity(spec, 8192, 1, L.LlamaCppOptions(ctx_size=4096), mem, ideal_format=parse_format_pair("auto", "bf16"))
    assert (cap.max_concurrent_sequences, cap.fits) == (0, False)
    assert cap.refusals == ("request (8192 tokens) exceeds the available context size (4096 tokens), try increasing it",)


def test_context_and_batch_must_be_positive():
    with pytest.raises(Exception, match="--context must be at least 1 token, got 0"):
        run("llama-3.1-8b", 0)
    with pytest.raises(Exception, match="--batch must be at least 1 sequence, got 0"):
        run("llama-3.1-8b", 8, batch=0)


def test_unified_cells_are_noted_and_per_sequence_cells_shared():
    # --kv-unified, 3 sequences of 5,000: one stream of pad(15,000, 256) = 15,104 cells; each sequence's share 15,104 // 3
    row = run("llama-3.1-8b", 5000, batch=3, kv_unified=True).by_kind[0]
    assert (row.tokens_per_sequence, row.slots_per_layer, row.note) == (5034, 15104, "cells shared by all sequences (unified KV)")
    # one sequence, unified or not: nothing shared, no note
    row = run("llama-3.1-8b", 5000, batch=1, kv_unified=True).by_kind[0]
    assert row.note == ""
    # per-sequence streams: 3 streams of pad(5,000, 256) = 5,120 cells
    row = run("llama-3.1-8b", 5000, batch=3).by_kind[0]
    assert (row.tokens_per_sequence, row.slots_per_layer, row.note) == (5120, 3 * 5120, "")


def test_the_swa_note_is_for_windowed_models_only():
    note = ("llama.cpp windows only the layers its architecture loader marks SWA; kvplan takes them "
            "from the spec's layer types.")
    assert note in run("gemma-3-27b", 4096).notes
    assert note not in run("llama-3.1-8b", 4096).notes


@pytest.mark.parametrize("opts, batch, cause", [
    ({"kv_unified": True}, 4, "sliding layers: pad(1,024 x 4 seqs window + 512 ubatch, 256) = 4,608 cells per stream"),
    ({}, 4, "sliding layers: pad(1,024 window + 512 ubatch, 256) = 1,536 cells per stream"),
])
def test_the_swa_step_names_the_window_per_stream(opts, batch, cause):
    c = run("gemma-3-27b", 8192, batch=batch, **opts)
    assert cause in c.overhead_bytes


@pytest.mark.parametrize("opts, where, need", [
    ({"parallel": 2, "ctx_size": 4096}, "each of the 2 slots holds 2,048 cells (-c 4,096)", "8,192"),
    ({"parallel": 2, "ctx_size": 2048, "kv_unified": True}, "the 2 slots share 2,048 cells (-c 2,048, --kv-unified)", "4,096"),
])
def test_a_slot_shorter_than_the_sequence_is_refused_with_its_words(opts, where, need):
    c = run("llama-3.1-8b", 4096, batch=1, **opts)
    assert c.kv_bytes_total is None
    assert any(n.startswith(f"A sequence of 4,096 tokens needs a slot of as many cells, and {where}: "
                            f"give -c (--ctx-size) of at least {need}.") for n in c.notes), c.notes
