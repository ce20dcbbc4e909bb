"""Typed application keys for the resources the API opens at start-up."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.auth import TokenCache
from quantapilot.secretbox import KeyRing
from quantapilot.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
TEMPORAL = web.AppKey("temporal", Client)
ENGINE = web.AppKey("engine", Engine)
TOKENS = web.AppKey("tokens", TokenCache)
KEYRING = web.AppKey("keyring", KeyRing)
