"""The local listener app: verified events reach the callback, bad signatures get 401."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from quantapilot.events.envelope import EventEnvelope
from quantapilot.webhooks.listen import create_listener_app, format_event
from quantapilot.webhooks.sender import prepare_request
from quantapilot.webhooks.signing import SIGNATURE_HEADER, sign

SECRET = "whsec_listener"


@pytest.fixture
async def listener() -> Any:
    events: list[dict[str, Any]] = []
    app = create_listener_app(SECRET, on_event=events.append)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, events


def _envelope() -> EventEnvelope:
    return EventEnvelope(
        id="ev_9",
        type="gate.requested",
        created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        workspace="ws1",
        run_id="run_7",
        seq=4,
        data={"gate": "anchor"},
    )


async def test_listen_accepts_correctly_signed_post(listener: Any) -> None:
    client, events = listener
    body, headers = prepare_request(_envelope(), secrets=["whsec_other", SECRET], attempt=1)
    response = await client.post("/any/path", data=body, headers=headers)
    assert response.status == 200
    assert await response.json() == {"received": "ev_9"}
    assert events == [json.loads(body)]


async def test_listen_rejects_bad_signatures(listener: Any) -> None:
    client, events = listener
    body, headers = prepare_request(_envelope(), secrets=["whsec_wrong"], attempt=1)
    assert (await client.post("/", data=body, headers=headers)).status == 401
    good_body, good_headers = prepare_request(_envelope(), secrets=[SECRET], attempt=1)
    assert (await client.post("/", data=good_body + b" ", headers=good_headers)).status == 401
    no_signature = {k: v for k, v in good_headers.items() if k != SIGNATURE_HEADER}
    assert (await client.post("/", data=good_body, headers=no_signature)).status == 401
    stale = {**good_headers, SIGNATURE_HEADER: sign([SECRET], good_body, timestamp=int(time.time()) - 3600)}
    response = await client.post("/", data=good_body, headers=stale)
    assert response.status == 401
    assert await response.json() == {"error": "invalid signature"}
    assert events == []


async def test_listen_signed_non_object_is_400(listener: Any) -> None:
    client, events = listener
    for body in (b"[1,2]", b"not json", b"\xff\xfe"):
        headers = {SIGNATURE_HEADER: sign([SECRET], body, timestamp=int(time.time()))}
        assert (await client.post("/", data=body, headers=headers)).status == 400
    assert events == []


async def test_listen_only_post(listener: Any) -> None:
    client, _events = listener
    assert (await client.get("/")).status == 405


def test_listen_requires_secret_and_formats_events() -> None:
    with pytest.raises(ValueError, match="secret"):
        create_listener_app("", on_event=lambda _e: None)
    line = format_event(_envelope().model_dump(mode="json"))
    assert line == '2024-01-02T03:04:05Z gate.requested ev_9 run=run_7 seq=4 {"gate":"anchor"}'
