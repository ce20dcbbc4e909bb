"""Alembic migrations build exactly the schema the models define, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from quantapilot.db import create_all, import_table_modules, make_engine
from quantapilot.migrate import current_revision, differences, ensure_schema, head_revision, upgrade
from tests.dbfixtures import drop_postgres_database, new_postgres_database, require_postgres

QP = str(Path(sys.executable).with_name("qp"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
    else:
        require_postgres()
        url, name = new_postgres_database()
    engine = make_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        if name:
            drop_postgres_database(name)


def test_migrations_upgrade_builds_the_model_schema(empty_db: tuple[str, Engine]) -> None:
    _, engine = empty_db
    assert current_revision(engine) is None
    assert upgrade(engine) == head_revision()
    import_table_modules()
    assert set(SQLModel.metadata.tables) <= set(inspect(engine).get_table_names())
    assert differences(engine) == []
    # Upgrading again is a no-op.
    assert upgrade(engine) == head_revision()


def test_migrations_adopt_a_create_all_schema(empty_db: tuple[str, Engine]) -> None:
    _, engine = empty_db
    create_all(engine)
    assert current_revision(engine) is None
    ensure_schema(engine, auto_migrate=True)
    assert current_revision(engine) == head_revision()


def test_migrations_refuse_to_start_on_an_old_schema_without_auto_migrate(empty_db: tuple[str, Engine]) -> None:
    _, engine = empty_db
    with pytest.raises(RuntimeError, match="qp db upgrade"):
        ensure_schema(engine, auto_migrate=False)
    upgrade(engine)
    ensure_schema(engine, auto_migrate=False)  # at head: starts


def test_migrations_cli_upgrade_and_current(empty_db: tuple[str, Engine]) -> None:
    url, _ = empty_db
    env = {**os.environ, "QP_DATABASE_URL": url}
    before = subprocess.run([QP, "db", "current"], env=env, capture_output=True, text=True)
    assert before.returncode == 1
    assert "(none)" in before.stdout
    done = subprocess.run([QP, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = subprocess.run([QP, "db", "current"], env=env, capture_output=True, text=True)
    assert after.returncode == 0
    assert head_revision() in after.stdout
