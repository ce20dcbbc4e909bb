"""The machine's RabbitMQ broker for tests: its address, the CI rule, and a loopback relay to break its network."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractQueue

BROKER_HOST, BROKER_PORT = "127.0.0.1", 5672
AMQP_URL = os.environ.get("QP_TEST_AMQP_URL", f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/")


def broker_reachable() -> bool:
    """Whether something listens at the broker's address."""
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=2):
            return True
    except OSError:
        return False


def require_broker() -> str:
    """The broker's URL; a failure in CI (the machine provides the broker there), a skip elsewhere."""
    if not broker_reachable():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ at 127.0.0.1:5672 is required in CI")
        pytest.skip("RabbitMQ at 127.0.0.1:5672 not reachable")
    return AMQP_URL


class TcpProxy:
    """A loopback TCP relay to the broker whose network the test controls (real connection failures).

    ``cut()`` aborts the relayed connections; ``stop()`` stops listening (``start()`` again reuses the port); while
    ``open`` is false it accepts each connection and drops it at once, like a broker that is down behind a load
    balancer, counting it in ``refused``. ``connections`` counts the connections it relayed.
    """

    def __init__(self, *, open_: bool = True) -> None:
        self.port = 0
        self.open = open_
        self.connections = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        """Listen on 127.0.0.1 (a free port the first time, the same port after a stop)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if not self.open:
            self.refused += 1
            client_w.transport.abort()
            return
        self.connections += 1
        upstream_r, upstream_w = await asyncio.open_connection(BROKER_HOST, BROKER_PORT)
        self._writers += [client_w, upstream_w]
        await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))

    def cut(self) -> None:
        """Abort every relayed connection."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        """Stop listening and cut the relayed connections."""
        if self._server is not None:
            self._server.close()
            self.cut()
            await self._server.wait_closed()
            self._server = None


@contextlib.asynccontextmanager
async def bound_queue(url: str, exchange: str, *keys: str) -> AsyncIterator[AbstractQueue]:
    """Declare the durable topic exchange and an exclusive queue bound to ``keys`` on it, for as long as the block."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        # Exclusive: gone with the connection; not auto_delete, which would drop it when a consumer stops.
        queue = await channel.declare_queue(exclusive=True)
        for key in keys:
            await queue.bind(ex, routing_key=key)
        yield queue
