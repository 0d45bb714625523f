"""Tests that kill the survivors of `python tools/mutate.py kvplan/engines/vllm_rules.py kvplan/engines/vllm_flags.py
--sample 12 --seed 7` (docs/mutation.md): each expected value from the rule's source, not from the code."""

from __future__ import annotations

import kvplan


def test_ideal_on_a_gpu_pages_nothing_unless_asked():
    """ideal holds exactly the tokens: with no --block-size its capacity pages in blocks of 1 token
    (vllm_rules.pool_capacity: `opts.block_size or 1`), at an odd context too."""
    c = kvplan.compare("llama-3.1-8b", context=8191, batch=1, gpu="h100-sxm", engines=["ideal"])
    assert c.rows[0].capacity.settings["block_size"] == 1


def test_the_default_vllm_line_is_the_newest_for_ideal_too():
    """ideal on a >= 160 GiB card takes vLLM 0.32's batch defaults (get_batch_defaults: 16,384 tokens on an
    MI300X's 192 GB; 0.10 had no such row and gave 8,192): the default version is the newest, 0.32."""
    a = kvplan.estimate("llama-3.1-8b", context=8192, batch=1, gpu="mi300x", engine="ideal")
    assert a.to_dict()["assumptions"]["max_num_batched_tokens"] == 16384
    assert a.to_dict()["assumptions"]["scheduler_limits"].startswith("vLLM 0.32 get_batch_defaults")
