"""How `qp status` and `qp approve` show a gate that needs several approvals, or has a deadline."""

from __future__ import annotations

from quantapilot.cli.client import console
from quantapilot.cli.view import gate_state, print_status


def test_gate_view_partial_approvals_show_progress() -> None:
    assert gate_state({"status": "pending", "approval_progress": "1 of 2 approvals"}) == "pending (1 of 2 approvals)"
    assert gate_state({"status": "approved", "approval_progress": None}) == "approved"
    assert gate_state({"status": "pending"}) == "pending"


def test_gate_view_status_table_says_one_of_two() -> None:
    status = {
        "run_id": "rr_1",
        "state": "waiting_for_gate",
        "current_step": "gate:anchor",
        "gates": [{"name": "anchor", "status": "pending", "approval_progress": "1 of 2 approvals"}],
        "milestones": [],
    }
    with console.capture() as captured:
        print_status(status, as_json=False)
    assert "1 of 2 approvals" in captured.get()


def test_gate_view_status_says_decide_by_the_deadline() -> None:
    gate = {"name": "anchor", "status": "pending", "deadline": "2026-12-03T08:30:00.250000Z"}
    status = {"run_id": "rr_1", "state": "waiting_for_gate", "gates": [gate], "milestones": []}
    with console.capture() as captured:
        print_status(status, as_json=False)
    assert "gate anchor: decide by 2026-12-03 08:30:00 UTC" in captured.get()
    decided = {**gate, "status": "approved", "decided_by": "carol"}
    with console.capture() as captured:
        print_status({**status, "state": "completed", "gates": [decided]}, as_json=False)
    assert "decide by" not in captured.get()
