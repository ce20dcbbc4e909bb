"""Record the histories the replay test replays: ``python -m tests.replay.record``.

Starts its own Temporal dev server, a worker and the HTTP API in this process, drives one workflow per scenario
through the API (as an operator, a telemetry source or a webhook consumer would), and writes that workflow's
history as JSON under ``tests/replay/histories/``. Every workflow the worker registers has at least one scenario.
Re-record after a change that is meant to alter the workflows' commands (and guard the old path with
``workflow.patched`` first, so runs already in flight keep replaying: see docs/DEPLOY.md).

The ``amqp_publish_confirmed`` scenario needs the RabbitMQ broker at 127.0.0.1:5672 (or ``QP_TEST_AMQP_URL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from temporalio import workflow
from temporalio.client import Client, WorkflowContinuedAsNewError, WorkflowFailureError

from api.app import create_app
from api.lifecycle_routes import REALIZATION_OPTIONS, RealizationOptions
from quantapilot.db import create_all, make_engine, session_scope
from quantapilot.lifecycle.contracts import (
    TELEMETRY_SIGNAL,
    AccountRealizationStatus,
    TelemetryIngested,
    account_workflow_id,
)
from quantapilot.lifecycle.telemetry import insert_events
from quantapilot.lifecycle.telemetry_body import parse_telemetry_payload
from quantapilot.llm.spending import save_model_call
from quantapilot.models import RunKind
from quantapilot.repos.config import BudgetsConfig, ModelsConfig, TokenLimitsConfig
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from quantapilot.temporal_dev import dev_server
from quantapilot.tokens import create_token
from quantapilot.webhooks.contracts import amqp_workflow_id, delivery_workflow_id
from tests.brokers import AMQP_URL, broker_reachable
from tests.lifecycle_e2e.helpers import (
    TARGET_INPUTS,
    approved_target,
    new_account,
    samples,
    start,
    wait_realization,
)
from tests.llmserver import ChatServer, chat_server, reply
from tests.support import Api, eventually, make_remote
from tests.webhook_e2e.support import Receiver, all_status, create_endpoint, fast_run, wait_deliveries
from worker import build_worker
from workflows.account_realization import AccountRealizationWorkflow
from workflows.lifecycle_run import LifecycleRunWorkflow
from workflows.repo_run import RepoRunWorkflow
from workflows.webhook_delivery import AmqpPublishWorkflow, WebhookDeliveryWorkflow

HISTORIES = Path(__file__).resolve().parent / "histories"
README = "# Replay demo\n\nA project whose runs are recorded for the replay test.\n"
TWO_MILESTONES = """\
version: 1
policies: {merge: squash}
milestones:
  - id: M-001
    title: Add a changelog
    criteria: [CHANGELOG.md exists]
    steps:
      - {name: impl, run: "echo 'v1' > CHANGELOG.md", timeout_s: 30}
      - {name: test, run: "test -s CHANGELOG.md && echo ok", timeout_s: 30}
  - id: M-002
    title: Extend the changelog
    gate: true
    steps:
      - {name: impl, run: "echo 'v2' >> CHANGELOG.md", timeout_s: 30}
"""
# The anchor gate needs two of three named approvers (N-of-M).
TWO_OF_THREE = """\
version: 1
gate_definitions:
  anchor: {required_approvals: 2, approvers: [alice, bob, carol]}
"""
# The anchor gate waits at most an hour: its gate.requested carries timeout_s and deadline.
GATE_DEADLINE = """\
version: 1
gate_definitions:
  anchor: {timeout_s: 3600}
"""
# A milestone whose diff comes from the (loopback) model, under a daily token limit of the workspace.
MODEL_KEY = "sk-replay-model-key-7d3e9a41"
DAY_LIMIT = 5000
MODEL_DAY = f"""\
version: 1
models:
  dev: {{model: dev-model, max_output_tokens: 2000}}
limits: {{tokens_per_day: {DAY_LIMIT}}}
policies: {{gates: ['-first_merge']}}
milestones:
  - id: M-001
    title: Greet the world
    gate: false
    steps:
      - {{name: impl, prompt: "Create greeting.txt containing the line 'hello world'."}}
      - {{name: test, run: "grep -qx 'hello world' greeting.txt", timeout_s: 30}}
