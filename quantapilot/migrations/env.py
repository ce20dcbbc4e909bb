"""Alembic environment: migrations run on the connection :mod:`quantapilot.migrate` hands over."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlmodel import SQLModel

from quantapilot.db import import_table_modules

import_table_modules()
target_metadata = SQLModel.metadata


# Types the revision template imports by their short names.
_SHORT_TYPES = {"AutoString", "UTCDateTime", "UtcDateTime"}


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render our column types by short name so generated revisions need no fixing by hand."""
    if kind == "type" and type(obj).__name__ in _SHORT_TYPES:
        name = type(obj).__name__
        length = getattr(obj, "length", None)
        return f"{name}(length={length})" if name == "AutoString" and length else f"{name}()"
    return False


def run_migrations() -> None:
    """Run migrations online on the connection passed through ``config.attributes``."""
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
