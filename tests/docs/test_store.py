"""Docs page store on SQLite and PostgreSQL: idempotent upserts, versions, latest, listings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from quantapilot.db import session_scope
from quantapilot.docs.generate import generate_docs
from quantapilot.docs.model import RelatedLink
from quantapilot.docs.store import (
    DocPageRecord,
    PageInput,
    get_page,
    list_pages,
    list_versions,
    semver_key,
    upsert_pages,
    validate_slug,
)
from tests.docs.repos import DEMO_FILES, make_repo

WS = "ws-docs"


def _page(slug: str, text: str = "Body", **kwargs: object) -> PageInput:
    return PageInput(slug=slug, title=f"Title {text}", markdown=f"---\nid: x\n---\n# {text}\n", **kwargs)


def _count(engine: Engine) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(DocPageRecord)).one()


def _upsert(engine: Engine, version: str, pages: list[PageInput], *, project: str = "proj", ws: str = WS) -> None:
    with session_scope(engine) as s:
        assert upsert_pages(
            session=s, workspace=ws, project=project, version=version, commit_sha=None, pages=pages
        ) == len(pages)


def test_store_upsert_is_idempotent(db_engine: Engine) -> None:
    pages = [_page("proj/index", "Hello", tags=["overview"]), _page("proj/api/pkg.mod", "Mod")]
    _upsert(db_engine, "1.0.0", pages)
    with session_scope(db_engine) as s:
        first = get_page(session=s, workspace=WS, slug="proj/index")
    assert first is not None
    _upsert(db_engine, "1.0.0", pages)
    assert _count(db_engine) == 2
    with session_scope(db_engine) as s:
        again = get_page(session=s, workspace=WS, slug="proj/index")
    assert again is not None
    assert (again.id, again.updated_at) == (first.id, first.updated_at)
    assert again.html == "<h1>Hello</h1>\n"
    assert again.tags == ["overview"]
    assert again.status == "published"
    assert again.content_type == "markdown"
    assert again.updated_at.tzinfo is not None

    # Same key, new content: the row is overwritten in place and its HTML re-rendered.
    _upsert(db_engine, "1.0.0", [_page("proj/index", "Changed", change_summary="reworded")])
    assert _count(db_engine) == 2
    with session_scope(db_engine) as s:
        changed = get_page(session=s, workspace=WS, slug="proj/index", version="1.0.0")
    assert changed is not None
    assert changed.id == first.id
    assert changed.html == "<h1>Changed</h1>\n"
    assert changed.change_summary == "reworded"
    assert changed.updated_at >= first.updated_at
    assert changed.created_at == first.created_at


def test_store_latest_uses_semantic_versions(db_engine: Engine) -> None:
    for version in ["1.10.0", "1.2.0", "1.0.0-rc.1", "1.0.0", "v2.0.0-beta.2", "v2.0.0-beta.10"]:
        _upsert(db_engine, version, [_page("proj/index", version)])
    with session_scope(db_engine) as s:
        assert list_versions(session=s, workspace=WS, slug="proj/index") == [
            "1.0.0-rc.1",
            "1.0.0",
            "1.2.0",
            "1.10.0",
            "v2.0.0-beta.2",
            "v2.0.0-beta.10",
        ]
        latest = get_page(session=s, workspace=WS, slug="proj/index")
        assert latest is not None
        assert latest.version == "v2.0.0-beta.10"
        old = get_page(session=s, workspace=WS, slug="proj/index", version="1.2.0")
        assert old is not None
        assert old.title == "Title 1.2.0"
        assert get_page(session=s, workspace=WS, slug="proj/index", version="9.9.9") is None
        assert get_page(session=s, workspace="other-ws", slug="proj/index") is None


def test_store_latest_falls_back_to_update_time(db_engine: Engine) -> None:
    _upsert(db_engine, "1.0.0", [_page("proj/index", "release")])
    _upsert(db_engine, "abc1234", [_page("proj/index", "sha-a")])
    _upsert(db_engine, "0ff0ff0", [_page("proj/index", "sha-b")])
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(db_engine) as s:
        rows = {r.version: r for r in s.exec(select(DocPageRecord)).all()}
        # Pin the times so the order does not depend on clock resolution.
        for offset, version in enumerate(["abc1234", "1.0.0", "0ff0ff0"]):
            rows[version].updated_at = base + timedelta(minutes=offset)
            s.add(rows[version])
    with session_scope(db_engine) as s:
        assert list_versions(session=s, workspace=WS, slug="proj/index") == ["abc1234", "1.0.0", "0ff0ff0"]
        latest = get_page(session=s, workspace=WS, slug="proj/index")
        assert latest is not None
        assert latest.version == "0ff0ff0"


def test_store_latest_prefers_published(db_engine: Engine) -> None:
    _upsert(db_engine, "1.0.0", [_page("proj/index", "one")])
    _upsert(db_engine, "2.0.0", [_page("proj/index", "two", status="draft")])
    with session_scope(db_engine) as s:
        latest = get_page(session=s, workspace=WS, slug="proj/index")
        assert latest is not None
        assert latest.version == "1.0.0"
        draft = get_page(session=s, workspace=WS, slug="proj/index", version="2.0.0")
        assert draft is not None
        assert draft.status == "draft"
        [summary] = list_pages(session=s, workspace=WS)
        assert (summary.latest, summary.versions) == ("1.0.0", ["1.0.0", "2.0.0"])


def test_store_lists_pages_by_project(db_engine: Engine) -> None:
    _upsert(db_engine, "1.0.0", [_page("alpha/index", "a1"), _page("alpha/api/index", "api")], project="alpha")
    _upsert(db_engine, "1.1.0", [_page("alpha/index", "a2")], project="alpha")
    _upsert(db_engine, "0.1.0", [_page("beta/index", "b")], project="beta")
    _upsert(db_engine, "0.1.0", [_page("gamma/index", "g")], project="gamma", ws="elsewhere")
    with session_scope(db_engine) as s:
        everything = list_pages(session=s, workspace=WS)
        alpha = list_pages(session=s, workspace=WS, project="alpha")
    assert [(p.project, p.slug) for p in everything] == [
        ("alpha", "alpha/api/index"),
        ("alpha", "alpha/index"),
        ("beta", "beta/index"),
    ]
    assert [p.slug for p in alpha] == ["alpha/api/index", "alpha/index"]
    index = alpha[1]
    assert (index.title, index.versions, index.latest, index.status) == (
        "Title a2",
        ["1.0.0", "1.1.0"],
        "1.1.0",
        "published",
    )


def test_store_keeps_generated_pages_with_related_links(db_engine: Engine, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "demo", DEMO_FILES)
    pages = generate_docs(repo, project="demo", version="1.2.3", updated="2026-01-15")
    inputs = [PageInput.from_generated(p, slug_prefix="demo") for p in pages]
    with session_scope(db_engine) as s:
        upsert_pages(session=s, workspace=WS, project="demo", version="1.2.3", commit_sha="a" * 40, pages=inputs)
    with session_scope(db_engine) as s:
        core = get_page(session=s, workspace=WS, slug="demo/api/demo.core")
        summaries = list_pages(session=s, workspace=WS, project="demo")
    assert core is not None
    assert core.commit_sha == "a" * 40
    assert core.title == "Module demo.core"
    assert core.markdown.startswith("---\nid: api.demo.core\n")
    assert "generator:" not in core.html
    assert "<h1>Module <code>demo.core</code></h1>" in core.html
    assert {"slug": "demo/api/index", "title": "API reference", "type": "related"} in core.related
    assert core.tags == ["api", "python"]
    assert len(summaries) == len(pages)


def test_store_validates_slugs() -> None:
    for good in ["index", "accounts/acc-1/realization", "proj/api/pkg.mod", "a_b/c-d.e"]:
        assert validate_slug(good) == good
    for bad in ["", "/index", "Index", "a/../b", "a//b", "a/./b", "a/", "a b", "a" * 301, "-x", "ü"]:
        with pytest.raises(ValueError, match="slug"):
            validate_slug(bad)
    with pytest.raises(ValueError, match="slug"):
        PageInput(slug="proj/../etc", title="t", markdown="m")
    with pytest.raises(ValueError, match="slug"):
        PageInput(slug="p", title="t", markdown="m", related=[RelatedLink(slug="/abs", title="t", type="related")])


def test_store_rejects_duplicate_slugs_in_one_call(db_engine: Engine) -> None:
    with session_scope(db_engine) as s, pytest.raises(ValueError, match="twice"):
        upsert_pages(
            session=s, workspace=WS, project="p", version="1", commit_sha=None, pages=[_page("p/a"), _page("p/a")]
        )


def test_store_semver_key_orders_like_semver() -> None:
    labels = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    keys = [semver_key(v) for v in labels]
    assert all(k is not None for k in keys)
    assert sorted(labels, key=lambda v: semver_key(v)) == labels  # type: ignore[arg-type,return-value]
    assert semver_key("abc1234") is None
    assert semver_key("1.0.0.0") is None
