"""Clones go only where the operator allows: repository hosts checked like webhook URLs, git pinned to the
checked address, no redirects followed, nothing repeated about what answered, and a size cap on clones.

Real stack: the HTTP API, a worker on the session's dev server, real git against real servers on loopback. DNS
records cannot be created here, so the worker gets a resolver answering from a fixed table (as the URL-safety
tests do): a name that "resolves to 127.0.0.1" is exactly that to the check, while git itself could not resolve
it at all, so a git that reaches the server proves it connected to the checked address.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from temporalio.client import Client

from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.gitserver import BANNER, git_daemon, recording, redirecting, smart_http, tcp_listener
from tests.security.support import assert_envelope
from tests.support import Api, captured_json_logs, make_remote, remote_branches
from worker import build_worker

HOST_REFUSED = "repository host not allowed"
UNREACHABLE = "repository unreachable or not found"
NETWORK_PATTERNS = ["https://*", "http://*", "ssh://*", "git@*:*", "git://*", "file://*"]


class TableResolver:
    """Answers host names from a table, like DNS records we cannot create; any other name does not resolve."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def _stack_settings(settings: Settings, **updates: Any) -> Settings:
    return settings.model_copy(
        update={"allowed_repo_patterns": NETWORK_PATTERNS, "task_queue": f"qp-hosts-{uuid.uuid4().hex[:10]}"} | updates
    )


async def _trigger(api: Api, url: str) -> str:
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    assert code == 202, (url, body)
    return str(body["run_id"])


