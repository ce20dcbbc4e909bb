"""Which provider serves model calls: the OpenAI-compatible one, or one registered by an entry point.

Entry points of the ``quantapilot.agents`` group (the one stage agents use) whose name is ``provider.<name>``
register a provider: the value is a callable taking the :class:`~quantapilot.settings.Settings` and returning a
:class:`~quantapilot.llm.provider.ModelProvider`. ``QP_MODEL_PROVIDER`` picks one by name (default ``openai``).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint
from importlib.metadata import entry_points as installed_entry_points

from quantapilot.errors import ErrorCode
from quantapilot.llm.openai_chat import OpenAIChatProvider
from quantapilot.llm.provider import ModelError, ModelProvider
from quantapilot.settings import Settings

ENTRY_POINT_GROUP = "quantapilot.agents"
PROVIDER_PREFIX = "provider."
BUILTIN_PROVIDER = "openai"


def _openai(settings: Settings) -> ModelProvider:
    if not settings.model_base_url:
        raise ModelError(ErrorCode.MODEL_NOT_CONFIGURED, "QP_MODEL_BASE_URL is not set", retryable=False)
    key = settings.model_api_key.get_secret_value() if settings.model_api_key else ""
    # Local servers (Ollama, llama.cpp) take any key; the client insists on one being set.
    return OpenAIChatProvider(
        base_url=settings.model_base_url, api_key=key or "none", timeout_s=settings.model_timeout_s
    )


def make_provider(settings: Settings, *, entry_points: Iterable[EntryPoint] | None = None) -> ModelProvider:
    """Build the provider ``settings.model_provider`` names.

    Args:
        settings: Service settings (base URL, key, timeout, provider name).
        entry_points: Entry points to use instead of the installed ones (tests).

    Raises:
        ModelError: ``MODEL_NOT_CONFIGURED`` when no provider of that name exists, it fails to load, or the
            built-in one has no base URL.
    """
    name = settings.model_provider
    eps = list(installed_entry_points(group=ENTRY_POINT_GROUP)) if entry_points is None else list(entry_points)
    for ep in eps:
        if ep.group == ENTRY_POINT_GROUP and ep.name == PROVIDER_PREFIX + name:
            try:
                provider = ep.load()(settings)
            except Exception as exc:
                message = f"model provider {name!r} ({ep.value}) failed to load: {type(exc).__name__}"
                raise ModelError(ErrorCode.MODEL_NOT_CONFIGURED, message, retryable=False) from exc
            if not isinstance(provider, ModelProvider):
                message = f"model provider {name!r} ({ep.value}) is not a ModelProvider"
                raise ModelError(ErrorCode.MODEL_NOT_CONFIGURED, message, retryable=False)
            return provider
    if name == BUILTIN_PROVIDER:
        return _openai(settings)
    raise ModelError(ErrorCode.MODEL_NOT_CONFIGURED, f"no model provider named {name!r}", retryable=False)
