"""kvplan/model/layout.py: CacheLayout refuses sizes below one by name before any arithmetic.

Found by `python tools/mutate.py kvplan/model/layout.py --sample 15 --seed 1` (docs/mutation.md): no test
gave `CacheLayout` a tensor-parallel size of 0 (the CLI refuses it earlier), so its own refusal could go
and a bare ZeroDivisionError (heads % 0 in check_tensor_parallel) would reach the Python API instead.
"""

from __future__ import annotations

import pytest

from kvplan.errors import InputError
from kvplan.model.formats import parse_format_pair
from kvplan.model.layout import CacheLayout
from kvplan.sources.catalog import resolve_spec


@pytest.mark.parametrize("kw, message", [
    ({"tp": 0}, "--tensor-parallel-size must be at least 1, got 0"),
    ({"tp": -2}, "--tensor-parallel-size must be at least 1, got -2"),
    ({"pp": 0}, "--pipeline-parallel-size must be at least 1, got 0"),
    ({"block_size": 0}, "--block-size must be a positive number of tokens, got 0"),
])
def test_cache_layout_refuses_a_size_below_one_by_name(kw, message):
    spec = resolve_spec("llama-3.1-8b")
    with pytest.raises(InputError) as err:
        CacheLayout(spec, parse_format_pair("auto", spec.dtype), **kw)
    assert err.value.message == message
