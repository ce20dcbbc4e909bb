"""Fan-out of events into webhook deliveries: one delivery per matching enabled endpoint, created once.

Fan-out runs inside the transaction that stores an event, so an event and its deliveries exist together or not
at all; starting the delivery workflows happens after the commit (:mod:`quantapilot.webhooks.starts`) and is
idempotent, so a caller retried after a crash between the two simply starts what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from quantapilot.db import utcnow
from quantapilot.events.record import EventRecord
from quantapilot.events.table import RunEvent
from quantapilot.webhooks.contracts import delivery_workflow_id, is_outbox_owner
from quantapilot.webhooks.deliveries import (
    EndpointRef,
    ensure_delivery,
    insert_outbox_deliveries,
    insert_workflow_deliveries,
)
from quantapilot.webhooks.endpoints import endpoint_matches, matching_endpoints, normalize_event_type
from quantapilot.webhooks.starts import PendingDelivery
from quantapilot.webhooks.tables import DeliveryStatus, WebhookDelivery, new_id

log = logging.getLogger("quantapilot.webhooks")

_EVENTS: Table = RunEvent.__table__  # type: ignore[attr-defined]
# The data of a run's run.started (the only event carrying repo_url): one column through the run_id index, no
# ORM row; built once, as it runs for each later event of a repository run an endpoint filters by repository.
_RUN_STARTED_DATA = (
    select(_EVENTS.c.data)
    .where(_EVENTS.c.run_id == bindparam("run_id"))
    .where(_EVENTS.c.type == "run.started")
    .limit(1)
)


def run_repository(db: Session | Connection, event: EventRecord) -> str | None:
    """The run's repository URL: in run.started's data, the event's own for run.started itself.

    Args:
        db: The session or connection of the transaction that stores the event.
        event: The event.
    """
    value = event.data.get("repo_url")
    if isinstance(value, str):
        return value
    data = db.execute(_RUN_STARTED_DATA, {"run_id": event.run_id}).scalar()
    if isinstance(data, dict) and isinstance(data.get("repo_url"), str):
        return str(data["repo_url"])
    return None


def fan_out(
    session: Session,
    *,
    workspace: str,
    event_type: str,
    event_id: str,
    run_id: str | None = None,
    run_kind: str | None = None,
    repository: str | None = None,
    payload: dict[str, Any] | None = None,
    outbox: bool = False,
) -> int:
    """Create the deliveries of one event for the matching enabled endpoints of its workspace (flush only).

    Args:
        session: The session of the transaction that stores the event.
        workspace: The event's workspace; only its endpoints receive the event.
        event_type: Dotted type.
        event_id: Event id (a delivery is unique per endpoint and event).
        run_id: The event's run, if any.
        run_kind: The run's kind, for run-kind filters.
        repository: The run's repository, for repository filters.
        payload: The envelope to store with each delivery for events that are not in ``run_events``.
        outbox: Put the deliveries in the outbox, due now (:mod:`quantapilot.webhooks.outbox`), instead of
            handing each to its own workflow.

    Returns:
        How many deliveries this call created.
    """
    try:
        endpoints = matching_endpoints(
            session=session, workspace=workspace, event_type=event_type, run_kind=run_kind, repository=repository
        )
    except ValueError:
        # A type outside the published list cannot be subscribed to; the run's log still has it.
        log.warning("event type %s is not deliverable by webhook", event_type[:64])
        return 0
    return _create_deliveries(
        session, endpoints, event_type=event_type, event_id=event_id, run_id=run_id, payload=payload, outbox=outbox
    )


def _create_deliveries(
    session: Session,
    endpoints: Sequence[EndpointRef],
    *,
    event_type: str,
    event_id: str,
    run_id: str | None,
    payload: dict[str, Any] | None,
    outbox: bool,
) -> int:
    """Create the deliveries of one event to endpoints that match it (see :func:`fan_out`)."""
    if outbox:
        now = utcnow()
        # One statement for all of them: a workspace's few dozen endpoints cost one round trip, not three each.
        return insert_outbox_deliveries(
            session=session,
            rows=[(e, new_id("wd_"), now) for e in endpoints],
            event_id=event_id,
            event_type=event_type,
            run_id=run_id,
            payload=payload,
        )
    # One statement for the new deliveries, each owned by its first workflow from the start.
    created, existing = insert_workflow_deliveries(
        session=session, endpoints=endpoints, event_id=event_id, event_type=event_type, run_id=run_id, payload=payload
    )
    # A delivery that was there already (a row kept without an owner, say) gets its first workflow if it has none.
    for endpoint in existing:
        delivery, _new = ensure_delivery(
            session=session, endpoint=endpoint, event_id=event_id, event_type=event_type, run_id=run_id
        )
        if delivery.workflow_id is None:
            delivery.workflow_id = delivery_workflow_id(delivery.id)
            delivery.payload = payload
            session.add(delivery)
    session.flush()
    return created


def fan_out_run_event(session: Session, event: EventRecord, *, outbox: bool = False) -> int:
    """Create the deliveries of a run event; the repository is looked up only when a filter needs it.

    Args:
        session: The session of the transaction that stores the event.
        event: The event.
        outbox: Put the deliveries in the outbox (see :func:`fan_out`).
    """
    kind = event.run_kind.value
    # Repository filters are rare: matching by type alone (no run kind: the kind and repository filters pass)
    # tells whether any endpoint wants the event at all and whether the run's repository must be looked up.
    candidates = matching_endpoints(session=session, workspace=event.workspace, event_type=event.type)
    if not candidates:
        return 0
    needs_repository = kind == "repository" and any(e.repositories for e in candidates)
    repository = run_repository(session, event) if needs_repository else None
    # The candidates already passed the type filter and are the workspace's enabled endpoints: the run-kind and
    # repository filters are applied to them here (what fan_out's own matching_endpoints would do), instead of
    # loading the same endpoints a second time for every stored event.
    dotted = normalize_event_type(event.type)
    endpoints = [e for e in candidates if endpoint_matches(e, event_type=dotted, run_kind=kind, repository=repository)]
    return _create_deliveries(
        session, endpoints, event_type=event.type, event_id=event.id, run_id=event.run_id, payload=None, outbox=outbox
    )


def pending_deliveries(session: Session, event_id: str) -> list[PendingDelivery]:
    """Deliveries of an event still waiting for their workflows (which may or may not exist yet).

    Deliveries in the outbox are left out: the dispatcher makes them, no workflow may.
    """
    # Two columns, not whole rows: this runs after every stored event, and in the outbox mode finds nothing.
    rows = session.exec(
        select(col(WebhookDelivery.id), col(WebhookDelivery.workflow_id))
        .where(WebhookDelivery.event_id == event_id)
        .where(WebhookDelivery.status == DeliveryStatus.PENDING.value)
        .where(col(WebhookDelivery.next_attempt_at).is_(None))
        .order_by(col(WebhookDelivery.id))
    )
    return [
        PendingDelivery(delivery_id, workflow_id)
        for delivery_id, workflow_id in rows
        if workflow_id and not is_outbox_owner(workflow_id)
    ]
