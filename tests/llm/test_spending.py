"""model_usage: per-call rows saved once by call id, and the tokens a workspace has left today."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from quantapilot.llm.spending import ModelUsage, day_key, day_room, day_spent, next_day, save_model_call
from quantapilot.settings import Settings

NOON = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _save(engine: Engine, call_id: str, *, workspace: str = "acme", tokens: tuple[int, int] = (100, 20), **kw) -> bool:
    return save_model_call(
        engine,
        call_id=call_id,
        workspace=workspace,
        run_id=kw.pop("run_id", "run-1"),
        step="M-001/impl",
        role="dev",
        model="dev-model",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        usd=kw.pop("usd", 0.001),
        at=kw.pop("at", NOON),
        **kw,
    )


def test_spending_save_is_idempotent_by_call_id(db_engine: Engine) -> None:
    assert _save(db_engine, "wf/run/1") is True
    # A retried activity saves the same call again (even with other figures): still one row, the first.
    assert _save(db_engine, "wf/run/1", tokens=(999, 999)) is False
    with Session(db_engine) as session:
        rows = session.exec(select(ModelUsage)).all()
    assert len(rows) == 1
    row = rows[0]
    assert (row.workspace, row.run_id, row.step, row.role, row.model) == (
        "acme",
        "run-1",
        "M-001/impl",
        "dev",
        "dev-model",
    )
    assert (row.input_tokens, row.output_tokens, row.usd, row.day) == (100, 20, 0.001, "2026-12-03")
    assert row.created_at == NOON and row.created_at.tzinfo is not None


def test_spending_day_room_counts_the_workspace_on_that_day_only(db_engine: Engine) -> None:
    _save(db_engine, "a", tokens=(300, 100))
    _save(db_engine, "b", tokens=(50, 50), run_id="run-2")
    _save(db_engine, "c", workspace="other", tokens=(5000, 0))
    _save(db_engine, "d", at=datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC), tokens=(7000, 0))
    _save(db_engine, "e", at=datetime(2026, 12, 4, 0, 0, tzinfo=UTC), tokens=(8000, 0))
    assert day_spent(db_engine, "acme", "2026-12-03") == 500
    assert day_room(db_engine, "acme", "2026-12-03", 1000) == 500
    assert day_room(db_engine, "acme", "2026-12-03", 400) == 0  # overspent: nothing left, never negative
    assert day_room(db_engine, "acme", "2026-12-05", 1000) == 1000
    assert day_room(db_engine, "nobody", "2026-12-03", 10) == 10


def test_spending_days_are_utc_and_a_test_day_may_be_shorter() -> None:
    late = datetime.fromisoformat("2026-12-03T23:30:00-05:00")  # already Dec 4 in UTC
    assert day_key(late) == "2026-12-04"
    assert next_day(late) == datetime(2026, 12, 5, tzinfo=UTC)
    assert next_day(NOON) == datetime(2026, 12, 4, tzinfo=UTC)
    at = datetime(2026, 12, 3, 12, 0, 7, 500000, tzinfo=UTC)
    assert day_key(at, 5.0) == "2026-12-03T12:00:05.000+00:00"
    assert next_day(at, 5.0) == datetime(2026, 12, 3, 12, 0, 10, tzinfo=UTC)
    assert day_key(datetime(2026, 12, 3, 12, 0, 9, 999000, tzinfo=UTC), 5.0) == day_key(at, 5.0)


def test_spending_a_shorter_day_is_for_tests_only(tmp_path) -> None:
    assert Settings(environment="test", state_dir=tmp_path, model_day_s=5).model_day_s == 5
    assert Settings(environment="production", state_dir=tmp_path).model_day_s == 86400
    with pytest.raises(ValidationError, match="QP_MODEL_DAY_S"):
        Settings(environment="production", state_dir=tmp_path, model_day_s=5)
