"""The Gitea forge against a contract server that checks requests against Gitea's documented REST API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from quantapilot.forges import ForgeError, GiteaForge, MergeConflictError, PullRequestDraft, gitops
from tests.forges.conftest import AUTHOR, serve
from tests.forges.contracts import ContractState, gitea_app

TOKEN = "gitea-contract-token-0123456789"
REPO_URL = "git@gitea.example:octo/hello.git"


@pytest.fixture
async def gt(bare_repo: Path, http: aiohttp.ClientSession) -> AsyncIterator[tuple[GiteaForge, ContractState, str]]:
    state = ContractState(owner="octo", repo="hello", token=TOKEN, bare=bare_repo)
    async with serve(gitea_app(state)) as url:
        yield GiteaForge(http, api_url=url, token=TOKEN), state, url
    assert state.violations == []


async def _feature(worktree: Path, branch: str = "qp/run-9/m1", *, start: str = "main") -> str:
    await gitops.checkout_new_branch(worktree, branch, start_point=start)
    (worktree / "m1.txt").write_text("m1\n")
    sha = await gitops.commit_all(worktree, message="m1", **AUTHOR)
    assert sha is not None
    return sha


def _count(state: ContractState, method: str, suffix: str) -> int:
    return sum(1 for m, p in state.requests if m == method and p.split("?")[0].endswith(suffix))


async def test_gitea_forge_open_comment_merge_follow_the_contract(
    gt: tuple[GiteaForge, ContractState, str], worktree: Path, bare_repo: Path
) -> None:
    forge, state, url = gt
    sha = await _feature(worktree)
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/run-9/m1", base="main", title="M1", body="B", run_id="r9"),
        worktree=worktree,
    )
    assert await gitops.current_sha(bare_repo, "qp/run-9/m1") == sha
    assert (pr.number, pr.state, pr.head, pr.base) == (1, "open", "qp/run-9/m1", "main")
    assert pr.url == f"{url}/octo/hello/pulls/1"
    again = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/run-9/m1", base="main", title="M1", body="B", run_id="r9"),
        worktree=worktree,
    )
    assert again == pr
    assert _count(state, "POST", "/pulls") == 1
    assert ("GET", "/api/v1/repos/octo/hello/pulls/main/qp/run-9/m1") in state.requests

    await forge.comment(repo_url=REPO_URL, number=1, body="Ready")
    assert state.pulls[1].comments == ["Ready"]
    merged = await forge.merge(repo_url=REPO_URL, worktree=worktree, number=1, strategy="rebase")
    assert merged.state == "merged"
    assert merged.merge_sha == state.pulls[1].merge_sha
    assert await forge.merge(repo_url=REPO_URL, worktree=worktree, number=1, strategy="rebase") == merged
    assert _count(state, "POST", "/merge") == 1


async def test_gitea_forge_api_root_may_be_given_with_api_v1(
    gt: tuple[GiteaForge, ContractState, str], http: aiohttp.ClientSession, worktree: Path
) -> None:
    _, state, url = gt
    sha = await _feature(worktree)
    await gitops.push(worktree, branch="qp/run-9/m1")
    state.add_pull(head="qp/run-9/m1", base="main", title="x", body="", head_sha=sha)
    forge = GiteaForge(http, api_url=f"{url}/api/v1/", token=TOKEN)
    assert (await forge.get(repo_url="https://gitea.example/octo/hello", number=1)).title == "x"


async def test_gitea_forge_open_finds_existing_pr_and_survives_a_409_race(
    gt: tuple[GiteaForge, ContractState, str], worktree: Path
) -> None:
    forge, state, _ = gt
    sha = await _feature(worktree)
    await gitops.push(worktree, branch="qp/run-9/m1")
    state.add_pull(head="qp/run-9/m1", base="main", title="M1", body="", head_sha=sha)
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/run-9/m1", base="main", title="M1", body="", run_id="r9"),
        worktree=worktree,
    )
    assert pr.number == 1
    assert _count(state, "POST", "/pulls") == 0
    state.hide_from_lookup_once = True  # a concurrent creator wins between our lookup and our create: 409
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/run-9/m1", base="main", title="M1", body="", run_id="r9"),
        worktree=worktree,
    )
    assert pr.number == 1
    assert len(state.pulls) == 1
    assert _count(state, "POST", "/pulls") == 1


async def test_gitea_forge_base_with_slash_is_found_by_listing(
    gt: tuple[GiteaForge, ContractState, str], worktree: Path
) -> None:
    forge, state, _ = gt
    await gitops.checkout_new_branch(worktree, "release/1.0")
    await gitops.push(worktree, branch="release/1.0")
    sha = await _feature(worktree, "qp/fix", start="release/1.0")
    await gitops.push(worktree, branch="qp/fix")
    for i in range(60):  # enough to need a second page
        state.add_pull(head=f"other-{i}", base="main", title="o", body="", head_sha=sha)
    wanted = state.add_pull(head="qp/fix", base="release/1.0", title="fix", body="", head_sha=sha)
    for i in range(3):
        state.add_pull(head=f"later-{i}", base="main", title="o", body="", head_sha=sha)
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/fix", base="release/1.0", title="fix", body="", run_id="r"),
        worktree=worktree,
    )
    assert pr.number == wanted.number
    assert _count(state, "POST", "/pulls") == 0
    assert _count(state, "GET", "/pulls") == 2


async def test_gitea_forge_merge_conflicts_map_405_and_409(
    gt: tuple[GiteaForge, ContractState, str], worktree: Path
) -> None:
    forge, state, _ = gt
    sha = await _feature(worktree)
    dirty = state.add_pull(head="qp/run-9/m1", base="main", title="a", body="", head_sha=sha)
    dirty.mergeable = False
    with pytest.raises(MergeConflictError):
        await forge.merge(repo_url=REPO_URL, worktree=worktree, number=dirty.number, strategy="squash")
    moved = state.add_pull(head="qp/run-9/m1", base="main", title="b", body="", head_sha=sha)
    state.head_modified.add(moved.number)
    with pytest.raises(MergeConflictError):
        await forge.merge(repo_url=REPO_URL, worktree=worktree, number=moved.number, strategy="merge")
    assert not dirty.merged
    assert not moved.merged


async def test_gitea_forge_errors_map_to_retryable_or_not(
    gt: tuple[GiteaForge, ContractState, str], http: aiohttp.ClientSession, worktree: Path
) -> None:
    forge, state, url = gt
    sha = await _feature(worktree)
    state.add_pull(head="qp/run-9/m1", base="main", title="a", body="", head_sha=sha)
    for status in (500, 503, 429):
        state.fail_next = [status]
        with pytest.raises(ForgeError) as info:
            await forge.comment(repo_url=REPO_URL, number=1, body="x")
        assert info.value.retryable, status
    with pytest.raises(ForgeError) as missing:
        await forge.get(repo_url=REPO_URL, number=42)
    assert not missing.value.retryable
    wrong = GiteaForge(http, api_url=url, token="wrong-token-value")
    with pytest.raises(ForgeError) as denied:
        await wrong.get(repo_url=REPO_URL, number=1)
    assert not denied.value.retryable
    assert "wrong-token-value" not in str(denied.value)
    state.violations.clear()  # the wrong token was this test's own doing
    # the push works, but the API refuses a base branch the repository does not have
    with pytest.raises(ForgeError) as unknown_base:
        await forge.open_pull_request(
            PullRequestDraft(repo_url=REPO_URL, head="qp/run-9/m1", base="nope", title="t", body="", run_id="r"),
            worktree=worktree,
        )
    assert not unknown_base.value.retryable
