"""Telemetry over HTTP: storage, per-account realization refreshes (coalesced), validation, and a store outage."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client

from quantapilot.db import make_engine
from quantapilot.lifecycle.contracts import AccountRealizationStatus, account_workflow_id
from quantapilot.lifecycle.telemetry import TelemetryEvent
from quantapilot.settings import Settings
from tests.dbfixtures import drop_postgres_database, new_postgres_database, require_postgres
from tests.lifecycle_e2e.conftest import LcApiFactory
from tests.lifecycle_e2e.helpers import KPI, account_events, approved_target, new_account, samples, wait_realization
from tests.support import Api, eventually

pytestmark = pytest.mark.usefixtures("worker")


def updates(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == "realization.updated"]


async def account_status(client: Client, account: str, workspace: str = "default") -> AccountRealizationStatus:
    handle = client.get_workflow_handle(account_workflow_id(workspace, account))
    status: AccountRealizationStatus = await handle.query("status", result_type=AccountRealizationStatus)
    return status


async def test_telemetry_moves_kpi_from_at_risk_to_on_track(lc_api: Api, engine: Engine) -> None:
    account = new_account()
    await approved_target(lc_api, account)  # deal_conversion: baseline 100, target 200

    code, body = await lc_api.post("/v1/telemetry/events", samples(account, [175.0]))
    assert code == 202, body
    assert body == {
        "accepted": 1,
        "duplicates": 0,
        "accountIds": [account],
        "accounts": [{"accountId": account, "accepted": 1}],
        "refreshesScheduled": 1,
    }
    events = await wait_realization(lc_api, account, lambda d: d["kpis"] == {KPI: "at_risk"}, what="at_risk")
    first = updates(events)[-1]
    assert first["overall_status"] == "at_risk" and first["samples"] == 1 and first["source"] == "telemetry"

    # Mean (175 + 3 * 199) / 4 = 193: progress 93% -> on_track.
    code, body = await lc_api.post("/v1/telemetry/events", samples(account, [199.0, 199.0, 199.0]))
    assert code == 202 and body["accepted"] == 3
    events = await wait_realization(lc_api, account, lambda d: d["kpis"] == {KPI: "on_track"}, what="on_track")
    last = updates(events)[-1]
    assert last["overall_status"] == "on_track" and last["samples"] == 4
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    # Each refresh republished the realization page as a new version; the latest is the on_track one.
    code, page = await lc_api.get(f"/v1/docs/pages/accounts/{account}/realization")
    assert code == 200 and page["version"] == last["docs_version"]
    assert "**Overall status: on_track**" in page["content"]["markdown"]
    assert page["versions"][0] == first["docs_version"] and len(page["versions"]) == len(updates(events))
    code, old = await lc_api.get(f"/v1/docs/pages/accounts/{account}/realization?version={first['docs_version']}")
    assert code == 200 and "**Overall status: at_risk**" in old["content"]["markdown"]
    with Session(engine) as s:
        assert s.execute(select(func.count()).select_from(TelemetryEvent)).scalar_one() == 4


async def test_telemetry_burst_of_10000_events_refreshes_a_bounded_number_of_times(
    make_lc_api: LcApiFactory, client: Client
) -> None:
    window = 2.0
    api = await make_lc_api(window_s=window)
    account = new_account()
    await approved_target(api, account)
    started = time.monotonic()
    for batch in range(10):
        code, body = await api.post("/v1/telemetry/events", samples(account, [150.0 + batch] * 1000))
        assert code == 202 and body["accepted"] == 1000, body
    burst_s = time.monotonic() - started
    # A refresh covers every event of the burst.
    await wait_realization(api, account, lambda d: d["samples"] == 10_000, timeout=60, what="all 10,000 samples")

    async def settled() -> tuple[AccountRealizationStatus, int]:
        return await account_status(client, account), len(updates(await account_events(api, account)))

    # A refresh that read every sample may still owe one more to the last signal: wait until the stream is idle.
    status, refreshes = await eventually(
        settled,
        lambda sr: sr[0].signals == 10 and not sr[0].pending and sr[0].refreshes_total == sr[1],
        timeout=60,
        what="account stream idle",
    )
    # One refresh at the first signal, then at most one per window while signals keep coming, plus the last.
    assert refreshes <= math.floor(burst_s / window) + 2, (refreshes, burst_s)
    assert refreshes < 10
    assert status.skipped_total == 0


async def test_telemetry_without_approved_target_skips_refresh_with_note(lc_api: Api, client: Client) -> None:
    account = new_account()
    code, _ = await lc_api.post("/v1/telemetry/events", samples(account, [1.0]))
    assert code == 202
    status = await eventually(
        lambda: account_status(client, account), lambda s: s.skipped_total == 1, what="skipped refresh"
    )
    assert status.last_note is not None and "no approved target" in status.last_note
    assert await account_events(lc_api, account) == []
    code, _ = await lc_api.get(f"/v1/docs/pages/accounts/{account}/realization")
    assert code == 404


async def test_account_realization_continues_as_new_and_keeps_its_stream(
    make_lc_api: LcApiFactory, client: Client
) -> None:
    api = await make_lc_api(window_s=0.1, refreshes_per_run=1)
    account = new_account()
    await approved_target(api, account)
    handle = client.get_workflow_handle(account_workflow_id("default", account))
    run_ids = []
    for n in range(1, 4):
        code, _ = await api.post("/v1/telemetry/events", samples(account, [150.0]))
        assert code == 202
        await wait_realization(api, account, lambda d, n=n: d["samples"] == n, what=f"{n} samples")
        run_ids.append((await handle.describe()).run_id)
    events = await account_events(api, account)
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert len(set(run_ids)) >= 2  # the chain moved to a new run; counters and sequence carried over
    status = await account_status(client, account)
    assert status.refreshes_total == 3


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"accountId": "not-a-uuid", "kpi": KPI, "value": 1, "timestamp": "2025-11-17T12:00:00Z"}, "/accountId"),
        ({"accountId": "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f", "kpi": KPI, "value": 1, "timestamp": "2025-11-17T12:00:00"},
         "/timestamp"),
        ({"accountId": "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f", "kpi": KPI, "value": "1", "timestamp": "2025-11-17T12:00:00Z"},
         "/value"),
        ({"accountId": "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f", "kpi": "Bad KPI", "value": 1,
          "timestamp": "2025-11-17T12:00:00Z"}, "/kpi"),
        ({"events": []}, "/events"),
    ],
)  # fmt: skip
async def test_telemetry_invalid_bodies_answer_422(lc_api: Api, engine: Engine, body: Any, path: str) -> None:
    code, resp = await lc_api.post("/v1/telemetry/events", body)
    assert code == 422, resp
    assert resp["error"]["code"] == "VALIDATION_ERROR"
    assert any(d["path"].startswith(path) for d in resp["error"]["details"]), resp
    with Session(engine) as s:
        assert s.execute(select(func.count()).select_from(TelemetryEvent)).scalar_one() == 0


async def test_telemetry_batch_limits_nan_media_type_and_scope(make_lc_api: LcApiFactory) -> None:
    api = await make_lc_api()
    account = new_account()
    code, resp = await api.post("/v1/telemetry/events", samples(account, [1.0] * 1001))
    assert code == 422 and resp["error"]["details"][0]["path"] == "/events"
    raw = f'{{"accountId": "{account}", "kpi": "x", "value": NaN, "timestamp": "2025-11-17T12:00:00Z"}}'
    r = await api.client.post(
        "/v1/telemetry/events", data=raw, headers=api.headers({"Content-Type": "application/json"})
    )
    nan = await r.json()
    assert r.status == 422 and nan["error"]["details"] == [
        {"path": "/value", "message": "numbers must be finite JSON numbers"}
    ]
    r = await api.client.post("/v1/telemetry/events", data="x=1", headers=api.headers({"Content-Type": "text/plain"}))
    assert r.status == 415
    reader = await make_lc_api(scopes=("docs:read",))
    code, resp = await reader.post("/v1/telemetry/events", samples(account, [1.0]))
    assert code == 403 and resp["error"]["code"] == "AUTHORIZATION_ERROR"


@pytest.mark.postgres
async def test_telemetry_store_down_answers_503(make_lc_api: LcApiFactory, settings: Settings) -> None:
    require_postgres()
    url, name = new_postgres_database()
    engine = make_engine(url)
    try:
        # Cache the token so authentication does not need the database once it is gone.
        api = await make_lc_api(app_engine=engine, app_settings=settings.model_copy(update={"token_cache_seconds": 60}))
        code, _ = await api.get("/v1/docs/pages")
        assert code == 200
        drop_postgres_database(name)
        code, resp = await api.post("/v1/telemetry/events", samples(new_account(), [1.0]))
        assert code == 503, resp
        assert resp["error"]["code"] == "SERVICE_UNAVAILABLE" and "traceId" in resp["error"]
    finally:
        engine.dispose()
        drop_postgres_database(name)


async def test_account_events_cursor_and_unknown_account(lc_api: Api) -> None:
    account = new_account()
    for after, expected in (("-1", 400), ("x", 400), (str(2**63), 400), (str(2**63 - 1), 200)):
        code, body = await lc_api.get(f"/v1/accounts/{account}/events?after={after}")
        assert code == expected, (after, body)
    code, body = await lc_api.get("/v1/accounts/not-a-uuid/events")
    assert code == 404 and body["error"]["code"] == "NOT_FOUND"


def stored_events(engine: Engine, account: str) -> int:
    with Session(engine) as s:
        query = select(func.count()).select_from(TelemetryEvent).where(TelemetryEvent.account_id == account)  # type: ignore[arg-type]
        return int(s.execute(query).scalar_one())


async def test_telemetry_one_bad_event_of_1000_is_named_and_nothing_is_stored(lc_api: Api, engine: Engine) -> None:
    account = new_account()
    body = samples(account, [float(i) for i in range(1000)])
    body["events"][537]["timestamp"] = "2025-11-17T12:00:00"  # no offset
    body["events"][537]["kpi"] = "Bad KPI"
    body["events"][999]["metadata"] = {"deep": {"er": {"x": 1}}}  # three levels
    code, resp = await lc_api.post("/v1/telemetry/events", body)
    assert code == 422, resp
    assert resp["error"]["code"] == "VALIDATION_ERROR" and "traceId" in resp["error"]
    paths = [d["path"] for d in resp["error"]["details"]]
    assert paths[:2] == ["/events/537/kpi", "/events/537/timestamp"], paths
    # The union of metadata values reports each alternative once at the path that failed, nothing else.
    assert set(paths[2:]) == {"/events/999/metadata/deep", "/events/999/metadata/deep/er"}, paths
    assert all(d["message"] for d in resp["error"]["details"])
    assert stored_events(engine, account) == 0
    # The same batch, fixed, is stored whole.
    body["events"][537].update(timestamp="2025-11-17T12:00:00Z", kpi=KPI)
    body["events"][999]["metadata"] = {"deep": {"er": 1}}
    code, resp = await lc_api.post("/v1/telemetry/events", body)
    assert code == 202 and (resp["accepted"], resp["duplicates"]) == (1000, 0), resp
    assert stored_events(engine, account) == 1000


async def test_telemetry_resent_batch_of_1000_is_stored_once(lc_api: Api, engine: Engine) -> None:
    account = new_account()
    body = samples(account, [float(i) for i in range(1000)])
    for i, e in enumerate(body["events"]):
        e["id"] = f"{account}-{i}"
    code, first = await lc_api.post("/v1/telemetry/events", body)
    assert code == 202 and (first["accepted"], first["duplicates"]) == (1000, 0), first
    code, again = await lc_api.post("/v1/telemetry/events", body)
    assert code == 202 and (again["accepted"], again["duplicates"]) == (1000, 1000), again
    assert again["accounts"] == first["accounts"] == [{"accountId": account, "accepted": 1000}]
    # Half of it again with 500 new events: only the new ones are stored, in the same one statement.
    half = samples(account, [float(i) for i in range(1000)])
    for i, e in enumerate(half["events"]):
        e["id"] = f"{account}-{i + 500}"
    code, partly = await lc_api.post("/v1/telemetry/events", half)
    assert code == 202 and (partly["accepted"], partly["duplicates"]) == (1000, 500), partly
    assert stored_events(engine, account) == 1500
    # One id twice inside a batch is the sender's bug, not a retry: refused, nothing stored.
    half["events"][700]["id"] = half["events"][3]["id"]
    code, resp = await lc_api.post("/v1/telemetry/events", half)
    assert code == 422 and resp["error"]["details"] == [
        {"path": "/events/700/id", "message": "duplicate id (first at /events/3/id)"}
    ], resp
    assert stored_events(engine, account) == 1500


def _event_bytes(account: str, metadata: bytes) -> bytes:
    # One valid event with its metadata as raw JSON text, so hostile bytes sit inside an otherwise valid body.
    return (
        b'{"events": [{"accountId": "%s", "kpi": "%s", "value": 1, "timestamp": "2025-11-17T12:00:00Z", '
        b'"metadata": %s}]}' % (account.encode(), KPI.encode(), metadata)
    )


def _nested(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


async def test_telemetry_hostile_bytes_get_the_answers_the_decoded_body_got(lc_api: Api, engine: Engine) -> None:
    # The registry hands this route's bytes to the model undecoded (Body.from_bytes): each guarantee of reading
    # the body as JSON first (api.body.read_json) still holds, with the same status and message, inside a body
    # that would otherwise be stored.
    account = new_account()
    nul = "strings must not contain the NUL character (\\u0000)"
    cases: list[tuple[str, bytes, int, str]] = [
        ("NUL in a value", _event_bytes(account, b'{"note": "a\\u0000b"}'), 422, nul),
        ("NUL in a key", _event_bytes(account, b'{"no\\u0000te": "x"}'), 422, nul),
        ("raw NUL byte", _event_bytes(account, b'{"note": "a\x00b"}'), 400, "request body is not valid JSON"),
        # Levels as read_json counts them: body, events, event, metadata, 28 objects, then the 1 at 33.
        ("33 levels", _event_bytes(account, b'{"x": %s}' % _nested(28)), 400, "JSON nesting deeper than 32 levels"),
        ("32 levels", _event_bytes(account, b'{"x": %s}' % _nested(27)), 422, "request body does not match the schema"),
        ("300 levels", _event_bytes(account, _nested(300)), 400, "JSON nesting deeper than 32 levels"),
        # Past Python's recursion limit json.loads gives up: read_json always answered that as malformed.
        ("5000 levels", _event_bytes(account, _nested(5000)), 400, "request body is not valid JSON"),
        ("invalid UTF-8", _event_bytes(account, b'{"note": "\xc3\x28"}'), 400, "request body is not valid UTF-8"),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + _event_bytes(account, b"{}"), 400, "request body is not valid JSON"),
        ("trailing bytes", _event_bytes(account, b"{}") + b" x", 400, "request body is not valid JSON"),
        ("NaN", _event_bytes(account, b'{"n": NaN}'), 422, "request body does not match the schema"),
        ("1e400", _event_bytes(account, b'{"n": 1e400}'), 422, "request body does not match the schema"),
        ("lone surrogate", _event_bytes(account, b'{"s": "\\ud800"}'), 422, "request body does not match the schema"),
    ]
    headers = lc_api.headers({"Content-Type": "application/json"})
    for name, raw, status, message in cases:
        resp = await lc_api.client.post("/v1/telemetry/events", data=raw, headers=headers)
        payload = await resp.json()
        assert (resp.status, payload["error"]["message"]) == (status, message), (name, payload)
        assert payload["error"]["code"] == "VALIDATION_ERROR", (name, payload)
    for name, raw, path in [
        ("NaN", cases[-3][1], "/events/0/metadata/n"),
        ("1e400", cases[-2][1], "/events/0/metadata/n"),
    ]:
        resp = await lc_api.client.post("/v1/telemetry/events", data=raw, headers=headers)
        details = (await resp.json())["error"]["details"]
        assert details == [{"path": path, "message": "numbers must be finite JSON numbers"}], (name, details)
    assert stored_events(engine, account) == 0
    # A false alarm of the NUL check (an escaped backslash, then the text u0000) is decoded, found clean, stored.
    resp = await lc_api.client.post(
        "/v1/telemetry/events", data=_event_bytes(account, b'{"note": "\\\\u0000"}'), headers=headers
    )
    assert resp.status == 202, await resp.json()
    with Session(engine) as s:
        [meta] = s.execute(select(TelemetryEvent.meta).where(TelemetryEvent.account_id == account)).scalars().all()  # type: ignore[call-overload]
    assert meta == {"note": "\\u0000"}
