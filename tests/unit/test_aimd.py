"""The adaptive limiter (tasks/aimd.py): the AIMD rules and header parsing
with the clock passed in, the asyncio semaphore they drive, and the upstream
client pacing itself against the mock's rate limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import orjson
import pytest

from batchgate.mock_provider.server import MockConfig, format_duration, serve_mock_in_thread
from storage.records import ProviderRecord
from tasks.aimd import (
    BETA,
    AdaptiveLimiter,
    Budget,
    Window,
    budgets_from_raw,
    parse_budgets,
    parse_duration,
)
from tasks.upstream import UpstreamClient

# -- headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        ("250us", 0.00025),
        (" 2s ", 2.0),
    ],
)
def test_reset_durations_in_openai_format(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "5x", "1s garbage", "s"])
def test_unreadable_reset_is_none(text: str | None) -> None:
    assert parse_duration(text) is None


def test_mock_durations_read_back() -> None:
    for seconds in (0.005, 0.25, 1.5, 61.0, 360.0):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-3)


def test_budgets_from_headers() -> None:
    requests, tokens = parse_budgets(
        {
            "x-ratelimit-limit-requests": "200",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-remaining-tokens": "5000",
        }
    )
    assert requests == Budget(0, 1.0, 200)
    assert tokens == Budget(5000, None, None)
    assert parse_budgets({}) == (None, None)
    assert parse_budgets({"x-ratelimit-remaining-requests": "many"}) == (None, None)


def test_budgets_from_raw_headers_any_case() -> None:
    raw = [
        (b"Content-Type", b"application/json"),
        (b"X-RateLimit-Remaining-Requests", b"7"),
        (b"x-ratelimit-reset-requests", b"6m0s"),
    ]
    assert budgets_from_raw(raw) == (Budget(7, 360.0, None), None)
    assert budgets_from_raw([(b"x-request-id", b"req_1")]) == (None, None)


def test_wait_for_one_unit() -> None:
    assert Budget(0, 1.0, 200).wait_for_one() == pytest.approx(1 / 200)
    assert Budget(5, 1.0, 200).wait_for_one() == 0.0
    assert Budget(0, 2.0).wait_for_one() == 2.0  # no limit: wait the whole reset
    assert Budget(0, None, 200).wait_for_one() == 0.0


# -- the window -------------------------------------------------------------------


def grow(window: Window, successes: int, now: float = 1.0) -> None:
    """`successes` 2xx answers, each while the window was full."""
    for _ in range(successes):
        window.on_success(now - 0.1, now, window.limit)


def test_slow_start_doubles_per_round_trip_up_to_the_ceiling() -> None:
    window = Window(ceiling=20, initial=4)
    grow(window, 4)
    assert window.limit == 8
    grow(window, 8)
    assert window.limit == 16
    grow(window, 50)
    assert window.limit == 20


def test_throttle_shrinks_once_per_round_trip() -> None:
    window = Window(ceiling=64, initial=20)
    window.on_throttle(sent_at=0.9, now=1.0)
    assert window.size == pytest.approx(20 * BETA)
    window.on_throttle(sent_at=0.95, now=1.01)  # in flight before the decrease: same signal
    assert window.size == pytest.approx(20 * BETA)
    window.on_throttle(sent_at=1.02, now=1.1)  # sent after it: a new signal
    assert window.size == pytest.approx(20 * BETA * BETA)


def test_after_a_throttle_growth_is_one_per_round_trip() -> None:
    window = Window(ceiling=64, initial=10)
    window.on_throttle(sent_at=0.0, now=0.1)
    size = window.size
    grow(window, window.limit)
    assert size + 0.8 < window.size < size + 1.2


def test_window_never_below_one() -> None:
    window = Window(ceiling=64, initial=2)
    for step in range(10):
        window.on_throttle(sent_at=float(step), now=step + 0.5)
    assert window.limit == 1


def test_a_window_that_was_not_full_does_not_grow() -> None:
    window = Window(ceiling=64, initial=8)
    for _ in range(20):
        window.on_success(0.9, 1.0, in_flight=3)
    assert window.limit == 8


def test_slow_answers_do_not_grow_the_window() -> None:
    window = Window(ceiling=64, initial=8)
    grow(window, 1)  # 0.1 s: the usual latency
    size = window.size
    window.on_success(sent_at=0.0, now=5.0, in_flight=window.limit)
    assert window.size == size


def test_ceiling_change_caps_the_window() -> None:
    window = Window(ceiling=64, initial=32)
    window.set_ceiling(10)
    assert window.limit == 10
    grow(window, 30)
    assert window.limit == 10


def test_retry_after_pauses_the_provider() -> None:
    window = Window(ceiling=64)
    window.on_throttle(sent_at=9.9, now=10.0, retry_after=2.0)
    assert window.pause_left(10.0) == pytest.approx(2.0)
    assert window.pause_left(12.5) == 0.0


def test_spent_request_budget_pauses_from_when_it_was_sent() -> None:
    window = Window(ceiling=64)
    empty = Budget(remaining=0, reset=1.0, limit=10)  # next request in 0.1 s
    window.on_success(sent_at=5.0, now=5.02, in_flight=1, requests=empty)
    assert window.pause_left(5.02) == pytest.approx(0.08)
    late = Window(ceiling=64)  # the answer took longer than the refill: nothing to wait
    late.on_success(sent_at=5.0, now=5.5, in_flight=1, requests=empty)
    assert late.pause_left(5.5) == 0.0


def test_low_remaining_budget_stops_growth() -> None:
    window = Window(ceiling=64, initial=8)
    for _ in range(20):
        window.on_success(0.9, 1.0, in_flight=8, requests=Budget(3, 0.5, 200))
    assert window.limit == 8
    for _ in range(20):
        window.on_success(0.9, 1.0, in_flight=8, tokens=Budget(10, 60.0, 100_000))
    assert window.limit == 8


# -- the asyncio adapter ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_limiter_admits_up_to_the_window_in_order() -> None:
    limiter = AdaptiveLimiter(ceiling=64, initial=2, clock=FakeClock())
    await limiter.acquire()
    await limiter.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    waiters = [asyncio.create_task(wait(n)) for n in range(3)]
    await settle()
    assert order == [] and limiter.in_flight == 2
    limiter.release()
    await settle()
    assert order == [0]
    limiter.release()
    limiter.release()
    await settle()
    assert order == [0, 1, 2] and limiter.in_flight == 2
    await asyncio.gather(*waiters)


async def test_cancelled_waiter_does_not_keep_a_slot() -> None:
    limiter = AdaptiveLimiter(ceiling=64, initial=1, clock=FakeClock())
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await settle()
    first.cancel()
    limiter.release()
    await settle()
    assert second.done() and limiter.in_flight == 1
    assert first.cancelled()


async def test_the_earliest_chunk_gets_a_freed_slot_first() -> None:
    """Waiters of chunk 1 queued before those of chunk 0 still go after them,
    so chunk 0 finishes while chunk 1 keeps the window busy."""
    limiter = AdaptiveLimiter(ceiling=64, initial=1, clock=FakeClock())
    await limiter.acquire()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await limiter.acquire(priority)
        order.append(name)

    waiters = [
        asyncio.create_task(wait(name, priority))
        for name, priority in (("1a", 1), ("1b", 1), ("0a", 0), ("0b", 0))
    ]
    await settle()
    for _ in waiters:
        limiter.release()
        await settle()
    assert order == ["0a", "0b", "1a", "1b"]  # by chunk, then in arrival order
    await asyncio.gather(*waiters)


async def test_a_freed_slot_stays_with_the_earlier_chunk_that_takes_it_back() -> None:
    """The worker of chunk 0 that frees a slot and comes back for its next
    line keeps it; chunk 1's waiter gets a slot once chunk 0 stops asking."""
    limiter = AdaptiveLimiter(ceiling=64, initial=1, clock=FakeClock())
    await limiter.acquire(0)
    later = asyncio.create_task(limiter.acquire(1))
    await settle()
    for _ in range(3):  # chunk 0's next lines, one after another
        limiter.release()
        async with asyncio.timeout(1):  # at once, in the same task: no queueing
            await limiter.acquire(0)
        await settle()
        assert not later.done() and limiter.in_flight == 1
    limiter.release()  # chunk 0 has no more lines
    await settle()
    assert later.done() and limiter.in_flight == 1
    await later


