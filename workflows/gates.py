"""Who may decide a gate: the approver list and the self-approval rules, as the run workflows apply them.

Pure functions of the gate, the decision and how the run was triggered, so the rules read in one place; they run
inside workflows (deterministic, no I/O), and a refused decision raises ``ApplicationError`` (an update's answer).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from quantapilot.errors import ErrorCode
    from quantapilot.models import ApprovalRecord, GateDecisionInput, GateRecord, GateStatus, approval_progress_text

# Decides whether the sender of a decision may decide a pending gate; raises ApplicationError when not.
DeciderCheck = Callable[[GateRecord, GateDecisionInput], None]


def check_decision(
    gate: GateRecord | None, decision: GateDecisionInput, *, run_closed: bool, decider: DeciderCheck | None
) -> None:
    """Validate a decision on a gate of a run.

    Args:
        gate: The gate the decision names (None: the run has no such gate).
        decision: The decision.
        run_closed: Whether the run has ended (its pending gates can no longer be decided).
        decider: Who may decide a pending gate (:func:`check_decider`); None: anyone (operators, replays).

    Raises:
        ApplicationError: ``CONFLICT`` when the gate is not pending or was decided otherwise, or
            ``AUTHORIZATION_ERROR`` when the decider may not decide this gate.
    """
    if gate is None or (run_closed and gate.status == GateStatus.PENDING):
        raise ApplicationError(f"gate {decision.gate} is not pending", type=ErrorCode.CONFLICT)
    if gate.status in (GateStatus.APPROVED, GateStatus.REJECTED):
        if gate.approved == decision.approved:
            return  # the same decision again is a no-op
        raise ApplicationError(
            f"gate {decision.gate} was already {gate.status}", type=ErrorCode.CONFLICT, non_retryable=True
        )
    if gate.status != GateStatus.PENDING:
        raise ApplicationError(f"gate {decision.gate} is {gate.status}", type=ErrorCode.CONFLICT)
    if decider is not None:
        decider(gate, decision)


def check_approvers(gate: GateRecord, decision: GateDecisionInput) -> None:
    """Refuse a decider who is not on the gate's approver list (by name or by a ``scope:<scope>`` entry)."""
    if gate.approvers:
        allowed = decision.decided_by in gate.approvers or any(
            f"scope:{scope}" in gate.approvers for scope in decision.decider_scopes
        )
        if not allowed:
            raise ApplicationError(
                f"{decision.decided_by} is not an approver of gate {decision.gate}",
                type=ErrorCode.AUTHORIZATION_ERROR,
            )


def is_trigger(decision: GateDecisionInput, *, trigger_token: str, triggered_by: str) -> bool:
    """Tell whether the decider is who triggered the run: the same subject, whichever of its tokens it uses."""
    same_token = bool(decision.decided_by_token) and decision.decided_by_token == trigger_token
    return same_token or decision.decided_by == triggered_by


def check_decider(
    gate: GateRecord, decision: GateDecisionInput, *, self_approval_default: bool, trigger_token: str, triggered_by: str
) -> None:
    """Apply the gate's approver list and the self-approval rule to a decision from the API.

    Args:
        gate: The pending gate.
        decision: The decision.
        self_approval_default: The run's ``QP_ALLOW_SELF_APPROVAL``: a floor no gate setting lifts.
        trigger_token: Token id that triggered the run.
        triggered_by: Subject that triggered the run.
    """
    check_approvers(gate, decision)
    # The floor: a gate may narrow who decides, never allow what the deployment forbade.
    may_self_approve = gate.allow_self_approval and self_approval_default
    if not may_self_approve and is_trigger(decision, trigger_token=trigger_token, triggered_by=triggered_by):
        raise ApplicationError(
            f"the subject that triggered the run may not decide gate {decision.gate}",
            type=ErrorCode.AUTHORIZATION_ERROR,
        )


def check_decider_before_floor(gate: GateRecord, decision: GateDecisionInput, *, trigger_token: str) -> None:
    """The rule of runs that decided by signal before the self-approval floor: token ids only."""
    check_approvers(gate, decision)
    if not gate.allow_self_approval and decision.decided_by_token and decision.decided_by_token == trigger_token:
        raise ApplicationError(
            f"the token that triggered the run may not decide gate {decision.gate}",
            type=ErrorCode.AUTHORIZATION_ERROR,
        )


# ----- N-of-M approvals ----------------------------------------------------------------------------------------


def approving_subjects(gate: GateRecord) -> list[str]:
    """The distinct subjects that approved the gate, in the order of their first approval."""
    seen: list[str] = []
    for record in gate.approvals:
        if record.approved and record.subject not in seen:
            seen.append(record.subject)
    return seen


def record_decision(gate: GateRecord, decision: GateDecisionInput, *, at: datetime) -> GateRecord:
    """The gate after one more decision (the N-of-M rules); the decision has passed :func:`check_decision`.

    Each decision is kept in ``approvals`` (subject, time, reason, how it arrived). The gate passes once
    ``required_approvals`` distinct subjects approved; one rejection rejects it (GitLab's rule), also from a subject
    that approved before; the same subject approving again counts once and changes nothing. With
    ``required_approvals`` 1 the first decision decides, as it always did.

    Args:
        gate: The gate as it stands (pending, or decided: then nothing changes).
        decision: The accepted decision.
        at: When the run took the decision (``workflow.now()``).

    Returns:
        A new record; ``gate`` itself is left as it was.
    """
    if gate.status != GateStatus.PENDING:
        return gate.model_copy()
    if decision.approved and decision.decided_by in approving_subjects(gate):
        return gate.model_copy()  # the same subject twice counts once
    record = ApprovalRecord(
        subject=decision.decided_by, approved=decision.approved, at=at, reason=decision.reason, via=decision.source
    )
    updated = gate.model_copy(update={"approvals": [*gate.approvals, record]})
    approvals = len(approving_subjects(updated))
    if not decision.approved:
        status = GateStatus.REJECTED
    elif approvals >= gate.required_approvals:
        status = GateStatus.APPROVED
    else:
        updated.approval_progress = approval_progress_text(approvals, gate.required_approvals)
        return updated
    updated.status = status
    updated.decided_at = at
    updated.decided_by = decision.decided_by
    updated.source = decision.source
    updated.reason = decision.reason
    updated.approval_progress = None
    return updated


def partial_approvals(gate: GateRecord) -> list[ApprovalRecord]:
    """The approvals that did not decide the gate, each reported once as ``gate.approval_recorded``.

    A subject appears at most once among them (:func:`record_decision` keeps no repeated approval), so the
    i-th of them is the (i+1)-th distinct approval. The decision that decided the gate is the last record; it is
    reported by ``gate.decided``.
    """
    records = gate.approvals if gate.status == GateStatus.PENDING else gate.approvals[:-1]
    return [record for record in records if record.approved]


def approval_event(run_id: str, gate: GateRecord, index: int) -> dict[str, object]:
    """The data of ``gate.approval_recorded`` for the ``index``-th partial approval (:func:`partial_approvals`)."""
    record = partial_approvals(gate)[index]
    return {
        "run_id": run_id,
        "gate": gate.name,
        "subject": record.subject,
        "approvals": index + 1,
        "required": gate.required_approvals,
    }
