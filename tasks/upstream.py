"""The upstream client: one request line -> one provider response, with retries.

The HTTP is tasks/http1.py, a lean keep-alive client on httptools: httpx's
own pool collapses under many concurrent connections (encode/httpx#3215),
and aiohttp, used before it, spent about twice its CPU per request
(`python -m bench.http_clients`), and that CPU bounds the engine at 0 ms
provider latency. One `UpstreamClient` per worker process shares one connection pool, and a
limiter per provider keeps at most `max_concurrency` requests in flight to
it. The slot is held for one attempt only, never across a backoff
sleep, so a waiting line does not block the others.

Retries: 429, 5xx, timeouts and connection errors are
retried with exponential backoff and full jitter, waiting at least what the
provider asks in `retry-after-ms` / `Retry-After` (seconds or an HTTP date);
other 4xx are final at once. `should_stop` (cancel, expiry) is checked before
every attempt and during backoff sleeps.

How many attempts are in flight to a provider is adaptive (tasks/aimd.py):
an AIMD window under the provider's `max_concurrency`, which shrinks on 429,
503 and timeouts, pauses the provider for a `Retry-After`, and reads the
`x-ratelimit-*` headers, so a rate-limited provider is paced instead of
hammered. It is shared by all chunks of the batch this process runs.

Request ids: every attempt gets its own `req_…` id, sent
as `X-Client-Request-Id` (OpenAI's header for a caller's id; it names one
HTTP request, so a retry is a new request with a new id). The line keeps the
id of the attempt whose response it keeps: the provider's `x-request-id`
when it sends one, else that attempt's own id, so every line with a
`response` has a string `request_id` that a provider's support can look up.

Logging (logger `batchgate.upstream`): at DEBUG one line per attempt with
the line's `custom_id`, both ids and the outcome; at WARNING one line per
line that ends in the error file after its attempts. A successful line logs
nothing above DEBUG, and the DEBUG check is made once per line, so the hot
path formats nothing unless asked to.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from storage.ids import new_http_request_id
from storage.records import ProviderRecord
from tasks.aimd import AdaptiveLimiter, Budget, budgets_from_raw
from tasks.deadlines import Deadlines
from tasks.http1 import InvalidRequestError, Pool
from tasks.run_metrics import RunMetrics
from tasks.usage import Usage, usage_of

NON_JSON_BODY: dict[str, Any] = {
    "error": {
        "message": "upstream returned a non-JSON body",
        "type": "upstream_error",
        "param": None,
        "code": "invalid_upstream_response",
    }
}
# Longest single sleep while waiting, so `should_stop` is seen within a second.
_STOP_POLL_SECONDS = 1.0

log = logging.getLogger("batchgate.upstream")


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    """The outcome of one line after all its attempts.

    `status_code` is None when no response ever arrived; then `error_code`
    says why ("timeout", "connection_error", "stopped"). A response whose body
    is not a JSON object carries NON_JSON_BODY and error_code
    "invalid_upstream_response", so `ok` is False even for a 2xx.

    `request_id` is the id of the last attempt: the provider's `x-request-id`
    if it answered with one, else the `X-Client-Request-Id` batchgate sent.
    None for "stopped", whose line is written without a response.
    """

    status_code: int | None
    body: dict[str, Any] | None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    # How long the last attempt's HTTP request took (the results table).
    latency_ms: float | None = None
    # The body's usage in the batch's shape (tasks/usage.py), for a 2xx JSON
    # answer only: computed once here, read by the chunk, the run metrics and
    # `batchgate run`'s meter instead of each summing the body again.
    usage: Usage | None = None

    @property
    def ok(self) -> bool:
        return (
            self.status_code is not None
            and 200 <= self.status_code < 300
            and self.error_code is None
        )


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the provider asks us to wait, or None if it does not say.

    `retry-after-ms` (OpenAI's, precise) wins over `Retry-After`, which is
    either seconds or an HTTP date.
    """
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    *,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))], so many
    lines rejected together do not come back together. Never less than the
    provider's `Retry-After`.
    """
    delay = float(rand() * min(cap, base * (2 ** (attempt - 1))))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_body(content: bytes) -> dict[str, Any] | None:
    """The response body as a JSON object, or None if it is anything else."""
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _transport_error_code(exc: BaseException) -> str:
    """ "timeout" or "connection_error" for an exception raised while sending."""
    return "timeout" if isinstance(exc, TimeoutError) else "connection_error"


@dataclass(slots=True)
class _Attempt:
    result: UpstreamResult
    retryable: bool
    retry_after: float | None = None
    # what the limiter learns: "ok" (2xx), "throttle" (429, 503, timeout) or None
    signal: str | None = None
    requests: Budget | None = None
    tokens: Budget | None = None


def throttles(status: int) -> bool:
    """Answers that mean "send less": rate limited or overloaded."""
    return status == 429 or status == 503


class UpstreamClient:
    """Sends request lines to providers; one per worker process, shared by all chunks.

    Cheap to construct: the connection pool is made on the first `send`, in
    the running event loop.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        timeout: float = 600.0,
        retry_after_max: float = 300.0,
        max_connections: int = 1024,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.retry_after_max = retry_after_max
        self._sleep = sleep
        self._max_connections = max_connections
        self._limiters: dict[str, AdaptiveLimiter] = {}
        # Ceilings the gateway announced while the run goes on (admin PATCH);
        # they win over the `max_concurrency` of the records a run started with.
        self._ceilings: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Pool | None = None
        self._deadlines: Deadlines | None = None
        # Counts for the gateway's /metrics, handed over with each chunk post.
        self.metrics = RunMetrics()

    def report_metrics(self) -> dict[str, Any] | None:
        """What this client counted since the last call, with each provider's
        current AIMD window (tasks/run_metrics.py); None if nothing."""
        windows = {name: lim.window.limit for name, lim in self._limiters.items()}
        return self.metrics.report(windows)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> tuple[Pool, Deadlines]:
        """Pool and limiters for the running loop.

        Connections and limiters belong to one event loop; a caller that runs
        each chunk under its own `asyncio.run` gets fresh ones instead of a
        crash (the old pool died with its loop).
        """
        # The deadline is ours (tasks/deadlines.py, around each attempt).
        self._client = Pool(max_connections=self._max_connections)
        self._limiters = {}
        self._deadlines = Deadlines(loop)
        self._loop = loop
        return self._client, self._deadlines

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> UpstreamClient:
        """Build from an object with the `Settings` upstream fields (duck-typed,
        because tasks never import the gateway)."""
        params: dict[str, Any] = {
            "max_attempts": settings.max_attempts,
            "backoff_base": settings.backoff_base_seconds,
            "backoff_max": settings.backoff_max_seconds,
            "timeout": settings.request_timeout_seconds,
        }
        params.update(overrides)
        return cls(**params)

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        if self._deadlines is not None:
            self._deadlines.close()
        self._client = self._loop = self._deadlines = None

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def limiter(self, provider: ProviderRecord) -> AdaptiveLimiter:
        """The provider's limiter; an admin change of `max_concurrency` moves its ceiling."""
        ceiling = self._ceilings.get(provider.name, provider.max_concurrency)
        limiter = self._limiters.get(provider.name)
        if limiter is None:
            limiter = self._limiters[provider.name] = AdaptiveLimiter(ceiling)
        elif limiter.window.ceiling != max(1, ceiling):
            limiter.set_ceiling(ceiling)
        return limiter

    def set_ceilings(self, ceilings: Mapping[str, int]) -> None:
        """Providers' current `max_concurrency`, as the gateway's control state
        says it: every limiter of this run takes it at once (call it in the
        run's event loop), so in-flight requests stay under it across all
        chunks as soon as those above it finish."""
        for name, ceiling in ceilings.items():
            if not isinstance(ceiling, int) or ceiling < 1:
                continue
            self._ceilings[name] = ceiling
            limiter = self._limiters.get(name)
            if limiter is not None and limiter.window.ceiling != ceiling:
                limiter.set_ceiling(ceiling)

    async def send(
        self,
        provider: ProviderRecord,
        path: str,
        body: bytes | Callable[[], bytes],
        *,
        custom_id: str | None = None,
        should_stop: Callable[[], bool] | None = None,
        gate: Callable[[], Awaitable[Any]] | None = None,
        priority: int = 0,
    ) -> UpstreamResult:
        """POST `body` (JSON bytes) to `provider.base_url + path`, retrying as above.

        `body` may be a function that makes the bytes: it is called once the
        first slot is granted, so the many lines of a chunk that queue behind
        a full window hold no encoded body meanwhile. `gate` is awaited
        before each attempt (a paused batch waits there, holding no slot).
        `priority` orders the waiters for a slot (tasks/aimd.py): the
        chunk index, so the earliest chunk in flight goes first."""
        loop = asyncio.get_running_loop()
        client, deadlines = (self._client, self._deadlines) if loop is self._loop else (None, None)
        if client is None or deadlines is None:
            client, deadlines = self._bind(loop)
        url = provider.base_url.rstrip("/") + path
        headers = {"Content-Type": "application/json"}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        if custom_id is not None:
            headers["X-Batchgate-Custom-Id"] = header_safe(custom_id)
        limiter = self.limiter(provider)
        debug = log.isEnabledFor(logging.DEBUG)

        attempt = 0
        while True:
            if should_stop is not None and should_stop():
                return _stopped(attempt)
            if gate is not None:
                await gate()
                if should_stop is not None and should_stop():
                    return _stopped(attempt)
            queued_at = time.monotonic()
            sent_at = await limiter.acquire(priority)
            if sent_at - queued_at >= _STOP_POLL_SECONDS and should_stop and should_stop():
                limiter.release()  # stopped while it queued behind a pause or a full window
                return _stopped(attempt)
            attempt += 1
            if not isinstance(body, bytes):
                body = body()
            # Each request encodes the headers anew, so one dict serves all attempts.
            client_request_id = headers["X-Client-Request-Id"] = new_http_request_id()
            try:
                outcome = await self._attempt(
                    client, deadlines, url, headers, body, attempt, client_request_id
                )
            except BaseException:
                limiter.release()
                raise
            _settle(limiter, sent_at, outcome)
            result = outcome.result
            metrics = self.metrics
            # `_attempt` timed the request: every result it makes has its latency.
            metrics.attempt(provider.name, result.status_code, (result.latency_ms or 0.0) / 1000.0)
            final = not outcome.retryable or attempt >= self.max_attempts
            if debug:
                _log_attempt(provider.name, custom_id, client_request_id, result, final)
            if final:
                if not result.ok:
                    log_failed_line(
                        provider.name,
                        custom_id,
                        result.request_id,
                        client_request_id,
                        result.status_code,
                        result.error_code,
                        attempt,
                    )
                if result.usage is not None:
                    model = result.body.get("model") if result.body is not None else None
                    metrics.add_tokens(model if isinstance(model, str) else "unknown", result.usage)
                return result
            retry_after = outcome.retry_after
            if retry_after is not None:
                retry_after = min(retry_after, self.retry_after_max)
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, retry_after)
            if await self._wait(delay, should_stop):
                return _stopped(attempt)
            metrics.retry(provider.name)

    async def _attempt(
        self,
        client: Pool,
        deadlines: Deadlines,
        url: str,
        headers: dict[str, str],
        body: bytes,
        attempt: int,
        client_request_id: str,
    ) -> _Attempt:
        """One HTTP request. Its result's `request_id` is the provider's
        `x-request-id`, else `client_request_id` (what this attempt sent)."""
        started = time.monotonic()
        try:
            with deadlines.within(self.timeout):
                response = await client.post(url, headers, body)
        except InvalidRequestError as exc:
            return _Attempt(
                UpstreamResult(
                    None,
                    None,
                    client_request_id,
                    "connection_error",
                    f"cannot send to the provider: {exc}",
                    attempt,
                    _elapsed_ms(started),
                ),
                False,
            )
        except (TimeoutError, OSError) as exc:
            code = _transport_error_code(exc)
            message = (
                f"upstream request timed out after {self.timeout:g} s"
                if code == "timeout"
                else f"could not connect to upstream: {type(exc).__name__}: {exc}"
            )
            signal = "throttle" if code == "timeout" else None
            return _Attempt(
                UpstreamResult(
                    None, None, client_request_id, code, message, attempt, _elapsed_ms(started)
                ),
                True,
                signal=signal,
            )

        status = response.status
        parsed = parse_body(response.body)
        error_code = None
        if parsed is None:
            parsed = NON_JSON_BODY
            error_code = "invalid_upstream_response"
        request_id = response.headers.get("x-request-id") or client_request_id
        ok = 200 <= status < 300
        result = UpstreamResult(
            status,
            parsed,
            request_id,
            error_code,
            None,
            attempt,
            _elapsed_ms(started),
            usage_of(parsed) if ok and error_code is None else None,
        )
        if ok:
            return _Attempt(result, False, None, "ok", *budgets_from_raw(response.raw_headers))
        if not is_retryable_status(status):
            return _Attempt(result, False)
        signal = "throttle" if throttles(status) else None
        return _Attempt(result, True, parse_retry_after(response.headers), signal)

    async def _wait(self, delay: float, should_stop: Callable[[], bool] | None) -> bool:
        """Sleep `delay` seconds; True if `should_stop` became true meanwhile."""
        if should_stop is None:
            await self._sleep(delay)
            return False
        remaining = delay
        while remaining > 0:
            step = min(remaining, _STOP_POLL_SECONDS)
            await self._sleep(step)
            remaining -= step
            if should_stop():
                return True
        return False


