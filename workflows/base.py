"""The part every run workflow shares: state, gates, pause/resume, budget, status query and search attributes."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.common import RunFailure
from workflows.gates import (
    DeciderCheck,
    approval_event,
    check_decider,
    check_decider_before_floor,
    check_decision,
    partial_approvals,
    record_decision,
)
from workflows.run_core import RunCore

with workflow.unsafe.imports_passed_through():
    from quantapilot.errors import ErrorCode
    from quantapilot.models import (
        BudgetInput,
        GateDecisionInput,
        GateRecord,
        GateRequestedData,
        GateStatus,
        PauseInput,
        ResumeInput,
        RunStatus,
        approval_progress_text,
    )

T = TypeVar("T")
A = TypeVar("A")

# Workflow versioning (workflow.patched): ids of behaviour changes that alter the command sequence (those of the
# core, PATCH_FINAL_EVENT_FIRST and PATCH_BUDGET_STOPS_STEP, are in workflows.run_core).
# Decisions sent as signals claiming an API source follow the self-approval floor and compare token subjects.
PATCH_SELF_APPROVAL_FLOOR = "self-approval-floor-by-subject"
# Gates keep each decision and may need several approvers (N-of-M); before it one decision decided every gate.
PATCH_GATE_N_OF_M = "gate-n-of-m"
# gate.requested of a gate with a timeout carries timeout_s and deadline; before it, only run_id, gate, description.
PATCH_GATE_TIMEOUT_IN_EVENT = "gate-timeout-in-event"


class RunWorkflowBase(RunCore):
    """Shared behaviour of repository and lifecycle runs.

    Subclasses call :meth:`_init_run` from their ``@workflow.init`` and run their pipeline through
    :meth:`_guarded`; steps go through :meth:`_step` and gates through :meth:`_gate`.
    """

    async def _gate(
        self,
        name: str,
        description: str,
        *,
        timeout_s: float | None = None,
        approvers: list[str] | None = None,
        allow_self_approval: bool | None = None,
        required_approvals: int = 1,
    ) -> GateRecord:
        """Wait at a gate until a person decides (or, N-of-M, enough people); rejection or timeout ends the run."""
        await self._checkpoint()
        # Runs that reached this gate before N-of-M replay the one-decision gate (no approvals kept).
        n_of_m = workflow.patched(PATCH_GATE_N_OF_M)
        required = required_approvals if n_of_m else 1
        requested_at = workflow.now()
        deadline = requested_at + timedelta(seconds=timeout_s) if timeout_s else None
        gate = GateRecord(
            name=name,
            description=description,
            requested_at=requested_at,
            approvers=approvers or [],
            allow_self_approval=self._self_approval_default if allow_self_approval is None else allow_self_approval,
            required_approvals=required,
            approval_progress=approval_progress_text(0, required) if required > 1 else None,
            deadline=deadline,
        )
        self._gates[name] = gate
        if n_of_m:
            self._n_of_m_gates.add(name)
        self._current_step = f"gate:{name}"
        self._touch()
        requested = GateRequestedData(run_id=self._run_id, gate=name, description=description)
        # Only a gate with a timeout asks for the patch, so runs whose gates have none record exactly what they did.
        in_event = deadline is not None and workflow.patched(PATCH_GATE_TIMEOUT_IN_EVENT)
        if in_event:
            requested = requested.model_copy(update={"timeout_s": timeout_s, "deadline": deadline})
        await self._emit("gate.requested", requested.model_dump(mode="json"))
        # The run waits for a person now: what it holds (this request and the events before it) is recorded first.
        await self._events.flush()
        try:
            if n_of_m:
                # The deadline the event announced is the one kept (before the patch: counted after the event).
                gate = await self._await_approvals(name, timeout_s, deadline=deadline if in_event else None)
            else:
                await workflow.wait_condition(
                    lambda: gate.status != GateStatus.PENDING,
                    timeout=timedelta(seconds=timeout_s) if timeout_s else None,
                )
        except TimeoutError:
            self._gates[name].status = GateStatus.TIMED_OUT
            raise RunFailure(ErrorCode.GATE_TIMEOUT, f"gate {name} was not decided within {timeout_s:g}s") from None
        self._touch()
        await self._emit(
            "gate.decided",
            {"run_id": self._run_id, "gate": name, "approved": gate.approved, "reason": gate.reason},
        )
        if gate.status == GateStatus.REJECTED:
            raise RunFailure(ErrorCode.GATE_REJECTED, f"gate {name} rejected: {gate.reason or 'no reason given'}")
        return gate

    async def _await_approvals(
        self, name: str, timeout_s: float | None, *, deadline: datetime | None = None
    ) -> GateRecord:
        """Wait until the gate is decided, reporting each approval that does not decide it yet.

        Decisions replace the gate's record (:func:`~workflows.gates.record_decision`), so the gate is read from
        ``self._gates`` each time. A gate that one decision decides waits exactly as before: one wait, one timer.

        Raises:
            TimeoutError: ``timeout_s`` passed (counted from the request, not from the last approval).
        """
        if deadline is None and timeout_s:
            deadline = workflow.now() + timedelta(seconds=timeout_s)
        reported = 0
        while True:
            # Emitting awaits an activity and approvals may arrive meanwhile: report until none is left.
            while reported < len(partial_approvals(self._gates[name])):
                await self._emit("gate.approval_recorded", approval_event(self._run_id, self._gates[name], reported))
                reported += 1
            gate = self._gates[name]
            if gate.status != GateStatus.PENDING:
                return gate
            remaining = (deadline - workflow.now()) if deadline is not None else None
            if remaining is not None and remaining <= timedelta(0):
                raise TimeoutError
            await self._events.flush()  # the approvals reported so far, before waiting for the next
            await workflow.wait_condition(functools.partial(self._gate_moved, name, reported), timeout=remaining)

    def _gate_moved(self, name: str, reported: int) -> bool:
        """Whether the gate was decided or has approvals not yet reported."""
        gate = self._gates[name]
        return gate.status != GateStatus.PENDING or len(partial_approvals(gate)) > reported

    def _check_decision(self, decision: GateDecisionInput, *, decider: DeciderCheck | None) -> GateRecord:
        """Validate a decision (:func:`~workflows.gates.check_decision`); return the gate it applies to."""
        gate = self._gates.get(decision.gate)
        check_decision(gate, decision, run_closed=self._terminal is not None, decider=decider)
        assert gate is not None
        return gate

    def _check_decider(self, gate: GateRecord, decision: GateDecisionInput) -> None:
        """Apply the gate's approver list and the self-approval rule to a decision from the API."""
        check_decider(
            gate,
            decision,
            self_approval_default=self._self_approval_default,
            trigger_token=self._trigger_token,
            triggered_by=self._triggered_by,
        )

    def _check_decider_before_floor(self, gate: GateRecord, decision: GateDecisionInput) -> None:
        """The rule of runs that decided by signal before :data:`PATCH_SELF_APPROVAL_FLOOR`: token ids only."""
        check_decider_before_floor(gate, decision, trigger_token=self._trigger_token)

    def _apply_decision(self, decision: GateDecisionInput, *, decider: DeciderCheck | None) -> GateRecord:
        gate = self._check_decision(decision, decider=decider)
        if decision.gate in self._n_of_m_gates:
            if gate.status == GateStatus.PENDING:
                updated = record_decision(gate, decision, at=workflow.now())
                if updated != gate:
                    self._gates[decision.gate] = updated
                    self._touch()
                return updated.model_copy()
            return gate.model_copy()
        if gate.status == GateStatus.PENDING:
            gate.status = GateStatus.APPROVED if decision.approved else GateStatus.REJECTED
            gate.decided_at = workflow.now()
            gate.decided_by = decision.decided_by
            gate.source = decision.source
            gate.reason = decision.reason
            self._touch()
        return gate.model_copy()

    @workflow.signal(name="decide_gate")
    def decide_gate(self, decision: GateDecisionInput) -> None:
        """Decide a gate (from the Temporal Web UI or ``temporal workflow signal``); invalid decisions are ignored."""
        decider: DeciderCheck | None = None  # Temporal access is operator authority (docs/SECURITY.md)
        if decision.source != "signal":
            # A signal claiming to come from the API: the API's rules, as they stood when the run took the signal.
            patched = workflow.patched(PATCH_SELF_APPROVAL_FLOOR)
            decider = self._check_decider if patched else self._check_decider_before_floor
        try:
            self._apply_decision(decision, decider=decider)
        except ApplicationError as err:
            workflow.logger.warning("gate decision ignored: %s", err.message, extra=self._log_context())

    def _log_context(self) -> dict[str, str]:
        """The run context for a workflow log line (the logger itself adds only what the workflow id says)."""
        values = {"correlation_id": self._events.correlation_id, "traceId": self._events.trace_id}
        return {key: value for key, value in values.items() if value}

    @workflow.update(name="submit_gate_decision")
    def submit_gate_decision(self, decision: GateDecisionInput) -> GateRecord:
        """Decide a gate and learn at once whether the decision was accepted (HTTP API, CLI)."""
        # Who may decide was settled by the validator; a replay (which runs no validator) accepts what the history
        # accepted, whatever the rules say today.
        return self._apply_decision(decision, decider=None)

    @submit_gate_decision.validator
    def _validate_gate_decision(self, decision: GateDecisionInput) -> None:
        self._check_decision(decision, decider=None if decision.source == "signal" else self._check_decider)

    # ----- pause / resume / budget -------------------------------------------------------------------------

    def _check_not_terminal(self) -> None:
        if self._terminal is not None:
            raise ApplicationError(f"run is {self._terminal.value}", type=ErrorCode.CONFLICT)

    @workflow.signal(name="pause")
    async def pause(self, request: PauseInput) -> None:
        """Pause the run: no new step starts until it is resumed."""
        await self._pause(request.reason, request.requested_by)

    @workflow.signal(name="resume")
    async def resume(self, request: ResumeInput) -> None:
        """Resume a paused run."""
        await self._resume()

    @workflow.update(name="pause_run")
    async def pause_run(self, request: PauseInput) -> RunStatus:
        """Pause and return the new status."""
        await self._pause(request.reason, request.requested_by)
        return self._status()

    @pause_run.validator
    def _validate_pause(self, request: PauseInput) -> None:
        self._check_not_terminal()

    @workflow.update(name="resume_run")
    async def resume_run(self, request: ResumeInput) -> RunStatus:
        """Resume and return the new status."""
        await self._resume()
        return self._status()

    @resume_run.validator
    def _validate_resume(self, request: ResumeInput) -> None:
        self._check_not_terminal()

    @workflow.update(name="raise_budget")
    def raise_budget(self, request: BudgetInput) -> RunStatus:
        """Raise the time budget and/or the attempts of every step (used after a budget pause)."""
        if request.time_budget_s is not None:
            self._time_budget_s = request.time_budget_s
        if request.extra_attempts is not None:
            self._extra_attempts += request.extra_attempts
        if request.tokens is not None or request.usd is not None:
            self._raise_model_budget(request)
        self._touch()
        return self._status()

    def _raise_model_budget(self, request: BudgetInput) -> None:
        """Grant more model tokens or USD; runs that call no model (lifecycle runs) only keep nothing."""

    @raise_budget.validator
    def _validate_budget(self, request: BudgetInput) -> None:
        self._check_not_terminal()
