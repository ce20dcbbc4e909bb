"""The RabbitMQ sink end to end: a consumer bound to the exchange receives every event of a real run."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tests.brokers import AMQP_URL, bound_queue, require_broker
from tests.support import make_remote
from tests.webhook_e2e.conftest import StackFactory

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def exchange() -> AsyncIterator[str]:
    """A unique exchange on the machine's broker (required in CI), deleted afterwards."""
    require_broker()
    name = f"qp_test_{uuid.uuid4().hex[:12]}"
    yield name
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


async def test_webhooks_amqp_consumer_receives_every_event_of_a_run(
    make_stack: StackFactory, exchange: str, tmp_path: Path
) -> None:
    async with bound_queue(AMQP_URL, exchange, "#") as queue:
        stack = await make_stack(amqp_url=AMQP_URL, amqp_exchange=exchange)
        api = stack.api
        url = make_remote(tmp_path, {"README.md": "# Demo\n"})
        code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
        assert code == 202, body
        run_id = body["run_id"]
        await api.wait_gate(run_id, "anchor")
        await api.decide(run_id, "anchor", True)
        await api.wait_state(run_id, "completed")
        events = await api.events(run_id)
        assert len(events) == 5

        received: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}
        async with asyncio.timeout(30), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                received[message.message_id or ""] = message
                if len(received) >= len(events):
                    break

    assert set(received) == {e["id"] for e in events}
    for event in events:
        message = received[event["id"]]
        assert message.routing_key == event["type"] and message.type == event["type"]
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        body = json.loads(message.body)
        assert (body["id"], body["type"], body["seq"], body["run_id"]) == (
            event["id"],
            event["type"],
            event["seq"],
            run_id,
        )
        assert body["data"] == event["data"]
        assert (message.headers or {}).get("run_id") == run_id
