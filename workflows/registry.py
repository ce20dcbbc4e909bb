"""The workflows the worker registers."""

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
