"""Choosing a forge from the settings."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import Engine

from quantapilot.db import create_all, make_engine
from quantapilot.forges import Forge, ForgeError, GiteaForge, GitForge, GitHubForge, make_forge, parse_repo_slug
from quantapilot.settings import Settings


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    create_all(eng)
    return eng


async def test_make_forge_builds_each_kind_from_settings(
    engine: Engine, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = Settings(
        state_dir=tmp_path,
        github_token="ghp_x",
        gitea_api_url="https://gitea.example",
        gitea_token="t",
    )
    assert isinstance(make_forge("git", settings=settings, engine=engine), GitForge)
    github = make_forge("github", settings=settings, engine=engine, http=http)
    gitea = make_forge("gitea", settings=settings, engine=engine, http=http)
    assert isinstance(github, GitHubForge)
    assert isinstance(gitea, GiteaForge)
    assert all(isinstance(f, Forge) for f in (github, gitea))


async def test_make_forge_refuses_missing_token_or_session(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    with pytest.raises(ForgeError) as info:
        make_forge("github", settings=settings, engine=engine, http=None)
    assert not info.value.retryable
    async with aiohttp.ClientSession() as http:
        for kind in ("github", "gitea"):
            with pytest.raises(ForgeError):
                make_forge(kind, settings=settings, engine=engine, http=http)


@pytest.mark.parametrize(
    ("url", "slug"),
    [
        ("https://github.com/octo/hello.git", ("octo", "hello")),
        ("https://github.com/octo/hello", ("octo", "hello")),
        ("https://x-access-token:abc@github.com/octo/hello.git/", ("octo", "hello")),
        ("ssh://git@github.com:22/octo/hello.git", ("octo", "hello")),
        ("git@github.com:octo/hello.git", ("octo", "hello")),
        ("https://code.example/gitea/octo/hello.git", ("octo", "hello")),
    ],
)
def test_make_forge_repo_slug_parses_https_and_ssh(url: str, slug: tuple[str, str]) -> None:
    assert parse_repo_slug(url) == slug


@pytest.mark.parametrize("url", ["https://github.com/octo", "not a url", "git@github.com:"])
def test_make_forge_repo_slug_refuses_urls_without_owner_and_repo(url: str) -> None:
    with pytest.raises(ForgeError):
        parse_repo_slug(url)