async def test_paused_limiter_grants_nothing_until_the_pause_ends() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(ceiling=64, initial=4, clock=clock)
    sent = await limiter.acquire()
    await limiter.acquire()
    limiter.on_throttle(sent, retry_after=30.0)
    waiter = asyncio.create_task(limiter.acquire())
    await settle()
    assert not waiter.done()  # room in the window, but the provider said wait
    clock.now += 31
    limiter.release()  # any later event re-checks the pause
    await settle()
    assert waiter.done()
    await waiter


# -- against the mock's rate limit ---------------------------------------------------


@pytest.fixture
def limited_mock() -> Iterator[str]:
    with serve_mock_in_thread(MockConfig(rps_limit=40, latency_ms=20)) as url:
        yield url


async def test_rate_limited_provider_loses_no_line(limited_mock: str) -> None:
    """More requests at once than the bucket holds: the client paces itself
    (Retry-After, x-ratelimit-* headers) and every line ends 2xx exactly once."""
    provider = ProviderRecord(name="limited", base_url=limited_mock, api_key="k")
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    async with UpstreamClient(max_attempts=5, backoff_base=0.05, backoff_max=0.5) as upstream:
        results = await asyncio.gather(
            *[
                upstream.send(provider, "/chat/completions", body, custom_id=f"c{i}")
                for i in range(120)
            ]
        )
    stats = httpx.get(limited_mock.removesuffix("/v1") + "/stats").json()
    assert all(r.ok for r in results)
    assert stats["custom_ids_ok"] == {f"c{i}": 1 for i in range(120)}
    assert stats["status_429"] > 0  # the limit was really reached


def test_mock_sends_rate_limit_headers_only_under_a_limit() -> None:
    body = {"model": "m", "messages": []}
    with serve_mock_in_thread(MockConfig(rps_limit=5)) as url:
        first = httpx.post(f"{url}/chat/completions", json=body)
        assert first.headers["x-ratelimit-limit-requests"] == "5"
        assert first.headers["x-ratelimit-remaining-requests"] == "4"
        assert parse_duration(first.headers["x-ratelimit-reset-requests"]) is not None
    with serve_mock_in_thread(MockConfig()) as url:
        plain = httpx.post(f"{url}/chat/completions", json=body)
        assert "x-ratelimit-remaining-requests" not in plain.headers
