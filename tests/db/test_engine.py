"""Engine settings on a real PostgreSQL server: statements are bounded below the activity timeout."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from quantapilot.db import make_engine
from quantapilot.settings import Settings


@pytest.mark.postgres
def test_postgres_statement_timeout_cancels_a_long_statement(postgres_url: str) -> None:
    engine = make_engine(postgres_url, statement_timeout_s=0.2)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "200ms"
            with pytest.raises(OperationalError) as err:
                conn.exec_driver_sql("SELECT pg_sleep(5)")
            assert type(err.value.orig).__name__ == "QueryCanceled"
    finally:
        engine.dispose()
    unbounded = make_engine(postgres_url)
    try:
        with unbounded.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
    finally:
        unbounded.dispose()


def test_statement_timeout_default_is_below_the_activity_timeout() -> None:
    from workflows.account_realization import ACTIVITY_TIMEOUT
    from workflows.common import EVENT_ACTIVITY_TIMEOUT

    shortest = min(ACTIVITY_TIMEOUT, EVENT_ACTIVITY_TIMEOUT).total_seconds()
    assert 0 < Settings().db_statement_timeout_s < shortest
