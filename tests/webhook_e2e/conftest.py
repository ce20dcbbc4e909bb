"""Fixtures of the webhook end-to-end tests: fast retry settings, loopback receivers, a stack per settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from temporalio.client import Client

from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.webhook_e2e.support import Receiver, Stack
from worker import build_worker

# Delays of 15-30 ms, then doubling: a receiver that is down for a few seconds costs a handful of attempts.
RETRY_SCALE = 0.0005


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with loopback receivers allowed, fast retries and no rate limits."""
    return settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_retry_scale": RETRY_SCALE,
            "webhook_timeout_s": 5.0,
            "rate_limit_enabled": False,
        }
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A healthy signature-checking receiver on 127.0.0.1."""
    async with Receiver() as rec:
        yield rec


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(make_api: ApiFactory, client: Client, settings: Settings) -> AsyncIterator[StackFactory]:
    """Start an in-process worker and an API client for settings derived from the test's settings."""
    async with contextlib.AsyncExitStack() as exits:

        async def _make(*, worker: bool = True, api_settings: Settings | None = None, **updates: Any) -> Stack:
            current = settings.model_copy(update=updates)
            if worker:
                await exits.enter_async_context(build_worker(client, current))
            api = await make_api(api_settings or current)
            return Stack(api=api, settings=current)

        yield _make
