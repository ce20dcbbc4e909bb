"""The GitHub forge against a contract server that checks requests against GitHub's documented REST API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from quantapilot.forges import ForgeError, GitHubForge, MergeConflictError, PullRequestDraft, gitops
from tests.forges.conftest import AUTHOR, serve
from tests.forges.contracts import ContractState, github_app

TOKEN = "ghp_contractTestToken000000000000000000"
REPO_URL = "https://github.com/octo/hello.git"


@pytest.fixture
async def gh(bare_repo: Path, http: aiohttp.ClientSession) -> AsyncIterator[tuple[GitHubForge, ContractState]]:
    state = ContractState(owner="octo", repo="hello", token=TOKEN, bare=bare_repo)
    async with serve(github_app(state)) as url:
        yield GitHubForge(http, api_url=url, token=TOKEN), state
    assert state.violations == []


async def _feature(worktree: Path, branch: str = "qp/run-7/docs") -> str:
    await gitops.checkout_new_branch(worktree, branch)
    (worktree / "docs.md").write_text("# docs\n")
    sha = await gitops.commit_all(worktree, message="docs", **AUTHOR)
    assert sha is not None
    return sha


def _count(state: ContractState, method: str, suffix: str) -> int:
    return sum(1 for m, p in state.requests if m == method and p.split("?")[0].endswith(suffix))


async def test_github_forge_open_comment_merge_follow_the_contract(
    gh: tuple[GitHubForge, ContractState], worktree: Path, bare_repo: Path
) -> None:
    forge, state = gh
    sha = await _feature(worktree)
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/run-7/docs", base="main", title="Docs", body="B", run_id="r7"),
        worktree=worktree,
    )
    assert await gitops.current_sha(bare_repo, "qp/run-7/docs") == sha  # pushed before the API call
    assert (pr.number, pr.state, pr.head, pr.base, pr.title) == (1, "open", "qp/run-7/docs", "main", "Docs")
    assert pr.url == "https://github.com/octo/hello/pull/1"
    assert pr.merge_sha is None  # GitHub's pre-merge test commit is not a merge
    assert state.pulls[1].head_sha == sha
    again = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/run-7/docs", base="main", title="Docs", body="B", run_id="r7"),
        worktree=worktree,
    )
    assert again == pr
    assert _count(state, "POST", "/pulls") == 1
    assert ("GET", "/repos/octo/hello/pulls?head=octo:qp/run-7/docs&base=main&state=all&per_page=100") in [
        (m, p.replace("%3A", ":").replace("%2F", "/")) for m, p in state.requests
    ]

    await forge.comment(repo_url=REPO_URL, number=1, body="Ready for review")
    assert state.pulls[1].comments == ["Ready for review"]

    merged = await forge.merge(repo_url=REPO_URL, worktree=worktree, number=1, strategy="squash")
    assert merged.state == "merged"
    assert merged.merge_sha == state.pulls[1].merge_sha
    assert await forge.merge(repo_url=REPO_URL, worktree=worktree, number=1, strategy="squash") == merged
    assert _count(state, "PUT", "/merge") == 1
    assert await forge.get(repo_url=REPO_URL, number=1) == merged


async def test_github_forge_open_returns_pr_left_by_a_crashed_attempt(
    gh: tuple[GitHubForge, ContractState], worktree: Path
) -> None:
    forge, state = gh
    sha = await _feature(worktree)
    await gitops.push(worktree, branch="qp/run-7/docs")
    # the earlier attempt created the pull request, then the worker died before recording it
    state.add_pull(head="qp/run-7/docs", base="main", title="Docs", body="", head_sha=sha)
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/run-7/docs", base="main", title="Docs", body="", run_id="r7"),
        worktree=worktree,
    )
    assert pr.number == 1
    assert _count(state, "POST", "/pulls") == 0


async def test_github_forge_open_race_answered_422_finds_the_other_pr(
    gh: tuple[GitHubForge, ContractState], worktree: Path
) -> None:
    forge, state = gh
    sha = await _feature(worktree)
    await gitops.push(worktree, branch="qp/run-7/docs")
    state.add_pull(head="qp/run-7/docs", base="main", title="Docs", body="", head_sha=sha)
    state.hide_from_lookup_once = True  # a concurrent creator wins between our lookup and our create
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=REPO_URL, head="qp/run-7/docs", base="main", title="Docs", body="", run_id="r7"),
        worktree=worktree,
    )
    assert pr.number == 1
    assert len(state.pulls) == 1
    assert _count(state, "POST", "/pulls") == 1


async def test_github_forge_merge_conflicts_map_405_and_409(
    gh: tuple[GitHubForge, ContractState], worktree: Path
) -> None:
    forge, state = gh
    sha = await _feature(worktree)
    await gitops.push(worktree, branch="qp/run-7/docs")
    dirty = state.add_pull(head="qp/run-7/docs", base="main", title="a", body="", head_sha=sha)
    dirty.mergeable = False
    with pytest.raises(MergeConflictError):
        await forge.merge(repo_url=REPO_URL, worktree=worktree, number=dirty.number, strategy="merge")
    moved = state.add_pull(head="qp/run-7/docs", base="main", title="b", body="", head_sha=sha)
    state.head_modified.add(moved.number)
    with pytest.raises(MergeConflictError):
        await forge.merge(repo_url=REPO_URL, worktree=worktree, number=moved.number, strategy="rebase")
    assert not dirty.merged
    assert not moved.merged


async def test_github_forge_errors_map_to_retryable_or_not(
    gh: tuple[GitHubForge, ContractState], http: aiohttp.ClientSession, worktree: Path
) -> None:
    forge, state = gh
    sha = await _feature(worktree)
    await gitops.push(worktree, branch="qp/run-7/docs")
    state.add_pull(head="qp/run-7/docs", base="main", title="a", body="", head_sha=sha)
    for status in (500, 502, 503, 429):
        state.fail_next = [status]
        with pytest.raises(ForgeError) as info:
            await forge.get(repo_url=REPO_URL, number=1)
        assert info.value.retryable, status
        assert info.value.status == status
    with pytest.raises(ForgeError) as missing:
        await forge.get(repo_url=REPO_URL, number=99)
    assert not missing.value.retryable
    assert missing.value.status == 404
    with pytest.raises(ForgeError) as bad_repo:
        await forge.get(repo_url="https://github.com/onlyowner", number=1)
    assert not bad_repo.value.retryable

    wrong = GitHubForge(http, api_url=str(forge._api), token="ghp_wrongToken")
    with pytest.raises(ForgeError) as denied:
        await wrong.get(repo_url=REPO_URL, number=1)
    assert denied.value.status == 401
    assert not denied.value.retryable
    assert "ghp_wrongToken" not in str(denied.value)
    assert "ghp_wrongToken" not in repr(wrong)
    state.violations.clear()  # the wrong token was this test's own doing

    unreachable = GitHubForge(http, api_url="http://127.0.0.1:9", token=TOKEN)
    with pytest.raises(ForgeError) as down:
        await unreachable.get(repo_url=REPO_URL, number=1)
    assert down.value.retryable
