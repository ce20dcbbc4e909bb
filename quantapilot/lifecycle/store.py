"""Lifecycle stage results per account: the ``lifecycle_results`` table and its lookups.

One row per stage result. A lifecycle run stores one result (keyed by its run id); the account's realization
workflow stores one per refresh (keyed by an id it derives deterministically). ``seq`` numbers the results of
one (workspace, account, stage) from 1, so a result's docs page version ``1.0.<seq>`` sorts as the latest.

Target results start ``pending_approval`` and become ``approved`` or ``rejected`` at the ``business_case``
gate; only approved targets drive realization. Other stages store ``completed`` results.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

from sqlalchemy import JSON, Column, Index, String, UniqueConstraint, func
from sqlmodel import Field, Session, SQLModel, col, select

from quantapilot.db import UtcDateTime, utcnow
from quantapilot.lifecycle.models import ResultStatus, canonical_account_id
from quantapilot.lifecycle.outputs import StageResult, TargetOutput

RESULT_STATUSES: tuple[str, ...] = get_args(ResultStatus)


class LifecycleResultRecord(SQLModel, table=True):
    """One stage result of one account."""

    __tablename__ = "lifecycle_results"
    __table_args__ = (
        UniqueConstraint("workspace", "account_id", "stage", "seq", name="uq_lifecycle_results_seq"),
        Index("ix_lifecycle_results_ws_account_stage", "workspace", "account_id", "stage"),
    )

    key: str = Field(sa_column=Column(String(200), primary_key=True))
    workspace: str = Field(sa_column=Column(String(128), nullable=False))
    account_id: str = Field(sa_column=Column(String(36), nullable=False))
    stage: str = Field(sa_column=Column(String(16), nullable=False))
    seq: int
    run_id: str = Field(sa_column=Column(String(200), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False))

    def stage_result(self) -> StageResult:
        """The stored result as its model."""
        return StageResult.model_validate(self.result)


def save_result(
    *, session: Session, key: str, workspace: str, run_id: str, status: ResultStatus, result: StageResult
) -> LifecycleResultRecord:
    """Store a stage result once; storing the same key again returns the existing row unchanged.

    The next ``seq`` of the account's stage is taken inside the caller's transaction; two writers racing for
    the same number make one of them fail on the unique constraint (``IntegrityError``), and a retry takes the
    next number.

    Args:
        session: Open session; the caller commits.
        key: Idempotency key of the result (the run id, or a refresh id).
        workspace: Owning workspace.
        run_id: Run (or account stream) that produced the result.
        status: Initial status.
        result: The agent's result.

    Returns:
        The stored row.
    """
    existing = session.get(LifecycleResultRecord, key)
    if existing is not None:
        return existing
    account = canonical_account_id(result.account_id)
    last = session.exec(
        select(func.max(LifecycleResultRecord.seq)).where(
            LifecycleResultRecord.workspace == workspace,
            LifecycleResultRecord.account_id == account,
            LifecycleResultRecord.stage == result.stage,
        )
    ).one()
    now = utcnow()
    row = LifecycleResultRecord(
        key=key,
        workspace=workspace,
        account_id=account,
        stage=result.stage,
        seq=(last or 0) + 1,
        run_id=run_id,
        status=status,
        result=result.model_dump(mode="json", by_alias=True),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def set_status(*, session: Session, key: str, status: ResultStatus) -> LifecycleResultRecord | None:
    """Change a stored result's status (a gate decision); ``None`` when the key is unknown."""
    row = session.get(LifecycleResultRecord, key)
    if row is None:
        return None
    if row.status != status:
        row.status = status
        row.updated_at = utcnow()
        session.add(row)
        session.flush()
    return row


def get_result(*, session: Session, key: str) -> LifecycleResultRecord | None:
    """The result stored under ``key``, if any."""
    return session.get(LifecycleResultRecord, key)


def latest_result(
    *, session: Session, workspace: str, account_id: str, stage: str, statuses: tuple[str, ...] | None = None
) -> LifecycleResultRecord | None:
    """The account's newest result of ``stage`` (highest ``seq``), optionally only with one of ``statuses``."""
    query = select(LifecycleResultRecord).where(
        LifecycleResultRecord.workspace == workspace,
        LifecycleResultRecord.account_id == canonical_account_id(account_id),
        LifecycleResultRecord.stage == stage,
    )
    if statuses is not None:
        query = query.where(col(LifecycleResultRecord.status).in_(statuses))
    return session.exec(query.order_by(col(LifecycleResultRecord.seq).desc()).limit(1)).first()


def latest_approved_target(*, session: Session, workspace: str, account_id: str) -> TargetOutput | None:
    """The output of the account's newest approved target result, or ``None``."""
    row = latest_result(
        session=session, workspace=workspace, account_id=account_id, stage="target", statuses=("approved",)
    )
    if row is None:
        return None
    output = row.stage_result().output
    if not isinstance(output, TargetOutput):
        raise TypeError(f"result {row.key} of stage target holds a {output.stage} output")
    return output


def list_results(*, session: Session, workspace: str, account_id: str, stage: str) -> list[LifecycleResultRecord]:
    """Every result of one stage of an account, oldest first."""
    query = (
        select(LifecycleResultRecord)
        .where(
            LifecycleResultRecord.workspace == workspace,
            LifecycleResultRecord.account_id == canonical_account_id(account_id),
            LifecycleResultRecord.stage == stage,
        )
        .order_by(col(LifecycleResultRecord.seq))
    )
    return list(session.exec(query))


__all__ = [
    "RESULT_STATUSES",
    "LifecycleResultRecord",
    "ResultStatus",
    "get_result",
    "latest_approved_target",
    "latest_result",
    "list_results",
    "save_result",
    "set_status",
]
