"""Typed application and request keys for the resources the API opens at start-up and the caller of a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy.engine import Engine
from temporalio.client import Client

from quantapilot.secretbox import KeyRing
from quantapilot.settings import Settings
from quantapilot.tokens import Principal

if TYPE_CHECKING:
    # Type only: api.auth derives its public paths from the endpoint registry, whose handlers import these keys.
    from api.auth import TokenCache

SETTINGS = web.AppKey("settings", Settings)
TEMPORAL = web.AppKey("temporal", Client)
ENGINE = web.AppKey("engine", Engine)
TOKENS: web.AppKey[TokenCache] = web.AppKey("tokens")
KEYRING = web.AppKey("keyring", KeyRing)
#: The review-link key (quantapilot/review/links.py); empty when review links are off (production without one).
REVIEW_KEY = web.AppKey("review_key", bytes)
#: The authenticated caller, set by the auth middleware on every request to a non-public path.
PRINCIPAL = web.RequestKey("principal", Principal)
#: The /ui/ session cookie of a request whose sign-in verified (its pages' sign-out form is bound to it).
UI_SESSION = web.RequestKey("ui_session_cookie", str)
