"""Shared test helpers: a small spec factory for tiny cases."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from kvplan.model.spec import ModelSpec

# Property tests draw the same examples on every run (a red CI is a real failure, never a lucky
# draw) and have no wall-clock deadline on a shared machine. KVPLAN_HYPOTHESIS=explore draws new
# examples each run, for hunting.
settings.register_profile("ci", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("KVPLAN_HYPOTHESIS", "ci"))


def make_spec(**overrides) -> ModelSpec:
    """A tiny GQA model; override any field (HF config.json names)."""
    fields = dict(
        name="tiny",
        source="test factory",
        num_parameters=10**10,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        intermediate_size=128,
    )
    fields.update(overrides)
    return ModelSpec.model_validate(fields)


@pytest.fixture
def spec_factory():
    return make_spec


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch):
    """Output width is PIPED_WIDTH under test unless a test sets COLUMNS (kvplan.cli.render.output_width)."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    """No test reaches the network: a hub id missing from the cache is refused, not fetched from huggingface.co
    (kvplan.sources.hub_fetch). tests/test_hub_fetch.py lifts it against its own fake hub on 127.0.0.1."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
