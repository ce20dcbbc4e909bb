"""Workflows; :data:`WORKFLOWS` is what the worker registers."""

from workflows.repo_run import RepoRunWorkflow

WORKFLOWS: list[type] = [RepoRunWorkflow]

__all__ = ["WORKFLOWS", "RepoRunWorkflow"]
