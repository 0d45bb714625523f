"""kvplan/options.py: what the option table declares is what the commands do.

Found by `python tools/mutate.py kvplan/options.py --sample 15 --seed 1` (docs/mutation.md). `Option.engines`
says which engines read an option; for the planner's options (--pp, --block-size,
--gpu-memory-utilization, --max-num-batched-tokens) nothing else reads that field, so a wrong
declaration passed every test. Here the declaration is checked against what `kvplan estimate`
actually accepts, engine by engine (README "Engines": the planner's flags are for vllm and ideal, and
each profile refuses them; the profiles model one pipeline stage).
"""

from __future__ import annotations

import pytest

from cli_helpers import run_cli
from kvplan.options import BY_KEY, NAMES

# a value each planner option takes, with what else the flag needs to be read
EXAMPLES = {
    "pp": ["--pp", "2"],
    "block_size": ["--block-size", "32"],
    "max_num_batched_tokens": ["--max-num-batched-tokens", "4096"],
    "gpu_memory_utilization": ["--gpu", "H100", "--gpu-memory-utilization", "0.8"],
}


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_a_planner_options_declared_readers_are_the_engines_that_accept_it(capsys, key):
    accepted = set()
    for engine in NAMES:
        r = run_cli(capsys, "estimate", "llama-3.1-8b", "--engine", engine, *EXAMPLES[key], "-f", "json")
        assert r.exit_code in (0, 2), r.stderr
        if r.exit_code == 0:
            accepted.add(engine)
        else:
            assert EXAMPLES[key][-2] in r.stderr, r.stderr  # refused by name, not for another reason
    assert accepted == {"vllm", "ideal"}
    # the table, in the order --help lists the readers: vllm (the default) first
    assert BY_KEY[key].engines == ("vllm", "ideal")


@pytest.mark.parametrize("key", ["context", "batch", "tp", "pp"])
def test_one_value_takes_a_whole_number_as_it_is(key):
    # a count given as an int (the Python API, a plan value) is that count: no text to parse
    from kvplan.options import one_value

    assert one_value(key, 3000, "compare") == 3000
    assert one_value(key, "3000", "compare") == 3000
