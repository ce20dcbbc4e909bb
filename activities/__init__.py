"""Activities, grouped by the resources they need; :func:`build_activities` lists what the worker registers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from quantapilot.settings import Settings


def build_activities(settings: Settings, engine: Engine) -> list[Callable[..., Any]]:
    """Create the activity objects and return their bound activity methods.

    Args:
        settings: Service settings.
        engine: Database engine.
    """
    from activities.events import EventActivities
    from activities.lifecycle import lifecycle_activities
    from activities.repo import RepoActivities
    from activities.webhooks import WebhookActivities

    repo = RepoActivities(settings, engine)
    events = EventActivities(engine, settings)
    webhooks = WebhookActivities(settings, engine)
    return [
        events.record_event,
        repo.clone_repository,
        repo.load_run_config,
        repo.generate_documentation,
        repo.open_pull_request,
        repo.merge_pull_request,
        repo.run_milestone,
        *lifecycle_activities(settings, engine),
        webhooks.deliver_webhook,
        webhooks.publish_event_amqp,
    ]
