"""A hostile repository's files are data, never a path out: tracked links, YAML bombs, worktrees left behind.

Every attack runs through the real stack: a bare git remote on disk holding the hostile commit (symbolic links
committed as links), the dev server, a worker (a subprocess where its own environment is the target), and the HTTP
API the attacker reads the results from.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from quantapilot.models import RunKind
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.drills.helpers import ROOT, settings_env, stop
from tests.support import Api, eventually, git, remote_branches
from worker import build_worker

# Nine levels of ten aliases: 10**9 leaves once expanded, a few hundred bytes written.
LAUGHS = "\n".join(
    ['lol0: &l0 "lol"']
    + [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    + ["title: Laughs"]
)
LOOP = "self: &s [*s]\ntitle: Loop"
SQLITE_MAGIC = "SQLite format 3"
PASSWD_LINE = "root:x:0:0"


def hostile_remote(root: Path, name: str, files: Mapping[str, str], links: Mapping[str, str] | None = None) -> str:
    """A bare repository whose ``main`` holds ``files`` and symbolic links (``path -> target``); its file:// URL."""
    root.mkdir(parents=True, exist_ok=True)
    bare, seed = root / f"{name}.git", root / f"{name}-seed"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=root)
    git("init", "--quiet", "--initial-branch=main", str(seed), cwd=root)
    for rel, content in files.items():
        (seed / rel).parent.mkdir(parents=True, exist_ok=True)
        (seed / rel).write_text(content, encoding="utf-8")
    for rel, target in (links or {}).items():
        (seed / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, seed / rel)
    git("add", "--all", cwd=seed)
    git("commit", "--quiet", "-m", "hostile", cwd=seed)
    git("push", "--quiet", str(bare), "main:main", cwd=seed)
    return f"file://{bare}"


def everything_pushed(url: str) -> str:
    """Every blob of every branch of a bare remote, concatenated (what the attacker can read back from git)."""
    bare = Path(url.removeprefix("file://"))
    out: list[str] = []
    for branch in remote_branches(url):
        listing = git("ls-tree", "-r", "-z", branch, cwd=bare)
        for record in filter(None, listing.split("\0")):
            oid = record.split("\t", 1)[0].split()[2]
            blob = subprocess.run(["git", "cat-file", "blob", oid], cwd=bare, capture_output=True, check=True)
            out.append(blob.stdout.decode("utf-8", "replace"))
    return "\n".join(out)


async def everything_served(api: Api, project: str, run_ids: list[str]) -> str:
    """Every docs page of the project, each run's status and events, as the API serves them."""
    out: list[Any] = []
    code, listing = await api.get(f"/v1/docs/pages?project={project}")
    assert code == 200, listing
    for summary in listing["pages"]:
        code, page = await api.get(f"/v1/docs/pages/{summary['slug']}")
        assert code == 200, page
        out.append(page)
    for run_id in run_ids:
        out.append(await api.status(run_id))
        out.append(await api.events(run_id))
    return json.dumps(out)


async def trigger(api: Api, url: str, **extra: str) -> str:
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main", **extra})
    assert code == 202, body
    return str(body["run_id"])


async def page(api: Api, slug: str) -> str:
    code, body = await api.get(f"/v1/docs/pages/{slug}")
    assert code == 200, body
    return str(body["content"]["markdown"])


def run_dir(settings: Settings, run_id: str) -> Path:
    return settings.run_workdir / "default" / run_id


# --- reading: links are listed, never followed ----------------------------------------------------------


