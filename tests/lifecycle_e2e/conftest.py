"""Fixtures of the lifecycle end-to-end tests: an API whose account workflows use a short coalescing window."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.app import create_app
from api.lifecycle_routes import REALIZATION_OPTIONS, RealizationOptions
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.support import Api

LcApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_lc_api(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    client: Client,
    engine: Engine,
    settings: Settings,
) -> LcApiFactory:
    """Build API clients with given realization options, workspace and scopes."""

    async def _make(
        *,
        window_s: float = 0.5,
        refreshes_per_run: int = 100,
        workspace: str = "default",
        scopes: tuple[str, ...] | None = None,
        app_engine: Engine | None = None,
        app_settings: Settings | None = None,
    ) -> Api:
        eng = app_engine or engine
        app = create_app(app_settings or settings, client=client, engine=eng)
        app[REALIZATION_OPTIONS] = RealizationOptions(window_s=window_s, refreshes_per_run=refreshes_per_run)
        test_client = await aiohttp_client(app)
        kwargs: dict[str, Any] = {"scopes": scopes} if scopes is not None else {}
        token, _ = create_token(eng, workspace=workspace, subject="tester", **kwargs)
        return Api(client=test_client, token=token)

    return _make


@pytest.fixture
async def lc_api(make_lc_api: LcApiFactory) -> Api:
    """An all-scopes API client whose account workflows refresh at most every 0.5 s."""
    return await make_lc_api()
