"""Starting `process-batch` flow runs through the Prefect API.

The gateway never waits for a run: it creates the flow run and returns.
`FlowRunStarter` is the seam tests use to count or replace starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from flows.deployments import PROCESS_BATCH_DEPLOYMENT
from storage.records import BatchRecord
from tasks.settings import Settings

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

log = logging.getLogger("batchgate.gateway")

DEPLOYMENT = f"{PROCESS_BATCH_DEPLOYMENT}/{PROCESS_BATCH_DEPLOYMENT}"


class FlowRunStarter(Protocol):
    async def start_batch(self, batch: BatchRecord) -> str | None:
        """Create a flow run for the batch; return its id."""

    async def ready(self) -> bool:
        """True once flow runs can be created."""

    async def keeps_batch(self, flow_run_id: str, lapsed_at: float | None) -> bool:
        """True while the batch's run should not be replaced: it waits for a
        runner slot, is starting (since the batch's lease lapsed at
        `lapsed_at`, if a run held one), or was suspended in Prefect."""

    async def resume_suspended(self, flow_run_id: str) -> bool:
        """Resume the run if a user suspended it in Prefect; True if so."""

    async def aclose(self) -> None:
        """Release what the starter holds (the gateway is stopping)."""


class PrefectFlowRuns:
    """Creates flow runs of the `process-batch` deployment on the Prefect server.

    One Prefect client serves every call on the gateway's event loop: a fresh
    client per call builds an SSL context and a connection pool each time
    (measured: `run_deployment` took 109 ms with a fresh client, 48 ms with
    the kept one, so `batches.create` answers sooner)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready_until = 0.0
        self._opened: asyncio.Task[PrefectClient] | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    async def _prefect(self) -> PrefectClient:
        """The kept client, opened on first use by one task that concurrent
        callers share (so two first calls do not open two clients). A client
        belongs to the loop it was opened on; on another loop (tests) a new
        one is opened and the old one is left to its loop. A failed opening
        is forgotten, so the next call tries again."""
        loop = asyncio.get_running_loop()
        if self._opened is None or self._client_loop is not loop:
            self._client_loop = loop
            self._opened = loop.create_task(_open_client())
        opened = self._opened
        try:
            return await asyncio.shield(opened)
        except Exception:
            if self._opened is opened:
                self._opened = None
            raise

    async def aclose(self) -> None:
        opened, self._opened = self._opened, None
        if opened is None or self._client_loop is not asyncio.get_running_loop():
            return
        if opened.done() and not opened.cancelled() and opened.exception() is None:
            await opened.result().__aexit__(None, None, None)
        else:
            opened.cancel()

    async def start_batch(self, batch: BatchRecord) -> str | None:
        client = await self._prefect()  # imports Prefect off the event loop first
        from prefect.deployments import arun_deployment

        tags = [f"endpoint:{batch.endpoint}"]
        if batch.model:
            tags.append(f"model:{batch.model}")
        flow_run = await arun_deployment(
            name=DEPLOYMENT,
            client=client,
            parameters={"batch_id": batch.id},
            timeout=0,
            flow_run_name=batch.id,
            tags=tags,
            idempotency_key=launch_key(batch),
        )
        return str(flow_run.id)

    async def ready(self) -> bool:
        """The server answers and the deployment exists (cached for 30 s when true)."""
        if time.monotonic() < self._ready_until:
            return True
        try:
            client = await self._prefect()
            await client.read_deployment_by_name(DEPLOYMENT)
        except Exception as exc:  # any failure means "not yet"
            log.debug("prefect not ready: %s", exc)
            return False
        self._ready_until = time.monotonic() + 30
        return True

    async def keeps_batch(self, flow_run_id: str, lapsed_at: float | None) -> bool:
        try:
            return await flow_run_keeps_batch(await self._prefect(), flow_run_id, lapsed_at)
        except Exception as exc:  # unknown run or server away: not known to hold it
            log.debug("could not read flow run %s: %s", flow_run_id, exc)
            return False

    async def resume_suspended(self, flow_run_id: str) -> bool:
        """`POST /admin/batches/{id}/resume` on a batch whose run was suspended
        in the Prefect UI resumes that run, as the UI's Resume would: it is
        scheduled again and claims the batch (`run_keeps_batch`)."""
        client = await self._prefect()
        from prefect.exceptions import ObjectNotFound

        try:
            run = await client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:  # deleted in Prefect: nothing to resume there
            return False
        if run.state is None or run.state.type.value != "PAUSED":
            return False
        result = await client.resume_flow_run(UUID(flow_run_id))
        return result.status.value == "ACCEPT"


