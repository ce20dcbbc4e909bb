"""The ``qp`` command line: start the stack, run the processes, and drive runs through the HTTP API.

One module per command group: ``up`` (the supervised local stack), ``services`` (``worker``, ``api``), ``runs``
(``run``, ``status``, ``events``, ``pause``, ``resume``, ``cancel``), ``listing`` (``runs``), ``gates``
(``approve``, ``reject``), ``tokens``, ``db``, ``secrets``, ``temporal``, ``webhooks``; ``client`` and ``view``
are what they share.
"""

from __future__ import annotations

import click

from quantapilot.cli import gates, listing, runs, services
from quantapilot.cli.db import db
from quantapilot.cli.secrets import secrets
from quantapilot.cli.temporal import temporal
from quantapilot.cli.tokens import tokens
from quantapilot.cli.up import up
from quantapilot.cli.webhooks import webhooks


@click.group()
@click.option("--api-url", envvar="QP_API_URL", help="Base URL of the API (default: from QP_API_HOST/QP_API_PORT).")
@click.option("--token", envvar="QP_TOKEN", help="API token (default: the one `qp up` created).")
@click.pass_context
def main(ctx: click.Context, api_url: str | None, token: str | None) -> None:
    """QuantaPilot: durable repository and lifecycle runs on Temporal."""
    ctx.ensure_object(dict).update(api_url=api_url, token=token)


for command in (
    *services.COMMANDS,
    *runs.COMMANDS,
    *listing.COMMANDS,
    *gates.COMMANDS,
    tokens,
    db,
    up,
    secrets,
    temporal,
    webhooks,
):
    main.add_command(command)

__all__ = ["main"]
