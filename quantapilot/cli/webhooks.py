"""``qp webhooks``: try webhook deliveries locally.

``qp webhooks listen --port N`` runs a receiver on 127.0.0.1 that verifies every request's signature with the
endpoint's secret and prints each verified event as one line. Point an endpoint at it
(``POST /v1/webhooks/endpoints {"url": "http://127.0.0.1:N/"}``, which needs the operator's
``QP_WEBHOOK_ALLOW_PRIVATE=true``, as ``qp up`` sets) and paste the secret the API returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import click
from aiohttp import web

from quantapilot.webhooks.listen import create_listener_app, format_event


async def _serve(host: str, port: int, secret: str) -> None:
    def _print(event: dict[str, Any]) -> None:
        click.echo(format_event(event))

    app = create_listener_app(secret, on_event=_print)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    click.echo(f"listening on http://{host}:{port}/ (signatures checked; Ctrl-C stops)", err=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


@click.group()
def webhooks() -> None:
    """Webhook helpers."""


@webhooks.command()
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--secret",
    envvar="QP_WEBHOOK_SECRET",
    default=None,
    help="The endpoint's signing secret (whsec_...); also QP_WEBHOOK_SECRET; prompted for when absent.",
)
def listen(port: int, host: str, secret: str | None) -> None:
    """Receive webhook deliveries, verify their signatures and print the events."""
    if not secret:
        # Prompted without echo, so the secret stays out of the shell history and the terminal.
        secret = click.prompt("Signing secret", hide_input=True)
    assert secret is not None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port, secret))
