"""Helpers of the review page tests: a repository with hostile docs, the stack, links and form fields."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp.test_utils import TestClient

from quantapilot.review.links import ReviewLink, load_link_key, mint_token
from quantapilot.settings import Settings
from tests.support import Api, eventually
from tests.webhook_e2e.support import Receiver

#: A README that tries every way into the page: raw HTML, an event handler, a script URL, a style.
HOSTILE_README = (
    "# Hostile project\n\n"
    "Intro with <script>alert('readme')</script> and <img src=x onerror=alert('img')>.\n\n"
    "[click me](javascript:alert('link')) and <a href=\"javascript:alert('a')\">raw</a>\n\n"
    "<style>body{display:none}</style>\n\n"
    '<iframe src="https://example.invalid/"></iframe>\n'
)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "iframe", "style", "object", "embed", "base", "meta") and not (
            tag == "meta" and {"charset", "name"} & {name for name, _ in attrs}
        ):
            self.bad.append(tag)
        for name, value in attrs:
            if name.startswith("on") or (value or "").strip().lower().startswith(("javascript:", "data:text")):
                self.bad.append(f"{tag} {name}={value}")


def active_content(html: str) -> list[str]:
    """Tags and attributes of a page that could run code or restyle it (empty for a safe page)."""
    parser = _Tags()
    parser.feed(html)
    return parser.bad


@dataclass
class Review:
    """A run waiting at a gate, and its review link from the webhook delivery."""

    run_id: str
    review_url: str

    @property
    def path_and_query(self) -> str:
        """The link as a path with its query (for the test client)."""
        parts = urlsplit(self.review_url)
        return f"{parts.path}?{parts.query}"

    @property
    def token(self) -> str:
        """The link's token."""
        return parse_qs(urlsplit(self.review_url).query)["t"][0]


async def gate_requested_url(receiver: Receiver, run_id: str, gate: str = "anchor") -> str:
    """The ``review_url`` of the run's ``gate.requested`` webhook delivery (waits for it)."""

    def find() -> list[str]:
        return [
            r.event["data"]["review_url"]
            for r in receiver.delivered()
            if r.event["type"] == "gate.requested" and r.event["run_id"] == run_id and r.event["data"]["gate"] == gate
        ]

    async def probe() -> list[str]:
        return find()

    urls = await eventually(probe, bool, timeout=60, what="gate.requested delivery")
    return urls[0]


def form_fields(html: str) -> dict[str, str]:
    """The hidden inputs of a page's form."""
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))


def link_token(settings: Settings, link: ReviewLink) -> str:
    """A token minted with the stack's key (for expired or foreign links)."""
    return mint_token(load_link_key(settings), link)


async def page(client: TestClient[Any, Any], path: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    """GET a page without following redirects: status, text, headers."""
    resp = await client.get(path, allow_redirects=False, **kwargs)
    return resp.status, await resp.text(), dict(resp.headers)


async def post_form(client: TestClient[Any, Any], path: str, data: dict[str, str]) -> tuple[int, str]:
    """POST a form without following redirects."""
    resp = await client.post(path, data=data, allow_redirects=False)
    return resp.status, await resp.text()


async def sign_in(api: Api) -> None:
    """Sign in to /ui/ with the API's token (the session cookie stays in the test client's jar)."""
    code, text, _ = await page(api.client, "/ui/login")
    assert code == 200, text
    code, text = await post_form(api.client, "/ui/login", {**form_fields(text), "token": api.token})
    assert code in (302, 303), text


async def trigger(api: Api, url: str) -> str:
    """Trigger a run of ``url`` and wait for its anchor gate and the ``gate.requested`` event announcing it."""
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main", "correlation_id": "review-1"})
    assert code == 202, body
    await api.wait_gate(body["run_id"], "anchor")
    # The status says "at the gate" a moment before its event is recorded (an activity): tests read the event.
    await api.wait_event(body["run_id"], "gate.requested")
    return str(body["run_id"])


def repo_files(tmp: Path, *, readme: str = HOSTILE_README, yml: str | None = None) -> dict[str, str]:
    """Files of the test repository."""
    files = {"README.md": readme, "src/app.py": '"""App <b>module</b>."""\n\ndef main() -> None:\n    """Run."""\n'}
    if yml is not None:
        files["quantapilot.yml"] = yml
    return files
