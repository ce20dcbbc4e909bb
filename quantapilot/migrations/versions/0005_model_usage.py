"""Model usage: one row per model call (tokens, cost, UTC day), for per-workspace daily limits.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 07:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quantapilot.db import UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "model_usage",
        # The caller's id of the call, stable across retries: saving it twice keeps one row.
        sa.Column("call_id", sa.String(length=255), nullable=False),
        sa.Column("workspace", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=255), nullable=False),
        sa.Column("step", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("usd", sa.Float(), nullable=True),
        sa.Column("day", sa.String(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("call_id"),
    )
    op.create_index(op.f("ix_model_usage_workspace"), "model_usage", ["workspace"], unique=False)
    op.create_index(op.f("ix_model_usage_run_id"), "model_usage", ["run_id"], unique=False)
    op.create_index(op.f("ix_model_usage_day"), "model_usage", ["day"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_model_usage_day"), table_name="model_usage")
    op.drop_index(op.f("ix_model_usage_run_id"), table_name="model_usage")
    op.drop_index(op.f("ix_model_usage_workspace"), table_name="model_usage")
    op.drop_table("model_usage")
