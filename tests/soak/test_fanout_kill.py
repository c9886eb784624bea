"""One batch fanned out to three flow runs, one helper run
SIGKILLed mid-batch: its chunk claims lapse, the batch's run and the other
helper finish its chunks, and the batch completes with every custom_id once,
without the batch's own run being replaced. Marked `soak` (`make soak`): a
stack of its own and a ~20 s batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil
import pytest

from harness.batches import check_batch, create_batch, upload, wait_all_terminal
from harness.lines import chat_lines
from harness.stack import INTERNAL_TOKEN, PrefectServer, Stack

pytestmark = [pytest.mark.soak, pytest.mark.timeout(600)]

LINES = 2000
LEASE_SECONDS = 6


def flow_run_processes(stack: Stack) -> list[psutil.Process]:
    """The runner's flow-run processes (children of its forkserver), oldest first."""
    assert stack.runner is not None
    runner = psutil.Process(stack.runner.pid)
    servers = [p for p in runner.children() if "forkserver" in " ".join(p.cmdline())]
    runs = [run for server in servers for run in server.children()]
    return sorted(runs, key=lambda p: p.create_time())


def test_a_killed_helper_s_chunks_are_finished_by_the_other_runs(tmp_path: Path) -> None:
    with (
        PrefectServer(tmp_path / "prefect") as prefect,
        Stack(
            tmp_path / "stack",
            prefect,
            mock_args=["--latency-ms", "200"],
            chunk_size=100,
            fanout_runs=3,
            lease_seconds=LEASE_SECONDS,
            reconcile_interval_seconds=1,
        ) as stack,
    ):
        stack.add_provider("openai", f"{stack.mock_url}/v1", "sk-mock-openai", 8, default=True)
        client = stack.client(stack.create_key("fanout-kill"))
        batch_id = create_batch(client, upload(client, tmp_path, chat_lines("k", LINES)))
        deadline = time.monotonic() + 120
        while len(runs := flow_run_processes(stack)) < 3 or stack.mock_stats()["total"] < 300:
            assert time.monotonic() < deadline, f"{len(runs)} flow runs"
            time.sleep(0.2)
        owner = client.batches.retrieve(batch_id)
        done_before = owner.request_counts.completed
        victim = runs[-1]  # the batch's own run started first; the newest is a helper
        victim.kill()
        killed_at = time.monotonic()
        (batch,) = wait_all_terminal(client, [batch_id], 300)
        recovered = time.monotonic() - killed_at
        chunks = httpx.get(
            f"{stack.url}/internal/batches/{batch_id}/chunks",
            headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"},
        ).json()
        check = check_batch(client, batch, "k", LINES, {})

    assert batch.status == "completed" and not check.problems, check.problems
    assert done_before < LINES  # the kill landed mid-batch
    # The batch's run and its two helpers, the killed one included: no run
    # of the batch was started again (that would bring two more helpers).
    runs = {c["done_by"] for c in chunks}
    assert 2 <= len(runs) <= 3, runs
    print(f"helper SIGKILLed at {done_before} lines done; batch completed {recovered:.1f} s later")
