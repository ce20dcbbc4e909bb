"""``qp db``: the database schema's migrations (Alembic)."""

from __future__ import annotations

import click

from quantapilot.cli.client import console, load_settings


@click.group()
def db() -> None:
    """Database schema migrations (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database (QP_DATABASE_URL) to a revision."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import upgrade

    settings = load_settings()
    console.print(f"database at {upgrade(make_engine(settings.database_url), revision)}")


@db.command("current")
def db_current() -> None:
    """Show the database's revision and the code's head; exit 1 when they differ."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import current_revision, head_revision

    current, head = current_revision(make_engine(load_settings().database_url)), head_revision()
    console.print(f"database: {current or '(none)'}  code: {head}")
    if current != head:
        raise SystemExit(1)
