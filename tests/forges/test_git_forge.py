"""The ``git`` forge against real bare repositories, with its records on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from quantapilot.db import session_scope
from quantapilot.forges import (
    ForgeError,
    GitForge,
    MergeConflictError,
    MergeStrategy,
    PullRequest,
    PullRequestDraft,
    gitops,
)
from quantapilot.forges.store import get_pull_request, list_comments
from tests.forges.conftest import AUTHOR, make_bare_repo, show
from tests.support import GIT_ENV


def _forge(engine: Engine, tmp_path: Path) -> GitForge:
    return GitForge(engine, workdir=tmp_path / "scratch", **AUTHOR)


async def _branch_with(worktree: Path, branch: str, files: dict[str, str], *, start: str = "main") -> str:
    await gitops.checkout_new_branch(worktree, branch, start_point=start)
    for name, text in files.items():
        (worktree / name).write_text(text)
    sha = await gitops.commit_all(worktree, message=f"change on {branch}", **AUTHOR)
    assert sha is not None
    return sha


async def _push_to_main_elsewhere(tmp_path: Path, bare: Path, files: dict[str, str], name: str) -> str:
    other = await gitops.clone(str(bare), tmp_path / name, branch="main")
    for path, text in files.items():
        (other / path).write_text(text)
    sha = await gitops.commit_all(other, message=f"main moves ({name})", **AUTHOR)
    assert sha is not None
    await gitops.push(other, remote="origin", branch="main")
    return sha


async def _status(worktree: Path) -> str:
    return (await gitops.git("status", "--porcelain", cwd=worktree)).stdout


@pytest.mark.parametrize("strategy", ["merge", "squash", "rebase"])
async def test_git_forge_open_is_idempotent_and_merge_lands_on_base(
    db_engine: Engine, tmp_path: Path, bare_repo: Path, worktree: Path, strategy: MergeStrategy
) -> None:
    forge = _forge(db_engine, tmp_path)
    repo_url = "https://git.example/acme/demo.git"
    head_sha = await _branch_with(worktree, "qp/run-1/m1", {"feature.txt": "feature\n"})
    # main moves meanwhile (a non-conflicting change), so every strategy has real work to do
    main_moved = await _push_to_main_elsewhere(tmp_path, bare_repo, {"other.txt": "other\n"}, "mover")

    opened = await forge.open_pull_request(
        PullRequestDraft(repo_url=repo_url, head="qp/run-1/m1", base="main", title="M1", body="b", run_id="r1"),
        worktree=worktree,
    )
    assert (opened.number, opened.state, opened.head, opened.base) == (1, "open", "qp/run-1/m1", "main")
    assert opened.url == f"{repo_url}#pr-1"
    assert await gitops.current_sha(bare_repo, "qp/run-1/m1") == head_sha
    again = await forge.open_pull_request(
        PullRequestDraft(repo_url=repo_url, head="qp/run-1/m1", base="main", title="M1", body="b", run_id="r1"),
        worktree=worktree,
    )
    assert again == opened
    await forge.comment(repo_url=repo_url, number=1, body="looks good")

    merged = await forge.merge(repo_url=repo_url, worktree=worktree, number=1, strategy=strategy)
    assert merged.state == "merged"
    assert merged.number == 1
    assert merged.merge_sha == await gitops.current_sha(bare_repo, "main")
    assert await show(bare_repo, "main:feature.txt") == "feature\n"
    assert await show(bare_repo, "main:other.txt") == "other\n"
    parents = (await gitops.git("log", "-1", "--format=%P", "main", cwd=bare_repo)).stdout.split()
    first_parent = (await gitops.git("rev-parse", "main~1", cwd=bare_repo)).stdout.strip()
    if strategy == "merge":
        assert parents == [main_moved, head_sha]
    else:
        # squash and rebase leave a linear history on top of the moved main
        assert len(parents) == 1
        assert first_parent == main_moved
    author = (await gitops.git("log", "-1", "--format=%cn", "main", cwd=bare_repo)).stdout.strip()
    assert author == AUTHOR["author_name"]

    # merging again returns the same pull request and pushes nothing
    assert await forge.merge(repo_url=repo_url, worktree=worktree, number=1, strategy=strategy) == merged
    assert await forge.get(repo_url=repo_url, number=1) == merged
    # the caller's worktree is untouched: still on its branch, clean, no scratch worktree left behind
    assert (await gitops.git("branch", "--show-current", cwd=worktree)).stdout.strip() == "qp/run-1/m1"
    assert await _status(worktree) == ""
    listed = (await gitops.git("worktree", "list", "--porcelain", cwd=worktree)).stdout
    assert listed.count("worktree ") == 1
    with session_scope(db_engine) as session:
        record = get_pull_request(session=session, repo_url=repo_url, number=1)
        assert record is not None
        assert record.run_id == "r1"
        assert record.merged_at is not None
        assert [c.body for c in list_comments(session=session, record=record)] == ["looks good"]


@pytest.mark.parametrize("strategy", ["merge", "squash", "rebase"])
async def test_git_forge_conflict_raises_with_files_and_leaves_everything_clean(
    db_engine: Engine, tmp_path: Path, bare_repo: Path, worktree: Path, strategy: MergeStrategy
) -> None:
    forge = _forge(db_engine, tmp_path)
    repo_url = str(bare_repo)
    await _branch_with(worktree, "qp/conflict", {"README.md": "# demo\n\nours\n", "ok.txt": "fine\n"})
    main_before = await _push_to_main_elsewhere(tmp_path, bare_repo, {"README.md": "# demo\n\ntheirs\n"}, "them")
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=repo_url, head="qp/conflict", base="main", title="t", body="", run_id="r"),
        worktree=worktree,
    )
    with pytest.raises(MergeConflictError) as info:
        await forge.merge(repo_url=repo_url, worktree=worktree, number=pr.number, strategy=strategy)
    assert info.value.files == ["README.md"]
    assert info.value.code == "MERGE_CONFLICT"
    assert await gitops.current_sha(bare_repo, "main") == main_before
    assert (await forge.get(repo_url=repo_url, number=pr.number)).state == "open"
    assert await _status(worktree) == ""
    listed = (await gitops.git("worktree", "list", "--porcelain", cwd=worktree)).stdout
    assert listed.count("worktree ") == 1
    assert not any((tmp_path / "scratch").iterdir())


async def test_git_forge_concurrent_opens_for_one_run_give_one_pr(
    db_engine: Engine, tmp_path: Path, worktree: Path
) -> None:
    forge = _forge(db_engine, tmp_path)
    repo_url = "ssh://git@git.example/acme/demo.git"
    for i in range(4):
        await _branch_with(worktree, f"qp/b{i}", {f"f{i}.txt": f"{i}\n"})

    def open_for(i: int, run_id: str) -> Awaitable[PullRequest]:
        return asyncio.ensure_future(
            forge.open_pull_request(
                PullRequestDraft(
                    repo_url=repo_url, head=f"qp/b{i}", base="main", title=f"b{i}", body="", run_id=run_id
                ),
                worktree=worktree,
            )
        )

    same = await asyncio.gather(*(open_for(0, "run-a") for _ in range(4)))
    assert len({pr.number for pr in same}) == 1
    distinct = await asyncio.gather(*(open_for(i, f"run-{i}") for i in range(1, 4)))
    assert sorted(pr.number for pr in distinct) == [2, 3, 4]
    # another repository numbers its pull requests from 1
    other = await forge.open_pull_request(
        PullRequestDraft(repo_url="https://elsewhere/x/y", head="qp/b1", base="main", title="", body="", run_id="z"),
        worktree=worktree,
    )
    assert other.number == 1
    assert other.url == "https://elsewhere/x/y#pr-1"


async def test_git_forge_merge_retries_when_base_moves_during_push(
    db_engine: Engine, tmp_path: Path, bare_repo: Path, worktree: Path
) -> None:
    forge = _forge(db_engine, tmp_path)
    await _branch_with(worktree, "qp/feat", {"feat.txt": "feat\n"})
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=str(bare_repo), head="qp/feat", base="main", title="t", body="", run_id="r"),
        worktree=worktree,
    )
    # Someone's commit waits on a side branch; the remote's hook moves main to it and rejects our first push,
    # as if that person had pushed to main between our fetch and our push.
    racer = await _push_to_main_elsewhere(tmp_path, bare_repo, {"theirs.txt": "x\n"}, "racer")
    await gitops.git("update-ref", "refs/heads/main", "main~1", cwd=bare_repo)
    await gitops.git("update-ref", "refs/heads/racer", racer, cwd=bare_repo)
    marker = tmp_path / "hook-fired"
    hook = bare_repo / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e '{marker}' ]; then\n"
        f"  touch '{marker}'\n"
        "  env -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES \\\n"
        "    git update-ref refs/heads/main refs/heads/racer\n"
        "  exit 1\n"
        "fi\n"
    )
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    merged = await forge.merge(repo_url=str(bare_repo), worktree=worktree, number=pr.number, strategy="merge")
    assert marker.exists()
    assert merged.state == "merged"
    assert await show(bare_repo, "main:feat.txt") == "feat\n"
    assert await show(bare_repo, "main:theirs.txt") == "x\n"
    assert (await gitops.git("rev-parse", "main^1", cwd=bare_repo)).stdout.strip() == racer


async def test_git_forge_unknown_pr_is_not_retryable(db_engine: Engine, tmp_path: Path, worktree: Path) -> None:
    forge = _forge(db_engine, tmp_path)
    with pytest.raises(ForgeError) as info:
        await forge.get(repo_url="https://x/y/z", number=7)
    assert not info.value.retryable
    with pytest.raises(ForgeError):
        await forge.comment(repo_url="https://x/y/z", number=7, body="hi")
    with pytest.raises(ForgeError):
        await forge.merge(repo_url="https://x/y/z", worktree=worktree, number=7, strategy="merge")


# ----- merge and squash in the object database (no worktree), issue 15 -----------------------------------------


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every git command run from here on, as its arguments (the subcommand first)."""
    calls: list[tuple[str, ...]] = []
    real = gitops.git

    async def recording(*args: str, **kwargs: Any) -> gitops.GitResult:
        calls.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(gitops, "git", recording)
    return calls


