"""Optional RabbitMQ sink: events published to a durable topic exchange, persistent, with publisher confirms.

:meth:`AmqpPublisher.publish` returns only once the broker has confirmed the message (it is then on disk for
durable queues bound to the exchange); any failure (broker down, connection lost, negative acknowledgement,
confirmation timeout) raises :class:`AmqpPublishError`, so the calling activity retries and no event is lost.
A lost confirmation can mean the broker did take the message: delivery is at-least-once, and consumers
deduplicate by ``message_id`` (the event id).

After a failure the connection is dropped and the next call reconnects, so a broker restart heals without a
worker restart. Messages are published with ``mandatory=False``: an exchange without bound queues drops them,
which is a consumer configuration matter, not a reason to retry forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.connection import make_url

from quantapilot.settings import Settings

DEFAULT_EXCHANGE = "quantapilot.events"
APP_ID = "quantapilot"


class AmqpPublishError(Exception):
    """A message was not confirmed by the broker; retry it. The message never contains the broker URL."""


class AmqpPublisher:
    """Publishes events to a topic exchange (routing key = event type).

    Args:
        url: Broker URL (``amqp://user:pass@host:5672/vhost``); kept private, never logged or raised.
        exchange: Exchange name; declared durable, of type ``topic``.
        confirm_timeout_s: How long to wait for the broker's confirmation of one message.
        connect_timeout_s: How long to wait for a connection.
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        confirm_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self.exchange_name = exchange
        self.confirm_timeout_s = confirm_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AmqpPublisher | None:
        """Build a publisher from ``QP_AMQP_URL`` and ``QP_AMQP_EXCHANGE``; None when the sink is off."""
        if not settings.amqp_url:
            return None
        return cls(settings.amqp_url, exchange=settings.amqp_exchange, connect_timeout_s=10.0)

    def __repr__(self) -> str:
        return f"AmqpPublisher(exchange={self.exchange_name!r}, connected={self.is_connected})"

    @property
    def is_connected(self) -> bool:
        """Whether a usable connection and channel are open."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def connect(self) -> None:
        """Open the connection and a confirming channel, and declare the exchange (idempotent).

        Raises:
            AmqpPublishError: If the broker cannot be reached or refuses us.
        """
        async with self._lock:
            if self.is_connected and self._exchange is not None:
                return
            await self._drop()
            # Built here rather than by aio_pika.connect(), which drops a connection that failed half-way without
            # closing it: its __del__ then makes a close() coroutine that, collected outside the event loop's
            # thread, is never awaited (seen in CI after a broker outage).
            connection = aio_pika.Connection(make_url(self._url))
            try:
                await connection.connect(timeout=self.connect_timeout_s)
            except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
                with contextlib.suppress(Exception):
                    await connection.close()
                raise AmqpPublishError(f"cannot connect to the AMQP broker: {type(exc).__name__}") from None
            try:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
            except (OSError, TimeoutError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
                with contextlib.suppress(Exception):
                    await connection.close()
                raise AmqpPublishError(f"cannot declare the exchange: {type(exc).__name__}") from None
            self._connection, self._channel, self._exchange = connection, channel, exchange

    async def publish(
        self,
        event_type: str,
        body: bytes,
        *,
        message_id: str,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Publish one event and wait for the broker's confirmation.

        Args:
            event_type: Dotted event type; the routing key (bind with ``run.*``, ``#``, ...).
            body: Message body (the event envelope JSON).
            message_id: The event id; consumers deduplicate by it.
            headers: Extra AMQP headers (e.g. run id, workspace).
            content_type: Body media type.

        Raises:
            AmqpPublishError: If the message was not confirmed (nack, timeout, connection failure); retry.
        """
        await self.connect()
        exchange = self._exchange
        if exchange is None:  # pragma: no cover - connect either sets it or raises
            raise AmqpPublishError("not connected")
        message = aio_pika.Message(
            body,
            message_id=message_id,
            type=event_type,
            content_type=content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            timestamp=datetime.now(UTC),
            app_id=APP_ID,
            headers=dict(headers or {}),
        )
        try:
            await exchange.publish(message, routing_key=event_type, mandatory=False, timeout=self.confirm_timeout_s)
        except aiormq.exceptions.DeliveryError:
            # A nack is the broker's verdict on this message; the connection itself is fine.
            raise AmqpPublishError("the broker did not accept the message (nack)") from None
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
            # The connection may be half dead; drop it so the next call starts clean.
            async with self._lock:
                await self._drop()
            raise AmqpPublishError(f"publishing failed: {type(exc).__name__}") from None

    async def close(self) -> None:
        """Close the connection (the publisher can connect again later)."""
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._exchange = None
        if connection is not None and not connection.is_closed:
            # Bounded: closing a connection whose broker vanished must not hang the caller.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await connection.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
