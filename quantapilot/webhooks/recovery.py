"""Recovering an endpoint: re-send every delivery of a time window that did not arrive (Svix's "recover").

A recovery is many redeliveries at once (:func:`quantapilot.webhooks.delivery.redeliver`): each delivery of the
endpoint whose event was created in ``[since, until)`` and that is settled without having arrived (``failed``,
``gone`` or ``disabled``) goes back to pending under a fresh workflow, in one transaction; the caller starts the
workflows after the commit (:func:`quantapilot.webhooks.starts.start_redeliveries`). Delivered and pending
deliveries are left alone. A superseded workflow that wakes up later stops without sending, as with a single
redelivery, so two recoveries racing on the same rows send each at most once more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlmodel import Session, col

from quantapilot.webhooks.delivery import EndpointDisabledError, Redelivery, redeliver
from quantapilot.webhooks.endpoints import get_endpoint
from quantapilot.webhooks.tables import DeliveryStatus, WebhookDelivery

#: The statuses of deliveries that settled without arriving: what a recovery re-sends.
RECOVERABLE: Final = (DeliveryStatus.FAILED.value, DeliveryStatus.GONE.value, DeliveryStatus.DISABLED.value)
#: Deliveries one recovery re-sends at most (oldest first); the answer says when more are left.
MAX_RECOVER: Final = 1000


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