def _subcommands(calls: list[tuple[str, ...]]) -> list[str]:
    return [args[0] for args in calls]


async def _commit_message(bare: Path, rev: str) -> str:
    raw = (await gitops.git("cat-file", "commit", rev, cwd=bare)).stdout
    return raw.split("\n\n", 1)[1]


@pytest.mark.parametrize("strategy", ["merge", "squash"])
async def test_git_forge_merge_and_squash_commit_in_the_object_database_without_a_worktree(
    db_engine: Engine,
    tmp_path: Path,
    bare_repo: Path,
    worktree: Path,
    git_calls: list[tuple[str, ...]],
    strategy: MergeStrategy,
) -> None:
    forge = _forge(db_engine, tmp_path)
    head_sha = await _branch_with(worktree, "qp/docs", {"feature.txt": "feature\n", "README.md": "# demo\n\nnew\n"})
    main_moved = await _push_to_main_elsewhere(tmp_path, bare_repo, {"other.txt": "other\n"}, "mover")
    # A file of the checkout named like the ref the merge resolves must not be taken for it.
    (worktree / "refs" / "remotes" / "origin").mkdir(parents=True)
    (worktree / "refs" / "remotes" / "origin" / "main^{commit}").write_text("not a revision\n")
    pr = await forge.open_pull_request(
        PullRequestDraft(
            repo_url=str(bare_repo),
            head="qp/docs",
            base="main",
            title="Add docs  ",
            body="\nfirst \t\n\n\n\nsecond\r\n\n",
            run_id="r",
        ),
        worktree=worktree,
    )
    git_calls.clear()
    merged = await forge.merge(repo_url=str(bare_repo), worktree=worktree, number=pr.number, strategy=strategy)
    ran = _subcommands(git_calls)

    assert merged.merge_sha == await gitops.current_sha(bare_repo, "main")
    parents = (await gitops.git("log", "-1", "--format=%P", "main", cwd=bare_repo)).stdout.split()
    assert parents == ([main_moved, head_sha] if strategy == "merge" else [main_moved])
    files = (await gitops.git("ls-tree", "-r", "--name-only", "main", cwd=bare_repo)).stdout.split()
    assert files == ["README.md", "feature.txt", "other.txt"]
    assert await show(bare_repo, "main:README.md") == "# demo\n\nnew\n"
    assert await show(bare_repo, "main:feature.txt") == "feature\n"
    assert await show(bare_repo, "main:other.txt") == "other\n"
    # The message git merge -m / git commit -m would have made of it (cleaned like git stripspace).
    expected = (
        "Merge pull request #1 from qp/docs\n\nAdd docs\n"
        if strategy == "merge"
        else "Add docs   (#1)\n\nfirst\n\nsecond\n"
    )
    assert await _commit_message(bare_repo, "main") == expected
    people = (await gitops.git("log", "-1", "--format=%an <%ae>|%cn <%ce>", "main", cwd=bare_repo)).stdout.strip()
    author = f"{AUTHOR['author_name']} <{AUTHOR['author_email']}>"
    assert people == f"{author}|{author}"
    # No worktree, no checkout of the repository, no porcelain merge or commit: a handful of plumbing commands.
    assert ran == ["fetch", "rev-parse", "diff-tree", "merge-tree", "commit-tree", "push"]
    assert not (worktree / ".git" / "worktrees").exists()
    assert not any((tmp_path / "scratch").iterdir())
    assert (await gitops.git("branch", "--show-current", cwd=worktree)).stdout.strip() == "qp/docs"


