"""docs/WEBHOOKS.md stays true: its schedule table is the code's, and its copy-paste examples really verify."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from quantapilot.events.envelope import EventEnvelope
from quantapilot.webhooks.schedule import RETRY_SCHEDULE_DOC
from quantapilot.webhooks.sender import prepare_request
from quantapilot.webhooks.signing import new_secret, sign, standard_secret

DOC = Path(__file__).resolve().parents[2] / "docs" / "WEBHOOKS.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_webhooks_doc_schedule_table_is_the_codes() -> None:
    assert RETRY_SCHEDULE_DOC in DOC.read_text(encoding="utf-8")


def test_webhooks_doc_stdlib_verify_example_works() -> None:
    namespace: dict[str, Any] = {}
    exec(_python_blocks()[1], namespace)  # noqa: S102 - the documented example itself is under test
    verify = namespace["verify"]
    old, new = new_secret(), new_secret()
    body = b'{"id":"evt_1"}'
    now = int(time.time())
    header = sign([new, old], body, timestamp=now)
    assert verify(new, header, body) and verify(old, header, body)
    assert not verify(new_secret(), header, body)
    assert not verify(new, header, body + b" ")
    assert not verify(new, sign([new], body, timestamp=now - 301), body)
    assert not verify(new, f"t={now},t={now},v1=00", body)
    assert not verify(new, "garbage", body)


async def test_webhooks_doc_receiver_example_verifies_and_dedupes(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    secret = new_secret()
    source = _python_blocks()[0].replace('SECRET = "whsec_..."', f"SECRET = {secret!r}")
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102 - the documented example itself is under test
    client = await aiohttp_client(namespace["app"])
    envelope = EventEnvelope(
        id="evt_doc", type="run.started", created_at=datetime.now(UTC), workspace="default", run_id="rr_1", seq=1
    )
    body, headers = prepare_request(envelope, secrets=[secret], attempt=1)
    for _ in range(2):
        resp = await client.post("/hooks/quantapilot", data=body, headers=headers)
        assert resp.status == 200
    assert namespace["seen"] == {"evt_doc"}
    bad_body, bad_headers = prepare_request(envelope, secrets=[new_secret()], attempt=1)
    resp = await client.post("/hooks/quantapilot", data=bad_body, headers=bad_headers)
    assert resp.status == 401


async def test_webhooks_doc_standard_webhooks_example_verifies(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    secret = new_secret()
    source = _python_blocks()[2].replace('Webhook("whsec_...")', f"Webhook({standard_secret(secret)!r})")
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102 - the documented example itself is under test
    client = await aiohttp_client(namespace["app"])
    envelope = EventEnvelope(
        id="evt_std", type="run.started", created_at=datetime.now(UTC), workspace="default", run_id="rr_1", seq=1
    )
    # During a rotation: signed by another secret and the receiver's.
    body, headers = prepare_request(envelope, secrets=[new_secret(), secret], attempt=1)
    resp = await client.post("/hooks/standard", data=body, headers=headers)
    assert resp.status == 200
    resp = await client.post("/hooks/standard", data=body + b" ", headers=headers)
    assert resp.status == 401
    # The plain secret is not the Standard Webhooks form: a receiver configured with it accepts nothing (or the
    # library already refuses to decode it: binascii.Error is a ValueError).
    plain = _python_blocks()[2].replace('Webhook("whsec_...")', f"Webhook({secret!r})")
    namespace = {}
    try:
        exec(plain, namespace)  # noqa: S102 - the documented example itself is under test
    except ValueError:
        return
    wrong = await aiohttp_client(namespace["app"])
    resp = await wrong.post("/hooks/standard", data=body, headers=headers)
    assert resp.status == 401
