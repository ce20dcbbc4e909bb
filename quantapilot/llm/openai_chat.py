"""The provider over OpenAI's Chat Completions API, through the official ``openai`` package.

``base_url`` points it at any service speaking that API (OpenAI, Azure OpenAI, Ollama, vLLM, LiteLLM,
llama.cpp's server). The client's own retries are off (``max_retries=0``): the activity's retry policy owns them,
so each attempt is visible in the run's history and ``Retry-After`` reaches Temporal as the next retry delay.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import openai

from quantapilot.errors import ErrorCode
from quantapilot.llm.provider import ModelError, ModelReply, ModelRequest

# A Retry-After longer than this is taken as this: a run should not sleep for a day on one header.
MAX_RETRY_AFTER_S = 600.0


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), capped; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class OpenAIChatProvider:
    """Chat Completions over HTTP with ``openai.AsyncOpenAI``.

    Args:
        base_url: The API's base URL, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:11434/v1``.
        api_key: The key sent as ``Authorization: Bearer``; kept out of every log and error message.
        timeout_s: Timeout of one HTTP request.
    """

    def __init__(self, *, base_url: str, api_key: str, timeout_s: float = 120.0) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)

    def __repr__(self) -> str:
        return f"OpenAIChatProvider(base_url={str(self._client.base_url)!r})"

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Send one chat completion request (see :class:`~quantapilot.llm.provider.ModelProvider`)."""
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_output_tokens is not None:
            options["max_completion_tokens"] = request.max_output_tokens
        try:
            completion = await self._client.chat.completions.create(
                model=request.model,
                messages=[{"role": m.role, "content": m.content} for m in request.messages],  # type: ignore[misc]
                **options,
            )
        except openai.APIStatusError as exc:
            raise _status_error(exc) from None
        except openai.APITimeoutError:
            raise ModelError(ErrorCode.MODEL_UNAVAILABLE, "the model service timed out", retryable=True) from None
        except openai.APIConnectionError:
            raise ModelError(ErrorCode.MODEL_UNAVAILABLE, "the model service is unreachable", retryable=True) from None
        except openai.OpenAIError as exc:
            raise ModelError(ErrorCode.MODEL_REQUEST_REJECTED, type(exc).__name__, retryable=False) from None
        if not completion.choices:
            raise ModelError(ErrorCode.MODEL_REQUEST_REJECTED, "the model answered no choice", retryable=False)
        choice = completion.choices[0]
        usage = completion.usage
        return ModelReply(
            text=choice.message.content or "",
            model=completion.model,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            response_id=completion.id,
            finish_reason=choice.finish_reason,
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.close()


def _status_error(exc: openai.APIStatusError) -> ModelError:
    status = exc.status_code
    # The provider's own message and code; the request (prompt, key) is never part of it.
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    detail = error.get("message") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = f"model service answered {status}" + (f" ({code})" if code else "")
    if isinstance(detail, str) and detail:
        message += f": {detail[:300]}"
    if status == 429 or status >= 500:
        after = retry_after_seconds(exc.response.headers.get("retry-after"))
        return ModelError(ErrorCode.MODEL_UNAVAILABLE, message, retryable=True, retry_after_s=after, status=status)
    return ModelError(ErrorCode.MODEL_REQUEST_REJECTED, message, retryable=False, status=status)
