"""`--plot FILE`: draw `kvplan.plan.charts`' charts with matplotlib into a .png, .svg or .html file.

matplotlib is the optional extra `kvplan[plot]`, imported only here and only when plotting:
`kvplan estimate` without --plot never loads it (tests/test_fast_path.py). The .html file is
self-contained: the SVG inline and each series' figures in a table under it (no script, no network).
Every chart goes into one figure, one panel each, top to bottom: memory map, concurrency, KV bytes (search: the
cost / latency front against TPOT, then against TTFT).
The file is written atomically (kvplan.atomic) after the destination was checked, before any work.
"""

from __future__ import annotations

import html
import io
import math
import os
import sys
from typing import Iterable, Sequence

from kvplan.errors import InputError

EXTENSIONS = (".png", ".svg", ".html")
INSTALL_HINT = "pip install 'kvplan[plot]' (in a checkout: pip install -e '.[plot]')"

# the terminal map's colours (kvplan.cli.render.MAP_SEGMENTS), as print-friendly shades
SEGMENT_STYLE = {
    "weights": ("#4c72b0", None),
    "KV in use": ("#2ca02c", None),
    "KV free": ("#c7e9c0", "//"),
    "activations": ("#b05cc6", None),
    "non-torch": ("#e6b422", None),
    "reserved": ("#c8c8c8", None),
    "over": ("#d62728", "xx"),
}
GIB = 2**30
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def plot_format(path: str) -> str:
    """'png', 'svg' or 'html' from the file name; InputError for any other."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise InputError(f"--plot {path}: the file name must end in .png, .svg or .html")
    return ext[1:]


def check_plot(path: str, *, inputs: Iterable[tuple[str, str]] = (), force: bool = False) -> None:
    """Refuse --plot before any work: a name kvplan cannot draw, no matplotlib, or a file it must not replace."""
    from kvplan.cli import outputs

    fmt = plot_format(path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    kind = {"png": outputs.PLOT_PNG, "svg": outputs.SVG, "html": outputs.PLOT_HTML}[fmt]
    outputs.check_output(path, "--plot", kind, inputs=inputs, force=force)


def save_plot(path: str, charts: Sequence) -> None:
    """Draw `charts` and write them to `path` atomically (its format from its extension)."""
    from kvplan.atomic import write_bytes_atomically

    write_bytes_atomically(path, render_plot(charts, plot_format(path)), "--plot")
    sys.stderr.write(f"saved {path}\n")


def render_plot(charts: Sequence, fmt: str) -> bytes:
    """The file's bytes: a PNG, an SVG, or an HTML page holding the SVG and the figures."""
    if fmt == "html":
        svg = render_plot(charts, "svg").decode("utf-8")
        svg = svg[svg.index("<svg"):]  # inline: no XML declaration or doctype inside HTML
        return html_page(charts, svg).encode("utf-8")
    fig = figure(charts)
    buffer = io.BytesIO()
    if fmt == "svg":  # no date, fixed ids: the same charts give the same file
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    else:
        fig.savefig(buffer, format="png", dpi=110, metadata={"Software": "kvplan"})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


# ------------------------------------------------------------------ the figure


