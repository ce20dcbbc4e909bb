"""What every /ui/ page shares: templates, security headers, the error pages, and who is asking.

A page request is authenticated by one of two things, never by a bearer header: a signed review link (``?t=``
on a GET, the form's ``t`` field on a POST; quantapilot/review/links.py), or the sign-in cookie (quantapilot/
review/session.py), whose token is looked up again on every request (a revoked token ends the session).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import quote

import jinja2
from aiohttp import web

from api.keys import REVIEW_KEY, SETTINGS, TOKENS, UI_SESSION
from quantapilot.review.links import LinkError, ReviewLink, verify_token
from quantapilot.review.session import SESSION_COOKIE, form_token, open_session
from quantapilot.tokens import Principal

TEMPLATES: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("quantapilot.review", "templates"),
    # Every value is escaped unless a template says |safe (only Markdown rendered with html=False).
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
#: No script at all, styles only from our own stylesheet, forms only to ourselves, never framed.
CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who a page request acts for.

    Attributes:
        workspace: The workspace the request may see.
        principal: The signed-in person (None for a link).
        link: The verified review link (None for a signed-in person).
        token: The link's token (to carry in forms and docs links).
        bound: What the page's form tokens are bound to.
    """

    workspace: str
    principal: Principal | None = None
    link: ReviewLink | None = None
    token: str | None = None
    bound: str = ""


def review_key(request: web.Request) -> bytes:
    """The review-link key (empty when review pages are off)."""
    return request.app[REVIEW_KEY]


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """An HTML page with the security headers (CSP, no-store, no referrer)."""
    cookie = request.get(UI_SESSION)
    key = review_key(request)
    context.setdefault("signed_in", cookie is not None)
    context.setdefault("logout_csrf", form_token(key, f"session:{cookie}") if cookie and key else "")
    body = TEMPLATES.get_template(template).render(**context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


def message(
    request: web.Request, status: int, heading: str, text: str, *, kind: str = "error", back: str | None = None
) -> web.Response:
    """A page that says one thing (a refused link, a recorded decision, a stale form)."""
    return render(request, "message.html", status=status, heading=heading, message=text, kind=kind, back=back)


def redirect(location: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """303 See Other to a path of ours."""
    return web.Response(status=303, headers={**PAGE_HEADERS, "Location": location, **(headers or {})})


def to_login(request: web.Request) -> web.Response:
    """Send an anonymous visitor to the sign-in form (back to this path, never its query: it may hold a link)."""
    return redirect(f"/ui/login?next={quote(request.path, safe='/')}")


def off(request: web.Request) -> web.Response:
    """The page of a deployment without a review-link key."""
    return message(request, 503, "Review pages are off", "This deployment has no QP_REVIEW_LINK_KEY configured.")


async def signed_in(request: web.Request) -> Principal | None:
    """The principal of a valid sign-in cookie, or None (remembers the cookie for the page's sign-out form)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    key = review_key(request)
    if not cookie or not key:
        return None
    token = open_session(key, cookie)
    if token is None:
        return None
    principal = await request.app[TOKENS].principal(token)
    if principal is not None:
        request[UI_SESSION] = cookie
    return principal


async def viewer(request: web.Request, token: str | None) -> Viewer | web.Response:
    """Who asks: a link's holder when ``token`` is given (it must verify), else the signed-in person.

    Returns:
        The viewer, or the page to answer instead (a refused link, or the sign-in form).
    """
    key = review_key(request)
    if not key:
        return off(request)
    principal = await signed_in(request)
    if token:
        try:
            link = verify_token(key, token)
        except LinkError as exc:
            return message(request, 403, "This review link does not work", exc.reason + ". Nothing was changed.")
        return Viewer(workspace=link.workspace, link=link, token=token, bound=f"link:{token}")
    if principal is None:
        return to_login(request)
    cookie = request[UI_SESSION]
    return Viewer(workspace=principal.workspace, principal=principal, bound=f"session:{cookie}")


def docs_href(slug: str, version: str | None, token: str | None) -> str:
    """The /ui/docs/ address of a page (carrying the link's token when the viewer came by link)."""
    query = [f"version={quote(version, safe='')}"] if version else []
    if token:
        query.append(f"t={quote(token, safe='')}")
    return f"/ui/docs/{quote(slug, safe='/')}" + (f"?{'&'.join(query)}" if query else "")


async def style(request: web.Request) -> web.Response:
    """The pages' stylesheet (the only style source the CSP admits)."""
    return web.Response(
        body=resources.files("quantapilot.review").joinpath("templates/style.css").read_bytes(),
        content_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def secure_cookies(request: web.Request) -> bool:
    """Whether cookies get the Secure flag: when the public base URL is https."""
    return request.app[SETTINGS].base_url.startswith("https://")
