"""The RabbitMQ sink end to end through a broker outage: a run's events wait in their AmqpPublish workflows
while the broker is unreachable, the run itself does not wait, and every event arrives exactly once after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from yarl import URL

from activities.webhook_models import amqp_workflow_id
from tests.support import eventually, make_remote
from tests.webhook_e2e.conftest import StackFactory
from tests.webhooks.test_amqp import AMQP_URL, _broker_reachable

pytestmark = pytest.mark.rabbitmq


class GatedProxy:
    """A loopback TCP relay to the broker that, while closed, accepts connections and drops them at once.

    Closed, it looks like a broker that is down behind a load balancer: every connection attempt fails fast
    (and is counted, so the test sees the retries arrive); opened, it forwards to the real broker.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.open = False
        self.refused = 0
        self.forwarded = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        """Listen on a free loopback port (closed: nothing is forwarded yet)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
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
        self.forwarded += 1
        upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        self._writers += [client_w, upstream_w]
        await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))

    async def stop(self) -> None:
        """Stop listening and cut the relayed connections."""
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            self._writers.clear()
            await self._server.wait_closed()
            self._server = None


@pytest.fixture
async def broker_proxy() -> AsyncIterator[GatedProxy]:
    """A closed proxy in front of the machine's broker (required in CI)."""
    if not _broker_reachable():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ at 127.0.0.1:5672 is required in CI")
        pytest.skip("RabbitMQ at 127.0.0.1:5672 not reachable")
    broker = URL(AMQP_URL)
    proxy = GatedProxy(broker.host or "127.0.0.1", broker.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def bound_queue() -> AsyncIterator[tuple[str, AbstractQueue]]:
    """A unique durable topic exchange on the real broker with a queue bound to ``#`` (deleted afterwards)."""
    name = f"qp_test_{uuid.uuid4().hex[:12]}"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        # Exclusive: gone with the connection; bound before the run, since RabbitMQ drops unrouted messages.
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="#")
        yield name, queue
        await channel.exchange_delete(name)


@dataclass(frozen=True)
class PublishState:
    """Where one event's AmqpPublish workflow stands."""

    status: WorkflowExecutionStatus | None
    attempt: int = 0
    failure_type: str | None = None


async def publish_state(client: Client, event_id: str) -> PublishState:
    """The event's AmqpPublish workflow: status, current activity attempt and the last attempt's error type."""
    try:
        desc = await client.get_workflow_handle(amqp_workflow_id(event_id)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # not started yet
            return PublishState(None)
        raise
    pending = list(desc.raw_description.pending_activities)
    if not pending:
        return PublishState(desc.status)
    activity = pending[0]
    failure = activity.last_failure.application_failure_info.type if activity.HasField("last_failure") else None
    return PublishState(desc.status, activity.attempt, failure or None)


async def drain(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    """Every message waiting in the queue (acknowledged), without waiting for more."""
    messages: list[AbstractIncomingMessage] = []
    while (message := await queue.get(fail=False, timeout=5)) is not None:
        await message.ack()
        messages.append(message)
    return messages


async def test_webhooks_amqp_broker_outage_delays_but_never_loses_a_runs_events(
    broker_proxy: GatedProxy,
    bound_queue: tuple[str, AbstractQueue],
    make_stack: StackFactory,
    client: Client,
    tmp_path: Path,
) -> None:
    exchange, queue = bound_queue
    worker_url = str(URL(AMQP_URL).with_host("127.0.0.1").with_port(broker_proxy.port))
    stack = await make_stack(amqp_url=worker_url, amqp_exchange=exchange)
    api = stack.api

    # The broker is unreachable for the whole run: the run goes through its gate and completes regardless.
    code, body = await api.post(
        "/v1/runs", {"repo_url": make_remote(tmp_path, {"README.md": "# Demo\n"}), "branch": "main"}
    )
    assert code == 202, body
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor", timeout=20)
    code, body = await api.decide(run_id, "anchor", True)
    assert code == 200, body
    await api.wait_state(run_id, "completed", timeout=20)
    events = await api.events(run_id)
    assert [e["type"] for e in events][-1] == "run.completed"
    assert len(events) == 5 and len({e["id"] for e in events}) == 5
    assert broker_proxy.forwarded == 0

    # Each event waits in its own AmqpPublish workflow, retrying: at least three attempts failed to connect.
    async def _states() -> list[PublishState]:
        return [await publish_state(client, e["id"]) for e in events]

    states = await eventually(
        _states,
        lambda states: all(s.status == WorkflowExecutionStatus.RUNNING and s.attempt >= 4 for s in states),
        timeout=20,
        interval=0.2,
        what="every publication retrying",
    )
    assert {s.failure_type for s in states} == {"AmqpPublishError"}
    assert broker_proxy.refused >= 3 * len(events)
    assert broker_proxy.forwarded == 0
    assert await drain(queue) == []

    # The broker is back: the retries publish every event, and a publication ends only once it is confirmed.
    broker_proxy.open = True
    handles = [client.get_workflow_handle(amqp_workflow_id(e["id"])) for e in events]
    async with asyncio.timeout(30):
        await asyncio.gather(*(h.result() for h in handles))
    # One connection for all of them (the worker's publisher is shared and reconnects once).
    assert broker_proxy.forwarded == 1

    # Every publication is confirmed, so the queue holds all there is: each event exactly once.
    received = await drain(queue)
    by_id = {m.message_id: m for m in received}
    assert sorted(m.message_id or "" for m in received) == sorted(e["id"] for e in events)
    for event in events:
        message = by_id[event["id"]]
        assert message.routing_key == event["type"] and message.type == event["type"]
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.exchange == exchange
        assert (message.headers or {}).get("run_id") == run_id
        assert (message.headers or {}).get("seq") == str(event["seq"])
