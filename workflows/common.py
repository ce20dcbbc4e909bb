"""Pieces shared by the run workflows: retry policies, error mapping, the event emitter and gate bookkeeping."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.events import EventActivities
    from quantapilot.errors import ErrorCode
    from quantapilot.events.carry import EVENTS_NOT_RECORDED, RECORD_EVENTS
    from quantapilot.events.record import EventRecord
    from quantapilot.models import RunKind
    from quantapilot.runs.contracts import RECORD_EVENT

# Recording one event (one insert) may take this long before Temporal retries it elsewhere.
EVENT_ACTIVITY_TIMEOUT = timedelta(seconds=30)
# An event must not be lost: keep trying while the database is away.
EVENT_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
# Workflow versioning (workflow.patched): a run's events ride on its next activity (activities.event_carry) or are
# recorded in batches, instead of one record_event activity each.
PATCH_EVENTS_CARRIED = "events-carried"

# Permanent failures: the activity raises ApplicationError(type=<code>, non_retryable=True); listing the types
# here as well means a mistaken retryable raise of one of them still fails fast.
PERMANENT_ERRORS = [
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.PRECONDITION_FAILED,
    ErrorCode.REPO_URL_NOT_ALLOWED,
    ErrorCode.REPO_NOT_FOUND,
    ErrorCode.BRANCH_NOT_FOUND,
    ErrorCode.CONFIG_INVALID,
    ErrorCode.DOCS_LINT_FAILED,
    ErrorCode.MERGE_CONFLICT,
    ErrorCode.COMMANDS_NOT_ALLOWED,
    ErrorCode.COMMANDS_SANDBOX_UNAVAILABLE,
    ErrorCode.STEP_FAILED,
    ErrorCode.FATAL,
]


def retry_policy(maximum_attempts: int = 5, *, initial_s: float = 2.0) -> RetryPolicy:
    """Exponential backoff with the seed's base (2 s) and ceiling (90 s); the SDK adds jitter.

    Args:
        maximum_attempts: Attempts before the step gives up (0 means unlimited).
        initial_s: First retry interval (the seed's 2 s; tests shorten it).
    """
    return RetryPolicy(
        initial_interval=timedelta(seconds=initial_s),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=90),
        maximum_attempts=maximum_attempts,
        non_retryable_error_types=[str(code) for code in PERMANENT_ERRORS],
    )


class RunFailure(Exception):
    """Raised inside a workflow to end the run with ``run.failed`` and a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StepExhausted(Exception):
    """A step ran out of attempts (or time) on a transient error: the run pauses instead of failing."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


def classify_activity_error(step: str, err: ActivityError) -> RunFailure | StepExhausted:
    """Turn an activity failure into a permanent run failure or an exhausted (pausable) step.

    Args:
        step: Step name, for messages.
        err: The failure raised by ``execute_activity``.
    """
    cause = err.cause
    if isinstance(cause, ApplicationError) and (
        cause.non_retryable or err.retry_state == RetryState.NON_RETRYABLE_FAILURE
    ):
        return RunFailure(cause.type or ErrorCode.FATAL, cause.message)
    if isinstance(cause, TimeoutError) or err.retry_state in (
        RetryState.MAXIMUM_ATTEMPTS_REACHED,
        RetryState.TIMEOUT,
    ):
        detail = cause.message if isinstance(cause, ApplicationError | TimeoutError) else str(cause)
        return StepExhausted(step, f"step {step} ran out of attempts: {detail}")
    return RunFailure(ErrorCode.TOOL_FAILURE, f"step {step} failed: {cause}")


class EventEmitter:
    """Assigns each event its per-run sequence number and records it durably.

    Before :data:`PATCH_EVENTS_CARRIED` (and in workflows that do not ask, ``carry=False``) each event is recorded
    by a ``record_event`` activity of its own. Under it (asked once, at the run's first event, and only with the
    worker's :class:`activities.event_carry.EventCarryInterceptor`) an event is numbered and stamped as before but
    held: the next activity the workflow schedules carries every event held (the interceptor records them before
    that activity's body), and :meth:`flush` records them with one ``record_events`` activity where the run would
    otherwise wait with events unrecorded (a gate, a pause, continue-as-new, the end). A recording call is given
    every event held that no other call in flight has: a pause's ``run.paused`` is recorded while the step that
    carries the events before it runs (the log may hold seq N+1 a moment before N, as it could before; its pages
    stop at the gap while the run is open). A carrier that fails hands its events back to be held, and an event
    recorded twice (idempotent by id) is stored once.
    """

    def __init__(
        self,
        *,
        run_id: str,
        workspace: str,
        kind: RunKind,
        correlation_id: str | None,
        trace_id: str | None = None,
        carry: bool = False,
    ) -> None:
        self.run_id = run_id
        self.trace_id = trace_id
        self.workspace = workspace
        self.kind = kind
        self.correlation_id = correlation_id
        self.seq = 0
        self._may_carry = carry
        self._carrier = False
        self._new_runs = True
        self._carries: bool | None = None  # decided at the run's first event
        self._held: list[EventRecord] = []  # emitted, not known recorded, in seq order
        self._on_the_way: dict[str, int] = {}  # event id -> recording calls in flight with it

    # ----- the interceptor's side (activities.event_carry) ---------------------------------------------------

    def attach_carrier(self, *, new_runs: bool = True) -> None:
        """The worker intercepts this workflow's activity starts (called as the workflow begins to run).

        Args:
            new_runs: Whether a run whose first event is emitted now (not replayed) starts carrying.
        """
        self._carrier = True
        self._new_runs = new_runs

    def to_carry(self, activity_type: str) -> list[EventRecord]:
        """The events an activity about to start carries: every event held (none for the recording activities)."""
        if not self._carries or activity_type in (RECORD_EVENT, RECORD_EVENTS):
            return []
        return self._take()

    def carried(self, batch: list[EventRecord], handle: Any) -> None:
        """The carrying activity ended: completed, its batch is recorded; otherwise it stays held."""
        self._landed(batch, recorded=not handle.cancelled() and handle.exception() is None)

    # ----- the workflow's side -------------------------------------------------------------------------------

    @property
    def carries(self) -> bool:
        """Whether this run's events ride on its activities (:data:`PATCH_EVENTS_CARRIED`); asked once."""
        if self._carries is None:
            if not (self._may_carry and self._carrier):
                self._carries = False
            elif not self._new_runs and not workflow.unsafe.is_replaying():
                # The worker does not start carrying (QP_WORKER_EVENT_CARRY off); a replay follows its history.
                self._carries = False
            else:
                self._carries = workflow.patched(PATCH_EVENTS_CARRIED)
        return self._carries

    @property
    def recorded_seq(self) -> int:
        """The sequence number up to which every event of the run is recorded (what a client finds in the log)."""
        return self._held[0].seq - 1 if self._carries and self._held else self.seq

    def restore(self, seq: int) -> None:
        """Continue the numbering of an earlier execution (continue-as-new), whose events were all recorded."""
        self.seq = seq

    def _take(self) -> list[EventRecord]:
        """The held events no recording call in flight has, now on their way with a new one."""
        batch = [record for record in self._held if record.id not in self._on_the_way]
        for record in batch:
            self._on_the_way[record.id] = self._on_the_way.get(record.id, 0) + 1
        return batch

    def _landed(self, batch: list[EventRecord], *, recorded: bool) -> None:
        """A recording call with ``batch`` ended: recorded, its events are no longer held; else held again."""
        for record in batch:
            left = self._on_the_way.pop(record.id, 1) - 1
            if left > 0:
                self._on_the_way[record.id] = left
        if recorded:
            done = {record.id for record in batch}
            self._held = [record for record in self._held if record.id not in done]

    async def emit(self, event_type: str, data: dict[str, Any]) -> EventRecord:
        """Record one event, or hold it for the next activity; the sequence number is taken before awaiting."""
        self.seq += 1
        record = EventRecord(
            # workflow.uuid4 is seeded from the history, so a replay produces the same id.
            id=f"evt_{workflow.uuid4().hex}",
            run_id=self.run_id,
            workspace=self.workspace,
            run_kind=self.kind,
            seq=self.seq,
            type=event_type,
            correlation_id=self.correlation_id,
            created_at=workflow.now(),
            data=data,
            trace_id=self.trace_id,
        )
        if self.carries:
            self._held.append(record)
            return record
        await workflow.execute_activity_method(
            EventActivities.record_event,
            record,
            start_to_close_timeout=EVENT_ACTIVITY_TIMEOUT,
            retry_policy=EVENT_RETRY_POLICY,
        )
        return record

    async def flush(self) -> None:
        """Record the events held (those no call in flight has), in order, with one activity; none: no command."""
        batch = self._take()
        if not batch:
            return
        recorded = False
        try:
            await workflow.execute_activity_method(
                EventActivities.record_events,
                batch,
                start_to_close_timeout=EVENT_ACTIVITY_TIMEOUT,
                retry_policy=EVENT_RETRY_POLICY,
                # The Web UI shows it as the activity's title: which events, in order (not part of replay checks).
                summary="Record " + ", ".join(record.type for record in batch),
            )
            recorded = True
        finally:
            self._landed(batch, recorded=recorded)


def events_not_recorded(err: ActivityError | ApplicationError) -> bool:
    """Whether an activity failed because the events it carried could not be recorded (its body did not run).

    Args:
        err: What awaiting the activity raised: an ``ActivityError`` around the activity's failure, or (a local
            activity that failed for good) the activity's ``ApplicationError`` itself.
    """
    cause = err.cause if isinstance(err, ActivityError) else err
    return isinstance(cause, ApplicationError) and cause.type == EVENTS_NOT_RECORDED
