"""Telemetry as the API receives it: the body models of ``POST /v1/telemetry/events`` and their parsing.

The models are the source of ``schemas/telemetry.schema.json``; :func:`parse_telemetry` reads a body from its bytes
as that schema dispatches (one event, or a batch). Storing and aggregating the events is
:mod:`quantapilot.lifecycle.telemetry`.
"""

from __future__ import annotations

import json
import operator
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    RootModel,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import CoreSchema, core_schema
from typing_extensions import TypeAliasType

from quantapilot.lifecycle.models import KPI_PATTERN, REQUEST_BODY, account_uuid, refuse_null
from quantapilot.lifecycle.rfc3339 import MAX_TEXT, aware_utc, parse_rfc3339
from quantapilot.lifecycle.validation import SchemaValidationError, details_from

MAX_BATCH = 1000
EVENT_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"

# The body models are the source of ``schemas/telemetry.schema.json`` (``make schemas``; the conventions are in
# schemas/generate.py): every description and bound of the published file is stated here once.
_FINITE = 1.7976931348623157e308  # the largest double: 1e400 parses to infinity and fails the bounds


# The largest int that still rounds to a finite double: metadata ints are bounded as the doubles they could be.
_MAX_INT = 2**1024 - 2**970 - 1


def _json_only(json_schema: CoreSchema) -> GetPydanticSchema:
    """Validate JSON input with ``json_schema`` (pydantic-core alone), Python input as the annotated type says.

    A request body is parsed from JSON: there the checks run in pydantic-core without a call into Python per
    event, which a batch of 1000 pays 1000 times (bench/README.md). A model built in Python (tests, tools) keeps
    the Python validators in front of this marker, with the same accepted values.
    """
    return GetPydanticSchema(
        lambda source, handler: core_schema.json_or_python_schema(
            json_schema=json_schema, python_schema=handler(source)
        )
    )


def _rfc3339(value: Any) -> Any:
    # RFC 3339 exactly (the published format), not pydantic's wider ISO 8601 reading.
    return parse_rfc3339(value, max_length=MAX_TEXT).astimezone(UTC) if isinstance(value, str) else value


def _utc(value: datetime) -> datetime:
    return aware_utc(value, "timestamp needs a UTC offset")


# RFC 3339's shape, ASCII digits only; the ranges (month, day of the month, hour, minute, second, the offset's
# hours and minutes) are checked by pydantic's datetime parser after it, as datetime() checks them in Python.
RFC3339_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$"
_NOT_RFC3339 = "Value error, not an RFC 3339 date-time"
_TIMESTAMP_JSON = core_schema.custom_error_schema(
    core_schema.chain_schema(
        [
            core_schema.str_schema(pattern=RFC3339_SHAPE, max_length=MAX_TEXT, strict=True),
            # The text matched the shape: only the values are left to check (lax: this step reads a str).
            core_schema.datetime_schema(strict=False),
            core_schema.no_info_plain_validator_function(operator.methodcaller("astimezone", UTC)),
        ]
    ),
    custom_error_type="rfc3339_date_time",
    custom_error_message=_NOT_RFC3339,
)
Timestamp = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    AfterValidator(_utc),
    _json_only(_TIMESTAMP_JSON),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

UUID_PATTERN = r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$"
_ACCOUNT_JSON = core_schema.chain_schema(
    [
        core_schema.str_schema(min_length=36, max_length=36, strict=True),
        core_schema.custom_error_schema(
            core_schema.str_schema(pattern=UUID_PATTERN, to_lower=True),
            custom_error_type="uuid_text",
            custom_error_message="Value error, not a UUID in the 8-4-4-4-12 form",
        ),
    ]
)
AccountId = Annotated[str, Field(min_length=36, max_length=36), AfterValidator(account_uuid), _json_only(_ACCOUNT_JSON)]

MetaKey = Annotated[str, Field(max_length=64)]
Scalar = TypeAliasType(
    "Scalar",
    Annotated[str, Field(max_length=1024)]
    # An int stays an int in the stored metadata, within the bounds it would have as a double; the published
    # schema's "number" covers it (the member is left out of it).
    | SkipJsonSchema[Annotated[int, Field(ge=-_MAX_INT, le=_MAX_INT)]]
    | Annotated[float, Field(ge=-_FINITE, le=_FINITE)]
    | bool
    | None,
)
MetaValue = TypeAliasType(
    "MetaValue",
    Scalar | Annotated[list[Scalar], Field(max_length=32)] | Annotated[dict[MetaKey, Scalar], Field(max_length=32)],
)


