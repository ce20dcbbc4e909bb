"""What the model-step tests share: the loopback model server, and an API and worker that call it.

Each test module names the API key its server accepts (``KEY``) and builds its own ``model_settings`` (what it
allows and how it sandboxes differs); ``model_api`` and ``model_worker`` run on those settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.llmserver import ChatServer, chat_server
from tests.support import Api


@pytest.fixture
async def llm(request: pytest.FixtureRequest) -> AsyncIterator[ChatServer]:
    """A loopback Chat Completions server that accepts the test module's ``KEY``."""
    async with chat_server(request.module.KEY) as server:
        yield server


@pytest.fixture
async def model_api(make_api: ApiFactory, model_settings: Settings) -> Api:
    """The API on the module's model settings."""
    return await make_api(model_settings)


@pytest.fixture
async def model_worker(client, model_settings: Settings):
    """A worker on the module's model settings, for the test's duration."""
    from worker import build_worker

    async with build_worker(client, model_settings):
        yield
