"""Redelivery: re-send one delivery, or every delivery of an endpoint's time window that did not arrive.

:func:`redeliver` puts one delivery back to pending under a fresh owner. :func:`recover` (Svix's "recover") is many
redeliveries at once: each delivery of the endpoint whose event was created in ``[since, until)`` and that is
settled without having arrived (``failed``, ``gone`` or ``disabled``) goes back to pending under a fresh workflow,
in one transaction; the caller starts the workflows after the commit
(:func:`quantapilot.webhooks.starts.start_redeliveries`). Delivered and pending deliveries are left alone. A
superseded workflow that wakes up later stops without sending, as with a single redelivery, so two recoveries
racing on the same rows send each at most once more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.webhooks.contracts import is_outbox_owner
from quantapilot.webhooks.deliveries import get_delivery
from quantapilot.webhooks.endpoints import get_endpoint
from quantapilot.webhooks.tables import DeliveryStatus, WebhookDelivery, WebhookEndpoint

#: The statuses of deliveries that settled without arriving: what a recovery re-sends.
RECOVERABLE: Final = (DeliveryStatus.FAILED.value, DeliveryStatus.GONE.value, DeliveryStatus.DISABLED.value)
#: Deliveries one recovery re-sends at most (oldest first); the answer says when more are left.
MAX_RECOVER: Final = 1000


class EndpointDisabledError(Exception):
    """A redelivery asked for while the delivery's endpoint is disabled (enable it first)."""


@dataclass(frozen=True)
class Redelivery:
    """A delivery handed to a fresh workflow: start ``workflow_id`` after the commit, cancel the previous one.

    Attributes:
        delivery: The delivery row, pending again.
        previous_workflow_id: The workflow that owned it before (it stops without sending if it wakes up).
        workflow_id: The new owner.
        first_attempt: Attempt number the new workflow counts from (attempts keep counting, so the log shows
            the history).
    """

    delivery: WebhookDelivery
    previous_workflow_id: str | None
    workflow_id: str
    first_attempt: int


def redeliver(delivery_id: str, *, session: Session, workspace: str, workflow_id: str) -> Redelivery:
    """Put a delivery back to pending, owned by a new workflow, so it is sent again (same event id).

    Args:
        delivery_id: The delivery.
        session: Database session.
        workspace: The caller's workspace.
        workflow_id: The fresh workflow's id (:func:`~quantapilot.webhooks.contracts.redelivery_workflow_id`),
            or :func:`~quantapilot.webhooks.contracts.outbox_owner` to hand it to the outbox dispatcher.

    Raises:
        WebhookNotFoundError: If it does not exist or belongs to another workspace.
        EndpointDisabledError: If its endpoint is disabled.
    """
    delivery = get_delivery(delivery_id, session=session, workspace=workspace)
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None or not endpoint.enabled:
        raise EndpointDisabledError("the endpoint is disabled; enable it before redelivering")
    previous = delivery.workflow_id
    delivery.status = DeliveryStatus.PENDING.value
    delivery.next_retry_at = None
    # The row changes hands in this transaction: a previous workflow that wakes up later stops quietly.
    delivery.workflow_id = workflow_id
    # An outbox owner puts it in the outbox, due now, its schedule starting afresh; a fresh claim token is
    # needed to record it, so a dispatcher still sending an earlier attempt records nothing.
    outbox = is_outbox_owner(workflow_id)
    delivery.next_attempt_at = utcnow() if outbox else None
    delivery.schedule_base = delivery.attempts
    delivery.claim_token = None
    delivery.claimed_until = None
    session.add(delivery)
    session.flush()
    return Redelivery(delivery, previous, workflow_id, delivery.attempts + 1)


@dataclass(frozen=True)
class Recovery:
    """The deliveries a recovery handed to fresh workflows (start them after the commit).

    Attributes:
        redeliveries: One per re-sent delivery, oldest first.
        more: Whether the window holds more recoverable deliveries than one recovery re-sends.
    """

    redeliveries: tuple[Redelivery, ...]
    more: bool


def recover(
    endpoint_id: str,
    *,
    session: Session,
    workspace: str,
    since: datetime,
    until: datetime,
    workflow_id: Callable[[str], str],
    limit: int = MAX_RECOVER,
) -> Recovery:
    """Put every recoverable delivery of an endpoint's window back to pending, each under a fresh workflow.

    Args:
        endpoint_id: The endpoint.
        session: Database session (the caller commits, then starts the workflows).
        workspace: The caller's workspace.
        since: Start of the window (inclusive), compared with the deliveries' ``created_at``.
        until: End of the window (exclusive).
        workflow_id: Makes the fresh workflow id of a delivery id.
        limit: At most this many deliveries, oldest first.

    Returns:
        The redeliveries, and whether more were left.

    Raises:
        WebhookNotFoundError: If the endpoint does not exist or belongs to another workspace.
        EndpointDisabledError: If the endpoint is disabled (enable it first: nothing would be sent).
        ValueError: If ``until`` is not after ``since``.
    """
    if until <= since:
        raise ValueError("until must be after since")
    endpoint = get_endpoint(endpoint_id, session=session, workspace=workspace)
    if not endpoint.enabled:
        raise EndpointDisabledError("the endpoint is disabled; enable it before recovering its deliveries")
    ids = list(
        session.scalars(
            select(col(WebhookDelivery.id))
            .where(col(WebhookDelivery.endpoint_id) == endpoint.id)
            .where(col(WebhookDelivery.status).in_(RECOVERABLE))
            .where(col(WebhookDelivery.created_at) >= since, col(WebhookDelivery.created_at) < until)
            .order_by(col(WebhookDelivery.created_at), col(WebhookDelivery.id))
            .limit(limit + 1)
        )
    )
    handed = tuple(
        redeliver(delivery_id, session=session, workspace=workspace, workflow_id=workflow_id(delivery_id))
        for delivery_id in ids[:limit]
    )
    return Recovery(handed, more=len(ids) > limit)
