"""kvplan.model.spec validation: size bounds, layer patterns, and the messages a spec file gets (exit 2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cli_helpers import run_cli
from conftest import make_spec
from kvplan.model.shape import LayerKind
from kvplan.model.spec import MAX_LAYERS, SIZE_LIMITS, ModelSpec

LAYERS_WHY = "DeepNet, the deepest transformer trained, has 1,000 layers"


def errors(**fields) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as err:
        make_spec(**fields)
    return [(e["loc"], e["msg"].removeprefix("Value error, ")) for e in err.value.errors()]


# ------------------------------------------------------------------ bounds


def test_a_huge_layer_count_names_the_field_and_the_bound():
    assert errors(num_hidden_layers=100_000_000_000) == [
        (("num_hidden_layers",), f"100,000,000,000 is more than 10,000, kvplan's limit, far above any real model "
                                 f"({LAYERS_WHY}); check the value")
    ]


@pytest.mark.parametrize(
    "field, value, limit",
    [
        ("num_attention_heads", 10**9, "65,536"),
        ("num_key_value_heads", 10**9, "65,536"),
        ("head_dim", 10**9, "1,048,576"),
        ("hidden_size", 10**9, "1,048,576"),
        ("vocab_size", 10**9, "16,777,216"),
        ("intermediate_size", 10**9, "16,777,216"),
        ("max_position_embeddings", 10**12, "1,073,741,824"),
        ("sliding_window", 10**12, "1,073,741,824"),
        ("num_local_experts", 10**9, "65,536"),
        ("num_parameters", 10**16, "1,000,000,000,000,000"),
    ],
)
def test_every_size_has_a_bound(field, value, limit):
    [(loc, message)] = errors(**{field: value})
    assert loc == (field,)
    assert message.startswith(f"{value:,} is more than {limit}, kvplan's limit, far above any real model (")


def test_a_huge_head_count_is_one_error_not_two():
    # num_key_value_heads defaults to the heads: the default must not repeat the error
    assert [loc for loc, _ in errors(num_attention_heads=10**9, num_key_value_heads=None)] == [("num_attention_heads",)]


@given(field=st.sampled_from(sorted(SIZE_LIMITS)), excess=st.integers(1, 10**6))
def test_the_bound_is_exact(field, excess):
    limit, _ = SIZE_LIMITS[field]
    problem = [m for loc, m in errors(**{field: limit + excess}) if loc == (field,)]
    assert problem and problem[0].startswith(f"{limit + excess:,} is more than {limit:,}")


def test_the_largest_layer_count_is_accepted_and_cheap():
    spec = make_spec(num_hidden_layers=MAX_LAYERS, layer_pattern=[{"full_attention": 3}, {"kv_shared": 1}])
    assert len(spec.layer_kinds) == MAX_LAYERS


# ------------------------------------------------------------------ layer patterns


def test_an_empty_layer_pattern_is_a_validation_error():
    assert errors(layer_pattern=[]) == [
        (("layer_pattern",), "is empty; give at least one {layer type: count} entry, e.g. [{full_attention: 1}], or leave it out")
    ]


def test_an_unknown_layer_type_in_a_pattern_names_the_entry():
    [(loc, message)] = errors(layer_pattern=[{"full_attention": 1}, {"bogus": 2}])
    assert loc == ("layer_pattern", 1, "bogus", "[key]")
    assert message.startswith("unknown layer type 'bogus'; use one of [")


def test_a_pattern_count_above_the_layer_bound_is_refused():
    [(loc, message)] = errors(layer_pattern=[{"full_attention": 10**11}])
    assert loc == ("layer_pattern", 0, "full_attention")
    assert message.startswith("100,000,000,000 layers is more than 10,000")


def test_a_pattern_longer_than_the_model_is_cut_at_the_model():
    spec = make_spec(num_hidden_layers=3, sliding_window=8, layer_pattern=[{"sliding_attention": 5}, {"full_attention": 1}])
    assert spec.layer_kinds == (LayerKind.SLIDING,) * 3


@given(counts=st.lists(st.integers(1, 20), min_size=1, max_size=4), layers=st.integers(1, 60))
def test_a_pattern_cycles_exactly(counts, layers):
    names = ["sliding_attention", "full_attention"]
    pattern = [{names[i % 2]: c} for i, c in enumerate(counts)]
    spec = make_spec(num_hidden_layers=layers, sliding_window=16, layer_pattern=pattern)
    cycle = [(LayerKind.SLIDING, LayerKind.FULL)[i % 2] for i, c in enumerate(counts) for _ in range(c)]
    assert spec.layer_kinds == tuple(cycle[i % len(cycle)] for i in range(layers))


# ------------------------------------------------------------------ through the CLI: file, line, field, exit 2

BASE = """\
name: my-model
source: test
num_parameters: 1000000
hidden_size: 64
num_hidden_layers: 2
num_attention_heads: 4
vocab_size: 100
"""


@pytest.mark.parametrize(
    "edit, message",
    [
        (("", "layer_pattern: []\n"),
         ":8: layer_pattern: is empty; give at least one {layer type: count} entry, e.g. [{full_attention: 1}], or leave it out"),
        (("", "layer_pattern:\n  - full_attention: 1\n  - bogus: 1\n"),
         ":10: layer_pattern.1: unknown layer type 'bogus'; use one of ['attention', 'chunked_attention', 'conv', 'full_attention', "
         "'kv_shared', 'linear_attention', 'mamba', 'mlp', 'moe', 'sliding_attention', 'state']"),
        (("", "layer_types: [full_attention, windowed]\n"),
         ":8: layer_types.1: unknown layer type 'windowed'; use one of ['attention', 'chunked_attention', 'conv', 'full_attention', "
         "'kv_shared', 'linear_attention', 'mamba', 'mlp', 'moe', 'sliding_attention', 'state']"),
        (("", "layer_pattern: [{full_attention: 1, sliding_attention: 1}]\n"),
         ":8: layer_pattern.0: each layer_pattern entry maps one layer type to a count, e.g. {sliding_attention: 5}"),
        (("num_hidden_layers: 2", "num_hidden_layers: 100000000000"),
         f":5: num_hidden_layers: 100,000,000,000 is more than 10,000, kvplan's limit, far above any real model "
         f"({LAYERS_WHY}); check the value"),
        (("num_attention_heads: 4", "num_attention_heads: 1000000000"),
         ":6: num_attention_heads: 1,000,000,000 is more than 65,536, kvplan's limit, far above any real model "
         "(Llama-3.1-405B's and DeepSeek-V3's 128 heads are the most released); check the value"),
        (("vocab_size: 100", "vocab_size: 100000000000"),
         ":7: vocab_size: 100,000,000,000 is more than 16,777,216, kvplan's limit, far above any real model "
         "(Gemma-3's 262,208 tokens is the largest vocabulary released); check the value"),
        (("", "sliding_window: 100000000000000\n"),
         ":8: sliding_window: 100,000,000,000,000 is more than 1,073,741,824, kvplan's limit, far above any real model "
         "(Llama-4 Scout's 10,485,760 tokens is the longest context released); check the value"),
        (("", "hidden_size: 128\n"), ":8: duplicate key 'hidden_size' (first at line 4)"),
    ],
)
@pytest.mark.parametrize("command", ["estimate", "show"])
def test_a_bad_spec_file_gets_one_exact_line_and_exit_2(tmp_path, capsys, command, edit, message):
    path = tmp_path / "my-model.yaml"
    path.write_text(BASE.replace(*edit) if edit[0] else BASE + edit[1])
    r = run_cli(capsys, command, str(path))
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"error: {path}{message}\n")


def test_the_shipped_specs_are_far_inside_every_bound():
    from kvplan.sources.catalog import catalog_names, resolve_spec

    for name in catalog_names():
        spec = resolve_spec(name)
        for field, (limit, _) in SIZE_LIMITS.items():
            value = getattr(spec, field)
            assert value is None or value * 10 <= limit, (name, field)


def test_every_bounded_name_is_a_spec_field():
    assert ModelSpec.model_fields.keys() >= SIZE_LIMITS.keys()


def test_expert_weight_parameters():
    from conftest import make_spec

    # gate + up (64 -> 32 each) and down (32 -> 64): 3 x 64 x 32
    moe = make_spec(num_parameters=10**9, num_active_parameters=10**8, num_local_experts=4, num_experts_per_tok=1,
                    moe_intermediate_size=32)
    assert moe.expert_weight_parameters == 3 * 64 * 32 == 6144
    assert make_spec(intermediate_size=None).expert_weight_parameters == 0  # no width: nothing