def launch_key(batch: BatchRecord) -> str:
    """The flow run's idempotency key: one run per batch and previous run.

    Two starts of the same launch (a client retry after a lost answer, the
    reconciler racing `batches.create`, a restarted gateway redoing a start
    whose answer it never stored) get the one run Prefect already made; a
    relaunch after a run died names that run, so it gets a new one."""
    return f"{batch.id}:after:{batch.flow_run_id or 'none'}"


def _import_prefect() -> None:
    """Prefect's client and deployment modules take a second or more to
    import; in a thread, the gateway's event loop keeps answering meanwhile
    (the first `batches.create` and the reconciler's first look used to hold
    every request for that long)."""
    import prefect.client.orchestration  # noqa: F401
    import prefect.deployments  # noqa: F401


async def _open_client() -> PrefectClient:
    await asyncio.to_thread(_import_prefect)
    from prefect.client.orchestration import get_client

    client = get_client()
    await client.__aenter__()
    return client


# A runner marks a run Pending when it takes it; the run turns Running a
# second later and claims its batch a moment after that. A runner killed in
# between leaves the run Pending (or Running) for ever, so a run taken longer
# ago than this counts as dead, not starting (a spare run is harmless: the
# lease lets only one of them work). 45 s leaves a slow start a wide margin
# (seconds normally; the Prefect server's SQLite waits are bounded to 5 s) and
# keeps a batch whose host died holding an unclaimed run under a minute
# (docs/scale-out.md, A host lost mid-batch); it was 90 s, Pending only.
PENDING_PATIENCE_SECONDS = 45.0


async def flow_run_keeps_batch(
    client: PrefectClient, flow_run_id: str, lapsed_at: float | None
) -> bool:
    """Whether the reconciler should leave a batch with no live lease to its
    last flow run (`run_keeps_batch` on the run's Prefect state)."""
    run = await client.read_flow_run(UUID(flow_run_id))
    state = run.state
    if state is None:
        return False
    since = state.timestamp.timestamp() if state.timestamp is not None else None
    return run_keeps_batch(state.type.value, since, lapsed_at, time.time())


def run_keeps_batch(state: str, since: float | None, lapsed_at: float | None, at: float) -> bool:
    """The rule, on plain data: `state` is the run's Prefect state type,
    entered at `since`; `lapsed_at` is when the batch's lease lapsed (None:
    no run has claimed the batch since this run was started for it).

    - PAUSED: a user suspended the run from the Prefect UI (its process
      exits at once). That is their pause: no other run takes the batch
      until they resume the run there (it is scheduled again and claims the
      batch) or cancel it (a new run then takes the batch).
    - SCHEDULED: the run waits for a runner slot (or was just resumed).
    - PENDING / RUNNING: a runner took the run. Trusted for
      PENDING_PATIENCE_SECONDS while it starts and claims; without this a
      run that waited for a slot longer than the launch grace got a spare
      run started in the second between its start and its claim. After a
      lease lapsed, only a run (re)started since then counts: the run that
      held the lease and died entered RUNNING long before.
    - Anything else (ended, crashed): the batch needs a new run."""
    if state in {"PAUSED", "SCHEDULED"}:
        return True
    if state not in {"PENDING", "RUNNING"}:
        return False
    if since is None:
        return lapsed_at is None
    if lapsed_at is not None and since <= lapsed_at:
        return False
    return at - since < PENDING_PATIENCE_SECONDS
