"""Renderers: result objects to a rich table, JSON, CSV or Markdown.

Data goes to stdout, messages to stderr. rich is imported only for tables, so
`--format json` stays lean.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import Enum
from typing import Any, Iterable, Sequence

from kvplan.units import fmt_bytes, fmt_int


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def scalar_fields(record: dict) -> dict:
    """The non-list, non-dict fields of a record (one CSV row)."""
    return {k: v for k, v in record.items() if not isinstance(v, (list, dict))}


def to_csv(records: Sequence[dict]) -> str:
    if not records:
        return ""
    rows = [scalar_fields(r) for r in records]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def esc(cell: Any) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def rich_table(title: str | None, headers: Sequence[str], rows: Iterable[Sequence[Any]], right_from: int = 1):
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i >= right_from else "left")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    return table


def write(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def size(n: int, exact: bool) -> str:
    """'64.00 GiB', or with --bytes '64.00 GiB (68,719,476,736 B)'."""
    if exact and n >= 1024:
        return f"{fmt_bytes(n)} ({fmt_int(n)} B)"
    return fmt_bytes(n)


# ------------------------------------------------------------------ estimate

KIND_LABEL = {
    "full_attention": "full attention",
    "mla": "MLA latent",
    "sliding_attention": "sliding window",
    "chunked_attention": "chunked local",
    "state": "state (SSM)",
    "kv_shared": "KV shared",
}


def estimate_kind_rows(est: dict, exact: bool) -> list[list[str]]:
    rows = []
    for k in est["by_kind"]:
        held = fmt_int(k["tokens_held"]) if k["kind"] not in ("state", "kv_shared") else "—"
        if k["tokens_reserved"] != k["tokens_held"] and k["kind"] not in ("state", "kv_shared"):
            held += f" ({fmt_int(k['tokens_reserved'])} paged)"
        per_token = (
            f"{fmt_int(k['bytes_per_token_per_layer'])} B"
            if k["kind"] != "state"
            else f"{fmt_int(k['state_bytes_per_sequence_per_layer'])} B/seq"
        )
        rows.append(
            [
                KIND_LABEL.get(k["kind"], k["kind"]),
                fmt_int(k["layers"]),
                fmt_int(k["kv_heads_per_rank"]) if k["kv_heads_per_rank"] else "—",
                held,
                per_token,
                size(k["bytes_per_sequence"], exact),
                size(k["bytes_total"], exact),
            ]
        )
    return rows


KIND_HEADERS = [
    "layer kind",
    "layers",
    "KV heads/rank",
    "tokens held",
    "bytes/token/layer",
    "per sequence",
    "total (batch × ranks)",
]


def estimate_summary_lines(est: dict, exact: bool) -> list[tuple[str, str]]:
    lines = [
        ("KV bytes per token", f"{fmt_int(est['kv_bytes_per_token'])} B (all layers, one copy, before windows)"),
        ("KV bytes per sequence", size(est["kv_bytes_per_sequence"], exact) + f" at {fmt_int(est['context'])} tokens"),
        ("KV bytes total", size(est["kv_bytes_total"], exact) + f" for {fmt_int(est['batch'])} sequences, paged, all ranks"),
        ("KV bytes per rank", size(est["kv_bytes_per_rank"], exact) + " (the largest rank)"),
    ]
    if est["paging_bytes"]:
        lines.append(("  of which paging", size(est["paging_bytes"], exact) + f" rounding up to {est['block_size']}-token blocks"))
    if est["replication_bytes"]:
        lines.append(("  of which replication", size(est["replication_bytes"], exact) + " KV copies held on more than one tp rank"))
    if est["quantisation_overhead_bytes_per_token"]:
        lines.append(
            ("quantisation overhead", f"{fmt_int(est['quantisation_overhead_bytes_per_token'])} B per token (scales, zero-points, group padding)")
        )
    return lines


def estimate_header(est: dict) -> str:
    dtype = est["kv_cache_dtype"]
    parts = [
        est["model"],
        f"context {fmt_int(est['context'])}",
        f"batch {fmt_int(est['batch'])}",
        f"KV {dtype}",
        f"{est['block_size']}-token blocks" if est["block_size"] > 1 else "no paging",
        f"tp {est['tensor_parallel_size']}",
        f"pp {est['pipeline_parallel_size']}",
    ]
    if est["pipeline_parallel_size"] > 1:
        parts[-1] += " (layers " + "/".join(str(n) for n in est["layers_per_stage"]) + ")"
    return " · ".join(parts)


SWEEP_HEADERS = ["context", "batch", "KV dtype", "bytes/token", "per sequence", "total", "per rank"]


def sweep_row(est: dict, exact: bool) -> list[str]:
    return [
        fmt_int(est["context"]),
        fmt_int(est["batch"]),
        est["kv_cache_dtype"],
        fmt_int(est["kv_bytes_per_token"]),
        size(est["kv_bytes_per_sequence"], exact),
        size(est["kv_bytes_total"], exact),
        size(est["kv_bytes_per_rank"], exact),
    ]
