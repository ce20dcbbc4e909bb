"""The OpenAI-compatible provider against the loopback Chat Completions server."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest

from quantapilot.errors import ErrorCode
from quantapilot.lifecycle.agents.plugins import load_agents
from quantapilot.llm import ChatMessage, ModelError, ModelPrice, ModelRequest, cost_of, unpriced
from quantapilot.llm.openai_chat import OpenAIChatProvider, retry_after_seconds
from quantapilot.llm.registry import make_provider
from quantapilot.settings import Settings
from tests.llmserver import chat_server, failure, rate_limited, reply

KEY = "sk-test-secret-key-0123456789"


def _request(**kw) -> ModelRequest:
    return ModelRequest(
        model="dev-model",
        messages=[ChatMessage(role="system", content="You write diffs."), ChatMessage(role="user", content="hi")],
        **kw,
    )


async def test_provider_sends_the_documented_request_and_reads_usage() -> None:
    async with chat_server(KEY) as server:
        server.script(reply("the answer", prompt_tokens=11, completion_tokens=7))
        provider = OpenAIChatProvider(base_url=server.base_url, api_key=KEY)
        try:
            answer = await provider.complete(_request(temperature=0.2, max_output_tokens=50))
        finally:
            await provider.close()
    assert answer.text == "the answer"
    assert (answer.input_tokens, answer.output_tokens, answer.total_tokens) == (11, 7, 18)
    assert answer.model == "dev-model" and answer.response_id == "chatcmpl-000001"
    assert server.invalid == []
    (req,) = server.requests
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.body["model"] == "dev-model"
    assert req.body["messages"] == [
        {"role": "system", "content": "You write diffs."},
        {"role": "user", "content": "hi"},
    ]
    assert req.body["temperature"] == 0.2 and req.body["max_completion_tokens"] == 50


async def test_provider_429_is_transient_with_retry_after_and_is_not_retried_by_the_client() -> None:
    async with chat_server(KEY) as server:
        server.script(rate_limited("7"), reply("late"))
        provider = OpenAIChatProvider(base_url=server.base_url, api_key=KEY)
        try:
            with pytest.raises(ModelError) as err:
                await provider.complete(_request())
            # max_retries=0: one request reached the server; the activity's retry policy owns the next one.
            assert len(server.requests) == 1
            answer = await provider.complete(_request())
        finally:
            await provider.close()
    assert err.value.retryable and err.value.code == ErrorCode.MODEL_UNAVAILABLE
    assert err.value.retry_after_s == 7.0 and err.value.status == 429
    assert answer.text == "late"


@pytest.mark.parametrize(
    ("status", "retryable", "code"),
    [
        (500, True, ErrorCode.MODEL_UNAVAILABLE),
        (503, True, ErrorCode.MODEL_UNAVAILABLE),
        (400, False, ErrorCode.MODEL_REQUEST_REJECTED),
        (404, False, ErrorCode.MODEL_REQUEST_REJECTED),
        (422, False, ErrorCode.MODEL_REQUEST_REJECTED),
    ],
)
async def test_provider_maps_statuses(status: int, retryable: bool, code: ErrorCode) -> None:
    async with chat_server(KEY) as server:
        server.script(failure(status, "nope", code="some_code"))
        provider = OpenAIChatProvider(base_url=server.base_url, api_key=KEY)
        try:
            with pytest.raises(ModelError) as err:
                await provider.complete(_request())
        finally:
            await provider.close()
    assert (err.value.retryable, err.value.code, err.value.status) == (retryable, code, status)
    assert "some_code" in err.value.message and err.value.retry_after_s is None


async def test_provider_wrong_key_is_permanent_and_the_key_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    wrong = "sk-wrong-key-that-must-not-leak-42"
    caplog.set_level(logging.DEBUG)
    async with chat_server(KEY) as server:
        settings = Settings(model_base_url=server.base_url, model_api_key=wrong)
        provider = make_provider(settings)
        try:
            with pytest.raises(ModelError) as err:
                await provider.complete(_request())
        finally:
            await provider.close()
    assert err.value.status == 401 and not err.value.retryable
    assert server.requests[0].headers["authorization"] == f"Bearer {wrong}"  # it was sent...
    logged = caplog.text
    assert "chat/completions" in logged  # ...and the HTTP client logged the request at DEBUG
    for where in (logged, str(err.value), repr(provider), repr(settings), str(settings.model_dump())):
        assert wrong not in where


async def test_provider_unreachable_is_transient() -> None:
    async with chat_server(KEY) as server:
        url = server.base_url
    provider = OpenAIChatProvider(base_url=url, api_key=KEY, timeout_s=5)
    try:
        with pytest.raises(ModelError) as err:
            await provider.complete(_request())
    finally:
        await provider.close()
    assert err.value.retryable and err.value.code == ErrorCode.MODEL_UNAVAILABLE


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("99999") == 600.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


class _Echo:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def complete(self, request: ModelRequest):  # pragma: no cover - not called
        raise NotImplementedError

    async def close(self) -> None:
        pass


def test_registry_entry_point_registers_a_provider_beside_stage_agents() -> None:
    eps = [EntryPoint(name="provider.echo", value="tests.llm.test_provider:_Echo", group="quantapilot.agents")]
    provider = make_provider(Settings(model_provider="echo"), entry_points=eps)
    assert isinstance(provider, _Echo)
    # The lifecycle loader reads the same group and leaves provider entries alone.
    assert set(load_agents(entry_points=eps)) == {"opportunity", "target", "realization", "expansion"}
    with pytest.raises(ModelError) as err:
        make_provider(Settings(model_provider="missing"), entry_points=eps)
    assert err.value.code == ErrorCode.MODEL_NOT_CONFIGURED
    with pytest.raises(ModelError):
        make_provider(Settings())  # openai without QP_MODEL_BASE_URL


def test_prices_per_million_tokens() -> None:
    table = {"m": ModelPrice(input_per_mtok=2.0, output_per_mtok=8.0)}
    assert cost_of("m", 1_000_000, 500_000, table) == pytest.approx(6.0)
    assert cost_of("other", 1, 1, table) is None
    assert unpriced(["m", "x", "x", "a"], table) == ["a", "x"]


def test_prices_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QP_MODEL_PRICES", '{"gpt-x": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}')
    monkeypatch.setenv("QP_MODEL_API_KEY", KEY)
    settings = Settings()
    assert settings.model_prices["gpt-x"].output_per_mtok == 1.5
    assert KEY not in repr(settings)


async def test_loopback_server_fails_the_test_that_sent_a_request_outside_the_contract() -> None:
    seen: list[str] = []

    async def unscripted_call() -> None:
        async with chat_server(KEY) as server:
            provider = OpenAIChatProvider(base_url=server.base_url, api_key=KEY)
            try:
                with pytest.raises(ModelError) as err:
                    await provider.complete(_request())  # nothing scripted
            finally:
                await provider.close()
            seen.extend([str(err.value.status), *server.invalid])

    # The test body ended without looking at server.invalid: leaving the server fails it all the same.
    with pytest.raises(AssertionError, match="outside the contract"):
        await unscripted_call()
    assert seen == ["500", "no scripted answer left"]
