"""Telemetry store on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Text, cast, func, select, type_coerce
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from quantapilot.db import create_all, make_engine, session_scope
from quantapilot.lifecycle.telemetry import (
    IdempotencyKeyReused,
    StoredBatch,
    TelemetryEvent,
    _bulk_insert,
    _json_text,
    insert_events,
    kpi_aggregates,
    store_batch,
)
from quantapilot.lifecycle.telemetry_body import TelemetryIn, parse_telemetry_payload
from quantapilot.lifecycle.validation import SchemaValidationError

ACCOUNT = "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"
OTHER = "0b5e8a52-7f0c-4f43-9a53-b3c2f7d0e111"
T0 = datetime(2025, 11, 17, 12, tzinfo=UTC)


def event(kpi: str, value: float, at: datetime, account: str = ACCOUNT, **extra: object) -> TelemetryIn:
    return TelemetryIn.model_validate(
        {"accountId": account, "kpi": kpi, "value": value, "timestamp": at.isoformat(), **extra}
    )


def test_telemetry_insert_and_aggregate_per_kpi(db_engine: Engine) -> None:
    events = [
        event("response_time_ms", 120, T0, unit="ms"),
        event("response_time_ms", 100, T0 + timedelta(minutes=5), unit="ms"),
        event("response_time_ms", 140, T0 + timedelta(minutes=1), unit="ms"),
        event("nps", 30, T0),
        event("nps", 50, T0 + timedelta(hours=1)),
        # outside the period, another account, another workspace: all excluded
        event("nps", 1000, T0 - timedelta(days=2)),
        event("nps", 1000, T0 + timedelta(days=1)),
        event("nps", 1000, T0, account=OTHER),
    ]
    with session_scope(db_engine) as session:
        assert insert_events(session=session, workspace="ws1", events=events) == len(events)
        assert insert_events(session=session, workspace="ws2", events=[event("nps", 999, T0)]) == 1
    with Session(db_engine) as session:
        aggs = kpi_aggregates(
            session=session,
            workspace="ws1",
            account_id=ACCOUNT.upper(),
            start=T0 - timedelta(hours=1),
            end=T0 + timedelta(days=1),  # exclusive: the event exactly at the end is not counted
        )
    assert list(aggs) == ["nps", "response_time_ms"]
    rt = aggs["response_time_ms"]
    assert (rt.count, rt.min, rt.max, rt.last, rt.unit) == (3, 100, 140, 100, "ms")
    assert rt.mean == pytest.approx(120)
    nps = aggs["nps"]
    assert (nps.count, nps.min, nps.max, nps.last) == (2, 30, 50, 50)
    assert nps.mean == pytest.approx(40)


def test_telemetry_timestamps_round_trip_as_utc(db_engine: Engine) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2025, 11, 17, 14, 0, 0, 123456, tzinfo=plus2)
    with session_scope(db_engine) as session:
        insert_events(session=session, workspace="ws", events=[event("k", 1, local, metadata={"source": "app"})])
    with Session(db_engine) as session:
        row = session.execute(select(TelemetryEvent)).scalars().one()
        assert row.timestamp == local
        assert row.timestamp.tzinfo is not None
        assert row.timestamp.utcoffset() == timedelta(0)
        assert row.ingested_at.tzinfo is not None
        assert row.meta == {"source": "app"}
        assert row.source == "app"  # taken from metadata.source
        assert row.account_id == ACCOUNT
        # A period given in another offset selects the same instant.
        aggs = kpi_aggregates(
            session=session,
            workspace="ws",
            account_id=ACCOUNT,
            start=datetime(2025, 11, 17, 12, tzinfo=UTC),
            end=datetime(2025, 11, 17, 7, 0, 1, tzinfo=timezone(timedelta(hours=-5))),
        )
        assert aggs["k"].count == 1


def test_telemetry_last_breaks_timestamp_ties_by_insert_order(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        insert_events(session=session, workspace="ws", events=[event("k", 1, T0), event("k", 2, T0)])
        insert_events(session=session, workspace="ws", events=[event("k", 3, T0)])
    with Session(db_engine) as session:
        aggs = kpi_aggregates(
            session=session, workspace="ws", account_id=ACCOUNT, start=T0, end=T0 + timedelta(seconds=1)
        )
    assert aggs["k"].last == 3
    assert aggs["k"].count == 3


def test_telemetry_no_samples_gives_no_aggregates(db_engine: Engine) -> None:
    with Session(db_engine) as session:
        assert kpi_aggregates(session=session, workspace="ws", account_id=ACCOUNT, start=T0, end=T0) == {}
        assert insert_events(session=session, workspace="ws", events=[]) == 0


def test_telemetry_bulk_insert_is_one_statement_per_batch(db_engine: Engine) -> None:
    """A batch of 1000 costs one INSERT statement, whatever its size (bench/telemetry.py measures the speed)."""
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        statements.append(statement)

    batches = [
        [event(f"kpi_{i % 7}", float(i), T0 + timedelta(seconds=i), metadata={"n": i}) for i in range(1000)]
        for _ in range(4)
    ]
    sqlalchemy_event.listen(db_engine, "before_cursor_execute", capture)
    try:
        for batch in batches:
            with session_scope(db_engine) as session:
                assert insert_events(session=session, workspace="ws", events=batch) == 1000
    finally:
        sqlalchemy_event.remove(db_engine, "before_cursor_execute", capture)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == len(batches), inserts[:2]
    with Session(db_engine) as session:
        assert session.execute(select(func.count()).select_from(TelemetryEvent)).scalar_one() == 4000


def test_telemetry_parse_single_event_and_batch() -> None:
    # The seed's example, with its "uuid" placeholder filled in.
    seed_event = {
        "accountId": ACCOUNT,
        "kpi": "response_time_ms",
        "value": 123,
        "timestamp": "2025-11-17T12:00:00Z",
        "metadata": {"source": "app"},
    }
    [one] = parse_telemetry_payload(seed_event)
    assert one.timestamp == T0
    assert one.value == 123.0
    assert one.source == "app"
    many = parse_telemetry_payload({"events": [seed_event] * 3})
    assert len(many) == 3


def test_telemetry_parse_refuses_nan_that_python_json_lets_through() -> None:
    # json.loads("NaN") gives float('nan'), which no schema bound rejects; the model must.
    payload = {"accountId": ACCOUNT, "kpi": "k", "value": float("nan"), "timestamp": "2025-11-17T12:00:00Z"}
    with pytest.raises(SchemaValidationError) as err:
        parse_telemetry_payload(payload)
    assert err.value.errors[0]["path"] == "/value"


def test_telemetry_parse_refuses_unknown_account_format() -> None:
    with pytest.raises(SchemaValidationError):
        parse_telemetry_payload(
            {"accountId": uuid.uuid4().hex, "kpi": "k", "value": 1, "timestamp": "2025-11-17T12:00:00Z"}
        )


def _plan_loops(plan: dict[str, Any]) -> Iterator[tuple[str, int]]:
    yield plan["Node Type"], int(plan.get("Actual Loops", 1))
    for child in plan.get("Plans", []):
        yield from _plan_loops(child)


@pytest.mark.postgres
@pytest.mark.parametrize("statistics", ["never_analyzed", "analyzed_before_the_burst"])
def test_telemetry_aggregates_stay_linear_on_postgres_with_stale_statistics(postgres_url: str, statistics: str) -> None:
    """A new account bursting into a table whose statistics do not know it: no plan node may loop per row.

    The query once joined the rows against a ``max(timestamp)`` subquery; with a small row estimate PostgreSQL
    chose a nested loop that re-ran the aggregate for every row (3 s at 2,000 rows, minutes at 10,000). The
    test reads the executed plan rather than the clock: each node may run at most once per KPI.
    """
    engine = make_engine(postgres_url)
    create_all(engine)
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    kpis = ("nps", "deal_conversion", "response_time_ms")
    try:
        if statistics == "analyzed_before_the_burst":
            with session_scope(engine) as session:
                insert_events(
                    session=session,
                    workspace="ws",
                    events=[event("nps", i, T0 + timedelta(seconds=i), account=OTHER) for i in range(2000)],
                )
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE telemetry_events")  # the statistics know only the other account
        for batch in range(3):
            with session_scope(engine) as session:
                insert_events(
                    session=session,
                    workspace="ws",
                    events=[
                        event(kpis[i % 3], float(i), T0 + timedelta(milliseconds=batch * 1000 + i)) for i in range(1000)
                    ],
                )
        sqlalchemy_event.listen(engine, "before_cursor_execute", capture)
        with Session(engine) as session:
            aggs = kpi_aggregates(
                session=session, workspace="ws", account_id=ACCOUNT, start=T0, end=T0 + timedelta(days=1)
            )
        sqlalchemy_event.remove(engine, "before_cursor_execute", capture)
        assert sorted(aggs) == sorted(kpis) and sum(a.count for a in aggs.values()) == 3000
        assert aggs["nps"].last == 999.0 and aggs["nps"].count == 1002  # the last batch's i = 999
        assert statements
        with engine.connect() as conn:
            for statement, parameters in statements:
                plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters).scalar_one()
                loops = dict(_plan_loops(plan[0]["Plan"]))
                worst = max(_plan_loops(plan[0]["Plan"]), key=lambda nl: nl[1])
                assert worst[1] <= len(kpis), (worst, loops)
    finally:
        engine.dispose()


def test_telemetry_event_ids_store_a_retry_once_in_one_statement(db_engine: Engine) -> None:
    batch = [event("k", float(i), T0 + timedelta(seconds=i), id=f"dev-{i}") for i in range(1000)]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sqlalchemy_event.listen(db_engine, "before_cursor_execute", count)
    try:
        with session_scope(db_engine) as session:
            assert store_batch(session=session, workspace="ws", events=batch) == StoredBatch(stored=1000, duplicates=0)
        inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
        assert len(inserts) == 1, inserts  # the whole batch, ids and all, is one statement
        with session_scope(db_engine) as session:
            again = store_batch(session=session, workspace="ws", events=[*batch[:10], event("k", 7, T0, id="new")])
        assert again == StoredBatch(stored=1, duplicates=10)
        with session_scope(db_engine) as session:
            # Ids are per workspace: another workspace's "dev-0" is another event.
            assert store_batch(session=session, workspace="ws2", events=batch[:1]).stored == 1
    finally:
        sqlalchemy_event.remove(db_engine, "before_cursor_execute", count)
    with Session(db_engine) as session:
        assert session.execute(select(func.count()).select_from(TelemetryEvent)).scalar_one() == 1002


def test_telemetry_idempotency_key_stores_a_batch_once(db_engine: Engine) -> None:
    batch = [event("k", 1, T0), event("k", 2, T0)]
    for _ in range(2):
        with session_scope(db_engine) as session:
            store_batch(session=session, workspace="ws", events=batch, idempotency_key="b-1", request_sha256="h1")
    with session_scope(db_engine) as session:
        replay = store_batch(session=session, workspace="ws", events=batch, idempotency_key="b-1", request_sha256="h1")
    assert replay == StoredBatch(stored=0, duplicates=2)
    with pytest.raises(IdempotencyKeyReused), session_scope(db_engine) as session:
        store_batch(session=session, workspace="ws", events=batch[:1], idempotency_key="b-1", request_sha256="h2")
    with session_scope(db_engine) as session:
        # Keys are per workspace too.
        other = store_batch(session=session, workspace="ws2", events=batch, idempotency_key="b-1", request_sha256="h2")
    assert other == StoredBatch(stored=2, duplicates=0)
    with Session(db_engine) as session:
        assert session.execute(select(func.count()).select_from(TelemetryEvent)).scalar_one() == 4


# Metadata the body models accept, of every kind the fast JSON encoder must write as json.dumps would.
ENCODING_METADATA: list[dict[str, Any]] = [
    {},
    {"source": "app", "seq": 7},
    {"s": 'é ü \u2028 \\ " \n 😀', "n": None, "t": True, "f": False},
    {"i": [0, -1, 2**63, -(2**64) - 1, 2**200], "d": [0.1, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308]},
    {"nested": {"a": 1, "b": 1.5}, "list": [1, "x", None]},
]


def _stored(engine: Engine, workspace: str) -> list[tuple[Any, Any]]:
    """(metadata as its JSON value, timestamp as the database holds it) of a workspace's rows, in insert order."""
    t = TelemetryEvent.__table__  # type: ignore[attr-defined]
    # The stored text of the JSON column (not its decoding by SQLAlchemy), the timestamp as the driver reads it.
    meta = cast(t.c.metadata, Text) if engine.dialect.name == "postgresql" else type_coerce(t.c.metadata, Text)
    with engine.connect() as conn:
        rows = conn.execute(
            select(meta, type_coerce(t.c.timestamp, Text) if engine.dialect.name == "sqlite" else t.c.timestamp)
            .where(t.c.workspace == workspace)
            .order_by(t.c.id)
        ).all()
    return [(json.loads(meta), ts) for meta, ts in rows]


