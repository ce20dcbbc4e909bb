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
    from quantapilot.events.record import EventRecord
    from quantapilot.models import RunKind

# Recording one event (one insert) may take this long before Temporal retries it elsewhere.
EVENT_ACTIVITY_TIMEOUT = timedelta(seconds=30)

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
    """Assigns each event its per-run sequence number and records it durably through an activity."""

    def __init__(
        self, *, run_id: str, workspace: str, kind: RunKind, correlation_id: str | None, trace_id: str | None = None
    ) -> None:
        self.run_id = run_id
        self.trace_id = trace_id
        self.workspace = workspace
        self.kind = kind
        self.correlation_id = correlation_id
        self.seq = 0

    async def emit(self, event_type: str, data: dict[str, Any]) -> EventRecord:
        """Record one event; the sequence number is taken before awaiting so concurrent emits stay unique."""
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
        await workflow.execute_activity_method(
            EventActivities.record_event,
            record,
            start_to_close_timeout=EVENT_ACTIVITY_TIMEOUT,
            # An event must not be lost: keep trying while the database is away.
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=30),
                maximum_attempts=0,
            ),
        )
        return record
