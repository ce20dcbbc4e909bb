"""Workspaces, tokens and run inputs an attacker controls: isolation, 401s, secrets in logs, repo URLs, YAML."""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.client import Client

from quantapilot.db import ApiToken, utcnow
from quantapilot.settings import Settings
from quantapilot.tokens import create_token, revoke_token
from tests.conftest import ApiFactory
from tests.security.support import assert_envelope
from tests.support import Api, git, make_remote
from worker import build_worker

VOLATILE_HEADERS = {"date"}


def _shape(payload: dict[str, Any]) -> dict[str, Any]:
    """The envelope without the per-request fields."""
    error = {k: v for k, v in payload["error"].items() if k not in ("traceId", "timestamp")}
    return {"error": error}


@pytest.mark.usefixtures("worker")
async def test_workspaces_other_workspace_gets_the_unknown_run_answer(
    make_api: ApiFactory, settings: Settings, tmp_path: Path
) -> None:
    a = await make_api(settings, workspace="ws-a", subject="alice")
    b = await make_api(settings, workspace="ws-b", subject="bob")
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    code, body = await a.post("/v1/runs", {"repo_url": url, "branch": "main"})
    assert code == 202, body
    run_id = body["run_id"]
    await a.wait_gate(run_id, "anchor")
    unknown = "rr_" + uuid.uuid4().hex
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/v1/runs/{id}", None),
        ("GET", "/v1/runs/{id}/events", None),
        ("GET", "/v1/runs/{id}/events?after=1", None),
        ("POST", "/v1/runs/{id}/gates/anchor/decision", {"approved": True, "reason": "not mine"}),
        ("POST", "/v1/runs/{id}/pause", {"reason": "x"}),
        ("POST", "/v1/runs/{id}/resume", {}),
        ("POST", "/v1/runs/{id}/budget", {"extra_attempts": 1}),
        ("POST", "/v1/runs/{id}/cancel", {}),
    ]
    for method, template, payload in requests:
        theirs = await b.client.request(method, template.format(id=run_id), json=payload, headers=b.headers())
        missing = await b.client.request(method, template.format(id=unknown), json=payload, headers=b.headers())
        their_body, missing_body = await theirs.json(), await missing.json()
        assert theirs.status == missing.status == 404, (template, their_body)
        assert_envelope(their_body, "NOT_FOUND")
        assert _shape(their_body) == _shape(missing_body), template
        assert {h.lower() for h in theirs.headers} - VOLATILE_HEADERS == {
            h.lower() for h in missing.headers
        } - VOLATILE_HEADERS
        assert theirs.headers["Content-Length"] == missing.headers["Content-Length"]
    # Nothing B sent reached the run.
    status = await a.status(run_id)
    assert status["state"] == "waiting_for_gate"
    assert [g["status"] for g in status["gates"] if g["name"] == "anchor"] == ["pending"]
    assert all(e["type"] != "run.paused" for e in await a.events(run_id))
    code, _ = await a.post(f"/v1/runs/{run_id}/cancel", {})
    assert code == 202


async def test_workspaces_expired_revoked_and_malformed_tokens_are_401(api: Api, engine: Engine) -> None:
    path = "/v1/runs/rr_" + "0" * 32
    live, row = create_token(engine, workspace="default", subject="soon-revoked")
    expired, _ = create_token(
        engine, workspace="default", subject="expired", expires_at=utcnow() - timedelta(seconds=1)
    )
    resp = await api.client.get(path, headers={"Authorization": f"Bearer {live}"})
    assert resp.status == 404  # authenticated
    assert revoke_token(engine, row.id)
    bodies = []
    for header in (
        f"Bearer {live}",
        f"Bearer {expired}",
        "Bearer qp_" + secrets.token_urlsafe(32),
        "Bearer",
        "Bearer ",
        f"Basic {live}",
        f"Bearer {live[:-1]}",
        f"Bearer {live}x",
        "Bearer " + "qp_" + "a" * 5000,
    ):
        resp = await api.client.get(path, headers={"Authorization": header})
        payload = await resp.json()
        assert resp.status == 401, header[:20]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert_envelope(payload, "AUTHENTICATION_ERROR")
        bodies.append(payload["error"]["message"])
    # Unknown, revoked and expired tokens are indistinguishable.
    assert bodies[0] == bodies[1] == bodies[2]


