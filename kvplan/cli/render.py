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

from kvplan.model.kinds import KINDS_BY_NAME
from kvplan.units import counted, fmt_bytes, fmt_int


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def to_json(data: Any) -> str:
    """kvplan's JSON on stdout: each object carries "schema_version" first (kvplan.schema)."""
    from kvplan.schema import stamped

    return json.dumps(stamped(data), indent=2, default=str)


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


# Output width. COLUMNS wins (as for `ls` and rich); else a terminal's own width; else, piped
# to a file or a CI log, PIPED_WIDTH: wider than 80 so tables keep one row per line, narrow
# enough to read in a laptop's terminal or an editor. Below MIN_WIDTH no table can be laid out.
PIPED_WIDTH = 120
MIN_WIDTH = 40


def output_width(stream=None) -> int:
    """Columns to lay text out in: $COLUMNS, else the terminal's width, else PIPED_WIDTH (at least MIN_WIDTH)."""
    import os

    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return max(os.get_terminal_size(stream.fileno()).columns, MIN_WIDTH)
    except (OSError, ValueError, AttributeError):  # a stream without a descriptor (pytest's capture)
        pass
    return PIPED_WIDTH


def console(stderr: bool = False, record: bool = False, file=None):
    from rich.console import Console

    width = output_width(file or (sys.stderr if stderr else sys.stdout))
    return Console(stderr=stderr, highlight=False, soft_wrap=False, record=record, width=width, file=file)


def wrap_pair(key: str, value: str, key_width: int, width: int) -> list[str]:
    """A `key  value` line laid out in `width` columns: the value wraps at spaces, each further line
    indented under it, so a wrapped line never reads as a new sentence. Hyphenated names
    (h100-sxm) are not split; only a word longer than the value column is cut."""
    import textwrap

    indent = key_width + 2
    room = max(width - indent, 20)
    chunks = []
    for part in value.split("\n"):
        chunks += textwrap.wrap(part, room, break_on_hyphens=False, break_long_words=True, replace_whitespace=False) or [""]
    first = f"{key:<{key_width}}  {chunks[0]}".rstrip()
    return [first] + [(" " * indent + c).rstrip() for c in chunks[1:]]


def print_pairs(out, pairs: Sequence[tuple[str, str]], key_width: int | None = None) -> None:
    """Print `key  value` lines in `out`'s width (wrap_pair); markup in values is printed as is."""
    key_width = key_width if key_width is not None else max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        for line in wrap_pair(key, value, key_width, out.width):
            out.print(line, markup=False, highlight=False, soft_wrap=True)


def print_text(out, text: str, indent: int = 0) -> None:
    """A paragraph in `out`'s width, wrapped at spaces; further lines indented by `indent`."""
    import textwrap

    lines = textwrap.wrap(text, max(out.width, 20), subsequent_indent=" " * indent, break_on_hyphens=False) or [""]
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def save_svg(out, path: str) -> None:
    """Save what `out` printed as SVG, atomically."""
    from kvplan.atomic import write_text_atomically

    write_text_atomically(path, out.export_svg(title="kvplan"), "--svg")
    sys.stderr.write(f"saved {path}\n")


def rich_table(title: str | None, headers: Sequence[str], rows: Iterable[Sequence[Any]], right_from: int = 1,
               right: Sequence[str] = (), show_lines: bool = False):
    """A table whose columns from `right_from` on, and those named in `right`, are right-aligned.

    Laid out when printed, in the console's width (FittedTable): cells wrap between words.
    """
    rows = [[str(c) for c in row] for row in rows]
    justify = ["right" if i >= right_from or h in right else "left" for i, h in enumerate(headers)]
    return FittedTable(title, list(headers), rows, justify, show_lines)