def figure(charts: Sequence):
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, never a display
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "kvplan"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: labels searchable, selectable, and the file small
    heights = [max(2.2, 0.9 + 0.42 * len(c.bars)) if c.kind == "memory" else
               5.0 + 0.16 * len(c.notes) if c.kind == "front" else 4.2 for c in charts]
    fig, axes = plt.subplots(len(charts), 1, figsize=(12, sum(heights) + 0.4 * len(charts)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, layout="constrained")
    for ax, chart in zip(axes[:, 0], charts):
        if chart.kind == "memory":
            _memory(ax, chart)
        elif chart.kind == "front":
            _front(ax, chart)
        else:
            _curves(ax, chart)
    return fig


def _front(ax, chart) -> None:
    """Every feasible candidate a faint point; the front a line through its rows, each labelled; the rejected
    values of each dimension in the legend, with why."""
    if chart.cloud:
        xs, ys = zip(*chart.cloud)
        ax.scatter(xs, ys, s=6, color="#9ab3d5", alpha=0.35, linewidths=0, label="feasible candidates (screened)")
    if chart.front:  # the rows in the table's order, cheapest first
        ax.plot([p[0] for p in chart.front], [p[1] for p in chart.front], color="#d62728", marker="o", markersize=5,
                linewidth=1.4, label="Pareto front of cost and request latency, cheapest first (estimate's figures)")
        for i, (x, y, label) in enumerate(chart.front, 1):  # numbered as the table numbers the rows
            ax.annotate(f"{i}: {label}", (x, y), textcoords="offset points", xytext=(6, 4 + 9 * (i % 2)), fontsize=7,
                        color="#7f0000")
    for note in chart.notes:  # a legend entry with no mark: why a value never meets the targets
        ax.plot([], [], " ", label=f"rejected: {note}")
    values = [y for _, y in chart.cloud] + [p[1] for p in chart.front]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel(chart.x_label)
    ax.set_ylabel(chart.y_label)
    ax.set_title(chart.title, fontsize=9, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)


def _memory(ax, chart) -> None:
    bars = list(reversed(chart.bars))  # the first deployment on top
    scale = max(max(b.gpu_memory_bytes, sum(n for _, n in b.segments)) for b in bars)
    for y, bar in enumerate(bars):
        left = 0
        for name, nbytes in bar.segments:
            if nbytes <= 0:
                continue
            colour, hatch = SEGMENT_STYLE[name]
            ax.barh(y, nbytes / GIB, left=left / GIB, color=colour, hatch=hatch, edgecolor="white", linewidth=0.6,
                    height=0.7)
            if nbytes / scale >= 0.07:  # room for its size inside the segment
                ax.text((left + nbytes / 2) / GIB, y, f"{nbytes / GIB:,.1f} GiB", ha="center", va="center", fontsize=8,
                        color="white" if name in ("weights", "KV in use", "activations", "over") else "black")
            left += nbytes
        ax.plot([bar.gpu_memory_bytes / GIB] * 2, [y - 0.42, y + 0.42], color="black", linewidth=1.2)
    ax.set_yticks(range(len(bars)), [b.label for b in bars], fontsize=9)
    ax.set_ylim(-0.6, len(bars) - 0.4)
    ax.set_xlim(0, scale / GIB * 1.01)
    ax.set_xlabel(chart.x_label + " (black tick: the GPU's memory)")
    ax.set_title(chart.title, fontsize=10, loc="left")
    from matplotlib.patches import Patch

    shown = [name for name in SEGMENT_STYLE if any(n > 0 for b in chart.bars for s, n in b.segments if s == name)]
    handles = [Patch(facecolor=SEGMENT_STYLE[n][0], hatch=SEGMENT_STYLE[n][1], edgecolor="white", label=n) for n in shown]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)


def _curves(ax, chart) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    xs = sorted({x for s in chart.series for x in s.x})
    values = [y for s in chart.series for y in s.y if y is not None and y > 0]
    gaps = False
    labelled: list = []  # series whose figures are printed beside their points (those on a labelled context)
    ticks = tick_contexts(xs, [x for x, _ in chart.marks])
    drawn = 0
    for s in chart.series:
        ys = [math.nan if (y is None or y <= 0) else y for y in s.y]
        gaps = gaps or any(math.isnan(y) for y in ys)
        if s.reference:
            style = dict(linestyle="--", color="grey", linewidth=1.2)
        else:  # each later series thinner, with its own marker: one drawn over an equal one still shows beneath it
            style = dict(marker=MARKERS[drawn % len(MARKERS)], markersize=max(3.0, 7.0 - drawn),
                         linewidth=max(1.0, 3.2 - 0.6 * drawn), alpha=0.9)
            drawn += 1
        (line,) = ax.plot(s.x, ys, label=s.label, **style)
        if not s.reference and all(_apart(s, other) for other in labelled):
            labelled.append(s)  # the figure itself beside each point: read, not estimated (only where none overlap)
            for x, y in zip(s.x, ys):
                if not math.isnan(y) and x in ticks:
                    ax.annotate(bytes_text(y) if chart.kind == "kv" else f"{y:,.0f}", (x, y), textcoords="offset points",
                                xytext=(3, 4), fontsize=7, color=line.get_color())
    for i, (x, text) in enumerate(chart.marks):  # one below the other: a window may sit beside the context asked
        asked = text.startswith("--")
        ax.axvline(x, color="black" if asked else "dimgray", linestyle=":" if asked else "-.", linewidth=1)
        last = x >= xs[-1]  # at the right edge: written to the left of its line, clear of the legend
        ax.annotate(text, (x, 1), xycoords=("data", "axes fraction"), xytext=(-3 if last else 3, -10 - 11 * i),
                    textcoords="offset points", fontsize=8, ha="right" if last else "left")
    ax.set_xscale("log", base=2)
    ax.set_xlim(xs[0] / 1.25, xs[-1] * 1.25)
    if values:
        ax.set_yscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(FixedLocator(xs))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: tokens_text(v)))
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    if values:  # powers of two on a byte or count axis: 256 MiB, 512 MiB, 1 GiB ...; 1, 2, 4, 8 ...
        lo, hi = math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))
        step = max(1, (hi - lo + 1) // 10)
        ax.yaxis.set_major_locator(FixedLocator([2.0**k for k in range(lo, hi + 1, step)]))
        ax.set_ylim(2.0**lo / 1.2, 2.0**hi * 1.35)
    else:  # nothing to draw on a log axis: say why on an empty one
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no point: " + ("not one sequence fits at any of these contexts" if chart.kind == "concurrency"
                                           else "the engine refuses every context"),
                transform=ax.transAxes, ha="center", fontsize=10)
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: bytes_text(v) if chart.kind == "kv" else f"{v:,.0f}"))
    ax.set_xlabel(chart.x_label + " (log scale)")
    ax.set_ylabel(chart.y_label + (" (log scale)" if values else ""))
    ax.set_title(chart.title, fontsize=10, loc="left")
    ax.grid(which="major", alpha=0.3)
    if gaps and values:  # a missing point is said, not left to be guessed
        what = "not one sequence fits, or the engine refuses the context" if chart.kind == "concurrency" \
            else "the engine refuses the context"
        ax.text(0.01, 0.02, f"a missing point: {what}", transform=ax.transAxes, fontsize=8, color="dimgray")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)


