"""What every ``qp`` command that talks to the API shares: the settings, the token and a small HTTP client."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import click
from rich.console import Console

from quantapilot.settings import Settings

console = Console()
err_console = Console(stderr=True)
TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret


def load_settings() -> Settings:
    """The settings from the environment (``QP_*``), read when a command runs, not at import."""
    return Settings()


def api_token(explicit: str | None, settings: Settings) -> str:
    """The API token: --token, then QP_TOKEN, then the one `qp up` wrote into the state directory.

    Args:
        explicit: The value of ``--token``, if given.
        settings: Settings that name the state directory.

    Returns:
        The token.

    Raises:
        click.UsageError: No token anywhere.
    """
    if explicit:
        return explicit
    if env := os.environ.get("QP_TOKEN"):
        return env
    path = settings.state_dir / TOKEN_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    raise click.UsageError("no API token: pass --token, set QP_TOKEN, or start the stack with `qp up`")


class ApiClient:
    """A small synchronous wrapper over the HTTP API for the CLI."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """Send a request; exit with the envelope's message on an error status."""
        return asyncio.run(self._call(method, path, body, headers or {}))

    async def _call(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        all_headers = {"Authorization": f"Bearer {self.token}", "X-QP-Client": "cli", **headers}
        timeout = aiohttp.ClientTimeout(total=60)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, self.base_url + path, json=body, headers=all_headers) as resp,
            ):
                payload = await resp.json(content_type=None)
                if resp.status >= 400:
                    error = (payload or {}).get("error", {})
                    raise click.ClickException(
                        f"{resp.status} {error.get('code', 'ERROR')}: {error.get('message', '')}"
                        f" (traceId {error.get('traceId', '-')})"
                    )
                return payload
        except aiohttp.ClientConnectionError as exc:
            raise click.ClickException(f"cannot reach the API at {self.base_url}: {exc}") from None


def api_client(ctx: click.Context) -> ApiClient:
    """The client for this invocation: ``--api-url``/``--token`` of the ``qp`` group, else the settings."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    settings = load_settings()
    return ApiClient(obj.get("api_url") or settings.base_url, api_token(obj.get("token"), settings))
