"""Names and input/output models of the event-sink workflows and activities (webhook deliveries, AMQP).

Workflows import this module (and no module of :mod:`quantapilot.webhooks` that does I/O) so they stay free of
I/O code. :func:`quantapilot.webhooks.starts.delivery_input` builds the delivery workflow's input from settings.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

# Workflow and activity names: stable, readable in the Temporal Web UI.
WEBHOOK_DELIVERY_WORKFLOW = "WebhookDelivery"
AMQP_PUBLISH_WORKFLOW = "AmqpPublish"
DELIVER_WEBHOOK = "deliver_webhook"
PUBLISH_EVENT_AMQP = "publish_event_amqp"


# The attempt was not made because the endpoint asked every delivery to wait (429/503 with Retry-After): the
# workflow sleeps ``delay_s`` and retries with the same attempt number and schedule position.
THROTTLED: Final = "throttled"


def delivery_workflow_id(delivery_id: str) -> str:
    """Workflow id of a delivery's first workflow; one per delivery, so a repeated start is rejected."""
    return f"webhook-delivery/{delivery_id}"


def redelivery_workflow_id(delivery_id: str, suffix: str) -> str:
    """Workflow id of a redelivery (a fresh workflow for the same delivery row)."""
    return f"webhook-delivery/{delivery_id}/redeliver-{suffix}"


# The owner of deliveries the outbox dispatcher makes (``webhook_deliveries.workflow_id``): no workflow has an id
# with this prefix, so a delivery workflow still waiting on a row handed to the outbox sees it superseded.
OUTBOX_OWNER_PREFIX: Final = "webhook-outbox/"


def outbox_owner(delivery_id: str) -> str:
    """The owner id of a delivery made by the outbox dispatcher (:mod:`quantapilot.webhooks.dispatcher`)."""
    return f"{OUTBOX_OWNER_PREFIX}{delivery_id}"


def is_outbox_owner(owner: str | None) -> bool:
    """Whether a delivery's owner is the outbox dispatcher (not a delivery workflow)."""
    return owner is not None and owner.startswith(OUTBOX_OWNER_PREFIX)


def amqp_workflow_id(event_id: str) -> str:
    """Workflow id of an event's AMQP publication; one per event id."""
    return f"amqp-publish/{event_id}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeliveryWorkflowInput(_Model):
    """Input of :class:`WebhookDeliveryWorkflow`.

    Attributes:
        delivery_id: The ``webhook_deliveries`` row.
        first_attempt: Attempt number of the first attempt (a redelivery continues the count).
        retry_scale: Multiplies every backoff delay (1.0 in production; tests use a tiny value).
        timeout_s: HTTP timeout of one attempt.
        heartbeat_s: Heartbeat timeout of the attempt activity, so a killed worker is noticed quickly.
    """

    delivery_id: str
    first_attempt: int = Field(default=1, ge=1)
    retry_scale: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_s: float = Field(default=30.0, gt=0)


class DeliverAttemptInput(_Model):
    """Input of the ``deliver_webhook`` activity."""

    delivery_id: str
    attempt: int = Field(ge=1)
    # Position in the retry schedule (1 for the first attempt of this workflow): a redelivery starts afresh.
    schedule_index: int = Field(ge=1)
    workflow_id: str
    retry_scale: float = Field(gt=0)
    timeout_s: float = Field(gt=0)


class DeliverAttemptResult(_Model):
    """What one attempt decided.

    Attributes:
        done: True when the delivery needs no further attempt (delivered, gone, given up, superseded...).
        outcome: ``delivered``, ``gone``, ``failed``, ``disabled``, ``superseded``, ``missing``, ``retry``, or
            :data:`THROTTLED` (nothing was sent: the endpoint is throttled; wait and make the same attempt).
        delay_s: Seconds to wait before the next attempt when not done.
    """

    done: bool
    outcome: str
    delay_s: float | None = None


class AmqpPublishInput(_Model):
    """Input of :class:`AmqpPublishWorkflow` and its activity: the event envelope to publish."""

    event_id: str
    event_type: str
    envelope: dict[str, Any]
