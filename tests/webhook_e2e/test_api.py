"""The webhook API: subscriptions, secrets shown once, rotation, redelivery, workspace isolation, SSRF refusals."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.settings import Settings
from quantapilot.tokens import ALL_SCOPES, create_token
from quantapilot.webhooks.signing import parse_signature_header, standard_secret
from quantapilot.webhooks.tables import WebhookSecret
from schemas import validator
from tests.conftest import ApiFactory
from tests.support import Api, JsonLogLines, captured_json_logs
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import (
    Receiver,
    all_status,
    create_endpoint,
    disabled_record_after,
    fast_run,
    finished_events,
    free_port,
    wait_deliveries,
)


async def test_webhooks_api_crud_never_shows_secret_again(make_stack: StackFactory, receiver: Receiver) -> None:
    stack = await make_stack(worker=False)
    api = stack.api
    created = await create_endpoint(
        api,
        receiver.url(),
        events=["run_started", "gate_decision", "run.failed"],
        description="chat bot",
        run_kinds=["repository"],
        repositories=["https://git.example.test/Team/Repo.git/"],
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    # The Standard Webhooks form of the same secret, shown with it (and like it, this once).
    standard = created["standard_webhooks_secret"]
    assert standard == standard_secret(secret) and standard != secret
    assert list(validator("api.schema.json", "WebhookEndpointCreated").iter_errors(created)) == []
    assert created["events"] == ["run.started", "gate.decided", "run.failed"]
    assert created["repositories"] == ["https://git.example.test/team/repo"]
    assert created["enabled"] is True and created["disabled_reason"] is None

    code, listed = await api.get("/v1/webhooks/endpoints")
    assert code == 200 and [e["id"] for e in listed["endpoints"]] == [created["id"]]
    code, one = await api.get(f"/v1/webhooks/endpoints/{created['id']}")
    assert code == 200 and "secret" not in one
    assert secret not in str(listed) and secret not in str(one)
    assert "standard_webhooks_secret" not in one and standard not in str(listed) and standard not in str(one)

    resp = await api.client.patch(
        f"/v1/webhooks/endpoints/{created['id']}",
        json={"events": [], "description": "all events", "enabled": False},
        headers=api.headers(),
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["events"] == [] and body["enabled"] is False and body["disabled_reason"] == "disabled by user"
    assert secret not in str(body) and standard not in str(body)

    code, rotated = await api.post(f"/v1/webhooks/endpoints/{created['id']}/rotate-secret")
    assert code == 200 and rotated["secret"].startswith("whsec_") and rotated["secret"] != secret
    assert rotated["previous_secrets_expire_at"].endswith("Z")
    assert rotated["standard_webhooks_secret"] == standard_secret(rotated["secret"])
    assert list(validator("api.schema.json", "WebhookSecretRotated").iter_errors(rotated)) == []

    resp = await api.client.delete(f"/v1/webhooks/endpoints/{created['id']}", headers=api.headers())
    assert resp.status == 204
    code, gone = await api.get(f"/v1/webhooks/endpoints/{created['id']}")
    assert code == 404 and gone["error"]["code"] == "NOT_FOUND"


async def test_webhooks_api_other_workspace_and_scope(
    make_stack: StackFactory, make_api: ApiFactory, engine: Engine, receiver: Receiver
) -> None:
    stack = await make_stack(worker=False)
    mine = await create_endpoint(stack.api, receiver.url())
    theirs = await make_api(stack.settings, workspace="other")
    code, listed = await theirs.get("/v1/webhooks/endpoints")
    assert code == 200 and listed["endpoints"] == []
    base = f"/v1/webhooks/endpoints/{mine['id']}"
    for method, path in [
        ("GET", base),
        ("PATCH", base),
        ("DELETE", base),
        ("POST", f"{base}/rotate-secret"),
        ("GET", f"{base}/deliveries"),
    ]:
        resp = await theirs.client.request(
            method, path, json={"description": "x"} if method == "PATCH" else None, headers=theirs.headers()
        )
        assert resp.status == 404, (method, path, await resp.text())
    code, body = await theirs.post("/v1/webhooks/deliveries/wd_000000000000000000000000/redeliver")
    assert code == 404, body

    token, _ = create_token(
        engine, workspace="default", subject="reader", scopes=[s for s in ALL_SCOPES if s != "webhooks:manage"]
    )
    reader = Api(client=stack.api.client, token=token)
    code, body = await reader.get("/v1/webhooks/endpoints")
    assert code == 403 and body["error"]["details"] == {"scope": "webhooks:manage"}


async def test_webhooks_api_refuses_bad_bodies_and_unsafe_urls(make_stack: StackFactory, make_api: ApiFactory) -> None:
    stack = await make_stack(worker=False)
    api = stack.api
    for body in (
        {},
        {"url": "https://example.com/hook", "extra": 1},
        {"url": "https://example.com/hook", "events": ["run.exploded"]},
        {"url": "https://example.com/hook", "run_kinds": ["nightly"]},
        {"url": "not a url"},
    ):
        code, answer = await api.post("/v1/webhooks/endpoints", body)
        assert code == 422 and answer["error"]["code"] == "VALIDATION_ERROR", (body, answer)

    # Even where private addresses are allowed, metadata services, credentials and other schemes are not.
    refused = {
        "http://169.254.169.254/latest/meta-data/": "metadata_address",
        "http://[fd00:ec2::254]/": "metadata_address",
        "http://user:pw@127.0.0.1:8080/": "credentials_not_allowed",
    }
    for url, reason in refused.items():
        code, answer = await api.post("/v1/webhooks/endpoints", {"url": url})
        assert code == 422, (url, answer)
        assert answer["error"]["details"] == [{"path": "url", "reason": reason}], answer
    code, answer = await api.post("/v1/webhooks/endpoints", {"url": "ftp://example.com/x"})
    assert code == 422

    # With the production default, loopback and private targets are refused, by literal or by name.
    strict = await make_api(stack.settings.model_copy(update={"webhook_allow_private": False}))
    for url, reason in {
        f"http://127.0.0.1:{free_port()}/": "loopback_address",
        "http://10.1.2.3/hook": "private_address",
        f"http://localhost:{free_port()}/": "loopback_address",
        "http://[::ffff:192.168.0.1]/": "private_address",
    }.items():
        code, answer = await strict.post("/v1/webhooks/endpoints", {"url": url})
        assert code == 422, (url, answer)
        assert answer["error"]["details"][0]["reason"] == reason, answer
    code, answer = await strict.get("/v1/webhooks/endpoints")
    assert answer["endpoints"] == []


async def test_webhooks_rotation_signs_with_both_then_only_new(
    make_stack: StackFactory, receiver: Receiver, engine: Engine
) -> None:
    stack = await make_stack()
    api = stack.api
    endpoint = await create_endpoint(api, receiver.url(), events=["run.started"])
    old, old_standard = endpoint["secret"], endpoint["standard_webhooks_secret"]
    code, rotated = await api.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate-secret")
    assert code == 200
    new, new_standard = rotated["secret"], rotated["standard_webhooks_secret"]

    await fast_run(api, "one")
    await wait_deliveries(api, endpoint["id"], all_status("delivered", 1))
    (during,) = receiver.delivered()
    parsed = parse_signature_header(during.headers["X-VC-Signature"])
    assert parsed is not None and len(parsed[1]) == 2
    # Consumers holding either secret accept it during the overlap.
    assert during.verified(old) and during.verified(new)
    assert during.verified_stripe(old) and during.verified_stripe(new)
    # Standard Webhooks: one space-separated v1 entry per secret; the reference library accepts either secret.
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert during.verified_standard(old_standard) and during.verified_standard(new_standard)

    # The overlap ends (24 hours later, here by moving the old secret's expiry into the past).
    with Session(engine) as session:
        session.execute(
            update(WebhookSecret)
            .where(col(WebhookSecret.endpoint_id) == endpoint["id"], col(WebhookSecret.expires_at).is_not(None))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    await fast_run(api, "two")
    await wait_deliveries(api, endpoint["id"], all_status("delivered", 2))
    after = receiver.delivered()[1]
    parsed = parse_signature_header(after.headers["X-VC-Signature"])
    assert parsed is not None and len(parsed[1]) == 1
    assert after.verified(new) and not after.verified(old)
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert after.verified_standard(new_standard) and not after.verified_standard(old_standard)


async def test_webhooks_redelivery_sends_same_event_again(make_stack: StackFactory, receiver: Receiver) -> None:
    stack = await make_stack()
    api = stack.api
    endpoint = await create_endpoint(api, receiver.url(), events=["run.failed"])
    await fast_run(api)
    (row,) = await wait_deliveries(api, endpoint["id"], all_status("delivered", 1))
    code, body = await api.post(f"/v1/webhooks/deliveries/{row['id']}/redeliver")
    assert code == 202, body
    assert body["status"] == "pending" and body["id"] == row["id"]

    await wait_deliveries(
        api, endpoint["id"], lambda rs: rs[0]["status"] == "delivered" and rs[0]["attempt_count"] == 2
    )
    first, second = receiver.delivered()
    assert first.event == second.event  # the same event, byte for byte apart from the signature time
    assert (first.headers["X-VC-Delivery-Attempt"], second.headers["X-VC-Delivery-Attempt"]) == ("1", "2")
    assert second.verified(endpoint["secret"])
    # webhook-id is the event id on every send, so Standard Webhooks consumers drop the duplicate.
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == first.event["id"]
    assert second.verified_standard(standard_secret(endpoint["secret"]))
    code, one = await api.get(f"/v1/webhooks/deliveries/{row['id']}")
    assert code == 200 and [a["attempt"] for a in one["attempts"]] == [1, 2]
    code, body = await api.post("/v1/webhooks/deliveries/wd_unknown/redeliver")
    assert code == 404


async def test_webhooks_delivery_time_ssrf_check_refuses_private_name(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    # The API admitted the name (private allowed there); the worker, with the production default, resolves it
    # again at delivery time, finds a loopback address and refuses: a stand-in for DNS rebinding.
    api_stack = await make_stack(worker=False)
    stack = await make_stack(webhook_allow_private=False, api_settings=api_stack.settings)
    api = stack.api
    endpoint = await create_endpoint(api, f"http://localhost:{receiver.port}/hook", events=["run.started"])
    await fast_run(api)
    record, row = await wait_deliveries(api, endpoint["id"], disabled_record_after("failed"))
    assert row["attempts"][0]["outcome"] == "rejected_unsafe"
    assert row["last_error"] == "unsafe url: loopback_address"
    assert receiver.received == []
    code, ep = await api.get(f"/v1/webhooks/endpoints/{endpoint['id']}")
    assert code == 200 and ep["enabled"] is False and ep["disabled_reason"] == "unsafe_url"
    # Recorded in the endpoint's own log; the URL (the tenant's, maybe with a token in it) is not in the record.
    assert record["data"]["reason"] == "unsafe_url" and record["data"]["delivery_id"] == row["id"]
    assert "localhost" not in str(record["data"])


@pytest.fixture
def debug_logs() -> Iterator[JsonLogLines]:
    """Every log line of the process (API and in-process worker) at DEBUG and above."""
    with captured_json_logs(logging.DEBUG) as handler:
        yield handler


async def test_webhooks_other_workspace_gets_the_unknown_answer_for_real_ids(
    make_stack: StackFactory, make_api: ApiFactory, receiver: Receiver, debug_logs: JsonLogLines
) -> None:
    stack = await make_stack()
    mine = await create_endpoint(stack.api, receiver.url())
    run_id = await fast_run(stack.api)
    await finished_events(stack.api, run_id)
    delivered = await wait_deliveries(stack.api, mine["id"], all_status("delivered", 2))
    theirs = await make_api(stack.settings, workspace="other")

    async def answer(method: str, path: str) -> tuple[int, dict]:
        resp = await theirs.client.request(method, path, headers=theirs.headers())
        body = await resp.json()
        # What may differ between two answers: the request's own trace id and time.
        body["error"].pop("traceId")
        body["error"].pop("timestamp")
        return resp.status, body

    # Another workspace's real endpoint and delivery answer exactly as ids that never existed.
    for real, made_up in (
        (f"/v1/webhooks/endpoints/{mine['id']}", "/v1/webhooks/endpoints/we_" + "0" * 24),
        (f"/v1/webhooks/endpoints/{mine['id']}/deliveries", "/v1/webhooks/endpoints/we_" + "0" * 24 + "/deliveries"),
        (f"/v1/webhooks/deliveries/{delivered[0]['id']}", "/v1/webhooks/deliveries/wd_" + "0" * 24),
    ):
        assert await answer("GET", real) == await answer("GET", made_up), real
    redeliver = f"/v1/webhooks/deliveries/{delivered[0]['id']}/redeliver"
    assert await answer("POST", redeliver) == await answer(
        "POST", "/v1/webhooks/deliveries/wd_" + "0" * 24 + "/redeliver"
    )
    assert len(receiver.received) == 2  # nothing was redelivered

    # Neither the signing secret nor a signature it made is in any log line of the API or the worker.
    signatures = [r.headers["X-VC-Signature"] for r in receiver.received]
    logged = "\n".join(json.dumps(line) for line in debug_logs.lines)
    assert "webhook" in logged.lower() and len(debug_logs.lines) > 10  # the capture saw the deliveries' lines
    assert mine["secret"] not in logged
    assert not any(part in logged for sig in signatures for part in sig.split(",") if part.startswith("v1="))


async def test_webhooks_api_endpoint_limit_answers_409_also_under_concurrent_creates(
    make_stack: StackFactory, make_api: ApiFactory, receiver: Receiver
) -> None:
    stack = await make_stack(worker=False, webhook_max_endpoints=3)
    api = stack.api
    # Concurrent creates: exactly the limit gets in, the rest get the envelope (on SQLite and PostgreSQL).
    answers = await asyncio.gather(*(api.post("/v1/webhooks/endpoints", {"url": receiver.url()}) for _ in range(8)))
    assert sorted(code for code, _ in answers) == [201] * 3 + [409] * 5, answers
    for code, body in answers:
        if code == 409:
            assert body["error"]["code"] == "WEBHOOK_ENDPOINT_LIMIT" and body["error"]["details"] == {"limit": 3}
            assert list(validator("error.schema.json").iter_errors(body)) == []
    code, listed = await api.get("/v1/webhooks/endpoints")
    assert code == 200 and len(listed["endpoints"]) == 3
    # Deleting one makes room; another workspace has its own limit.
    first = listed["endpoints"][0]["id"]
    resp = await api.client.delete(f"/v1/webhooks/endpoints/{first}", headers=api.headers())
    assert resp.status == 204
    await create_endpoint(api, receiver.url())
    code, body = await api.post("/v1/webhooks/endpoints", {"url": receiver.url()})
    assert code == 409 and body["error"]["code"] == "WEBHOOK_ENDPOINT_LIMIT"
    theirs = await make_api(stack.settings, workspace="other")
    await create_endpoint(theirs, receiver.url())


def test_webhooks_endpoint_limit_defaults_to_50() -> None:
    assert Settings.model_fields["webhook_max_endpoints"].default == 50
