"""Signed review links: an HMAC-SHA256 capability to open (and maybe decide) one gate of one run.

A link is ``<base>/ui/runs/<run_id>/gates/<gate>?t=<token>``. The token is ``v1.<claims>.<tag>``: base64url JSON
claims (workspace, run, gate, optional approver subject, expiry) and the HMAC-SHA256 of them under the server's
review-link key (``QP_REVIEW_LINK_KEY``, or ``<state_dir>/review-link.key`` outside production). Nothing about a
link is stored: the same event always yields the same link (its expiry is the event's time plus the TTL, or the
gate's deadline when sooner), so the worker can put it into a webhook body at delivery time without it entering a
workflow history, the database or a log. The token travels in the query string, which no log line and no span of
ours records.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from quantapilot.events.envelope import EventEnvelope
from quantapilot.settings import Settings

KEY_FILE_NAME: Final = "review-link.key"
_VERSION: Final = "v1"
_LABEL: Final = b"quantapilot review link v1\x00"
#: The longest token accepted (a longer query value is refused before any decoding).
MAX_TOKEN_LENGTH: Final = 2048


class LinkKeyMissing(RuntimeError):
    """No review-link key in production: review links and the /ui/ pages are off."""


class LinkError(ValueError):
    """A token that is malformed, tampered with or expired; ``reason`` says which (shown to the person)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReviewLink:
    """What a valid link grants.

    Attributes:
        workspace: The run's workspace.
        run_id: The run.
        gate: The gate.
        approver: The subject the link decides as; None: the holder of the link (gates that name no approvers).
        expires_at: When the link stops working.
    """

    workspace: str
    run_id: str
    gate: str
    approver: str | None
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_file(settings: Settings) -> Path:
    """Where development keeps its generated review-link key."""
    return settings.state_dir / KEY_FILE_NAME


def _generate_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once keep the first one's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(48) + "\n")


def load_link_key(settings: Settings) -> bytes:
    """The review-link key: ``QP_REVIEW_LINK_KEY``, else the state directory's key file (generated if absent).

    Raises:
        LinkKeyMissing: In production without ``QP_REVIEW_LINK_KEY``.
    """
    if settings.review_link_key:
        return settings.review_link_key.encode()
    if settings.environment == "production":
        raise LinkKeyMissing("QP_REVIEW_LINK_KEY is not set: review links and the /ui/ pages are off")
    path = key_file(settings)
    if not path.exists():
        _generate_key_file(path)
    text = path.read_text().strip()
    if len(text) < 32:
        raise LinkKeyMissing(f"the review-link key file {path} holds no usable key")
    return text.encode()


# The keys with_review_url has loaded, by where they come from (settings' key, or the key file's path).
_DELIVERY_KEYS: dict[tuple[str | None, str, str], bytes] = {}


def _delivery_link_key(settings: Settings) -> bytes:
    """:func:`load_link_key`, loaded once per source: webhook deliveries call it for every ``gate.requested``.

    Reading the key file (a stat, an open and a read) was a fifth of the dispatcher's event-loop time per
    delivery. Kept for the process's life, like the key the API loads once at its start (``api/app.py``): a
    rotated key file takes effect after a restart for the API's checks and the links minted here alike. A missing
    key is not kept, so a key set up later is found.

    Raises:
        LinkKeyMissing: As :func:`load_link_key`.
    """
    source = (settings.review_link_key, settings.environment, str(key_file(settings)))
    key = _DELIVERY_KEYS.get(source)
    if key is None:
        key = _DELIVERY_KEYS.setdefault(source, load_link_key(settings))
    return key


