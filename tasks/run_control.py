"""What a running batch checks between requests: lease, cancel, expiry,
pause, budget stop and concurrency ceilings.

A heartbeat renews the run's lease through the worker API every few
seconds and brings back the batch's status and control state
(`tasks/control_state.py`), so a cancel, a pause or a budget stop is seen within a
heartbeat and expiry is checked against the clock before every request. A
paused run keeps beating, so it keeps its lease however long the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from tasks.ledger import LeaseLost
from tasks.worker_api import WorkerAPI
from tasks.worker_messages import Control

log = logging.getLogger("batchgate.worker")


class RunControl:
    def __init__(
        self,
        api: WorkerAPI,
        batch_id: str,
        token: str,
        control: Control,
        *,
        heartbeat_seconds: float | None = None,
        on_ceilings: Callable[[dict[str, int]], None] | None = None,
        on_pause: Callable[[bool], None] | None = None,
        stop: Callable[[], str | None] | None = None,
        renew: Callable[[], Control] | None = None,
    ) -> None:
        """`renew` replaces the heartbeat's call (default: renew the batch
        lease): the batch's run with shared chunks renews its claims too, a
        helper run renews its claims only (tasks/drive.py)."""
        self.api = api
        self._renew = renew or (lambda: api.renew(batch_id, token))
        # A stop reason from outside the ledger: `batchgate run` answers
        # Ctrl-C with "interrupted" (stop sending, keep the checkpoints, no finalize).
        self.stop = stop
        self.batch_id = batch_id
        self.token = token
        self.lost = False
        self.paused = False
        self.stopped_lines = 0  # lines this run left unsent because it was told to stop
        self.stop_reason: str | None = None
        self.ceilings: dict[str, int] = {}
        self.on_ceilings = on_ceilings
        self.on_pause = on_pause
        self._free = asyncio.Event()  # set while requests may go out (not paused, or stopping)
        self.update(control)
        lease = float(control.get("lease_seconds") or 60)
        self.lease_seconds = lease
        self.heartbeat_seconds = heartbeat_seconds or max(0.5, min(5.0, lease / 4))

    def update(self, control: Control) -> None:
        self.status: str = control["status"]
        self.expires_at: float | None = control.get("expires_at")
        self.endpoint: str = control.get("endpoint", "")
        self.stop_reason = control.get("stop_reason")
        ceilings = control.get("ceilings")
        if isinstance(ceilings, dict) and ceilings != self.ceilings:
            self.ceilings = dict(ceilings)
            if self.on_ceilings is not None:
                self.on_ceilings(self.ceilings)
        paused = bool(control.get("paused"))
        if paused != self.paused:
            self.paused = paused
            log.info("batch %s %s", self.batch_id, "paused" if paused else "resumed")
            if self.on_pause is not None:
                self.on_pause(paused)
        if self.paused and self.reason is None:
            self._free.clear()
        else:
            self._free.set()

    async def gate(self) -> None:
        """Wait while the batch is paused; return at once otherwise, or when
        it is told to stop (the caller checks `reason` next)."""
        while not self._free.is_set():
            with contextlib.suppress(TimeoutError):
                # expiry comes from the clock, not from an update: look again now and then
                await asyncio.wait_for(self._free.wait(), timeout=self.heartbeat_seconds)
            if self.reason is not None:
                return

    @property
    def reason(self) -> str | None:
        """Why the run must stop sending requests, or None to go on."""
        if self.lost:
            return "lease_lost"
        if self.stop is not None and (stopped := self.stop()):
            return stopped
        if self.status == "cancelling":
            return "cancelled"
        if self.status in {"completed", "failed", "expired", "cancelled"}:
            return "ended_elsewhere"
        if self.stop_reason:
            return self.stop_reason
        if self.expires_at is not None and time.time() >= self.expires_at:
            return "expired"
        return None

    def should_stop(self) -> bool:
        return self.reason is not None

    async def beat(self) -> None:
        try:
            self.update(await asyncio.to_thread(self._renew))
        except LeaseLost:
            log.warning("lost the lease on %s; stopping", self.batch_id)
            self.lost = True

    @contextlib.asynccontextmanager
    async def heartbeat(self) -> AsyncIterator[RunControl]:
        async def loop() -> None:
            while not self.lost:
                await asyncio.sleep(self.heartbeat_seconds)
                try:
                    await self.beat()
                except Exception as exc:  # gateway away: keep going, lease may lapse
                    log.warning("heartbeat for %s failed: %s", self.batch_id, exc)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