@pytest.mark.timeout(240)
async def test_repo_files_tracked_links_are_never_followed(
    make_api: ApiFactory, settings: Settings, tmp_path: Path
) -> None:
    secret = f"outside-secret-{uuid.uuid4().hex}"
    env_marker = f"worker-env-{uuid.uuid4().hex}"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(f"# {secret}\n\n{secret} is what the attacker wants.\n")
    (outside / "secret.toml").write_text(f'[project]\nname = "{secret}"\ndescription = "{secret}"\n')
    (outside / "secret.py").write_text(f'"""{secret}."""\n\n\ndef {secret.replace("-", "_")}() -> None:\n    pass\n')
    # The service's own database, seen from docs/notes.md in <workdir>/<workspace>/<run_id>/repo.
    db_file = settings.state_dir / "quantapilot.db"
    if not db_file.exists():  # PostgreSQL pass: a stand-in at the same place, starting as SQLite files do
        db_file.parent.mkdir(parents=True, exist_ok=True)
        db_file.write_bytes(SQLITE_MAGIC.encode() + b"\0" + secret.encode())
    links = {
        "README.md": "/proc/self/environ",
        "CONTRIBUTING.md": str(outside / "secret.md"),
        "pyproject.toml": str(outside / "secret.toml"),
        "pkg/leak.py": str(outside / "secret.py"),
        "docs/notes.md": "../../../../../quantapilot.db",
        "etc": "/etc",
    }
    files = {"pkg/__init__.py": '"""A hostile package."""\n', "guide.md": "# Guide\n\nA regular guide.\n"}
    urls = {
        "lint-on": hostile_remote(tmp_path / "repos", "lint-on", files, links),
        "lint-off": hostile_remote(
            tmp_path / "repos",
            "lint-off",
            {**files, "quantapilot.yml": "version: 1\ngates: {docs_lint: false}\n"},
            links,
        ),
    }
    api = await make_api(settings)
    # The worker is a process of its own, so /proc/self/environ is its environment, holding the marker.
    env = {k: v for k, v in settings_env(settings).items() if k.startswith("QP_") or k in ("PATH", "LANG")}
    log = (tmp_path / "worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker"], env={**env, "HOSTILE_MARKER": env_marker}, stdout=log, stderr=log, cwd=ROOT
    )
    try:
        run_ids = {project: await trigger(api, url) for project, url in urls.items()}
        for project, run_id in run_ids.items():
            status = await api.wait_gate(run_id, "anchor", timeout=120)
            assert status["state"] == "waiting_for_gate", (project, status)
        for project, url in urls.items():
            pushed = everything_pushed(url)
            served = await everything_served(api, project, [run_ids[project]])
            leaks = [
                (where, leaked)
                for where, text in (("docs branch", pushed), ("API", served))
                for leaked in (secret, env_marker, SQLITE_MAGIC, PASSWD_LINE)
                if leaked in text
            ]
            assert not leaks, f"{project}: {leaks}"
            # The documentation was generated, pushed and served, and it says why those files are missing.
            index = await page(api, f"{project}/index")
            assert "## Files not read" in index, index
            for rel in ("README.md", "CONTRIBUTING.md", "pyproject.toml", "pkg/leak.py", "docs/notes.md"):
                assert f"`{rel}`: symbolic link, not followed" in index, (rel, index)
            assert "Guide" in await page(api, f"{project}/guides")
            # docs/ holds a file of the repository's own (the docs/notes.md link), so the pages go to
            # docs/quantapilot/ and never mix into it.
            assert "docs/quantapilot/index.md" in git(
                "ls-tree",
                "-r",
                "--name-only",
                f"quantapilot/{run_ids[project]}/docs",
                cwd=Path(url.removeprefix("file://")),
            )
    finally:
        stop(worker)
        log.close()


# --- writing: never through a link ---------------------------------------------------------------------

MILESTONE_ONLY = """\
version: 1
policies: {gates: ["-anchor", "-first_merge", "-M-001"]}
milestones:
  - id: M-001
    title: Write the record
    criteria: [the record exists]
"""


