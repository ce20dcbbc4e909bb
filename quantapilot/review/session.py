"""The /ui/ sign-in cookie and the form tokens that make the review forms CSRF-safe.

The session cookie holds the API token the person signed in with, encrypted (AES-GCM under a key derived from the
review-link key) together with its expiry: the token is never in the cookie in clear, and each request looks the
token up again, so revoking it ends the session. Form tokens are HMACs of what the form acts for (the session
cookie, or the review link) under another derived key: a page of another site can neither read nor compute them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from quantapilot.review.links import derived_key

SESSION_COOKIE: Final = "qp_session"
LOGIN_COOKIE: Final = "qp_login"
_AAD: Final = b"quantapilot ui session v1"
_NONCE_BYTES: Final = 12


def seal_session(key: bytes, token: str, *, ttl_s: float, now: float | None = None) -> str:
    """The cookie value of a sign-in with ``token``, valid for ``ttl_s`` seconds."""
    nonce = os.urandom(_NONCE_BYTES)
    claims = json.dumps({"t": token, "e": int((now or time.time()) + ttl_s)}).encode()
    sealed = AESGCM(derived_key(key, "ui session")).encrypt(nonce, claims, _AAD)
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")


def open_session(key: bytes, cookie: str, *, now: float | None = None) -> str | None:
    """The API token of a valid, unexpired session cookie, or None."""
    if not cookie or len(cookie) > 1024:
        return None
    try:
        raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
        claims = json.loads(
            AESGCM(derived_key(key, "ui session")).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _AAD)
        )
        token, expires = str(claims["t"]), int(claims["e"])
    except (binascii.Error, ValueError, InvalidTag, KeyError, TypeError):
        return None
    return token if (now or time.time()) < expires else None


def form_token(key: bytes, bound_to: str) -> str:
    """The CSRF token of forms acting for ``bound_to`` (``session:<cookie>``, ``link:<token>``, ``login:<nonce>``)."""
    return hmac.new(derived_key(key, "ui form"), bound_to.encode(), hashlib.sha256).hexdigest()


def form_token_ok(key: bytes, bound_to: str, presented: str | None) -> bool:
    """Tell whether a submitted form token is the one for ``bound_to``."""
    return bool(presented) and hmac.compare_digest(form_token(key, bound_to), presented or "")
