"""Headless Debian Chromium driven over the DevTools protocol with aiohttp's websocket client (no Playwright)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

# The machine notes' flags: no sandbox as root, no GPU, and nothing that reaches out beyond loopback.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def chromium_path() -> str:
    """Path of Debian's chromium; skip when it is absent, except in CI where the install step must provide it."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make install` runs scripts/install-system-deps.sh for it")
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it)")
    return path


class Page:
    """One page target: send commands, evaluate JavaScript, take screenshots."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30.0) -> Any:
        """Send a command and return its result (events received meanwhile are dropped)."""
        msg_id = next(self._ids)
        await self._ws.send_json({"id": msg_id, "method": method, "params": params or {}})
        async with asyncio.timeout(timeout):
            while True:
                reply = await self._ws.receive_json()
                if reply.get("id") == msg_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    async def text(self) -> str:
        """The page's visible text."""
        return str(await self.evaluate("document.body ? document.body.innerText : ''") or "")

    async def frames_text(self) -> str:
        """Text of every node, iframes included (the Web UI renders markdown inside a sandboxed iframe)."""
        root = await self.send("DOM.getDocument", {"depth": -1, "pierce": True})
        parts: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            if node.get("nodeType") == 3 and node.get("nodeValue", "").strip():
                parts.append(node["nodeValue"].strip())
            for child in [*node.get("children", []), *([node["contentDocument"]] if "contentDocument" in node else [])]:
                walk(child)

        walk(root["root"])
        return " ".join(parts)

    async def screenshot(self, path: Path) -> Path:
        """Write a PNG of the viewport to ``path``."""
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@contextlib.asynccontextmanager
async def open_page(profile: Path, *, startup_timeout: float = 30.0) -> AsyncIterator[Page]:
    """Start headless chromium with a fresh profile and attach to its first page."""
    profile.mkdir(parents=True, exist_ok=True)
    log = (profile.parent / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=log,
        stderr=log,
    )
    try:
        # Chromium writes the port it chose into the profile once DevTools listens.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + startup_timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (see {profile.parent / 'chromium.log'})")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            target = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024) as ws:
                yield Page(ws)
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        log.close()
