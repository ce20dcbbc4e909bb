"""``/metrics`` (request counts per route) is not the world's: a token, a separate listener, off in production."""

from __future__ import annotations

import aiohttp
import pytest

from quantapilot.secretbox import generate_key
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.security.support import assert_envelope
from tests.webhook_e2e.support import free_port

METRIC = "qp_api_requests_total"


async def test_metrics_with_token_need_the_token(make_api: ApiFactory, settings: Settings) -> None:
    token = "metrics-" + generate_key()
    api = await make_api(settings.model_copy(update={"metrics_token": token}))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {api.token}"}):
        resp = await api.client.get("/metrics", headers=headers)
        body = await resp.json()
        assert resp.status == 401, body
        assert_envelope(body, "AUTHENTICATION_ERROR")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert token not in await resp.text()
    resp = await api.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert METRIC in await resp.text()


async def test_metrics_on_separate_port_not_on_the_api_port(make_api: ApiFactory, settings: Settings) -> None:
    port = free_port()
    token = "metrics-" + generate_key()
    api = await make_api(settings.model_copy(update={"metrics_port": port, "metrics_token": token}))
    resp = await api.client.get("/metrics")
    assert resp.status == 404
    assert METRIC not in await resp.text()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 401  # the token, when set, applies on the metrics port too
        async with http.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            assert METRIC in await resp.text()
        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 404  # only metrics live there


@pytest.mark.parametrize(("environment", "served"), [("production", False), ("development", True)])
async def test_metrics_default_by_environment(
    make_api: ApiFactory, settings: Settings, environment: str, served: bool
) -> None:
    api = await make_api(settings.model_copy(update={"environment": environment}))
    resp = await api.client.get("/metrics")
    text = await resp.text()
    if served:
        assert resp.status == 200 and METRIC in text
    else:
        assert resp.status == 404 and METRIC not in text
