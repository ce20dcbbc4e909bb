"""How the CLI shows a run: its status as a summary, and the live view of ``--follow``."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from quantapilot.cli.client import ApiClient, console
from quantapilot.runs.budget import RunUsage, summary_line

# Exit status of --follow by final state; 2 stays click's usage error.
FOLLOW_EXIT = {"completed": 0, "failed": 1, "cancelled": 3}
FINAL_EVENTS = {"run.completed", "run.failed", "run.cancelled"}


def gate_state(gate: dict[str, Any]) -> str:
    """A gate's status, with how far it is while it needs several approvals: ``pending (1 of 2 approvals)``."""
    progress = gate.get("approval_progress")
    return f"{gate['status']} ({progress})" if progress else str(gate["status"])


def deadline_text(deadline: str) -> str:
    """A gate's deadline as the API serves it (RFC 3339), for people: ``2026-12-03 08:30:00 UTC``."""
    try:
        instant = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
    except ValueError:
        return deadline
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_status(status: dict[str, Any], as_json: bool) -> None:
    """Print a run's status: JSON, or a line with its state and step, its gates and its milestones."""
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    console.print(
        f"[bold]{status['run_id']}[/bold]  state=[cyan]{status['state']}[/cyan]  step={status.get('current_step')}"
    )
    if status.get("paused_reason"):
        console.print(f"paused: {status['paused_reason']}", markup=False, highlight=False)
    if status.get("error"):
        console.print(f"[red]{status['error']['code']}[/red]: {status['error']['message']}")
    if status.get("gates"):
        table = Table("gate", "status", "decided by", "reason")
        for gate in status["gates"]:
            table.add_row(gate["name"], gate_state(gate), gate.get("decided_by") or "", gate.get("reason") or "")
        console.print(table)
        for gate in status["gates"]:
            if gate["status"] == "pending":
                if gate.get("deadline"):
                    console.print(
                        f"gate {gate['name']}: decide by {deadline_text(gate['deadline'])} (it times out then)"
                    )
                console.print(f"approve with: qp approve {status['run_id']} {gate['name']} --reason '...'")
    if status.get("usage"):
        # Tokens and cost spent against the run's budget (the same line the Temporal Web UI shows).
        # Fields a newer server adds are left out rather than refused.
        usage = RunUsage.model_validate({k: v for k, v in status["usage"].items() if k in RunUsage.model_fields})
        console.print(summary_line(usage), markup=False, highlight=False)
    for milestone in status.get("milestones", []):
        console.print(f"  milestone {milestone['id']} {milestone['status']}: {milestone['title']}")
        for step in milestone.get("steps") or []:
            if step_failed(step):
                print_failed_step(step)


#: Lines of a failed step's output tail shown by ``qp status`` (the API keeps the whole tail; --json prints it).
TAIL_LINES = 20


def step_failed(step: dict[str, Any]) -> bool:
    """Whether a milestone step failed: it timed out or exited with a status other than 0."""
    return bool(step.get("timed_out")) or step.get("exit_code") not in (0, None)


def print_failed_step(step: dict[str, Any]) -> None:
    """Print a failed step: its name, exit code (or timeout), attempt, and the last lines of its output."""
    how = "timed out" if step.get("timed_out") else f"exit code {step.get('exit_code')}"
    attempt = f", attempt {step['attempt']}" if step.get("attempt", 1) > 1 else ""
    console.print(f"    step [bold]{step['name']}[/bold] failed: [red]{how}[/red]{attempt}", highlight=False)
    if step.get("command"):
        console.print(f"      $ {step['command']}", markup=False, highlight=False)
    tail = (step.get("output_tail") or "").rstrip("\n").splitlines()[-TAIL_LINES:]
    if tail:
        console.print(f"      output (last {len(tail)} lines):", highlight=False)
    for line in tail:
        # Repository output: printed as text, never as rich markup, and on one line each.
        console.print(f"      | {line}", markup=False, highlight=False, soft_wrap=True)


