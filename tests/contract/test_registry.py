"""The registry refuses declarations the router, the contract or the auth table could not all honour."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from api.body import may_hold_nul
from api.endpoints import ENDPOINTS
from api.registry import PUBLIC, RUN_PATH, Body, Call, Endpoint, Method, Registry
from quantapilot.bodies import EmptyRequest
from quantapilot.models import RunState
from quantapilot.runs.http import LifecycleRunAccepted, TelemetryAccepted


async def handler(request: web.Request, call: Call) -> web.Response:
    return web.json_response({})


def endpoint(method: Method, path: str, scope: str | None, operation_id: str) -> Endpoint:
    return Endpoint(method, path, handler, scope, operation_id, "s", "service", 200, None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((endpoint("GET", "/x", "runs:read", "a"), endpoint("GET", "/x", "runs:read", "b")), "declared twice"),
        ((endpoint("GET", "/x", "runs:read", "a"), endpoint("GET", "/y", "runs:read", "a")), "declared twice"),
        ((endpoint("GET", "/x/{id:.+}", "runs:read", "a"), endpoint("GET", "/x/{id}", "runs:read", "b")), "twice"),
        ((endpoint("GET", "/p/{id}", PUBLIC, "a"),), "path variable"),
        ((endpoint("GET", "/p", PUBLIC, "a"), endpoint("POST", "/p", "runs:read", "b")), "both public and scoped"),
    ],
)
def test_registry_refuses_inconsistent_declarations(extra: tuple[Endpoint, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Registry(extra)


def test_registry_seed_alias_follows_the_run_path() -> None:
    ids = [e.operation_id for e in ENDPOINTS.resolved("/trigger")]
    assert "triggerRunSeedAlias" in ids
    alias = ENDPOINTS.find("POST", "/trigger", run_path="/trigger")
    assert alias is not None and alias.deprecated and alias.path == "/trigger"
    # Configured onto its target, the alias is the target itself.
    assert "triggerRunSeedAlias" not in [e.operation_id for e in ENDPOINTS.resolved("/v1/runs")]
    assert not any(e.path == RUN_PATH for e in ENDPOINTS.resolved("/run"))
    # Onto another endpoint's path it is a configuration error, not a silently shadowed route.
    with pytest.raises(ValueError, match="ingestTelemetry"):
        ENDPOINTS.resolved("/v1/telemetry/events")


def test_registry_answer_is_the_declared_model_with_the_declared_status() -> None:
    trigger = ENDPOINTS.find("POST", "/v1/lifecycle/runs", run_path="/run")
    assert trigger is not None
    call = Call(endpoint=trigger)
    accepted = LifecycleRunAccepted(
        run_id="lc_" + "0" * 32, status=RunState.RUNNING, status_url="http://x/r", events_url="http://x/e", created=True
    )
    answer = call.answer(accepted, headers={"Location": "http://x/r"})
    assert answer.status == 202 and answer.headers["Location"] == "http://x/r"
    # The published camelCase shape: the model's dump by alias.
    assert json.loads(answer.text or "") == {
        "runId": "lc_" + "0" * 32,
        "status": "running",
        "statusUrl": "http://x/r",
        "eventsUrl": "http://x/e",
        "created": True,
    }
    # Any other model is a programming error, never sent.
    with pytest.raises(TypeError, match="triggerLifecycleRun"):
        call.answer(TelemetryAccepted(accepted=0, duplicates=0, account_ids=[], accounts=[], refreshes_scheduled=0))


async def _parsed(raw: bytes) -> bytes:
    return raw


def test_registry_body_is_parsed_decoded_or_from_bytes_not_both() -> None:
    with pytest.raises(ValueError, match="either decoded"):
        Body(EmptyRequest, parse=_parsed, from_bytes=_parsed)


@pytest.mark.parametrize(
    ("raw", "nul"),
    [
        (b'{"a": "x\\u0000"}', True),  # the escape
        (b'{"a\\u0000": 1}', True),  # in a key
        (b'{"a": "x\x00"}', True),  # a raw byte (malformed JSON, but decoded to decide all the same)
        (b'{"a": "x\\\\u0000"}', True),  # an escaped backslash, then u0000: a false alarm, decode_json decides
        (b'{"a": "x\\u0001 u0000 \\\\ 0"}', False),
    ],
)
def test_registry_bytes_nul_check_misses_no_nul(raw: bytes, nul: bool) -> None:
    # may_hold_nul must be True whenever decode_json finds a NUL: a body parsed from its bytes relies on it.
    assert may_hold_nul(raw) is nul
    holds = "\x00" in json.dumps(json.loads(raw.decode("utf-8", "replace"), strict=False), ensure_ascii=False)
    assert not holds or may_hold_nul(raw)
