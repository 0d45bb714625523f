"""Shared test helpers: a small spec factory for tiny cases."""

from __future__ import annotations

import pytest

from kvplan.spec import ModelSpec


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
    """Output width is PIPED_WIDTH under test unless a test sets COLUMNS (kvplan.render.output_width)."""
    monkeypatch.delenv("COLUMNS", raising=False)
