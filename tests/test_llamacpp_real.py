"""kvplan's llama.cpp rules against the real llama-server: every start recorded in tests/fixtures/llamacpp_real/.

The fixtures were made by `python tools/llamacpp_validate.py run` (llama-server built from the llama.cpp tree
vendored by llama-cpp-python 0.3.36, on the CPU, starting the tiny GGUF models tools/llamacpp_models.py writes):
for each start, the plan, the command `estimate --emit llama.cpp` gave, the whole start-up log, /props, /slots
and the answer to one request of the plan's whole context. No llama-server is needed here: each record's
prediction is recomputed now (`tools/llamacpp_validate.py checks`), and every figure must equal the engine's,
except those KNOWN_DIFFERENCES lists, which must STILL differ (a fix forces its entry out).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("llamacpp_validate", ROOT / "tools" / "llamacpp_validate.py")
lv = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("llamacpp_validate", lv)
_spec.loader.exec_module(lv)

FIXTURES = lv.load_fixtures()
RECORDS = [(fx, rec) for fx in FIXTURES for rec in fx["records"]]
BY_ID = {f"{fx['model']}/{rec['id']}": (fx, rec) for fx, rec in RECORDS}

# record id -> {figure: why}: what `python tools/llamacpp_validate.py compare` reports on the recorded fixtures
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {}


def test_fixtures_cover_the_models_and_grid():
    assert [fx["model"] for fx in FIXTURES] == list(lv.MODELS)
    for fx in FIXTURES:
        assert [r["id"] for r in fx["records"]] == [p[0] for p in lv.GRID]
        assert fx["llama_server_build"]


def test_known_differences_name_a_record():
    assert sorted(set(KNOWN_DIFFERENCES) - set(BY_ID)) == []


@pytest.mark.parametrize("record_id", sorted(BY_ID))
def test_kvplan_matches_the_engine(record_id):
    fx, rec = BY_ID[record_id]
    diff = lv.differences(fx, rec)
    known = KNOWN_DIFFERENCES.get(record_id, {})
    assert set(diff) == set(known), f"{record_id}: differs on {diff}; known: {sorted(known)}"


@pytest.mark.parametrize("record_id", sorted(BY_ID))
def test_every_start_is_checked_on_its_caches(record_id):
    """A start the engine served is compared on its context, its slots and each cache line; a refused one on
    its refusal: no record passes by comparing nothing."""
    fx, rec = BY_ID[record_id]
    _, found = lv.checks(fx, rec)
    figures = {c.figure for c in found}
    if rec["ready"]:
        assert {"n_ctx", "n_ctx_seq", "n_seq_max", "n_slots", "n_ctx_slot", "/slots n_ctx",
                "a request of the whole context refused"} <= figures
        assert any(f.startswith("kv cache line") for f in figures)
    else:
        assert figures == {"refusal"}


if os.environ.get("KVPLAN_LLAMA_SERVER"):  # the live check, defined only where a llama-server is named (CI: the
    # recorded fixtures above are the check; nothing is skipped)

    def test_live_llama_server_agrees():
        """The whole grid for one model on the llama-server named by KVPLAN_LLAMA_SERVER (about a minute)."""
        server = os.environ["KVPLAN_LLAMA_SERVER"]
        fx = {"model": "llama-gqa"}
        for point in lv.GRID:
            rec = lv.record(server, "llama-gqa", point)
            assert set(lv.differences(fx, rec)) == set(KNOWN_DIFFERENCES.get(f"llama-gqa/{point[0]}", {})), point[0]


LOADS = sorted((lv.FIXTURES / "load").glob("*.json"))


def test_the_load_reports_cover_the_models():
    assert [p.stem for p in LOADS] == ["gemma2-swa", "jamba-hybrid", "llama-gqa"]  # one per KV memory kind


@pytest.mark.parametrize("path", LOADS, ids=lambda p: p.stem)
def test_recorded_load_runs_against_the_prediction_now(path):
    """`kvplan measure MODEL.gguf --engine llama.cpp --concurrency 1,4` on the real llama-server (recorded): every
    start figure agreed then, and kvplan predicts the same figures now; per level the slots busy equal
    min(requests, --parallel) and the polled tokens held never pass busy x (prompt + output - 1)."""
    import json

    from kvplan.measure.llamacpp import predict
    from kvplan.measure.llamacpp_run import plan

    report = json.loads(path.read_text())
    assert all(c["agrees"] for c in report["checks"]) and len(report["checks"]) >= 15
    p = plan(str(lv.gguf(path.stem)), context=report["context"], batch=report["batch"])
    now = predict(p.spec, p.cache, p.opts)
    assert now == report["predicted"]
    assert now["n_slots"] == 2  # --batch 2 -> --parallel 2
    for level in report["levels"]:
        busy = min(level["concurrency"], 2)  # llama-server: one request per slot, the rest queued
        held = busy * (64 + 900 - 1)  # --prompt-tokens 64, --output-tokens 900; the last token is never cached
        assert (level["predicted_busy_slots"], level["predicted_tokens_held"]) == (busy, held)
        assert level["peak_busy_slots"] == busy
        assert 0 < level["peak_tokens_held"] <= held
        assert len(level["ttft_s"]) == len(level["tpot_s"]) == level["concurrency"]
