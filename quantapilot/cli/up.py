"""``qp up``: the whole stack on one machine, the Temporal dev server, a worker and the API."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import click

from quantapilot.cli.client import TOKEN_FILE, err_console, load_settings


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


@click.command()
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
    key_source = "QP_SECRET_KEY" if settings.secret_key else str(settings.secret_key_file or default_key_file(settings))
    engine = make_engine(settings.database_url)
    ensure_schema(engine, auto_migrate=load_settings().db_auto_migrate)

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
