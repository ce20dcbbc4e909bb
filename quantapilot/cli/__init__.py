"""The ``qp`` command line: start the stack, run the processes, and drive runs through the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import click
from rich.console import Console
from rich.table import Table

from quantapilot.settings import Settings

console = Console()
err_console = Console(stderr=True)
TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret


# ----- helpers ------------------------------------------------------------------------------------------------


def _settings() -> Settings:
    return Settings()


def _token(explicit: str | None, settings: Settings) -> str:
    """The API token: --token, then QP_TOKEN, then the one `qp up` wrote into the state directory."""
    if explicit:
        return explicit
    if env := os.environ.get("QP_TOKEN"):
        return env
    path = settings.state_dir / TOKEN_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    raise click.UsageError("no API token: pass --token, set QP_TOKEN, or start the stack with `qp up`")


class ApiClient:
    """A small synchronous wrapper over the HTTP API for the CLI."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """Send a request; exit with the envelope's message on an error status."""
        return asyncio.run(self._call(method, path, body, headers or {}))

    async def _call(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        all_headers = {"Authorization": f"Bearer {self.token}", "X-QP-Client": "cli", **headers}
        timeout = aiohttp.ClientTimeout(total=60)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, self.base_url + path, json=body, headers=all_headers) as resp,
            ):
                payload = await resp.json(content_type=None)
                if resp.status >= 400:
                    error = (payload or {}).get("error", {})
                    raise click.ClickException(
                        f"{resp.status} {error.get('code', 'ERROR')}: {error.get('message', '')}"
                        f" (traceId {error.get('traceId', '-')})"
                    )
                return payload
        except aiohttp.ClientConnectionError as exc:
            raise click.ClickException(f"cannot reach the API at {self.base_url}: {exc}") from None


def _client(ctx: click.Context) -> ApiClient:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    settings = _settings()
    return ApiClient(obj.get("api_url") or settings.base_url, _token(obj.get("token"), settings))


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    console.print(
        f"[bold]{status['run_id']}[/bold]  state=[cyan]{status['state']}[/cyan]  step={status.get('current_step')}"
    )
    if status.get("error"):
        console.print(f"[red]{status['error']['code']}[/red]: {status['error']['message']}")
    if status.get("gates"):
        table = Table("gate", "status", "decided by", "reason")
        for gate in status["gates"]:
            table.add_row(gate["name"], gate["status"], gate.get("decided_by") or "", gate.get("reason") or "")
        console.print(table)
        for gate in status["gates"]:
            if gate["status"] == "pending":
                console.print(f"approve with: qp approve {status['run_id']} {gate['name']} --reason '...'")
    for milestone in status.get("milestones", []):
        console.print(f"  milestone {milestone['id']} {milestone['status']}: {milestone['title']}")


# ----- commands -----------------------------------------------------------------------------------------------


@click.group()
@click.option("--api-url", envvar="QP_API_URL", help="Base URL of the API (default: from QP_API_HOST/QP_API_PORT).")
@click.option("--token", envvar="QP_TOKEN", help="API token (default: the one `qp up` created).")
@click.pass_context
def main(ctx: click.Context, api_url: str | None, token: str | None) -> None:
    """QuantaPilot: durable repository and lifecycle runs on Temporal."""
    ctx.ensure_object(dict).update(api_url=api_url, token=token)


@main.command()
def worker() -> None:
    """Run a Temporal worker (workflows and activities)."""
    from worker import main as worker_main

    worker_main()


@main.command()
def api() -> None:
    """Run the HTTP API server."""
    from api.server import main as api_main

    api_main()


def _prompt_missing(value: str | None, label: str) -> str:
    if value:
        return value
    if not sys.stdin.isatty():
        raise click.UsageError(f"--{label} is required (no terminal to ask on)")
    answer: str = click.prompt(label)
    return answer


@main.command()
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
    client = _client(ctx)
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
        ctx.exit(_follow(client, accepted["run_id"], as_json=as_json, interval=interval))


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show a run's state, gates and milestones."""
    _print_status(_client(ctx).call("GET", f"/v1/runs/{run_id}"), as_json)