def _describe_event(event: dict[str, Any]) -> str:
    data = {k: v for k, v in event.get("data", {}).items() if k != "run_id"}
    detail = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
    return f"{event['created_at'][11:19]} #{event['seq']:<3} {event['type']:<24} {detail}".rstrip()


def _status_lines(status: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    """What changed between two polls, as lines for a person (steps, milestones, gates, state)."""
    before = previous or {}
    lines: list[str] = []
    if status["state"] != before.get("state"):
        lines.append(
            f"state: [cyan]{status['state']}[/cyan]"
            + (f" ({status['paused_reason']})" if status.get("paused_reason") else "")
        )
    if status.get("current_step") and status.get("current_step") != before.get("current_step"):
        lines.append(f"step: {status['current_step']}")
    milestones = status.get("milestones") or []
    old = {m["id"]: m["status"] for m in before.get("milestones") or []}
    for m in milestones:
        if old.get(m["id"]) != m["status"]:
            done = sum(x["status"] == "completed" for x in milestones)
            lines.append(f"milestone {m['id']} {m['status']}: {m['title']}  [{done}/{len(milestones)} completed]")
    was_pending = {g["name"] for g in before.get("gates") or [] if g["status"] == "pending"}
    for gate in status.get("gates") or []:
        if gate["status"] == "pending" and gate["name"] not in was_pending:
            lines += [
                f"[yellow]waiting at gate {gate['name']}[/yellow]: {gate['description']}",
                f"  approve: qp approve {status['run_id']} {gate['name']} --reason '...'",
                f"  reject:  qp reject {status['run_id']} {gate['name']} --reason '...'",
            ]
        elif gate["name"] in was_pending and gate["status"] != "pending":
            lines.append(f"gate {gate['name']}: {gate['status']} by {gate.get('decided_by') or '-'}")
    return lines


def follow(client: ApiClient, run_id: str, *, as_json: bool, interval: float, after: int = 0) -> int:
    """Poll the run's events and status until it ends; print what changes; return the exit status.

    Args:
        client: Client of the API.
        run_id: The run to follow.
        as_json: Print JSON lines tagged event/status/final instead of lines for a person.
        interval: Seconds between polls.
        after: Only events after this sequence number.

    Returns:
        0 completed, 1 failed, 3 cancelled, 130 interrupted (Ctrl-C).
    """
    previous: dict[str, Any] | None = None
    final_seen = False
    ended_at: float | None = None
    try:
        while True:
            page = client.call("GET", f"/v1/runs/{run_id}/events?after={after}")
            for event in page["events"]:
                final_seen = final_seen or event["type"] in FINAL_EVENTS
                if as_json:
                    click.echo(json.dumps({"kind": "event", "event": event}))
                else:
                    # soft_wrap: a piped live view keeps one line per event instead of wrapping at 80 columns.
                    console.print(_describe_event(event), highlight=False, soft_wrap=True)
            after = page["next_after"]
            status = client.call("GET", f"/v1/runs/{run_id}")
            if as_json:
                if previous is None or {k: v for k, v in status.items() if k != "updated_at"} != {
                    k: v for k, v in previous.items() if k != "updated_at"
                }:
                    click.echo(json.dumps({"kind": "status", "status": status}))
            else:
                for line in _status_lines(status, previous):
                    console.print(line, highlight=False, soft_wrap=True)
            previous = status
            if status["state"] in FOLLOW_EXIT:
                # The state turns final a moment before the last event is stored: wait for it, briefly.
                ended_at = ended_at or time.monotonic()
                if final_seen or time.monotonic() - ended_at > 10:
                    break
            time.sleep(interval)
    except KeyboardInterrupt:
        return 130
    code = FOLLOW_EXIT[status["state"]]
    if as_json:
        click.echo(json.dumps({"kind": "final", "state": status["state"], "exit_code": code, "status": status}))
    else:
        print_status(status, False)
    return code
