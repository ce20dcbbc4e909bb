"""The telemetry body models hold what schemas/telemetry.schema.json (generated from them) publishes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import schemas
from quantapilot.lifecycle.telemetry_body import TelemetryBody, TelemetryIn

_EVENT: dict[str, Any] = {
    "accountId": "6f1c2a4e-8d3b-4c5a-9e7f-1a2b3c4d5e6f",
    "kpi": "nps.score",
    "value": 42,
    "timestamp": "2025-11-17T12:00:00Z",
}


def _event(**changes: Any) -> dict[str, Any]:
    return {**_EVENT, **changes}


_REFUSED: list[Any] = [
    _event(id="has space"),
    _event(id="x" * 129),
    _event(accountId="6f1c2a4e-8d3b-4c5a-9e7f-1a2b3c4d5e6"),
    _event(kpi="NPS"),
    _event(value=float("inf")),
    _event(unit=""),
    _event(source="s" * 129),
    _event(metadata={f"k{i}": i for i in range(33)}),
    _event(metadata={"k" * 65: 1}),
    _event(metadata={"note": "n" * 1025}),
    _event(metadata={"a": {"b": {"c": 1}}}),
    _event(metadata={"a": [[1]]}),
    _event(metadata={"a": list(range(33))}),
    _event(metadata={"a": {f"k{i}": i for i in range(33)}}),
    _event(extra=1),
    {"events": []},
    {"events": [_event()] * 1001},
    {"events": [_event(kpi="NPS")]},
    {"events": [_event()], "more": 1},
    {k: v for k, v in _EVENT.items() if k != "kpi"},
]

_ACCEPTED: list[Any] = [
    _event(),
    _event(
        id="evt-1",
        value=-1.5e300,
        unit="points",
        source="survey",
        metadata={"n": 3, "f": 1.5, "b": True, "none": None, "list": [1, "x", None], "obj": {"k": False}},
    ),
    {"events": [_event(), _event(id="b")]},
    {"events": [_event()] * 1000},
]


@pytest.mark.parametrize("document", _REFUSED)
def test_model_refuses_what_the_published_schema_refuses(document: Any) -> None:
    assert not schemas.validator("telemetry.schema.json").is_valid(document)
    with pytest.raises(ValidationError):
        TelemetryBody.model_validate(document)


@pytest.mark.parametrize("document", _ACCEPTED)
def test_model_accepts_what_the_published_schema_accepts(document: Any) -> None:
    assert schemas.validator("telemetry.schema.json").is_valid(document)
    TelemetryBody.model_validate(document)


def test_metadata_numbers_are_kept_as_sent() -> None:
    # The bounds are a double's; an int must still come back an int (it is stored as sent).
    event = TelemetryIn.model_validate(_event(metadata={"n": 3, "f": 1.5, "list": [2], "obj": {"k": 4}}))
    assert event.metadata == {"n": 3, "f": 1.5, "list": [2], "obj": {"k": 4}}
    assert type(event.metadata["n"]) is int
    listed = event.metadata["list"]
    assert isinstance(listed, list) and type(listed[0]) is int