def test_telemetry_fast_encoding_stores_what_sqlalchemy_would(db_engine: Engine) -> None:
    """The bulk insert's own encoders (pydantic-core JSON, one isoformat) store exactly what SQLAlchemy's per-row
    processing stores: the same timestamp (SQLite's text, PostgreSQL's timestamptz) and the same JSON value."""
    events = [
        event("k", float(i), at, metadata=meta)
        for i, (meta, at) in enumerate(
            zip(
                ENCODING_METADATA,
                [T0, T0 + timedelta(microseconds=1), datetime(1, 1, 1, tzinfo=UTC),
                 datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), T0 + timedelta(days=400, seconds=1)],
                strict=True,
            )
        )
    ]  # fmt: skip
    bulk = _bulk_insert(db_engine.dialect)
    assert bulk.metadata is _json_text  # the checked fast encoder was chosen, not the fallback
    with db_engine.begin() as conn:
        assert insert_events(connection=conn, workspace="fast", events=events) == len(events)
    table = TelemetryEvent.__table__  # type: ignore[attr-defined]
    with session_scope(db_engine) as session:  # SQLAlchemy's own per-row processing of the same rows
        session.execute(
            table.insert(),
            [
                {"workspace": "orm", "account_id": e.account_id, "kpi": e.kpi, "value": e.value, "unit": e.unit,
                 "source": e.source, "metadata": e.metadata, "timestamp": e.timestamp, "ingested_at": T0}
                for e in events
            ],
        )  # fmt: skip
    fast, orm = _stored(db_engine, "fast"), _stored(db_engine, "orm")
    assert fast == orm
    assert [m for m, _ in fast] == ENCODING_METADATA
    if db_engine.dialect.name == "sqlite":
        assert all(isinstance(ts, str) for _, ts in fast)  # compared as the stored text itself


