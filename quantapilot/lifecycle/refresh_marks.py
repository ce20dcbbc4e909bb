"""Refresh marks: the ``telemetry_refreshes`` table, so telemetry signals a realization about once per refresh.

The API marks an account's refresh as asked for in the transaction that stores its telemetry and signals the
account's workflow only when the mark was clear (:func:`request_refreshes`); the refresh clears it before reading
(:func:`claim_refresh`), so a batch stored while it is set is read by the refresh already asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, String, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Field as SQLField
from sqlmodel import SQLModel

from quantapilot.db import UtcDateTime
from quantapilot.lifecycle.models import canonical_account_id


class TelemetryRefresh(SQLModel, table=True):
    """An account whose realization refresh was asked for (its workflow signalled) and has not started reading.

    The API signals an account's workflow only when it marks a row here that was clear (or asked for so long ago
    that the signal may have been lost); the refresh clears the mark before it reads the telemetry
    (:func:`claim_refresh`), so a batch stored while the mark is set is read by that refresh. A burst then costs
    about one signal per refresh instead of one per batch.
    """

    __tablename__ = "telemetry_refreshes"

    workspace: str = SQLField(sa_column=Column(String(128), primary_key=True))
    account_id: str = SQLField(sa_column=Column(String(36), primary_key=True))
    # When the refresh was asked for; NULL: none is asked for (a refresh has started reading since).
    requested_at: datetime | None = SQLField(default=None, sa_column=Column(UtcDateTime(), nullable=True))


def request_refreshes(
    connection: Connection, *, workspace: str, account_ids: Sequence[str], now: datetime, resignal_before: datetime
) -> set[str]:
    """Mark the accounts' realization refreshes as asked for; return those whose workflow must be signalled.

    One ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``: an account is returned (and its mark set to
    ``now``) when it had no mark, a clear one, or one set before ``resignal_before`` (a signal that may have been
    lost, a workflow that is gone); an account whose refresh is already asked for is not, and the refresh that
    was asked for reads its events (it clears the mark before reading, :func:`claim_refresh`). Run it in the
    transaction that stores the events, so the mark and the events commit together. Rows are locked in account
    order, so concurrent batches of the same accounts cannot deadlock on PostgreSQL.

    Args:
        connection: Connection in the storing transaction.
        workspace: Caller's workspace.
        account_ids: Canonical account UUIDs of the batch.
        now: The time of the request.
        resignal_before: A mark set before this is asked for again.

    Returns:
        The accounts to signal.
    """
    if not account_ids:
        return set()
    table = TelemetryRefresh.__table__  # type: ignore[attr-defined]
    flavour: Any = postgresql if connection.dialect.name == "postgresql" else sqlite
    insert = flavour.insert(table).values(
        [{"workspace": workspace, "account_id": a, "requested_at": now} for a in sorted(set(account_ids))]
    )
    statement = insert.on_conflict_do_update(
        index_elements=["workspace", "account_id"],
        set_={"requested_at": insert.excluded.requested_at},
        where=or_(table.c.requested_at.is_(None), table.c.requested_at < resignal_before),
    ).returning(table.c.account_id)
    return set(connection.execute(statement).scalars())


def release_refresh(connection: Connection, *, workspace: str, account_id: str, requested_at: datetime) -> None:
    """Clear a mark :func:`request_refreshes` set at ``requested_at`` whose signal failed: the next batch signals.

    A mark set again since (another request's) is left alone.
    """
    table = TelemetryRefresh.__table__  # type: ignore[attr-defined]
    connection.execute(
        update(table)
        .where(
            table.c.workspace == workspace,
            table.c.account_id == account_id,
            table.c.requested_at == requested_at,
        )
        .values(requested_at=None)
    )


def claim_refresh(connection: Connection, *, workspace: str, account_id: str) -> None:
    """A realization refresh of the account starts reading: clear its mark; commit before reading the telemetry.

    Events stored before the commit are read by this refresh; a batch stored after it finds the mark clear and
    signals again. Any realization read may clear it (a lifecycle run's too): a clear mark only costs a signal.
    """
    table = TelemetryRefresh.__table__  # type: ignore[attr-defined]
    connection.execute(
        update(table)
        .where(
            table.c.workspace == workspace,
            table.c.account_id == canonical_account_id(account_id),
            table.c.requested_at.is_not(None),
        )
        .values(requested_at=None)
    )
