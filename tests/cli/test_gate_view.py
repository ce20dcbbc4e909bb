"""How `qp status` and `qp approve` show a gate that needs several approvals."""

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