class TelemetryIn(BaseModel):
    """One telemetry event as the API receives it (camelCase ``accountId``).

    ``source`` defaults to ``metadata.source`` when that is a string, as the seed's example carries it there.
    """

    # Strict in the config, not per call: the timestamp's own steps (a datetime read from text that matched
    # RFC 3339's shape) stay lax, which a strict call would override.
    model_config = ConfigDict(
        title="event", frozen=True, extra="forbid", strict=True, validate_by_name=True, validate_by_alias=True
    )

    id: str | None = Field(
        default=None,
        pattern=EVENT_ID_PATTERN,
        description=(
            "The sender's own id of the event (1-128 printable ASCII characters), unique per workspace: an event "
            "whose id is already stored (a retry) is not stored again and counts in the answer's duplicates. Two "
            "events of one batch may not share an id."
        ),
    )
    account_id: AccountId = Field(alias="accountId", json_schema_extra={"format": "uuid"})
    kpi: str = Field(pattern=KPI_PATTERN)
    value: float = Field(
        allow_inf_nan=False,
        ge=-_FINITE,
        le=_FINITE,
        description="A finite double: 1e400 parses to infinity and fails the bounds.",
    )
    # maxLength: a bound on the text the schema checks before parsing; a datetime has no length.
    timestamp: Timestamp = Field(
        description="RFC 3339 date-time with an offset, e.g. 2025-11-17T12:00:00Z.",
        json_schema_extra={"maxLength": MAX_TEXT},
    )
    unit: str | None = Field(default=None, min_length=1, max_length=32)
    source: str | None = Field(default=None, min_length=1, max_length=128)
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict,
        max_length=32,
        description=(
            "Small free-form context: at most 32 keys of at most 64 characters; values are scalars, or "
            "arrays/objects (at most 32 entries) of scalars, so nesting stops two levels below metadata. Strings "
            "at most 1024 characters. No personal data."
        ),
    )

    @field_validator("id", "unit", "source", mode="before")
    @classmethod
    def _absent_not_null(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_null(value, info)

    @model_validator(mode="after")
    def _source_from_metadata(self) -> TelemetryIn:
        meta_source = self.metadata.get("source")
        if self.source is None and isinstance(meta_source, str) and meta_source:
            object.__setattr__(self, "source", meta_source[:128])
        return self


class TelemetryBatchIn(BaseModel):
    """A batch of telemetry events (``{"events": [...]}``)."""

    model_config = ConfigDict(title="batch", frozen=True, extra="forbid", strict=True)

    events: list[TelemetryIn] = Field(min_length=1, max_length=MAX_BATCH)


def _dispatch_on_events(schema: dict[str, Any]) -> None:
    # An object with "events" is a batch, anything else one event: if/then/else names the one that failed
    # instead of reporting both alternatives of an anyOf.
    batch, event = schema.pop("anyOf")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "urn:quantapilot:schema:telemetry"
    schema["description"] = (
        'Body of POST /v1/telemetry/events: one event, or {"events": [...]} with 1 to 1000 events. Retries store '
        "nothing twice: give each event an id, or send the request with an Idempotency-Key."
    )
    schema["if"] = {"type": "object", "required": ["events"]}
    schema["then"] = batch
    schema["else"] = event


class TelemetryBody(RootModel[TelemetryBatchIn | TelemetryIn]):
    """The body of ``POST /v1/telemetry/events`` as published; :func:`parse_telemetry` parses it the same way."""

    model_config = ConfigDict(title="Telemetry events", json_schema_extra=_dispatch_on_events)


def _lacks_events(exc: ValidationError) -> bool:
    return any(e["type"] == "missing" and tuple(e["loc"]) == ("events",) for e in exc.errors(include_url=False))


def parse_telemetry(raw: bytes | str) -> list[TelemetryIn]:
    """Parse a ``POST /v1/telemetry/events`` body from its bytes: one event or ``{"events": [...]}``.

    Parsed once, as the published schema dispatches (an object with ``events`` is a batch, anything else one
    event): the whole batch in one ``model_validate_json``, and only a body without ``events`` again as one
    event (a cheap refusal first: its fields are then just unknown keys of a batch).

    Raises:
        SchemaValidationError: With every problem found (paths like ``/events/537/timestamp``).
    """
    try:
        events = TelemetryBatchIn.model_validate_json(raw, by_alias=True, by_name=False, context=REQUEST_BODY).events
    except ValidationError as exc:
        if not _lacks_events(exc):
            raise details_from(exc, raw) from None
        try:
            return [TelemetryIn.model_validate_json(raw, by_alias=True, by_name=False, context=REQUEST_BODY)]
        except ValidationError as one:
            raise details_from(one, raw) from None
    first: dict[str, int] = {}
    problems = []
    for index, event in enumerate(events):
        if event.id is None:
            continue
        if event.id in first:
            # Two events under one id: the second would silently be dropped as a retry of the first.
            where = f"/events/{first[event.id]}/id"
            problems.append({"path": f"/events/{index}/id", "message": f"duplicate id (first at {where})"})
        first.setdefault(event.id, index)
    if problems:
        raise SchemaValidationError(problems[:50])
    return events


def parse_telemetry_payload(payload: Any) -> list[TelemetryIn]:
    """:func:`parse_telemetry` of an already decoded body (tests and tools that build bodies as dicts).

    Raises:
        SchemaValidationError: As :func:`parse_telemetry`.
    """
    return parse_telemetry(json.dumps(payload))
