"""The core every run workflow shares: state, status query, search attributes, events, steps, time budget, pause.

:class:`workflows.base.RunWorkflowBase` adds gates, pause/resume and budget raises on top.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from workflows.common import (
    EventEmitter,
    RunFailure,
    StepExhausted,
    classify_activity_error,
    events_not_recorded,
    retry_policy,
)

with workflow.unsafe.imports_passed_through():
    from quantapilot.errors import ErrorCode
    from quantapilot.models import (
        GateRecord,
        GateStatus,
        RunError,
        RunKind,
        RunState,
        RunStatus,
        RunTrigger,
    )
    from quantapilot.temporal import SA_PENDING_GATE, SA_STATE

T = TypeVar("T")
A = TypeVar("A")

# Workflow versioning (workflow.patched): ids of behaviour changes that alter the command sequence.
PATCH_FINAL_EVENT_FIRST = "final-event-before-final-state"
PATCH_BUDGET_STOPS_STEP = "time-budget-stops-running-step"
# The gates' patches (PATCH_GATE_N_OF_M, PATCH_SELF_APPROVAL_FLOOR, ...) are in workflows.base.


class RunCore:
    """State, status, events and steps of a run; see :class:`workflows.base.RunWorkflowBase`."""

    def _init_run(self, inp: RunTrigger, kind: RunKind, *, heartbeat_s: float | None = None) -> None:
        """Begin the run's state from its input (call from the workflow's ``@workflow.init``).

        Args:
            inp: The workflow's input.
            kind: The kind of run.
            heartbeat_s: Heartbeat timeout of the run's steps; None: only steps that name one heartbeat.
        """
        self._trigger_token = inp.triggered_by_token
        # QP_ALLOW_SELF_APPROVAL when the run was triggered: the default of gates that do not say, and a floor no
        # gate setting (quantapilot.yml, a lifecycle request) can lift.
        self._self_approval_default = inp.allow_self_approval_default
        self._run_id = inp.run_id
        self._heartbeat_s = heartbeat_s
        self._workspace = inp.workspace
        self._kind = kind
        self._correlation_id = inp.correlation_id
        self._triggered_by = inp.triggered_by
        self._events = EventEmitter(
            run_id=inp.run_id,
            workspace=inp.workspace,
            kind=kind,
            correlation_id=inp.correlation_id,
            trace_id=inp.trace_id,
            carry=True,
        )
        self._gates: dict[str, GateRecord] = {}
        # Gates requested under PATCH_GATE_N_OF_M (workflows.base): their decisions follow gates.record_decision.
        self._n_of_m_gates: set[str] = set()
        self._paused = False
        self._paused_reason: str | None = None
        self._terminal: RunState | None = None
        self._error: RunError | None = None
        self._current_step: str | None = None
        self._created_at = workflow.now()
        self._updated_at = self._created_at
        self._completed_at: datetime | None = None
        self._time_budget_s: float | None = None
        self._extra_attempts = 0
        self._result: dict[str, Any] | None = None
        self._sa_state: tuple[str, str] | None = None

    # ----- state -------------------------------------------------------------------------------------------

    @property
    def _state(self) -> RunState:
        if self._terminal is not None:
            return self._terminal
        if self._paused:
            return RunState.PAUSED
        if any(g.status == GateStatus.PENDING for g in self._gates.values()):
            return RunState.WAITING_FOR_GATE
        return RunState.RUNNING

    def _touch(self) -> None:
        """Record a state change: timestamps and the search attributes operators filter on."""
        self._updated_at = workflow.now()
        pending = next((g.name for g in self._gates.values() if g.status == GateStatus.PENDING), "")
        current = (self._state.value, pending)
        if current != self._sa_state:
            self._sa_state = current
            workflow.upsert_search_attributes([SA_STATE.value_set(current[0]), SA_PENDING_GATE.value_set(pending)])
        # The Web UI shows this markdown on the run's page; it is served by a query, so it costs no history event.
        workflow.set_current_details(self._current_details())

    def _current_details(self) -> str:
        """Markdown for the Web UI: where the run stands, what it waits for and how to move it on."""
        state = self._state.value
        lines = [f"**{self._kind.value.capitalize()} run** `{self._run_id}` is **{state.replace('_', ' ')}**."]
        if self._current_step and self._terminal is None:
            lines.append(f"Current step: `{self._current_step}`.")
        if self._paused:
            lines.append(f"Paused ({self._paused_reason or 'manual'}): resume with `qp resume {self._run_id}`.")
        if self._error is not None:
            lines.append(f"Failed with `{self._error.code}`: {self._error.message}")
        lines += self._details_extra()
        if self._gates:
            lines += ["", "| gate | status | decided by |", "| --- | --- | --- |"]
            lines += [f"| {g.name} | {g.status} | {g.decided_by or ''} |" for g in self._gates.values()]
        for gate in (g for g in self._gates.values() if g.status == GateStatus.PENDING):
            # N-of-M: "1 of 2 approvals" so far.
            progress = f" ({gate.approval_progress})" if gate.approval_progress else ""
            lines += [
                "",
                f"Waiting at gate **{gate.name}**{progress}: {gate.description}",
                f"Approve with `qp approve {self._run_id} {gate.name}` or the `decide_gate` signal.",
            ]
            if gate.deadline is not None:
                lines.append(f"Decide by {gate.deadline.strftime('%Y-%m-%d %H:%M:%S')} UTC: the gate times out then.")
        return "\n".join(lines)

    def _details_extra(self) -> list[str]:
        """Markdown lines a run kind adds to its current details (milestones, pull requests)."""
        return []

    def _base_status(self) -> dict[str, Any]:
        return {
            "run_id": self._run_id,
            "kind": self._kind,
            "workspace": self._workspace,
            "state": self._state,
            "current_step": self._current_step,
            "correlation_id": self._correlation_id,
            "gates": [g.model_copy() for g in self._gates.values()],
            "paused_reason": self._paused_reason if self._paused else None,
            "error": self._error,
            "created_at": self._created_at,
            "updated_at": self._updated_at,
            "completed_at": self._completed_at,
            # Only what a client can read: events held for the next activity are not in the log yet.
            "last_event_seq": self._events.recorded_seq,
            "result": self._result,
        }

    def _status(self) -> RunStatus:
        return RunStatus(**self._base_status())

    @workflow.query(name="status")
    def status(self) -> RunStatus:
        """Current status of the run (serves ``GET /v1/runs/{run_id}``)."""
        return self._status()

    async def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        await self._events.emit(event_type, data)

    # ----- pipeline frame ----------------------------------------------------------------------------------

    async def _guarded(self, pipeline: Callable[[], Awaitable[None]]) -> RunStatus:
        """Run the pipeline; turn failures into ``run.failed`` and cancellation into ``run.cancelled``."""
        self._touch()
        try:
            await pipeline()
        except RunFailure as failure:
            await self._finish_failed(failure.code, failure.message)
            raise ApplicationError(failure.message, type=failure.code, non_retryable=True) from None
        except asyncio.CancelledError:
            # Cleanup after a cancellation request is allowed: the event still gets recorded.
            await self._close(RunState.CANCELLED, "run.cancelled", {"run_id": self._run_id})
            raise
        self._current_step = None
        await self._close(RunState.COMPLETED, "run.completed", {"run_id": self._run_id})
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status()

    async def _close(self, state: RunState, event_type: str, data: dict[str, Any]) -> None:
        """Record the final event, then enter the final state, so a client that sees it finds the whole log.

        Runs started before this order existed replay the old one (state first): their histories say so. What the
        run holds outside Temporal is released first (:meth:`_release`), so a client that sees the final state
        finds it released. Runs that carry their events (:class:`~workflows.common.EventEmitter`) emit the final
        event before the release, whose activity carries it (recorded before the worktree is removed); what is
        still held after it is recorded on its own, then the state turns final.
        """
        if self._events.carries:
            # The final event rides on the release's activity (or is recorded on its own): recorded, then the state.
            await self._emit(event_type, data)
            await self._release()
            await self._events.flush()
            self._finish(state)
            return
        await self._release()
        if workflow.patched(PATCH_FINAL_EVENT_FIRST):
            await self._emit(event_type, data)
            self._finish(state)
        else:
            self._finish(state)
            await self._emit(event_type, data)

    async def _release(self) -> None:
        """Release what the run keeps outside Temporal when it ends; repository runs remove their worktrees."""

    def _finish(self, state: RunState) -> None:
        self._terminal = state
        self._completed_at = workflow.now()
        self._touch()

    async def _finish_failed(self, code: str, message: str) -> None:
        self._error = RunError(code=code, message=message)
        for gate in self._gates.values():
            if gate.status == GateStatus.PENDING and code == ErrorCode.GATE_TIMEOUT:
                gate.status = GateStatus.TIMED_OUT
        await self._close(
            RunState.FAILED, "run.failed", {"run_id": self._run_id, "error_code": code, "message": message}
        )
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _checkpoint(self) -> None:
        """Block while paused; pause when the run's time budget is spent."""
        left = self._budget_left_s()
        if left is not None and left < 0 and not self._paused:
            await self._pause("time_limit", "run")
        if self._paused:
            await self._events.flush()  # nothing may stay held while the run waits for a person
        await workflow.wait_condition(lambda: not self._paused)

    def _budget_left_s(self) -> float | None:
        """Seconds left of the run's time budget (negative once overspent), or None without one."""
        if self._time_budget_s is None:
            return None
        return self._time_budget_s - (workflow.now() - self._created_at).total_seconds()

    async def _within_budget(self, handle: workflow.ActivityHandle[T], remaining_s: float) -> tuple[bool, T | None]:
        """Await a step's activity until the time budget is spent; then cancel it and wait until it stopped.

        Returns:
            ``(True, None)`` when the budget stopped the step, else ``(False, result)``.

        Raises:
            ActivityError: The activity failed (before the budget ran out or while being cancelled).
        """
        done, _ = await workflow.wait([handle], timeout=remaining_s)
        if handle in done:
            finished: T = handle.result()
            return False, finished
        handle.cancel()
        try:
            # It may have finished just before the cancellation reached it: then its result counts.
            late: T = await handle
            return False, late
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                return True, None
            raise

    async def _step(
        self,
        name: str,
        activity: Callable[[Any, A], Awaitable[T]],
        arg: A,
        *,
        timeout_s: float,
        attempts: int,
        heartbeat_s: float | None = None,
        pause_on: frozenset[str] = frozenset(),
        summary: str | None = None,
    ) -> T:
        """Run one step as an activity, honouring pause, budget and the step's retry policy.

        A transient failure that exhausts the attempts pauses the run (``budget_exceeded``) and the step is tried
        again after resume; a permanent failure whose code is in ``pause_on`` pauses too (e.g. a merge conflict a
        person must resolve); any other permanent failure ends the run.
        """
        while True:
            await self._checkpoint()
            self._current_step = name
            self._touch()
            beat = heartbeat_s or self._heartbeat_s
            options: dict[str, Any] = {
                "start_to_close_timeout": timedelta(seconds=timeout_s),
                "heartbeat_timeout": timedelta(seconds=beat) if beat else None,
                "retry_policy": retry_policy(attempts + self._extra_attempts),
                # Shown as the activity's title in the Web UI's event history.
                "summary": summary or name,
            }
            remaining = self._budget_left_s()
            try:
                if remaining is not None and workflow.patched(PATCH_BUDGET_STOPS_STEP):
                    stopped, result = await self._within_budget(
                        workflow.start_activity_method(
                            activity,
                            arg,
                            # The run pauses only once the step has really stopped (its commands killed).
                            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                            **options,
                        ),
                        max(0.0, remaining),
                    )
                    if stopped:
                        # The step is tried again from the start once a person raised the budget and resumed.
                        await self._pause("time_limit", "run")
                        continue
                    return cast(T, result)
                finished: T = await workflow.execute_activity_method(activity, arg, **options)
                return finished
            except ActivityError as err:
                if events_not_recorded(err):
                    # The step never ran: record its events (as long as the database takes), then run it again.
                    await self._events.flush()
                    continue
                outcome = classify_activity_error(name, err)
                if isinstance(outcome, StepExhausted):
                    await self._pause("budget_exceeded", outcome.message)
                elif outcome.code in pause_on:
                    await self._pause(outcome.code.lower(), outcome.message)
                else:
                    raise outcome from None

    # ----- gates -------------------------------------------------------------------------------------------

    async def _pause(self, reason: str, requested_by: str, *, details: dict[str, Any] | None = None) -> None:
        if self._paused or self._terminal is not None:
            return
        self._paused = True
        self._paused_reason = reason
        self._touch()
        # details: the figures of a model budget pause (workflows.model_steps); no other pause has any.
        await self._emit("run.paused", {"run_id": self._run_id, "reason": reason, **(details or {})})
        # Recorded at once (with what is held before it): a paused run may wait long, and pause_run answers after.
        await self._events.flush()

    async def _resume(self) -> None:
        if not self._paused or self._terminal is not None:
            return
        self._paused = False
        self._paused_reason = None
        self._touch()
        await self._emit("run.resumed", {"run_id": self._run_id})
        await self._events.flush()
