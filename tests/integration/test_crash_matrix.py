"""The crash matrix: the runner and the gateway SIGKILLed at named points of a
batch (tasks/crashpoints.py), restarted, and every batch still ends right.

After each run: every batch `completed`, each `custom_id` exactly once across
output and error files, `request_counts` equal to the files, at most one
chunk of upstream requests repeated per crash, and `batchgate doctor` finds
nothing (no orphans, no missing blobs, no stale parts). Every batch's
`batch.completed` webhook reaches a receiver (deduplicated on `webhook-id`),
also when the gateway dies between the terminal status and the delivery.

`make test` runs a representative subset on one stack with several batches
at once; `make soak` (`-m soak`) runs every point on its own stack and writes
the results into docs/reliability.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from harness.batches import (
    Restarter,
    check_batch,
    create_batch,
    fired,
    run_doctor,
    upload,
    wait_all_terminal,
)
from harness.lines import chat_lines
from harness.reliability_report import write_crash_matrix
from harness.stack import PrefectServer, Stack
from harness.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(900)
CHUNK = 50

# Points in flow-run processes: firing kills the runner's process group
# (the runner and all its flow runs), exactly like `kill -9` of `batchgate worker`.
RUNNER_POINTS = [
    "run:after_claim",
    "validate:before_plan",
    "validate:after_plan",
    "execute:after_response#5",  # early in the first chunk
    "execute:after_response#120",  # in the middle of the third chunk
    "execute:before_post",  # a whole chunk answered, not yet posted
    "execute:after_post",  # between chunks
    "execute:after_post#3",  # between later chunks
    "finalize:before",
    "finalize:after",
]
# Points in the gateway process (the DuckDB and blob owner).
GATEWAY_POINTS = [
    "create:after_insert",  # batch stored, no flow run started yet
    "ledger:plan_after_chunks",  # plan saved, still validating
    "ledger:chunk_after_parts",  # mid chunk post: parts written, chunk not marked done
    "ledger:chunk_after_commit",  # chunk done, answer never sent
    "ledger:finalize_after_files",  # result files written, status not moved
    "ledger:finalize_after_transition",  # batch ended, parts not removed
    "webhooks:before_send",  # batch ended and its event in the outbox, not yet delivered
]
FAST_POINTS = [
    "validate:after_plan",
    "execute:after_response#20",
    "execute:after_post",
    "finalize:before",
    "ledger:chunk_after_parts",
    "ledger:finalize_after_files",
    "webhooks:before_send",
]


@contextmanager
def crash_stack(
    prefect: PrefectServer, root: Path, points: list[str], scope: str = "group"
) -> Iterator[Stack]:
    """A stack whose processes all carry the armed points; one chunk at a time
    per batch, so one crash can repeat at most one chunk of requests."""
    with Stack(
        root,
        prefect,
        chunk_size=CHUNK,
        chunk_parallelism=1,
        lease_seconds=6,
        reconcile_interval_seconds=1,
        max_attempts=5,
        backoff_base_seconds=0.05,
        backoff_max_seconds=0.5,
        retention_interval_seconds=3600,
        webhook_poll_seconds=0.2,
        webhook_backoff_base_seconds=0.2,
        webhook_backoff_max_seconds=1,
        webhook_max_attempts=100,
        crash_at=",".join(points),
        crash_dir=root / "crashes",
        crash_scope=scope,
    ) as stack:
        (root / "crashes").mkdir(exist_ok=True)
        stack.reset_mock()
        stack.mock_config(latency_ms=5)
        yield stack


def run_matrix(
    stack: Stack, tmp_path: Path, points: list[str], batches: int, lines: int, timeout: float
) -> dict[str, Any]:
    """Create `batches` batches, let the armed points fire, restart what dies,
    check every batch and the data directory. Returns figures for the report."""
    client = stack.client(stack.create_key("crash"))
    # Every batch's `batch.completed` must reach a receiver, whatever died.
    receiver = Receiver().start()
    hook = stack.admin("POST", "/admin/webhooks", json={"url": receiver.url}).json()
    receiver.secret = hook["secret"]
    started = time.monotonic()
    try:
        with Restarter(stack) as restarter:
            prefixes = [f"b{n}" for n in range(batches)]
            ids = [
                create_batch(client, upload(client, tmp_path, chat_lines(p, lines)))
                for p in prefixes
            ]
            ended = wait_all_terminal(client, ids, timeout)
            sent = stack.mock_stats()["custom_ids"]
            checks = [
                check_batch(client, b, p, lines, sent) for b, p in zip(ended, prefixes, strict=True)
            ]
            receiver.wait_for(ids, timeout=60)
    finally:
        receiver.stop()
    seconds = time.monotonic() - started
    events = [receiver.for_batch(b) for b in ids]
    assert receiver.bad_signatures == 0
    assert [[e.event["type"] for e in found] for found in events] == [["batch.completed"]] * len(
        ids
    ), events
    doctor = run_doctor(stack)
    crashes = len(points)  # each point fires once

    assert restarter.errors == []
    assert fired(stack.root / "crashes", points) == points, "some crash points never fired"
    for check in checks:
        assert check.batch.status == "completed", (check.batch.id, check.batch.status)
        assert check.problems == [], (check.batch.id, check.problems)
        assert check.errors == []  # no upstream faults here: every line succeeded
        assert check.repeated <= CHUNK * crashes, (check.batch.id, check.repeated, crashes)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    return {
        "points": points,
        "deaths": dict(restarter.deaths),
        "repeated": [c.repeated for c in checks],
        "seconds": round(seconds, 1),
        "doctor": doctor.stdout.splitlines()[0] if doctor.stdout else "",
        "batches": batches,
        "lines": lines,
    }


def test_crashes_in_every_phase_leave_every_batch_complete_and_consistent(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Flow runs killed during validate, mid-chunk, between chunks and before
    finalize; the gateway killed mid chunk post, mid finalize and before a
    webhook delivery: 4 batches at once. To stay fast, runner-side points
    kill only the flow-run process (the work process of one batch) so the
    kills overlap; `make soak` kills the whole runner at every point."""
    root = Path(tmp_path_factory.mktemp("crash-fast"))
    with crash_stack(prefect_server, root, FAST_POINTS, scope="process") as stack:
        figures = run_matrix(stack, root, FAST_POINTS, batches=4, lines=200, timeout=420)
    # the gateway died at each of its points; the runner itself lived on
    assert figures["deaths"] == {"gateway": 3}, figures


# -- make soak: the full matrix, one point per stack ------------------------------

_SOAK_ROWS: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def soak_report() -> Iterator[list[dict[str, Any]]]:
    yield _SOAK_ROWS
    if _SOAK_ROWS:
        write_crash_matrix(_SOAK_ROWS)


@pytest.mark.soak
@pytest.mark.parametrize("point", RUNNER_POINTS + GATEWAY_POINTS)
def test_soak_crash_point(
    point: str,
    prefect_server: PrefectServer,
    tmp_path_factory: pytest.TempPathFactory,
    soak_report: list[dict[str, Any]],
) -> None:
    root = Path(tmp_path_factory.mktemp("crash-soak"))
    with crash_stack(prefect_server, root, [point]) as stack:
        figures = run_matrix(stack, root, [point], batches=2, lines=300, timeout=300)
    killed = "gateway" if point in GATEWAY_POINTS else "runner"
    assert figures["deaths"] == {killed: 1}, figures
    soak_report.append({"point": point, "killed": killed, **figures})