def column_widths(cells_by_column: Sequence[Sequence[str]], room: int) -> list[int] | None:
    """Text widths for columns that share `room` characters; None when not even their longest words fit.

    `cells_by_column[i]` is column i's header, then its cells. Each column gets at least its
    longest word, so no word is cut. The room left goes first to the columns that need least
    to hold their cells on one line (a "1.00 GiB" is not wrapped to make room for a long
    reason), shared by need among those it cannot satisfy; what is still left lets headers
    stand on one line.
    """
    longest_word = [max((len(w) for c in cells for w in c.split()), default=1) for cells in cells_by_column]
    if sum(longest_word) > room:
        return None
    cell_lines = [max([len(line) for c in cells[1:] for line in c.splitlines()] + [word])
                  for cells, word in zip(cells_by_column, longest_word)]
    all_lines = [max([len(line) for c in cells for line in c.splitlines()] + [word])
                 for cells, word in zip(cells_by_column, longest_word)]
    widths = list(longest_word)
    spare = room - sum(widths)
    for targets in (cell_lines, all_lines):
        spare = _grow(widths, targets, spare)
    return widths


def _grow(widths: list[int], targets: Sequence[int], spare: int) -> int:
    """Widen `widths` toward `targets` with `spare` characters; return what is left.

    Least need first, each in full while the spare lasts; the rest is shared by need
    among the columns it cannot satisfy (integer shares, the remainder to the neediest).
    """
    wants = {i: t - w for i, (w, t) in enumerate(zip(widths, targets)) if t > w}
    for i in sorted(wants, key=lambda k: wants[k]):
        if wants[i] > spare:
            break
        widths[i] += wants[i]
        spare -= wants.pop(i)
    if not wants:
        return spare
    total = sum(wants.values())
    shares = {i: spare * want // total for i, want in wants.items()}
    remainder = spare - sum(shares.values())
    for n, i in enumerate(sorted(wants, key=lambda k: wants[k], reverse=True)):
        widths[i] += shares[i] + (1 if n < remainder else 0)
    return 0


class FittedTable:
    """A rich table built at print time for the console's width (column_widths)."""

    def __init__(self, title, headers, rows, justify, show_lines=False, section_ends=frozenset()):
        """`rows` hold str or rich Text cells; a rule follows each row index in `section_ends`."""
        self.title, self.headers, self.rows, self.justify, self.show_lines = title, headers, rows, justify, show_lines
        self.section_ends = section_ends

    def table(self, width: int):
        """The table in `width` columns: ruled; else without rules (a narrow console); else None,
        when not even the longest words fit side by side."""
        from rich import box
        from rich.table import Table

        n = len(self.headers)
        cells = [[self.headers[i]] + [str(r[i]) for r in self.rows if i < len(r)] for i in range(n)]
        layouts = (  # (characters besides the text, box): ruled; a rule under the head only; no rules
            (3 * n + 1, box.HEAVY_HEAD),  # one space each side of a cell, n + 1 rules
            (3 * n - 3, box.SIMPLE_HEAD),  # n - 1 blank rules, no edges, no space at the edges
            (2 * n - 2, None),  # two spaces between cells
        )
        for overhead, style in layouts:
            widths = column_widths(cells, width - overhead)
            if widths is not None:
                break
        else:
            return None
        ruled = style is box.HEAVY_HEAD
        # a cell wrapped onto several lines: a blank line (SIMPLE_HEAD's row rule) tells rows apart
        wrapped = any(len(line) > w for col, w in zip(cells, widths) for c in col[1:] for line in c.splitlines())
        lines = self.show_lines or (wrapped and style is box.SIMPLE_HEAD)
        title_width = min(len(self.title), width) if self.title else None  # the title on one line when it fits
        table = Table(title=self.title, title_justify="left", header_style="bold", min_width=title_width,
                      show_lines=lines, box=style, pad_edge=ruled, show_edge=ruled)
        for header, justify, w in zip(self.headers, self.justify, widths):
            table.add_column(header, justify=justify, width=w)
        for i, row in enumerate(self.rows):
            table.add_row(*row, end_section=i in self.section_ends and i != len(self.rows) - 1)
        return table

    def records(self, width: int):
        """Too narrow for a table: each row as `header  value` lines (wrap_pair), a blank line between rows."""
        from rich.text import Text

        import textwrap

        key_width = max(len(h) for h in self.headers)
        lines = textwrap.wrap(self.title, width, break_on_hyphens=False) if self.title else []
        above: list[str] = []
        for i, row in enumerate(self.rows):
            lines += [""] if i or self.title else []
            # a blank cell under a value means "the same" in a table (check's deployment): say it again here
            shown = [str(v) or (above[k] if k < len(above) else "") for k, v in enumerate(row)]
            above = shown
            for header, value in zip(self.headers, shown):
                lines += wrap_pair(header, value.replace("\n", " "), key_width, width)
        return [Text(line) for line in lines]

    def __rich_console__(self, console, options):
        table = self.table(options.max_width)
        if table is not None:
            yield table
        else:
            yield from self.records(options.max_width)

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(1, options.max_width)


def write(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def size(n: int, exact: bool) -> str:
    """'64.00 GiB', or with --bytes '64.00 GiB (68,719,476,736 B)'."""
    if exact and n >= 1024:
        return f"{fmt_bytes(n)} ({fmt_int(n)} B)"
    return fmt_bytes(n)


# ------------------------------------------------------------------ estimate

# each kind's label, by the name results carry (kvplan.model.kinds defines it)
KIND_LABEL = {name: rule.label for name, rule in KINDS_BY_NAME.items()}


def estimate_kind_rows(est: dict, exact: bool) -> list[list[str]]:
    rows = []
    for k in est["by_kind"]:
        rule = KINDS_BY_NAME[k["kind"]]
        held = fmt_int(k["tokens_held"]) if rule.has_kv else "—"
        if k["tokens_reserved"] != k["tokens_held"] and rule.has_kv:
            held += f" ({fmt_int(k['tokens_reserved'])} paged)"
        per_token = (
            f"{fmt_int(k['state_bytes_per_sequence_per_layer'])} B/seq"
            if rule.has_state
            else f"{fmt_int(k['bytes_per_token_per_layer'])} B"
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
    "KV heads / rank",
    "tokens held",
    "bytes / token / layer",
    "per sequence",
    "total (batch, ranks, paged)",
]


def estimate_summary_lines(est: dict, exact: bool) -> list[tuple[str, str]]:
    lines = [
        ("KV bytes per token", f"{fmt_int(est['kv_bytes_per_token'])} B (all layers, one copy, before windows)"),
        ("KV bytes per sequence", size(est["kv_bytes_per_sequence"], exact) + f" at {fmt_int(est['context'])} tokens"),
        ("KV bytes total", size(est["kv_bytes_total"], exact) + f" for {counted(_instance_batch(est), 'sequence')}, paged, all ranks"
         + (" of one data-parallel instance" if est.get("data_parallel_size", 1) > 1 else "")),
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
    for t in est.get("state_tensors") or ():  # each tensor of a state layer, its dtype and bytes
        shape = " x ".join(fmt_int(n) for n in t["shape"])
        lines.append((f"state: {t['name']}", f"{fmt_int(t['bytes_per_sequence_per_layer'])} B per sequence per layer "
                                             f"({t['dtype']}, {shape})"))
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
    if est.get("data_parallel_size", 1) > 1:
        parts.append(f"dp {est['data_parallel_size']} (the table: one instance, {fmt_int(_instance_batch(est))} sequences)")
    return " · ".join(parts)


def _instance_batch(r: dict) -> int:
    """Sequences on one data-parallel instance (the busiest): ⌈batch / dp⌉; the batch itself without --dp."""
    return -(-r["batch"] // r.get("data_parallel_size", 1))


SWEEP_HEADERS = ["context", "batch", "KV dtype", "bytes / token", "per sequence", "total", "per rank"]


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


# ------------------------------------------------------------------ plans (estimate --gpu)

GRID_HEADERS = ["GPU", "tp", "pp", "context", "batch", "KV dtype", "KV budget / GPU", "max seqs", "max context", "decode step", "tok/s", "$/1M out"]


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:,.2f} s"
    return f"{s * 1000:,.2f} ms"


def fmt_rate(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def does_not_run(r: dict, exact: bool = False) -> str | None:
    """Why a plan has no decode step (not one sequence fits), in the order a reader checks; None when it runs."""
    if r.get("vllm_starts") is False and r["max_concurrent_sequences"] >= 1:
        return "vLLM refuses to start at this context"
    if r["max_concurrent_sequences"] >= 1:
        return None
    weights, usable = r["weights_bytes_per_gpu"], r["usable_bytes_per_gpu"]
    if weights > usable:
        return f"the weights alone take {size(weights, exact)} per GPU, more than the {size(usable, exact)} usable"
    if r["kv_budget_bytes_per_gpu"] <= 0:
        taken = weights + r["activation_bytes_per_gpu"] + r["non_torch_bytes_per_gpu"]
        return f"weights, activations and non-torch memory take {size(taken, exact)} per GPU, more than the {size(usable, exact)} usable"
    return f"not one sequence of {fmt_int(r['context'])} tokens fits"


def fmt_usd(x: float | None) -> str:
    return "—" if x is None else f"${x:,.3f}"


def grid_row(r: dict) -> list[str]:
    return [
        r["gpu"], str(r["tensor_parallel_size"]), str(r["pipeline_parallel_size"]), fmt_int(r["context"]), fmt_int(r["batch"]),
        r["kv_cache_dtype"], fmt_bytes(r["kv_budget_bytes_per_gpu"]), fmt_int(r["max_concurrent_sequences"]),
        fmt_int(r["max_context_tokens"]), fmt_seconds(r["decode_step_s"]), fmt_rate(r["tokens_per_s"]),
        fmt_usd(r["usd_per_million_output_tokens"]),
    ]


MAP_SEGMENTS = [  # (label, style, char)
    ("weights", "blue", "█"),
    ("KV in use", "green", "█"),
    ("KV free", "green", "░"),
    ("activations", "magenta", "█"),
    ("non-torch", "yellow", "█"),
    ("reserved", "white", "▒"),
    ("over", "red", "█"),
]


def memory_segments(r: dict, stage: dict) -> list[tuple[str, int]]:
    """Bytes of each memory-map segment for one rank of one stage (the one rule `--plot` draws too)."""
    from kvplan.plan.charts import memory_segments

    return memory_segments(r, stage)


def memory_bar(r: dict, stage: dict, width: int = 60):
    from rich.text import Text

    segments = memory_segments(r, stage)
    scale = max(r["gpu_memory_bytes"], sum(b for _, b in segments))
    text = Text()
    used_cells = 0
    for (label, style, char), (_, nbytes) in zip(MAP_SEGMENTS, segments):
        cells = round(nbytes / scale * width) if nbytes > 0 else 0
        if nbytes > 0 and cells == 0:
            cells = 1
        cells = min(cells, width + 10 - used_cells)
        used_cells += cells
        text.append(char * cells, style=style)
    return text


def weights_dtype_text(r: dict) -> str:
    """`fp8`, or `mxfp4 routed experts only` when the spec quantises only the experts."""
    if r.get("weights_quantized") != "experts" or r["weights_dtype"] in ("bf16", "fp16", "fp32"):
        return r["weights_dtype"]
    return f"{r['weights_dtype']} routed experts only"


def weights_text(r: dict) -> str:
    """The weights line's source: `from the file headers (GGUF tensor types); --dtype casts`,
    `bf16, --dtype` (given), or `bf16, --dtype; parameter formula` (the spec's dtype)."""
    source = r.get("weights_source", "")
    if source == "--weights-bytes":
        return "from --weights-bytes"
    if source.startswith("file headers"):
        return f"from the {source}; --dtype casts"
    if source.startswith("parameter formula"):
        return f"{weights_dtype_text(r)}, --dtype; parameter formula"
    return f"{weights_dtype_text(r)}, --dtype"


def plan_lines(r: dict, exact: bool) -> list[tuple[str, str]]:
    a = r["assumptions"]
    lines = [
        ("GPU", f"{r['gpu']} × {r['gpus']} (tp {r['tensor_parallel_size']}, pp {r['pipeline_parallel_size']}"
         + (f", dp {r['data_parallel_size']}" if r.get("data_parallel_size", 1) > 1 else "") + "), "
         f"{size(r['gpu_memory_bytes'], exact)} each, engine {r['engine']}, {r['block_size']}-token blocks"),
        ("usable", f"{size(r['usable_bytes_per_gpu'], exact)} = total × {r['gpu_memory_utilization']} (--gpu-memory-utilization)"
         if r["cuda_total_memory_bytes"] == r["gpu_memory_bytes"] else
         f"{size(r['usable_bytes_per_gpu'], exact)} = CUDA's total {size(r['cuda_total_memory_bytes'], exact)} "
         f"(--cuda-total-memory) × {r['gpu_memory_utilization']} (--gpu-memory-utilization)"),
        ("weights", f"{size(r['weights_bytes_per_gpu'], exact)} per GPU ({weights_text(r)})"),
        ("activations", f"{size(r['activation_bytes_per_gpu'], exact)} ({'estimated; --activation-memory' if r['activation_estimated'] else '--activation-memory'})"),
        ("non-torch", f"{size(r['non_torch_bytes_per_gpu'], exact)} (--non-torch-memory)"),
        ("KV budget", f"{size(r['kv_budget_bytes_per_gpu'], exact)} per GPU"),
    ]
    verdict = "fits" if r["fits"] else "does NOT fit"
    detail = (
        f"{verdict}: {fmt_int(_instance_batch(r))} × {fmt_int(r['context'])} tokens reserve {size(r['kv_bytes_per_gpu_at_batch'], exact)} per GPU"
        + (f" (each instance's share of --batch {fmt_int(r['batch'])})" if r.get("data_parallel_size", 1) > 1 else "")
    )
    stopped = does_not_run(r, exact)
    if r["fits"] and r["headroom_pct"] is not None:
        detail += f", {r['headroom_pct']:.1f}% headroom"
    elif r["kv_budget_bytes_per_gpu"] <= 0:  # the model itself does not fit: say so first
        detail = f"does NOT fit: {stopped} ({size(r['shortfall_bytes'], exact)} short)"
    elif not r["fits"]:
        detail += f", {size(r['shortfall_bytes'], exact)} short"
    if r.get("vllm_starts") is False and r["fits"]:  # memory holds it, but vLLM stops at start-up
        detail = f"vLLM refuses to start (its words below); the memory alone would fit: {detail.removeprefix('fits: ')}"
    lines.append(("verdict", detail))
    lines.append(("max concurrency", f"{counted(r['max_concurrent_sequences'], 'sequence')} of {fmt_int(r['context'])} tokens "
                  f"(KV memory); max_num_seqs {fmt_int(r['max_num_seqs'])} run a step at most"))
    lines.append(("max context", f"{fmt_int(r['max_context_tokens'])} tokens at batch {fmt_int(_instance_batch(r))} (limited by {r['max_context_limited_by']})"))
    for line in r["vllm_log"]:
        lines.append(("vLLM would log", line))
    what = None
    if stopped:
        what = "the model does not fit on this GPU" if r["kv_budget_bytes_per_gpu"] <= 0 else stopped
    lines += roofline_lines(r, exact, batch=min(_instance_batch(r), r["max_num_seqs"]), fits=r["fits"],
                            max_seqs=r["max_concurrent_sequences"],
                            stopped=what)
    for s in r["suggestions"]:
        lines.append(("would fit", s))
    for n in r["notes"]:
        lines.append(("note", n))
    return lines


def roofline_lines(r: dict, exact: bool, *, batch: int, fits: bool, max_seqs: int, stopped: str | None) -> list[tuple[str, str]]:
    """Decode step, prefill, throughput, cost and workload: a `Plan`'s or a profile's `Roofline` (as dicts).

    `stopped` says why nothing runs (None: it runs); a batch that does not fit is timed all the same, said beside it.
    """
    a = r["assumptions"]
    lines = []
    each = " per instance" if r.get("data_parallel_size", 1) > 1 else ""  # --data-parallel-size: one instance's batch
    if stopped:  # no step runs: no time to print as if one did
        lines.append(("decode step", f"— ({stopped}: nothing runs)"))
        lines.append(("prefill", "—"))
        lines.append(("throughput", "—"))
    else:
        if_fitted = "" if fits else f" — if batch {fmt_int(batch)} fitted; {counted(max_seqs, 'sequence')} do"
        lines.append(("decode step", f"{fmt_seconds(r['decode_step_s'])} at batch {fmt_int(batch)}{each} ({r['decode_bound']}-bound: "
                      f"{size(r['decode_bytes_per_step'], exact)} read per step, bandwidth × {a['bandwidth_efficiency']:.3g}){if_fitted}"))
        lines.append(("prefill", f"{fmt_seconds(r['prefill_s'])} for {fmt_int(r['prefill_tokens'])} prompt tokens (peak × {a['compute_efficiency']:.3g})"))
        lines.append(("throughput", f"{r['tokens_per_s']:,.0f} tok/s ({r['tokens_per_s_per_gpu']:,.0f} per GPU) at batch {fmt_int(batch)}{each}"
                      + ("" if fits else " — if it fitted")))
    if r["cost_batch"] and not r["usd_per_hour"]:
        lines.append(("cost", f"— (no price: give --usd-per-hour); {r['tokens_per_s_at_cost_batch']:,.0f} tok/s at batch {fmt_int(r['cost_batch'])}"))
    elif r["cost_batch"]:
        lines.append(("cost", f"{fmt_usd(r['usd_per_million_output_tokens'])} per 1M output, {fmt_usd(r['usd_per_million_input_tokens'])} per 1M input "
                      f"at batch {fmt_int(r['cost_batch'])}{each} ({r['tokens_per_s_at_cost_batch']:,.0f} tok/s, ${r['usd_per_hour']:,.2f}/h)"))
    if r["gpus_needed"] is not None:
        text = f"{counted(r['gpus_needed'], 'GPU')} for the workload"
        if r["gpus_needed_without_prefix_sharing"] not in (None, r["gpus_needed"]):
            text += f" ({fmt_int(r['gpus_needed_without_prefix_sharing'])} without the shared prefix)"
        lines.append(("workload", text))
    return lines


def print_plan(out, r: dict, exact: bool) -> None:
    out.print(rich_table(estimate_header(r), KIND_HEADERS, estimate_kind_rows(r, exact)))
    print_pairs(out, estimate_summary_lines(r, exact), 22)
    out.print()
    from rich.text import Text

    out.print(Text.assemble(("Memory per GPU", "bold"), f" ({r['gpu']}, {fmt_bytes(r['gpu_memory_bytes'])})"))
    for i, stage in enumerate(r["stages"]):
        label = f"stage {i} ({counted(stage['layers'], 'layer')})" if len(r["stages"]) > 1 else "every GPU"
        out.print(memory_bar(r, stage, min(60, out.width - len(label) - 12)), f" {label}")
    legend = Text()
    for i, (label, style, char) in enumerate(MAP_SEGMENTS):
        legend.append("  " if i else "")
        legend.append(char * 2, style=style)
        legend.append(f" {label}")
    out.print(legend)
    out.print()
    print_pairs(out, plan_lines(r, exact), 16)
    curve = r.get("concurrency_by_context")
    if curve:
        out.print()
        out.print(rich_table("Max concurrency by context", ["context", "max sequences"],
                             [[fmt_int(p["context"]), fmt_int(p["max_concurrent_sequences"])] for p in curve]))


def plan_markdown(rows: list[dict], exact: bool) -> str:
    if len(rows) > 1:
        return markdown_table(GRID_HEADERS, [grid_row(r) for r in rows])
    r = rows[0]
    text = f"**{estimate_header(r)}**\n\n"
    text += markdown_table(KIND_HEADERS, estimate_kind_rows(r, exact))
    text += "\n" + markdown_table(["", "value"], estimate_summary_lines(r, exact) + plan_lines(r, exact))
    return text
