"""Output width: COLUMNS and the terminal honoured, text wrapped between words, tables that fit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_helpers import run_cli
from kvplan.cli.render import PIPED_WIDTH, column_widths, output_width, wrap_pair

EXAMPLE_PLAN = str(Path(__file__).parent.parent / "examples" / "plan.yaml")
COMMANDS = {
    "estimate": ["estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "--context", "8k", "--batch", "100000"],
    "estimate-cache": ["estimate", "gemma-3-27b", "--context", "32k", "--batch", "4", "--bytes"],
    "estimate-grid": ["estimate", "llama-3.1-70b", "--gpu", "h100-sxm,h200,mi300x", "--tp", "2,4,8"],
    "estimate-sweep": ["estimate", "llama-3.1-8b", "-c", "8k,16k", "-b", "1,2"],
    "estimate-llama.cpp": ["estimate", "gemma-3-27b", "--engine", "llama.cpp", "--gpu", "h100-sxm"],
    "compare": ["compare", "gemma-3-27b", "--gpu", "h100-sxm"],
    "check": ["check", EXAMPLE_PLAN],
    "models": ["models"],
    "gpus": ["gpus"],
}
BOX = re.compile(r"[─━│┃┏┓┗┛┡┩┳┻┣┫├┤┬┴┼└┘┌┐╇]")


def words(text: str) -> set[str]:
    """Whitespace-separated words, rules and memory-bar cells left out (a bar is as long as the width)."""
    return {w for w in BOX.sub(" ", text).split() if not set(w) <= set("█▒░")}


def output(capsys, monkeypatch, args, columns=None) -> str:
    if columns is not None:
        monkeypatch.setenv("COLUMNS", str(columns))
    r = run_cli(capsys, *args)
    assert r.exit_code == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("columns", [80, 100, 200])
def test_no_line_exceeds_columns_and_no_word_is_split(capsys, monkeypatch, name, columns):
    # Issue #11: piped output was fixed at 132 columns, compare at 200, check's table at 160.
    wide = words(output(capsys, monkeypatch, COMMANDS[name], 1000))
    text = output(capsys, monkeypatch, COMMANDS[name], columns)
    lines = text.splitlines()
    assert [line for line in lines if len(line) > columns] == []
    # a ruled table is whole: every row that opens with a rule closes with one (rich crops, not wraps)
    assert [line for line in lines if line[:1] in "┏┃┡│└├" and line.rstrip()[-1:] not in "┓┃┩│┘┤"] == []
    assert words(text) - wide == set()  # every word printed at `columns` is a word of the unwrapped output
    assert "…" not in text


@pytest.mark.parametrize("name", ["estimate", "compare", "check"])
def test_piped_output_without_columns_is_piped_width(capsys, monkeypatch, name):
    assert PIPED_WIDTH == 120
    assert output(capsys, monkeypatch, COMMANDS[name]) == output(capsys, monkeypatch, COMMANDS[name], 120)


def test_compare_is_a_table_with_every_figure_at_100_columns(capsys, monkeypatch):
    text = output(capsys, monkeypatch, ["compare", "llama-3.1-8b", "--gpu", "h100-sxm"], 100)
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in text.splitlines() if line.startswith("│")]
    assert [row[0] for row in rows if row[0]] == ["ideal", "vllm", "hf", "llama.cpp", "sglang", "trtllm"]
    sglang = rows.index(next(row for row in rows if row[0] == "sglang"))
    whole = [" ".join(filter(None, cells)) for cells in zip(*rows[sglang:sglang + 2])]  # the row and its wrapped line
    assert whole == ["sglang", "auto (bf16)", "full: 8,192", "1.00 GiB", "+128.00 KiB (+0.01%)", "54.69 GiB", "54", "yes"]
    assert "Why each engine differs from the ideal cache, what it logs, what it refuses:" in text
    assert "sglang     +128.00 KiB: one 1-slot padding page per K/V buffer (slot 0 takes padded tokens' writes)" in text


def test_a_wrapped_value_is_indented_under_its_first_line():
    # "would fit" padded to 16, two spaces: the value starts at column 18; 40 columns leave 22 for it
    assert wrap_pair("would fit", "--batch 55 is the most that fits at 8,192 tokens", 16, 40) == [
        "would fit         --batch 55 is the most",
        "                  that fits at 8,192",
        "                  tokens",
    ]
    # 25 columns less "GPU  ": 20 for the value; a name is not cut at its hyphen (textwrap would: "h200-")
    assert wrap_pair("GPU", "h100-sxm and h200-nvl", 3, 25) == ["GPU  h100-sxm and", "     h200-nvl"]


def test_column_widths_give_each_column_its_longest_word_then_share_the_rest():
    # header then cells. Longest words 4 ("name") and 5 ("three"); longest lines 4 and 15.
    cells = [["name", "a"], ["one two three", "three four five"]]
    assert column_widths(cells, 30) == [4, 15]  # all on one line
    assert column_widths(cells, 12) == [4, 8]  # 12 - 9 = 3 spare, all to the column that wants more
    assert column_widths(cells, 8) is None  # 4 + 5 > 8: no table keeps every word whole
    # least need first: words 4 ("size") and 7 ("padding") leave 20 - 11 = 9 spare; "1.00 GiB" needs
    # 4 more to stand on one line and gets them first, the 31-character reason the other 5: 7 + 5 = 12
    cells = [["size", "1.00 GiB"], ["why", "one padding page per K/V buffer"]]
    assert column_widths(cells, 20) == [8, 12]
    # headers wrap before cells do: "max seqs" stands on one line only when room is left for it
    cells = [["max seqs", "55"], ["fits", "yes"]]
    assert column_widths(cells, 9) == [5, 4]  # words 4 + 4, the one spare character to the header that wants it
    assert column_widths(cells, 12) == [8, 4]


@pytest.mark.parametrize("value, expected", [("100", 100), ("abc", PIPED_WIDTH), ("0", PIPED_WIDTH), ("10", 40), (" 90 ", 90)])
def test_output_width_reads_columns(monkeypatch, value, expected):
    monkeypatch.setenv("COLUMNS", value)
    assert output_width() == expected
