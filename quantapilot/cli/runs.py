"""``qp run``, ``status``, ``events``, ``pause``, ``resume``, ``cancel``: repository runs through the HTTP API."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from quantapilot.cli import view
from quantapilot.cli.client import api_client, console
from quantapilot.cli.view import print_status


def _prompt_missing(value: str | None, label: str) -> str:
    if value:
        return value
    if not sys.stdin.isatty():
        raise click.UsageError(f"--{label} is required (no terminal to ask on)")
    answer: str = click.prompt(label)
    return answer


@click.command()
@click.option("--repo", "repo", help="Repository URL.")
@click.option("--branch", help="Branch to run on.")
@click.option("--correlation-id", help="Your id for tracking events and logs.")
@click.option("--idempotency-key", help="Retry-safe key: the same key never starts a second run.")
@click.option("--yaml-path", default=None, help="Path of quantapilot.yml in the repository.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--follow", is_flag=True, help="Then follow the run live until it ends (exit status as `events --follow`)."
)
@click.option("--interval", default=1.0, show_default=True, hidden=True, help="Seconds between polls with --follow.")
@click.pass_context
def run(
    ctx: click.Context,
    repo: str | None,
    branch: str | None,
    correlation_id: str | None,
    idempotency_key: str | None,
    yaml_path: str | None,
    as_json: bool,
    follow: bool,
    interval: float,
) -> None:
    """Trigger a repository run through the HTTP API (asks for missing values on a terminal)."""
    client = api_client(ctx)
    body: dict[str, Any] = {"repo_url": _prompt_missing(repo, "repo"), "branch": _prompt_missing(branch, "branch")}
    if correlation_id:
        body["correlation_id"] = correlation_id
    if yaml_path:
        body["quantapilot_yaml_path"] = yaml_path
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    accepted = client.call("POST", "/run", body, headers)
    if as_json:
        click.echo(json.dumps({"kind": "accepted", **accepted} if follow else accepted))
    else:
        console.print(f"run [bold]{accepted['run_id']}[/bold] accepted: {accepted['status_url']}")
    if follow:
        ctx.exit(view.follow(client, accepted["run_id"], as_json=as_json, interval=interval))


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show a run's state, gates and milestones."""
    print_status(api_client(ctx).call("GET", f"/v1/runs/{run_id}"), as_json)


@click.command()
@click.argument("run_id")
@click.option("--after", default=0, show_default=True, help="Only events after this sequence number.")
@click.option("--follow", is_flag=True, help="Follow the run live until it ends.")
@click.option("--json", "as_json", is_flag=True, help="With --follow: JSON lines tagged event/status/final.")
@click.option("--interval", default=1.0, show_default=True, hidden=True, help="Seconds between polls with --follow.")
@click.pass_context
def events(ctx: click.Context, run_id: str, after: int, follow: bool, as_json: bool, interval: float) -> None:
    """Print a run's events, one JSON object per line; with --follow, a live view of the run.

    With --follow the exit status tells how the run ended: 0 completed, 1 failed, 3 cancelled.
    """
    if follow:
        ctx.exit(view.follow(api_client(ctx), run_id, as_json=as_json, interval=interval, after=after))
    page = api_client(ctx).call("GET", f"/v1/runs/{run_id}/events?after={after}")
    for event in page["events"]:
        click.echo(json.dumps(event))


@click.command()
@click.argument("run_id")
@click.option("--reason", default="manual")
@click.pass_context
def pause(ctx: click.Context, run_id: str, reason: str) -> None:
    """Pause a run (no new step starts)."""
    print_status(api_client(ctx).call("POST", f"/v1/runs/{run_id}/pause", {"reason": reason}), False)


@click.command()
@click.argument("run_id")
@click.pass_context
def resume(ctx: click.Context, run_id: str) -> None:
    """Resume a paused run."""
    print_status(api_client(ctx).call("POST", f"/v1/runs/{run_id}/resume"), False)


@click.command()
@click.argument("run_id")
@click.pass_context
def cancel(ctx: click.Context, run_id: str) -> None:
    """Cancel a run."""
    result = api_client(ctx).call("POST", f"/v1/runs/{run_id}/cancel")
    console.print(f"run {result['run_id']}: {result['state']}")


COMMANDS = (run, status, events, pause, resume, cancel)
