"""The N-of-M rules of workflows/gates.py, as pure functions: who counts, when a gate passes, what is reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError

from quantapilot.approvals import required_approvals_issue
from quantapilot.models import GateDecisionInput, GateRecord, GateStatus, approval_progress_text
from workflows.gates import (
    approval_event,
    approving_subjects,
    check_decider,
    check_decision,
    partial_approvals,
    record_decision,
)

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def gate(required: int = 2, approvers: list[str] | None = None) -> GateRecord:
    return GateRecord(name="anchor", requested_at=T0, required_approvals=required, approvers=approvers or [])


def decide(subject: str, approved: bool = True, reason: str | None = None, source: str = "api") -> GateDecisionInput:
    return GateDecisionInput.model_validate(
        {"gate": "anchor", "approved": approved, "reason": reason, "decided_by": subject, "source": source}
    )


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_gate_rules_first_of_two_approvals_is_recorded_and_the_gate_waits() -> None:
    before = gate(2)
    after = record_decision(before, decide("alice", reason="docs fine"), at=at(5))
    assert after.status == GateStatus.PENDING
    assert [(a.subject, a.approved, a.at, a.reason, a.via) for a in after.approvals] == [
        ("alice", True, at(5), "docs fine", "api")
    ]
    assert after.approval_progress == "1 of 2 approvals"
    assert after.decided_by is None and after.decided_at is None
    assert before.approvals == [] and before.status == GateStatus.PENDING  # the input is left as it was


def test_gate_rules_second_distinct_approval_passes_the_gate() -> None:
    one = record_decision(gate(2), decide("alice"), at=at(1))
    two = record_decision(one, decide("bob", reason="agreed", source="cli"), at=at(2))
    assert two.status == GateStatus.APPROVED
    assert (two.decided_by, two.decided_at, two.reason, two.source) == ("bob", at(2), "agreed", "cli")
    assert approving_subjects(two) == ["alice", "bob"]
    assert two.approval_progress is None


def test_gate_rules_the_same_subject_twice_counts_once() -> None:
    one = record_decision(gate(2), decide("alice"), at=at(1))
    again = record_decision(one, decide("alice", reason="still fine"), at=at(2))
    assert again == one
    assert again.status == GateStatus.PENDING
    assert len(again.approvals) == 1


def test_gate_rules_one_rejection_rejects_even_after_approvals() -> None:
    one = record_decision(gate(3), decide("alice"), at=at(1))
    rejected = record_decision(one, decide("bob", approved=False, reason="wrong scope"), at=at(2))
    assert rejected.status == GateStatus.REJECTED
    assert (rejected.decided_by, rejected.reason) == ("bob", "wrong scope")
    assert [(a.subject, a.approved) for a in rejected.approvals] == [("alice", True), ("bob", False)]
    # A subject that approved may still reject (GitLab: an approval can be revoked; here it rejects the gate).
    revoked = record_decision(one, decide("alice", approved=False), at=at(3))
    assert revoked.status == GateStatus.REJECTED


def test_gate_rules_one_required_approval_decides_at_once() -> None:
    approved = record_decision(gate(1), decide("alice", reason="ok"), at=at(1))
    assert (approved.status, approved.decided_by, approved.reason) == (GateStatus.APPROVED, "alice", "ok")
    assert partial_approvals(approved) == []
    rejected = record_decision(gate(1), decide("alice", approved=False), at=at(1))
    assert rejected.status == GateStatus.REJECTED


def test_gate_rules_a_decided_gate_does_not_change() -> None:
    done = record_decision(record_decision(gate(2), decide("a"), at=at(1)), decide("b"), at=at(2))
    assert record_decision(done, decide("c", approved=False), at=at(3)) == done


def test_gate_rules_partial_approvals_exclude_the_deciding_one() -> None:
    one = record_decision(gate(3), decide("a"), at=at(1))
    two = record_decision(one, decide("b"), at=at(2))
    assert [r.subject for r in partial_approvals(two)] == ["a", "b"]
    three = record_decision(two, decide("c"), at=at(3))
    assert three.status == GateStatus.APPROVED
    assert [r.subject for r in partial_approvals(three)] == ["a", "b"]
    assert approval_event("rr_1", three, 1) == {
        "run_id": "rr_1",
        "gate": "anchor",
        "subject": "b",
        "approvals": 2,
        "required": 3,
    }


def test_gate_rules_a_decision_after_the_gate_passed_conflicts_when_it_differs() -> None:
    done = record_decision(record_decision(gate(2), decide("a"), at=at(1)), decide("b"), at=at(2))
    check_decision(done, decide("c"), run_closed=False, decider=None)  # the same outcome again: a no-op
    with pytest.raises(ApplicationError) as err:
        check_decision(done, decide("c", approved=False), run_closed=False, decider=None)
    assert err.value.type == "CONFLICT"


def test_gate_rules_self_approval_applies_to_each_approver() -> None:
    pending = record_decision(gate(2, ["alice", "bob", "carol"]), decide("bob"), at=at(1))

    def decider(g: GateRecord, d: GateDecisionInput) -> None:
        check_decider(g, d, self_approval_default=False, trigger_token="tok_alice", triggered_by="alice")

    with pytest.raises(ApplicationError) as err:
        check_decision(pending, decide("alice"), run_closed=False, decider=decider)
    assert err.value.type == "AUTHORIZATION_ERROR"
    with pytest.raises(ApplicationError) as outsider:
        check_decision(pending, decide("mallory"), run_closed=False, decider=decider)
    assert "not an approver" in outsider.value.message
    check_decision(pending, decide("carol"), run_closed=False, decider=decider)


@pytest.mark.parametrize(
    ("required", "approvers", "ok"),
    [
        (2, ["alice", "bob", "carol"], True),
        (3, ["alice", "bob", "carol"], True),
        (4, ["alice", "bob", "carol"], False),
        (2, ["alice", "alice"], False),  # a name listed twice is one approver
        (20, ["alice", "scope:gates:decide"], True),  # a scope admits any number of holders
        (5, [], True),  # no list: anyone allowed to decide gates
    ],
)
def test_gate_rules_required_approvals_must_be_reachable(required: int, approvers: list[str], ok: bool) -> None:
    issue = required_approvals_issue(required, approvers)
    assert (issue is None) is ok, issue


def test_gate_rules_progress_text() -> None:
    assert approval_progress_text(1, 2) == "1 of 2 approvals"
    assert approval_progress_text(0, 1) == "0 of 1 approval"