@main.command()
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
        ctx.exit(_follow(_client(ctx), run_id, as_json=as_json, interval=interval, after=after))
    page = _client(ctx).call("GET", f"/v1/runs/{run_id}/events?after={after}")
    for event in page["events"]:
        click.echo(json.dumps(event))


# Exit status of --follow by final state; 2 stays click's usage error.
FOLLOW_EXIT = {"completed": 0, "failed": 1, "cancelled": 3}
FINAL_EVENTS = {"run.completed", "run.failed", "run.cancelled"}


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


def _follow(client: ApiClient, run_id: str, *, as_json: bool, interval: float, after: int = 0) -> int:
    """Poll the run's events and status until it ends; print what changes; return the exit status."""
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
        _print_status(status, False)
    return code


def _decide(ctx: click.Context, run_id: str, gate: str, approved: bool, reason: str | None) -> None:
    record = _client(ctx).call(
        "POST", f"/v1/runs/{run_id}/gates/{gate}/decision", {"approved": approved, "reason": reason}
    )
    console.print(f"gate {record['name']}: {record['status']} by {record.get('decided_by')}")


@main.command()
@click.argument("run_id")
@click.argument("gate")
@click.option("--reason", default=None)
@click.pass_context
def approve(ctx: click.Context, run_id: str, gate: str, reason: str | None) -> None:
    """Approve a pending gate."""
    _decide(ctx, run_id, gate, True, reason)


@main.command()
@click.argument("run_id")
@click.argument("gate")
@click.option("--reason", required=True)
@click.pass_context
def reject(ctx: click.Context, run_id: str, gate: str, reason: str) -> None:
    """Reject a pending gate (ends the run)."""
    _decide(ctx, run_id, gate, False, reason)


@main.command()
@click.argument("run_id")
@click.option("--reason", default="manual")
@click.pass_context
def pause(ctx: click.Context, run_id: str, reason: str) -> None:
    """Pause a run (no new step starts)."""
    _print_status(_client(ctx).call("POST", f"/v1/runs/{run_id}/pause", {"reason": reason}), False)


@main.command()
@click.argument("run_id")
@click.pass_context
def resume(ctx: click.Context, run_id: str) -> None:
    """Resume a paused run."""
    _print_status(_client(ctx).call("POST", f"/v1/runs/{run_id}/resume"), False)


@main.command()
@click.argument("run_id")
@click.pass_context
def cancel(ctx: click.Context, run_id: str) -> None:
    """Cancel a run."""
    result = _client(ctx).call("POST", f"/v1/runs/{run_id}/cancel")
    console.print(f"run {result['run_id']}: {result['state']}")


# ----- tokens -------------------------------------------------------------------------------------------------


@main.group()
def tokens() -> None:
    """Manage API tokens (works on the database directly)."""


#: Lifetime of a token made by `qp tokens create` without --expires; `--expires never` opts out explicitly.
DEFAULT_TOKEN_EXPIRY = "90d"  # noqa: S105 - a lifetime, not a secret


def _parse_expiry(value: str) -> datetime | None:
    if value == "never":
        return None
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if not value or value[-1] not in units or not value[:-1].isdigit():
        raise click.BadParameter("use a number followed by d, h or m (e.g. 90d), or never")
    return datetime.now(UTC) + timedelta(**{units[value[-1]]: int(value[:-1])})


def _parse_scopes(answer: str) -> tuple[str, ...]:
    """Scopes from names or list numbers separated by spaces or commas, or ``all``."""
    from quantapilot.tokens import ALL_SCOPES

    words = answer.replace(",", " ").split()
    if words == ["all"]:
        return ALL_SCOPES
    chosen: list[str] = []
    for word in words:
        scope = ALL_SCOPES[int(word) - 1] if word.isdigit() and 1 <= int(word) <= len(ALL_SCOPES) else word
        if scope not in ALL_SCOPES:
            raise click.BadParameter(f"unknown scope {word[:40]!r}")
        if scope not in chosen:
            chosen.append(scope)
    if not chosen:
        raise click.BadParameter("name at least one scope")
    return tuple(chosen)


