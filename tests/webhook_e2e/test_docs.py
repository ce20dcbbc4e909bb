"""docs/WEBHOOKS.md stays true: its schedule table is the code's, and its copy-paste examples really verify.

The examples run as documented (executed from the file): against requests signed like the worker signs them,
and against real deliveries the worker made to a loopback receiver.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import standardwebhooks
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from quantapilot.events.envelope import EventEnvelope
from quantapilot.webhooks.schedule import RETRY_SCHEDULE_DOC
from quantapilot.webhooks.sender import prepare_request
from quantapilot.webhooks.signing import new_secret, sign, standard_secret
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import Receiver, all_status, create_endpoint, fast_run, wait_deliveries

DOC = Path(__file__).resolve().parents[2] / "docs" / "WEBHOOKS.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def _block(marker: str) -> str:
    """The one documented python example containing ``marker``."""
    (found,) = [block for block in _python_blocks() if marker in block]
    return found


def test_webhooks_doc_schedule_table_is_the_codes() -> None:
    assert RETRY_SCHEDULE_DOC in DOC.read_text(encoding="utf-8")


def test_webhooks_doc_stdlib_verify_example_works() -> None:
    namespace: dict[str, Any] = {}
    exec(_block("def verify("), namespace)  # noqa: S102 - the documented example itself is under test
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
    source = _block("verify_signature(SECRET").replace('SECRET = "whsec_..."', f"SECRET = {secret!r}")
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
    source = _block("from standardwebhooks").replace('Webhook("whsec_...")', f"Webhook({standard_secret(secret)!r})")
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
    plain = _block("from standardwebhooks").replace('Webhook("whsec_...")', f"Webhook({secret!r})")
    namespace = {}
    try:
        exec(plain, namespace)  # noqa: S102 - the documented example itself is under test
    except ValueError:
        return
    wrong = await aiohttp_client(namespace["app"])
    resp = await wrong.post("/hooks/standard", data=body, headers=headers)
    assert resp.status == 401


def _doc_function(marker: str, name: str) -> Callable[..., bool]:
    namespace: dict[str, Any] = {}
    exec(_block(marker), namespace)  # noqa: S102 - the documented example itself is under test
    function: Callable[..., bool] = namespace[name]
    return function


def test_webhooks_doc_stdlib_standard_webhooks_example_works() -> None:
    verify_standard = _doc_function("def verify_standard(", "verify_standard")
    old, new = new_secret(), new_secret()
    envelope = EventEnvelope(id="evt_sw", type="run.started", created_at=datetime.now(UTC), workspace="default")
    body, headers = prepare_request(envelope, secrets=[new, old], attempt=1)
    received = CIMultiDict(headers)
    assert verify_standard(standard_secret(new), received, body) and verify_standard(
        standard_secret(old), received, body
    )
    # The reference implementation agrees with the copy-paste one.
    standardwebhooks.Webhook(standard_secret(new)).verify(body, dict(received))
    assert not verify_standard(standard_secret(new_secret()), received, body)
    assert not verify_standard(new, received, body)  # the plain secret is not the key
    assert not verify_standard(standard_secret(new), received, body + b" ")
    for name, value in (("webhook-id", "evt_other"), ("webhook-timestamp", str(int(time.time()) - 301))):
        assert not verify_standard(standard_secret(new), CIMultiDict({**received, name: value}), body)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert not verify_standard(
            standard_secret(new), CIMultiDict({k: v for k, v in received.items() if k != name}), body
        )
    assert not verify_standard(standard_secret(new), CIMultiDict({**received, "webhook-signature": "v2,xyz"}), body)


async def test_webhooks_doc_examples_verify_a_real_delivery(
    make_stack: StackFactory,
    receiver: Receiver,
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> None:
    stack = await make_stack()
    endpoint = await create_endpoint(stack.api, receiver.url())
    secret, whsec = endpoint["secret"], endpoint["standard_webhooks_secret"]
    await fast_run(stack.api)
    await wait_deliveries(stack.api, endpoint["id"], all_status("delivered", 2))
    verify = _doc_function("def verify(", "verify")
    verify_standard = _doc_function("def verify_standard(", "verify_standard")
    namespace: dict[str, Any] = {}
    exec(_block("verify_signature(SECRET").replace('SECRET = "whsec_..."', f"SECRET = {secret!r}"), namespace)  # noqa: S102
    receiver_app = await aiohttp_client(namespace["app"])
    namespace = {}
    exec(_block("from standardwebhooks").replace('Webhook("whsec_...")', f"Webhook({whsec!r})"), namespace)  # noqa: S102
    standard_app = await aiohttp_client(namespace["app"])

    assert len(receiver.received) == 2
    for sent in receiver.received:
        headers = CIMultiDict(sent.headers)
        # The standard-library examples, as a receiver without QuantaPilot runs them.
        assert verify(secret, headers["X-VC-Signature"], sent.body)
        assert verify_standard(whsec, headers, sent.body)
        assert not verify(secret, headers["X-VC-Signature"], sent.body + b"x")
        assert not verify_standard(whsec, headers, sent.body + b"x")
        # The two complete receivers, fed the request exactly as it arrived.
        signed = {k: v for k, v in headers.items() if k.lower().startswith(("x-vc-", "webhook-", "content-type"))}
        for client, path in ((receiver_app, "/hooks/quantapilot"), (standard_app, "/hooks/standard")):
            resp = await client.post(path, data=sent.body, headers=signed)
            assert resp.status == 200, path
            resp = await client.post(path, data=sent.body + b" ", headers=signed)
            assert resp.status == 401, path
    assert len({r.event["id"] for r in receiver.received}) == 2
