"""Fixtures of the review page tests: the webhook stack's settings (loopback receivers, fast retries)."""

from __future__ import annotations

from tests.webhook_e2e.conftest import make_stack, receiver, settings

__all__ = ["make_stack", "receiver", "settings"]
