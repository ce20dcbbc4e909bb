"""Run identity: run ids, and the workflow type and workflow id of each kind of run (each defined here only).

A run id carries its kind (``rr_`` repository, ``lc_`` lifecycle); its workflow id is ``<kind>/<workspace>/<run
id>``, readable in the Temporal Web UI, and what the API's idempotency rides on (one id per Idempotency-Key).
"""

from __future__ import annotations

import hashlib
import re
import uuid

from quantapilot.models import RunKind

# Workflow type names: recorded in every history (tests/replay), so they never change.
REPO_RUN_WORKFLOW = "RepoRun"
LIFECYCLE_RUN_WORKFLOW = "LifecycleRun"
WORKFLOW_TYPE = {RunKind.REPOSITORY: REPO_RUN_WORKFLOW, RunKind.LIFECYCLE: LIFECYCLE_RUN_WORKFLOW}

KIND_PREFIX = {RunKind.REPOSITORY: "rr_", RunKind.LIFECYCLE: "lc_"}
WORKFLOW_PREFIX = {RunKind.REPOSITORY: "repo-run", RunKind.LIFECYCLE: "lifecycle-run"}
RUN_ID_RE = re.compile(r"^(rr|lc)_[0-9a-f]{32}$")
# Every workflow id of a run or of an account (``account-realization/<workspace>/<account>``) has this shape.
WORKFLOW_ID_RE = re.compile(r"^(?P<kind>[a-z-]+)/(?P<workspace>[^/]+)/(?P<run_id>[^/]+)$")


def new_run_id(kind: RunKind, workspace: str, idempotency_key: str | None) -> str:
    """A run id: derived from the key when there is one (same key, same id), random otherwise."""
    if idempotency_key is None:
        return KIND_PREFIX[kind] + uuid.uuid4().hex
    digest = hashlib.sha256(f"{workspace}\x00{kind.value}\x00{idempotency_key}".encode()).hexdigest()
    return KIND_PREFIX[kind] + digest[:32]


def kind_of(run_id: str) -> RunKind | None:
    """The kind encoded in a run id, or None when the id is malformed."""
    if not RUN_ID_RE.match(run_id):
        return None
    return RunKind.REPOSITORY if run_id.startswith("rr_") else RunKind.LIFECYCLE


def workflow_id(kind: RunKind, workspace: str, run_id: str) -> str:
    """Workflow id of a run: ``<kind>/<workspace>/<run_id>``, readable in the Web UI."""
    return f"{WORKFLOW_PREFIX[kind]}/{workspace}/{run_id}"


def parse_workflow_id(value: str) -> tuple[str, str] | None:
    """``(workspace, run_id)`` of a ``<kind>/<workspace>/<id>`` workflow id (an account's id for its workflow)."""
    match = WORKFLOW_ID_RE.match(value)
    return (match["workspace"], match["run_id"]) if match else None
