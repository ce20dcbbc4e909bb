"""The models that parse lifecycle bodies accept exactly what their published schemas (generated from them) accept.

The models are the only validator, so a body the published schema refuses but a model accepts would slip through,
and one the schema allows but a model refuses would surprise a client that validates first: these tests look for
either, against jsonschema's Draft 2020-12 validator with the formats checked (RFC 3339 ``date-time`` and the
hyphenated ``uuid``), with hand-picked edge cases of the formats and with generated mutations of valid bodies.
The only difference allowed is a rule a schema cannot state (``to`` after ``from``, ``gate`` only for target).
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from quantapilot.lifecycle.rfc3339 import parse_rfc3339
from quantapilot.lifecycle.telemetry_body import parse_telemetry
from quantapilot.lifecycle.validation import SchemaValidationError, parse_run_request

ACCOUNT = "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"
EVENT: dict[str, Any] = {
    "accountId": ACCOUNT,
    "kpi": "response_time_ms",
    "value": 123,
    "timestamp": "2025-11-17T12:00:00Z",
    "unit": "ms",
    "metadata": {"source": "app", "tags": ["a", 1, None], "nested": {"k": 1.5}},
}
RUN: dict[str, Any] = {
    "stage": "target",
    "accountId": ACCOUNT,
    "correlationId": "crm-1",
    "inputs": {"persona": "CFO", "discoveryNotes": "notes"},
    "gate": {"approvers": ["carol"], "allowSelfApproval": False, "timeoutS": 60},
}

TIMESTAMPS = [
    "2025-11-17T12:00:00Z",
    "2025-11-17T12:00:00.123456789+05:30",
    "2025-11-17t12:00:00z",
    "2025-11-17 12:00:00Z",
    "2025-11-17T12:00:00",
    "2025-02-29T00:00:00Z",
    "2024-02-29T00:00:00Z",
    "2025-11-17T23:59:60Z",
    "2025-11-17T24:00:00Z",
    "2025-11-17T12:00:00+24:00",
    "2025-11-17T12:00:00-00:00",
    "2025-13-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",  # its UTC instant is past year 9999
    "0001-01-01T00:00:00+01:00",  # and before year 1
    "\uff12\uff10\uff12\uff15-11-17T12:00:00Z",  # full-width digits
    "2025-11-17T12:00:00.Z",
    "",
]
UUIDS = [
    ACCOUNT,
    ACCOUNT.upper(),
    ACCOUNT.replace("-", ""),
    "{" + ACCOUNT + "}",
    "urn:uuid:" + ACCOUNT,
    ACCOUNT[:-1] + "g",
    ACCOUNT + " ",
    "00000000-0000-0000-0000-000000000000",
]


def _is_date_time(instance: object) -> bool:
    if isinstance(instance, str):
        parse_rfc3339(instance)  # ValueError: the checker reports a format error
    return True


def _is_uuid(instance: object) -> bool:
    pattern = r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
    return not isinstance(instance, str) or re.fullmatch(pattern, instance) is not None


@cache
def reference(name: str) -> jsonschema.protocols.Validator:
    """The published schema with its formats checked (jsonschema skips date-time without rfc3339-validator)."""
    checker = jsonschema.FormatChecker()
    checker.checks("date-time", raises=ValueError)(_is_date_time)
    checker.checks("uuid")(_is_uuid)
    schema = schemas.load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=checker)
    return validator


# What the run request's models check beyond the schema (model validators of LifecycleRunRequest, ReportPeriod).
BEYOND_THE_SCHEMA = ("gate applies only to the target stage", "'to' must be after 'from'")


def agree(schema: str, body: Any) -> None:
    published = reference(schema).is_valid(body)
    parse = parse_telemetry if schema == "telemetry.schema.json" else parse_run_request
    errors: list[dict[str, str]] = []
    try:
        parse(json.dumps(body))
    except SchemaValidationError as exc:
        errors = exc.errors
    if not errors:
        assert published, (schema, json.dumps(body), "accepted by the model, refused by the published schema")
    else:
        beyond = any(rule in e["message"] for e in errors for rule in BEYOND_THE_SCHEMA)
        assert not published or beyond, (schema, json.dumps(body), errors)


@pytest.mark.parametrize("timestamp", TIMESTAMPS)
def test_models_match_schemas_on_date_times(timestamp: str) -> None:
    agree("telemetry.schema.json", {**EVENT, "timestamp": timestamp})
    agree("telemetry.schema.json", {"events": [EVENT, {**EVENT, "timestamp": timestamp}]})


@pytest.mark.parametrize("account", UUIDS)
def test_models_match_schemas_on_uuids(account: str) -> None:
    agree("telemetry.schema.json", {**EVENT, "accountId": account})
    agree("lifecycle_run.schema.json", {**RUN, "accountId": account})


def test_models_match_schemas_on_batches_and_numbers() -> None:
    bodies: tuple[Any, ...] = (
        {"events": []},
        {"events": [EVENT] * 1000},
        {"events": [EVENT] * 1001},
        {"events": [EVENT], "extra": 1},
        {**EVENT, "value": True},
        {**EVENT, "value": 1e308},
        {**EVENT, "value": -0.0},
        {**EVENT, "kpi": "A"},
        {**EVENT, "metadata": {f"k{i}": i for i in range(33)}},
        {**EVENT, "metadata": {"deep": {"deeper": {"x": 1}}}},
        [EVENT],
        None,
    )
    for body in bodies:
        agree("telemetry.schema.json", body)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    node = body
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node.get(key), dict) else node
    node[path[-1]] = value
    return body


EVENT_PATHS = [["accountId"], ["kpi"], ["value"], ["timestamp"], ["unit"], ["source"], ["metadata"], ["metadata", "x"]]
RUN_PATHS = [
    ["stage"],
    ["accountId"],
    ["correlationId"],
    ["inputs"],
    ["inputs", "persona"],
    ["gate"],
    ["gate", "timeoutS"],
]


@settings(max_examples=300, derandomize=True, database=None, suppress_health_check=list(HealthCheck), deadline=None)
@given(path=st.sampled_from(EVENT_PATHS), value=JSON)
def test_models_match_schemas_on_mutated_telemetry(path: list[str], value: Any) -> None:
    agree("telemetry.schema.json", mutate(EVENT, path, value))
    agree("telemetry.schema.json", {"events": [EVENT, mutate(EVENT, path, value)]})


@settings(max_examples=300, derandomize=True, database=None, suppress_health_check=list(HealthCheck), deadline=None)
@given(path=st.sampled_from(RUN_PATHS), value=JSON)
def test_models_match_schemas_on_mutated_lifecycle_runs(path: list[str], value: Any) -> None:
    agree("lifecycle_run.schema.json", mutate(RUN, path, value))
