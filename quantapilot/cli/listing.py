"""``qp runs``: the workspace's runs (``GET /v1/runs``) as a table, every page followed."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import click
from rich.table import Table

from quantapilot.cli.client import ApiClient, api_client, console
from quantapilot.models import RunKind, RunState

PAGE_SIZE = 100  # the API's largest page: fewest round trips


def fetch_runs(
    client: ApiClient, filters: dict[str, str], *, limit: int | None = None, page_size: int = PAGE_SIZE
) -> list[dict[str, Any]]:
    """Every run the filters select, following ``next_page_token`` until the last page (or ``limit`` runs).

    Args:
        client: Client of the API.
        filters: Query parameters of ``GET /v1/runs`` (state, kind, gate, repo_url, correlation_id).
        limit: Stop after this many runs.
        page_size: Runs per request.
    """
    runs: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        params = {**filters, "page_size": str(page_size)} | ({"page_token": token} if token else {})
        page = client.call("GET", f"/v1/runs?{urlencode(params)}")
        runs += page["runs"]
        token = page.get("next_page_token")
        if token is None or (limit is not None and len(runs) >= limit):
            return runs[:limit] if limit is not None else runs


def _when(value: str) -> str:
    # 2026-12-02T17:01:03.383621Z -> 2026-12-02 17:01:03 (UTC, as the API says)
    return value.replace("T", " ")[:19]


def print_runs(runs: list[dict[str, Any]]) -> None:
    """Print runs as a table: id, kind, state, gate waited at, repository or account, correlation id, times."""
    table = Table("run", "kind", "state", "gate", "repository / account", "correlation id", "created", "updated")
    for run in runs:
        target = run.get("repo_url") or (f"{run['account_id']} ({run.get('stage')})" if run.get("account_id") else "")
        table.add_row(
            run["run_id"],
            run["kind"],
            run["state"],
            run.get("gate") or "",
            target,
            run.get("correlation_id") or "",
            _when(run["created_at"]),
            _when(run["updated_at"]),
        )
    console.print(table)
    waiting = [r for r in runs if r.get("gate") and r["state"] == RunState.WAITING_FOR_GATE]
    for run in waiting:
        console.print(f"approve with: qp approve {run['run_id']} {run['gate']} --reason '...'", highlight=False)
    if not runs:
        console.print("no runs")


@click.command(name="runs")
@click.option("--waiting", is_flag=True, help="Only runs waiting at a gate.")
@click.option("--gate", help="Only runs waiting at this gate (paused there too).")
@click.option("--state", type=click.Choice([s.value for s in RunState]), help="Only runs in this state.")
@click.option("--kind", type=click.Choice([k.value for k in RunKind]), help="Only runs of this kind.")
@click.option("--repo", "repo_url", help="Only runs of this repository URL.")
@click.option("--correlation-id", help="Only runs with this correlation id.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON array.")
@click.option(
    "--page-size", default=PAGE_SIZE, type=click.IntRange(1, PAGE_SIZE), hidden=True, help="Runs per request."
)
@click.pass_context
def runs(
    ctx: click.Context,
    waiting: bool,
    gate: str | None,
    state: str | None,
    kind: str | None,
    repo_url: str | None,
    correlation_id: str | None,
    limit: int | None,
    as_json: bool,
    page_size: int,
) -> None:
    """List the workspace's runs: open ones first, newest first (every page)."""
    if waiting and state not in (None, RunState.WAITING_FOR_GATE):
        raise click.UsageError("--waiting is --state waiting_for_gate: give one of them")
    filters = {
        "state": RunState.WAITING_FOR_GATE.value if waiting else state,
        "kind": kind,
        "gate": gate,
        "repo_url": repo_url,
        "correlation_id": correlation_id,
    }
    found = fetch_runs(api_client(ctx), {k: v for k, v in filters.items() if v}, limit=limit, page_size=page_size)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        print_runs(found)


COMMANDS = (runs,)