# What a custom_id may hold and still go out as a header value as it is.
_HEADER_SAFE = frozenset(string.ascii_letters + string.digits + string.punctuation + " ")


def header_safe(custom_id: str) -> str:
    """The custom_id as the `X-Batchgate-Custom-Id` header value: as it is if
    plain printable ASCII, else percent-encoded (a line break would end the
    header block, and not every server reads UTF-8 headers)."""
    if _HEADER_SAFE.issuperset(custom_id):
        return custom_id
    return quote(custom_id, safe=string.punctuation.replace("%", "") + " ")


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 3)


def _settle(limiter: AdaptiveLimiter, sent_at: float, outcome: _Attempt) -> None:
    """Give the slot back, telling the limiter what the attempt taught."""
    if outcome.signal == "ok":
        limiter.on_success(sent_at, outcome.requests, outcome.tokens)
    elif outcome.signal == "throttle":
        limiter.on_throttle(sent_at, outcome.retry_after)
    else:
        limiter.release()


def _log_attempt(
    provider: str,
    custom_id: str | None,
    client_request_id: str,
    result: UpstreamResult,
    final: bool,
) -> None:
    """DEBUG: one line per HTTP attempt, so an output line's `request_id`
    (or the `X-Client-Request-Id` the provider saw) leads back to its line."""
    log.debug(
        "attempt %d provider=%s custom_id=%s client_request_id=%s request_id=%s "
        "status=%s error=%s %s",
        result.attempts,
        provider,
        custom_id,
        client_request_id,
        result.request_id,
        result.status_code,
        result.error_code,
        "final" if final else "retrying",
    )


def log_failed_line(
    provider: str | None,
    custom_id: str | None,
    request_id: str | None,
    client_request_id: str | None,
    status: int | None,
    error: str | None,
    attempts: int,
) -> None:
    """WARNING: a line that goes to the error file, with the ids to trace it.
    Codes and ids only: a provider's error message may quote the request."""
    log.warning(
        "line failed provider=%s custom_id=%s request_id=%s client_request_id=%s "
        "status=%s error=%s attempts=%d",
        provider,
        custom_id,
        request_id,
        client_request_id,
        status,
        error,
        attempts,
    )


def _stopped(attempts: int) -> UpstreamResult:
    return UpstreamResult(
        None,
        None,
        None,
        "stopped",
        "the batch stopped (cancelled or expired) before this request ran",
        attempts,
    )
