"""Shared fixtures. Database fixtures live in tests/dbfixtures.py and are re-exported here."""

from tests.dbfixtures import db_engine, postgres_url

__all__ = ["db_engine", "postgres_url"]
