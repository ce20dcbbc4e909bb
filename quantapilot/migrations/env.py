"""Alembic environment: migrations run on the connection :mod:`quantapilot.migrate` hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from quantapilot.db import import_table_modules

import_table_modules()
target_metadata = SQLModel.metadata


def run_migrations() -> None:
    """Run migrations online on the connection passed through ``config.attributes``."""
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
