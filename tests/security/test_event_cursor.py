"""The event cursor: a client polling ``?after=N`` never moves past an event that commits late."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.app import create_app
from quantapilot.db import session_scope
from quantapilot.events.table import RunEvent
from quantapilot.lifecycle.contracts import account_stream_id, account_workflow_id
from quantapilot.models import RunKind
from quantapilot.runs.ids import new_run_id
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.dbfixtures import PG_ADMIN_DSN, own_postgres_database
from tests.support import Api, eventually, make_remote
from worker import build_worker


@dataclass
class Follower:
    """A client following a run's events the documented way: poll with ``after`` = the last ``next_after``."""

    api: Api
    path: str
    after: int = 0
    polls: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def follow(self, until: str) -> None:
        while not any(e["type"] == until for e in self.seen):
            code, body = await self.api.get(f"{self.path}?after={self.after}")
            if code == 200:
                self.seen += body["events"]
                self.after = body.get("next_after", body.get("nextAfter"))
            self.polls += 1
            await asyncio.sleep(0.02)  # a polling client's interval, not a wait for a condition

    async def polled_again(self) -> None:
        """Return once the follower has read at least one more whole page from now on."""
        seen = self.polls
        await eventually(lambda: asyncio.sleep(0, self.polls), lambda n: n >= seen + 2, what="another poll")


@dataclass(frozen=True)
class OwnPostgres:
    url: str
    name: str
    engine: Engine

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{self.name}")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL database of the test's own (two transactions race in it), in both passes of the suite."""
    with own_postgres_database() as (url, name, engine):
        yield OwnPostgres(url=url, name=name, engine=engine)


def hold_seq(db: OwnPostgres, run_id: str, seq: int) -> psycopg.Connection[Any]:
    """Delay the run's own insert of ``seq``: an uncommitted row with the same (run_id, seq) makes it wait on the
    unique index until this transaction ends (rolled back, so the run's row is the one that stays)."""
    conn = db.connect()
    conn.execute(
        "INSERT INTO run_events (id, run_id, workspace, run_kind, seq, type, created_at, data)"
        " VALUES (%s, %s, 'default', 'repository', %s, 'placeholder', now(), '{}')",
        (f"evt_hold_{uuid.uuid4().hex}", run_id, seq),
    )
    return conn


def insert_waits(db: OwnPostgres) -> bool:
    """Whether a backend waits for a lock while inserting into run_events (the run's held event)."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO run_events%%'"
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.postgres
async def test_event_cursor_does_not_skip_an_event_committed_after_its_successor(
    aiohttp_client: Any, client: Client, settings: Settings, own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"database_url": own_postgres.url})
    token, _ = create_token(own_postgres.engine, workspace="default", subject="follower")
    http: TestClient[Any, Any] = await aiohttp_client(create_app(settings, client=client, engine=own_postgres.engine))
    api = Api(client=http, token=token)
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    key = f"late-{uuid.uuid4().hex}"
    run_id = new_run_id(RunKind.REPOSITORY, "default", key)
    follower = Follower(api, f"/v1/runs/{run_id}/events")
    holder = hold_seq(own_postgres, run_id, 1)  # run.started will commit late
    async with build_worker(client, settings):
        following = asyncio.create_task(follower.follow("run.completed"))
        try:
            code, body = await api.post(
                "/v1/runs", {"repo_url": url, "branch": "main"}, headers={"Idempotency-Key": key}
            )
            assert code == 202 and body["run_id"] == run_id, body
            await eventually(lambda: asyncio.to_thread(insert_waits, own_postgres), bool, what="run.started held")
            # The pause races the held event: its answer comes once run.paused (seq 2) is recorded, while
            # run.started (seq 1) still waits.
            code, body = await api.post(f"/v1/runs/{run_id}/pause", {"reason": "race"})
            assert code == 200, body
            assert insert_waits(own_postgres)
            await follower.polled_again()  # it has read the log as it stands: seq 2 committed, seq 1 not yet
            holder.rollback()
            holder.close()
            await api.post(f"/v1/runs/{run_id}/resume", {})
            await api.wait_gate(run_id, "anchor")
            code, _ = await api.decide(run_id, "anchor", True)
            assert code == 200
            await asyncio.wait_for(following, timeout=120)
        finally:
            following.cancel()
            holder.close()
    whole = await api.events(run_id)
    assert [e["seq"] for e in whole] == list(range(1, len(whole) + 1))
    assert [e["id"] for e in follower.seen] == [e["id"] for e in whole]
    assert follower.seen[0]["type"] == "run.started"


@pytest.mark.usefixtures("worker")
async def test_event_cursor_account_stream_stops_at_a_gap_while_its_workflow_runs(
    api: Api, engine: Engine, client: Client
) -> None:
    account = str(uuid.uuid4())
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    # Telemetry starts the account's workflow (no approved targets: its refresh records nothing).
    code, body = await api.post("/v1/telemetry/events", {"accountId": account, "kpi": "k", "value": 1, "timestamp": at})
    assert code == 202, body
    await eventually(
        lambda: client.get_workflow_handle(account_workflow_id("default", account)).describe(),
        lambda d: d.status is not None,
        what="account workflow",
    )
    stream = account_stream_id("default", account)

    def record(*seqs: int) -> None:
        with session_scope(engine) as session:
            for seq in seqs:
                session.add(
                    RunEvent(
                        id=f"evt_{uuid.uuid4().hex}",
                        run_id=stream,
                        workspace="default",
                        run_kind="lifecycle",
                        seq=seq,
                        type="realization.updated",
                        created_at=datetime.now(UTC),
                        data={"seq": seq},
                    )
                )

    record(1, 3)  # seq 2 is still on its way
    code, page = await api.get(f"/v1/accounts/{account}/events?after=0")
    assert code == 200, page
    assert ([e["seq"] for e in page["events"]], page["nextAfter"]) == ([1], 1)
    code, page = await api.get(f"/v1/accounts/{account}/events?after=1")
    assert ([e["seq"] for e in page["events"]], page["nextAfter"]) == ([], 1)
    record(2)
    code, page = await api.get(f"/v1/accounts/{account}/events?after=1")
    assert ([e["seq"] for e in page["events"]], page["nextAfter"]) == ([2, 3], 3)