"""
GREETING_DIFF = (
    "diff --git a/greeting.txt b/greeting.txt\nnew file mode 100644\n--- /dev/null\n+++ b/greeting.txt\n"
    "@@ -0,0 +1 @@\n+hello world\n"
)
# The "day" of model_steps_next_day (QP_MODEL_DAY_S, test-only), in seconds.
SHORT_DAY_S = 20.0
# models.arch writes two pages; the documentation step's token budget is too small for the first call.
MODEL_DOCS = """\
version: 1
models:
  arch: {model: arch-model}
steps:
  - {name: doc, tokens_budget: 20}
"""
# models.dev writes a milestone's diff, models.qa reviews it before the milestone's gate.
MODEL_QA = """\
version: 1
models:
  dev: {model: dev-model}
  qa: {model: qa-model}
policies: {merge: squash, gates: ['-first_merge']}
milestones:
  - id: M-001
    title: Add notes
    gate: true
    steps:
      - {name: impl, prompt: "Create NOTES.md."}
"""
MODEL_OVERVIEW = "## Purpose\n\nA project whose runs are recorded for the replay test.\n"
MODEL_NARRATIVE = {"summary": "A CFO wants costs down.", "persona_reasoning": "The CFO holds the budget."}
MODEL_ARCHITECTURE = "## Components\n\nOne README, nothing else.\n"
# Webhook retries 2000 times faster than in production (the first delay is 15-30 ms), as in tests/webhook_e2e.
WEBHOOK_RETRY_SCALE = 0.0005


@dataclass(frozen=True)
class Recorded:
    """The workflow execution a scenario produced: its id, and the run when it is not the latest one."""

    workflow_id: str
    run_id: str | None = None


@dataclass
class Recording:
    """What a scenario works with: the dev server, the recorder's API, a scratch directory, and extra stacks.

    Attributes:
        client: Client of the dev server.
        api: The recorder's API (its worker polls the recorder's task queue).
        root: An empty directory of the scenario's own.
        settings: The recorder's settings, which :meth:`stack` varies.
        engine: The database every stack shares.
        token: An all-scopes token of the ``default`` workspace.
        exits: Closes the scenario's stacks.
    """

    client: Client
    api: Api
    root: Path
    settings: Settings
    engine: Engine
    token: str
    exits: contextlib.AsyncExitStack

    async def stack(self, *, realization: RealizationOptions | None = None, **updates: Any) -> Api:
        """A worker and an API of their own (fresh task queue) whose settings differ by ``updates``.

        Both stop when the scenario's history has been written.
        """
        queue = f"{self.settings.task_queue}-{uuid.uuid4().hex[:6]}"
        settings = self.settings.model_copy(update={**updates, "task_queue": queue})
        await self.exits.enter_async_context(build_worker(self.client, settings))
        app = create_app(settings, client=self.client, engine=self.engine)
        if realization is not None:
            app[REALIZATION_OPTIONS] = realization
        http = await self.exits.enter_async_context(TestClient(TestServer(app)))
        return Api(client=http, token=self.token)

    def as_subject(self, subject: str) -> Api:
        """The recorder's API with an all-scopes token of another subject (an approver of N-of-M gates)."""
        token, _ = create_token(self.engine, workspace="default", subject=subject)
        return Api(client=self.api.client, token=token)


@dataclass(frozen=True)
class Scenario:
    """One recording: the workflow it exercises and how to drive it."""

    workflow: type
    drive: Callable[[Recording], Awaitable[Recorded]]

    @property
    def workflow_type(self) -> str:
        """The workflow type name its history must start with."""
        return workflow_type(self.workflow)


def workflow_type(cls: type) -> str:
    """The registered name of a workflow class (``@workflow.defn(name=...)``)."""
    name = workflow._Definition.must_from_class(cls).name
    assert name is not None, f"{cls.__name__} is a dynamic workflow"
    return name


# ----- RepoRun ---------------------------------------------------------------------------------------------------


def repo_run(run_id: str) -> Recorded:
    return Recorded(workflow_id(RunKind.REPOSITORY, "default", run_id))


async def approved(rec: Recording) -> Recorded:
    """Anchor approved: documentation merged, run completed."""
    api = rec.api
    _, body = await api.post("/run", {"repo_url": make_remote(rec.root, {"README.md": README}), "branch": "main"})
    await api.wait_gate(body["run_id"], "anchor")
    await api.decide(body["run_id"], "anchor", True, "looks right")
    await api.wait_state(body["run_id"], "completed")
    return repo_run(body["run_id"])