async def _failure(api: Api, run_id: str, *, timeout: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    status = await api.wait_state(run_id, "failed", "waiting_for_gate", timeout=timeout)
    assert status["state"] == "failed", status
    return status, await api.events(run_id)


def _failed_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [e for e in events if e["type"] == "run.failed"]
    assert len(failed) == 1, events
    return dict(failed[0]["data"])


# ----- the API refuses what it can tell without DNS ------------------------------------------------------------


PRIVATE_LITERALS = [
    "https://127.0.0.1/org/repo.git",
    "https://127.0.0.1:8443/org/repo.git",
    "https://localhost/org/repo.git",
    "https://git.localhost/org/repo.git",
    "https://[::1]/org/repo.git",
    "https://[::ffff:127.0.0.1]/org/repo.git",
    "http://169.254.169.254/latest/meta-data/",
    "https://10.1.2.3/org/repo.git",
    "https://192.168.0.10/org/repo.git",
    "https://0x7f.1/org/repo.git",
    "https://2130706433/org/repo.git",
    "ssh://git@127.0.0.1/org/repo.git",
    "git@localhost:org/repo.git",
    "git@10.0.0.7:org/repo.git",
    "git://[fe80::1]/org/repo.git",
]


async def test_repo_hosts_api_refuses_private_literal_hosts(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(settings)
    for url in PRIVATE_LITERALS:
        code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
        assert code == 422, (url, body)
        assert_envelope(body, "VALIDATION_ERROR")
        assert body["error"]["details"] == [{"path": "repo_url", "message": HOST_REFUSED}], body
    # Allowing private hosts admits them, but never the metadata address.
    lenient = await make_api(settings.model_copy(update={"repo_allow_private": True}))
    code, body = await lenient.post("/v1/runs", {"repo_url": "http://169.254.169.254/x.git", "branch": "main"})
    assert code == 422, body
    code, body = await lenient.post("/v1/runs", {"repo_url": "https://10.1.2.3/org/repo.git", "branch": "main"})
    assert code == 202, body


# ----- the worker checks the address it connects to -------------------------------------------------------------


async def test_repo_hosts_worker_refuses_names_and_literals_resolving_inside(
    make_api: ApiFactory, client: Client, settings: Settings
) -> None:
    worker_settings = _stack_settings(settings)
    # The API lets private literals through here, so the worker's own check (the one that counts) meets them.
    api = await make_api(worker_settings.model_copy(update={"repo_allow_private": True}))
    resolver = TableResolver(
        {
            "loop.example.test": ["127.0.0.1"],
            "six.example.test": ["::1"],
            "meta.example.test": ["169.254.169.254"],
            "ten.example.test": ["10.1.2.3"],
            "mixed.example.test": ["93.184.216.34", "127.0.0.1"],
        }
    )
    async with tcp_listener() as listener:
        port = listener.port
        urls = [
            f"https://loop.example.test:{port}/org/repo.git",
            f"http://loop.example.test:{port}/org/repo.git",
            f"ssh://git@six.example.test:{port}/org/repo.git",
            "git@meta.example.test:org/repo.git",
            f"git://ten.example.test:{port}/org/repo.git",
            f"https://mixed.example.test:{port}/org/repo.git",
            f"https://127.0.0.1:{port}/org/repo.git",
            f"http://[::1]:{port}/org/repo.git",
            f"ssh://git@127.0.0.1:{port}/org/repo.git",
            "https://10.1.2.3/org/repo.git",
        ]
        async with build_worker(client, worker_settings, resolver=resolver):
            runs = {url: await _trigger(api, url) for url in urls}
            for url, run_id in runs.items():
                status, events = await _failure(api, run_id)
                assert status["error"] == {"code": "REPO_URL_NOT_ALLOWED", "message": HOST_REFUSED}, (url, status)
                data = _failed_event(events)
                assert data["error_code"] == "REPO_URL_NOT_ALLOWED", (url, data)
                assert data["message"] == HOST_REFUSED, (url, data)
                text = json.dumps([status, events])
                for address in ("93.184.216.34", "169.254.169.254", "10.1.2.3", "::1"):
                    if address not in url:
                        assert address not in text, (url, address)
        # Nothing connected: the check came before any git network command.
        assert listener.seen.greetings == []
    assert "loop.example.test" in resolver.calls


async def test_repo_hosts_private_allowed_clones_and_pushes_over_smart_http(
    make_api: ApiFactory, client: Client, settings: Settings, tmp_path: Path
) -> None:
    make_remote(tmp_path, {"README.md": "# served over smart HTTP\n"})
    stack = _stack_settings(settings, repo_allow_private=True)
    api = await make_api(stack)
    # git cannot resolve this name (no DNS here): reaching the server proves it used the checked address.
    resolver = TableResolver({"git.example.test": ["127.0.0.1"]})
    async with smart_http(tmp_path) as server, build_worker(client, stack, resolver=resolver):
        run_id = await _trigger(api, f"http://git.example.test:{server.port}/project.git")
        status = await api.wait_gate(run_id, "anchor")
        assert status["state"] == "waiting_for_gate", status
    # The docs branch was pushed over HTTP, to the same pinned address.
    branches = remote_branches(f"file://{tmp_path / 'project.git'}")
    assert f"quantapilot/{run_id}/docs" in branches, branches
    assert any("git-receive-pack" in r for r in server.seen.requests), server.seen.requests
    assert all(r.endswith(f"git.example.test:{server.port}") for r in server.seen.requests), server.seen.requests


async def test_repo_hosts_git_protocol_goes_to_the_checked_address(
    make_api: ApiFactory, client: Client, settings: Settings, tmp_path: Path
) -> None:
    make_remote(tmp_path, {"README.md": "# served by git daemon\n"})
    stack = _stack_settings(settings, repo_allow_private=True)
    api = await make_api(stack)
    resolver = TableResolver({"daemon.example.test": ["127.0.0.1"]})
    async with git_daemon(tmp_path) as daemon, build_worker(client, stack, resolver=resolver):
        run_id = await _trigger(api, f"git://daemon.example.test:{daemon.port}/project.git")
        status = await api.wait_gate(run_id, "anchor")
        assert status["state"] == "waiting_for_gate", status
    assert f"quantapilot/{run_id}/docs" in remote_branches(f"file://{tmp_path / 'project.git'}")


async def test_repo_hosts_redirects_are_not_followed_and_the_answer_is_not_repeated(
    make_api: ApiFactory, client: Client, settings: Settings
) -> None:
    stack = _stack_settings(settings, repo_allow_private=True)
    api = await make_api(stack)
    async with recording(200, text=f"{BANNER} second server") as second:
        target = f"http://127.0.0.1:{second.port}/internal/repo.git/info/refs?service=git-upload-pack"
        async with redirecting(target) as first, build_worker(client, stack):
            with captured_json_logs() as logs:
                run_id = await _trigger(api, f"http://127.0.0.1:{first.port}/org/repo.git")
                status, events = await _failure(api, run_id, timeout=90)
            assert first.seen.requests, "the redirecting server was never asked"
        assert second.seen.requests == [], second.seen.requests
    assert status["error"] == {"code": "REPO_CLONE_FAILED", "message": UNREACHABLE}, status["error"]
    assert _failed_event(events)["message"] == UNREACHABLE
    run_lines = [line for line in logs.lines if line.get("run_id") == run_id]
    assert run_lines, "the run's activities logged nothing"
    # Nothing of what answered: its status, its banner, where it pointed.
    told = json.dumps([status, events, run_lines]).lower()
    for secret in (BANNER, "http 302", "302 found", "redirect", f":{second.port}"):
        assert secret.lower() not in told, secret


async def test_repo_hosts_ssh_connects_to_the_checked_address_only(
    make_api: ApiFactory, client: Client, settings: Settings
) -> None:
    stack = _stack_settings(settings, repo_allow_private=True)
    api = await make_api(stack)
    resolver = TableResolver({"ssh.example.test": ["127.0.0.1"]})
    async with tcp_listener() as listener, build_worker(client, stack, resolver=resolver):
        run_id = await _trigger(api, f"ssh://git@ssh.example.test:{listener.port}/org/repo.git")
        status, _ = await _failure(api, run_id, timeout=90)
    # ssh could not have resolved the name itself: it reached the listener through HostName=<checked address>.
    assert listener.seen.greetings, "ssh never connected"
    assert all(g.startswith(b"SSH-2.0-") for g in listener.seen.greetings), listener.seen.greetings
    assert status["error"]["message"] == UNREACHABLE, status["error"]


# ----- the size cap ----------------------------------------------------------------------------------------------


async def test_repo_hosts_clone_over_the_size_cap_fails_and_leaves_no_partial_clone(
    make_api: ApiFactory, client: Client, settings: Settings, tmp_path: Path
) -> None:
    limit = 256 * 1024
    stack = _stack_settings(settings, clone_max_bytes=limit)
    api = await make_api(stack)
    # Incompressible content makes a large pack; a file of zeros makes a tiny pack but a large checkout.
    for sub in ("random", "zeros", "small"):
        (tmp_path / sub).mkdir()
    random_url = make_remote(tmp_path / "random", {"blob.txt": os.urandom(768 * 1024).hex()})
    zeros_url = make_remote(tmp_path / "zeros", {"zeros.txt": "0" * (8 * 1024 * 1024)})
    small_url = make_remote(tmp_path / "small", {"README.md": "# small\n"})
    async with build_worker(client, stack):
        big = {url: await _trigger(api, url) for url in (random_url, zeros_url)}
        small = await _trigger(api, small_url)
        for url, run_id in big.items():
            status, events = await _failure(api, run_id)
            assert status["error"]["code"] == "REPO_TOO_LARGE", (url, status["error"])
            assert _failed_event(events)["error_code"] == "REPO_TOO_LARGE"
            run_dir = stack.run_workdir / "default" / run_id
            assert not (run_dir / "repo").exists(), url
            assert not (run_dir / "repo.partial").exists(), url
        # Under the cap nothing changes.
        assert (await api.wait_gate(small, "anchor"))["state"] == "waiting_for_gate"
