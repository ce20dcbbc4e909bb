"""Durable model spending: one ``model_usage`` row per model call, and what a workspace may still spend today.

The workflow's ledger (:mod:`quantapilot.runs.budget`) counts a run's calls; this table counts every call of every
run of a workspace, which ``limits.tokens_per_day`` needs (no single workflow sees the others). A row is keyed by
a call id its caller makes stable across retries of the same call (the model activity uses the workflow and
activity ids), so a retried write never counts a call twice. The row keeps the answer too: an activity retried
after its call was answered and written (its result lost with a crashed worker) takes the answer from here
(:func:`saved_call`) instead of asking, and paying, again, so the run's ledger and this table count the one call
with the same figures. "A day" is the UTC calendar day; tests may shorten it (``QP_MODEL_DAY_S``), and the day
key is then the start of the short period.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Column, Float, String, Text, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from quantapilot.db import UtcDateTime, session_scope, utcnow

DAY_S = 86400.0


class ModelUsage(SQLModel, table=True):
    """One model call: who made it, what it used and cost, and on which UTC day."""

    __tablename__ = "model_usage"

    call_id: str = Field(sa_column=Column(String(255), primary_key=True))
    workspace: str = Field(sa_column=Column(String(128), nullable=False, index=True))
    run_id: str = Field(sa_column=Column(String(255), nullable=False, index=True))
    step: str = Field(sa_column=Column(String(255), nullable=False))
    role: str = Field(sa_column=Column(String(32), nullable=False))
    model: str = Field(sa_column=Column(String(255), nullable=False))
    input_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    output_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    usd: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    # The UTC date (YYYY-MM-DD), or with a shortened test day the period's start (day_key).
    day: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False))
    # What the model answered (None in rows written before it was kept: a retry of those asks again).
    answer: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    response_id: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    finish_reason: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))


def day_key(at: datetime, day_s: float = DAY_S) -> str:
    """The day ``at`` falls on: its UTC date, or with a shorter test day the start of its period (ISO, UTC)."""
    at = at.astimezone(UTC)
    if day_s >= DAY_S:
        return at.date().isoformat()
    start = datetime.fromtimestamp(at.timestamp() - at.timestamp() % day_s, UTC)
    return start.isoformat(timespec="milliseconds")


def next_day(at: datetime, day_s: float = DAY_S) -> datetime:
    """When the day after the one ``at`` falls on begins (UTC midnight, or the next short test period)."""
    at = at.astimezone(UTC)
    if day_s >= DAY_S:
        return datetime(at.year, at.month, at.day, tzinfo=UTC) + timedelta(days=1)
    return datetime.fromtimestamp(at.timestamp() - at.timestamp() % day_s + day_s, UTC)


def save_model_call(
    engine: Engine,
    *,
    call_id: str,
    workspace: str,
    run_id: str,
    step: str,
    role: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    usd: float | None = None,
    at: datetime | None = None,
    day_s: float = DAY_S,
    answer: str | None = None,
    response_id: str | None = None,
    finish_reason: str | None = None,
) -> bool:
    """Record one model call once: a second save with the same ``call_id`` changes nothing.

    Args:
        engine: Database engine.
        call_id: The call's id, the same for every retry of the call (e.g. workflow id, run id and activity id).
        workspace: The workspace whose day the tokens count against.
        run_id: The run (or workflow) that made the call.
        step: The step, e.g. ``M-001/impl`` or ``doc``.
        role: The model role (``arch``, ``dev``, ``qa``).
        model: The model that answered.
        input_tokens: Prompt tokens the provider reported.
        output_tokens: Completion tokens the provider reported.
        usd: The call's cost, None when the model has no price.
        at: When the call was made (default: now).
        day_s: Length of a day (tests shorten it; see :func:`day_key`).
        answer: The model's answer, for a retry of the same call (:func:`saved_call`).
        response_id: The provider's id of the response.
        finish_reason: Why the model stopped.

    Returns:
        Whether this save wrote the row (False: it was there already).
    """
    when = at or utcnow()
    values = {
        "call_id": call_id,
        "workspace": workspace,
        "run_id": run_id,
        "step": step,
        "role": role,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "usd": usd,
        "day": day_key(when, day_s),
        "created_at": when,
        "answer": answer,
        "response_id": response_id[:255] if response_id else response_id,
        "finish_reason": finish_reason[:64] if finish_reason else finish_reason,
    }
    with session_scope(engine) as session:
        # INSERT ... ON CONFLICT DO NOTHING: a retried activity racing its earlier attempt neither fails nor counts
        # the call twice, and the transaction stays usable.
        insert_fn = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert_fn(ModelUsage)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["call_id"])
            .returning(col(ModelUsage.call_id))
        )
        return session.execute(statement).scalar_one_or_none() is not None


def saved_call(engine: Engine, call_id: str) -> ModelUsage | None:
    """The call saved under ``call_id``, when one was (with its answer, unless it was written before answers were)."""
    with Session(engine) as session:
        return session.get(ModelUsage, call_id)


def day_spent(engine: Engine, workspace: str, day: str) -> int:
    """Tokens (input and output) the workspace's model calls used on ``day`` (a :func:`day_key`)."""
    with Session(engine) as session:
        total = session.exec(
            select(func.coalesce(func.sum(col(ModelUsage.input_tokens) + col(ModelUsage.output_tokens)), 0))
            .where(col(ModelUsage.workspace) == workspace)
            .where(col(ModelUsage.day) == day)
        ).one()
    return int(total)


def day_room(engine: Engine, workspace: str, day: str, limit: int) -> int:
    """Tokens the workspace may still use on ``day`` under a daily ``limit`` (0 once it is spent or overspent)."""
    return max(0, limit - day_spent(engine, workspace, day))
