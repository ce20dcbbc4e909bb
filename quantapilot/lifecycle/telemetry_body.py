"""Telemetry as the API receives it: the body models of ``POST /v1/telemetry/events`` and their parsing.

The models are the source of ``schemas/telemetry.schema.json``; :func:`parse_telemetry` reads a body from its bytes
as that schema dispatches (one event, or a batch). Storing and aggregating the events is
:mod:`quantapilot.lifecycle.telemetry`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from typing_extensions import TypeAliasType

from quantapilot.lifecycle.models import KPI_PATTERN, REQUEST_BODY, account_uuid, refuse_null
from quantapilot.lifecycle.rfc3339 import MAX_TEXT, aware_utc, parse_rfc3339
from quantapilot.lifecycle.validation import SchemaValidationError, details_from, parse_model

MAX_BATCH = 1000
EVENT_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"

# The body models are the source of ``schemas/telemetry.schema.json`` (``make schemas``; the conventions are in
# schemas/generate.py): every description and bound of the published file is stated here once.
_FINITE = 1.7976931348623157e308  # the largest double: 1e400 parses to infinity and fails the bounds


def _number_as_sent(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # Check the bounds, but keep the sender's number: an int stays an int in the stored metadata.
    checked = handler(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else checked


MetaKey = Annotated[str, Field(max_length=64)]
Scalar = TypeAliasType(
    "Scalar",
    Annotated[str, Field(max_length=1024)]
    | Annotated[float, Field(ge=-_FINITE, le=_FINITE), WrapValidator(_number_as_sent)]
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

    model_config = ConfigDict(title="event", frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    id: str | None = Field(
        default=None,
        pattern=EVENT_ID_PATTERN,
        description=(
            "The sender's own id of the event (1-128 printable ASCII characters), unique per workspace: an event "
            "whose id is already stored (a retry) is not stored again and counts in the answer's duplicates. Two "
            "events of one batch may not share an id."
        ),
    )
    account_id: str = Field(alias="accountId", min_length=36, max_length=36, json_schema_extra={"format": "uuid"})
    kpi: str = Field(pattern=KPI_PATTERN)
    value: float = Field(
        allow_inf_nan=False,
        ge=-_FINITE,
        le=_FINITE,
        description="A finite double: 1e400 parses to infinity and fails the bounds.",
    )
    # maxLength: a bound on the text the schema checks before parsing; a datetime has no length.
    timestamp: datetime = Field(
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

    @field_validator("account_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return account_uuid(value)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        # RFC 3339 exactly (the published format), not pydantic's wider ISO 8601 reading.
        return parse_rfc3339(value, max_length=MAX_TEXT).astimezone(UTC) if isinstance(value, str) else value

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return aware_utc(value, "timestamp needs a UTC offset")

    @model_validator(mode="after")
    def _source_from_metadata(self) -> TelemetryIn:
        meta_source = self.metadata.get("source")
        if self.source is None and isinstance(meta_source, str) and meta_source:
            object.__setattr__(self, "source", meta_source[:128])
        return self


class TelemetryBatchIn(BaseModel):
    """A batch of telemetry events (``{"events": [...]}``)."""

    model_config = ConfigDict(title="batch", frozen=True, extra="forbid")

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
        events = TelemetryBatchIn.model_validate_json(
            raw, strict=True, by_alias=True, by_name=False, context=REQUEST_BODY
        ).events
    except ValidationError as exc:
        if not _lacks_events(exc):
            raise details_from(exc, raw) from None
        return [parse_model(TelemetryIn, raw)]
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
