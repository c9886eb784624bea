"""The upstream client against the mock provider, served by uvicorn on 127.0.0.1.

Retries, backoff, Retry-After, timeouts, connection errors, the per-provider
concurrency limit and cooperative stop, as a batch line would see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest

from batchgate.mock_provider.server import MockConfig, serve_mock_in_thread
from storage.records import ProviderRecord
from tasks.upstream import (
    NON_JSON_BODY,
    UpstreamClient,
    backoff_delay,
    parse_body,
    parse_retry_after,
)

CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})

MockFactory = Callable[..., str]


@pytest.fixture
def mock() -> Iterator[MockFactory]:
    """Start a fresh mock per call (`mock(rate_429=0.3)`) and stop them all after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **fields: stack.enter_context(serve_mock_in_thread(MockConfig(**fields)))


def stats(base_url: str) -> dict[str, Any]:
    return httpx.get(base_url.removesuffix("/v1") + "/stats").json()


def client_request_ids(base_url: str) -> dict[str, list[str]]:
    """The `X-Client-Request-Id` of every attempt the mock received, per custom id."""
    return httpx.get(base_url.removesuffix("/v1") + "/stats/client-request-ids").json()


def provider(base_url: str, **fields: Any) -> ProviderRecord:
    return ProviderRecord(
        name=fields.pop("name", "mock"),
        base_url=base_url,
        api_key=fields.pop("api_key", "sk-test"),
        **fields,
    )


def client(**params: Any) -> UpstreamClient:
    defaults: dict[str, Any] = {
        "max_attempts": 3,
        "backoff_base": 0.001,
        "backoff_max": 0.01,
        "timeout": 10.0,
    }
    return UpstreamClient(**{**defaults, **params})


async def test_success_returns_parsed_body_and_request_id(mock: MockFactory) -> None:
    url = mock()
    async with client() as upstream:
        result = await upstream.send(provider(url), "/chat/completions", CHAT, custom_id="line-1")
    assert result.ok and result.status_code == 200 and result.attempts == 1
    assert result.body is not None and result.body["model"] == "gpt-4o-mini"
    assert result.body["usage"]["total_tokens"] > 0
    assert result.request_id and result.request_id.startswith("req_")
    assert stats(url)["custom_ids_ok"] == {"line-1": 1}


async def test_provider_without_request_id_gets_ours_which_it_was_sent(
    mock: MockFactory,
) -> None:
    """Many OpenAI-compatible servers send no `x-request-id`: the line then
    keeps batchgate's own id, the one the provider saw as `X-Client-Request-Id`."""
    url = mock(missing_request_id_rate=1.0)
    async with client() as upstream:
        result = await upstream.send(provider(url), "/chat/completions", CHAT, custom_id="line-1")
    assert result.ok
    assert isinstance(result.request_id, str) and result.request_id.startswith("req_")
    assert len(result.request_id) == len("req_") + 24
    assert client_request_ids(url) == {"line-1": [result.request_id]}


async def test_provider_request_id_wins_over_ours(mock: MockFactory) -> None:
    url = mock()
    async with client() as upstream:
        result = await upstream.send(provider(url), "/chat/completions", CHAT, custom_id="line-1")
    (sent,) = client_request_ids(url)["line-1"]
    assert result.request_id is not None and result.request_id.startswith("req_mock")
    assert sent.startswith("req_") and sent != result.request_id


async def test_each_attempt_has_its_own_id_and_the_line_keeps_the_last(
    mock: MockFactory,
) -> None:
    """A retry is a new HTTP request, so a new `X-Client-Request-Id`; the line
    keeps the id of the attempt whose answer it keeps, error answers too."""
    url = mock(failure_rate=1.0, missing_request_id_rate=1.0)
    async with client(max_attempts=3) as upstream:
        result = await upstream.send(provider(url), "/chat/completions", CHAT, custom_id="line-1")
    sent = client_request_ids(url)["line-1"]
    assert result.status_code == 500 and result.attempts == 3
    assert len(set(sent)) == 3
    assert result.request_id == sent[-1]


