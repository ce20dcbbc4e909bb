"""Database fixtures: a throwaway SQLite file and a throwaway PostgreSQL database per use."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import Engine

from quantapilot.db import create_all, make_engine

PG_ADMIN_DSN = os.environ.get("QP_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_available() -> bool:
    """Tell whether the PostgreSQL server the machine provides answers."""
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def require_postgres() -> None:
    """Skip when PostgreSQL is absent, except in CI, where its absence is a failure."""
    if postgres_available():
        return
    if os.environ.get("CI"):
        pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI")
    pytest.skip("PostgreSQL at 127.0.0.1:5432 not reachable")


def new_postgres_database() -> tuple[str, str]:
    """Create an empty database; return its SQLAlchemy URL and name."""
    name = f"qp_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}", name


def drop_postgres_database(name: str) -> None:
    """Drop a database made by :func:`new_postgres_database`, closing its connections."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database URL, dropped after the test."""
    require_postgres()
    url, name = new_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(name)


@contextmanager
def own_postgres_database() -> Iterator[tuple[str, str, Engine]]:
    """A PostgreSQL database of the test's own with the whole schema, dropped afterwards.

    For tests that act on the database itself (refuse its connections, race transactions in it), in both passes.

    Yields:
        Its URL, its name and an engine on it.
    """
    require_postgres()
    url, name = new_postgres_database()
    engine = make_engine(url)
    try:
        create_all(engine)
        yield url, name, engine
    finally:
        engine.dispose()
        drop_postgres_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine with the whole schema created, once on SQLite and once on PostgreSQL."""
    name: str | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'qp.db'}"
    else:
        require_postgres()
        url, name = new_postgres_database()
    engine = make_engine(url)
    create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        if name:
            drop_postgres_database(name)