def derived_key(key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose (session cookies, form tokens), so no two uses share the link key itself."""
    return hmac.new(key, b"quantapilot " + purpose.encode(), hashlib.sha256).digest()


def _tag(key: bytes, claims: str) -> str:
    return _b64(hmac.new(key, _LABEL + claims.encode("ascii"), hashlib.sha256).digest())


def mint_token(key: bytes, link: ReviewLink) -> str:
    """The token of a link."""
    claims: dict[str, Any] = {
        "w": link.workspace,
        "r": link.run_id,
        "g": link.gate,
        "e": int(link.expires_at.timestamp()),
    }
    if link.approver is not None:
        claims["s"] = link.approver
    encoded = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{_VERSION}.{encoded}.{_tag(key, encoded)}"


def verify_token(key: bytes, token: str, *, now: datetime | None = None) -> ReviewLink:
    """Check a token's signature and expiry and return what it grants.

    Raises:
        LinkError: Malformed, signed with another key or altered, or expired.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise LinkError("this review link is malformed")
    version, _, rest = token.partition(".")
    encoded, _, tag = rest.partition(".")
    if version != _VERSION or not encoded or not tag:
        raise LinkError("this review link is malformed")
    if not hmac.compare_digest(_tag(key, encoded), tag):
        raise LinkError("this review link is not valid: it was altered or signed with another key")
    try:
        claims = json.loads(_unb64(encoded))
        link = ReviewLink(
            workspace=str(claims["w"]),
            run_id=str(claims["r"]),
            gate=str(claims["g"]),
            approver=str(claims["s"]) if claims.get("s") is not None else None,
            expires_at=datetime.fromtimestamp(int(claims["e"]), tz=UTC),
        )
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError, OSError):
        raise LinkError("this review link is malformed") from None
    if (now or datetime.now(UTC)) >= link.expires_at:
        raise LinkError(f"this review link expired at {link.expires_at.isoformat()}")
    return link


def link_expiry(issued_at: datetime, settings: Settings, *, deadline: datetime | None = None) -> datetime:
    """When a link issued at ``issued_at`` expires: ``QP_REVIEW_LINK_TTL`` later, or the gate's deadline if sooner.

    Whole seconds (rounded down), as the token records it, so the ``expires_at`` a caller is told is the token's.
    """
    expiry = _utc(issued_at) + timedelta(seconds=settings.review_link_ttl)
    if deadline is not None:
        expiry = min(expiry, _utc(deadline))
    return expiry.replace(microsecond=0)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def event_deadline(data: dict[str, Any]) -> datetime | None:
    """The ``deadline`` of a ``gate.requested`` event's data (None when absent or unreadable)."""
    value = data.get("deadline")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def review_path(run_id: str, gate: str) -> str:
    """The review page's path (no token)."""
    return f"/ui/runs/{quote(run_id, safe='')}/gates/{quote(gate, safe='')}"


def review_url(settings: Settings, key: bytes, link: ReviewLink) -> str:
    """The absolute review URL of a link (``QP_PUBLIC_BASE_URL``, else the API's listen address)."""
    return f"{settings.base_url}{review_path(link.run_id, link.gate)}?t={mint_token(key, link)}"


def gate_requested_link(settings: Settings, key: bytes, event: Any) -> str | None:
    """The ``review_url`` of a ``gate.requested`` event (an envelope or record), or None for other events.

    Deterministic: the expiry is the event's time plus the TTL, or the gate's ``deadline`` in the event when sooner,
    so every delivery attempt sends the same URL.
    """
    data = getattr(event, "data", None) or {}
    if getattr(event, "type", None) != "gate.requested" or not data.get("gate") or not event.run_id:
        return None
    link = ReviewLink(
        workspace=event.workspace,
        run_id=event.run_id,
        gate=str(data["gate"]),
        approver=None,
        expires_at=link_expiry(event.created_at, settings, deadline=event_deadline(data)),
    )
    return review_url(settings, key, link)


def with_review_url(settings: Settings, envelope: EventEnvelope) -> EventEnvelope:
    """The envelope consumers receive: a ``gate.requested`` one gains ``data.review_url`` (computed, never stored).

    Without a review-link key (production without ``QP_REVIEW_LINK_KEY``) the envelope goes out as it is.
    """
    if envelope.type != "gate.requested":
        return envelope
    try:
        url = gate_requested_link(settings, _delivery_link_key(settings), envelope)
    except LinkKeyMissing:
        return envelope
    if url is None:
        return envelope
    return envelope.model_copy(update={"data": {**envelope.data, "review_url": url}})