async def test_attempts_and_failed_lines_are_logged_with_their_ids(
    mock: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """DEBUG names every attempt's ids; WARNING names a line that failed, with
    the id its error line carries; a line that succeeded logs nothing above DEBUG."""
    caplog.set_level(logging.DEBUG, logger="batchgate.upstream")
    url = mock(failure_rate=1.0, missing_request_id_rate=1.0)
    async with client(max_attempts=2) as upstream:
        failed = await upstream.send(provider(url), "/chat/completions", CHAT, custom_id="bad")
    sent = client_request_ids(url)["bad"]
    attempts = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(attempts) == 2
    assert all(
        "custom_id=bad" in m and f"client_request_id={i}" in m
        for m, i in zip(attempts, sent, strict=True)
    )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"request_id={failed.request_id} " in warning and "custom_id=bad" in warning
    assert "status=500" in warning and "attempts=2" in warning

    caplog.clear()
    url = mock()
    async with client() as upstream:
        await upstream.send(provider(url), "/chat/completions", CHAT, custom_id="good")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


async def test_random_429s_all_succeed_after_retries(mock: MockFactory) -> None:
    url = mock(rate_429=0.3, retry_after=0, seed=7)
    async with client(max_attempts=12) as upstream:
        results = await asyncio.gather(
            *[
                upstream.send(provider(url), "/chat/completions", CHAT, custom_id=f"c{i}")
                for i in range(60)
            ]
        )
    assert all(r.ok for r in results)
    seen = stats(url)
    assert seen["status_429"] > 0
    assert sum(r.attempts for r in results) == seen["total"]
    assert max(r.attempts for r in results) > 1
    # Each line succeeded exactly once, whatever its retries.
    assert seen["custom_ids_ok"] == {f"c{i}": 1 for i in range(60)}


async def test_retry_after_is_waited_at_least(mock: MockFactory) -> None:
    url = mock(rate_429=1.0, retry_after=2)
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async with client(sleep=record) as upstream:
        result = await upstream.send(provider(url), "/chat/completions", CHAT)
    assert result.status_code == 429 and result.attempts == 3
    assert result.body is not None and result.body["error"]["code"] == "rate_limit_exceeded"
    assert len(waits) == 2 and all(w >= 2.0 for w in waits)


async def test_5xx_retried_then_returned(mock: MockFactory) -> None:
    url = mock(failure_rate=1.0)
    async with client() as upstream:
        result = await upstream.send(provider(url), "/chat/completions", CHAT)
    assert result.status_code == 500 and not result.ok
    assert result.attempts == 3
    assert result.body is not None and result.body["error"]["message"]
    assert stats(url)["status_5xx"] == 3


async def test_other_4xx_is_final_at_once(mock: MockFactory) -> None:
    url = mock()
    async with client() as upstream:
        result = await upstream.send(
            provider(url), "/chat/completions", orjson.dumps({"messages": []})
        )
    assert result.status_code == 400 and result.attempts == 1
    assert result.body is not None and result.body["error"]["param"] == "model"
    assert stats(url)["total"] == 1


async def test_wrong_api_key_is_401_not_retried(mock: MockFactory) -> None:
    url = mock(api_key="sk-right")
    async with client() as upstream:
        good = await upstream.send(
            provider(url, api_key="sk-right"),
            "/embeddings",
            orjson.dumps({"model": "e", "input": "x"}),
        )
        bad = await upstream.send(
            provider(url, api_key="sk-wrong"),
            "/embeddings",
            orjson.dumps({"model": "e", "input": "x"}),
        )
    assert good.ok
    assert bad.status_code == 401 and bad.attempts == 1
    assert "sk-wrong" not in repr(bad)


async def test_timeout_retried_then_reported(mock: MockFactory) -> None:
    url = mock(latency_ms=1000)
    async with client(timeout=0.2, max_attempts=2) as upstream:
        result = await upstream.send(provider(url), "/chat/completions", CHAT)
    assert result.status_code is None and result.body is None
    assert result.error_code == "timeout" and result.attempts == 2
    assert result.error_message and "timed out" in result.error_message
    assert stats(url)["total"] == 2


async def test_connection_refused_is_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client() as upstream:
        result = await upstream.send(
            provider(f"http://127.0.0.1:{port}/v1"), "/chat/completions", CHAT
        )
    assert result.status_code is None
    assert result.error_code == "connection_error" and result.attempts == 3


async def test_provider_concurrency_limit_is_respected(mock: MockFactory) -> None:
    limited, wide = mock(latency_ms=50), mock(latency_ms=50)
    async with client() as upstream:
        await asyncio.gather(
            *[
                upstream.send(provider(limited, max_concurrency=3), "/chat/completions", CHAT)
                for _ in range(15)
            ]
        )
        await asyncio.gather(
            *[
                upstream.send(
                    provider(wide, name="wide", max_concurrency=10), "/chat/completions", CHAT
                )
                for _ in range(15)
            ]
        )
    assert stats(limited)["max_in_flight"] <= 3
    assert stats(wide)["max_in_flight"] > 3  # the mock does see concurrency when allowed


async def test_should_stop_before_first_attempt_sends_nothing(mock: MockFactory) -> None:
    url = mock()
    async with client() as upstream:
        result = await upstream.send(
            provider(url), "/chat/completions", CHAT, should_stop=lambda: True
        )
    assert result.error_code == "stopped" and result.attempts == 0
    assert stats(url)["total"] == 0


async def test_should_stop_between_retries(mock: MockFactory) -> None:
    url = mock(rate_429=1.0, retry_after=0)
    checks = iter([False, True])
    async with client(max_attempts=5) as upstream:
        result = await upstream.send(
            provider(url), "/chat/completions", CHAT, should_stop=lambda: next(checks, True)
        )
    assert result.error_code == "stopped" and result.attempts == 1
    assert stats(url)["total"] == 1


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    now = datetime(2030, 1, 1, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now.timestamp()) == 30.0
    assert parse_retry_after({"retry-after": "-5"}) == 0.0


def test_backoff_grows_exponentially_is_capped_and_honours_retry_after() -> None:
    top = lambda: 1.0  # noqa: E731 - the largest jitter
    assert [backoff_delay(n, 0.5, 3.0, rand=top) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert backoff_delay(1, 0.5, 3.0, rand=lambda: 0.0) == 0.0  # full jitter reaches zero
    assert backoff_delay(1, 0.5, 3.0, retry_after=7.0, rand=top) == 7.0


def test_non_json_body_becomes_error_envelope() -> None:
    assert parse_body(b"<html>bad gateway</html>") is None
    assert parse_body(b"[1, 2]") is None
    assert parse_body(b'{"ok": true}') == {"ok": True}
    assert NON_JSON_BODY["error"]["message"] == "upstream returned a non-JSON body"


async def test_server_hanging_up_is_a_retried_connection_error() -> None:
    """A provider that drops the connection is not mistaken for a timeout."""
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client() as upstream:
            result = await upstream.send(
                provider(f"http://127.0.0.1:{port}/v1"), "/chat/completions", CHAT
            )
    finally:
        server.close()
        await server.wait_closed()
    assert result.status_code is None
    assert result.error_code == "connection_error" and result.attempts == 3
    assert accepted == 3


def test_one_client_serves_successive_event_loops(mock: MockFactory) -> None:
    """A worker that runs each chunk under its own `asyncio.run` keeps working."""
    url = mock()
    upstream = client()

    async def one(close: bool) -> bool:
        result = await upstream.send(provider(url), "/chat/completions", CHAT)
        if close:
            await upstream.aclose()
        return result.ok

    assert asyncio.run(one(close=False))
    assert asyncio.run(one(close=True))
    assert stats(url)["total"] == 2
