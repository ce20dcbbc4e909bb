"""The RabbitMQ sink end to end through a broker outage: a run's events wait in their AmqpPublish workflows
while the broker is unreachable, the run itself does not wait, and every event arrives exactly once after."""

from __future__ import annotations

import asyncio
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

from quantapilot.webhooks.contracts import amqp_workflow_id
from tests.brokers import AMQP_URL, TcpProxy, bound_queue, require_broker
from tests.support import eventually, make_remote
from tests.webhook_e2e.conftest import StackFactory

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def broker_proxy() -> AsyncIterator[TcpProxy]:
    """A closed relay in front of the machine's broker (required in CI)."""
    require_broker()
    proxy = TcpProxy(open_=False)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def exchange_queue() -> AsyncIterator[tuple[str, AbstractQueue]]:
    """A unique durable topic exchange on the real broker with a queue bound to ``#`` (deleted afterwards)."""
    name = f"qp_test_{uuid.uuid4().hex[:12]}"
    # Bound before the run, since RabbitMQ drops unrouted messages.
    async with bound_queue(AMQP_URL, name, "#") as queue:
        yield name, queue
        await queue.channel.exchange_delete(name)


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
    broker_proxy: TcpProxy,
    exchange_queue: tuple[str, AbstractQueue],
    make_stack: StackFactory,
    client: Client,
    tmp_path: Path,
) -> None:
    exchange, queue = exchange_queue
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
    assert broker_proxy.connections == 0

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
    assert broker_proxy.connections == 0
    assert await drain(queue) == []

    # The broker is back: the retries publish every event, and a publication ends only once it is confirmed.
    broker_proxy.open = True
    handles = [client.get_workflow_handle(amqp_workflow_id(e["id"])) for e in events]
    async with asyncio.timeout(30):
        await asyncio.gather(*(h.result() for h in handles))
    # One connection for all of them (the worker's publisher is shared and reconnects once).
    assert broker_proxy.connections == 1

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