@pytest.mark.parametrize("strategy", ["merge", "squash", "rebase"])
async def test_git_forge_conflict_lists_every_conflicting_file_and_pushes_nothing(
    db_engine: Engine, tmp_path: Path, git_calls: list[tuple[str, ...]], strategy: MergeStrategy
) -> None:
    seeded = {"README.md": "# demo\n", "docs/a b.md": "a\n", "ünï.txt": "u\n", "calm.txt": "calm\n"}
    bare = await make_bare_repo(tmp_path / "origin", files=seeded)
    worktree = await gitops.clone(str(bare), tmp_path / "wt", branch="main")
    forge = _forge(db_engine, tmp_path)
    theirs = {"README.md": "# theirs\n", "docs/a b.md": "theirs\n", "ünï.txt": "theirs\n"}
    main_before = await _push_to_main_elsewhere(tmp_path, bare, theirs, "them")
    ours = {"README.md": "# ours\n", "docs/a b.md": "ours\n", "ünï.txt": "ours\n", "calm.txt": "still calm\n"}
    await _branch_with(worktree, "qp/clash", ours)
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=str(bare), head="qp/clash", base="main", title="t", body="", run_id="r"),
        worktree=worktree,
    )
    git_calls.clear()
    with pytest.raises(MergeConflictError) as info:
        await forge.merge(repo_url=str(bare), worktree=worktree, number=pr.number, strategy=strategy)
    ran = _subcommands(git_calls)
    assert info.value.files == ["README.md", "docs/a b.md", "ünï.txt"]
    assert str(info.value) == "pull request #1 (qp/clash into main) conflicts in 3 file(s)"
    assert await gitops.current_sha(bare, "main") == main_before
    assert "push" not in ran
    assert "commit-tree" not in ran
    if strategy != "rebase":
        assert "worktree" not in ran
    assert (await forge.get(repo_url=str(bare), number=pr.number)).state == "open"
    assert await _status(worktree) == ""
    assert not any((tmp_path / "scratch").iterdir())