def tick_contexts(xs: Sequence[int], marked: Sequence[int]) -> list[int]:
    """The contexts labelled on the x axis: the marked ones (asked, windows) and each power of two, less any
    within 15% of one already labelled (2,047 beside 2,048 would print one over the other)."""
    wanted = sorted(set(marked) | {x for x in xs if x & (x - 1) == 0}, key=lambda x: (x not in marked, x))
    kept: list[int] = []
    for x in wanted:
        if all(max(x, k) / min(x, k) >= 1.15 for k in kept):
            kept.append(x)
    return sorted(kept)


def _apart(a, b) -> bool:
    """Whether two series are a quarter of a power of two apart (or more) at every context both have a point at."""
    other = dict(zip(b.x, b.y))
    for x, y in zip(a.x, a.y):
        z = other.get(x)
        if y and z and abs(math.log2(y / z)) < 0.25:
            return False
    return True


def tokens_text(v: float) -> str:
    """1024 -> '1k', 131072 -> '128k', 2**20 -> '1M', 4096+1 -> '4,097'."""
    n = int(round(v))
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return f"{n:,}"


def bytes_text(v: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= scale:
            return f"{v / scale:,.3g} {unit}"
    return f"{v:,.0f} B"


# ------------------------------------------------------------------ html


def html_page(charts: Sequence, svg: str) -> str:
    title = html.escape(charts[-1].title.split(" · ", 1)[-1])
    parts = ["<!DOCTYPE html>", "<!-- kvplan plot -->",
             f'<html lang="en"><head><meta charset="utf-8"><title>kvplan · {title}</title>',
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:0.5em 0 1.5em}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th:first-child,td:first-child"
             "{text-align:left}</style></head><body>", svg]
    for chart in charts:
        parts.append(f"<h3>{html.escape(chart.title)}</h3>")
        if chart.kind == "front":
            head = ["row", "deployment", chart.x_label, chart.y_label]
            rows = [[str(i), label, f"{x:,.3f}", f"{y:,.4f}"] for i, (x, y, label) in enumerate(chart.front, 1)]
            parts.append(_table(head, rows))
            if chart.notes:
                parts.append("<ul>" + "".join(f"<li>rejected: {html.escape(n)}</li>" for n in chart.notes) + "</ul>")
            continue
        if chart.kind == "memory":
            head = ["deployment", "GPU memory"] + [name for name in SEGMENT_STYLE]
            rows = [[b.label, f"{b.gpu_memory_bytes:,}"] + [f"{n:,}" for _, n in b.segments] for b in chart.bars]
            parts.append("<p>bytes per GPU</p>")
        else:
            xs = sorted({x for s in chart.series for x in s.x})
            head = [chart.y_label + " at context"] + [f"{x:,}" for x in xs]
            rows = []
            for s in chart.series:
                by_x = dict(zip(s.x, s.y))
                rows.append([s.label] + ["—" if by_x.get(x) is None else f"{by_x[x]:,}" for x in xs])
        parts.append(_table(head, rows))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"
