"""Flag values the commands share: comma lists, token counts with k / m, the max_position_embeddings warning.

Imported by every command module (kvplan.cli.app, compare, gate, measure); it imports none of them.
"""

from __future__ import annotations

import sys
from typing import Optional



def parse_int_list(text: str, flag: str, minimum: int = 1) -> list[int]:
    """'1024,8k,1.5k' -> [1024, 8192, 1536]; k = 1024 (kvplan.options.parse_counts)."""
    from kvplan.options import parse_counts

    return parse_counts(text, flag, minimum)


def token_flag(value: Optional[str], flag: str) -> Optional[int]:
    """A token count flag that takes k / m like --context ('1.5k' = 1,536); None when not given."""
    if value is None:
        return None
    from kvplan.plan.deploy import parse_token_count

    return parse_token_count(value, flag)


def warn_beyond_positions(spec, tokens: int, what_happens: str, flag: str = "--context") -> None:
    """A warning on stderr when `tokens` exceeds the model's max_position_embeddings."""
    limit = spec.max_position_embeddings
    if limit and tokens > limit:
        sys.stderr.write(f"warning: {flag} {tokens:,} exceeds {spec.name}'s max_position_embeddings ({limit:,}); {what_happens}\n")


def parse_str_list(text: str, flag: str, choices: tuple[str, ...] = ()) -> list[str]:
    """'h100-sxm,h200' -> ['h100-sxm', 'h200']; an empty entry is refused (kvplan.units.split_list)."""
    from kvplan.units import split_list

    return split_list(text, flag, choices)
