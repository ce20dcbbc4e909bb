"""Starting the event-sink workflows: one per delivery (first delivery and redeliveries) and one AMQP publication.

Every start is idempotent: a workflow id names a delivery (or a redelivery, or an event's publication) and
duplicates are rejected, so a caller retried after a crash simply starts what is missing. The API (redelivery)
and the activities (fan-out after an event is stored) both start workflows through this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from quantapilot.events.envelope import EventEnvelope
from quantapilot.settings import Settings
from quantapilot.webhooks.contracts import (
    AMQP_PUBLISH_WORKFLOW,
    WEBHOOK_DELIVERY_WORKFLOW,
    AmqpPublishInput,
    DeliveryWorkflowInput,
    amqp_workflow_id,
)

# Workflow starts in flight at once from one activity: enough to hide the round trips, few enough not to
# flood the frontend when a busy workspace has many endpoints.
_START_CONCURRENCY = 16


@dataclass(frozen=True)
class PendingDelivery:
    """A delivery waiting for its workflow (the row's id and the workflow that owns it)."""

    delivery_id: str
    workflow_id: str


def delivery_input(settings: Settings, delivery_id: str, *, first_attempt: int = 1) -> DeliveryWorkflowInput:
    """The delivery workflow's input from the settings of the process that starts it."""
    return DeliveryWorkflowInput(
        delivery_id=delivery_id,
        first_attempt=first_attempt,
        retry_scale=settings.webhook_retry_scale,
        timeout_s=settings.webhook_timeout_s,
        heartbeat_s=settings.step_heartbeat_s,
    )


async def start_delivery_workflows(
    client: Client, *, task_queue: str, settings: Settings, deliveries: Sequence[PendingDelivery]
) -> int:
    """Start one delivery workflow per delivery; a workflow that already exists (or existed) is left alone.

    Returns:
        How many workflows this call started.
    """
    gate = asyncio.Semaphore(_START_CONCURRENCY)

    async def _start(pending: PendingDelivery) -> bool:
        async with gate:
            try:
                await client.start_workflow(
                    WEBHOOK_DELIVERY_WORKFLOW,
                    delivery_input(settings, pending.delivery_id),
                    id=pending.workflow_id,
                    task_queue=task_queue,
                    # A closed workflow with this id means the delivery was handled: never run it twice.
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    # The starting worker polls this queue: its first task comes back in the start's answer.
                    request_eager_start=True,
                )
            except WorkflowAlreadyStartedError:
                return False
            return True

    started = await asyncio.gather(*(_start(p) for p in deliveries))
    return sum(started)


async def start_redelivery(
    client: Client, settings: Settings, delivery_id: str, workflow_id: str, first_attempt: int
) -> None:
    """Start the fresh workflow a redelivery (:func:`~quantapilot.webhooks.recovery.redeliver`) handed the row to.

    Args:
        client: Temporal client.
        settings: Settings of the starting process (task queue, timeouts, retry scale).
        delivery_id: The delivery.
        workflow_id: The workflow id the redelivery wrote on the row.
        first_attempt: Attempt number the new workflow starts counting from.
    """
    await client.start_workflow(
        WEBHOOK_DELIVERY_WORKFLOW,
        delivery_input(settings, delivery_id, first_attempt=first_attempt),
        id=workflow_id,
        task_queue=settings.task_queue,
        # The id is fresh; rejecting duplicates keeps a closed redelivery from ever running twice.
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )


async def start_redeliveries(client: Client, settings: Settings, redeliveries: Sequence[tuple[str, str, int]]) -> None:
    """Start the fresh workflows of several redeliveries (a recovery), a few at a time.

    Args:
        client: Temporal client.
        settings: Settings of the starting process.
        redeliveries: ``(delivery_id, workflow_id, first_attempt)`` of each.
    """
    gate = asyncio.Semaphore(_START_CONCURRENCY)

    async def _start(delivery_id: str, workflow_id: str, first_attempt: int) -> None:
        async with gate:
            await start_redelivery(client, settings, delivery_id, workflow_id, first_attempt)

    await asyncio.gather(*(_start(*r) for r in redeliveries))


async def start_amqp_publish(client: Client, *, task_queue: str, envelope: EventEnvelope) -> bool:
    """Start the AMQP publication of an event (once per event id).

    Returns:
        True if this call started it.
    """
    try:
        await client.start_workflow(
            AMQP_PUBLISH_WORKFLOW,
            AmqpPublishInput(event_id=envelope.id, event_type=envelope.type, envelope=envelope.model_dump(mode="json")),
            id=amqp_workflow_id(envelope.id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        return False
    return True
