"""The run event: its table, the record <-> row <-> envelope mapping (its fields are listed once), the log.

This package module imports nothing on purpose: workflows import :mod:`quantapilot.events.record` through the
sandbox, and it must not drag the webhook sender in with it.
"""
