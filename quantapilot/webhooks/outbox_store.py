"""Storing a run event with its outbox deliveries: one Core connection, one transaction, statements built once.

What ``record_event`` writes in the outbox mode (:mod:`quantapilot.webhooks.outbox`): the ``run_events`` row and
one due delivery per enabled endpoint of the event's workspace that subscribes to it, committed together or not at
all. It is the same as :func:`quantapilot.events.log.add_event` followed by
:func:`quantapilot.webhooks.fanout.fan_out_run_event` on an ORM session, written with Core statements on one
connection instead: no session, no identity map, no unit of work, no statement built per call (a stored event is
on the path of every delivery, and the ORM's per-call cost was about half of it).

- The event goes in with ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id``: a redo with the same event id
  inserts nothing (and so adds no delivery); only the primary key is the conflict target, so a different event
  holding the same ``(run_id, seq)`` raises and the transaction, deliveries and all, rolls back.
- The deliveries go in with one executemany ``INSERT ... ON CONFLICT (endpoint_id, event_id) DO NOTHING``: the
  unique constraint, not this code, makes a delivery exist at most once per endpoint and event.
- The endpoints are read inside the same transaction, so an endpoint created, changed or disabled by a transaction
  that committed before this one counts for this event; one that commits later, for the next.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from quantapilot.db import one_writer, utcnow
from quantapilot.events.record import EventRecord, values_of
from quantapilot.events.table import RunEvent
from quantapilot.webhooks.contracts import outbox_owner
from quantapilot.webhooks.endpoints import ENABLED_IN_WORKSPACE, EndpointMatch, endpoint_matches, normalize_event_type
from quantapilot.webhooks.fanout import run_repository
from quantapilot.webhooks.tables import DELIVERIES_TABLE, DeliveryStatus, new_id

_EVENTS: Table = RunEvent.__table__  # type: ignore[attr-defined]
_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

# dialect -> statement, built once.
_INSERT_EVENT = {
    name: insert(_EVENTS).on_conflict_do_nothing(index_elements=["id"]).returning(_EVENTS.c.id)
    for name, insert in _INSERTS.items()
}
_INSERT_DELIVERIES = {
    name: insert(DELIVERIES_TABLE).on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
    for name, insert in _INSERTS.items()
}
_EVENT_EXISTS = select(_EVENTS.c.id).where(_EVENTS.c.id == bindparam("id"))


def store_outbox_event(engine: Engine, event: EventRecord) -> int | None:
    """Store a run event and its outbox deliveries in one transaction; a redo (same event id) adds nothing.

    Args:
        engine: The service database.
        event: The event.

    Returns:
        How many deliveries were created (0 when no endpoint wants the event), or None when the event was stored
        already (a redo, or a concurrent attempt of the same recording that committed first): nothing was added.

    Raises:
        IntegrityError: Another event holds the same ``(run_id, seq)``: the workflow's history disagrees with the
            log, which must never happen silently. Nothing of this call is stored.
        ValueError: The event's type is not a known one.
    """
    dotted = normalize_event_type(event.type)
    dialect = engine.dialect.name
    try:
        # SQLite: behind this process's other writers (the dispatcher's claims and records), not in its busy
        # handler.
        with one_writer(engine), engine.begin() as conn:
            if conn.execute(_INSERT_EVENT[dialect], values_of(event)).first() is None:
                return None
            endpoints = _matching(conn, event, dotted)
            if endpoints:
                conn.execute(_INSERT_DELIVERIES[dialect], _delivery_rows(event, dotted, endpoints))
            return len(endpoints)
    except IntegrityError:
        # Another event holds the seq (raise), or a concurrent attempt of the same recording holds both the id and
        # the seq and PostgreSQL met the seq's index first (it committed: nothing more to add).
        with engine.connect() as conn:
            if conn.execute(_EVENT_EXISTS, {"id": event.id}).first() is None:
                raise
        return None


def _matching(conn: Connection, event: EventRecord, dotted: str) -> list[EndpointMatch]:
    """The enabled endpoints of the event's workspace that subscribe to it (what fan_out_run_event delivers to)."""
    candidates = [
        endpoint
        for endpoint in map(EndpointMatch._make, conn.execute(ENABLED_IN_WORKSPACE, {"workspace": event.workspace}))
        if endpoint_matches(endpoint, event_type=dotted, run_kind=None, repository=None)
    ]
    if not candidates:
        return []
    kind = event.run_kind.value
    # Repository filters are rare: the run's repository is looked up only when one of the candidates has one.
    needs_repository = kind == "repository" and any(e.repositories for e in candidates)
    repository = run_repository(conn, event) if needs_repository else None
    return [e for e in candidates if endpoint_matches(e, event_type=dotted, run_kind=kind, repository=repository)]


def _delivery_rows(event: EventRecord, dotted: str, endpoints: list[EndpointMatch]) -> list[dict[str, Any]]:
    """The new deliveries' columns: pending, due now, owned by the outbox (as ``insert_outbox_deliveries``)."""
    now = utcnow()
    rows = []
    for endpoint in endpoints:
        delivery_id = new_id("wd_")
        rows.append(
            {
                "id": delivery_id,
                "endpoint_id": endpoint.id,
                "workspace": endpoint.workspace,
                "event_id": event.id,
                "event_type": dotted,
                "run_id": event.run_id,
                "status": DeliveryStatus.PENDING.value,
                "attempts": 0,
                "created_at": now,
                "payload": None,
                "workflow_id": outbox_owner(delivery_id),
                "next_attempt_at": now,
                "schedule_base": 0,
            }
        )
    return rows
