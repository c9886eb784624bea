"""Flow-run launches and the reconciler that gives every live batch a run.

`batches.create` stores a batch already reserved for the flow run it starts
here, after the answer. The reconciler runs every
`reconcile_interval_seconds` and starts a new run for any live batch that
nobody works on: its run's lease lapsed (the run died) or its reservation
lapsed (the start never happened), and its last flow run neither waits for
a runner nor was suspended by a user in the Prefect UI
(`gateway.flow_runs.run_keeps_batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from storage.records import BatchRecord
from tasks.settings import Settings

if TYPE_CHECKING:
    from gateway.state import GatewayState

log = logging.getLogger("batchgate.gateway")

# How long a freshly started flow run has to claim its batch before the
# reconciler may start another one. Creating the run took up to 13 s on a busy
# Prefect server, and a taken run claims within seconds of its start; a run
# still waiting for a runner slot (Scheduled) is kept by `keeps_batch` whatever
# its age. Past the grace a spare run may start, which is harmless: the lease
# lets only one run work. It also bounds how long a batch waits when the host
# that took its run is lost before the claim (docs/scale-out.md, A host lost
# mid-batch): 120 s made that up to ~2 minutes, 45 s keeps it under one.
LAUNCH_GRACE_SECONDS = 45


def launch_reserved_until(settings: Settings) -> float:
    """When the grace for a flow run being started ends: until then the
    reconciler leaves the batch to that run. Short leases (tests) get a
    short grace; queued runs are kept by `keeps_batch` anyway."""
    return time.time() + min(LAUNCH_GRACE_SECONDS, max(30, 5 * settings.lease_seconds))


async def reserve_launch(state: GatewayState, batch: BatchRecord) -> bool:
    """Give the batch a grace period in which the reconciler leaves it to the
    flow run being started for it. False, and nothing changed, when the
    batch's lease moved since `batch` was read: a run claimed or renewed it
    meanwhile (the reconciler waits on Prefect between its read and this
    write), and wiping that run's token would stop a working run."""
    return bool(
        await run_in_threadpool(
            state.store.update_batch_if_lease,
            batch.id,
            batch.lease_token,
            batch.lease_expires_at,
            lease_token=None,
            lease_expires_at=launch_reserved_until(state.settings),
        )
    )


async def start_run(state: GatewayState, batch: BatchRecord) -> None:
    """Start a flow run for the batch; on failure the reconciler tries again."""
    update = state.store.update_batch
    try:
        flow_run_id = await state.flow_runs.start_batch(batch)
    except Exception as exc:
        log.warning("could not start a flow run for %s: %s", batch.id, exc)
        await run_in_threadpool(update, batch.id, lease_expires_at=None)
        return
    if flow_run_id:
        await run_in_threadpool(update, batch.id, flow_run_id=flow_run_id)


async def launch(state: GatewayState, batch: BatchRecord) -> bool:
    """Reserve the batch and start a run for it; False if a run took it first."""
    if not await reserve_launch(state, batch):
        return False
    await start_run(state, batch)
    return True


def launch_in_background(state: GatewayState, batch: BatchRecord) -> None:
    """Start the batch's flow run after `batches.create` has answered.

    Creating a flow run is a Prefect API call that usually takes ~50 ms but
    took 2-13 s while the Prefect server was busy starting other runs
    (its client retries with backoff); the caller should not wait for that.
    The batch is stored and reserved first, so a gateway that dies before
    the start leaves a batch the reconciler starts once the grace lapses."""
    task = asyncio.create_task(start_run(state, batch))
    state.launches.add(task)  # the loop keeps only a weak reference
    task.add_done_callback(state.launches.discard)


def lease_is_live(batch: BatchRecord, at: float, *, first_pass: bool = False) -> bool:
    """True while a run holds the batch, or a launch has reserved it.

    On a gateway's first pass a reservation without a lease token counts as
    lapsed: the process that was starting that run is gone (it crashed just
    after storing the batch, say). Starting again is safe: flow-run creation
    is idempotent per batch and previous run (`PrefectFlowRuns.start_batch`)."""
    if first_pass and batch.lease_token is None:
        return False
    return (batch.lease_expires_at or 0) > at


async def reconcile_once(state: GatewayState, *, first_pass: bool = False) -> int:
    """Start a new flow run for every live batch that nobody is working on:
    its lease lapsed (the run died) and its last flow run does not keep it
    (queued, starting, or suspended by a user in Prefect). A batch past its
    completion window gets a run all the same: that run ends it `expired`."""
    started = 0
    for batch in await run_in_threadpool(state.store.live_batches):
        at = time.time()
        if lease_is_live(batch, at, first_pass=first_pass):
            continue
        lapsed_at = None if batch.lease_token is None else batch.lease_expires_at
        if (
            batch.flow_run_id
            and not (batch.expires_at and batch.expires_at <= at)
            and await state.flow_runs.keeps_batch(batch.flow_run_id, lapsed_at)
        ):
            continue
        if await launch(state, batch):
            log.info("batch %s had no live run; started one", batch.id)
            started += 1
    return started


@contextlib.asynccontextmanager
async def running(state: GatewayState) -> AsyncIterator[None]:
    """Run the reconciler while the app lives; cancel what is left at the end."""

    async def loop() -> None:
        first_pass = True
        while True:
            try:
                await reconcile_once(state, first_pass=first_pass)
                first_pass = False
            except Exception:
                log.exception("reconciler pass failed")
            await asyncio.sleep(state.settings.reconcile_interval_seconds)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        # Unfinished launches are dropped: their batches are reserved only
        # for the grace period, then the next reconciler pass starts them.
        for pending in [task, *state.launches]:
            pending.cancel()
        await asyncio.gather(task, *state.launches, return_exceptions=True)
