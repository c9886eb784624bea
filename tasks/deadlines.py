"""Request deadlines for many concurrent attempts, on one coarse timer.

`asyncio.timeout` arms a timer handle per block: at 0 ms provider latency
that was 7-8 % of a flow run's CPU (profiled: `Timeout.reschedule` alone
4.4 %), for a deadline of minutes that almost never fires. Here an attempt
only notes its deadline in a dict; one timer per event loop, running while
anything is in flight, cancels the attempts that are overdue, and the
attempt turns that cancellation into `TimeoutError`, as `asyncio.timeout`
does. A deadline may fire up to `resolution` seconds late.
"""

from __future__ import annotations

import asyncio


class Deadlines:
    """Deadlines of the attempts running on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 1.0) -> None:
        self.loop = loop
        self.resolution = resolution
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def within(self, seconds: float) -> _Within:
        """Raise `TimeoutError` if the block is still running after `seconds`.

        Must be entered by the task that runs the block (it is the one
        cancelled); a cancellation from outside stays a cancellation. A plain
        context manager object, not a generator one: it is entered once per
        upstream attempt."""
        return _Within(self, seconds)

    def _check(self) -> None:
        """Cancel the overdue attempts; run again while any is in flight."""
        now = self.loop.time()
        overdue = [task for task, due in self._due.items() if due <= now]
        for task in overdue:
            del self._due[task]
            self._expired.add(task)
            task.cancel()
        if self._due:
            soonest = min(self._due.values())
            delay = min(self.resolution, max(0.0, soonest - now))
            self._timer = self.loop.call_later(delay, self._check)
        else:
            self._timer = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Within:
    """One attempt's deadline (`Deadlines.within`)."""

    __slots__ = ("deadlines", "seconds", "task", "cancelling")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self.deadlines = deadlines
        self.seconds = seconds

    def __enter__(self) -> None:
        deadlines = self.deadlines
        task = asyncio.current_task(deadlines.loop)
        if task is None:
            raise RuntimeError("Deadlines.within needs a running task")
        self.task = task
        self.cancelling = task.cancelling()
        deadlines._due[task] = deadlines.loop.time() + self.seconds
        if deadlines._timer is None:
            deadlines._timer = deadlines.loop.call_later(
                min(deadlines.resolution, self.seconds), deadlines._check
            )

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> None:
        deadlines, task = self.deadlines, self.task
        deadlines._due.pop(task, None)
        expired = task in deadlines._expired
        deadlines._expired.discard(task)
        if kind is asyncio.CancelledError and expired and task.uncancel() <= self.cancelling:
            raise TimeoutError from None
