"""The gateway's Prefect client: one per event loop, shared by concurrent
first calls, closed with the app; an unreachable server means "not ready"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

from gateway.flow_runs import PrefectFlowRuns
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
            return await runs.ready(), await runs.is_queued("not-a-uuid")
        finally:
            await runs.aclose()

    with temporary_settings({PREFECT_API_URL: UNREACHABLE}):
        assert asyncio.run(scenario()) == (False, False)
