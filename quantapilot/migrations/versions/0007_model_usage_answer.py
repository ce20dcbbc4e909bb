"""Model usage keeps each call's answer, so a retried call whose first answer was lost is not asked again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # Rows written before keep NULL: a retry of such a call asks the model again, as it did then.
    with op.batch_alter_table("model_usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("answer", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("response_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("finish_reason", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("model_usage", schema=None) as batch_op:
        batch_op.drop_column("finish_reason")
        batch_op.drop_column("response_id")
        batch_op.drop_column("answer")
