"""Docs pages over HTTP: versions, latest, listings, deprecation notices, workspaces and path traversal."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from yarl import URL

from quantapilot.db import session_scope
from quantapilot.docs.model import RelatedLink
from quantapilot.docs.store import PageInput, upsert_pages
from tests.lifecycle_e2e.conftest import LcApiFactory
from tests.support import Api


def publish(engine: Engine, *, workspace: str, project: str, version: str, pages: list[PageInput]) -> None:
    with session_scope(engine) as session:
        upsert_pages(
            session=session, workspace=workspace, project=project, version=version, commit_sha=None, pages=pages
        )


def guide(text: str, **kwargs: object) -> PageInput:
    return PageInput(
        slug="demo/guide",
        title=f"Guide {text}",
        description=f"The guide, {text}",
        markdown=f"# Guide {text}\n\n<script>alert(1)</script>\n\n[next](demo/setup)\n",
        tags=["guide"],
        related=[
            RelatedLink(slug="demo/setup", title="Setup", type="prerequisite"),
            RelatedLink(slug="demo/api", title="API", type="next_step"),
        ],
        **kwargs,
    )


@pytest.fixture
def pages(engine: Engine) -> None:
    publish(engine, workspace="default", project="demo", version="1.0.0", pages=[guide("one")])
    publish(engine, workspace="default", project="demo", version="1.1.0", pages=[guide("two")])
    publish(engine, workspace="default", project="demo", version="2.0.0-rc.1",
            pages=[guide("three", status="draft")])  # fmt: skip
    publish(
        engine,
        workspace="default",
        project="demo",
        version="0.9.0",
        pages=[
            PageInput(
                slug="demo/old",
                title="Old",
                markdown="---\nstatus: deprecated\n---\n# Old\n",
                status="archived",
                change_summary="Replaced by demo/guide.",
            )
        ],
    )
    publish(engine, workspace="other", project="secret", version="1.0.0",
            pages=[PageInput(slug="secret/page", title="Secret", markdown="# Secret\n")])  # fmt: skip


@pytest.mark.usefixtures("pages")
async def test_docs_page_latest_and_by_version(lc_api: Api) -> None:
    code, page = await lc_api.get("/v1/docs/pages/demo/guide")
    assert code == 200, page
    # The draft release candidate is not "latest": the highest published version is.
    assert page["version"] == "1.1.0" and page["title"] == "Guide two" and page["status"] == "published"
    assert page["versions"] == ["1.0.0", "1.1.0", "2.0.0-rc.1"]
    assert page["project"] == "demo" and page["tags"] == ["guide"] and page["deprecationNotice"] is None
    assert page["updated"].endswith("Z") and page["description"] == "The guide, two"
    assert page["content"]["markdown"].startswith("# Guide two")
    assert "<h1>Guide two</h1>" in page["content"]["html"] and "<script>" not in page["content"]["html"]
    assert page["related"] == [
        {"slug": "demo/setup", "title": "Setup", "type": "prerequisite"},
        {"slug": "demo/api", "title": "API", "type": "next_step"},
    ]
    code, old = await lc_api.get("/v1/docs/pages/demo/guide?version=1.0.0")
    assert code == 200 and old["version"] == "1.0.0" and old["title"] == "Guide one"
    code, draft = await lc_api.get("/v1/docs/pages/demo/guide?version=2.0.0-rc.1")
    assert code == 200 and draft["status"] == "draft"


@pytest.mark.usefixtures("pages")
async def test_docs_page_unknown_other_workspace_and_traversal(lc_api: Api, make_lc_api: LcApiFactory) -> None:
    for path in (
        "/v1/docs/pages/demo/missing",
        "/v1/docs/pages/demo/guide?version=9.9.9",
        "/v1/docs/pages/secret/page",
    ):
        code, body = await lc_api.get(path)
        assert code == 404 and body["error"]["code"] == "NOT_FOUND", (path, body)
    for path in (
        "/v1/docs/pages/demo/%2E%2E/%2E%2E/secret/page",
        "/v1/docs/pages/demo//guide",
        "/v1/docs/pages/Demo/Guide",
    ):
        code, body = await lc_api.get(path)
        assert code in (404, 422) and body["error"]["code"] in ("NOT_FOUND", "VALIDATION_ERROR"), (path, body)
    # Sent exactly as written (no client-side normalisation of the dot segments).
    for raw in ("/v1/docs/pages/demo/%2E%2E/secret/page", "/v1/docs/pages/demo%2F..%2F..%2Fsecret%2Fpage"):
        url = URL(str(lc_api.client.make_url("/")).rstrip("/") + raw, encoded=True)
        resp = await lc_api.client.session.get(url, headers=lc_api.headers())
        body = await resp.json()
        assert resp.status in (404, 422) and "error" in body, (raw, resp.status, body)
        assert body.get("title") != "Secret"
    # The other workspace sees its own page and not ours.
    other = await make_lc_api(workspace="other")
    code, body = await other.get("/v1/docs/pages/secret/page")
    assert code == 200 and body["title"] == "Secret"
    code, _ = await other.get("/v1/docs/pages/demo/guide")
    assert code == 404
    no_scope = await make_lc_api(scopes=("telemetry:write",))
    code, body = await no_scope.get("/v1/docs/pages/demo/guide")
    assert code == 403


@pytest.mark.usefixtures("pages")
async def test_docs_page_archived_has_deprecation_notice(lc_api: Api) -> None:
    code, page = await lc_api.get("/v1/docs/pages/demo/old")
    assert code == 200 and page["status"] == "archived"
    assert page["deprecationNotice"] == "Replaced by demo/guide."


@pytest.mark.usefixtures("pages")
async def test_docs_pages_list_by_project(lc_api: Api) -> None:
    code, body = await lc_api.get("/v1/docs/pages?project=demo")
    assert code == 200, body
    listed = {p["slug"]: p for p in body["pages"]}
    assert set(listed) == {"demo/guide", "demo/old"}
    assert listed["demo/guide"]["versions"] == ["1.0.0", "1.1.0", "2.0.0-rc.1"]
    assert listed["demo/guide"]["latest"] == "1.1.0" and listed["demo/old"]["status"] == "archived"
    code, everything = await lc_api.get("/v1/docs/pages")
    assert code == 200 and {p["project"] for p in everything["pages"]} == {"demo"}
    code, none = await lc_api.get("/v1/docs/pages?project=absent")
    assert code == 200 and none["pages"] == []


async def test_docs_route_refuses_dot_segments_in_slug(lc_api: Api) -> None:
    url = URL(str(lc_api.client.make_url("/")).rstrip("/") + "/v1/docs/pages/demo/%2E%2E/secret", encoded=True)
    resp = await lc_api.client.session.get(url, headers=lc_api.headers())
    body = await resp.json()
    assert resp.status == 422 and body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["details"][0]["path"] == "slug"