async def test_workspaces_tokens_never_reach_logs_or_storage(
    api: Api, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "qp_" + secrets.token_urlsafe(32)
    run = "/v1/runs/rr_" + "0" * 32
    seen: list[str] = []
    for method, path, headers, body in [
        ("GET", run, api.headers(), None),
        ("GET", f"{run}?access_token={api.token}", api.headers(), None),
        ("POST", "/v1/runs", api.headers(), {"repo_url": api.token, "branch": "main", "extra": api.token}),
        ("POST", f"{run}/gates/anchor/decision", api.headers(), {"approved": True, "reason": api.token}),
        ("GET", run, {"Authorization": f"Bearer {wrong}"}, None),
        ("GET", run, {"Authorization": f"Token {api.token}"}, None),
        ("GET", "/v1/nothing", {**api.headers(), "X-Api-Key": api.token}, None),
    ]:
        resp = await api.client.request(method, path, json=body, headers=headers)
        seen.append(await resp.text())
        seen.extend(f"{k}: {v}" for k, v in resp.headers.items())
    assert caplog.records
    # aiohttp's access log (on in the test server, off in api/server.py) would print query strings: left out.
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    logged = "\n".join([*(r.getMessage() for r in records), *(repr(r.__dict__) for r in records)])
    for secret in (api.token, wrong):
        assert secret not in logged
        # Echoing a submitted value back in a validation message is fine; it must not be the bearer header's.
    assert wrong not in "\n".join(seen)
    with Session(engine) as session:
        rows = list(session.exec(select(ApiToken)))
    stored = "\n".join(repr(r.model_dump()) for r in rows)
    assert api.token not in stored and wrong not in stored


def _failing_repo(tmp_path: Path, files: dict[str, str], *, symlink: tuple[str, str] | None = None) -> str:
    url = make_remote(tmp_path, files)
    if symlink is not None:
        name, target = symlink
        seed = tmp_path / "project-seed"
        os.symlink(target, seed / name)
        git("add", "--all", cwd=seed)
        git("commit", "--quiet", "-m", "link", cwd=seed)
        git("push", "--quiet", url, "main:main", cwd=seed)
    return url


BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    + ["stack: *i"]
)


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("case", ["yaml-bomb", "symlink-out", "deep"])
async def test_workspaces_hostile_quantapilot_yml_fails_config_invalid(api: Api, tmp_path: Path, case: str) -> None:
    if case == "yaml-bomb":
        url = _failing_repo(tmp_path, {"README.md": "# x\n", "quantapilot.yml": BILLION_LAUGHS + "\n"})
    elif case == "deep":
        url = _failing_repo(tmp_path, {"README.md": "# x\n", "quantapilot.yml": "a: " + "[" * 5000 + "]" * 5000})
    else:
        url = _failing_repo(tmp_path, {"README.md": "# x\n"}, symlink=("quantapilot.yml", "/etc/passwd"))
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    assert code == 202, body
    status = await api.wait_state(body["run_id"], "failed", "waiting_for_gate", timeout=60)
    assert status["state"] == "failed", status
    assert status["error"]["code"] == "CONFIG_INVALID", status["error"]
    assert "root:" not in str(status)


@pytest.mark.parametrize(
    "repo_url",
    [
        "https://user:s3cr3t-pw@127.0.0.1:9/x.git",
        "https://tok3n-only@127.0.0.1:9/x.git",
        "http://:s3cr3t-pw@127.0.0.1:9/x.git",
        "ssh://git:s3cr3t-pw@127.0.0.1:9/x.git",
    ],
)
async def test_workspaces_credentialed_repo_urls_are_refused_at_the_api(api: Api, repo_url: str) -> None:
    code, body = await api.post("/v1/runs", {"repo_url": repo_url, "branch": "main"})
    assert code == 422, body
    assert_envelope(body, "VALIDATION_ERROR")
    assert body["error"]["details"] == [{"path": "repo_url", "message": "credentials in the URL are not allowed"}]
    assert "s3cr3t" not in str(body) and "tok3n" not in str(body)


@pytest.mark.parametrize(
    ("repo_url", "patterns"),
    [
        ("ext::git-upload-pack", ["*"]),
        ("fd::3", ["*"]),
        ("-uhttps://127.0.0.1:9/x.git", ["*"]),
        ("file:///etc", ["https://*"]),
        ("/etc", ["https://*"]),
    ],
)
async def test_workspaces_refused_repo_urls_fail_repo_url_not_allowed(
    make_api: ApiFactory, client: Client, settings: Settings, repo_url: str, patterns: list[str]
) -> None:
    # The worker applies the patterns, so it gets them too (on its own task queue).
    custom = settings.model_copy(
        update={"allowed_repo_patterns": patterns, "task_queue": f"qp-sec-{uuid.uuid4().hex[:10]}"}
    )
    api = await make_api(custom)
    async with build_worker(client, custom):
        code, body = await api.post("/v1/runs", {"repo_url": repo_url, "branch": "main"})
        assert code == 202, body
        status = await api.wait_state(body["run_id"], "failed", timeout=60)
        assert status["error"]["code"] == "REPO_URL_NOT_ALLOWED", status["error"]
