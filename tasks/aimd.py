"""Adaptive concurrency per provider: how many requests one worker process
keeps in flight to a provider, and when it must hold back altogether.

Two layers, so the rules can be tested without a clock or an event loop:

- `Window`: the pure rules. An AIMD window of concurrent requests between 1
  and the provider's `max_concurrency` (the ceiling the admin set): it starts
  small and doubles per round trip (slow start) until the first throttle,
  then grows by one request per round trip while answers are 2xx and not
  slow, and shrinks by `BETA` on a 429/503 or a timeout - once per round
  trip, because every request already in flight when the provider said
  "enough" will say it too. It also keeps a provider-wide pause: a 429's
  `Retry-After`, or the time to the next request when the provider's
  `x-ratelimit-remaining-*` headers say the budget is spent; and it stops
  growing while the remaining budget is smaller than what is in flight.
- `AdaptiveLimiter`: the asyncio adapter, a semaphore whose size is the
  window and which grants nothing while paused. Waiters queue by priority,
  then FIFO; one timer (not one sleeper per waiter) ends a pause.

Priority: the lines of the earliest chunk in flight go first. Two chunks
that share the window fairly progress at the same rate and end together,
so every pair of chunks ended with the window draining (the last requests
of both) and refilling (both checkpoints, two new chunks read and parsed):
at 200 ms latency that was most of `batchgate run`'s gap to a bare loop.
Served in chunk order, the earlier chunk ends while the next one still has
lines to keep the window full. For that a freed slot is granted to a waiter
on the next turn of the event loop, not at once: the worker that freed it
takes its next line first and, if its chunk comes first, keeps the slot
without queueing (otherwise every slot went to the next chunk's waiters the
moment it was freed, and the two chunks shared the window as before). That
also spares the earliest chunk's workers a future and a wake-up per request.

Scope: one limiter per provider per worker process, shared by every chunk of
the batch that process runs. Each batch runs in its own flow-run process, so
two batches on one provider have two windows; both see the same 429s and
headers from the shared provider budget, and AIMD drives them to equal
shares (docs/benchmarks.md measures it).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

# Shrink factor on a throttle. 0.7 (CUBIC's) keeps the average near the limit
# while still giving way quickly; 0.5 leaves a quarter of the budget unused.
BETA = 0.7
INITIAL_WINDOW = 32
# A 2xx that took longer than this many times the smoothed latency is a sign
# of queueing at the provider: it does not grow the window.
SLOW_FACTOR = 3.0
# Longest pause taken from a header, so one odd value cannot stall a batch.
MAX_PAUSE_SECONDS = 60.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_duration(value: str | None) -> float | None:
    """Seconds in a rate-limit reset header, or None if it is not one.

    OpenAI sends Go-style durations ("1s", "6m0s", "20ms", "1h2m3.5s");
    others send plain seconds ("0.5").
    """
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    return total if position == len(text) and position > 0 else None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Budget:
    """One `x-ratelimit-*` family (requests or tokens) as the provider last said it."""

    remaining: float
    reset: float | None = None  # seconds until the budget is full again
    limit: float | None = None

    def wait_for_one(self) -> float:
        """Seconds until one more unit is available, assuming a steady refill."""
        if self.remaining >= 1 or not self.reset:
            return 0.0
        if self.limit and self.limit > self.remaining:
            return self.reset / (self.limit - self.remaining)
        return self.reset


def parse_budgets(headers: Mapping[str, str]) -> tuple[Budget | None, Budget | None]:
    """The (requests, tokens) budgets in a response, each None if not sent."""
    return _budget(headers, "requests"), _budget(headers, "tokens")


def budgets_from_raw(raw: Iterable[tuple[bytes, bytes]]) -> tuple[Budget | None, Budget | None]:
    """`parse_budgets` over raw header pairs: one pass, no case-folding lookups,
    because it runs on every 2xx and most providers send none of these."""
    found = {
        name.lower().decode("latin-1"): value.decode("latin-1")
        for name, value in raw
        if name[:12].lower() == b"x-ratelimit-"
    }
    return parse_budgets(found) if found else (None, None)


def _budget(headers: Mapping[str, str], kind: str) -> Budget | None:
    remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
    if remaining is None:
        return None
    return Budget(
        remaining,
        parse_duration(headers.get(f"x-ratelimit-reset-{kind}")),
        _number(headers.get(f"x-ratelimit-limit-{kind}")),
    )


class Window:
    """The AIMD window and pause for one provider; pure, time passed in."""

    def __init__(self, ceiling: int, initial: int = INITIAL_WINDOW) -> None:
        self.ceiling = max(1, ceiling)
        self.size = float(min(self.ceiling, max(1, initial)))
        self.slow_start = True
        self.paused_until = 0.0
        self.last_decrease = float("-inf")
        self.latency: float | None = None  # smoothed seconds per 2xx

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return int(self.size)

    def set_ceiling(self, ceiling: int) -> None:
        """A new `max_concurrency` from the admin API."""
        self.ceiling = max(1, ceiling)
        self.size = min(self.size, float(self.ceiling))

    def pause_left(self, now: float) -> float:
        return max(0.0, self.paused_until - now)

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)

    def on_success(
        self,
        sent_at: float,
        now: float,
        in_flight: int,
        requests: Budget | None = None,
        tokens: Budget | None = None,
    ) -> None:
        """A 2xx (or any final answer that is not a throttle) to a request sent at `sent_at`.

        The headers describe the budget when the provider took the request,
        so a pause they imply counts from `sent_at`.
        """
        elapsed = max(0.0, now - sent_at)
        slow = self.latency is not None and elapsed > SLOW_FACTOR * self.latency
        self.latency = elapsed if self.latency is None else 0.8 * self.latency + 0.2 * elapsed
        short = False
        for budget in (requests, tokens):
            if budget is None:
                continue
            wait = budget.wait_for_one()
            if wait:
                self.pause(sent_at + min(wait, MAX_PAUSE_SECONDS))
            if budget is requests and budget.remaining < in_flight:
                short = True
            if budget is tokens and budget.limit and budget.remaining < 0.05 * budget.limit:
                short = True
        # Grow only a window that was full (`in_flight` counts this request):
        # one that pauses or a short queue keep below its size proves nothing.
        if slow or short or in_flight < self.limit or self.size >= self.ceiling:
            return
        step = 1.0 if self.slow_start else 1.0 / self.size  # per 2xx: x2 or +1 per round trip
        self.size = min(float(self.ceiling), self.size + step)

    def on_throttle(self, sent_at: float, now: float, retry_after: float | None = None) -> None:
        """A 429/503 or a timeout: shrink once per round trip, pause if asked."""
        if retry_after:
            self.pause(now + min(retry_after, MAX_PAUSE_SECONDS))
        if sent_at < self.last_decrease:
            return  # sent before the last decrease: that one already counted it
        self.slow_start = False
        self.size = max(1.0, self.size * BETA)
        self.last_decrease = now


class AdaptiveLimiter:
    """`Window` as an asyncio semaphore: `acquire()` -> send -> one `on_*` call.

    Belongs to the event loop it is first used in. `acquire` returns the send
    time to hand back to `on_success` / `on_throttle` / `release`, which also
    give the slot back.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        initial: int = INITIAL_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = Window(ceiling, initial)
        self.in_flight = 0
        self._clock = clock
        # (priority, arrival, future): a heap, lowest priority value first,
        # FIFO among equals. A cancelled waiter stays until `_grant` pops it.
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._grant_soon = False  # a `_grant` is scheduled for the next loop turn

    async def acquire(self, priority: int = 0) -> float:
        """Wait for a slot; among waiters, a lower `priority` value goes first
        (the chunk index: the earliest chunk in flight), and a caller that
        comes before every waiter takes a free slot at once."""
        waiters = self._waiters
        if (
            (not waiters or priority < waiters[0][0])
            and self.in_flight < self.window.limit
            and not self.window.pause_left(self._clock())
        ):
            self.in_flight += 1
            return self._clock()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), future))
        self._grant()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._give_back()  # granted and cancelled at once: pass the slot on
            raise  # still queued: cancelled, so `_grant` drops it
        return self._clock()

    def set_ceiling(self, ceiling: int) -> None:
        """A new `max_concurrency` while requests run: lowering it grants
        nothing until in-flight requests fall under it; raising it lets the
        window grow again from where it is."""
        self.window.set_ceiling(ceiling)
        self._grant()

    def on_success(
        self, sent_at: float, requests: Budget | None = None, tokens: Budget | None = None
    ) -> None:
        self.window.on_success(sent_at, self._clock(), self.in_flight, requests, tokens)
        self._give_back()

    def on_throttle(self, sent_at: float, retry_after: float | None = None) -> None:
        self.window.on_throttle(sent_at, self._clock(), retry_after)
        self._give_back()

    def release(self) -> None:
        """Give the slot back without a verdict (connection error, other 5xx)."""
        self._give_back()

    def _give_back(self) -> None:
        """Free a slot; waiters get it on the next loop turn (see the module
        docstring: the caller may take it back first, if it comes first)."""
        self.in_flight -= 1
        if self._waiters and not self._grant_soon:
            self._grant_soon = True
            self._waiters[0][2].get_loop().call_soon(self._granted_soon)

    def _granted_soon(self) -> None:
        self._grant_soon = False
        self._grant()

    def _grant(self) -> None:
        """Wake as many waiters as the window has room for, unless paused."""
        if not self._waiters:
            return
        wait = self.window.pause_left(self._clock())
        if wait:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(wait, self._timer_fired)
            return
        while self._waiters and self.in_flight < self.window.limit:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    def _timer_fired(self) -> None:
        self._timer = None
        self._grant()
