"""The gateway's Prefect client: one per event loop, shared by concurrent
first calls, closed with the app; an unreachable server means "not ready"."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings

from gateway.flow_runs import (
    PENDING_PATIENCE_SECONDS,
    PrefectFlowRuns,
    flow_run_keeps_batch,
    run_keeps_batch,
)
from tasks.settings import load_settings

UNREACHABLE = "http://127.0.0.1:9/api"  # the discard port: nothing answers


def flow_runs(tmp_path: Path) -> PrefectFlowRuns:
    return PrefectFlowRuns(load_settings(data_dir=tmp_path))


def test_concurrent_first_calls_share_one_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        runs = flow_runs(tmp_path)
        first, second = await asyncio.gather(runs._prefect(), runs._prefect())
        assert first is second
        assert await runs._prefect() is first
        await runs.aclose()
        assert await runs._prefect() is not first  # closed: the next call opens anew
        await runs.aclose()

    with temporary_settings({PREFECT_API_URL: UNREACHABLE}):
        asyncio.run(scenario())


def test_each_event_loop_gets_its_own_client(tmp_path: Path) -> None:
    runs = flow_runs(tmp_path)
    with temporary_settings({PREFECT_API_URL: UNREACHABLE}):
        first = asyncio.run(runs._prefect())
        second = asyncio.run(runs._prefect())
    assert first is not second


def test_an_unreachable_server_is_not_ready_and_nothing_is_queued(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool]:
        runs = flow_runs(tmp_path)
        try:
            return await runs.ready(), await runs.keeps_batch("not-a-uuid", None)
        finally:
            await runs.aclose()

    with temporary_settings({PREFECT_API_URL: UNREACHABLE}):
        assert asyncio.run(scenario()) == (False, False)


class OneRun:
    """A Prefect client that knows one flow run, in `state` since `age` seconds."""

    def __init__(self, state: str, age: float) -> None:
        since = datetime.now(UTC) - timedelta(seconds=age)
        self.run = SimpleNamespace(state=SimpleNamespace(type=SimpleNamespace(value=state),
                                                         timestamp=since))  # fmt: skip

    async def read_flow_run(self, flow_run_id: Any) -> Any:
        return self.run


def queued(state: str, age: float) -> bool:
    run_id = "00000000-0000-0000-0000-000000000001"
    return asyncio.run(flow_run_keeps_batch(OneRun(state, age), run_id, None))  # type: ignore[arg-type]


def test_a_taken_run_counts_as_starting_for_less_than_a_minute() -> None:
    """A run waiting for a runner slot is never replaced; a run a runner took
    (Pending, or Running but its batch not claimed yet) is trusted for 45 s,
    so a batch whose host died holding it resumes within a minute
    (docs/scale-out.md), and a run that just started after a long wait for a
    slot gets no spare run; an ended run is not waited for."""
    assert queued("SCHEDULED", age=3600)
    for state in ("PENDING", "RUNNING"):
        assert queued(state, age=PENDING_PATIENCE_SECONDS - 5)
        assert not queued(state, age=PENDING_PATIENCE_SECONDS + 1)
    assert PENDING_PATIENCE_SECONDS + 5 < 60  # + one reconciler pass
    assert not queued("COMPLETED", age=1)
    assert not queued("CRASHED", age=1)


def test_after_a_lease_lapsed_only_a_suspended_queued_or_restarted_run_keeps_the_batch() -> None:
    """The run that held the lease and died entered RUNNING before the lease
    lapsed: it is replaced at once. A run suspended from the Prefect UI
    keeps the batch (the user's pause), and so does that run once resumed,
    while it waits for a slot and while it starts again."""
    at, lapsed = 10_000.0, 9_990.0
    assert not run_keeps_batch("RUNNING", since=9_900.0, lapsed_at=lapsed, at=at)
    assert not run_keeps_batch("RUNNING", since=None, lapsed_at=lapsed, at=at)
    assert run_keeps_batch("PAUSED", since=9_995.0, lapsed_at=lapsed, at=at)
    assert run_keeps_batch("PAUSED", since=0.0, lapsed_at=lapsed, at=at + 86_400)
    assert run_keeps_batch("SCHEDULED", since=9_999.0, lapsed_at=lapsed, at=at)
    for state in ("PENDING", "RUNNING"):
        assert run_keeps_batch(state, since=9_995.0, lapsed_at=lapsed, at=at)
        assert not run_keeps_batch(state, since=9_995.0, lapsed_at=lapsed, at=at + 60)
    assert not run_keeps_batch("CANCELLED", since=9_995.0, lapsed_at=lapsed, at=at)