def _scopes_for(given: Sequence[str]) -> tuple[str, ...]:
    """The scopes to grant: as given (``all`` for every scope), else asked on a terminal, else refused."""
    from quantapilot.tokens import ALL_SCOPES

    if given:
        return ALL_SCOPES if tuple(given) == ("all",) else tuple(given)
    if not sys.stdin.isatty():
        # A script that forgets --scope must not get an all-powerful token by default.
        raise click.UsageError("--scope is required (no terminal to ask on): repeat --scope S, or --scope all")
    click.echo("Scopes a token can carry (grant only what its user needs)")
    for number, scope in enumerate(ALL_SCOPES, 1):
        click.echo(f"  {number}. {scope}")
    scopes: tuple[str, ...] = click.prompt("Scopes (numbers or names; all for every scope)", value_proc=_parse_scopes)
    return scopes


@tokens.command("create")
@click.option("--workspace", default="default", show_default=True)
@click.option("--subject", default="operator", show_default=True, help="Who uses the token.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="Scope to grant (repeatable), or all. Without it: asked on a terminal, refused otherwise.",
)
@click.option(
    "--expires", default=DEFAULT_TOKEN_EXPIRY, show_default=True, help="Lifetime such as 90d, 12h; never for none."
)
def tokens_create(workspace: str, subject: str, scopes: Sequence[str], expires: str) -> None:
    """Create a token and print it once."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import ensure_schema
    from quantapilot.tokens import create_token

    expires_at = _parse_expiry(expires)
    granted = _scopes_for(scopes)
    engine = make_engine(_settings().database_url)
    ensure_schema(engine, auto_migrate=_settings().db_auto_migrate)
    try:
        plaintext, row = create_token(
            engine, workspace=workspace, subject=subject, scopes=granted, expires_at=expires_at
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    until = f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else "never expires"
    console.print(f"token id {row.id} (workspace {workspace}, scopes {' '.join(row.scopes)}, {until})")
    click.echo(plaintext)


@tokens.command("list")
@click.option("--workspace", default=None)
def tokens_list(workspace: str | None) -> None:
    """List tokens (never their values)."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import ensure_schema
    from quantapilot.tokens import list_tokens

    engine = make_engine(_settings().database_url)
    ensure_schema(engine, auto_migrate=_settings().db_auto_migrate)
    table = Table("id", "workspace", "subject", "scopes", "expires", "revoked")
    for row in list_tokens(engine, workspace=workspace):
        table.add_row(
            row.id,
            row.workspace,
            row.subject,
            " ".join(row.scopes),
            str(row.expires_at or ""),
            str(row.revoked_at or ""),
        )
    console.print(table)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by id."""
    from quantapilot.db import make_engine
    from quantapilot.tokens import revoke_token

    if not revoke_token(make_engine(_settings().database_url), token_id):
        raise click.ClickException(f"no token {token_id}")
    console.print(f"revoked {token_id}")


# ----- database ---------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema migrations (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database (QP_DATABASE_URL) to a revision."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import upgrade

    settings = _settings()
    console.print(f"database at {upgrade(make_engine(settings.database_url), revision)}")


@db.command("current")
def db_current() -> None:
    """Show the database's revision and the code's head; exit 1 when they differ."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import current_revision, head_revision

    current, head = current_revision(make_engine(_settings().database_url)), head_revision()
    console.print(f"database: {current or '(none)'}  code: {head}")
    if current != head:
        raise SystemExit(1)


# ----- the whole stack ----------------------------------------------------------------------------------------


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"process exited early with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise click.ClickException(f"{host}:{port} did not open within {timeout:.0f}s")


def _interrupt(signum: int, frame: object) -> None:
    """Treat SIGTERM like Ctrl-C, so `qp up` under a supervisor stops its children in order too."""
    raise KeyboardInterrupt


