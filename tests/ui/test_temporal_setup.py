"""`qp temporal setup` registers our search attributes on a server that lacks them; a workflow can then use them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from quantapilot.temporal_dev import dev_server, load_dev_config
from tests.support import eventually
from tests.ui.upsert_workflow import UpsertAllWorkflow

QP = str(Path(sys.executable).with_name("qp"))


@pytest.fixture(scope="module")
async def bare_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server started without our search attributes, like a fresh cluster."""
    async with dev_server(configured=False) as env:
        yield env


def qp_setup(address: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QP_TEMPORAL_")}
    return subprocess.run(
        [QP, "temporal", "setup", "--address", address, "--namespace", "default", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def custom_attributes(client: Client) -> dict[str, int]:
    resp = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
    return dict(resp.custom_attributes)


async def test_temporal_setup_registers_attributes_idempotently(bare_env: WorkflowEnvironment) -> None:
    client = bare_env.client
    wanted = load_dev_config().search_attributes
    assert not set(wanted) & set(await custom_attributes(client))
    address = client.service_client.config.target_host

    first = await asyncio.to_thread(qp_setup, address, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report == {"namespace": "default", "added": sorted(wanted), "existing": []}
    registered = await custom_attributes(client)
    assert set(wanted) <= set(registered)

    # Running it again changes nothing and succeeds.
    second = await asyncio.to_thread(qp_setup, address, "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"namespace": "default", "added": [], "existing": sorted(wanted)}
    human = await asyncio.to_thread(qp_setup, address)
    assert human.returncode == 0 and "existing QpPendingGate (Keyword)" in human.stdout

    # A workflow can now upsert them, and visibility queries on them find it.
    marker = f"setup-{uuid.uuid4().hex[:8]}"
    task_queue = f"qp-setup-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[UpsertAllWorkflow]):
        result = await client.execute_workflow(
            UpsertAllWorkflow.run, marker, id=f"upsert-{marker}", task_queue=task_queue
        )
    assert result == marker
    query = f"QpCorrelationId = '{marker}' AND QpPendingGate = 'anchor' AND QpStage = 'target'"

    async def matches() -> list[str]:
        return [w.id async for w in client.list_workflows(query)]

    assert await eventually(matches, lambda ids: len(ids) == 1, what="workflow visible by its attributes") == [
        f"upsert-{marker}"
    ]


async def test_temporal_setup_unreachable_server_fails_cleanly(tmp_path: Path) -> None:
    done = await asyncio.to_thread(qp_setup, "127.0.0.1:1")
    assert done.returncode == 1
    assert "cannot connect to Temporal at 127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr
