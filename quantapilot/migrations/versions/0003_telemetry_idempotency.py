"""Telemetry idempotency: the sender's event id (unique per workspace) and batches stored by Idempotency-Key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from quantapilot.db import UtcDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "telemetry_batches",
        sa.Column("workspace", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("workspace", "idempotency_key"),
    )
    # Existing rows get NULL, and NULLs never collide under the unique constraint.
    with op.batch_alter_table("telemetry_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("event_id", sa.String(length=128), nullable=True))
        batch_op.create_unique_constraint("uq_telemetry_events_ws_event_id", ["workspace", "event_id"])


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("telemetry_events", schema=None) as batch_op:
        batch_op.drop_constraint("uq_telemetry_events_ws_event_id", type_="unique")
        batch_op.drop_column("event_id")
    op.drop_table("telemetry_batches")
