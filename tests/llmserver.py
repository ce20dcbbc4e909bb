"""A loopback server speaking OpenAI's Chat Completions API, the allowed stand-in for a model provider.

It implements ``POST /v1/chat/completions`` as OpenAI documents it (API reference, "Create chat completion"):
the request must carry ``Authorization: Bearer <key>`` and a JSON body with ``model`` and a non-empty
``messages`` list of ``{role, content}``; the answer is a ``chat.completion`` object (``id``, ``object``,
``created``, ``model``, ``choices[].message``, ``choices[].finish_reason``, ``usage``). Errors are
``{"error": {"message", "type", "param", "code"}}`` with the documented statuses (400 invalid request, 401
invalid key, 429 rate limit with ``Retry-After``, 500/503 server errors). Every request is recorded so tests
assert on what the client sent; answers are scripted in order. Every request is checked: one outside the contract
(or one no answer was scripted for) is answered 400 (500) and noted in ``invalid``, and leaving
:func:`chat_server` with a note there fails the test, whether or not the test looked.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ROLES = {"system", "developer", "user", "assistant", "tool"}
# Request fields of the documented contract this server accepts; anything else is an invalid request.
KNOWN_FIELDS = {
    "model",
    "messages",
    "temperature",
    "max_completion_tokens",
    "max_tokens",
    "top_p",
    "n",
    "stop",
    "seed",
    "user",
    "stream",
    "response_format",
}


@dataclass
class Answer:
    """One scripted answer: a completion (``content``) or an error (``status`` >= 400)."""

    content: str = ""
    status: int = 200
    prompt_tokens: int | None = None  # None: counted as len(text) // 4 of the prompt, as a tokenizer would roughly
    completion_tokens: int | None = None
    retry_after: str | None = None
    error_type: str = "server_error"
    error_code: str | None = None
    finish_reason: str = "stop"


def reply(content: str, *, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> Answer:
    """A successful completion."""
    return Answer(content=content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def rate_limited(retry_after: str = "1") -> Answer:
    """A 429 as OpenAI sends it."""
    return Answer(
        status=429,
        retry_after=retry_after,
        error_type="requests",
        error_code="rate_limit_exceeded",
        content="Rate limit reached for requests",
    )


def failure(
    status: int, message: str = "failure", *, error_type: str = "server_error", code: str | None = None
) -> Answer:
    """Any error answer."""
    return Answer(status=status, content=message, error_type=error_type, error_code=code)


@dataclass
class Recorded:
    """A request as received."""

    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class ChatServer:
    """State of one server: the key it accepts, the scripted answers and what it received."""

    api_key: str
    answers: list[Answer] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    base_url: str = ""
    fallback: Answer | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def script(self, *answers: Answer) -> None:
        """Queue answers, served in order."""
        self.answers.extend(answers)

    @property
    def ok_requests(self) -> list[Recorded]:
        """The requests answered with a completion."""
        return [r for r in self.requests if r.status == 200]

    def _error(
        self,
        status: int,
        message: str,
        *,
        type_: str,
        code: str | None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        return web.json_response(body, status=status, headers=headers)

    def _problem(self, request: web.Request, body: Any) -> str | None:
        if request.content_type != "application/json":
            return f"content type {request.content_type}"
        if not isinstance(body, dict):
            return "body is not an object"
        unknown = set(body) - KNOWN_FIELDS
        if unknown:
            return f"unknown fields {sorted(unknown)}"
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "model must be a non-empty string"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty array"
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return f"bad message role in {m!r:.80}"
            if not isinstance(m.get("content"), str | list):
                return "message content must be a string or an array of parts"
        t = body.get("temperature")
        if t is not None and (not isinstance(t, int | float) or not 0 <= t <= 2):
            return "temperature must be between 0 and 2"
        mct = body.get("max_completion_tokens")
        if mct is not None and (not isinstance(mct, int) or mct < 1):
            return "max_completion_tokens must be a positive integer"
        if body.get("stream"):
            return "this server does not stream"
        return None

    async def handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        auth = headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            self.requests.append(Recorded(headers, body if isinstance(body, dict) else {}, 401))
            return self._error(
                401, "Incorrect API key provided.", type_="invalid_request_error", code="invalid_api_key"
            )
        problem = self._problem(request, body)
        if problem is not None:
            self.invalid.append(problem)
            self.requests.append(Recorded(headers, body if isinstance(body, dict) else {}, 400))
            return self._error(400, problem, type_="invalid_request_error", code=None)
        answer = self.answers.pop(0) if self.answers else self.fallback
        if answer is None:
            self.invalid.append("no scripted answer left")
            self.requests.append(Recorded(headers, body, 500))
            return self._error(500, "no scripted answer left", type_="server_error", code=None)
        self.requests.append(Recorded(headers, body, answer.status))
        if answer.status >= 400:
            extra = {"Retry-After": answer.retry_after} if answer.retry_after else None
            return self._error(
                answer.status, answer.content, type_=answer.error_type, code=answer.error_code, headers=extra
            )
        prompt_text = "".join(m["content"] for m in body["messages"] if isinstance(m["content"], str))
        prompt_tokens = answer.prompt_tokens if answer.prompt_tokens is not None else len(prompt_text) // 4 + 1
        completion_tokens = (
            answer.completion_tokens if answer.completion_tokens is not None else len(answer.content) // 4 + 1
        )
        return web.json_response(
            {
                "id": f"chatcmpl-{next(self._ids):06d}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": answer.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )


@asynccontextmanager
async def chat_server(api_key: str = "sk-test-secret-key-0123456789") -> AsyncIterator[ChatServer]:
    """Serve the Chat Completions API on a free loopback port; ``server.base_url`` ends in ``/v1``.

    Raises:
        AssertionError: On leaving, when a request broke the contract or found no scripted answer.
    """
    server = ChatServer(api_key=api_key)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()
    # Not in `finally`: a test that failed already keeps its own error.
    if server.invalid:
        raise AssertionError(f"the loopback model server received requests outside the contract: {server.invalid}")
