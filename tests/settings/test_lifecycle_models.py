"""QP_LIFECYCLE_MODELS, QP_LIFECYCLE_BUDGETS and QP_LIFECYCLE_LIMITS: read as JSON, and a USD budget never spent
against a guessed price."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quantapilot.settings import Settings

MODELS = '{"arch": {"model": "arch-model", "temperature": 0.2}}'


def test_lifecycle_models_and_budgets_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QP_LIFECYCLE_MODELS", MODELS)
    monkeypatch.setenv("QP_LIFECYCLE_BUDGETS", '{"tokens": 2000}')
    settings = Settings()
    assert settings.lifecycle_models is not None and settings.lifecycle_models.arch is not None
    assert settings.lifecycle_models.arch.model == "arch-model"
    assert settings.lifecycle_budgets is not None and settings.lifecycle_budgets.tokens == 2000
    assert Settings.model_fields["lifecycle_models"].default is None  # without them: no model, as before


def test_lifecycle_usd_budget_needs_the_models_price(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QP_LIFECYCLE_MODELS", MODELS)
    monkeypatch.setenv("QP_LIFECYCLE_BUDGETS", '{"tokens": 2000, "usd": 0.5}')
    with pytest.raises(ValidationError, match="no price for arch-model"):
        Settings()
    monkeypatch.setenv("QP_MODEL_PRICES", '{"arch-model": {"input_per_mtok": 1, "output_per_mtok": 2}}')
    assert Settings().lifecycle_budgets is not None


def test_lifecycle_models_refuse_unknown_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QP_LIFECYCLE_MODELS", '{"writer": {"model": "m"}}')
    with pytest.raises(ValidationError):
        Settings()


def test_lifecycle_limits_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().lifecycle_limits is None  # without them: no token limits beyond the budgets, as before
    monkeypatch.setenv("QP_LIFECYCLE_LIMITS", '{"tokens_per_day": 200000, "tokens_per_run": 9000}')
    limits = Settings().lifecycle_limits
    assert limits is not None and (limits.tokens_per_day, limits.tokens_per_run) == (200_000, 9000)
    # Only the token limits: lifecycle steps have no timeouts or retries for quantapilot.yml's other limits to set.
    monkeypatch.setenv("QP_LIFECYCLE_LIMITS", '{"tokens_per_day": 200000, "timeout_seconds": 60}')
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("QP_LIFECYCLE_LIMITS", '{"tokens_per_day": 0}')
    with pytest.raises(ValidationError):
        Settings()
