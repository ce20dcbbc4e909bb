"""The RabbitMQ sink carries the review link: a ``gate.requested`` message's data.review_url opens the review page."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractQueue

from tests.brokers import AMQP_URL, bound_queue, require_broker
from tests.review.support import Review, page, repo_files
from tests.support import make_remote
from tests.webhook_e2e.conftest import StackFactory

pytestmark = pytest.mark.rabbitmq

BASE = "https://qp.example.test"


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


async def run_messages(queue: AbstractQueue, run_id: str, *, until: str) -> list[dict[str, Any]]:
    """The run's message bodies from the queue, up to and including the first of type ``until``."""
    bodies: list[dict[str, Any]] = []
    async with asyncio.timeout(30), queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            event = json.loads(message.body)
            if event["run_id"] == run_id:
                bodies.append(event)
                if event["type"] == until:
                    break
    return bodies


async def test_amqp_gate_requested_message_carries_a_review_url_that_opens_the_page(
    make_stack: StackFactory, exchange: str, tmp_path: Path
) -> None:
    async with bound_queue(AMQP_URL, exchange, "#") as queue:
        stack = await make_stack(amqp_url=AMQP_URL, amqp_exchange=exchange, public_base_url=BASE)
        api = stack.api
        code, body = await api.post(
            "/v1/runs", {"repo_url": make_remote(tmp_path, repo_files(tmp_path)), "branch": "main"}
        )
        assert code == 202, body
        run_id = body["run_id"]
        await api.wait_gate(run_id, "anchor")

        bodies = await run_messages(queue, run_id, until="gate.requested")
        requested = [b for b in bodies if b["type"] == "gate.requested"]
        assert len(requested) == 1, [b["type"] for b in bodies]
        url = requested[0]["data"]["review_url"]
        assert url.startswith(f"{BASE}/ui/runs/{run_id}/gates/anchor?t=v1."), url
        status, html, _ = await page(api.client, Review(run_id, url).path_and_query)
        assert status == 200, html
        assert run_id in html and "0 of 1 approvals" in html and 'name="decision"' in html

        code, _ = await api.decide(run_id, "anchor", True, "ok")
        assert code == 200
        bodies += await run_messages(queue, run_id, until="run.completed")

    kinds = [b["type"] for b in bodies]
    assert {"run.started", "gate.requested", "gate.decided", "run.completed"} <= set(kinds), kinds
    # Only gate.requested carries a link.
    assert [b["type"] for b in bodies if "review_url" in b["data"]] == ["gate.requested"]
