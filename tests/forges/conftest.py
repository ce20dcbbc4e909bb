"""Fixtures for the forge tests: a real bare repository with a ``main`` branch and a clone of it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from quantapilot.forges import gitops

AUTHOR = {"author_name": "QP Test", "author_email": "qp-test@localhost"}


async def make_bare_repo(root: Path, *, files: dict[str, str] | None = None) -> Path:
    """Create ``root/remote.git`` whose ``main`` holds one commit with ``files``."""
    bare = root / "remote.git"
    bare.mkdir(parents=True)
    await gitops.git("init", "--quiet", "--bare", "--initial-branch=main", cwd=bare)
    seed = root / "seed"
    seed.mkdir()
    await gitops.git("init", "--quiet", "--initial-branch=main", cwd=seed)
    for name, text in (files or {"README.md": "# demo\n\nline one\nline two\n"}).items():
        (seed / name).parent.mkdir(parents=True, exist_ok=True)
        (seed / name).write_text(text)
    await gitops.commit_all(seed, message="initial", **AUTHOR)
    await gitops.git("remote", "add", "origin", str(bare), cwd=seed)
    await gitops.push(seed, remote="origin", branch="main")
    return bare


@pytest.fixture
async def bare_repo(tmp_path: Path) -> Path:
    """A bare repository standing in for the project's real remote."""
    return await make_bare_repo(tmp_path)


@pytest.fixture
async def worktree(tmp_path: Path, bare_repo: Path) -> Path:
    """A clone of :func:`bare_repo` (its ``origin``), on ``main``."""
    return await gitops.clone(str(bare_repo), tmp_path / "wt", branch="main")


async def show(bare: Path, spec: str) -> str:
    """Return ``git show <spec>`` in ``bare`` (a file at a revision, ``main:README.md``)."""
    return (await gitops.git("show", spec, cwd=bare)).stdout


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 (a free port) and yield its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as session:
        yield session
