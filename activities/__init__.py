"""Activities, grouped by the resources they need; :func:`build_activities` lists what the worker registers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import Engine

from quantapilot.settings import Settings
from quantapilot.webhooks.urlsafety import Resolver

if TYPE_CHECKING:
    from activities.events import Handoff


class Closeable(Protocol):
    """An activity object holding connections that the worker closes when it shuts down."""

    async def close(self) -> None:
        """Release the connections."""


def build_activities(
    settings: Settings,
    engine: Engine,
    *,
    resolver: Resolver | None = None,
    wake_dispatcher: Callable[[], None] | None = None,
    dispatcher: Handoff | None = None,
) -> tuple[list[Callable[..., Any]], list[Closeable]]:
    """Create the activity objects.

    Args:
        settings: Service settings.
        engine: Database engine.
        resolver: Resolver of repository hosts (tests); ``getaddrinfo`` when None.
        wake_dispatcher: Wakes the worker's webhook outbox dispatcher after an event is recorded.
        dispatcher: The worker's webhook outbox dispatcher, handed the deliveries of the events recorded here
            (then ``wake_dispatcher`` is not needed).

    Returns:
        The bound activity methods to register, and the objects to close at shutdown.
    """
    from activities.events import EventActivities
    from activities.lifecycle import lifecycle_activities
    from activities.lifecycle_models import LifecycleModelActivities
    from activities.model_docs import ModelDocsActivities
    from activities.model_review import ModelReviewActivities
    from activities.models import ModelActivities
    from activities.repo import RepoActivities
    from activities.webhooks import WebhookActivities

    repo = RepoActivities(settings, engine, resolver=resolver)
    events = EventActivities(engine, settings, wake=wake_dispatcher, handoff=dispatcher)
    webhooks = WebhookActivities(settings, engine)
    models = ModelActivities(settings, repo.worktrees, engine)
    model_docs = ModelDocsActivities(settings, repo.worktrees, models)
    narratives = LifecycleModelActivities(models)
    reviews = ModelReviewActivities(models)
    activities: list[Callable[..., Any]] = [
        events.record_event,
        events.record_events,
        repo.clone_repository,
        repo.load_run_config,
        repo.generate_documentation,
        repo.generate_documentation_with_models,
        repo.open_pull_request,
        repo.merge_pull_request,
        repo.run_milestone,
        repo.cleanup_worktree,
        models.call_model,
        model_docs.call_docs_model,
        reviews.review_model_diff,
        *lifecycle_activities(settings, engine),
        narratives.narrate_stage,
        webhooks.deliver_webhook,
        webhooks.publish_event_amqp,
    ]
    return activities, [repo, webhooks, models]