@pytest.mark.parametrize("strategy", ["merge", "squash", "rebase"])
async def test_git_forge_merge_retried_after_a_crash_past_the_push_returns_base_and_pushes_nothing(
    db_engine: Engine,
    tmp_path: Path,
    bare_repo: Path,
    worktree: Path,
    git_calls: list[tuple[str, ...]],
    monkeypatch: pytest.MonkeyPatch,
    strategy: MergeStrategy,
) -> None:
    forge = _forge(db_engine, tmp_path)
    await _branch_with(worktree, "qp/feat", {"feat.txt": "feat\n"})
    await _push_to_main_elsewhere(tmp_path, bare_repo, {"other.txt": "other\n"}, "mover")
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=str(bare_repo), head="qp/feat", base="main", title="t", body="b", run_id="r"),
        worktree=worktree,
    )
    record_merged = forge._record_merged

    def crash(*args: Any) -> Any:
        raise RuntimeError("the worker died between the push and the record")

    monkeypatch.setattr(forge, "_record_merged", crash)
    with pytest.raises(RuntimeError):
        await forge.merge(repo_url=str(bare_repo), worktree=worktree, number=pr.number, strategy=strategy)
    pushed = await gitops.current_sha(bare_repo, "main")
    assert await show(bare_repo, "main:feat.txt") == "feat\n"
    assert (await forge.get(repo_url=str(bare_repo), number=pr.number)).state == "open"

    monkeypatch.setattr(forge, "_record_merged", record_merged)
    git_calls.clear()
    merged = await forge.merge(repo_url=str(bare_repo), worktree=worktree, number=pr.number, strategy=strategy)
    ran = _subcommands(git_calls)
    assert merged.state == "merged"
    assert merged.merge_sha == pushed
    assert await gitops.current_sha(bare_repo, "main") == pushed
    assert "push" not in ran
    assert "commit-tree" not in ran
    if strategy != "rebase":
        # (a rebase has to replay head to find its commits already on base)
        assert "worktree" not in ran


