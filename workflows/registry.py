"""The workflows the worker registers, and the workflow modules they share."""

import pkgutil

import workflows
from workflows.account_realization import AccountRealizationWorkflow
from workflows.lifecycle_run import LifecycleRunWorkflow
from workflows.repo_run import RepoRunWorkflow
from workflows.webhook_delivery import AmqpPublishWorkflow, WebhookDeliveryWorkflow

WORKFLOWS: list[type] = [
    RepoRunWorkflow,
    LifecycleRunWorkflow,
    AccountRealizationWorkflow,
    WebhookDeliveryWorkflow,
    AmqpPublishWorkflow,
]


def shared_workflow_modules() -> frozenset[str]:
    """The ``workflows.*`` modules that define no registered workflow: base classes, gates, budgets, helpers.

    The worker passes these through its sandbox (``worker.workflow_runner``); the modules that define a registered
    workflow, and this registry, are left out.
    """
    defining = {cls.__module__ for cls in WORKFLOWS}
    every = {f"{workflows.__name__}.{m.name}" for m in pkgutil.iter_modules(workflows.__path__)}
    return frozenset(every - defining - {__name__})