async def rejected(rec: Recording) -> Recorded:
    """Anchor rejected: the run fails with GATE_REJECTED."""
    api = rec.api
    _, body = await api.post("/run", {"repo_url": make_remote(rec.root, {"README.md": README}), "branch": "main"})
    await api.wait_gate(body["run_id"], "anchor")
    await api.decide(body["run_id"], "anchor", False, "wrong scope")
    await api.wait_state(body["run_id"], "failed")
    return repo_run(body["run_id"])


async def paused_resumed(rec: Recording) -> Recorded:
    """Paused at the anchor gate, decided while paused, then resumed to completion."""
    api = rec.api
    _, body = await api.post("/run", {"repo_url": make_remote(rec.root, {"README.md": README}), "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.post(f"/v1/runs/{run_id}/pause", {"reason": "security review"})
    await api.decide(run_id, "anchor", True)
    await api.post(f"/v1/runs/{run_id}/resume")
    await api.wait_state(run_id, "completed")
    return repo_run(run_id)


async def two_milestones(rec: Recording) -> Recorded:
    """Two milestones with commands, their gates and the first merge; completed."""
    api = rec.api
    url = make_remote(rec.root, {"README.md": README, "quantapilot.yml": TWO_MILESTONES})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main", "correlation_id": "replay-milestones"})
    run_id = body["run_id"]
    for gate in ("anchor", "M-001", "first_merge", "M-002"):
        await api.wait_gate(run_id, gate)
        await api.decide(run_id, gate, True, f"{gate} ok")
    await api.wait_state(run_id, "completed")
    return repo_run(run_id)


async def time_budget_stopped_step(rec: Recording) -> Recorded:
    """The time budget runs out during a milestone command: the step is cancelled, the run pauses (time_limit),
    the budget is raised, the step runs again from its start; completed."""
    api = await rec.stack(step_heartbeat_s=1.0)
    marker = rec.root / "first-attempt-started"
    command = f"if [ -f {marker} ]; then echo quick > out.txt; else touch {marker}; sleep 60; fi"
    yml = (
        "version: 1\nrun: {time_budget_s: 4}\npolicies: {gates: ['-first_merge']}\nmilestones:\n"
        f'  - id: M-001\n    title: Slow\n    gate: false\n    steps:\n      - {{name: impl, run: "{command}"}}\n'
    )
    url = make_remote(rec.root, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    await api.wait_state(run_id, "paused", timeout=45)
    await api.post(f"/v1/runs/{run_id}/budget", {"time_budget_s": 3600})
    await api.post(f"/v1/runs/{run_id}/resume")
    await api.wait_state(run_id, "completed", timeout=60)
    return repo_run(run_id)


async def two_of_three(rec: Recording) -> Recorded:
    """Anchor needs 2 of 3 approvers: alice approves (gate.approval_recorded), alice again (counted once), bob
    approves; gate.decided once, completed."""
    api = rec.api
    url = make_remote(rec.root, {"README.md": README, "quantapilot.yml": TWO_OF_THREE})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    alice, bob = rec.as_subject("alice"), rec.as_subject("bob")
    await alice.decide(run_id, "anchor", True, "docs read")
    await eventually(
        lambda: api.events(run_id),
        lambda es: any(e["type"] == "gate.approval_recorded" for e in es),
        what="the first approval's event",
    )
    await alice.decide(run_id, "anchor", True, "still fine")
    code, record = await bob.decide(run_id, "anchor", True, "agreed")
    assert code == 200 and record["status"] == "approved", record
    await api.wait_state(run_id, "completed")
    return repo_run(run_id)


async def gate_deadline(rec: Recording) -> Recorded:
    """Anchor with a timeout: gate.requested carries timeout_s and deadline (the patch's path); approved before the
    deadline, completed."""
    api = rec.api
    url = make_remote(rec.root, {"README.md": README, "quantapilot.yml": GATE_DEADLINE})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    requested = next(e for e in await api.events(run_id) if e["type"] == "gate.requested")
    assert requested["data"]["timeout_s"] == 3600 and requested["data"]["deadline"], requested
    await api.decide(run_id, "anchor", True, "in time")
    await api.wait_state(run_id, "completed")
    return repo_run(run_id)


async def model_stack(rec: Recording, **updates: Any) -> tuple[Api, ChatServer]:
    """A worker and API whose model provider is a loopback Chat Completions server answering one diff."""
    llm = await rec.exits.enter_async_context(chat_server(MODEL_KEY))
    llm.script(reply(f"```diff\n{GREETING_DIFF}```", completion_tokens=20))
    # The milestone's one test command (grep) runs unsandboxed: the sandbox is not part of the workflow's history.
    api = await rec.stack(
        model_base_url=llm.base_url, model_api_key=SecretStr(MODEL_KEY), command_sandbox="none", **updates
    )
    return api, llm


def spent_today(rec: Recording, tokens: int, *, day_s: float = 86400.0) -> None:
    """Other runs of the workspace spent ``tokens`` today (model_usage)."""
    save_model_call(
        rec.engine,
        call_id=f"replay-earlier-{uuid.uuid4().hex}",
        workspace="default",
        run_id="an-earlier-run",
        step="M-001/impl",
        role="dev",
        model="dev-model",
        input_tokens=tokens,
        output_tokens=0,
        day_s=day_s,
    )


async def model_day_raised(rec: Recording) -> Recorded:
    """The workspace spent nearly its limits.tokens_per_day today: the model call pauses the run (budget_exceeded),
    a budget raise and a resume make the call; the model's diff passes its test, completed."""
    api, llm = await model_stack(rec)
    spent_today(rec, DAY_LIMIT - 10)
    url = make_remote(rec.root, {"README.md": README, "quantapilot.yml": MODEL_DAY})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    paused = await api.wait_state(run_id, "paused", timeout=60)
    assert paused["paused_reason"] == "budget_exceeded" and llm.requests == [], paused
    await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
    await api.post(f"/v1/runs/{run_id}/resume")
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed" and len(llm.ok_requests) == 1, final
    return repo_run(run_id)


async def model_next_day(rec: Recording) -> Recorded:
    """The workspace spent its whole limits.tokens_per_day today: the run pauses and the next day's timer resumes
    it (a short test day); the call is made, completed."""
    api, llm = await model_stack(rec, model_day_s=SHORT_DAY_S)
    # Early in a "day", so the run reaches its model call before that day ends.
    into_day = time.time() % SHORT_DAY_S
    if into_day > SHORT_DAY_S / 4:
        await asyncio.sleep(SHORT_DAY_S - into_day + 0.05)
    spent_today(rec, DAY_LIMIT, day_s=SHORT_DAY_S)
    url = make_remote(rec.root, {"README.md": README, "quantapilot.yml": MODEL_DAY})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    paused = await api.wait_state(run_id, "paused", timeout=SHORT_DAY_S)
    assert paused["paused_reason"] == "budget_exceeded" and llm.requests == [], paused
    final = await api.wait_state(run_id, "completed", "failed", timeout=SHORT_DAY_S + 60)
    assert final["state"] == "completed" and len(llm.ok_requests) == 1, final
    return repo_run(run_id)


async def model_docs_budget_raised(rec: Recording) -> Recorded:
    """models.arch writes two documentation pages (loopback Chat Completions server): the first call would pass
    steps[doc].tokens_budget, so the run pauses (budget_exceeded) before it; the budget is raised, the run resumed,
    both pages are written with the generated ones, the anchor gate approved; completed."""
    llm = await rec.exits.enter_async_context(chat_server(MODEL_KEY))
    llm.script(reply(MODEL_OVERVIEW, completion_tokens=20), reply(MODEL_ARCHITECTURE, completion_tokens=20))
    api = await rec.stack(model_base_url=llm.base_url, model_api_key=SecretStr(MODEL_KEY))
    url = make_remote(rec.root, {"README.md": README, "quantapilot.yml": MODEL_DOCS})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_state(run_id, "paused")
    await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
    await api.post(f"/v1/runs/{run_id}/resume")
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "completed")
    assert [c["step"] for c in final["model_calls"]] == ["doc/overview", "doc/architecture"], final
    assert llm.invalid == [], llm.invalid
    return repo_run(run_id)


async def model_qa_reviewed(rec: Recording) -> Recorded:
    """A milestone with `prompt:`: the dev model's diff is applied (loopback Chat Completions server), the qa model
    reviews it before the milestone's gate (approve, named in the gate's description); gate approved; completed."""
    llm = await rec.exits.enter_async_context(chat_server(MODEL_KEY))
    diff = (
        "diff --git a/NOTES.md b/NOTES.md\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES.md\n@@ -0,0 +1 @@\n+notes\n"
    )
    llm.script(
        reply(f"```diff\n{diff}```", completion_tokens=20), reply("VERDICT: approve\nFine.", completion_tokens=5)
    )
    api = await rec.stack(model_base_url=llm.base_url, model_api_key=SecretStr(MODEL_KEY))
    url = make_remote(rec.root, {"README.md": README, "quantapilot.yml": MODEL_QA})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    waiting = await api.wait_gate(run_id, "M-001")
    assert [c["outcome"] for c in waiting["milestones"][0]["model_calls"]] == ["applied", "approve"], waiting
    await api.decide(run_id, "M-001", True)
    await api.wait_state(run_id, "completed")
    return repo_run(run_id)


# ----- LifecycleRun ----------------------------------------------------------------------------------------------


async def lifecycle_target_approved(rec: Recording) -> Recorded:
    """Target stage: draft page, business_case gate approved, targets active, page published; completed."""
    run_id = await approved_target(rec.api, new_account())
    return Recorded(workflow_id(RunKind.LIFECYCLE, "default", run_id))


async def lifecycle_target_rejected(rec: Recording) -> Recorded:
    """Target stage rejected at the business_case gate: result rejected, page archived; failed."""
    api = rec.api
    run_id = await start(api, new_account(), "target", TARGET_INPUTS)
    await api.wait_gate(run_id, "business_case")
    await api.decide(run_id, "business_case", False, "ROI too optimistic")
    await api.wait_state(run_id, "failed")
    return Recorded(workflow_id(RunKind.LIFECYCLE, "default", run_id))


async def lifecycle_target_api_signal_held(rec: Recording) -> Recorded:
    """A decide_gate signal claiming an API source from the trigger's subject (another token) is ignored under the
    self-approval rule (the patch's path); an operator's signal then approves; completed."""
    api = rec.api
    run_id = await start(api, new_account(), "target", TARGET_INPUTS, gate={"allowSelfApproval": False})
    await api.wait_gate(run_id, "business_case")
    handle = rec.client.get_workflow_handle(workflow_id(RunKind.LIFECYCLE, "default", run_id))
    claimed = {"source": "api", "decided_by": "recorder", "decided_by_token": "tok_another_of_recorder"}
    await handle.signal("decide_gate", {"gate": "business_case", "approved": True, **claimed})
    await handle.signal("decide_gate", {"gate": "business_case", "approved": True, "reason": "operator"})
    final = await api.wait_state(run_id, "completed")
    assert final["gates"][0]["reason"] == "operator", final["gates"]  # the first signal changed nothing
    return Recorded(workflow_id(RunKind.LIFECYCLE, "default", run_id))


async def lifecycle_target_two_of_three_rejected(rec: Recording) -> Recorded:
    """business_case needs 2 of 3: one operator's decide_gate signal approves (gate.approval_recorded), another's
    rejects; the gate is rejected, failed."""
    api = rec.api
    gate = {"approvers": ["carol", "dave", "erin"], "requiredApprovals": 2}
    run_id = await start(api, new_account(), "target", TARGET_INPUTS, gate=gate)
    await api.wait_gate(run_id, "business_case")
    handle = rec.client.get_workflow_handle(workflow_id(RunKind.LIFECYCLE, "default", run_id))
    await handle.signal("decide_gate", {"gate": "business_case", "approved": True, "decided_by": "op-one"})
    await eventually(
        lambda: api.events(run_id),
        lambda es: any(e["type"] == "gate.approval_recorded" for e in es),
        what="the first approval's event",
    )
    no = {"gate": "business_case", "approved": False, "decided_by": "op-two", "reason": "ROI too optimistic"}
    await handle.signal("decide_gate", no)
    final = await api.wait_state(run_id, "failed")
    assert final["error"]["code"] == "GATE_REJECTED", final
    return Recorded(workflow_id(RunKind.LIFECYCLE, "default", run_id))


async def lifecycle_opportunity_narrated(rec: Recording) -> Recorded:
    """QP_LIFECYCLE_MODELS names an arch model (loopback Chat Completions server): the opportunity agent's result
    needs a narrative, the call would pass QP_LIFECYCLE_BUDGETS' tokens, so the run pauses (budget_exceeded); the
    budget is raised, the run resumed, the model words the summary and the persona reasoning; completed."""
    llm = await rec.exits.enter_async_context(chat_server(MODEL_KEY))
    llm.script(reply(json.dumps(MODEL_NARRATIVE), completion_tokens=20))
    api = await rec.stack(
        model_base_url=llm.base_url,
        model_api_key=SecretStr(MODEL_KEY),
        lifecycle_models=ModelsConfig.model_validate({"arch": {"model": "arch-model"}}),
        lifecycle_budgets=BudgetsConfig(tokens=20),
    )
    run_id = await start(api, new_account(), "opportunity", {"persona": "CFO", "discoveryNotes": "Costs grow."})
    await api.wait_state(run_id, "paused")
    await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
    await api.post(f"/v1/runs/{run_id}/resume")
    final = await api.wait_state(run_id, "completed")
    assert [c["outcome"] for c in final["model_calls"]] == ["narrated"], final
    return Recorded(workflow_id(RunKind.LIFECYCLE, "default", run_id))


async def lifecycle_opportunity_day_raised(rec: Recording) -> Recorded:
    """QP_LIFECYCLE_LIMITS sets tokens_per_day and the workspace spent nearly all of it today: the narrative's call
    pauses the run (budget_exceeded, limits.tokens_per_day); a budget raise and a resume make it; completed."""
    llm = await rec.exits.enter_async_context(chat_server(MODEL_KEY))
    llm.script(reply(json.dumps(MODEL_NARRATIVE), completion_tokens=20))
    spent_today(rec, DAY_LIMIT - 10)
    api = await rec.stack(
        model_base_url=llm.base_url,
        model_api_key=SecretStr(MODEL_KEY),
        lifecycle_models=ModelsConfig.model_validate({"arch": {"model": "arch-model"}}),
        lifecycle_limits=TokenLimitsConfig(tokens_per_day=DAY_LIMIT),
    )
    run_id = await start(api, new_account(), "opportunity", {"persona": "CFO", "discoveryNotes": "Costs grow."})
    paused = await api.wait_state(run_id, "paused")
    assert paused["paused_reason"] == "budget_exceeded" and llm.requests == [], paused
    await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
    await api.post(f"/v1/runs/{run_id}/resume")
    final = await api.wait_state(run_id, "completed")
    assert [c["outcome"] for c in final["model_calls"]] == ["narrated"], final
    return Recorded(workflow_id(RunKind.LIFECYCLE, "default", run_id))


# ----- AccountRealization ----------------------------------------------------------------------------------------


async def account_realization_refreshed(rec: Recording) -> Recorded:
    """Three telemetry batches after an approved target: two refreshes (the second coalesces two batches after
    the window's timer), then continue-as-new. The history is the first run's, ending in ContinuedAsNew."""
    api = await rec.stack(realization=RealizationOptions(window_s=2.0, refreshes_per_run=2))
    account = new_account()
    await approved_target(api, account)
    await api.post("/v1/telemetry/events", samples(account, [175.0]))
    await realization_samples(api, account, 1)
    handle = rec.client.get_workflow_handle(account_workflow_id("default", account))
    first_run = (await handle.describe()).run_id
    # Both within the 2 s window: one refresh serves the two.
    await api.post("/v1/telemetry/events", samples(account, [199.0, 199.0, 199.0]))
    await api.post("/v1/telemetry/events", samples(account, [201.0, 201.0, 201.0]))
    await realization_samples(api, account, 7)
    return Recorded(handle.id, first_run)


async def account_realization_refresh_retried(rec: Recording) -> Recorded:
    """A refresh fails while the database refuses connections (its activities give up) and is retried on its own
    once the database is back, without new telemetry; continue-as-new after the third refresh. Needs PostgreSQL
    at 127.0.0.1:5432 (its connections are refused and restored)."""
    from tests.dbfixtures import drop_postgres_database, new_postgres_database, postgres_available
    from tests.drills.helpers import refuse_connections

    if not postgres_available():
        raise SystemExit("account_realization_refresh_retried needs PostgreSQL at 127.0.0.1:5432")
    url, name = new_postgres_database()
    engine = make_engine(url)
    rec.exits.callback(drop_postgres_database, name)
    rec.exits.callback(engine.dispose)
    create_all(engine)
    token, _ = create_token(engine, workspace="default", subject="recorder")
    settings = rec.settings.model_copy(
        update={"database_url": url, "task_queue": f"{rec.settings.task_queue}-{uuid.uuid4().hex[:6]}"}
    )
    await rec.exits.enter_async_context(build_worker(rec.client, settings))
    app = create_app(settings, client=rec.client, engine=engine)
    app[REALIZATION_OPTIONS] = RealizationOptions(window_s=2.0, refreshes_per_run=3, retry_initial_s=0.05)
    api = Api(client=await rec.exits.enter_async_context(TestClient(TestServer(app))), token=token)
    account = new_account()
    await approved_target(api, account)
    await api.post("/v1/telemetry/events", samples(account, [150.0]))
    await realization_samples(api, account, 1)
    handle = rec.client.get_workflow_handle(account_workflow_id("default", account))
    first_run = (await handle.describe()).run_id
    with session_scope(engine) as session:
        insert_events(session=session, workspace="default", events=parse_telemetry_payload(samples(account, [190.0])))
    refuse_connections(name, refuse=True)
    try:
        await handle.signal(TELEMETRY_SIGNAL, TelemetryIngested(accepted=1))
        await eventually(
            lambda: handle.query("status", result_type=AccountRealizationStatus),
            lambda st: (st.last_note or "").startswith("refresh failed"),
            what="the failed refresh",
        )
    finally:
        refuse_connections(name, refuse=False)
    await realization_samples(api, account, 2)
    return Recorded(handle.id, first_run)


async def realization_samples(api: Api, account: str, count: int) -> None:
    """Wait for a ``realization.updated`` of the account that read ``count`` telemetry samples."""
    await wait_realization(api, account, lambda d: d["samples"] == count, what=f"a refresh over {count} samples")


# ----- WebhookDelivery and AmqpPublish ---------------------------------------------------------------------------


async def webhook_retried_delivered(rec: Recording) -> Recorded:
    """A run.started delivery to a loopback receiver that answers 500 once, then 200: one retry, delivered."""

    async def flaky(request: web.Request, count: int) -> web.StreamResponse:
        if count == 1:
            return web.json_response({"busy": True}, status=500)
        return web.json_response({"ok": True})

    api = await rec.stack(webhook_allow_private=True, webhook_retry_scale=WEBHOOK_RETRY_SCALE)
    async with Receiver(behaviour=flaky) as receiver:
        endpoint = await create_endpoint(api, receiver.url(), events=["run.started"])
        await fast_run(api, "replay-webhook")
        (delivery,) = await wait_deliveries(api, endpoint["id"], all_status("delivered", 1))
    assert [a["outcome"] for a in delivery["attempts"]] == ["retry", "delivered"], delivery
    # The endpoint is workspace-wide: later scenarios' runs must not deliver to it.
    await api.client.delete(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=api.headers())
    return Recorded(delivery_workflow_id(delivery["id"]))


async def amqp_publish_confirmed(rec: Recording) -> Recorded:
    """A run.started event published to a RabbitMQ topic exchange and confirmed by the broker."""
    if not broker_reachable():
        raise SystemExit(f"amqp_publish_confirmed needs RabbitMQ at {AMQP_URL}")
    exchange = f"qp_replay_{uuid.uuid4().hex[:12]}"
    api = await rec.stack(amqp_url=AMQP_URL, amqp_exchange=exchange)
    try:
        run_id = await fast_run(api, "replay-amqp")
        await api.wait_state(run_id, "failed")
        started = next(e for e in await api.events(run_id) if e["type"] == "run.started")
        recorded = Recorded(amqp_workflow_id(started["id"]))
        await rec.client.get_workflow_handle(recorded.workflow_id).result()
    finally:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            await (await connection.channel()).exchange_delete(exchange)
    return recorded


SCENARIOS: dict[str, Scenario] = {
    "repo_run_approved": Scenario(RepoRunWorkflow, approved),
    "repo_run_rejected": Scenario(RepoRunWorkflow, rejected),
    "repo_run_paused_resumed": Scenario(RepoRunWorkflow, paused_resumed),
    "repo_run_two_milestones": Scenario(RepoRunWorkflow, two_milestones),
    "repo_run_time_budget_stopped_step": Scenario(RepoRunWorkflow, time_budget_stopped_step),
    "repo_run_two_of_three": Scenario(RepoRunWorkflow, two_of_three),
    "repo_run_gate_deadline": Scenario(RepoRunWorkflow, gate_deadline),
    "model_steps_day_raised": Scenario(RepoRunWorkflow, model_day_raised),
    "model_steps_next_day": Scenario(RepoRunWorkflow, model_next_day),
    "repo_run_model_docs_budget_raised": Scenario(RepoRunWorkflow, model_docs_budget_raised),
    "repo_run_model_qa_reviewed": Scenario(RepoRunWorkflow, model_qa_reviewed),
    "lifecycle_target_approved": Scenario(LifecycleRunWorkflow, lifecycle_target_approved),
    "lifecycle_target_rejected": Scenario(LifecycleRunWorkflow, lifecycle_target_rejected),
    "lifecycle_target_api_signal_held": Scenario(LifecycleRunWorkflow, lifecycle_target_api_signal_held),
    "lifecycle_target_two_of_three_rejected": Scenario(LifecycleRunWorkflow, lifecycle_target_two_of_three_rejected),
    "lifecycle_opportunity_narrated": Scenario(LifecycleRunWorkflow, lifecycle_opportunity_narrated),
    "lifecycle_opportunity_narrated_day_raised": Scenario(LifecycleRunWorkflow, lifecycle_opportunity_day_raised),
    "account_realization_refreshed": Scenario(AccountRealizationWorkflow, account_realization_refreshed),
    "account_realization_refresh_retried": Scenario(AccountRealizationWorkflow, account_realization_refresh_retried),
    "webhook_retried_delivered": Scenario(WebhookDeliveryWorkflow, webhook_retried_delivered),
    "amqp_publish_confirmed": Scenario(AmqpPublishWorkflow, amqp_publish_confirmed),
}


async def record(client: Client, work: Path, names: list[str]) -> list[Path]:
    """Drive each named scenario through a worker and the API on ``client``'s server; write the histories."""
    settings = Settings(
        environment="test",
        state_dir=work / "state",
        temporal_address=client.service_client.config.target_host,
        task_queue=f"qp-record-{uuid.uuid4().hex[:8]}",
        allowed_repo_patterns=["file://*"],
        command_repo_patterns=["file://*"],
        token_cache_seconds=0.0,
        allow_self_approval=True,
    )
    engine = make_engine(settings.database_url)
    create_all(engine)
    token, _ = create_token(engine, workspace="default", subject="recorder")
    written: list[Path] = []
    async with (
        build_worker(client, settings),
        TestClient(TestServer(create_app(settings, client=client, engine=engine))) as http,
    ):
        api = Api(client=http, token=token)
        for name in names:
            scenario = SCENARIOS[name]
            root = work / name
            root.mkdir()
            async with contextlib.AsyncExitStack() as exits:
                rec = Recording(client, api, root, settings, engine, token, exits)
                target = await scenario.drive(rec)
                handle = client.get_workflow_handle(target.workflow_id, run_id=target.run_id)
                # The state turns final before the last event is recorded: wait until the workflow itself has
                # closed (this run only: an account workflow goes on in a new run).
                with contextlib.suppress(WorkflowFailureError, WorkflowContinuedAsNewError):
                    await handle.result(follow_runs=False)
                history = await handle.fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            assert started.workflow_type.name == scenario.workflow_type, (name, started.workflow_type.name)
            path = HISTORIES / f"{name}.json"
            # Indented so a re-recording shows up as a readable diff.
            path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n", encoding="utf-8")
            written.append(path)
    return written


async def main(names: list[str]) -> None:
    """Record ``names`` (default: every scenario) on a fresh dev server."""
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {sorted(SCENARIOS)}")
    HISTORIES.mkdir(parents=True, exist_ok=True)
    async with dev_server() as env:
        with tempfile.TemporaryDirectory(prefix="qp-record-") as tmp:
            for path in await record(env.client, Path(tmp), names or list(SCENARIOS)):
                print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
