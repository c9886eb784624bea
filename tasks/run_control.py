"""What a running batch checks between requests: lease, cancel, expiry.

A heartbeat renews the run's lease through the worker API every few
seconds and brings back the batch's status, so a cancel is seen within a
heartbeat and expiry is checked against the clock before every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from tasks.ledger import LeaseLost
from tasks.worker_api import WorkerAPI

log = logging.getLogger("batchgate.worker")


class RunControl:
    def __init__(
        self,
        api: WorkerAPI,
        batch_id: str,
        token: str,
        control: dict[str, Any],
        *,
        heartbeat_seconds: float | None = None,
        stop: Callable[[], str | None] | None = None,
    ) -> None:
        self.api = api
        # A stop reason from outside the ledger: `batchgate run` answers
        # Ctrl-C with "interrupted" (stop sending, keep the checkpoints, no finalize).
        self.stop = stop
        self.batch_id = batch_id
        self.token = token
        self.lost = False
        self.update(control)
        lease = float(control.get("lease_seconds") or 60)
        self.heartbeat_seconds = heartbeat_seconds or max(0.5, min(5.0, lease / 4))

    def update(self, control: dict[str, Any]) -> None:
        self.status: str = control["status"]
        self.expires_at: float | None = control.get("expires_at")
        self.endpoint: str = control.get("endpoint", "")

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
        if self.expires_at is not None and time.time() >= self.expires_at:
            return "expired"
        return None

    def should_stop(self) -> bool:
        return self.reason is not None

    async def beat(self) -> None:
        try:
            self.update(await asyncio.to_thread(self.api.renew, self.batch_id, self.token))
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
