"""``qp worker`` and ``qp api``: run one process of the service in the foreground (a deployment runs these)."""

from __future__ import annotations

import click


@click.command()
def worker() -> None:
    """Run a Temporal worker (workflows and activities)."""
    from worker import main as worker_main

    worker_main()


@click.command()
def api() -> None:
    """Run the HTTP API server."""
    from api.server import main as api_main

    api_main()


COMMANDS = (worker, api)
