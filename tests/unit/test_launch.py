"""Starting a batch's flow run exactly once: the reservation a new batch is
stored with, the reconciler's view of leases, and the idempotency key that
lets Prefect fold two starts of one launch into one run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.batch_creation import record_batch
from gateway.flow_runs import launch_key
from gateway.loops.reconciler import lease_is_live, reconcile_once
from harness.live import FakeFlowRuns, inprocess_app
from harness.records import batch_record, store_batch
from storage.blobs import BlobStore
from storage.records import BatchRecord
from tasks.batch_rules import BatchRequest

CHAT = "/v1/chat/completions"


def gateway_state(tmp_path: Path) -> Any:
    app = inprocess_app(tmp_path, flow_runs=FakeFlowRuns(), lease_seconds=60)
    return app.state.gateway


def stored_batch(state: Any, key_id: str | None = None, **fields: Any) -> BatchRecord:
    """A batch as an earlier gateway left it (by default unreserved: its start failed)."""
    key_id = key_id or state.store.create_api_key("launch")[0].id
    blobs = BlobStore(state.settings.blob_dir)
    batch_id = store_batch(state.store, blobs, key_id, b"{}\n", CHAT, **fields)
    batch = state.store.get_batch(batch_id)
    assert batch is not None
    return batch


def test_a_new_batch_is_stored_reserved_so_a_reconciler_pass_leaves_it(tmp_path: Path) -> None:
    """`batches.create` starts the run after the insert; a reconciler pass in
    between must not start a second one (it did: two flow runs, one batch)."""
    state = gateway_state(tmp_path)
    key, _ = state.store.create_api_key("create")
    earlier = stored_batch(state, key.id)

    batch = record_batch(state, key, BatchRequest(earlier.input_file_id, CHAT, "24h", None, None))

    stored = state.store.get_batch(batch.id)
    assert stored is not None and stored.lease_token is None
    assert (stored.lease_expires_at or 0) > time.time() + 30  # the launch grace (45 s here)
    assert asyncio.run(reconcile_once(state)) == 1  # the earlier, unreserved batch only
    assert state.flow_runs.started == [earlier.id]


def test_first_pass_after_a_restart_starts_reserved_but_unclaimed_batches(
    tmp_path: Path,
) -> None:
    """A gateway that died between storing a batch and starting its run left
    a reservation nobody will honour; the next gateway starts it at once."""
    state = gateway_state(tmp_path)
    reserved = stored_batch(state, lease_expires_at=time.time() + 300)
    leased = stored_batch(state, lease_token="run-token", lease_expires_at=time.time() + 300)

    assert asyncio.run(reconcile_once(state)) == 0
    assert asyncio.run(reconcile_once(state, first_pass=True)) == 1
    assert state.flow_runs.started == [reserved.id]
    assert leased.id not in state.flow_runs.started  # a live run's lease holds on every pass


class ClaimedWhileAsked(FakeFlowRuns):
    """Its run claims the batch while the reconciler asks Prefect about it."""

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.state = state

    async def keeps_batch(self, flow_run_id: str, lapsed_at: float | None) -> bool:
        for batch in self.state.store.live_batches():
            self.state.store.update_batch(
                batch.id, lease_token="claimed", lease_expires_at=time.time() + 30
            )
        return False  # Running: no longer queued


def test_a_run_that_claims_while_the_reconciler_looks_keeps_its_lease(tmp_path: Path) -> None:
    """The reconciler reads a batch as unclaimed, waits on Prefect, then
    reserves it for a new run; a claim in between must win (wiping the token
    stopped the working run and sent its chunk's lines again)."""
    state = gateway_state(tmp_path)
    state.flow_runs = ClaimedWhileAsked(state)
    batch = stored_batch(state, lease_expires_at=time.time() - 1, flow_run_id="run-1")

    assert asyncio.run(reconcile_once(state)) == 0
    assert state.flow_runs.started == []
    kept = state.store.get_batch(batch.id)
    assert kept is not None and kept.lease_token == "claimed"


class SuspendedInPrefect(FakeFlowRuns):
    """Every batch's last run was suspended from the Prefect UI."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, float | None]] = []

    async def keeps_batch(self, flow_run_id: str, lapsed_at: float | None) -> bool:
        self.asked.append((flow_run_id, lapsed_at))
        return True


def test_a_run_suspended_in_prefect_keeps_its_batch_until_the_window_ends(
    tmp_path: Path,
) -> None:
    """A user who suspends a batch's run in the Prefect UI paused the batch:
    no new run takes it while its lease lapses, until its completion window
    ends (a run is then started, which ends it `expired`)."""
    flow_runs = SuspendedInPrefect()
    state = inprocess_app(tmp_path, flow_runs=flow_runs, lease_seconds=60).state.gateway
    lapsed = time.time() - 5
    suspended = stored_batch(
        state, flow_run_id="run-1", lease_token="run-token", lease_expires_at=lapsed
    )
    past_window = stored_batch(
        state,
        flow_run_id="run-2",
        lease_token="run-token",
        lease_expires_at=lapsed,
        expires_at=int(time.time()) - 1,
    )
    assert asyncio.run(reconcile_once(state)) == 1
    assert flow_runs.started == [past_window.id]
    assert flow_runs.asked == [("run-1", lapsed)]  # asked with when its lease lapsed
    assert suspended.id not in flow_runs.started


def test_lease_is_live_until_it_lapses() -> None:
    batch = batch_record(status="in_progress", lease_token="token", lease_expires_at=100.0)
    assert lease_is_live(batch, 99.0)
    assert not lease_is_live(batch, 100.0)
    assert lease_is_live(batch, 99.0, first_pass=True)  # a held lease is not a reservation


def test_launch_key_is_one_per_batch_and_previous_run() -> None:
    first = batch_record("batch_a")
    assert launch_key(first) == launch_key(batch_record("batch_a"))
    assert launch_key(first) != launch_key(batch_record("batch_b"))
    assert launch_key(batch_record("batch_a", flow_run_id="run-1")) != launch_key(first)
