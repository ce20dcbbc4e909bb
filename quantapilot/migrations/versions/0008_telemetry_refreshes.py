"""Telemetry refresh marks: accounts whose realization refresh is asked for and has not started reading.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 23:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quantapilot.db import UtcDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # No rows: the first batch of each account after the upgrade signals, as every batch did before.
    op.create_table(
        "telemetry_refreshes",
        sa.Column("workspace", sa.String(length=128), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("workspace", "account_id"),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("telemetry_refreshes")