def _stop(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Stop children in reverse start order: SIGTERM, then SIGKILL after 15 s."""
    for _name, proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for _name, proc in reversed(procs):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@main.command()
@click.option("--headless", is_flag=True, help="Start the Temporal dev server without its Web UI.")
@click.option("--temporal-port", type=int, default=None, help="Override temporal-dev.yaml's gRPC port.")
@click.option("--ui-port", type=int, default=None, help="Override temporal-dev.yaml's Web UI port.")
def up(headless: bool, temporal_port: int | None, ui_port: int | None) -> None:
    """Start the Temporal dev server (with Web UI), a worker and the API; Ctrl-C stops all three."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import ensure_schema
    from quantapilot.secretbox import SecretKeyError, default_key_file, load_keyring
    from quantapilot.temporal_dev import load_dev_config, temporal_cli_path
    from quantapilot.tokens import create_token

    settings = _settings()
    dev = load_dev_config()
    if temporal_port:
        dev = dev.model_copy(update={"port": temporal_port})
    if ui_port:
        dev = dev.model_copy(update={"ui_port": ui_port})
    state_dir = settings.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # The key that encrypts webhook secrets: generated into the state directory on first start (owner-only), so
    # the worker and the API read the same one instead of racing to create it.
    try:
        load_keyring(settings)
    except SecretKeyError as exc:
        raise click.ClickException(str(exc)) from None
    key_source = "QP_SECRET_KEY" if settings.secret_key else str(settings.secret_key_file or default_key_file(settings))
    engine = make_engine(settings.database_url)
    ensure_schema(engine, auto_migrate=_settings().db_auto_migrate)

    env = {
        **os.environ,
        "QP_TEMPORAL_ADDRESS": f"{dev.ip}:{dev.port}",
        "QP_TEMPORAL_NAMESPACE": dev.namespace,
        "QP_STATE_DIR": str(state_dir),
        "QP_DATABASE_URL": settings.database_url,
        # A local stack delivers webhooks to local receivers (e.g. `qp webhooks listen`).
        "QP_WEBHOOK_ALLOW_PRIVATE": os.environ.get("QP_WEBHOOK_ALLOW_PRIVATE", "true"),
        # One local operator triggers and approves with the one token `qp up` prints.
        "QP_ALLOW_SELF_APPROVAL": os.environ.get("QP_ALLOW_SELF_APPROVAL", "true"),
    }
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    # Ctrl-C reaches the whole foreground process group; we stop the children ourselves, in order.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        temporal = subprocess.Popen(
            [str(temporal_cli_path()), *dev.start_dev_args(state_dir=state_dir, headless=headless)],
            env=env,
            start_new_session=True,
        )
        procs.append(("temporal", temporal))
        _wait_port(dev.ip, dev.port, 60, temporal)
        worker_proc = subprocess.Popen([sys.executable, "-m", "worker"], env=env, start_new_session=True)
        procs.append(("worker", worker_proc))
        api_proc = subprocess.Popen([sys.executable, "-m", "api"], env=env, start_new_session=True)
        procs.append(("api", api_proc))
        _wait_port(settings.api_host, settings.api_port, 60, api_proc)
        # The local operator's token: all scopes and no expiry, like before (a new one every start, saved 0600).
        token, _row = create_token(engine, workspace="default", subject="local-admin")
        token_path = state_dir / TOKEN_FILE
        token_path.write_text(token + "\n", encoding="utf-8")
        token_path.chmod(0o600)
        click.echo(f"Temporal Web UI : {'(headless)' if headless else f'http://localhost:{dev.ui_port}'}")
        click.echo(f"Temporal gRPC   : {dev.ip}:{dev.port}")
        click.echo(f"API             : {settings.base_url}")
        click.echo(f"Database        : {settings.database_url}")
        click.echo(f"Secret key      : {key_source}  (encrypts webhook secrets; keep it apart from database backups)")
        click.echo(f"API token       : {token}")
        click.echo("(all scopes; also saved for the CLI in the state directory)  Ctrl-C stops everything.", err=False)
        sys.stdout.flush()
        while all(proc.poll() is None for _name, proc in procs):
            time.sleep(0.5)
        dead = [name for name, proc in procs if proc.poll() is not None]
        err_console.print(f"[red]{', '.join(dead)} exited; stopping the stack[/red]")
        raise SystemExit(1)
    except KeyboardInterrupt:
        click.echo("stopping...")
    finally:
        _stop(procs)


from quantapilot.cli.secrets import secrets  # noqa: E402 - command groups of other modules register last
from quantapilot.cli.temporal import temporal  # noqa: E402
from quantapilot.cli.webhooks import webhooks  # noqa: E402

main.add_command(secrets)
main.add_command(temporal)
main.add_command(webhooks)
