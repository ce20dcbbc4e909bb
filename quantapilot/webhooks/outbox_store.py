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

**Handing deliveries straight to this process's dispatcher.** Given a :class:`Lease` (from
:meth:`quantapilot.webhooks.dispatcher.Dispatcher.lease`), the store writes the claim itself: the deliveries of
healthy endpoints (not failing, not throttled, not saturated in that dispatcher, with signing secrets that all
open) are inserted already claimed under the lease's token until its end, exactly the columns a claim
(:func:`~quantapilot.webhooks.outbox.claim_due`) would write, and returned with what their sends need (URL,
secrets; the envelope is the event's own), so the dispatcher sends them without a claim query. The claim is in
the same transaction as the event, so it is durable before anything is sent, and the lease is the crash cover: if
the process dies before sending (or the dispatcher never adopts them), the rows are claimed by any dispatcher once
the lease runs out, as any claim left by a dead dispatcher; while it holds, no other dispatcher can take them (its
claim's WHERE wants a free or run-out claim), and recording is fenced by the token like any claim's. Every other
delivery is inserted unclaimed and due, for the claim loop (which decides throttles, missing secrets, failing
endpoints through the state machine, as before).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from quantapilot.db import one_writer, utcnow
from quantapilot.events.envelope import aware
from quantapilot.events.record import EventRecord, values_of
from quantapilot.events.table import RunEvent
from quantapilot.secretbox import KeyRing, SecretDecryptError
from quantapilot.webhooks.contracts import outbox_owner
from quantapilot.webhooks.endpoints import endpoint_matches, normalize_event_type
from quantapilot.webhooks.fanout import run_repository
from quantapilot.webhooks.signing_secrets import reveal_secret
from quantapilot.webhooks.tables import DELIVERIES_TABLE, ENDPOINTS_TABLE, SECRETS_TABLE, DeliveryStatus, new_id


@dataclass(frozen=True)
class Lease:
    """A claim the store writes on the deliveries it hands to this process's dispatcher (see the module).

    Attributes:
        token: The claim token (fresh per store).
        until: The claim's end (``claimed_until``).
        started: ``time.monotonic()`` when the lease was made, before the store: the dispatcher's deadline.
        keyring: Opens the endpoints' signing secrets.
        limit: At most this many deliveries taken (the dispatcher's free slots).
        exclude: Endpoints the dispatcher already has enough in flight for (their deliveries are left unclaimed).
    """

    token: str
    until: datetime
    started: float
    keyring: KeyRing
    limit: int
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class HandedDelivery:
    """A delivery stored already claimed under a :class:`Lease`: what its first attempt sends."""

    delivery_id: str
    endpoint_id: str
    url: str
    secrets: list[str]


@dataclass(frozen=True)
class StoredEvent:
    """What :func:`store_outbox_event` stored: how many deliveries, those handed over claimed, the others' endpoints.

    Attributes:
        created: How many deliveries were stored.
        handed: Those stored claimed under the lease.
        left: With a lease, the endpoints of the deliveries stored unclaimed (for the claim loop).
    """

    created: int
    handed: list[HandedDelivery] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


class _Endpoint(NamedTuple):
    """An enabled endpoint of the workspace as the store reads it: its filters, and what a handed send needs."""

    id: str
    workspace: str
    event_types: list[str]
    run_kinds: list[str]
    repositories: list[str]
    url: str
    failing_since: datetime | None
    throttled_until: datetime | None


class _Secret(NamedTuple):
    id: int | None
    endpoint_id: str
    secret: str
    expires_at: datetime | None


_EVENTS: Table = RunEvent.__table__  # type: ignore[attr-defined]
_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

# dialect -> statement, built once.
_INSERT_EVENT = {
    name: insert(_EVENTS).on_conflict_do_nothing(index_elements=["id"]).returning(_EVENTS.c.id)
    for name, insert in _INSERTS.items()
}
_INSERT_DELIVERIES = {
    name: insert(DELIVERIES_TABLE)
    .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
    .returning(DELIVERIES_TABLE.c.id)
    for name, insert in _INSERTS.items()
}
_E = ENDPOINTS_TABLE.c
# The workspace's enabled endpoints, oldest first (what fan-out matches), with what a handed send needs.
_ENABLED = (
    select(
        _E.id, _E.workspace, _E.event_types, _E.run_kinds, _E.repositories, _E.url, _E.failing_since, _E.throttled_until
    )
    .where(_E.workspace == bindparam("workspace"), _E.enabled.is_(True))
    .order_by(_E.created_at, _E.id)
)
_S = SECRETS_TABLE.c
# The same endpoints each with its signing secrets, newest first (the order they sign in, as active_secrets_of),
# for a store handing deliveries over: one statement, not a second one for the secrets (an endpoint without any
# comes once, with NULLs).
_ENABLED_WITH_SECRETS = (
    select(*_ENABLED.selected_columns, _S.id.label("secret_id"), _S.secret, _S.expires_at)
    .select_from(ENDPOINTS_TABLE.outerjoin(SECRETS_TABLE, _S.endpoint_id == _E.id))
    .where(_E.workspace == bindparam("workspace"), _E.enabled.is_(True))
    .order_by(_E.created_at, _E.id, _S.created_at.desc(), _S.id.desc())
)
_EVENT_EXISTS = select(_EVENTS.c.id).where(_EVENTS.c.id == bindparam("id"))


def store_outbox_event(engine: Engine, event: EventRecord, *, lease: Lease | None = None) -> StoredEvent | None:
    """Store a run event and its outbox deliveries in one transaction; a redo (same event id) adds nothing.

    Args:
        engine: The service database.
        event: The event.
        lease: Hand the deliveries of healthy endpoints to this process's dispatcher, claimed under it (see the
            module); None: every delivery is left for the claim loop.

    Returns:
        What was stored (no delivery when no endpoint wants the event), or None when the event was stored already
        (a redo, or a concurrent attempt of the same recording that committed first): nothing was added.

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
            endpoints, secrets = _matching(conn, event, dotted, with_secrets=lease is not None)
            if not endpoints:
                return StoredEvent(0)
            handed = _handed(endpoints, secrets, lease) if lease is not None else {}
            rows = _delivery_rows(event, dotted, endpoints, handed, lease)
            created = {row.id for row in conn.execute(_INSERT_DELIVERIES[dialect], rows)}
            # Only what this statement inserted is handed over (RETURNING; a delivery there already is not ours).
            mine = [d for row in rows if row["id"] in created and (d := handed.get(row["endpoint_id"])) is not None]
            left = [row["endpoint_id"] for row in rows if row["id"] in created and row["endpoint_id"] not in handed]
            return StoredEvent(len(created), mine, left if lease is not None else [])
    except IntegrityError:
        # Another event holds the seq (raise), or a concurrent attempt of the same recording holds both the id and
        # the seq and PostgreSQL met the seq's index first (it committed: nothing more to add).
        with engine.connect() as conn:
            if conn.execute(_EVENT_EXISTS, {"id": event.id}).first() is None:
                raise
        return None


def _matching(
    conn: Connection, event: EventRecord, dotted: str, *, with_secrets: bool
) -> tuple[list[_Endpoint], dict[str, list[_Secret]]]:
    """The enabled endpoints of the event's workspace that subscribe to it (what fan_out_run_event delivers to).

    Returns:
        The endpoints, oldest first, and with ``with_secrets`` their secret rows, newest first.
    """
    secrets: dict[str, list[_Secret]] = {}
    if with_secrets:
        found: dict[str, _Endpoint] = {}
        for row in conn.execute(_ENABLED_WITH_SECRETS, {"workspace": event.workspace}):
            endpoint = found.get(row.id)
            if endpoint is None:
                endpoint = found[row.id] = _Endpoint._make(row[:8])
            if row.secret_id is not None:
                secrets.setdefault(row.id, []).append(_Secret(row.secret_id, row.id, row.secret, row.expires_at))
        rows = list(found.values())
    else:
        rows = list(map(_Endpoint._make, conn.execute(_ENABLED, {"workspace": event.workspace})))
    candidates = [e for e in rows if endpoint_matches(e, event_type=dotted, run_kind=None, repository=None)]
    if not candidates:
        return [], secrets
    kind = event.run_kind.value
    # Repository filters are rare: the run's repository is looked up only when one of the candidates has one.
    needs_repository = kind == "repository" and any(e.repositories for e in candidates)
    repository = run_repository(conn, event) if needs_repository else None
    matched = [e for e in candidates if endpoint_matches(e, event_type=dotted, run_kind=kind, repository=repository)]
    return matched, secrets


def _handed(
    endpoints: list[_Endpoint], stored_secrets: dict[str, list[_Secret]], lease: Lease
) -> dict[str, HandedDelivery]:
    """Endpoint id -> the delivery handed over for it: the healthy endpoints whose secrets all open.

    Healthy is exactly when :func:`~quantapilot.webhooks.outbox.claim_due` would prepare the attempt itself (and
    claim it among healthy endpoints): no failing streak, not throttled now, signing secrets present and opened.
    """
    now = utcnow()
    healthy = [
        e
        for e in endpoints
        if e.failing_since is None
        and (e.throttled_until is None or aware(e.throttled_until) <= now)
        and e.id not in lease.exclude
    ][: lease.limit]
    handed: dict[str, HandedDelivery] = {}
    for endpoint in healthy:
        rows = [r for r in stored_secrets.get(endpoint.id, []) if r.expires_at is None or aware(r.expires_at) > now]
        try:
            opened = [reveal_secret(row, keyring=lease.keyring) for row in rows]
        except SecretDecryptError:
            continue  # the claim loop's prepare_attempt decides (fails it, disables the endpoint)
        if opened:
            handed[endpoint.id] = HandedDelivery(new_id("wd_"), endpoint.id, endpoint.url, opened)
    return handed


def _delivery_rows(
    event: EventRecord,
    dotted: str,
    endpoints: list[_Endpoint],
    handed: dict[str, HandedDelivery],
    lease: Lease | None,
) -> list[dict[str, Any]]:
    """The new deliveries' columns: pending, due now, owned by the outbox (as ``insert_outbox_deliveries``).

    A handed delivery is also claimed: the token and the lease's end, what a claim writes.
    """
    now = utcnow()
    rows = []
    for endpoint in endpoints:
        mine = handed.get(endpoint.id)
        delivery_id = mine.delivery_id if mine is not None else new_id("wd_")
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
                "claim_token": lease.token if mine is not None and lease is not None else None,
                "claimed_until": lease.until if mine is not None and lease is not None else None,
            }
        )
    return rows
