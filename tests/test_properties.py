"""Invariants of the calculator, checked over many random shapes (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvplan.model.layout import CacheLayout
from kvplan.model.formats import parse_format_pair

from conftest import make_spec

DTYPES = ["bf16", "fp32", "fp8", "q8_0", "q4_0", "nvfp4", "int4", "fp8_per_token_head", "q8_0/q4_0"]


@st.composite
def specs(draw):
    kv_heads = draw(st.sampled_from([1, 2, 4, 8]))
    group = draw(st.sampled_from([1, 2, 4]))
    layers = draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["full", "sliding", "pattern", "mla", "chunked", "hybrid"]))
    fields = dict(
        num_hidden_layers=layers,
        num_attention_heads=kv_heads * group,
        num_key_value_heads=kv_heads,
        head_dim=draw(st.sampled_from([32, 64, 80, 96, 128, 256])),
        hidden_size=64 * kv_heads * group,
    )
    if kind == "sliding":
        fields["sliding_window"] = draw(st.integers(1, 5000))
    elif kind == "pattern":
        fields["sliding_window"] = draw(st.integers(1, 5000))
        fields["layer_pattern"] = [{"sliding_attention": draw(st.integers(1, 5))}, {"full_attention": 1}]
    elif kind == "chunked":
        fields["attention_chunk_size"] = draw(st.integers(1, 9000))
        fields["layer_pattern"] = [{"chunked_attention": 3}, {"full_attention": 1}]
    elif kind == "mla":
        fields.update(kv_lora_rank=draw(st.sampled_from([128, 512])), qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128)
    elif kind == "hybrid":
        fields.update(mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, layer_pattern=[{"mamba": 3}, {"full_attention": 1}])
    return make_spec(**fields)


def layout(spec, dtype="bf16", **kw):
    if spec.is_mla and "/" in dtype:
        dtype = "q8_0"
    return CacheLayout(spec, parse_format_pair(dtype, spec.dtype), **kw)


@settings(max_examples=200, deadline=None)
@given(specs(), st.sampled_from(DTYPES), st.integers(1, 200_000), st.integers(1, 5000), st.sampled_from([1, 16, 64]))
def test_bytes_never_fall_as_context_grows(spec, dtype, context, extra, block):
    lay = layout(spec, dtype, block_size=block)
    a, b = lay.at(context, 1), lay.at(context + extra, 1)
    assert b.kv_bytes_per_sequence >= a.kv_bytes_per_sequence
    assert b.kv_bytes_total >= a.kv_bytes_total


@settings(max_examples=200, deadline=None)
@given(specs(), st.sampled_from(DTYPES), st.integers(1, 100_000), st.integers(1, 256), st.sampled_from([1, 16]))
def test_bytes_scale_linearly_with_batch(spec, dtype, context, batch, block):
    lay = layout(spec, dtype, block_size=block)
    assert lay.at(context, batch).kv_bytes_total == batch * lay.at(context, 1).kv_bytes_total


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4096), st.integers(0, 100_000), st.sampled_from([1, 16, 64]))
def test_sliding_layers_stay_flat_past_the_window(window, beyond, block):
    spec = make_spec(sliding_window=window)
    lay = layout(spec, block_size=block)
    at_window = lay.at(window + block, 1)
    later = lay.at(window + block + beyond, 1)
    assert later.kv_bytes_total == at_window.kv_bytes_total
    assert later.kv_bytes_per_sequence == lay.at(window, 1).kv_bytes_per_sequence


@settings(max_examples=200, deadline=None)
@given(specs(), st.sampled_from(DTYPES), st.integers(1, 100_000), st.sampled_from([2, 8, 16, 32, 128]))
def test_paging_never_lowers_bytes(spec, dtype, context, block):
    unpaged = layout(spec, dtype, block_size=1).at(context, 1)
    paged = layout(spec, dtype, block_size=block).at(context, 1)
    assert paged.kv_bytes_total >= unpaged.kv_bytes_total
    assert paged.paging_bytes == paged.kv_bytes_total - unpaged.kv_bytes_total
    assert unpaged.paging_bytes == 0


@settings(max_examples=200, deadline=None)
@given(specs(), st.integers(1, 100_000), st.sampled_from([1, 2, 4, 8, 16]))
def test_tensor_parallel_totals_never_fall_below_one_rank(spec, context, tp):
    try:
        split = layout(spec, tp=tp).at(context, 1)
    except Exception:
        return  # a split the model cannot take is refused, tested elsewhere
    single = layout(spec).at(context, 1)
    assert split.kv_bytes_total >= single.kv_bytes_total
    assert split.kv_bytes_per_rank * tp >= single.kv_bytes_total
    assert split.kv_bytes_per_rank <= single.kv_bytes_per_rank


@settings(max_examples=100, deadline=None)
@given(specs(), st.integers(1, 100_000), st.integers(1, 8))
def test_pipeline_stages_sum_to_the_whole(spec, context, pp):
    if pp > spec.num_hidden_layers:
        return
    split = layout(spec, pp=pp).at(context, 3)
    whole = layout(spec).at(context, 3)
    assert split.kv_bytes_total == whole.kv_bytes_total
    assert sum(split.layers_per_stage) == spec.num_hidden_layers
    assert split.kv_bytes_per_rank <= whole.kv_bytes_total
