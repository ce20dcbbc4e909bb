"""The generated docs under /ui/docs over HTTP: within a review link's run, or for a signed-in docs:read token."""

from __future__ import annotations

import html as htmllib
import re
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from quantapilot.runs.contracts import project_name
from quantapilot.tokens import create_token
from tests.review.support import Review, active_content, page, repo_files, sign_in, trigger
from tests.support import Api, make_remote
from tests.webhook_e2e.conftest import StackFactory

BASE = "http://review.example.test:8443"


def page_links(text: str) -> list[str]:
    """The docs page addresses a page links to, unescaped."""
    return [htmllib.unescape(href) for href in re.findall(r'href="(/ui/docs/[^"]+)"', text)]


@pytest.mark.slow
async def test_review_docs_pages_within_a_links_run_and_for_signed_in_readers(
    make_stack: StackFactory, engine: Engine, tmp_path: Path
) -> None:
    stack = await make_stack(public_base_url=BASE)
    api = stack.api
    remote = make_remote(tmp_path, repo_files(tmp_path))
    run_id = await trigger(api, remote)
    project = project_name(remote)
    (requested,) = [e for e in await api.events(run_id) if e["type"] == "gate.requested"]
    review = Review(run_id, requested["data"]["review_url"])

    # Neither a link nor a session: the sign-in form.
    code, _, headers = await page(api.client, "/ui/docs")
    assert code in (302, 303) and headers["Location"].startswith("/ui/login")

    # By link: the run's project only, each address carrying the link's token.
    code, text, headers = await page(api.client, "/ui/docs", params={"t": review.token})
    assert code == 200, text
    assert headers["Cache-Control"] == "no-store" and "default-src 'none'" in headers["Content-Security-Policy"]
    assert f"Documentation of {project}" in text and 'id="pages"' in text
    links = page_links(text)
    assert links and all(f"t={review.token}" in link and link.startswith(f"/ui/docs/{project}/") for link in links)

    # One page, rendered: its versions, the way back to the list, and the hostile README as text only.
    pages = [await page(api.client, link) for link in dict.fromkeys(links)]
    assert all(code == 200 for code, _, _ in pages), [p[1] for p in pages if p[0] != 200]
    assert all("Version " in text and "All pages" in text for _, text, _ in pages)
    assert all(active_content(text) == [] for _, text, _ in pages)
    assert any("&lt;script&gt;alert(" in text for _, text, _ in pages)

    # Outside the link's run: refused; a tampered link: refused.
    code, text, _ = await page(api.client, "/ui/docs/another-project/index", params={"t": review.token})
    assert code == 403 and "only its run&#39;s documentation" in text
    code, text, _ = await page(api.client, "/ui/docs", params={"t": review.token[:-2] + "AA"})
    assert code == 403 and "does not work" in text

    # Signed in without docs:read: refused; with it: the workspace's pages, addresses without a token.
    reader_token, _ = create_token(engine, workspace="default", subject="gatekeeper", scopes=("runs:read",))
    reader = Api(client=api.client, token=reader_token)
    await sign_in(reader)
    code, text, _ = await page(api.client, "/ui/docs")
    assert code == 403 and "docs:read" in text
    await sign_in(api)
    code, text, _ = await page(api.client, "/ui/docs")
    assert code == 200, text
    signed_links = page_links(text)
    assert signed_links and not [link for link in signed_links if "t=" in link]
    code, text, _ = await page(api.client, signed_links[0])
    assert code == 200 and "Version " in text
