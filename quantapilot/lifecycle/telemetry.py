"""Telemetry store: the ``telemetry_events`` table, bulk ingestion and per-KPI aggregates.

Rows follow the seed's telemetry table (id, KPI, timestamp, numeric value, unit, source, metadata,
ingested_at, organisation, here ``workspace``) plus the customer ``account_id``. Timestamps are stored in UTC
and always come back timezone-aware, on SQLite as on PostgreSQL.

A sender's retry must not count twice: an event may carry its own ``id`` (unique per workspace, ``event_id``
here), and a batch sent with an ``Idempotency-Key`` is recorded in ``telemetry_batches`` with its body's hash,
in the same transaction as its events. A retried event id or batch is stored once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import pydantic_core
from sqlalchemy import JSON, BigInteger, Column, Index, Integer, String, UniqueConstraint, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel

from quantapilot.db import UtcDateTime, utcnow
from quantapilot.lifecycle.models import canonical_account_id
from quantapilot.lifecycle.outputs import KpiAggregate
from quantapilot.lifecycle.telemetry_body import TelemetryIn


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


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What storing a batch did.

    Attributes:
        stored: Events inserted now.
        duplicates: Events already stored (under their id, or by the batch's earlier delivery): not stored again.
    """

    stored: int
    duplicates: int


def _connection_of(session: Session | None, connection: Connection | None) -> Connection:
    """The connection to run on: ``connection``, or the session's (exactly one of them is given)."""
    if (session is None) == (connection is None):
        raise TypeError("give exactly one of session= and connection=")
    return connection if connection is not None else session.connection()  # type: ignore[union-attr]


def store_batch(
    *,
    session: Session | None = None,
    connection: Connection | None = None,
    workspace: str,
    events: Sequence[TelemetryIn],
    idempotency_key: str | None = None,
    request_sha256: str = "",
) -> StoredBatch:
    """Store a batch once: by its ``Idempotency-Key`` and by each event's ``id``; the caller commits.

    The key's row is written first, in the batch's transaction: a concurrent delivery of the same key waits on it
    (PostgreSQL's unique index, SQLite's write lock) and then finds it, so two deliveries never both store.

    Args:
        session: Open session (or ``connection``).
        connection: Open Core connection in a transaction (or ``session``): the API stores on one, without the
            ORM session's bookkeeping.
        workspace: Workspace of the caller.
        events: Parsed events.
        idempotency_key: The request's ``Idempotency-Key``, if any.
        request_sha256: Hash of the request body (:func:`api.runs.request_hash`), compared on a repeated key.

    Returns:
        How many events were stored now and how many were already there.

    Raises:
        IdempotencyKeyReused: The key was used before with another body.
        TypeError: Neither or both of ``session`` and ``connection`` given.
    """
    conn = _connection_of(session, connection)
    if idempotency_key is not None:
        batches = TelemetryBatch.__table__  # type: ignore[attr-defined]
        claim = _insert_ignoring_conflicts(conn.dialect, TelemetryBatch, ["workspace", "idempotency_key"])
        claimed = conn.execute(
            claim.returning(batches.c.workspace),
            {
                "workspace": workspace,
                "idempotency_key": idempotency_key,
                "request_sha256": request_sha256,
                "events": len(events),
                "created_at": utcnow(),
            },
        ).all()
        if not claimed:
            earlier = conn.execute(
                select(batches.c.request_sha256).where(
                    batches.c.workspace == workspace, batches.c.idempotency_key == idempotency_key
                )
            ).scalar_one_or_none()
            if earlier is None or earlier != request_sha256:
                raise IdempotencyKeyReused(idempotency_key)
            return StoredBatch(stored=0, duplicates=len(events))
    stored = insert_events(connection=conn, workspace=workspace, events=events)
    return StoredBatch(stored=stored, duplicates=len(events) - stored)


