"""Weight bytes: which parameters a quantised checkpoint quantises (spec `weights_quantized`).

Every golden here is worked by hand from published shapes, never read back from
kvplan: gpt-oss stores only its routed experts' gate_up / down weights as MXFP4
(transformers integrations/mxfp4.py Mxfp4GptOssExperts: gate_up_proj_blocks
(E, 2 x width, hidden / 32, 16) + gate_up_proj_scales (E, 2 x width, hidden / 32),
down_proj likewise with hidden rows of width / 32 blocks; one 16 B block + one scale
byte per 32 weights of a row) and keeps attention, sinks, router, norms, the experts'
biases, embeddings and lm_head in bf16.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvplan.sources.catalog import resolve_spec
from kvplan.plan.planner import stage_weight_bytes

from cli_helpers import run_cli
from conftest import make_spec

# ---------------------------------------------------------------- gpt-oss by hand

H = W = 2880  # hidden_size, each expert's intermediate_size
VOCAB = 201_088
EMBED = VOCAB * H  # one table: 579,133,440; embed_tokens and lm_head are untied
BLOCK_ROW = (H // 32) * 17  # one 2880-wide row: 90 blocks x (16 B of e2m1 pairs + 1 e8m0 scale) = 1,530 B
EXPERT_MXFP4 = (2 * W + H) * BLOCK_ROW  # gate_up: 5,760 rows, down: 2,880 rows -> 13,219,200 B
EXPERT_WEIGHTS = 3 * H * W  # 24,883,200 weights per expert (biases not included)


def rest_of_body(experts: int, layers: int, active: int | None = None) -> int:
    """gpt-oss parameters outside the experts' weights and the embeddings, counted from modeling_gpt_oss.

    Per layer: q (2880 -> 64 x 64) and o (4096 -> 2880) with biases, k and v (2880 -> 8 x 64) with
    biases, 64 sinks, the router (2880 -> E, with bias), two RMSNorms, and the experts' biases
    (2 x 2880 + 2880 each, of the `active` experts a token reads); one final norm.
    """
    attention = (H * 4096 + 4096) + 2 * (H * 512 + 512) + (4096 * H + H) + 64
    router = H * experts + experts
    biases = (active or experts) * (2 * W + H)
    return layers * (attention + router + 2 * H + biases) + H


@pytest.mark.parametrize("name, experts, layers, total, checkpoint_bytes", [
    # total = safetensors total (the spec's num_parameters); checkpoint_bytes = the published tensors' bytes
    ("gpt-oss-20b", 32, 24, 20_914_757_184, 13_761_264_768),
    ("gpt-oss-120b", 128, 36, 116_829_156_672, 65_248_815_744),
])
def test_gpt_oss_weights_match_the_published_checkpoint(name, experts, layers, total, checkpoint_bytes):
    rest = rest_of_body(experts, layers)
    # the shapes account for every parameter of the safetensors total
    assert experts * layers * EXPERT_WEIGHTS + rest + 2 * EMBED == total
    expected = experts * layers * EXPERT_MXFP4 + 2 * rest + 2 * 2 * EMBED
    assert expected == checkpoint_bytes  # model.safetensors.index.json total_size (20b), the 15 files' tensors (120b)
    spec = resolve_spec(name)
    assert stage_weight_bytes(spec, [layers], "mxfp4", 1) == [checkpoint_bytes]


def test_gpt_oss_120b_before_and_after():
    """The old rule stored the whole body (attention included) as MXFP4: 1,482,121,782 B short."""
    body = 116_829_156_672 - 2 * EMBED
    old = -(-body // 32) * 17 + 2 * 2 * EMBED
    assert old == 63_766_693_962
    assert 65_248_815_744 - old == 1_482_121_782


@pytest.mark.parametrize("name, experts, layers, active_total", [
    ("gpt-oss-20b", 32, 24, 4_187_440_704),
    ("gpt-oss-120b", 128, 36, 5_711_982_912),
])
def test_gpt_oss_active_weights_read_per_token(name, experts, layers, active_total):
    """A decode step reads 4 experts' MXFP4 weights per layer, all of attention and the router in bf16,
    the 4 experts' bf16 biases, and (kvplan's rule for active parameters) both embedding tables."""
    rest = rest_of_body(experts, layers, active=4)
    assert 4 * layers * EXPERT_WEIGHTS + rest + 2 * EMBED == active_total
    expected = 4 * layers * EXPERT_MXFP4 + 2 * rest + 2 * 2 * EMBED
    spec = resolve_spec(name)
    assert stage_weight_bytes(spec, [layers], "mxfp4", 1, active=True) == [expected]


def test_gpt_oss_120b_estimate_json(capsys):
    """`kvplan estimate gpt-oss-120b --gpu h100-sxm -c 8192 -f json`: weights and what they leave for KV."""
    r = run_cli(capsys, "estimate", "gpt-oss-120b", "--gpu", "h100-sxm", "-c", "8192", "-f", "json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["weights_dtype"], d["weights_quantized"]) == ("mxfp4", "experts")
    assert d["weights_bytes_per_gpu"] == 65_248_815_744
    usable = -(-81559 * 2**20 * 92 // 100)  # h100-sxm: 81,559 MiB x 0.92 (vLLM 0.32's default), rounded up as vLLM does
    # profile run + fp32 logits of 1,024 sequences (vLLM 0.32 get_batch_defaults on an H100: 8192 tokens, 1024 seqs)
    activations = 8192 * (2 * W + 4 * H) * 2 + 1024 * VOCAB * 4
    assert d["kv_budget_bytes_per_gpu"] == usable - 65_248_815_744 - activations - 512 * 2**20 == 11_786_686_562
    # batch 1 reads the 4 active experts' weights (2 x rest as above), the lm_head table, one looked-up
    # row of the input embedding, and the KV held:
    # 18 full layers x 8,192 tokens + 18 sliding layers x 128, 8 KV heads x 64 x (K + V) x 2 B
    active = 4 * 36 * EXPERT_MXFP4 + 2 * rest_of_body(128, 36, active=4) + 2 * EMBED + 2 * H
    kv = 18 * (8192 + 128) * 8 * 64 * 2 * 2
    assert d["decode_bytes_per_step"] == active + kv == 5_309_616_384
    assert d["assumptions"]["weights"] == (
        "routed experts' weights in mxfp4 (rows rounded to whole blocks), counted per MoE layer; the rest of the "
        "body in bf16, split evenly per layer; embeddings on the first stage, lm_head on the last, vocab-sharded "
        "over tp, in bf16"
    )


def test_every_engine_gets_the_same_gpt_oss_weights(capsys):
    r = run_cli(capsys, "compare", "gpt-oss-20b", "--gpu", "h100-sxm", "-c", "8192", "-f", "json")
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert {row["capacity"]["weights_bytes"] for row in rows} == {13_761_264_768}
    assert len(rows) >= 5


def test_table_names_the_split(capsys):
    r = run_cli(capsys, "estimate", "gpt-oss-20b", "--gpu", "h100-sxm", "-c", "8192")
    assert r.exit_code == 0, r.stderr
    # the spec has no file bytes: the formula in its weights_dtype, and the output says so
    assert "(mxfp4 routed experts only, --dtype; parameter formula)" in r.stdout


@pytest.mark.parametrize("dtype, expected", [
    ("bf16", 2 * 20_914_757_184),  # a float --dtype casts everything
    ("fp32", 4 * 20_914_757_184),
    # fp8 experts (1 B each), the rest of the body and both tables bf16
    ("fp8", 32 * 24 * EXPERT_WEIGHTS + 2 * rest_of_body(32, 24) + 4 * EMBED),
    # int4 experts: each 2880-wide row in ceil(2880 / 128) = 23 groups of 64 B + a 2 B scale
    ("int4", 32 * 24 * (2 * W + H) * 23 * 66 + 2 * rest_of_body(32, 24) + 4 * EMBED),
])
def test_dtype_flag_keeps_the_spec_split(capsys, dtype, expected):
    r = run_cli(capsys, "estimate", "gpt-oss-20b", "--gpu", "h200", "-c", "4096", "--dtype", dtype, "-f", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["weights_bytes_per_gpu"] == expected


# ---------------------------------------------------------------- a small spec, row rounding visible

# 4 layers, hidden 64, expert width 48 (1.5 MXFP4 blocks: each down row pads to 2), 8 experts, top 2,
# layer 0 dense (first_k_dense_replace 1): 3 MoE layers.
SMALL = dict(hidden_size=64, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, num_local_experts=8, num_experts_per_tok=2, first_k_dense_replace=1,
             num_parameters=300_000, num_active_parameters=300_000 - 6 * 3 * 3 * 64 * 48,
             weights_dtype="mxfp4", weights_quantized="experts")
SMALL_EMBED = 256 * 64  # 16,384 per table
SMALL_EXPERT = 2 * 48 * 2 * 17 + 64 * 2 * 17  # gate/up: 96 rows of 64 (2 blocks); down: 64 rows of 48 (2 blocks)
SMALL_REST = 300_000 - 2 * SMALL_EMBED - 8 * 3 * 3 * 64 * 48  # 46,048 bf16 parameters


def test_small_spec_split_by_hand():
    spec = make_spec(**SMALL)
    assert SMALL_EXPERT == 5_440  # per row; rounding the whole 9,216 at once would give 288 x 17 = 4,896
    assert SMALL_REST == 46_048
    held = 8 * 3 * SMALL_EXPERT + 2 * SMALL_REST + 2 * 2 * SMALL_EMBED
    assert stage_weight_bytes(spec, [4], "mxfp4", 1) == [held] == [288_192]
    # active: 2 experts in each of the 3 MoE layers; the rest is the same 46,048 (no expert biases here)
    active = 2 * 3 * SMALL_EXPERT + 2 * SMALL_REST + 2 * 2 * SMALL_EMBED
    assert stage_weight_bytes(spec, [4], "mxfp4", 1, active=True) == [active] == [190_272]


def test_small_spec_all_linear_rounds_the_whole_body():
    spec = make_spec(**dict(SMALL, weights_quantized="all_linear"))
    body = 300_000 - 2 * SMALL_EMBED  # 267,232 -> 8,351 blocks of 17 B
    assert stage_weight_bytes(spec, [4], "mxfp4", 1) == [-(-body // 32) * 17 + 2 * 2 * SMALL_EMBED] == [207_503]


def test_small_spec_over_two_stages_and_two_ranks():
    """Stage 0 holds layers 0-1 (one MoE layer) and the embedding, stage 1 layers 2-3 (two) and lm_head;
    the rest of the body splits evenly per layer; each rank holds half, rounded up."""
    spec = make_spec(**SMALL)
    stage0 = 8 * 1 * SMALL_EXPERT + 2 * (SMALL_REST * 2 // 4) + 2 * SMALL_EMBED
    stage1 = 8 * 2 * SMALL_EXPERT + 2 * (SMALL_REST * 2 // 4) + 2 * SMALL_EMBED
    assert (stage0, stage1) == (122_336, 165_856)
    assert stage_weight_bytes(spec, [2, 2], "mxfp4", 2) == [-(-stage0 // 2), -(-stage1 // 2)] == [61_168, 82_928]


def test_small_spec_unquantised_dtypes_cast_everything():
    spec = make_spec(**SMALL)
    assert stage_weight_bytes(spec, [4], "bf16", 1) == [2 * 300_000]
    assert stage_weight_bytes(spec, [4], "fp32", 1) == [4 * 300_000]
    assert stage_weight_bytes(spec, [4], "fp8", 1) == [8 * 3 * 3 * 64 * 48 + 2 * SMALL_REST + 4 * SMALL_EMBED]


# ---------------------------------------------------------------- the spec refuses what it cannot say


@pytest.mark.parametrize("changes, message", [
    (dict(weights_dtype=None),
     "weights_quantized 'experts' says which weights weights_dtype covers, but weights_dtype is not set; "
     "set weights_dtype (e.g. mxfp4)"),
    (dict(num_local_experts=None, num_experts_per_tok=None, num_active_parameters=None),
     "weights_quantized 'experts' needs routed experts: set num_local_experts (or n_routed_experts), "
     "num_experts_per_tok and intermediate_size (or moe_intermediate_size)"),
    # 8 x 4 MoE layers x 3 x 64 x 48 = 294,912 weights cannot fit 300,000 - 32,768
    (dict(first_k_dense_replace=None, num_active_parameters=None),
     "weights_quantized 'experts': the routed experts' weights (8 experts x 4 MoE layers x 3 x hidden_size x 48 "
     "= 294,912) exceed num_parameters less the embeddings (267,232); check the MoE layers "
     "(first_k_dense_replace, expert_layer_period, expert_layer_offset)"),
    # every other layer (1 and 3) has experts: 8 x 2 x 9,216 = 147,456 fits, but offset 2 of period 2 is no pattern
    (dict(first_k_dense_replace=None, num_active_parameters=None, expert_layer_period=2, expert_layer_offset=2),
     "expert_layer_offset (2) must be smaller than expert_layer_period (2)"),
    (dict(weights_quantized="all_linear", weights_dtype=None, num_local_experts=None, num_experts_per_tok=None,
          num_active_parameters=None, expert_layer_period=2),
     "expert_layer_period / expert_layer_offset need routed experts (num_local_experts or n_routed_experts)"),
    # 2 active experts x 3 layers x 9,216 = 55,296 > 80,000 - 32,768
    (dict(num_active_parameters=80_000),
     "weights_quantized 'experts': the 2 active experts' weights (55,296) exceed num_active_parameters less the "
     "embeddings (47,232); check num_active_parameters"),
    # 6 skipped experts x 3 layers x 9,216 = 165,888 > 300,000 - 200,000
    (dict(num_active_parameters=200_000),
     "weights_quantized 'experts': the experts a token skips hold 165,888 weights, more than "
     "num_parameters - num_active_parameters (100,000); check num_experts_per_tok and the expert width"),
])
def test_expert_quantization_is_validated(changes, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as exc:
        make_spec(**dict(SMALL, **changes))
    assert exc.value.errors()[0]["msg"] == f"Value error, {message}"


def test_weights_quantized_takes_two_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="all_linear"):
        make_spec(**dict(SMALL, weights_quantized="attention"))
    assert make_spec().weights_quantized == "all_linear"


# ---------------------------------------------------------------- invariants


@settings(max_examples=80, deadline=None)
@given(
    hidden=st.integers(1, 200), width=st.integers(1, 200), experts=st.integers(2, 16), top=st.integers(1, 2),
    layers=st.integers(1, 6), dense=st.integers(0, 2), rest=st.integers(0, 10**6), tied=st.booleans(),
)
def test_experts_only_lies_between_all_quantised_and_all_16_bit(hidden, width, experts, top, layers, dense, rest, tied):
    dense = min(dense, layers - 1)
    moe_weights = experts * (layers - dense) * 3 * hidden * width
    skipped = (experts - top) * (layers - dense) * 3 * hidden * width
    embed = 64 * hidden * (1 if tied else 2)
    total = embed + moe_weights + rest
    spec = make_spec(hidden_size=hidden, intermediate_size=width, num_hidden_layers=layers, num_attention_heads=1,
                     num_key_value_heads=1, head_dim=8, vocab_size=64, tie_word_embeddings=tied,
                     num_local_experts=experts, num_experts_per_tok=top, first_k_dense_replace=dense or None,
                     num_parameters=total, num_active_parameters=total - skipped,
                     weights_dtype="mxfp4", weights_quantized="experts")
    everything = make_spec(**{**spec.model_dump(), "weights_quantized": "all_linear"})
    for active in (False, True):
        split = stage_weight_bytes(spec, [layers], "mxfp4", 1, active=active)[0]
        # float casts ignore the split; quantising fewer weights never beats quantising all of them
        # by more than the per-row padding (at most 31 padded weights per row, 17 / 32 B each)
        for dtype in ("bf16", "fp32"):
            assert stage_weight_bytes(spec, [layers], dtype, 1, active=active) == stage_weight_bytes(
                everything, [layers], dtype, 1, active=active)
        rows = (top if active else experts) * (layers - dense) * (2 * width + hidden)
        assert split <= stage_weight_bytes(everything, [layers], "bf16", 1, active=active)[0] + rows * 17
        assert split + 17 >= stage_weight_bytes(everything, [layers], "mxfp4", 1, active=active)[0]
