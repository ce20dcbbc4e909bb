"""The worker's interceptor that lets an activity carry the run events its workflow emitted before it.

Workflow side: when a run workflow (under the ``events-carried`` patch, :class:`workflows.common.EventEmitter`)
schedules an activity (or a local activity) while it holds events not yet recorded, those events go into the activity's
:data:`~quantapilot.events.carry.EVENTS_HEADER` header, and the emitter counts them recorded once the activity
completes. Activity side: before the activity's body runs, the events in the header are recorded exactly as
``record_event`` records them (same transaction, same dispatcher wake, idempotent by event id, so a retried
attempt or a second carrier records nothing twice). When that fails (the database is away), the attempt fails with
the non-retryable :data:`~quantapilot.events.carry.EVENTS_NOT_RECORDED` before the body ran: the workflow records
the events itself (retrying as long as it takes) and schedules the activity again.

The workflow side reaches the emitter through the workflow instance's ``_events`` attribute by its methods only
(``attach_carrier``, ``to_carry``, ``carried``): the interceptor is imported outside the workflow sandbox, whose
copy of the emitter's class is another class object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from activities.events import EventActivities
from quantapilot.events.carry import EVENTS_HEADER, EVENTS_NOT_RECORDED
from quantapilot.events.record import EventRecord

# Recording the carried events may take this long before the attempt gives up on them (the workflow then records
# them itself); the carrying activity's own timeouts keep counting meanwhile, so it stays well below them.
CARRY_RECORD_TIMEOUT = timedelta(seconds=10)

_Start = TypeVar("_Start", StartActivityInput, StartLocalActivityInput)


class EventCarryInterceptor(Interceptor):
    """Carries run events on activity headers (workflow side) and records them before the activity (worker side).

    Args:
        events: The worker's event activities, which record what an activity carries; None (a replayer) only
            intercepts workflows.
        new_runs: Whether runs whose first event this worker emits start carrying (``QP_WORKER_EVENT_CARRY``);
            a run's history decides for the runs that already did.
    """

    def __init__(self, events: EventActivities | None = None, *, new_runs: bool = True) -> None:
        self._events = events
        self._inbound = type("_WorkflowInboundOfWorker", (_WorkflowInbound,), {"new_runs": new_runs})

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Record an activity's carried events before its body runs."""
        return _ActivityInbound(next, self._events) if self._events is not None else next

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        """Let run workflows' emitters carry their events on the activities they start."""
        return self._inbound


def _emitter() -> Any:
    """The running workflow's event emitter, if it has one that carries events."""
    events = getattr(workflow.instance(), "_events", None)
    return events if hasattr(events, "to_carry") else None


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        return self._carrying(input, super().start_activity)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        # A local activity carries the same way: the SDK hands its headers to the activity on this worker, whose
        # inbound interceptor records them before the body (a run's cleanup is one, see workflows.repo_run).
        return self._carrying(input, super().start_local_activity)

    @staticmethod
    def _carrying(
        input: _Start, start: Callable[[_Start], workflow.ActivityHandle[Any]]
    ) -> workflow.ActivityHandle[Any]:
        emitter = _emitter()
        batch: Sequence[EventRecord] = emitter.to_carry(input.activity) if emitter is not None else ()
        if not batch:
            return start(input)
        input.headers = {**input.headers, EVENTS_HEADER: workflow.payload_converter().to_payload(list(batch))}
        handle = start(input)
        # Registered before the workflow awaits the handle: the emitter knows the outcome before the step goes on.
        handle.add_done_callback(lambda done: emitter.carried(batch, done))
        return handle


class _WorkflowInbound(WorkflowInboundInterceptor):
    new_runs = True

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        emitter = _emitter()
        if emitter is not None:
            # Only a workflow run with this interceptor may carry (a worker without it keeps one activity per event).
            emitter.attach_carrier(new_runs=self.new_runs)
        return await super().execute_workflow(input)


class _ActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, events: EventActivities) -> None:
        super().__init__(next)
        self._events = events

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        payload = input.headers.get(EVENTS_HEADER)
        if payload is not None:
            batch = activity.payload_converter().from_payload(payload, list[EventRecord])
            if activity.info().heartbeat_timeout:
                # The body's own heartbeats start after this: a slow insert must not pass for a lost worker.
                activity.heartbeat()
            try:
                await asyncio.wait_for(self._events.record_events(batch), CARRY_RECORD_TIMEOUT.total_seconds())
            except Exception as exc:
                activity.logger.warning("carried events not recorded (%d): %s", len(batch), exc)
                raise ApplicationError(
                    f"the {len(batch)} carried run events could not be recorded: {exc}",
                    type=EVENTS_NOT_RECORDED,
                    non_retryable=True,
                ) from exc
        return await super().execute_activity(input)
