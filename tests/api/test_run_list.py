"""GET /v1/runs: the workspace's runs from Temporal visibility - pages, filters, isolation, hostile query strings."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

import schemas
from quantapilot.runs.ids import REPO_RUN_WORKFLOW
from quantapilot.runs.listing import waiting_run_ids
from quantapilot.settings import Settings
from quantapilot.temporal import SA_REPO_URL, SA_RUN_KIND, SA_STATE, SA_WORKSPACE
from quantapilot.tokens import create_token
from tests.conftest import ApiFactory
from tests.support import Api, eventually, make_remote

OPPORTUNITY_INPUTS = {
    "discoveryNotes": "Sales pipeline conversion is slow. Budget approved.",
    "persona": "CFO",
    "benchmarks": [{"kpi": "deal_conversion", "value": 100, "unit": "pct"}],
}


def new_workspace() -> str:
    # The dev server is shared by the session: each test lists a workspace of its own.
    return f"ws{uuid.uuid4().hex[:12]}"


async def listing(api: Api, **params: Any) -> tuple[int, dict[str, Any]]:
    code, body = await api.get("/v1/runs" + (f"?{urlencode(params)}" if params else ""))
    if code == 200:
        errors = list(schemas.validator("api.schema.json", "RunList").iter_errors(body))
        assert not errors, errors
    return code, body


async def ids(api: Api, **params: Any) -> list[str]:
    code, body = await listing(api, **params)
    assert code == 200, body
    return [run["run_id"] for run in body["runs"]]


async def until_listed(api: Api, expected: set[str], **params: Any) -> list[str]:
    """Poll until the (first page of the) listing is exactly ``expected`` (visibility is eventually consistent)."""
    return await eventually(lambda: ids(api, **params), lambda got: set(got) == expected, what=f"listing {params}")


async def trigger(api: Api, url: str, correlation_id: str | None = None) -> str:
    body: dict[str, Any] = {"repo_url": url, "branch": "main"}
    if correlation_id:
        body["correlation_id"] = correlation_id
    code, answer = await api.post("/v1/runs", body)
    assert code == 202, answer
    return str(answer["run_id"])


def assert_bad_request(code: int, body: dict[str, Any], path: str | None = None) -> None:
    assert code == 400, body
    assert not list(schemas.validator("api.schema.json", "ErrorEnvelope").iter_errors(body))
    assert body["error"]["code"] == "VALIDATION_ERROR" and body["error"]["traceId"], body
    if path is not None:
        assert path in [d["path"] for d in body["error"]["details"]], body


async def test_run_list_pages_through_more_runs_than_a_page_newest_first(
    make_api: ApiFactory, settings: Settings, tmp_path: Path
) -> None:
    # No worker: the runs stay open (running), which is all visibility needs to list them.
    api = await make_api(settings, workspace=new_workspace())
    url = make_remote(tmp_path, {"README.md": "# Paged\n"})
    started = [await trigger(api, url) for _ in range(7)]
    await until_listed(api, set(started), page_size=100)

    seen: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        params: dict[str, Any] = {"page_size": 3} | ({"page_token": token} if token else {})
        code, body = await listing(api, **params)
        assert code == 200, body
        assert len(body["runs"]) <= 3
        seen += [run["run_id"] for run in body["runs"]]
        pages += 1
        token = body.get("next_page_token")
        if token is None:
            break
        assert pages < 10, "pagination does not end"
    assert pages >= 3
    assert seen == list(reversed(started)), "each run once, newest first"
    first = (await listing(api, page_size=1))[1]["runs"][0]
    assert first["run_id"] == started[-1] and first["kind"] == "repository" and first["state"] == "running"
    assert first["repo_url"] == url and first["branch"] == "main" and "gate" not in first
    assert first["created_at"] <= first["updated_at"]


@pytest.mark.usefixtures("worker")
async def test_run_list_filters_by_state_gate_kind_repo_and_correlation_id(
    make_api: ApiFactory, settings: Settings, client: Client, tmp_path: Path
) -> None:
    workspace = new_workspace()
    api = await make_api(settings, workspace=workspace)
    url = make_remote(tmp_path, {"README.md": "# Filters\n"}, name="one")
    other_url = make_remote(tmp_path, {"README.md": "# Other\n"}, name="two")
    tag = uuid.uuid4().hex[:8]
    run = {name: await trigger(api, url, f"{name}-{tag}") for name in ("waiting", "paused", "rejected", "cancelled")}
    run["terminated"] = await trigger(api, other_url, f"terminated-{tag}")
    for run_id in run.values():
        await api.wait_gate(run_id, "anchor")
    assert (await api.post(f"/v1/runs/{run['paused']}/pause", {"reason": "audit"}))[0] == 200
    assert (await api.decide(run["rejected"], "anchor", False, "no"))[0] == 200
    assert (await api.post(f"/v1/runs/{run['cancelled']}/cancel"))[0] == 202
    # Ended by Temporal itself: the workflow never records a final state, the list still says failed.
    wid = f"repo-run/{workspace}/{run['terminated']}"
    await client.get_workflow_handle(wid).terminate(reason="operator")
    await api.wait_state(run["rejected"], "failed")
    await api.wait_state(run["cancelled"], "cancelled")
    code, lc = await api.post(
        "/v1/lifecycle/runs",
        {"stage": "opportunity", "accountId": str(uuid.uuid4()), "inputs": OPPORTUNITY_INPUTS},
    )
    assert code == 202, lc
    lifecycle = lc["runId"]
    await api.wait_state(lifecycle, "completed")

    everything = {*run.values(), lifecycle}
    await until_listed(api, everything)
    await until_listed(api, {run["waiting"]}, state="waiting_for_gate")
    await until_listed(api, {run["paused"]}, state="paused")
    await until_listed(api, {run["waiting"], run["paused"]}, gate="anchor")
    await until_listed(api, set(), gate="milestone-1")
    await until_listed(api, {run["rejected"], run["terminated"]}, state="failed")
    await until_listed(api, {run["cancelled"]}, state="cancelled")
    await until_listed(api, {lifecycle}, state="completed")
    await until_listed(api, set(), state="running")
    await until_listed(api, {lifecycle}, kind="lifecycle")
    await until_listed(api, set(run.values()), kind="repository")
    await until_listed(api, {run["terminated"]}, repo_url=other_url)
    await until_listed(api, {run["paused"]}, correlation_id=f"paused-{tag}")
    await until_listed(api, {run["paused"]}, gate="anchor", state="paused", kind="repository", repo_url=url)

    items = {item["run_id"]: item for item in (await listing(api, page_size=100))[1]["runs"]}
    assert items[run["waiting"]]["gate"] == "anchor" and items[run["waiting"]]["state"] == "waiting_for_gate"
    assert items[run["paused"]]["gate"] == "anchor" and items[run["paused"]]["state"] == "paused"
    assert "gate" not in items[run["rejected"]] and items[run["terminated"]]["state"] == "failed"
    assert items[run["waiting"]]["correlation_id"] == f"waiting-{tag}"
    assert items[lifecycle]["kind"] == "lifecycle" and "repo_url" not in items[lifecycle]
    assert items[lifecycle]["account_id"] and items[lifecycle]["stage"] == "opportunity"
    # Times are the event log's: the first event and the latest one.
    code, events = await api.get(f"/v1/runs/{run['rejected']}/events")
    assert code == 200
    created, updated = items[run["rejected"]]["created_at"], items[run["rejected"]]["updated_at"]
    assert _same_instant(created, events["events"][0]["created_at"])
    assert _same_instant(updated, events["events"][-1]["created_at"]) or updated > events["events"][-1]["created_at"]


def _same_instant(a: str, b: str) -> bool:
    return datetime.fromisoformat(a) == datetime.fromisoformat(b)


async def test_run_list_never_shows_another_workspace(make_api: ApiFactory, settings: Settings, tmp_path: Path) -> None:
    ws_a, ws_b = new_workspace(), new_workspace()
    api_a = await make_api(settings, workspace=ws_a, subject="alice")
    api_b = await make_api(settings, workspace=ws_b, subject="bob")
    url = make_remote(tmp_path, {"README.md": "# Shared repository\n"})
    tag = uuid.uuid4().hex[:8]
    mine = {await trigger(api_a, url, f"a-{tag}") for _ in range(3)}
    theirs = {await trigger(api_b, url, f"b-{tag}") for _ in range(2)}
    await until_listed(api_a, mine)
    await until_listed(api_b, theirs)
    # Filters naming the other workspace's values find nothing: the workspace comes from the token.
    assert await ids(api_a, correlation_id=f"b-{tag}") == []
    assert set(await ids(api_a, repo_url=url)) == mine
    # The query string cannot name a workspace, and a page token of one workspace does not open the other's.
    code, body = await listing(api_a, workspace=ws_b)
    assert_bad_request(code, body, "workspace")
    code, page = await listing(api_b, page_size=1)
    assert code == 200 and page["next_page_token"]
    code, body = await listing(api_a, page_size=1, page_token=page["next_page_token"])
    assert_bad_request(code, body, "page_token")
    # ... nor one of other filters in the same workspace.
    code, body = await listing(api_b, page_size=1, page_token=page["next_page_token"], kind="lifecycle")
    assert_bad_request(code, body, "page_token")


# Values the filters accept (no whitespace, no backslash) that would end their literal if pasted unescaped.
INJECTIONS = [
    {"repo_url": "x'OR'1'='1"},
    {"repo_url": "x')OR(QpWorkspace!='"},
    {"repo_url": "x'OR`QpWorkspace`!='"},
    {"gate": "anchor'OR'a'='a"},
    {"gate": "x')OR(QpWorkspace!='nobody"},
    {"repo_url": "x''OR''=''"},
    {"repo_url": 'x"OR"1"="1'},
]


async def test_run_list_query_values_cannot_escape_their_literal(
    make_api: ApiFactory, settings: Settings, client: Client, tmp_path: Path
) -> None:
    ws_victim, ws_attacker = new_workspace(), new_workspace()
    victim = await make_api(settings, workspace=ws_victim)
    attacker = await make_api(settings, workspace=ws_attacker)
    url = make_remote(tmp_path, {"README.md": "# Victim\n"})
    secret_run = await trigger(victim, url)
    await until_listed(victim, {secret_run})
    for params in INJECTIONS:
        code, body = await listing(attacker, **params)
        assert code == 200, (params, body)
        assert body["runs"] == [], (params, body)
        # The victim's own filters with the same values also match nothing: the value is one literal.
        assert await ids(victim, **params) == [], params

    # A backslash (which escapes inside visibility literals), control characters, spaces and quotes where the
    # value's pattern allows none are refused before any query is built.
    for params in (
        {"repo_url": "x' OR QpWorkspace != '"},
        {"gate": "anchor' OR QpWorkspace != 'nobody"},
        {"repo_url": "x\\'OR(QpWorkspace!=\\'"},
        {"repo_url": "x\\"},
        {"gate": "a\nb"},
        {"gate": "a b"},
        {"correlation_id": "' OR 1=1"},
        {"state": "running' OR QpWorkspace != '"},
        {"kind": "repository') OR ('1'='1"},
    ):
        code, body = await listing(attacker, **params)
        assert_bad_request(code, body, next(iter(params)))

    # A repository URL that holds a quote still matches itself exactly (escaped, not stripped).
    quoted = "file:///srv/it's-a-repo.git"
    run_id = "rr_" + uuid.uuid4().hex
    await client.start_workflow(
        REPO_RUN_WORKFLOW,
        "never read: no worker polls this queue",
        id=f"repo-run/{ws_attacker}/{run_id}",
        task_queue=f"nobody-{uuid.uuid4().hex[:8]}",
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(SA_WORKSPACE, ws_attacker),
                SearchAttributePair(SA_RUN_KIND, "repository"),
                SearchAttributePair(SA_REPO_URL, quoted),
                SearchAttributePair(SA_STATE, "running"),
            ]
        ),
    )
    await until_listed(attacker, {run_id}, repo_url=quoted)
    assert await ids(attacker, repo_url="file:///srv/it") == []
    assert await ids(victim, repo_url=quoted) == []


async def test_run_list_refuses_bad_parameters_with_the_envelope(api: Api) -> None:
    cases: list[tuple[str, str]] = [
        ("state=sleeping", "state"),
        ("kind=batch", "kind"),
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page_size=ten", "page_size"),
        ("page_size=2.5", "page_size"),
        ("gate=", "gate"),
        ("colour=blue", "colour"),
        ("state=running&state=failed", "state"),
        ("page_token=not%20base64", "page_token"),
        ("page_token=" + "A" * 5000, "page_token"),
        ("page_token=Z2FyYmFnZQ", "page_token"),  # base64url of "garbage": not a sealed token
    ]
    for query, path in cases:
        code, body = await api.get(f"/v1/runs?{query}")
        assert_bad_request(code, body, path)


async def test_run_list_tampered_page_token_is_400_not_500(
    make_api: ApiFactory, settings: Settings, tmp_path: Path
) -> None:
    api = await make_api(settings, workspace=new_workspace())
    url = make_remote(tmp_path, {"README.md": "# Tokens\n"})
    started = {await trigger(api, url) for _ in range(3)}
    await until_listed(api, started)
    code, page = await listing(api, page_size=1)
    assert code == 200
    token = page["next_page_token"]
    assert token
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    for bad in (flipped, token[:-4], token + "AAAA", token[::-1]):
        code, body = await listing(api, page_size=1, page_token=bad)
        assert_bad_request(code, body, "page_token")
    code, body = await listing(api, page_size=1, page_token=token)
    assert code == 200 and body["runs"] and body["runs"][0]["run_id"] != page["runs"][0]["run_id"]


async def test_run_list_needs_runs_read(make_api: ApiFactory, settings: Settings, engine: Engine) -> None:
    api = await make_api(settings, workspace=new_workspace())
    token, _ = create_token(engine, workspace="somewhere", subject="bot", scopes=["runs:trigger"])
    resp = await api.client.get("/v1/runs", headers={"Authorization": f"Bearer {token}"})
    body = await resp.json()
    assert resp.status == 403 and body["error"]["details"]["scope"] == "runs:read", body
    resp = await api.client.get("/v1/runs")
    assert resp.status == 401


@pytest.mark.usefixtures("worker")
async def test_waiting_run_ids_is_the_inboxs_listing_of_one_workspace(
    make_api: ApiFactory, settings: Settings, client: Client, tmp_path: Path
) -> None:
    ws_a, ws_b = new_workspace(), new_workspace()
    api_a = await make_api(settings, workspace=ws_a, subject="alice")
    api_b = await make_api(settings, workspace=ws_b, subject="bob")
    url = make_remote(tmp_path, {"README.md": "# Waiting\n"})
    waiting, decided = await trigger(api_a, url), await trigger(api_a, url)
    theirs = await trigger(api_b, url)
    for run_id in (waiting, decided):
        await api_a.wait_gate(run_id, "anchor")
    await api_b.wait_gate(theirs, "anchor")
    code, record = await api_a.decide(decided, "anchor", True, "done")
    assert code == 200, record
    await api_a.wait_state(decided, "completed")

    async def listed() -> list[str]:
        return await waiting_run_ids(client, workspace=ws_a, limit=10)

    # The decided run leaves the list once visibility catches up; the other workspace's run never shows.
    assert await eventually(listed, lambda got: got == [waiting], what="waiting runs of ws_a") == [waiting]
    assert await waiting_run_ids(client, workspace=ws_b, limit=10) == [theirs]
    assert await waiting_run_ids(client, workspace=new_workspace(), limit=10) == []
