"""``qp approve`` and ``qp reject``: decide a run's pending gate through the HTTP API."""

from __future__ import annotations

import click

from quantapilot.cli.client import api_client, console
from quantapilot.cli.view import gate_state


def _decide(ctx: click.Context, run_id: str, gate: str, approved: bool, reason: str | None) -> None:
    record = api_client(ctx).call(
        "POST", f"/v1/runs/{run_id}/gates/{gate}/decision", {"approved": approved, "reason": reason}
    )
    if record.get("approval_progress"):
        # An approval of a gate that needs several: recorded, the gate still waits for the others.
        console.print(f"gate {record['name']}: {gate_state(record)}")
        return
    console.print(f"gate {record['name']}: {record['status']} by {record.get('decided_by')}")


@click.command()
@click.argument("run_id")
@click.argument("gate")
@click.option("--reason", default=None)
@click.pass_context
def approve(ctx: click.Context, run_id: str, gate: str, reason: str | None) -> None:
    """Approve a pending gate."""
    _decide(ctx, run_id, gate, True, reason)


@click.command()
@click.argument("run_id")
@click.argument("gate")
@click.option("--reason", required=True)
@click.pass_context
def reject(ctx: click.Context, run_id: str, gate: str, reason: str) -> None:
    """Reject a pending gate (ends the run)."""
    _decide(ctx, run_id, gate, False, reason)


COMMANDS = (approve, reject)
