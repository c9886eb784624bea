"""One batch worked by several runs through chunk claims: the
ledger's claim rules, and the batch's run with helper runs in-process over
a real DuckDB file and the mock provider over real HTTP."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.pipeline import Harness, chat
from harness.servers import ThreadedServer
from storage.metadata import now
from storage.records import KeyBudget
from tasks.drive import Steps, drive_batch, help_batch, shared_chunk_size
from tasks.ledger import BatchLedger, LeaseLost
from tasks.upstream import UpstreamClient
from tasks.worker_api import LocalWorkerAPI


@pytest.fixture
def h(tmp_path: Path, mock: ThreadedServer) -> Iterator[Harness]:  # noqa: F811
    harness = Harness(tmp_path, mock.url, chunk_size=10, heartbeat_seconds=0.2)
    harness.ledger = BatchLedger(harness.store, harness.blobs, lease_seconds=30, fanout_runs=3)
    harness.api = LocalWorkerAPI(harness.ledger, harness.store)
    yield harness
    harness.store.close()


def planned(h: Harness, lines: int) -> tuple[str, str]:
    """A batch validated by its run, whose lease that run still holds: (id, lease token)."""
    batch_id = h.add_batch([chat(i) for i in range(lines)])
    token = h.ledger.claim(batch_id, "run-main")["lease_token"]
    chunks = [
        {
            "index": i,
            "start_offset": 0,
            "end_offset": 0,
            "first_line": i * 10,
            "line_count": 10,
        }
        for i in range(lines // 10)
    ]
    h.ledger.save_plan(batch_id, token, total=lines, chunks=chunks, errors=[], models=[])
    return batch_id, token


def post(h: Harness, batch_id: str, token: str, index: int, by: str = "") -> dict[str, Any]:
    return h.ledger.record_chunk(
        batch_id,
        token,
        index,
        output=f'{{"custom_id": "c{index}", "by": "{by}"}}\n'.encode(),
        errors=b"",
        completed=1,
        failed=0,
        usage=None,
        model=None,
    )


def lapse(h: Harness, batch_id: str, index: int) -> None:
    """What the clock does to a claim nobody renews."""
    h.store.execute(
        "UPDATE batch_chunks SET claim_expires_at = ? WHERE batch_id = ? AND chunk_index = ?",
        [now() - 1, batch_id, index],
    )


def test_a_lapsed_claim_is_claimed_again_and_the_stale_claimant_is_refused(h: Harness) -> None:
    batch_id, _ = planned(h, 20)
    first = h.ledger.claim_chunk(batch_id, "helper-a")
    second = h.ledger.claim_chunk(batch_id, "helper-b")
    assert (first["chunk"]["chunk_index"], second["chunk"]["chunk_index"]) == (0, 1)
    assert "claim_token" not in first["chunk"]  # a claim token is never shown to others
    none_free = h.ledger.claim_chunk(batch_id, "helper-c")
    assert none_free["chunk"] is None and none_free["pending_chunks"] == 2

    lapse(h, batch_id, 0)
    assert h.ledger.renew_claims(batch_id, [first["chunk_token"]])["held"] == []
    again = h.ledger.claim_chunk(batch_id, "helper-c")
    assert again["chunk"]["chunk_index"] == 0
    post(h, batch_id, again["chunk_token"], 0, by="c")
    with pytest.raises(LeaseLost):  # the stale claimant's late post counts for nothing
        post(h, batch_id, first["chunk_token"], 0, by="a")
    with pytest.raises(LeaseLost):  # a claim ends with its chunk's checkpoint
        post(h, batch_id, again["chunk_token"], 0)
    with pytest.raises(LeaseLost):  # a live claim posts its own chunk only
        post(h, batch_id, second["chunk_token"], 0)

    done = {c.chunk_index: c for c in h.ledger.chunks(batch_id)}
    assert (done[0].done, done[0].done_by, done[0].completed) == (True, "helper-c", 1)
    assert h.store.get_batch(batch_id).completed == 1  # type: ignore[union-attr]
    part = h.blobs.path(f"{batch_id}.c000000.out").read_bytes()
    assert part == b'{"custom_id": "c0", "by": "c"}\n'


def test_the_batch_s_run_may_post_any_chunk_and_a_helper_s_post_keeps_no_lease(
    h: Harness,
) -> None:
    batch_id, token = planned(h, 30)
    held = h.ledger.claim_chunk(batch_id, "helper-a")
    post(h, batch_id, token, 0)  # the batch's lease outranks a claim ...
    with pytest.raises(LeaseLost):  # ... and the claimant then loses the chunk
        post(h, batch_id, held["chunk_token"], 0)
    mine = h.ledger.claim_chunk(batch_id, "run-main", token)
    assert mine["chunk_token"] == token and mine["chunk"]["chunk_index"] == 1
    with pytest.raises(LeaseLost):  # a stranger's lease token claims nothing
        h.ledger.claim_chunk(batch_id, "stranger", "not-the-lease")
    helper = h.ledger.claim_chunk(batch_id, "helper-b")
    assert helper["chunk"]["chunk_index"] == 2
    lease_before = h.store.get_batch(batch_id).lease_expires_at  # type: ignore[union-attr]
    post(h, batch_id, helper["chunk_token"], 2)
    assert h.store.get_batch(batch_id).lease_expires_at == lease_before  # type: ignore[union-attr]
    assert [c.done_by for c in h.ledger.chunks(batch_id)] == ["run-main", None, "helper-b"]
    assert h.ledger.claim_chunk(batch_id, "helper-b")["chunk"] is None
    assert h.ledger.renew_claims(batch_id, [])["claimed"] == 1  # chunk 1, by the batch's run
    h.store.transition_batch(batch_id, ["in_progress"], status="cancelling", cancelling_at=now())
    assert h.ledger.claim_chunk(batch_id, "helper-b")["chunk"] is None  # nothing after a cancel


class Helpers:
    """`Steps.fan_out` for in-process runs: each helper is a `help_batch`
    task with a client of its own, as a helper flow run on another host."""

    def __init__(self, h: Harness, batch_id: str) -> None:
        self.h = h
        self.batch_id = batch_id
        self.tasks: list[asyncio.Task[int]] = []

    async def fan_out(self, count: int) -> None:
        for n in range(count):
            self.tasks.append(asyncio.create_task(self.one(f"helper-{n + 1}")))

    async def one(self, flow_run_id: str) -> int:
        async with UpstreamClient.from_settings(self.h.settings) as client:
            return await help_batch(
                self.h.api, client, self.batch_id, settings=self.h.settings, flow_run_id=flow_run_id
            )

    async def run(self) -> str:
        async with UpstreamClient.from_settings(self.h.settings) as client:
            status = await drive_batch(
                self.h.api,
                client,
                self.batch_id,
                settings=self.h.settings,
                steps=Steps(fan_out=self.fan_out),
                flow_run_id="run-main",
            )
        await asyncio.gather(*self.tasks)
        return status


async def test_a_batch_fanned_out_to_three_runs_has_every_line_once(h: Harness) -> None:
    httpx.post(f"{h.mock_url}/config", json={"latency_ms": 20})
    h.settings.chunk_parallelism = 1
    batch_id = h.add_batch([chat(i) for i in range(120)])
    helpers = Helpers(h, batch_id)
    assert await helpers.run() == "completed"
    assert len(helpers.tasks) == 2
    batch = h.store.get_batch(batch_id)
    assert batch is not None and (batch.completed, batch.failed) == (120, 0)
    out = h.lines(batch.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(120))
    by_run = collections.Counter(c.done_by for c in h.ledger.chunks(batch_id))
    assert set(by_run) == {"run-main", "helper-1", "helper-2"}, by_run
    assert sum(t.result() for t in helpers.tasks) == by_run["helper-1"] + by_run["helper-2"]
    assert h.stats()["routes"]["/v1/chat/completions"] == 120  # no line sent twice


def test_a_fanned_out_batch_is_cut_into_chunks_as_many_times_smaller() -> None:
    """So the last chunks, which leave the other runs idle, are short."""
    assert shared_chunk_size(1000, 1) == 1000
    assert shared_chunk_size(1000, 3) == 334
    assert shared_chunk_size(1000, 100) == 50
    assert shared_chunk_size(10, 3) == 10  # never below a small plan's own size


async def test_a_cancel_reaches_the_helpers_and_every_line_is_in_one_file(h: Harness) -> None:
    httpx.post(f"{h.mock_url}/config", json={"latency_ms": 30})
    h.settings.chunk_parallelism = 1
    batch_id = h.add_batch([chat(i) for i in range(300)])

    async def cancel_soon() -> None:
        while (b := h.store.get_batch(batch_id)) and b.completed < 30:
            await asyncio.sleep(0.02)
        h.store.transition_batch(
            batch_id, ["in_progress"], status="cancelling", cancelling_at=now()
        )

    canceller = asyncio.create_task(cancel_soon())
    status = await Helpers(h, batch_id).run()
    await canceller
    batch = h.store.get_batch(batch_id)
    assert batch is not None and status == batch.status == "cancelled"
    out, err = h.lines(batch.output_file_id), h.lines(batch.error_file_id)
    assert 30 <= len(out) < 300
    assert sorted(x["custom_id"] for x in out + err) == sorted(f"req-{i}" for i in range(300))
    assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
    assert (batch.completed, batch.failed) == (len(out), len(err))


async def test_a_dead_helper_s_chunk_is_done_by_the_batch_s_run_once_its_claim_lapses(
    h: Harness,
) -> None:
    h.ledger.lease_seconds = 1  # claims lapse after a second unless renewed
    batch_id = h.add_batch([chat(i) for i in range(40)])
    dead: list[dict[str, Any]] = []

    async def a_helper_that_dies(count: int) -> None:
        """It takes a chunk and is never heard of again (SIGKILL, host lost)."""
        dead.append(h.api.claim_chunk(batch_id, "helper-dead"))

    async with UpstreamClient.from_settings(h.settings) as client:
        status = await drive_batch(
            h.api,
            client,
            batch_id,
            settings=h.settings,
            steps=Steps(fan_out=a_helper_that_dies),
            flow_run_id="run-main",
        )
    assert status == "completed"
    (claim,) = dead
    chunks = h.ledger.chunks(batch_id)
    taken = chunks[claim["chunk"]["chunk_index"]]
    assert (taken.done, taken.done_by) == (True, "run-main")
    assert {c.done_by for c in chunks} == {"run-main"}
    batch = h.store.get_batch(batch_id)
    assert batch is not None
    out = h.lines(batch.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(40))
    assert h.stats()["routes"]["/v1/chat/completions"] == 40


async def test_a_budget_reached_stops_every_run_and_fails_the_batch(h: Harness) -> None:
    # A mock answer to "hi N" costs 14 or 15 tokens: about 48 lines fit.
    h.store.set_budget(KeyBudget(h.key.id, max_tokens=700))
    httpx.post(f"{h.mock_url}/config", json={"latency_ms": 20})
    h.settings.chunk_parallelism = 1
    batch_id = h.add_batch([chat(i) for i in range(100)])
    assert await Helpers(h, batch_id).run() == "failed"
    batch = h.store.get_batch(batch_id)
    assert batch is not None and batch.errors and batch.errors[0]["code"] == "budget_exceeded"
    out, err = h.lines(batch.output_file_id), h.lines(batch.error_file_id)
    assert sorted(x["custom_id"] for x in out + err) == sorted(f"req-{i}" for i in range(100))
    assert {e["error"]["code"] for e in err} == {"budget_exceeded"}
    # Spend counts as chunks are posted: three runs overshoot by at most the
    # chunk that reached the budget and the two others in flight; no run
    # starts a chunk after it (the claim answer carries the stop).
    assert 700 <= batch.usage["total_tokens"] <= 700 + 3 * 10 * 15  # type: ignore[index]
    assert (batch.completed, batch.failed) == (len(out), len(err))