@pytest.mark.usefixtures("worker")
async def test_repo_files_milestone_record_is_never_written_through_a_link(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    files = {"README.md": "# Records\n", "quantapilot.yml": MILESTONE_ONLY}
    repos = tmp_path / "repos"
    urls = {
        # The records folder, the record itself (a dangling link: writing would create its target), and the
        # whole .quantapilot folder aimed at the workspace folder that holds every other run's worktree.
        "folder": hostile_remote(repos, "folder", files, {".quantapilot/milestones": str(outside)}),
        "record": hostile_remote(repos, "record", files, {".quantapilot/milestones/M-001.md": str(outside / "x.md")}),
        "parent": hostile_remote(repos, "parent", files, {".quantapilot": "../.."}),
    }
    run_ids = {name: await trigger(api, url) for name, url in urls.items()}
    for name, run_id in run_ids.items():
        final = await api.wait_state(run_id, "failed", "completed", timeout=90)
        assert final["state"] == "failed", (name, final)
        assert final["error"]["code"] == "PRECONDITION_FAILED", (name, final["error"])
        assert "symbolic link" in final["error"]["message"], (name, final["error"])
        assert not any(b.endswith("/m-001") for b in remote_branches(urls[name])), name
    assert list(outside.iterdir()) == []
    assert not (settings.run_workdir / "default" / "milestones").exists()


@pytest.mark.usefixtures("worker")
async def test_repo_files_docs_are_never_written_through_a_linked_folder(api: Api, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repos = tmp_path / "repos"
    readme = {"README.md": "# Docs\n\nDocumented.\n"}
    urls = {
        "etc": hostile_remote(repos, "etc", readme, {"docs": "/etc"}),
        "outside": hostile_remote(repos, "outside", readme, {"docs": str(outside)}),
        # Inside the work tree, but into git's own folder: still a link, still refused.
        "gitdir": hostile_remote(repos, "gitdir", readme, {"docs": ".git"}),
        "nested": hostile_remote(
            repos,
            "nested",
            {**readme, "quantapilot.yml": "version: 1\ndocs: {output_folder: site/docs}\n"},
            {"site": str(outside)},
        ),
    }
    etc_before = sorted(p.name for p in Path("/etc").iterdir())
    run_ids = {name: await trigger(api, url) for name, url in urls.items()}
    for name, run_id in run_ids.items():
        final = await api.wait_state(run_id, "failed", "waiting_for_gate", timeout=90)
        assert final["state"] == "failed", (name, final)
        assert final["error"]["code"] == "PRECONDITION_FAILED", (name, final["error"])
        assert list(remote_branches(urls[name])) == ["main"], name  # nothing was pushed
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in Path("/etc").iterdir()) == etc_before


@pytest.mark.usefixtures("worker")
async def test_repo_files_quantapilot_yml_is_never_read_through_a_link(api: Api, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = f"yml-secret-{uuid.uuid4().hex}"
    (outside / "quantapilot.yml").write_text(f"version: 1\nstack: {{leak: {secret}}}\n")
    repos = tmp_path / "repos"
    inside = "version: 1\ngates: {docs_lint: false}\n"
    runs = {
        # A link to a file inside the repository is still a link: not read.
        "inside": await trigger(
            api, hostile_remote(repos, "inside", {"conf/real.yml": inside}, {"quantapilot.yml": "conf/real.yml"})
        ),
        "outside": await trigger(
            api, hostile_remote(repos, "outside", {}, {"quantapilot.yml": str(outside / "quantapilot.yml")})
        ),
        "environ": await trigger(api, hostile_remote(repos, "environ", {}, {"quantapilot.yml": "/proc/self/environ"})),
        # quantapilot_yaml_path through a linked folder.
        "folder": await trigger(
            api,
            hostile_remote(repos, "folder", {}, {"conf": str(outside)}),
            quantapilot_yaml_path="conf/quantapilot.yml",
        ),
    }
    # A huge file is refused from its size in the tree, before a byte of it is read.
    huge = await trigger(
        api, hostile_remote(repos, "huge", {"quantapilot.yml": "version: 1\n#" + "x" * 300_000 + "\n"})
    )
    for name, run_id in runs.items():
        final = await api.wait_state(run_id, "failed", "waiting_for_gate", timeout=90)
        assert final["state"] == "failed", (name, final)
        assert final["error"]["code"] == "CONFIG_INVALID", (name, final["error"])
        assert "symbolic link" in final["error"]["message"], (name, final["error"])
        assert secret not in json.dumps([final, await api.events(run_id)])
    final = await api.wait_state(huge, "failed", "waiting_for_gate", timeout=90)
    assert final["error"]["code"] == "CONFIG_INVALID", final
    assert "larger than 262144 bytes" in final["error"]["message"], final["error"]


# --- YAML bombs -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_repo_files_yaml_bombs_end_quickly_and_the_worker_serves_other_runs(api: Api, tmp_path: Path) -> None:
    repos = tmp_path / "repos"
    guides = hostile_remote(
        repos,
        "guides",
        {
            "README.md": "# Guides\n\nA project with hostile guides.\n",
            "docs/laughs.md": f"---\n{LAUGHS}\n---\n# Laughs\n\nA guide.\n",
            "docs/loop.md": f"---\n{LOOP}\n---\n# Loop\n\nAnother guide.\n",
            "docs/fine.md": "---\ntitle: Fine guide\n---\nAll good here.\n",
        },
    )
    config = hostile_remote(
        repos,
        "config",
        {
            "README.md": "# Config\n",
            "quantapilot.yml": f"version: 1\nstack:\n  {LAUGHS.replace(chr(10), chr(10) + '  ')}\n",
        },
    )
    other = hostile_remote(repos, "other", {"README.md": "# Other\n\nAn ordinary project.\n"})
    run_guides, run_config, run_other = [await trigger(api, url) for url in (guides, config, other)]

    # Each bound is a deadline for progress, not a measurement: a bomb expanded in memory misses it by far.
    failed = await api.wait_state(run_config, "failed", "waiting_for_gate", timeout=60)
    assert failed["state"] == "failed" and failed["error"]["code"] == "CONFIG_INVALID", failed
    assert "more than 64 YAML aliases" in failed["error"]["message"]
    for run_id in (run_guides, run_other):
        status = await api.wait_gate(run_id, "anchor", timeout=60)
        assert status["state"] == "waiting_for_gate", status

    index = await page(api, "guides/index")
    assert "`docs/laughs.md`: front matter refused: more than 64 YAML aliases" in index, index
    assert "`docs/loop.md`: front matter refused: recursive YAML aliases" in index, index
    listed = await page(api, "guides/guides")
    assert "Fine guide" in listed and "laughs.md" not in listed and "loop.md" not in listed, listed
    # The worker still answers for every run: the ordinary one moves on through its gate to the end.
    await api.decide(run_other, "anchor", True)
    assert (await api.wait_state(run_other, "completed", timeout=60))["state"] == "completed"


# --- worktrees do not outlive their run -----------------------------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_repo_files_finished_runs_leave_no_worktree(api: Api, settings: Settings, tmp_path: Path) -> None:
    repos = tmp_path / "repos"
    completed = await trigger(api, hostile_remote(repos, "completed", {"README.md": "# Done\n"}))
    cancelled = await trigger(api, hostile_remote(repos, "cancelled", {"README.md": "# Stopped\n"}))
    failed = await trigger(api, hostile_remote(repos, "failed", {"quantapilot.yml": "version: 2\n"}))
    for run_id in (completed, cancelled):
        await api.wait_gate(run_id, "anchor")
        assert (run_dir(settings, run_id) / "repo" / ".git").is_dir()  # the run works in its own clone
    await api.decide(completed, "anchor", True)
    code, body = await api.post(f"/v1/runs/{cancelled}/cancel")
    assert code == 202, body
    ends = {completed: "completed", cancelled: "cancelled", failed: "failed"}
    for run_id, state in ends.items():
        final = await api.wait_state(run_id, state)
        # Gone before the run reports its final state: a client that sees it finds no worktree of the run.
        assert not run_dir(settings, run_id).exists(), (state, final)
    assert (await api.status(failed))["error"]["code"] == "CONFIG_INVALID"
    # Its files are deleted right after, off the run's path (set aside first): nothing is left on the disk.
    workspace = settings.run_workdir / "default"
    left = await eventually(
        lambda: asyncio.to_thread(lambda: sorted(p.name for p in workspace.iterdir())),
        lambda names: names == [],
        timeout=30,
        what="set-aside folders deleted",
    )
    assert left == []


async def test_repo_files_worker_sweeps_worktrees_of_closed_runs(
    make_api: ApiFactory, client: Client, settings: Settings, tmp_path: Path
) -> None:
    # A run's steps can run on several workers (each clones on demand), its cleanup on one; a terminated run runs
    # none. Each worker sweeps what it holds for closed runs.
    settings = settings.model_copy(update={"worktree_sweep_interval_s": 0.2})
    api = await make_api(settings)
    repos = tmp_path / "repos"
    async with build_worker(client, settings):
        terminated = await trigger(api, hostile_remote(repos, "terminated", {"README.md": "# Gone\n"}))
        waiting = await trigger(api, hostile_remote(repos, "waiting", {"README.md": "# Open\n"}))
        for run_id in (terminated, waiting):
            await api.wait_gate(run_id, "anchor")
        await client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", terminated)).terminate("operator")
        # A folder no run owns (a clone left by a crash of a run Temporal no longer knows); sorts after the others,
        # so once it is gone a sweep has looked at every folder.
        stray = run_dir(settings, "rr_" + "f" * 32) / "repo"
        stray.mkdir(parents=True)
        assert run_dir(settings, terminated).exists()

        async def leftovers() -> list[str]:
            return sorted(p.name for p in (settings.run_workdir / "default").iterdir())

        left = await eventually(leftovers, lambda names: names == [waiting], timeout=30, what="sweep")
        assert left == [waiting]
        assert (run_dir(settings, waiting) / "repo" / ".git").is_dir()  # an open run keeps its worktree
