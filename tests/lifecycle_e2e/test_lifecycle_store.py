"""lifecycle_store on real SQLite and PostgreSQL: idempotent saves, per-stage seq, approval and lookups."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from quantapilot.db import session_scope
from quantapilot.lifecycle.agents import load_agents, run_agent
from quantapilot.lifecycle.models import KpiOverride, LifecycleInputs
from quantapilot.lifecycle.outputs import StageInput, StageResult
from quantapilot.lifecycle.store import (
    LifecycleResultRecord,
    latest_approved_target,
    latest_result,
    list_results,
    save_result,
    set_status,
)

ACCOUNT = "6F1C1D1E-2B3A-4C5D-8E9F-0A1B2C3D4E5F"  # upper case on purpose: stored canonical
AS_OF = datetime(2025, 11, 17, 12, tzinfo=UTC)


def target_result(goal: float) -> StageResult:
    inputs = LifecycleInputs(kpis=[KpiOverride(kpi="deal_conversion", baseline=100, target=goal)])
    return run_agent(load_agents(entry_points=[])["target"], StageInput(stage="target", account_id=ACCOUNT,
                                                                        as_of=AS_OF, inputs=inputs))  # fmt: skip


def test_lifecycle_store_seq_idempotency_and_latest_approved(db_engine: Engine) -> None:
    with session_scope(db_engine) as s:
        first = save_result(session=s, key="run-1", workspace="ws", run_id="run-1", status="pending_approval",
                            result=target_result(150))  # fmt: skip
        second = save_result(session=s, key="run-2", workspace="ws", run_id="run-2", status="pending_approval",
                             result=target_result(300))  # fmt: skip
        again = save_result(session=s, key="run-1", workspace="ws", run_id="run-1", status="completed",
                            result=target_result(999))  # fmt: skip
        other_ws = save_result(session=s, key="run-3", workspace="other", run_id="run-3", status="approved",
                               result=target_result(500))  # fmt: skip
        assert (first.seq, second.seq, other_ws.seq) == (1, 2, 1)
        assert again.seq == 1 and again.status == "pending_approval"  # a retry returns the first write
        assert first.account_id == ACCOUNT.lower()
    with session_scope(db_engine) as s:
        assert latest_approved_target(session=s, workspace="ws", account_id=ACCOUNT) is None
        assert set_status(session=s, key="run-1", status="approved") is not None
        assert set_status(session=s, key="missing", status="approved") is None
    with session_scope(db_engine) as s:
        target = latest_approved_target(session=s, workspace="ws", account_id=ACCOUNT.lower())
        assert target is not None and target.kpi_targets[0].target == 150
        set_status(session=s, key="run-2", status="approved")
    with session_scope(db_engine) as s:
        target = latest_approved_target(session=s, workspace="ws", account_id=ACCOUNT)
        assert target is not None and target.kpi_targets[0].target == 300  # the newer approval wins
        newest = latest_result(session=s, workspace="ws", account_id=ACCOUNT, stage="target")
        assert newest is not None and newest.key == "run-2"
        rows = list_results(session=s, workspace="ws", account_id=ACCOUNT, stage="target")
        assert [(r.key, r.status) for r in rows] == [("run-1", "approved"), ("run-2", "approved")]
        assert rows[0].stage_result().output.stage == "target"


def test_lifecycle_store_seq_is_unique_per_account_stage(db_engine: Engine) -> None:
    with session_scope(db_engine) as s:
        save_result(session=s, key="a", workspace="ws", run_id="a", status="completed", result=target_result(150))
    # A writer that computed the same seq concurrently loses on the unique constraint (its activity retries).
    row = LifecycleResultRecord(key="b", workspace="ws", account_id=ACCOUNT.lower(), stage="target", seq=1,
                                run_id="b", status="completed", result={})  # fmt: skip
    with session_scope(db_engine) as s:
        s.add(row)
        with pytest.raises(IntegrityError):
            s.flush()
        s.rollback()
