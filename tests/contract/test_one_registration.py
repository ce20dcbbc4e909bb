"""Adding an endpoint is one registration: a throwaway endpoint in a fresh registry is mounted, documented, rate
classed and authorized (public or its scope) with nothing else written anywhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.app import create_app
from api.endpoints import ENDPOINTS
from api.openapi import COMPONENT_PREFIX
from api.ratelimit import RouteClass, route_class
from api.registry import PUBLIC, Body, Call, Endpoint, Param, Registry
from quantapilot.bodies import Health
from quantapilot.runs.http import PauseRequest, RunStatusView
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.security.support import assert_envelope

SEEN: list[Call] = []


async def poke(request: web.Request, call: Call) -> web.Response:
    SEEN.append(call)
    return web.json_response({"thing": request.match_info["thing_id"], "by": call.principal.subject, **call.body})


async def hello(request: web.Request, call: Call) -> web.Response:
    return web.json_response({"hello": "world"})


POKE = Endpoint(
    "POST",
    "/v1/throwaway/{thing_id}/poke",
    poke,
    "docs:read",
    "pokeThrowaway",
    "Poke a throwaway thing",
    "runs",
    200,
    RunStatusView,
    body=Body(PauseRequest, required=False),
    params=(Param("thing_id", "path", {"type": "string"}, "The thing.", required=True),),
    idempotency_key=True,
    rate="telemetry",
)
HELLO = Endpoint("GET", "/v1/throwaway-hello", hello, PUBLIC, "throwawayHello", "Say hello", "service", 200, Health)


async def test_one_registration_mounts_documents_classes_and_authorizes_an_endpoint(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    client: Client,
    engine: Engine,
    settings: Settings,
) -> None:
    registry = Registry((*ENDPOINTS, POKE, HELLO))
    http = await aiohttp_client(create_app(settings, client=client, engine=engine, endpoints=registry))

    # The contract documents both, with the scope, the rate class, the body and the key.
    resp = await http.get("/v1/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    op = document["paths"]["/v1/throwaway/{thing_id}/poke"]["post"]
    assert op["operationId"] == "pokeThrowaway"
    assert op["x-required-scope"] == "docs:read"
    assert op["security"] == [{"bearerAuth": ["docs:read"]}]
    assert op["x-rate-limit-class"] == "telemetry"
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": COMPONENT_PREFIX + "PauseRequest"}
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in op["parameters"]
    hello_op = document["paths"]["/v1/throwaway-hello"]["get"]
    assert hello_op["x-required-scope"] is None and hello_op["security"] == []

    # Rate classes and the auth table come from the same registry.
    assert route_class("POST", "/v1/throwaway/{thing_id}/poke", endpoints=registry) == RouteClass.TELEMETRY
    assert "/v1/throwaway-hello" in registry.public_paths()
    assert "/v1/throwaway-hello" not in ENDPOINTS.public_paths()

    # Public: answered without a token.
    resp = await http.get("/v1/throwaway-hello")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"hello": "world"}

    # Scoped: 401 without a token, 403 without the scope, then key and body checked before the handler runs.
    resp = await http.post("/v1/throwaway/t1/poke", json={})
    assert resp.status == 401
    lacking, _ = create_token(engine, workspace="default", subject="nobody", scopes=["runs:read"])
    resp = await http.post("/v1/throwaway/t1/poke", json={}, headers={"Authorization": f"Bearer {lacking}"})
    assert resp.status == 403
    assert (await resp.json())["error"]["details"] == {"scope": "docs:read"}
    token, _ = create_token(engine, workspace="default", subject="poker", scopes=["docs:read"])
    auth = {"Authorization": f"Bearer {token}"}
    resp = await http.post("/v1/throwaway/t1/poke", json={}, headers={**auth, "Idempotency-Key": "bad key"})
    assert resp.status == 400
    resp = await http.post("/v1/throwaway/t1/poke", json={"reason": 5}, headers=auth)
    assert resp.status == 422
    assert_envelope(await resp.json(), "VALIDATION_ERROR")
    assert SEEN == []

    resp = await http.post("/v1/throwaway/t1/poke", json={"reason": "why"}, headers={**auth, "Idempotency-Key": "k1"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"thing": "t1", "by": "poker", "reason": "why"}
    assert "RateLimit-Limit" in resp.headers
    (call,) = SEEN
    assert call.endpoint is POKE
    assert call.idempotency_key == "k1"
    assert call.principal.subject == "poker"
