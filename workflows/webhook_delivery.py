"""Event sinks: one workflow per webhook delivery (attempts on the retry schedule) and one per AMQP message.

A delivery workflow owns the schedule: each attempt is one short activity (``deliver_webhook``) that signs,
POSTs and records the attempt, and answers whether to stop or how long to wait; the waiting is a durable
``workflow.sleep``, so a delivery survives worker restarts for the whole three days of its schedule. The
activity's own retry policy is small: it only covers a worker lost mid-attempt or a database hiccup.

Names and models live in :mod:`quantapilot.webhooks.contracts`; the activities are referenced by method, their
module passed through the sandbox (nothing of it runs in the workflow).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import WebhookActivities
    from quantapilot.webhooks.contracts import (
        AMQP_PUBLISH_WORKFLOW,
        THROTTLED,
        WEBHOOK_DELIVERY_WORKFLOW,
        AmqpPublishInput,
        DeliverAttemptInput,
        DeliveryWorkflowInput,
    )
    from quantapilot.webhooks.schedule import next_delay

# Time the activity gets beyond the HTTP timeout itself: loading and recording in the database.
_ACTIVITY_SLACK_S = 15.0


@workflow.defn(name=WEBHOOK_DELIVERY_WORKFLOW)
class WebhookDeliveryWorkflow:
    """Deliver one event to one endpoint: attempt, then sleep on the schedule, until a final outcome."""

    @workflow.run
    async def run(self, inp: DeliveryWorkflowInput) -> str:
        """Attempt until the activity reports the delivery done; return the final outcome."""
        info = workflow.info()
        attempt = inp.first_attempt
        while True:
            index = attempt - inp.first_attempt + 1
            try:
                result = await workflow.execute_activity_method(
                    WebhookActivities.deliver_webhook,
                    DeliverAttemptInput(
                        delivery_id=inp.delivery_id,
                        attempt=attempt,
                        schedule_index=index,
                        workflow_id=info.workflow_id,
                        retry_scale=inp.retry_scale,
                        timeout_s=inp.timeout_s,
                    ),
                    start_to_close_timeout=timedelta(seconds=inp.timeout_s + _ACTIVITY_SLACK_S),
                    heartbeat_timeout=timedelta(seconds=inp.heartbeat_s),
                    # Small on purpose: the schedule below is the real retry loop.
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(seconds=1),
                        backoff_coefficient=2.0,
                        maximum_interval=timedelta(seconds=10),
                        maximum_attempts=3,
                    ),
                    summary=f"attempt {attempt}",
                )
            except ActivityError:
                # The attempt itself could not run (database away, workers lost): treat it like a failed
                # attempt and wait on the same schedule; the seeded workflow RNG keeps replays identical.
                delay = next_delay(index, rng=workflow.random())
                if delay is None:
                    raise ApplicationError(
                        f"delivery {inp.delivery_id}: attempts could not be made", non_retryable=True
                    ) from None
                await workflow.sleep(delay * inp.retry_scale)
                attempt += 1
                continue
            if result.done:
                return result.outcome
            await workflow.sleep(result.delay_s or 0.0)
            # A throttled endpoint made no attempt: the same one is made after the wait (histories recorded
            # before throttling never return this outcome, so they replay unchanged).
            if result.outcome != THROTTLED:
                attempt += 1


@workflow.defn(name=AMQP_PUBLISH_WORKFLOW)
class AmqpPublishWorkflow:
    """Publish one event to the RabbitMQ exchange, retrying until the broker confirms it."""

    @workflow.run
    async def run(self, inp: AmqpPublishInput) -> None:
        """Run the publish activity with unlimited retries (an unreachable broker never loses an event)."""
        await workflow.execute_activity_method(
            WebhookActivities.publish_event_amqp,
            inp,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(seconds=60),
                maximum_attempts=0,
            ),
            summary=f"publish {inp.event_type}",
        )
