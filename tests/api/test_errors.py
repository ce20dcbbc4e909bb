"""Temporal errors that mean "not now" answer 503 with Retry-After; any other Temporal error stays a 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from temporalio.service import RPCError, RPCStatusCode

from api.errors import error_middleware
from tests.security.support import assert_envelope

# The server's own answer to a query whose task queue has had no poller for a while (temporalio/temporal #5252):
# the API saw it in a drill under load, after a worker was killed, as a 500.
NO_POLLER = RPCError(
    "no poller seen for task queue recently, worker may be down", RPCStatusCode.FAILED_PRECONDITION, b""
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NO_POLLER, 503),
        (RPCError("deadline", RPCStatusCode.DEADLINE_EXCEEDED, b""), 503),
        (RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b""), 503),
        # Another failed precondition is not a missing worker: a retry would not help.
        (RPCError("workflow closed", RPCStatusCode.FAILED_PRECONDITION, b""), 500),
        (RPCError("bad", RPCStatusCode.INVALID_ARGUMENT, b""), 500),
    ],
)
async def test_errors_temporal_status_maps_to_503_only_when_retrying_can_help(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], error: RPCError, status: int
) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/x", handler)
    client = await aiohttp_client(app)
    resp = await client.get("/x")
    assert resp.status == status
    body = await resp.json()
    assert_envelope(body, "SERVICE_UNAVAILABLE" if status == 503 else "SERVER_ERROR")
    assert ("Retry-After" in resp.headers) == (status == 503)
