"""Shared set-up of the webhook table tests (run on real SQLite and PostgreSQL by the db_engine fixture)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from quantapilot.db import session_scope
from quantapilot.secretbox import KeyRing
from quantapilot.webhooks import endpoints

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://hooks.example.com/qp"
KEYS = KeyRing([bytes(range(32))])


def create_endpoint_row(engine: Engine, workspace: str = "ws1", **kwargs: Any) -> tuple[str, str]:
    """Create an endpoint at :data:`T0`; return its id and plaintext secret."""
    with session_scope(engine) as session:
        endpoint, secret = endpoints.create_endpoint(
            session=session, workspace=workspace, url=URL, keyring=KEYS, now=T0, **kwargs
        )
        return endpoint.id, secret
