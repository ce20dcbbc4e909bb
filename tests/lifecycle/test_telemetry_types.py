"""The telemetry event's JSON checks run in pydantic-core (no Python per event): same verdicts as in Python.

``TelemetryIn`` validates a request body's timestamp, account id and metadata numbers with pydantic's own
schemas (``_json_only`` in ``quantapilot/lifecycle/telemetry_body.py``) and a model built in Python with the
Python validators it always had. Each edge case below is parsed both ways, alone and in a batch: the verdict is
the expected one and the accepted values are equal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from quantapilot.lifecycle.telemetry_body import TelemetryIn, parse_telemetry
from quantapilot.lifecycle.validation import SchemaValidationError

ACCOUNT = "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"
BIGGEST = 2**1024 - 2**970 - 1  # the largest int a double rounds to a finite value


def event(**fields: Any) -> dict[str, Any]:
    return {"accountId": ACCOUNT, "kpi": "x", "value": 1, "timestamp": "2025-11-17T12:00:00Z", **fields}


def json_verdict(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    try:
        return [e.model_dump() for e in parse_telemetry(json.dumps(body))]
    except SchemaValidationError:
        return None


def python_verdict(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    try:
        return [TelemetryIn.model_validate(body).model_dump()]
    except ValidationError:
        return None


def assert_verdict(body: dict[str, Any], accepted: bool) -> list[dict[str, Any]] | None:
    one, batch, python = json_verdict(body), json_verdict({"events": [body]}), python_verdict(body)
    assert (one is not None, batch is not None, python is not None) == (accepted,) * 3, body
    assert one == batch == python, body
    return one


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2025-11-17T12:00:00Z", datetime(2025, 11, 17, 12, tzinfo=UTC)),
        ("2025-11-17t12:00:00z", datetime(2025, 11, 17, 12, tzinfo=UTC)),
        ("2025-11-17T12:00:00.123456789Z", datetime(2025, 11, 17, 12, 0, 0, 123456, tzinfo=UTC)),  # truncated
        ("2025-11-17T12:00:00+05:30", datetime(2025, 11, 17, 6, 30, tzinfo=UTC)),
        ("2025-11-17T12:00:00-23:59", datetime(2025, 11, 18, 11, 59, tzinfo=UTC)),
        ("2024-02-29T12:00:00Z", datetime(2024, 2, 29, 12, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2025-11-17T12:00:00." + "1" * 43 + "Z", datetime(2025, 11, 17, 12, 0, 0, 111111, tzinfo=UTC)),  # 64 long
    ],
)
def test_telemetry_types_rfc3339_accepted_in_utc(text: str, utc: datetime) -> None:
    accepted = assert_verdict(event(timestamp=text), True)
    assert accepted is not None
    assert accepted[0]["timestamp"] == utc and accepted[0]["timestamp"].utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        "2025-11-17T12:00:00",  # no offset
        "2025-11-17 12:00:00Z",
        "2025-11-17T12:00Z",
        "2025-11-17",
        "2025-11-17T12:00:00+0100",
        "2025-11-17T12:00:00+01",
        "2025-11-17T12:00:00.Z",
        "2025-11-17T12:00:00,5Z",
        "+2025-11-17T12:00:00Z",
        "2025-11-17T24:00:00Z",
        "2025-11-17T23:60:00Z",
        "2025-11-17T23:59:60Z",  # a leap second: no datetime holds it
        "2025-11-17T12:00:00+24:00",
        "2025-11-17T12:00:00+23:60",
        "2025-02-29T12:00:00Z",
        "0000-01-01T00:00:00Z",
        "2025-13-01T00:00:00Z",
        "9999-12-31T23:59:59-01:00",  # a valid text whose UTC instant is past year 9999 (was a 500)
        "0001-01-01T00:00:00+01:00",  # and before year 1
        "2025-00-01T00:00:00Z",
        "2025-01-00T00:00:00Z",
        "2025-11-17T12:00:00." + "1" * 44 + "Z",  # 65 characters
        "2025-11-17T12:00:00Z\n",  # matched whole, not up to a trailing newline
        "\u0662\u0660\u0662\u0665-11-17T12:00:00Z",  # Arabic-Indic digits: RFC 3339's DIGIT is ASCII
        "",
        1700000000,
        True,
    ],
)
def test_telemetry_types_rfc3339_refused(value: Any) -> None:
    assert_verdict(event(timestamp=value), False)


@pytest.mark.parametrize("value", [ACCOUNT, ACCOUNT.upper(), "6F1C1D1E-2b3a-4C5D-8e9f-0A1B2C3D4E5F"])
def test_telemetry_types_uuid_accepted_lowercase(value: str) -> None:
    accepted = assert_verdict(event(accountId=value), True)
    assert accepted is not None and accepted[0]["account_id"] == ACCOUNT


@pytest.mark.parametrize(
    "value",
    [
        f"{{{ACCOUNT}}}",
        ACCOUNT.replace("-", ""),
        "urn:uuid:" + ACCOUNT,
        ACCOUNT[:-1] + "g",
        ACCOUNT + "\n",
        ACCOUNT[:-1],
        " " + ACCOUNT[1:],
        "6f1c1d1e2-b3a-4c5d-8e9f-0a1b2c3d4e5f",  # 36 characters, hyphens misplaced
        "\uff16" + ACCOUNT[1:],  # a full-width digit
        5,
    ],
)
def test_telemetry_types_uuid_refused(value: Any) -> None:
    assert_verdict(event(accountId=value), False)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (3, int),
        (-(2**63), int),
        (BIGGEST, int),
        (-BIGGEST, int),
        (10**308, int),
        (1.5, float),
        (1e308, float),
        (3.0, float),
        (True, bool),
        ("3", str),
    ],
)
def test_telemetry_types_metadata_numbers_kept_as_sent(value: Any, kept: type) -> None:
    accepted = assert_verdict(event(metadata={"n": value, "l": [value], "o": {"k": value}}), True)
    assert accepted is not None
    meta = accepted[0]["metadata"]
    assert meta == {"n": value, "l": [value], "o": {"k": value}}
    assert type(meta["n"]) is type(meta["l"][0]) is type(meta["o"]["k"]) is kept


@pytest.mark.parametrize("value", [BIGGEST + 1, -BIGGEST - 1, 2**1024, 10**400])
def test_telemetry_types_metadata_ints_beyond_a_double_refused(value: int) -> None:
    assert_verdict(event(metadata={"n": value}), False)


def test_telemetry_types_offsets_of_python_datetimes() -> None:
    # A model built in Python takes a datetime: converted to UTC; a naive one is refused.
    local = datetime(2025, 11, 17, 13, tzinfo=timezone(timedelta(hours=1)))
    assert TelemetryIn.model_validate(event(timestamp=local)).timestamp == datetime(2025, 11, 17, 12, tzinfo=UTC)
    with pytest.raises(ValidationError):
        TelemetryIn.model_validate(event(timestamp=datetime(2025, 11, 17, 12)))
