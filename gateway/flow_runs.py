"""Starting `process-batch` flow runs through the Prefect API.

The gateway never waits for a run: it creates the flow run and returns.
`FlowRunStarter` is the seam tests use to count or replace starts.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from storage.records import BatchRecord
from tasks.settings import Settings

log = logging.getLogger("batchgate.gateway")

DEPLOYMENT = "process-batch/process-batch"


class FlowRunStarter(Protocol):
    async def start_batch(self, batch: BatchRecord) -> str | None:
        """Create a flow run for the batch; return its id."""

    async def ready(self) -> bool:
        """True once flow runs can be created."""

    async def is_queued(self, flow_run_id: str) -> bool:
        """True while the run waits for a runner slot and should not be replaced."""


class PrefectFlowRuns:
    """Creates flow runs of the `process-batch` deployment on the Prefect server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready_until = 0.0

    async def start_batch(self, batch: BatchRecord) -> str | None:
        from prefect.deployments import run_deployment

        tags = [f"endpoint:{batch.endpoint}"]
        if batch.model:
            tags.append(f"model:{batch.model}")
        flow_run = await run_deployment(
            name=DEPLOYMENT,
            parameters={"batch_id": batch.id},
            timeout=0,
            flow_run_name=batch.id,
            tags=tags,
        )
        return str(flow_run.id)

    async def ready(self) -> bool:
        """The server answers and the deployment exists (cached for 30 s when true)."""
        if time.monotonic() < self._ready_until:
            return True
        try:
            from prefect.client.orchestration import get_client

            async with get_client() as client:
                await client.read_deployment_by_name(DEPLOYMENT)
        except Exception as exc:  # any failure means "not yet"
            log.debug("prefect not ready: %s", exc)
            return False
        self._ready_until = time.monotonic() + 30
        return True

    async def is_queued(self, flow_run_id: str) -> bool:
        try:
            return await flow_run_is_queued(flow_run_id)
        except Exception as exc:  # unknown run or server away: not known to be queued
            log.debug("could not read flow run %s: %s", flow_run_id, exc)
            return False


# A runner marks a run Pending when it takes it, and the run turns Running
# seconds later. A runner killed in between leaves it Pending for ever, so an
# older Pending run counts as dead, not queued (a spare run is harmless: the
# lease lets only one of them work).
PENDING_PATIENCE_SECONDS = 90.0


async def flow_run_is_queued(flow_run_id: str) -> bool:
    """True while a flow run waits for a runner slot (Scheduled, or recently Pending)."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
    state = run.state
    if state is None or state.type.value not in {"SCHEDULED", "PENDING"}:
        return False
    if state.type.value == "SCHEDULED" or state.timestamp is None:
        return True
    age = (datetime.now(UTC) - state.timestamp).total_seconds()
    return age < PENDING_PATIENCE_SECONDS