def _insert_ignoring_conflicts(dialect: Dialect, table: type[SQLModel], columns: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (columns) DO NOTHING`` in ``dialect`` (PostgreSQL or SQLite)."""
    flavour = postgresql if dialect.name == "postgresql" else sqlite
    return flavour.insert(table).on_conflict_do_nothing(index_elements=columns)


# The columns an insert writes, in this order; the id is the database's.
_EVENT_COLUMNS = (
    "workspace", "account_id", "kpi", "value", "unit", "source", "metadata", "timestamp", "ingested_at", "event_id"
)  # fmt: skip
# Columns whose values go to the driver as they are: they must have no bind processor in a supported dialect
# (checked when the statement is built), so skipping SQLAlchemy's per-row processing changes nothing.
_AS_IS = frozenset({"workspace", "account_id", "kpi", "unit", "source", "event_id"})

Processor = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _json_text(value: Any) -> str:
    # pydantic-core's serializer: the same JSON value as json.dumps (checked in _checked), several times faster.
    return pydantic_core.to_json(value).decode()


def _fast_timestamp(dialect: Dialect, own: Processor) -> Processor:
    """The fast encoder of ``timestamp`` for ``dialect``, falling back to the column's own processor ``own``.

    One ``isoformat`` per UTC timestamp on SQLite (its DATETIME text); on PostgreSQL the UTC datetime as is (its
    processor only converts to UTC). A timestamp in another zone takes ``own``.
    """
    if dialect.name == "sqlite":

        def naive_utc_text(value: datetime) -> Any:
            return value.isoformat(" ", "microseconds")[:26] if value.tzinfo is UTC else own(value)

        return naive_utc_text

    def utc_as_is(value: datetime) -> Any:
        return value if value.tzinfo is UTC else own(value)

    return utc_as_is


def _column_processor(dialect: Dialect, name: str) -> Processor | None:
    table = SQLModel.metadata.tables[TelemetryEvent.__tablename__]
    processor: Processor | None = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    return processor


# Values the fast encoders are checked on against the columns' own processors, when a statement is compiled:
# what the body models allow (nested scalars, unicode, ints beyond 64 bits, extreme doubles) and timestamps of
# every shape (no microseconds, the first and last years, other zones).
_METADATA_PROBES: tuple[dict[str, Any], ...] = (
    {},
    {"source": "bench", "seq": 1},
    {"s": 'é ü \u2028 \\ " \n \t \x00 😀', "n": None, "t": True, "f": False},
    {"i": [0, -1, 2**63, -(2**64) - 1, 2**1023], "d": [0.1, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308]},
    {"nested": {"a": [1, "x", None], "b": 1.5}, "list": [{"k": "v"}, [1, 2]]},
)
_TIMESTAMP_PROBES: tuple[datetime, ...] = (
    datetime(2025, 11, 17, 12, tzinfo=UTC),
    datetime(2025, 11, 17, 12, 0, 0, 1, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2025, 3, 30, 1, 30, 15, 500000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
)


def _driver_json(value: Any) -> Any:
    """The JSON value a metadata column's bound parameter stands for: its text, or psycopg's ``Json`` wrapper."""
    if isinstance(value, str):
        return json.loads(value)
    dumps = getattr(value, "dumps", None) or json.dumps
    return json.loads(dumps(value.obj))


def _checked(dialect: Dialect, fast: dict[str, Processor]) -> dict[str, Processor]:
    """``fast`` where each encoder gives what the column's own bind processor gives on the probes, else the latter.

    Timestamps must encode identically (text on SQLite, the same aware datetime on PostgreSQL); metadata must
    encode the same JSON value (PostgreSQL's ``json`` keeps the text, so separators may differ, not the value).
    """
    chosen: dict[str, Processor] = {}
    for name, encoder in fast.items():
        own = _column_processor(dialect, name) or _identity
        if name == "metadata":
            same = all(_driver_json(own(p)) == json.loads(encoder(p)) for p in _METADATA_PROBES)
        else:
            # repr as well as ==: an aware datetime equals its value in another zone, and the zone is stored.
            same = all(own(p) == encoder(p) and repr(own(p)) == repr(encoder(p)) for p in _TIMESTAMP_PROBES)
        chosen[name] = encoder if same else own
    return chosen


@dataclass(frozen=True, slots=True)
class _BulkInsert:
    """The compiled ``INSERT ... ON CONFLICT (workspace, event_id) DO NOTHING`` of one dialect.

    Attributes:
        sql: The statement as the driver takes it (no ``RETURNING``: the driver's executemany runs it).
        names: Its parameters in order (positional paramstyles) or by name.
        positional: Whether the driver takes tuples (SQLite's ``?``) rather than dicts (psycopg's ``%(name)s``).
        value: Bind processor of ``value`` (identity if none).
        metadata: Encoder of ``metadata``: pydantic-core JSON text where checked equal to the column's own.
        timestamp: Encoder of ``timestamp``: one ``isoformat`` (SQLite) or as is (PostgreSQL) where checked.
        ingested_at: Bind processor of ``ingested_at``.
    """

    sql: str
    names: tuple[str, ...]
    positional: bool
    value: Processor
    metadata: Processor
    timestamp: Processor
    ingested_at: Processor


@lru_cache(maxsize=8)
def _bulk_insert(dialect: Dialect) -> _BulkInsert:
    """Compile the event insert for ``dialect`` once, with checked encoders of its typed columns."""
    table = SQLModel.metadata.tables[TelemetryEvent.__tablename__]
    flavour = postgresql if dialect.name == "postgresql" else sqlite
    statement = flavour.insert(table).on_conflict_do_nothing(index_elements=["workspace", "event_id"])
    # As an executemany: without it PostgreSQL's statement would end in RETURNING id (the implicit returning of
    # one row's key), which the driver would then run and answer for every row.
    compiled = statement.compile(dialect=dialect, column_keys=list(_EVENT_COLUMNS), for_executemany=True)
    sql = str(compiled)
    if compiled.effective_returning or "RETURNING" in sql.upper():  # pragma: no cover - SQLAlchemy changed
        raise TypeError(f"the telemetry insert returns rows: {sql}")

    for name in _AS_IS:
        if _column_processor(dialect, name) is not None:  # pragma: no cover - a column type changed: encode it
            raise TypeError(f"telemetry_events.{name} has a bind processor in {dialect.name}")
    names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(_EVENT_COLUMNS)
    if set(names) != set(_EVENT_COLUMNS):  # pragma: no cover - the statement must bind every column once
        raise TypeError(f"unexpected parameters {names}")
    own_timestamp = _column_processor(dialect, "timestamp") or _identity
    encoders = _checked(dialect, {"metadata": _json_text, "timestamp": _fast_timestamp(dialect, own_timestamp)})
    return _BulkInsert(
        sql=sql,
        names=names,
        positional=bool(compiled.positional),
        value=_column_processor(dialect, "value") or _identity,
        metadata=encoders["metadata"],
        timestamp=encoders["timestamp"],
        ingested_at=_column_processor(dialect, "ingested_at") or _identity,
    )


def insert_events(
    *,
    session: Session | None = None,
    connection: Connection | None = None,
    workspace: str,
    events: Sequence[TelemetryIn],
) -> int:
    """Insert ``events`` with one statement executed for all rows (the driver's ``executemany``).

    The statement is SQLAlchemy's ``INSERT ... ON CONFLICT (workspace, event_id) DO NOTHING`` for the
    connection's dialect, compiled once: an event whose ``id`` is already stored in the workspace (a sender's
    retry) is skipped by the database, atomically with the rest, also against a concurrent insert of the same id;
    events without an id never conflict (NULLs are distinct). Rows go to the driver already encoded, by encoders
    checked against the columns' own bind processors when the statement is compiled, instead of through
    SQLAlchemy's per-row parameter processing, which cost more than the insert itself (bench/README.md). The
    caller commits.

    Args:
        session: Open session (or ``connection``).
        connection: Open Core connection in a transaction (or ``session``).
        workspace: Workspace of the caller; every row is scoped to it.
        events: Parsed events (the API caps batches at 1000).

    Returns:
        The number of rows inserted (the driver's summed row count: conflicting rows count 0).

    Raises:
        TypeError: Neither or both of ``session`` and ``connection`` given.
    """
    conn = _connection_of(session, connection)
    if not events:
        return 0
    sql, params = encode_events(conn.dialect, workspace, events)
    result = conn.exec_driver_sql(sql, params)
    return int(result.rowcount)


def encode_events(dialect: Dialect, workspace: str, events: Sequence[TelemetryIn]) -> tuple[str, list[Any]]:
    """The bulk insert of ``events`` for ``dialect``: its SQL and its rows, encoded as the driver takes them.

    Args:
        dialect: Dialect of the connection that will run it.
        workspace: Workspace of the caller; every row is scoped to it.
        events: Parsed events.

    Returns:
        The statement and its parameters for the driver's ``executemany`` (bench/telemetry_parts.py times it).
    """
    bulk = _bulk_insert(dialect)
    ingested_at = bulk.ingested_at(utcnow())
    value, metadata, timestamp = bulk.value, bulk.metadata, bulk.timestamp
    rows = [
        (workspace, e.account_id, e.kpi, value(e.value), e.unit, e.source, metadata(e.metadata),
         timestamp(e.timestamp), ingested_at, e.id)
        for e in events
    ]  # fmt: skip
    if bulk.positional:
        order = [_EVENT_COLUMNS.index(name) for name in bulk.names]
        params: list[Any] = rows if order == list(range(len(order))) else [tuple(r[i] for i in order) for r in rows]
    else:
        params = [dict(zip(_EVENT_COLUMNS, row, strict=True)) for row in rows]
    return bulk.sql, params


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
