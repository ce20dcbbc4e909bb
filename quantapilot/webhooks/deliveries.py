"""Delivery rows and the delivery log: one delivery per event and endpoint, created once; reading deliveries.

How a delivery moves between its statuses is :mod:`quantapilot.webhooks.delivery`; this module creates rows
and reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.webhooks.endpoints import get_endpoint, normalize_event_type
from quantapilot.webhooks.tables import (
    DELIVERIES_TABLE,
    DeliveryResult,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookNotFoundError,
    new_id,
    workspace_row,
)


class EndpointRef(Protocol):
    """What a new delivery takes from its endpoint (a :class:`WebhookEndpoint`, or fan-out's lighter row)."""

    @property
    def id(self) -> str:
        """The endpoint's id."""
        ...

    @property
    def workspace(self) -> str:
        """The endpoint's workspace, copied onto its deliveries."""
        ...


def _insert_fn(session: Session) -> Any:
    """The dialect's ``insert`` (both have ``on_conflict_do_nothing``)."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _pending_row(
    endpoint: EndpointRef, *, delivery_id: str, event_id: str, dotted: str, run_id: str | None, at: datetime
) -> dict[str, Any]:
    """The columns of a new delivery of an event (of the dotted type) to an endpoint: pending, not yet attempted."""
    return {
        "id": delivery_id,
        "endpoint_id": endpoint.id,
        "workspace": endpoint.workspace,
        "event_id": event_id,
        "event_type": dotted,
        "run_id": run_id,
        "status": DeliveryStatus.PENDING.value,
        "attempts": 0,
        "created_at": at,
    }


def ensure_delivery(
    *,
    session: Session,
    endpoint: EndpointRef,
    event_id: str,
    event_type: str,
    run_id: str | None = None,
    now: datetime | None = None,
) -> tuple[WebhookDelivery, bool]:
    """Create the delivery of an event to an endpoint unless it exists (safe under concurrency and retries).

    Args:
        session: Database session.
        endpoint: The endpoint.
        event_id: The event id.
        event_type: The event type (dotted or alias).
        run_id: The event's run, if any.
        now: Creation time (tests).

    Returns:
        The delivery and whether this call created it.
    """
    values = _pending_row(
        endpoint,
        delivery_id=new_id("wd_"),
        event_id=event_id,
        dotted=normalize_event_type(event_type),
        run_id=run_id,
        at=now or utcnow(),
    )
    # INSERT ... ON CONFLICT DO NOTHING: a second worker racing on the same event neither fails nor duplicates,
    # and the transaction stays usable (no IntegrityError to recover from).
    statement = (
        _insert_fn(session)(WebhookDelivery)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
        .returning(col(WebhookDelivery.id))
    )
    # RETURNING yields a row only when this statement inserted (rowcount is not reliable across drivers).
    created = session.execute(statement).scalar_one_or_none() is not None
    delivery = session.scalars(
        select(WebhookDelivery)
        .where(col(WebhookDelivery.endpoint_id) == endpoint.id)
        .where(col(WebhookDelivery.event_id) == event_id)
        .execution_options(populate_existing=True)
    ).one()
    return delivery, created


def insert_outbox_deliveries(
    *,
    session: Session,
    rows: Sequence[tuple[EndpointRef, str, datetime]],
    event_id: str,
    event_type: str,
    run_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    """Create an event's outbox deliveries in one statement; a delivery that exists already is left alone.

    Args:
        session: Database session.
        rows: ``(endpoint, new delivery id, first due time)`` per endpoint; the owner is the outbox
            (:func:`~quantapilot.webhooks.contracts.outbox_owner`).
        event_id: The event id.
        event_type: The event type (dotted or alias).
        run_id: The event's run, if any.
        payload: The envelope to keep with each delivery for events that are not in ``run_events``.

    Returns:
        How many deliveries this call created.
    """
    from quantapilot.webhooks.contracts import outbox_owner

    if not rows:
        return 0
    dotted = normalize_event_type(event_type)
    created_at = utcnow()
    values = [
        {
            **_pending_row(
                endpoint, delivery_id=delivery_id, event_id=event_id, dotted=dotted, run_id=run_id, at=created_at
            ),
            "payload": payload,
            "workflow_id": outbox_owner(delivery_id),
            "next_attempt_at": due,
            "schedule_base": 0,
        }
        for endpoint, delivery_id, due in rows
    ]
    # The rows go as the parameters of one executemany (batched into multi-row INSERTs by the driver layer),
    # not inlined with ``.values(rows)``: a statement with inlined rows is compiled afresh on every call (its
    # shape depends on the row count), which cost more than the insert itself on every stored event.
    statement = (
        _insert_fn(session)(DELIVERIES_TABLE)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
        .returning(DELIVERIES_TABLE.c.id)
    )
    return len(session.execute(statement, values).all())


def insert_workflow_deliveries(
    *,
    session: Session,
    endpoints: Sequence[EndpointRef],
    event_id: str,
    event_type: str,
    run_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> tuple[int, list[EndpointRef]]:
    """Create an event's deliveries for delivery workflows in one statement, each owned by its first workflow.

    The rows are those :func:`ensure_delivery` creates, with ``workflow_id``
    (:func:`~quantapilot.webhooks.contracts.delivery_workflow_id`) and ``payload`` already set; a delivery that
    exists already is left alone and its endpoint returned, for the caller to look at.

    Args:
        session: Database session.
        endpoints: The endpoints to deliver to.
        event_id: The event id.
        event_type: The event type (dotted or alias).
        run_id: The event's run, if any.
        payload: The envelope to keep with each delivery for events that are not in ``run_events``.

    Returns:
        How many deliveries this call created, and the endpoints that had one already.
    """
    from quantapilot.webhooks.contracts import delivery_workflow_id

    if not endpoints:
        return 0, []
    dotted = normalize_event_type(event_type)
    created_at = utcnow()
    # None is left out rather than written: the column stays SQL NULL, as when ensure_delivery's row is given no
    # payload (the JSON type would write None as JSON ``null``).
    extra: dict[str, Any] = {} if payload is None else {"payload": payload}
    values = []
    for endpoint in endpoints:
        delivery_id = new_id("wd_")
        row = _pending_row(
            endpoint, delivery_id=delivery_id, event_id=event_id, dotted=dotted, run_id=run_id, at=created_at
        )
        values.append({**row, **extra, "workflow_id": delivery_workflow_id(delivery_id)})
    statement = (
        _insert_fn(session)(DELIVERIES_TABLE)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
        .returning(DELIVERIES_TABLE.c.endpoint_id)
    )
    created = set(session.execute(statement, values).scalars())
    return len(created), [e for e in endpoints if e.id not in created]


def delivery_by_id(delivery_id: str, *, session: Session) -> WebhookDelivery:
    """Return a delivery by id alone (the worker's side; API callers use :func:`get_delivery`).

    Raises:
        WebhookNotFoundError: If it does not exist.
    """
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise WebhookNotFoundError("webhook delivery")
    return delivery


def get_delivery(delivery_id: str, *, session: Session, workspace: str) -> WebhookDelivery:
    """Return a delivery of the workspace.

    Raises:
        WebhookNotFoundError: If it does not exist or belongs to another workspace.
    """
    return workspace_row(session, WebhookDelivery, delivery_id, workspace=workspace, what="webhook delivery")


def list_deliveries(
    endpoint_id: str, *, session: Session, workspace: str, limit: int = 100, status: DeliveryStatus | None = None
) -> list[WebhookDelivery]:
    """List an endpoint's deliveries, newest first.

    Raises:
        WebhookNotFoundError: If the endpoint does not exist or belongs to another workspace.
    """
    get_endpoint(endpoint_id, session=session, workspace=workspace)
    query = (
        select(WebhookDelivery)
        .where(col(WebhookDelivery.endpoint_id) == endpoint_id)
        .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
        .limit(max(1, min(limit, 1000)))
    )
    if status is not None:
        query = query.where(col(WebhookDelivery.status) == status.value)
    return list(session.scalars(query))


def list_attempts(delivery_id: str, *, session: Session, workspace: str) -> list[WebhookAttempt]:
    """List a delivery's attempts in order.

    Raises:
        WebhookNotFoundError: If the delivery does not exist or belongs to another workspace.
    """
    get_delivery(delivery_id, session=session, workspace=workspace)
    query = (
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id) == delivery_id)
        .order_by(col(WebhookAttempt.attempt))
    )
    return list(session.scalars(query))


def attempts_by_delivery(session: Session, ids: Sequence[str]) -> dict[str, list[WebhookAttempt]]:
    """The attempts of several deliveries in one query, in order, keyed by delivery id (every id present).

    The caller has already checked that the deliveries belong to its workspace.
    """
    grouped: dict[str, list[WebhookAttempt]] = {i: [] for i in ids}
    if not ids:
        return grouped
    rows = session.scalars(
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id).in_(list(ids)))
        .order_by(col(WebhookAttempt.delivery_id), col(WebhookAttempt.attempt))
    )
    for row in rows:
        grouped[row.delivery_id].append(row)
    return grouped


def record_attempt(
    delivery_id: str,
    *,
    session: Session,
    attempt: int,
    result: DeliveryResult,
    now: datetime | None = None,
) -> WebhookAttempt:
    """Record one attempt and copy its result onto the delivery.

    Recording the same attempt number again (an activity retried after a worker crash) overwrites that row
    instead of adding one. The delivery's status is not changed here: :mod:`quantapilot.webhooks.delivery` moves it.

    Args:
        delivery_id: The delivery.
        session: Database session.
        attempt: Attempt number, from 1.
        result: What :func:`~quantapilot.webhooks.sender.post_event` returned.
        now: Time of the attempt (tests).

    Returns:
        The attempt row.

    Raises:
        WebhookNotFoundError: If the delivery does not exist.
    """
    delivery = delivery_by_id(delivery_id, session=session)
    at = now or utcnow()
    row = session.scalars(
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id) == delivery_id)
        .where(col(WebhookAttempt.attempt) == attempt)
    ).one_or_none()
    if row is None:
        row = WebhookAttempt(delivery_id=delivery_id, attempt=attempt, outcome=result.outcome.value)
    row.outcome = result.outcome.value
    row.status_code = result.status_code
    row.latency_ms = result.latency_ms
    row.error = result.error
    row.at = at
    session.add(row)
    delivery.attempts = max(delivery.attempts, attempt)
    delivery.last_status_code = result.status_code
    delivery.last_latency_ms = result.latency_ms
    delivery.last_error = result.error
    session.add(delivery)
    session.flush()
    return row


def record_own_event(
    endpoint: WebhookEndpoint,
    *,
    session: Session,
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
    now: datetime | None = None,
) -> WebhookDelivery:
    """Keep an event about an endpoint in that endpoint's own delivery log, without sending it.

    Used for ``webhook.endpoint_disabled``: the endpoint it is about is disabled, so the event cannot reach it,
    and the workspace may have no other endpoint subscribed to it. The row (status ``disabled``, no attempts,
    the envelope in ``payload``) is the durable record operators find with the endpoint's deliveries; a
    redelivery after re-enabling sends it like any other. Recording the same event again changes nothing.

    Args:
        endpoint: The endpoint the event is about.
        session: Database session (the transaction that disabled the endpoint).
        event_id: The event id.
        event_type: The event type (dotted or alias).
        payload: The event's envelope, as delivered to subscribers.
        now: Time of the event (tests).

    Returns:
        The delivery row.
    """
    delivery, created = ensure_delivery(
        session=session, endpoint=endpoint, event_id=event_id, event_type=event_type, now=now
    )
    if created:
        delivery.status = DeliveryStatus.DISABLED.value
        delivery.payload = payload
        session.add(delivery)
        session.flush()
    return delivery
