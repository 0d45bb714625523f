"""kvplan/model/spec_rules.py: the cheap check takes every valid spec it can, file weights included.

Found by `python tools/mutate.py kvplan/model/spec_rules.py --sample 15 --seed 1` (docs/mutation.md).
`shape_if_valid` returning None only sends a spec through pydantic (`ModelSpec`), which answers the
same, so a cheap check that refuses a valid `file_weight_bytes` passed every test: no catalog spec has
one, but every spec imported from a GGUF or safetensors file does (kvplan/sources/resolve.py). The
expected fields are the spec's own YAML values, as `ModelSpec` (kvplan/model/spec.py) keeps them.
"""

from __future__ import annotations

import pytest

from kvplan.model.spec import ModelSpec
from kvplan.model.spec_rules import shape_if_valid

TINY = dict(name="tiny", source="test", num_parameters=10**7, hidden_size=64, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=256)


@pytest.mark.parametrize("weights", [
    {"source": "gguf", "embedding": 32_768, "body": 9_000_000},
    {"source": "safetensors", "embedding": 32_768, "lm_head": 32_768, "body": 9_000_000},
])
def test_a_valid_file_weight_bytes_takes_the_cheap_path(weights):
    fields = dict(TINY, file_weight_bytes=weights)
    shape = shape_if_valid(fields)
    assert shape is not None  # taken as it stands, not sent on to pydantic
    want = {"source": weights["source"], "embedding": 32_768, "lm_head": weights.get("lm_head", 0),
            "body": 9_000_000, "routed_experts": 0}  # FileWeightBytes: parts not given are 0 B
    assert shape.model_dump()["file_weight_bytes"] == want
    assert shape.model_dump() == ModelSpec.model_validate(fields).model_dump()
