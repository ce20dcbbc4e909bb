"""The RabbitMQ sink against the real broker at 127.0.0.1:5672 (required in CI, skipped locally if absent)."""

from __future__ import annotations

import asyncio
import gc
import socket
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from quantapilot.settings import Settings
from quantapilot.webhooks.amqp import AmqpPublisher, AmqpPublishError
from tests.brokers import AMQP_URL, TcpProxy, bound_queue, require_broker

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def broker_url() -> str:
    return require_broker()


@pytest.fixture
async def exchange_name(broker_url: str) -> AsyncIterator[str]:
    """A unique exchange name; the exchange is deleted after the test."""
    name = f"qp_test_{uuid.uuid4().hex[:12]}"
    yield name
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


async def _collect(queue: AbstractQueue, count: int, *, timeout: float = 10) -> list[AbstractIncomingMessage]:
    received: list[AbstractIncomingMessage] = []
    async with asyncio.timeout(timeout), queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            received.append(message)
            if len(received) == count:
                break
    return received


@pytest.fixture
async def proxy(broker_url: str) -> AsyncIterator[TcpProxy]:
    relay = TcpProxy()
    await relay.start()
    yield relay
    await relay.stop()


async def test_amqp_every_message_arrives_persistent_with_id_and_routing_key(
    broker_url: str, exchange_name: str
) -> None:
    types = ["run.started", "gate.requested", "gate.decided", "run.completed", "stage.completed"]
    async with (
        AmqpPublisher(broker_url, exchange=exchange_name) as publisher,
        bound_queue(broker_url, exchange_name, "#") as queue,
    ):
        sent = {}
        for i in range(25):
            event_type = types[i % len(types)]
            message_id = f"ev_{i:03d}"
            body = f'{{"id":"{message_id}","type":"{event_type}"}}'.encode()
            await publisher.publish(event_type, body, message_id=message_id, headers={"run_id": "run_1"})
            sent[message_id] = (event_type, body)
        received = await _collect(queue, len(sent))
    assert sorted(m.message_id or "" for m in received) == sorted(sent)
    for message in received:
        event_type, body = sent[message.message_id or ""]
        assert message.routing_key == event_type
        assert message.type == event_type
        assert message.body == body
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert message.headers == {"run_id": "run_1"}
        assert message.exchange == exchange_name


async def test_amqp_topic_routing_by_event_type(broker_url: str, exchange_name: str) -> None:
    async with (
        AmqpPublisher(broker_url, exchange=exchange_name) as publisher,
        bound_queue(broker_url, exchange_name, "gate.*") as gates,
    ):
        for i, event_type in enumerate(["run.started", "gate.requested", "run.paused", "gate.decided"]):
            await publisher.publish(event_type, b"{}", message_id=f"ev_{i}")
        received = await _collect(gates, 2)
        assert [m.routing_key for m in received] == ["gate.requested", "gate.decided"]
        # Nothing else is waiting in the gate queue.
        assert await gates.get(fail=False) is None


async def test_amqp_unreachable_broker_raises_without_credentials() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    publisher = AmqpPublisher(f"amqp://guest:s3cret-pw@127.0.0.1:{port}/", connect_timeout_s=2)
    with pytest.raises(AmqpPublishError) as info:
        await publisher.publish("run.started", b"{}", message_id="ev_1")
    assert "s3cret-pw" not in str(info.value)
    assert "s3cret-pw" not in repr(publisher)
    assert not publisher.is_connected
    await publisher.close()


async def test_amqp_reconnects_after_connection_loss_and_broker_outage(
    broker_url: str, exchange_name: str, proxy: TcpProxy
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    publisher = AmqpPublisher(url, exchange=exchange_name, connect_timeout_s=3, confirm_timeout_s=3)
    try:
        async with bound_queue(broker_url, exchange_name, "#") as queue:
            await publisher.publish("run.started", b"1", message_id="ev_1")
            assert proxy.connections == 1

            # The broker goes away: publishing fails loudly (the caller retries) instead of losing the event.
            await proxy.stop()
            with pytest.raises(AmqpPublishError):
                await publisher.publish("run.paused", b"2", message_id="ev_2")
            assert not publisher.is_connected

            # The broker is back: the same publisher reconnects by itself.
            await proxy.start()
            await publisher.publish("run.paused", b"2", message_id="ev_2")
            assert proxy.connections == 2

            # A connection cut while idle heals too (the caller retries once if the cut is noticed late).
            proxy.cut()
            for _ in range(2):
                try:
                    await publisher.publish("run.completed", b"3", message_id="ev_3")
                    break
                except AmqpPublishError:
                    continue
            else:
                pytest.fail("publisher did not recover after a cut connection")
            assert proxy.connections == 3

            received = await _collect(queue, 3)
        assert [m.message_id for m in received] == ["ev_1", "ev_2", "ev_3"]
    finally:
        await publisher.close()


def test_amqp_from_settings_off_when_unset() -> None:
    assert AmqpPublisher.from_settings(Settings(amqp_url=None)) is None
    publisher = AmqpPublisher.from_settings(Settings(amqp_url=AMQP_URL, amqp_exchange="qp.events"))
    assert publisher is not None
    assert publisher.exchange_name == "qp.events"


async def test_amqp_failed_connects_leave_no_open_connection_behind(broker_url: str) -> None:
    # Broker down behind a balancer (accepted, then dropped mid-handshake) and nothing listening at all.
    closed = TcpProxy(open_=False)
    await closed.start()
    try:
        for url in (f"amqp://guest:guest@127.0.0.1:{closed.port}/", "amqp://guest:guest@127.0.0.1:9/"):
            publisher = AmqpPublisher(url, exchange="qp.never", connect_timeout_s=2)
            for _ in range(3):
                with pytest.raises(AmqpPublishError):
                    await publisher.connect()
    finally:
        await closed.stop()
    assert closed.refused == 3
    # Not one of those half-made connections is left open for the garbage collector, whose collection may run in
    # a thread with no event loop, where the connection's __del__ cannot schedule its close().
    left_open = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, aio_pika.Connection) and not obj.is_closed and obj.url.port in (closed.port, 9)
    ]
    assert left_open == []
