"""The ``run_events`` table: every run's (and every account stream's) event log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class RunEvent(SQLModel, table=True):
    """One event of a run, in the run's own order (``seq``).

    The columns are the fields of :class:`~quantapilot.events.record.EventRecord`, which maps to and from rows.
    """

    __tablename__ = "run_events"
    __table_args__ = (
        UniqueConstraint("run_id", "seq", name="uq_run_events_run_seq"),
        Index("ix_run_events_workspace_run", "workspace", "run_id"),
    )

    id: str = Field(primary_key=True)
    run_id: str = Field(index=True)
    workspace: str
    run_kind: str
    seq: int
    type: str
    correlation_id: str | None = None
    created_at: datetime
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    trace_id: str | None = Field(default=None, max_length=32)
