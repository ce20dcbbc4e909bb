"""Alembic migrations of the service database (``qp db upgrade``); see :mod:`quantapilot.migrate`."""
