"""Telemetry store: the ``telemetry_events`` table, bulk ingestion and per-KPI aggregates.

Rows follow the seed's telemetry table (id, KPI, timestamp, numeric value, unit, source, metadata,
ingested_at, organisation, here ``workspace``) plus the customer ``account_id``. Timestamps are stored in UTC
and always come back timezone-aware, on SQLite as on PostgreSQL.

A sender's retry must not count twice: an event may carry its own ``id`` (unique per workspace, ``event_id``
here), and a batch sent with an ``Idempotency-Key`` is recorded in ``telemetry_batches`` with its body's hash,
in the same transaction as its events. A retried event id or batch is stored once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from sqlalchemy import JSON, BigInteger, Column, Index, Integer, String, UniqueConstraint, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel
from typing_extensions import TypeAliasType

from quantapilot.db import UtcDateTime, utcnow
from quantapilot.lifecycle.models import KPI_PATTERN, KpiAggregate, canonical_account_id
from quantapilot.lifecycle.rfc3339 import parse_rfc3339
from quantapilot.lifecycle.validation import SchemaValidationError, pydantic_errors, validate_json

TELEMETRY_SCHEMA = "telemetry.schema.json"
MAX_BATCH = 1000
EVENT_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"


class TelemetryEvent(SQLModel, table=True):
    """One telemetry sample of one KPI of one account."""

    __tablename__ = "telemetry_events"
    __table_args__ = (
        Index("ix_telemetry_events_ws_account_kpi_ts", "workspace", "account_id", "kpi", "timestamp"),
        # NULLs never collide: events sent without an id are all kept.
        UniqueConstraint("workspace", "event_id", name="uq_telemetry_events_ws_event_id"),
    )

    # BIGINT on PostgreSQL; SQLite needs exactly INTEGER for its rowid alias (autoincrementing key).
    id: int | None = SQLField(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    )
    workspace: str = SQLField(sa_column=Column(String(128), nullable=False))
    account_id: str = SQLField(sa_column=Column(String(36), nullable=False))
    kpi: str = SQLField(sa_column=Column(String(64), nullable=False))
    value: float
    unit: str | None = SQLField(default=None, sa_column=Column(String(32), nullable=True))
    source: str | None = SQLField(default=None, sa_column=Column(String(128), nullable=True))
    # The attribute cannot be called ``metadata`` (SQLModel's MetaData); the column is.
    meta: dict[str, Any] = SQLField(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    timestamp: datetime = SQLField(sa_column=Column(UtcDateTime(), nullable=False))
    ingested_at: datetime = SQLField(default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False))
    # The sender's own id of the event (``id`` in the API), when it sent one: a retry with it is stored once.
    event_id: str | None = SQLField(default=None, sa_column=Column(String(128), nullable=True))


class TelemetryBatch(SQLModel, table=True):
    """A batch sent with an ``Idempotency-Key``: a retry with the same key and body stores nothing again."""

    __tablename__ = "telemetry_batches"

    workspace: str = SQLField(sa_column=Column(String(128), primary_key=True))
    idempotency_key: str = SQLField(sa_column=Column(String(255), primary_key=True))
    request_sha256: str = SQLField(sa_column=Column(String(64), nullable=False))
    events: int
    created_at: datetime = SQLField(default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False))


class IdempotencyKeyReused(Exception):
    """The ``Idempotency-Key`` of a telemetry batch was used before with another body."""


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
    """One telemetry event as the API receives it (camelCase ``accountId``), after schema validation.

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
        description="RFC 3339 date-time with an offset, e.g. 2025-11-17T12:00:00Z.", json_schema_extra={"maxLength": 64}
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

    @field_validator("account_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return canonical_account_id(value)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        # Parse with the same function the schema's format checker uses, so both agree on every input.
        return parse_rfc3339(value) if isinstance(value, str) else value

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp needs a UTC offset")
        return value.astimezone(UTC)

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
    """The body of ``POST /v1/telemetry/events``: the published document, not used to parse (see below)."""

    model_config = ConfigDict(title="Telemetry events", json_schema_extra=_dispatch_on_events)


def parse_telemetry_payload(payload: Any) -> list[TelemetryIn]:
    """Validate and parse a decoded ``POST /v1/telemetry/events`` body: one event or ``{"events": [...]}``.

    Raises:
        SchemaValidationError: With every problem found (paths like ``/events/3/timestamp``).
    """
    validate_json(TELEMETRY_SCHEMA, payload)
    batch = isinstance(payload, dict) and "events" in payload
    items = payload["events"] if batch else [payload]
    try:
        events = [TelemetryIn.model_validate(item) for item in items]
    except ValidationError as exc:
        raise pydantic_errors(exc) from None
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
        raise SchemaValidationError(problems)
    return events


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What storing a batch did.

    Attributes:
        stored: Events inserted now.
        duplicates: Events already stored (under their id, or by the batch's earlier delivery): not stored again.
    """

    stored: int
    duplicates: int


def store_batch(
    *,
    session: Session,
    workspace: str,
    events: Sequence[TelemetryIn],
    idempotency_key: str | None = None,
    request_sha256: str = "",
) -> StoredBatch:
    """Store a batch once: by its ``Idempotency-Key`` and by each event's ``id``; the caller commits.

    The key's row is written first, in the batch's transaction: a concurrent delivery of the same key waits on it
    (PostgreSQL's unique index, SQLite's write lock) and then finds it, so two deliveries never both store.

    Args:
        session: Open session.
        workspace: Workspace of the caller.
        events: Parsed events.
        idempotency_key: The request's ``Idempotency-Key``, if any.
        request_sha256: Hash of the request body (:func:`api.runs.request_hash`), compared on a repeated key.

    Returns:
        How many events were stored now and how many were already there.

    Raises:
        IdempotencyKeyReused: The key was used before with another body.
    """
    if idempotency_key is not None:
        claim = _insert_ignoring_conflicts(session, TelemetryBatch, ["workspace", "idempotency_key"])
        claimed = session.execute(
            claim.returning(TelemetryBatch.__table__.c.workspace),  # type: ignore[attr-defined]
            [
                {
                    "workspace": workspace,
                    "idempotency_key": idempotency_key,
                    "request_sha256": request_sha256,
                    "events": len(events),
                    "created_at": utcnow(),
                }
            ],
        ).all()
        if not claimed:
            earlier = session.get(TelemetryBatch, (workspace, idempotency_key))
            if earlier is None or earlier.request_sha256 != request_sha256:
                raise IdempotencyKeyReused(idempotency_key)
            return StoredBatch(stored=0, duplicates=len(events))
    stored = insert_events(session=session, workspace=workspace, events=events)
    return StoredBatch(stored=stored, duplicates=len(events) - stored)


def _insert_ignoring_conflicts(session: Session, table: type[SQLModel], columns: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (columns) DO NOTHING`` in the session's dialect (PostgreSQL or SQLite)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=columns)


def insert_events(*, session: Session, workspace: str, events: Sequence[TelemetryIn]) -> int:
    """Insert ``events`` in one multi-row statement; the caller commits.

    Events with an ``id`` already stored in the workspace (a sender's retry) are skipped by the same statement
    (``ON CONFLICT DO NOTHING``); a batch without ids takes the plain insert.

    Args:
        session: Open session.
        workspace: Workspace of the caller; every row is scoped to it.
        events: Parsed events (at most what one statement should carry; the API caps batches at 1000).

    Returns:
        The number of rows inserted.
    """
    if not events:
        return 0
    ingested_at = utcnow()
    rows = [
        {
            "workspace": workspace,
            "account_id": e.account_id,
            "kpi": e.kpi,
            "value": e.value,
            "unit": e.unit,
            "source": e.source,
            "meta": e.metadata,
            "timestamp": e.timestamp,
            "ingested_at": ingested_at,
            "event_id": e.id,
        }
        for e in events
    ]
    if all(e.id is None for e in events):
        session.execute(insert(TelemetryEvent), rows)
        return len(rows)
    statement = _insert_ignoring_conflicts(session, TelemetryEvent, ["workspace", "event_id"])
    inserted = session.execute(statement.returning(TelemetryEvent.__table__.c.id), rows)  # type: ignore[attr-defined]
    return len(inserted.all())


def kpi_aggregates(
    *, session: Session, workspace: str, account_id: str, start: datetime, end: datetime
) -> dict[str, KpiAggregate]:
    """Aggregate an account's telemetry per KPI over ``[start, end)``.

    One statement: mean, count, min and max from a ``GROUP BY kpi``, and ``last`` (with its ``unit``) from a
    correlated probe per KPI: the ``(workspace, account_id, kpi, timestamp)`` index read backwards, ties on the
    timestamp broken by the later insert (higher id). The probe runs once per output row whatever the planner
    believes about the account's size; a join against a ``max(timestamp)`` subquery instead went quadratic on
    PostgreSQL whenever its row estimate was small (stale statistics, a new account bursting into a big table).

    Args:
        session: Open session.
        workspace: Caller's workspace.
        account_id: Account UUID (any case).
        start: Inclusive start, timezone-aware.
        end: Exclusive end, timezone-aware.

    Returns:
        Aggregates keyed by KPI, sorted by KPI name; KPIs without samples are absent.
    """
    account = canonical_account_id(account_id)
    t = SQLModel.metadata.tables[TelemetryEvent.__tablename__]
    probe = t.alias("latest")

    def window(table: Any) -> tuple[Any, ...]:
        return (
            table.c.workspace == workspace,
            table.c.account_id == account,
            table.c.timestamp >= start,
            table.c.timestamp < end,
        )

    def latest(column: str) -> Any:
        return (
            select(probe.c[column])
            .where(*window(probe), probe.c.kpi == t.c.kpi)
            .order_by(probe.c.timestamp.desc(), probe.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )

    rows = session.execute(
        select(
            t.c.kpi,
            func.avg(t.c.value),
            func.count(),
            func.min(t.c.value),
            func.max(t.c.value),
            latest("value"),
            latest("unit"),
        )
        .where(*window(t))
        .group_by(t.c.kpi)
        .order_by(t.c.kpi)
    ).all()
    return {
        kpi: KpiAggregate(
            kpi=kpi,
            mean=float(mean),
            count=int(count),
            min=float(lo),
            max=float(hi),
            last=float(last),
            unit=unit,
        )
        for kpi, mean, count, lo, hi, last, unit in rows
    }
