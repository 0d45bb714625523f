"""kvplan/model/formats.py: every named KV format's bytes, worked from the engines' own definitions.

Found by `python tools/mutate.py kvplan/model/formats.py --sample 15 --seed 1` (docs/mutation.md): fp8_e4m3 as
7 bits passed every test, because no test sized a cache in fp8_e4m3 (or fp8_e5m2). Each row below is
one vector of 128 values (a llama-3.1-8b head) in the format, from its source:
- fp8 / fp8_e4m3 / fp8_e5m2 / int8: one byte per value (vLLM STR_DTYPE_TO_TORCH_DTYPE: torch.float8_e4m3fn,
  torch.float8_e5m2, torch.int8 all have itemsize 1; the per-tensor scale lives outside the cache).
- *_per_token_head: one byte per value + one fp32 scale per token per head (vLLM's per-token-head
  quantisation): 128 + 4.
- nvfp4: 16 4-bit values (8 B) + one fp8 scale (1 B) per group of 16: 8 groups x 9 B.
- llama.cpp blocks of 32 (ggml/src/ggml-common.h): block_q8_0 = ggml_half d + 32 int8 = 34 B;
  block_q4_0 = d + 16 B of nibbles = 18 B; block_q4_1 = d + m + 16 B = 20 B; block_q5_0 = d + 4 B qh +
  16 B qs = 22 B; block_q5_1 = d + m + 4 + 16 = 24 B; block_iq4_nl = d + 16 B = 18 B. 4 blocks per 128.
"""

from __future__ import annotations

import pytest

from cli_helpers import run_cli
from kvplan.model.formats import parse_format

PER_128 = {
    "fp32": 512, "fp16": 256, "bf16": 256,
    "fp8": 128, "fp8_e4m3": 128, "fp8_e5m2": 128, "int8": 128,
    "fp8_per_token_head": 132, "int8_per_token_head": 132,
    "nvfp4": 8 * 9,
    "q8_0": 4 * 34, "q4_0": 4 * 18, "q4_1": 4 * 20, "q5_0": 4 * 22, "q5_1": 4 * 24, "iq4_nl": 4 * 18,
}


# 1,056 values = 33 blocks of 32 (66 groups of 16 for nvfp4): a count where a block of 31 or 33 values
# would give another number of blocks than 32 does (128 = 4 blocks of 32 = 4 blocks of 33, rounded up)
PER_1056 = {
    "nvfp4": 66 * 9,
    "q8_0": 33 * 34, "q4_0": 33 * 18, "q4_1": 33 * 20, "q5_0": 33 * 22, "q5_1": 33 * 24, "iq4_nl": 33 * 18,
}


@pytest.mark.parametrize("name", sorted(PER_128))
def test_a_head_of_128_values_in_each_named_format(name):
    got = parse_format(name).bytes_for(128)
    assert got == PER_128[name] and type(got) is int  # bytes stay integers (STYLE.md 3): never 72.0


@pytest.mark.parametrize("name", sorted(PER_1056))
def test_33_blocks_of_each_block_format(name):
    got = parse_format(name).bytes_for(1056)
    assert got == PER_1056[name] and type(got) is int


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_estimate_in_an_fp8_variant_is_one_byte_per_value(capsys, name):
    # llama-3.1-8b: 32 layers x 8 KV heads x 128 x (K + V) x 1 B = 65,536 B per token
    import json

    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--kv-cache-dtype", name, "-f", "json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["kv_cache_dtype"], got["kv_bytes_per_token"]) == (name, 32 * 8 * 128 * 2 * 1)
    assert type(got["kv_bytes_per_token"]) is int  # JSON 65536, not 65536.0
