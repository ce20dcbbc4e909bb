"""The lifecycle run request models hold what schemas/lifecycle_run.schema.json (generated from them) publishes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import schemas
from quantapilot.lifecycle.models import LifecycleRunRequest

_BASE: dict[str, Any] = {"stage": "target", "accountId": "6f1c2a4e-8d3b-4c5a-9e7f-1a2b3c4d5e6f"}


def _request(**changes: Any) -> dict[str, Any]:
    return {**_BASE, **changes}


def _inputs(**inputs: Any) -> dict[str, Any]:
    return _request(inputs=inputs)


_REFUSED: list[Any] = [
    _request(stage="launch"),
    _request(accountId="6f1c2a4e"),
    _request(correlationId=""),
    _request(correlationId="has space"),
    _request(gate={"approvers": ["two words"]}),
    _request(gate={"approvers": ["a"] * 101}),
    _request(gate={"timeoutS": 0}),
    _request(gate={"timeoutS": 31536001}),
    _request(gate={"unknown": 1}),
    _inputs(discoveryNotes="n" * 20001),
    _inputs(persona=""),
    _inputs(benchmarks=[{"kpi": "NPS", "value": 1}]),
    _inputs(benchmarks=[{"kpi": "nps", "value": 1e16}]),
    _inputs(benchmarks=[{"kpi": "nps", "value": 1, "unit": ""}]),
    _inputs(benchmarks=[{"kpi": "nps", "value": 1, "source": "s" * 201}]),
    _inputs(benchmarks=[{"kpi": "nps", "value": 1}] * 101),
    _inputs(kpis=[{"kpi": "nps", "direction": "up"}]),
    _inputs(kpis=[{"kpi": "nps", "confidence": 1.5}]),
    _inputs(kpis=[{"kpi": "nps", "baseline": -1e16}]),
    _inputs(reportPeriod={"from": "2025-01-01T00:00:00Z"}),
    _inputs(investment={"oneTimeCost": 1}),
    _inputs(investment={"annualCost": -1}),
    _inputs(investment={"annualCost": 1e16}),
    _inputs(unknown=1),
    {"stage": "target"},
]

_ACCEPTED: list[Any] = [
    _request(),
    _request(
        correlationId="crm:42/a.b-c",
        gate={"approvers": ["scope:gates"], "allowSelfApproval": False, "timeoutS": 60},
        inputs={
            "discoveryNotes": "notes",
            "persona": "CFO",
            "benchmarks": [{"kpi": "nps", "value": -1e15, "unit": "pts", "source": "survey"}],
            "kpis": [
                {
                    "kpi": "churn.rate",
                    "baseline": 5,
                    "target": 3,
                    "unit": "%",
                    "direction": "lower_is_better",
                    "deadline": "2026-01-31",
                    "confidence": 0.5,
                }
            ],
            "reportPeriod": {"from": "2025-01-01T00:00:00Z", "to": "2025-02-01T00:00:00Z"},
            "investment": {"annualCost": 1e15, "oneTimeCost": 0},
        },
    ),
]


@pytest.mark.parametrize("document", _REFUSED)
def test_model_refuses_what_the_published_schema_refuses(document: Any) -> None:
    assert not schemas.validator("lifecycle_run.schema.json").is_valid(document)
    with pytest.raises(ValidationError):
        LifecycleRunRequest.model_validate(document)


@pytest.mark.parametrize("document", _ACCEPTED)
def test_model_accepts_what_the_published_schema_accepts(document: Any) -> None:
    assert schemas.validator("lifecycle_run.schema.json").is_valid(document)
    LifecycleRunRequest.model_validate(document)
