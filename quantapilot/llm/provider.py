"""The model provider interface: one chat call in, one answer with its token usage out.

Providers never retry: the activity that calls one owns the retries (its Temporal retry policy), so a failure is
reported as a :class:`ModelError` that says whether it is worth another attempt and, for a provider that said so
(``Retry-After``), when.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.errors import ErrorCode

Role = Literal["system", "user", "assistant"]


class ChatMessage(BaseModel):
    """One message of the conversation sent to a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


class ModelRequest(BaseModel):
    """What a step asks of a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)


class ModelReply(BaseModel):
    """A model's answer and what it cost in tokens (as the provider counted them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    model: str
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    response_id: str | None = None
    finish_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class ModelError(Exception):
    """A provider call that failed.

    Args:
        code: Stable error code (:class:`~quantapilot.errors.ErrorCode`).
        message: What happened; never contains the API key or the prompt.
        retryable: Whether another attempt may succeed (429, 5xx, timeouts, connection errors).
        retry_after_s: The delay the provider asked for (``Retry-After``), when it gave one.
        status: The HTTP status, when there was a response.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status = status


@runtime_checkable
class ModelProvider(Protocol):
    """A chat model service (the OpenAI-compatible one, or one an entry point registers)."""

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Send one request and return the answer.

        Raises:
            ModelError: The call failed (transient or permanent, see :attr:`ModelError.retryable`).
        """
        ...

    async def close(self) -> None:
        """Release the provider's connections."""
        ...
