"""The quantapilot.yml models hold what schemas/quantapilot.schema.json (generated from them) publishes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import schemas
from quantapilot.repos.config import QuantapilotConfig

# Documents the published schema refuses; the models must refuse them too, or the schema says more than its
# source. (Extra keys, wrong types and missing required keys are covered by the model's own strictness.)
_REFUSED: list[dict[str, Any]] = [
    {"version": 1, "milestones": [{"id": "M-1", "title": "t"}]},
    {"version": 1, "milestones": [{"id": "M-001", "title": ""}]},
    {"version": 1, "milestones": [{"id": "M-001", "title": "t", "due_date": "31.01.2025"}]},
    {"version": 1, "milestones": [{"id": "M-001", "title": "t", "steps": [{"name": "impl"}]}]},
    {"version": 1, "milestones": [{"id": "M-001", "title": "t", "steps": [{"name": "impl", "run": "x" * 8193}]}]},
    {"version": 1, "milestones": [{"id": "M-001", "title": "t", "criteria": [""]}]},
    {"version": 1, "milestones": [{"id": f"M-{i:03}", "title": "t"} for i in range(201)]},
    {"version": 1, "steps": [{"name": "impl", "run": "make"}]},
    {"version": 1, "steps": [{"name": "deploy"}]},
    {"version": 1, "steps": [{"name": "impl", "timeout_s": 0}]},
    {"version": 1, "steps": [{"name": "impl", "retries": 101}]},
    {"version": 1, "models": {"dev": {"model": "m", "temperature": 1.5}}},
    {"version": 1, "models": {"dev": {"model": "m" * 201}}},
    {"version": 1, "budgets": {"tokens": 0}},
    {"version": 1, "budgets": {"tokens": 1, "usd": -1}},
    {"version": 1, "policies": {"merge": "octopus"}},
    {"version": 1, "policies": {"gates": ["Not A Gate"]}},
    {"version": 1, "gate_definitions": {"Bad Name": {}}},
    {"version": 1, "gate_definitions": {"anchor": {"approvers": ["two words"]}}},
    {"version": 1, "gate_definitions": {"anchor": {"description": "d" * 2001}}},
    {"version": 1, "docs": {"output_folder": "a/../b"}},
    {"version": 1, "docs": {"output_folder": ".git"}},
    {"version": 1, "docs": {"branch": "a..b"}},
    {"version": 1, "docs": {"branch": "x.lock"}},
    {"version": 1, "docs": {"owners": [""]}},
    {"version": 1, "run": {"commands_timeout_s": -1}},
    {"version": 1, "limits": {"max_retries": -1}},
]

_ACCEPTED: list[dict[str, Any]] = [
    {"version": 1},
    {
        "version": 1,
        "stack": {"language": "python"},
        "models": {"dev": {"model": "m", "temperature": 0.2, "max_output_tokens": 10}},
        "budgets": {"tokens": 5, "usd": 0},
        "steps": [{"name": "impl", "timeout_s": 1.5, "retries": 0, "tokens_budget": 3}],
        "gates": {"docs_lint": False, "tests_required": True},
        "limits": {"tokens_per_run": 1, "tokens_per_day": 1, "timeout_seconds": 10, "max_retries": 100},
        "policies": {"merge": "squash", "gates": ["-first_merge", "M-001", "review"], "data_retention_days": 7},
        "milestones": [
            {
                "id": "M-001",
                "title": "t",
                "criteria": ["c"],
                "due_date": "2025-01-31",
                "steps": [{"name": "test", "run": "make test", "timeout_s": 60}],
                "gate": True,
            }
        ],
        "gate_definitions": {"M-001": {"timeout_s": 5, "approvers": ["scope:gates"], "allow_self_approval": False}},
        "docs": {"output_folder": "site/docs", "branch": "quantapilot/docs", "owners": ["team"]},
        "run": {"time_budget_s": 3600, "commands_timeout_s": 30},
    },
]


@pytest.mark.parametrize("document", _REFUSED)
def test_model_refuses_what_the_published_schema_refuses(document: dict[str, Any]) -> None:
    assert not schemas.validator("quantapilot.schema.json").is_valid(document)
    with pytest.raises(ValidationError):
        QuantapilotConfig.model_validate(document)


@pytest.mark.parametrize("document", _ACCEPTED)
def test_model_accepts_what_the_published_schema_accepts(document: dict[str, Any]) -> None:
    assert schemas.validator("quantapilot.schema.json").is_valid(document)
    QuantapilotConfig.model_validate(document)
