"""Lifecycle run and telemetry bodies, parsed by their models from JSON: the seed's examples pass, bad bodies fail
with paths (the published schemas are generated from the same models)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

import schemas
from quantapilot.lifecycle.rfc3339 import parse_rfc3339
from quantapilot.lifecycle.telemetry_body import parse_telemetry, parse_telemetry_payload
from quantapilot.lifecycle.validation import NON_FINITE, SchemaValidationError, parse_run_request

ACCOUNT = "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"
RUN = "lifecycle_run.schema.json"
TELEMETRY = "telemetry.schema.json"

# The seed's telemetry example, verbatim.
SEED_EVENT_JSON = """{
  "accountId": "uuid",
  "kpi": "response_time_ms",
  "value": 123,
  "timestamp": "2025-11-17T12:00:00Z",
  "metadata": { "source": "app" }
}"""
# The seed's lifecycle example has placeholders ("opportunity|target|...", "uuid", [...]); filled in per stage.
SEED_RUN: dict[str, Any] = {
    "stage": "opportunity",
    "accountId": ACCOUNT,
    "inputs": {"discoveryNotes": "...", "persona": "CFO", "benchmarks": [{"kpi": "response_time_ms", "value": 800}]},
}


def seed_event() -> dict[str, Any]:
    event: dict[str, Any] = json.loads(SEED_EVENT_JSON)
    event["accountId"] = ACCOUNT  # the seed writes the placeholder "uuid"
    return event


def validate_json(schema: str, payload: Any) -> None:
    """Parse ``payload`` as the API does (from JSON text) with the model behind ``schema``."""
    (parse_telemetry if schema == TELEMETRY else parse_run_request)(json.dumps(payload))


def errors_of(schema: str, payload: Any) -> list[dict[str, str]]:
    with pytest.raises(SchemaValidationError) as err:
        validate_json(schema, payload)
    return err.value.errors


@pytest.mark.parametrize("stage", ["opportunity", "target", "realization", "expansion"])
def test_schemas_seed_lifecycle_example_is_accepted(stage: str) -> None:
    body = {**SEED_RUN, "stage": stage}
    validate_json(RUN, body)
    request = parse_run_request(json.dumps(body))
    assert request.stage == stage
    assert request.inputs.persona == "CFO"


def test_schemas_full_lifecycle_request_round_trips() -> None:
    body = {
        "stage": "target",
        "accountId": ACCOUNT.upper(),
        "correlationId": "crm:opp-42",
        "inputs": {
            "kpis": [{"kpi": "nps", "baseline": 20, "target": 40, "deadline": "2026-06-30", "confidence": 0.7}],
            "reportPeriod": {"from": "2025-10-01T00:00:00Z", "to": "2025-11-01T00:00:00+01:00"},
            "investment": {"annualCost": 120000, "oneTimeCost": 30000},
        },
    }
    request = parse_run_request(json.dumps(body))
    assert request.account_id == ACCOUNT
    dumped = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert dumped["inputs"]["reportPeriod"] == {"from": "2025-10-01T00:00:00Z", "to": "2025-10-31T23:00:00Z"}
    assert dumped["inputs"]["investment"] == {"annualCost": 120000.0, "oneTimeCost": 30000.0}


def test_schemas_lifecycle_inputs_are_optional() -> None:
    assert parse_run_request(json.dumps({"stage": "realization", "accountId": ACCOUNT})).inputs.benchmarks == []


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda b: b.update(stage="closing"), "/stage"),
        (lambda b: b.update(accountId="not-a-uuid"), "/accountId"),
        (lambda b: b.update(accountId="6f1c1d1e2b3a4c5d8e9f0a1b2c3d4e5f"), "/accountId"),  # no hyphens
        (lambda b: b.update(extra=1), "/extra"),  # pydantic names the unknown key (jsonschema: its object)
        (lambda b: b["inputs"].update(discoveryNotes="x" * 20001), "/inputs/discoveryNotes"),
        (lambda b: b["inputs"].update(persona=""), "/inputs/persona"),
        (lambda b: b["inputs"].update(benchmarks=[{"kpi": "k", "value": 1}] * 101), "/inputs/benchmarks"),
        (lambda b: b["inputs"].update(benchmarks=[{"kpi": "Response Time", "value": 1}]), "/inputs/benchmarks/0/kpi"),
        (lambda b: b["inputs"].update(benchmarks=[{"kpi": "k", "value": "1"}]), "/inputs/benchmarks/0/value"),
        (lambda b: b["inputs"].update(benchmarks=[{"kpi": "k", "value": 1e400}]), "/inputs/benchmarks/0/value"),
        (
            lambda b: b["inputs"].update(reportPeriod={"from": "2025-10-01", "to": "2025-11-01T00:00:00Z"}),
            "/inputs/reportPeriod/from",
        ),
        (lambda b: b["inputs"].update(kpis=[{"kpi": "k", "deadline": "2026-02-30"}]), "/inputs/kpis/0/deadline"),
        (lambda b: b["inputs"].update(kpis=[{"kpi": "k", "confidence": 1.5}]), "/inputs/kpis/0/confidence"),
        (lambda b: b["inputs"].update(investment={"annualCost": -1}), "/inputs/investment/annualCost"),
        (lambda b: b["inputs"].update(unknown=True), "/inputs/unknown"),
    ],
)
def test_schemas_bad_lifecycle_requests_are_refused(mutate: Any, path: str) -> None:
    body = copy.deepcopy(SEED_RUN)
    mutate(body)
    assert path in [e["path"] for e in errors_of(RUN, body)]
    with pytest.raises(SchemaValidationError):
        parse_run_request(json.dumps(body))


def test_schemas_report_period_must_end_after_start() -> None:
    body = copy.deepcopy(SEED_RUN)
    body["inputs"]["reportPeriod"] = {"from": "2025-11-01T00:00:00Z", "to": "2025-11-01T00:00:00Z"}
    assert schemas.validator(RUN).is_valid(body)  # the published schema cannot compare the two ...
    with pytest.raises(SchemaValidationError, match="after"):
        parse_run_request(json.dumps(body))  # ... the model does


def test_schemas_seed_telemetry_example_is_accepted_alone_and_in_batches() -> None:
    validate_json(TELEMETRY, seed_event())
    validate_json(TELEMETRY, {"events": [seed_event()]})
    validate_json(TELEMETRY, {"events": [seed_event()] * 1000})
    assert len(parse_telemetry_payload({"events": [seed_event()] * 1000})) == 1000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("accountId", "uuid"),  # the seed's placeholder itself is not a UUID
        ("accountId", "{6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f}"),
        ("kpi", "Response_Time"),
        ("kpi", "1kpi"),
        ("kpi", "k" * 65),
        ("value", "123"),
        ("value", None),
        ("value", True),
        ("value", 1e400),  # parses to infinity
        ("value", -1e400),
        ("timestamp", "2025-11-17 12:00:00"),  # no offset
        ("timestamp", "2025-11-17T12:00:00"),  # no offset
        ("timestamp", "2025-02-29T12:00:00Z"),  # not a leap year
        ("timestamp", "2025-11-17T24:00:00Z"),
        ("timestamp", "2025-11-17T12:00:00+24:00"),
        ("timestamp", "2025-11-17T23:59:60Z"),  # leap second: refused, see parse_rfc3339
        ("timestamp", "17/11/2025"),
        ("timestamp", 1763380800),
        ("unit", ""),
        ("metadata", {"a": {"b": {"c": 1}}}),  # deeper than two levels
        ("metadata", {f"k{i}": i for i in range(33)}),
        ("metadata", {"k": "x" * 1025}),
        ("metadata", "app"),
    ],
)
def test_schemas_bad_telemetry_events_are_refused(field: str, value: Any) -> None:
    event = seed_event()
    event[field] = value
    paths = [e["path"] for e in errors_of(TELEMETRY, event)]
    assert any(p.startswith(f"/{field}") for p in paths), paths
    # The same event inside a batch is reported with its index.
    paths = [e["path"] for e in errors_of(TELEMETRY, {"events": [seed_event(), event]})]
    assert any(p.startswith(f"/events/1/{field}") for p in paths), paths


def test_schemas_huge_but_finite_values_are_accepted() -> None:
    event = seed_event()
    event["value"] = 1.7e308
    validate_json(TELEMETRY, event)
    [parsed] = parse_telemetry_payload(event)
    assert parsed.value == 1.7e308


def test_schemas_metadata_two_levels_deep_is_accepted() -> None:
    event = seed_event()
    event["metadata"] = {"source": "app", "tags": ["a", "b"], "ctx": {"region": "eu", "n": 3, "ok": True}}
    validate_json(TELEMETRY, event)


@pytest.mark.parametrize(
    "payload",
    [
        {"events": []},
        {"events": [seed_event()] * 1001},
        {"events": [seed_event()], "extra": 1},
        {"events": "all"},
        [seed_event()],
        {},
    ],
)
def test_schemas_bad_telemetry_batches_are_refused(payload: Any) -> None:
    errors_of(TELEMETRY, payload)
    with pytest.raises(SchemaValidationError):
        parse_telemetry_payload(payload)


def test_schemas_missing_required_fields_are_each_reported() -> None:
    errors = errors_of(TELEMETRY, {"metadata": {}})
    messages = " ".join(e["message"] for e in errors)
    for name in ("accountId", "kpi", "value", "timestamp"):
        assert name in messages


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_schemas_nan_and_infinity_are_refused_at_their_path(number: str) -> None:
    # Python's json (and pydantic's parser) read NaN and Infinity, and 1e400 reads as infinity: JSON has none.
    event = json.dumps(seed_event()).replace('"value": 123', f'"value": {number}')
    with pytest.raises(SchemaValidationError) as err:
        parse_telemetry(event)
    assert err.value.errors == [{"path": "/value", "message": NON_FINITE}]
    run = json.dumps(SEED_RUN).replace('"value": 800', f'"value": {number}')
    with pytest.raises(SchemaValidationError) as err:
        parse_run_request(run)
    assert err.value.errors == [{"path": "/inputs/benchmarks/0/value", "message": NON_FINITE}]


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2025-11-17T12:00:00Z", "2025-11-17T12:00:00+00:00"),
        ("2025-11-17t12:00:00z", "2025-11-17T12:00:00+00:00"),
        ("2024-02-29T23:59:59.1234567-05:30", "2024-02-29T23:59:59.123456-05:30"),
        ("2025-11-17T12:00:00+00:00", "2025-11-17T12:00:00+00:00"),
    ],
)
def test_schemas_rfc3339_parser_accepts_valid_forms(text: str, iso: str) -> None:
    assert parse_rfc3339(text).isoformat() == iso
