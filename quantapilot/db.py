"""Database engine and the core table (API tokens).

Other tables live beside the feature that owns them (``quantapilot.events.table``, ``quantapilot.docs.store``,
``quantapilot.lifecycle.telemetry``, ``quantapilot.webhooks.tables``, ``quantapilot.llm.spending``, ...);
:func:`create_all` imports them so one call creates the whole schema.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, DateTime, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, create_engine

# Modules that define tables; imported by create_all so their tables join the metadata.
TABLE_MODULES: tuple[str, ...] = (
    "quantapilot.events.table",
    "quantapilot.docs.store",
    "quantapilot.lifecycle.telemetry",
    "quantapilot.webhooks.tables",
    "quantapilot.forges.store",
    "quantapilot.lifecycle.store",
    "quantapilot.llm.spending",
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC (all of them,
    which keeps its text comparisons in range queries correct) and get UTC attached when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC, refusing naive datetimes whose zone would be a guess."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC timestamp column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach or normalise to UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class ApiToken(SQLModel, table=True):
    """A bearer token; only its SHA-256 hash is stored."""

    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True)
    workspace: str = Field(index=True)
    subject: str
    token_hash: str = Field(unique=True, index=True)
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


def make_engine(url: str, *, statement_timeout_s: float | None = None) -> Engine:
    """Create an engine for ``url`` with settings that suit concurrent API and worker processes.

    Args:
        url: SQLAlchemy database URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
        statement_timeout_s: PostgreSQL cancels any statement running longer (``statement_timeout``). The API
            and the worker set it below their activity and request timeouts, so a query the server abandons does
            not keep running in the database; None or 0: no bound (migrations, the CLI). SQLite ignores it.

    Returns:
        The engine.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while the worker writes; a busy timeout turns lock contention into waiting.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if statement_timeout_s:
        connect_args["options"] = f"-c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


def import_table_modules() -> None:
    """Import every module that defines tables, skipping those not written yet."""
    for name in TABLE_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise


def create_all(engine: Engine) -> None:
    """Create every table that does not exist yet."""
    import_table_modules()
    SQLModel.metadata.create_all(engine)


# By database (URL), not by engine: two engines of one process on the same file (the worker's and a caller's)
# queue behind one another too.
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITERS_LOCK = threading.Lock()


@contextmanager
def one_writer(engine: Engine) -> Iterator[None]:
    """Queue this process's write transactions on a SQLite database behind one another (PostgreSQL: no-op).

    SQLite takes one writer at a time, and a writer that finds the lock taken polls it from its busy handler,
    sleeping 1, 2, 5, ... up to 100 ms between tries: a burst of writers in one process (stored events, the webhook
    dispatcher's claims and records) spends most of its time asleep with the database free. Behind a lock of the
    process's own (one per database file, shared by the process's engines on it), the next writer starts the
    moment the previous one commits. Writers in other processes still meet the busy handler, as before.
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    with _SQLITE_WRITERS_LOCK:
        lock = _SQLITE_WRITERS.setdefault(str(engine.url), threading.RLock())
    with lock:
        yield


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Open a session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