@pytest.mark.parametrize("strategy", ["merge", "squash"])
async def test_git_forge_merge_uses_the_attributes_of_base_never_those_of_head(
    db_engine: Engine, tmp_path: Path, strategy: MergeStrategy
) -> None:
    seeded = {
        "notes/log.txt": "a\nb\nc\n",
        "notes/.gitattributes": "log.txt merge=union\n",
        "plain.txt": "a\nb\nc\n",
    }
    bare = await make_bare_repo(tmp_path / "origin", files=seeded)
    worktree = await gitops.clone(str(bare), tmp_path / "wt", branch="main")
    forge = _forge(db_engine, tmp_path)
    await _push_to_main_elsewhere(tmp_path, bare, {"notes/log.txt": "a\nBASE\nc\n"}, "base-union")
    # Head drops base's union driver: base's attributes still apply, as in a merge checked out at base. The
    # caller's checkout (on head, as the run's is) has no .gitattributes at all.
    await gitops.checkout_new_branch(worktree, "qp/union", start_point="main")
    (worktree / "notes" / "log.txt").write_text("a\nHEAD\nc\n")
    (worktree / "notes" / ".gitattributes").unlink()
    assert await gitops.commit_all(worktree, message="head", **AUTHOR) is not None
    pr = await forge.open_pull_request(
        PullRequestDraft(repo_url=str(bare), head="qp/union", base="main", title="u", body="", run_id="r"),
        worktree=worktree,
    )
    await forge.merge(repo_url=str(bare), worktree=worktree, number=pr.number, strategy=strategy)
    assert await show(bare, "main:notes/log.txt") == "a\nBASE\nHEAD\nc\n"

    # Head adding a union driver for the file it conflicts in does not get it merged.
    await _push_to_main_elsewhere(tmp_path, bare, {"plain.txt": "a\nBASE\nc\n"}, "base-plain")
    await gitops.fetch(worktree, branches=("main",))
    await gitops.checkout_new_branch(worktree, "qp/sneaky", start_point="origin/main~1")
    (worktree / "plain.txt").write_text("a\nHEAD\nc\n")
    (worktree / ".gitattributes").write_text("plain.txt merge=union\n")
    assert await gitops.commit_all(worktree, message="sneaky", **AUTHOR) is not None
    sneaky = await forge.open_pull_request(
        PullRequestDraft(repo_url=str(bare), head="qp/sneaky", base="main", title="s", body="", run_id="r2"),
        worktree=worktree,
    )
    before = await gitops.current_sha(bare, "main")
    with pytest.raises(MergeConflictError) as info:
        await forge.merge(repo_url=str(bare), worktree=worktree, number=sneaky.number, strategy=strategy)
    assert info.value.files == ["plain.txt"]
    assert await gitops.current_sha(bare, "main") == before


@pytest.mark.parametrize(
    "message",
    [
        "title",
        "title  \n\n\n\nbody\t \n",
        "\n\n  lead and trail  \n\n",
        "crlf\r\nline\r\n\r\n\r\nend\r\n",
        "# kept, not a comment\n\nx\vy\f\n  indented\n",
        " \t\n\n",
        "",
    ],
)
def test_stripspace_matches_git_stripspace(message: str) -> None:
    git = subprocess.run(
        ["git", "stripspace"], input=message.encode(), capture_output=True, check=True, env=GIT_ENV
    ).stdout.decode()
    assert gitops.stripspace(message) == git