def test_telemetry_fast_timestamp_encoder_defers_other_zones_to_the_column() -> None:
    from sqlalchemy import create_engine

    india = datetime(2025, 3, 30, 1, 30, 15, 500000, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    for url in ("sqlite://", "postgresql+psycopg://"):
        dialect = create_engine(url).dialect
        own = TelemetryEvent.__table__.c.timestamp.type.dialect_impl(dialect).bind_processor(dialect)  # type: ignore[attr-defined]
        encode = _bulk_insert(dialect).timestamp
        assert encode(india) == own(india) and repr(encode(india)) == repr(own(india))
        assert encode(T0) == own(T0) and repr(encode(T0)) == repr(own(T0))


def test_telemetry_bulk_insert_returns_no_rows(db_engine: Engine) -> None:
    """The executemany insert has no RETURNING: PostgreSQL's compiled single-row form would return each row's id,
    which the driver then fetches per row for nothing."""
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sqlalchemy_event.listen(db_engine, "before_cursor_execute", capture)
    try:
        with db_engine.begin() as conn:
            batch = [event("k", 1.0, T0, id=f"r-{i}") for i in range(3)]
            assert insert_events(connection=conn, workspace="ws", events=batch) == 3
            assert insert_events(connection=conn, workspace="ws", events=batch[:2]) == 0
    finally:
        sqlalchemy_event.remove(db_engine, "before_cursor_execute", capture)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 2 and not any("RETURNING" in s.upper() for s in inserts), inserts


def test_telemetry_store_batch_on_a_core_connection(db_engine: Engine) -> None:
    batch = [event("k", 1, T0), event("k", 2, T0, id="c-1")]
    for expected in (StoredBatch(stored=2, duplicates=0), StoredBatch(stored=0, duplicates=2)):
        with db_engine.begin() as conn:
            got = store_batch(connection=conn, workspace="ws", events=batch, idempotency_key="k1", request_sha256="h")
        assert got == expected
    with pytest.raises(IdempotencyKeyReused), db_engine.begin() as conn:
        store_batch(connection=conn, workspace="ws", events=batch, idempotency_key="k1", request_sha256="other")
    with db_engine.begin() as conn:  # without a key, the event id still stores the second delivery once
        assert store_batch(connection=conn, workspace="ws", events=batch) == StoredBatch(stored=1, duplicates=1)
    with pytest.raises(TypeError), Session(db_engine) as session, db_engine.begin() as conn:
        store_batch(session=session, connection=conn, workspace="ws", events=batch)
    with Session(db_engine) as session:
        assert session.execute(select(func.count()).select_from(TelemetryEvent)).scalar_one() == 3
