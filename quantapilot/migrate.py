"""Schema migrations with Alembic: ``qp db upgrade`` in production, automatically at start in development.

The revisions live in ``quantapilot/migrations/versions``. A database made by ``SQLModel.metadata.create_all``
(tests, or a service version from before migrations) is adopted by stamping it at head when all its tables exist.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import SQLModel

from quantapilot.db import import_table_modules

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Serialises concurrent upgrades (an API and a worker starting together) on PostgreSQL.
_PG_LOCK_ID = 0x5150_0001


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def head_revision() -> str:
    """The newest revision in the code."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None when it has never been migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Migrate the database to ``revision`` (adopting a create_all-made schema first); return the new revision."""
    for attempt in range(5):
        try:
            _upgrade_once(engine, revision)
            break
        except (OperationalError, IntegrityError):
            # Two processes migrating one SQLite file at once (PostgreSQL takes an advisory lock instead): the
            # loser sees the winner's work on the next try.
            if attempt == 4 or engine.dialect.name != "sqlite":
                raise
            time.sleep(0.2 * (attempt + 1))
    return current_revision(engine) or ""


def _upgrade_once(engine: Engine, revision: str) -> None:
    import_table_modules()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        current = MigrationContext.configure(conn).get_current_revision()
        tables = set(inspect(conn).get_table_names())
        expected = set(SQLModel.metadata.tables)
        if current is None and expected and expected <= tables:
            command.stamp(_config(conn), "head")
        elif current != head_revision() or revision != "head":
            command.upgrade(_config(conn), revision)


def differences(engine: Engine) -> list[object]:
    """What the models define that the database lacks, or the other way round (empty: in sync)."""
    import_table_modules()
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, SQLModel.metadata))


def ensure_schema(engine: Engine, *, auto_migrate: bool) -> None:
    """Bring the schema to head at process start, or refuse to start on an outdated one.

    Args:
        engine: Database engine.
        auto_migrate: Migrate now (development); when False (production) the operator runs ``qp db upgrade``.

    Raises:
        RuntimeError: The database is not at head and ``auto_migrate`` is off.
    """
    if auto_migrate:
        upgrade(engine)
        return
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise RuntimeError(f"database schema is at {current or 'nothing'}, code needs {head}: run `qp db upgrade`")
