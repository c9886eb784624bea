"""Request deadlines on one coarse timer (tasks/deadlines.py): an overdue
attempt gets `TimeoutError`, a punctual one nothing, an outside cancel stays
a cancel, and the timer stops when nothing is in flight."""

from __future__ import annotations

import asyncio
import time

import pytest

from tasks.deadlines import Deadlines

RESOLUTION = 0.05


async def attempt(deadlines: Deadlines, seconds: float, takes: float) -> str:
    with deadlines.within(seconds):
        await asyncio.sleep(takes)
    return "answered"


async def test_an_overdue_attempt_times_out_soon_after_its_deadline() -> None:
    deadlines = Deadlines(asyncio.get_running_loop(), resolution=RESOLUTION)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await attempt(deadlines, 0.2, 10)
    assert 0.2 <= time.monotonic() - started < 1.0  # not the 10 s the attempt would take


async def test_only_the_overdue_attempts_of_many_time_out() -> None:
    deadlines = Deadlines(asyncio.get_running_loop(), resolution=RESOLUTION)
    results = await asyncio.gather(
        *(attempt(deadlines, 0.3, 0.01 if i % 2 else 5) for i in range(100)),
        return_exceptions=True,
    )
    assert results[1::2] == ["answered"] * 50
    assert all(isinstance(r, TimeoutError) for r in results[::2])


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    deadlines = Deadlines(asyncio.get_running_loop(), resolution=RESOLUTION)
    task = asyncio.create_task(attempt(deadlines, 5, 10))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_timer_runs_only_while_something_is_in_flight() -> None:
    deadlines = Deadlines(asyncio.get_running_loop(), resolution=RESOLUTION)
    assert await attempt(deadlines, 5, 0.01) == "answered"
    await asyncio.sleep(RESOLUTION * 3)
    assert deadlines._timer is None and deadlines._due == {}


async def test_a_deadline_that_fires_as_the_attempt_answers_is_still_a_timeout() -> None:
    """The timer may cancel a task whose wait has just ended; the cancel then
    lands at its next step, inside the block, and is still reported as a
    timeout, never as a stray cancel of the caller."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, resolution=RESOLUTION)
    answer: asyncio.Future[str] = loop.create_future()

    async def waiting() -> str:
        with deadlines.within(5):
            return await answer

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0)
    answer.set_result("answered")  # the task is woken, but has not run yet
    deadlines._due[task] = 0.0  # and its deadline passes at this very moment
    deadlines._check()
    with pytest.raises(TimeoutError):
        await task
