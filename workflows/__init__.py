"""Workflows; :data:`WORKFLOWS` is what the worker registers."""

from workflows.account_realization import AccountRealizationWorkflow
from workflows.lifecycle_run import LifecycleRunWorkflow
from workflows.repo_run import RepoRunWorkflow

WORKFLOWS: list[type] = [RepoRunWorkflow, LifecycleRunWorkflow, AccountRealizationWorkflow]

__all__ = ["WORKFLOWS", "RepoRunWorkflow"]
