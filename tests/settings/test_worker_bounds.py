"""The worker's bounds: concurrency and cache from settings (nonsense refused), the modules its sandbox shares."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.worker.workflow_sandbox import SandboxRestrictions

from quantapilot.settings import Settings
from worker import build_worker, workflow_runner
from workflows.registry import WORKFLOWS, shared_workflow_modules


async def test_worker_bounds_reach_the_temporal_worker(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QP_WORKER_MAX_CONCURRENT_ACTIVITIES", "7")
    monkeypatch.setenv("QP_WORKER_MAX_CACHED_WORKFLOWS", "11")
    from_env = Settings()
    bounded = settings.model_copy(
        update={
            "worker_max_concurrent_activities": from_env.worker_max_concurrent_activities,
            "worker_max_cached_workflows": from_env.worker_max_cached_workflows,
        }
    )
    # Started and shut down, so the worker closes the database connections it opened while being built.
    async with build_worker(client, bounded) as worker:
        config = worker.config()
    assert (config.get("max_concurrent_activities"), config.get("max_cached_workflows")) == (7, 11)
    # Unset, the worker keeps Temporal's own default of 100 concurrent activities.
    async with build_worker(client, settings) as default:
        assert default.config().get("max_concurrent_activities") == 100


@pytest.mark.parametrize("value", ["0", "-1", "10001", "many"])
def test_worker_bounds_refuse_nonsense(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QP_WORKER_MAX_CONCURRENT_ACTIVITIES", value)
    with pytest.raises(ValidationError, match="worker_max_concurrent_activities"):
        Settings()


def test_worker_sandbox_passes_through_the_shared_workflow_modules_only() -> None:
    passed = workflow_runner().restrictions.passthrough_modules
    shared = shared_workflow_modules()
    # The base classes and helpers every repository run imports are shared, not imported again per instance ...
    assert {"workflows.base", "workflows.run_core", "workflows.common", "workflows.gates"} <= shared <= passed
    # ... while each module that defines a registered workflow stays sandboxed (and so do the registry and package).
    defining = {cls.__module__ for cls in WORKFLOWS}
    assert len(defining) == 4
    assert not (defining | {"workflows", "workflows.registry"}) & passed
    # Temporal's own passthrough list (the standard library, temporalio) is kept.
    assert SandboxRestrictions.default.passthrough_modules <= passed
