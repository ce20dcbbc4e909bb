"""Run identity: the one workflow id of each kind of run, and the workflow type names recorded in histories."""

from __future__ import annotations

from quantapilot.models import RunKind
from quantapilot.runs.ids import WORKFLOW_TYPE, kind_of, new_run_id, parse_workflow_id, workflow_id
from workflows.lifecycle_run import LifecycleRunWorkflow
from workflows.repo_run import RepoRunWorkflow


def test_workflow_ids_keep_their_published_shape() -> None:
    assert workflow_id(RunKind.REPOSITORY, "ws", "rr_1") == "repo-run/ws/rr_1"
    assert workflow_id(RunKind.LIFECYCLE, "ws", "lc_1") == "lifecycle-run/ws/lc_1"
    assert parse_workflow_id("repo-run/ws/rr_1") == ("ws", "rr_1")
    assert parse_workflow_id("webhook-delivery/x") is None


def test_a_run_id_carries_its_kind_and_a_key_gives_the_same_id() -> None:
    for kind in RunKind:
        run_id = new_run_id(kind, "ws", "key-1")
        assert kind_of(run_id) == kind
        assert new_run_id(kind, "ws", "key-1") == run_id != new_run_id(kind, "other", "key-1")
    assert kind_of("rr_short") is None


def test_the_workflows_are_defined_under_the_names_runs_are_started_with() -> None:
    names = {wf: getattr(wf, "__temporal_workflow_definition").name for wf in (RepoRunWorkflow, LifecycleRunWorkflow)}
    assert names[RepoRunWorkflow] == WORKFLOW_TYPE[RunKind.REPOSITORY] == "RepoRun"
    assert names[LifecycleRunWorkflow] == WORKFLOW_TYPE[RunKind.LIFECYCLE] == "LifecycleRun"
