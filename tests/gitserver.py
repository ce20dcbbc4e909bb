"""Real git servers on loopback for tests: smart HTTP (``git http-backend`` behind aiohttp), a redirecting HTTP
server, and a TCP listener that records who connected (an ssh or git daemon stand-in that never answers).

Every server records the requests (or connections) it saw, so a test can assert that something was never reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.support import GIT_ENV


@dataclass
class Seen:
    """What reached one server: ``METHOD path Host`` per HTTP request, or the first bytes per TCP connection."""

    requests: list[str] = field(default_factory=list)
    greetings: list[bytes] = field(default_factory=list)


@dataclass
class Server:
    """A server listening on 127.0.0.1."""

    port: int
    seen: Seen


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def _recorder(seen: Seen) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def _record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.requests.append(f"{request.method} {request.path_qs} {request.headers.get('Host', '')}")
        return await handler(request)

    return _record


def _parse_cgi(output: bytes) -> web.Response:
    head, sep, body = output.partition(b"\r\n\r\n")
    if not sep:
        head, _, body = output.partition(b"\n\n")
    status = 200
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers[name.strip()] = value.strip()
    return web.Response(status=status, headers=headers, body=body)


@contextlib.asynccontextmanager
async def smart_http(root: Path) -> AsyncIterator[Server]:
    """Serve the bare repositories under ``root`` over git's smart HTTP protocol, pushes included.

    ``git http-backend`` is the CGI program git ships for this; the handler passes it the CGI variables and the
    (already decompressed) body, and returns its answer.
    """
    seen = Seen()

    async def _backend(request: web.Request) -> web.Response:
        body = await request.read()
        env = {
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(root),
            "GIT_HTTP_EXPORT_ALL": "1",
            # http-backend accepts pushes from an authenticated user only.
            "REMOTE_USER": "tester",
            "REMOTE_ADDR": "127.0.0.1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
        }
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate(body)
        return _parse_cgi(out)

    app = web.Application(middlewares=[_recorder(seen)], client_max_size=1024**3)
    app.router.add_route("*", "/{path:.*}", _backend)
    runner, port = await _start(app)
    try:
        yield Server(port=port, seen=seen)
    finally:
        await runner.cleanup()


BANNER = "qp-internal-banner-7f3a"


@contextlib.asynccontextmanager
async def redirecting(location: str) -> AsyncIterator[Server]:
    """Answer every request with ``302 Found`` to ``location``, a telltale ``Server`` header and body."""
    seen = Seen()

    async def _redirect(request: web.Request) -> web.Response:
        return web.Response(
            status=302, headers={"Location": location, "Server": f"{BANNER}-server/1.0"}, text=f"{BANNER} moved"
        )

    app = web.Application(middlewares=[_recorder(seen)])
    app.router.add_route("*", "/{path:.*}", _redirect)
    runner, port = await _start(app)
    try:
        yield Server(port=port, seen=seen)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def recording(status: int = 200, text: str = "") -> AsyncIterator[Server]:
    """Answer every request with ``status`` and record it (the place a redirect must not reach)."""
    seen = Seen()

    async def _answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text)

    app = web.Application(middlewares=[_recorder(seen)])
    app.router.add_route("*", "/{path:.*}", _answer)
    runner, port = await _start(app)
    try:
        yield Server(port=port, seen=seen)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def tcp_listener() -> AsyncIterator[Server]:
    """Accept TCP connections on loopback, keep the first line each client sends, and hang up."""
    seen = Seen()

    async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            seen.greetings.append(await asyncio.wait_for(reader.readline(), timeout=10))
        writer.close()

    server = await asyncio.start_server(_greet, "127.0.0.1", 0)
    try:
        yield Server(port=int(server.sockets[0].getsockname()[1]), seen=seen)
    finally:
        server.close()
        await server.wait_closed()


def _free_port() -> int:
    # git daemon takes a port number, not an open socket: ask the kernel for one that is free now.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def git_daemon(root: Path) -> AsyncIterator[Server]:
    """Serve the bare repositories under ``root`` over ``git://`` (``git daemon``, pushes enabled)."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        "git",
        "daemon",
        "--reuseaddr",
        "--export-all",
        "--enable=receive-pack",
        "--listen=127.0.0.1",
        f"--port={port}",
        f"--base-path={root}",
        str(root),
        env=GIT_ENV,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # bounded by progress: the daemon listens once it is up
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        else:
            raise RuntimeError("git daemon did not start")
        yield Server(port=port, seen=Seen())
    finally:
        proc.terminate()
        await proc.wait()
