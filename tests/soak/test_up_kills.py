"""`batchgate up` with its default settings, one process SIGKILLed mid-batch:
the runner, a flow-run process, the gateway, the Prefect server. Each time
the 3,000-line batch completes with every custom_id once, a batch created
afterwards completes too, and Ctrl-C still stops everything within 15 s.
The recovery times are written into docs/reliability.md. Marked `soak`:
`make soak` only (each kill is a fresh `up`, ~2-3 minutes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from harness.batches import _retrying, check_batch, create_batch, upload, wait_all_terminal
from harness.lines import chat_lines
from harness.reliability_report import write_up_kills
from harness.up import Up

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]

LINES = 3000
MOCK_LATENCY_MS = 300  # 3,000 lines take ~30 s, so each kill lands mid-batch
KILL_AFTER_REQUESTS = 600
STOP_BUDGET_SECONDS = 20.0
TARGETS = ("runner", "flow-run", "gateway", "prefect-server")
ROWS: list[dict[str, Any]] = []


def victims(up: Up, target: str) -> list[psutil.Process]:
    """What to SIGKILL: a child of `up`, or the flow-run processes of the runner."""
    return up.flow_runs() if target == "flow-run" else [up.child(target)]


def wait_upstream(up: Up, at_least: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while sum(up.upstream_requests().values()) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} upstream requests"
        time.sleep(0.2)


def completed(client: openai.OpenAI, batch_id: str) -> tuple[str, int]:
    batch = _retrying(lambda: client.batches.retrieve(batch_id))
    return batch.status, batch.request_counts.completed


def watch_recovery(client: openai.OpenAI, batch_id: str, timeout: float = 600) -> dict[str, float]:
    """Seconds from now to the first line recorded after it, and to the batch ending."""
    started = time.monotonic()
    _, done_at_kill = completed(client, batch_id)
    figures: dict[str, float] = {}
    while True:
        status, done = completed(client, batch_id)
        elapsed = round(time.monotonic() - started, 1)
        if done > done_at_kill:
            figures.setdefault("first_progress_s", elapsed)
        if status in ("completed", "failed", "expired", "cancelled"):
            figures.setdefault("first_progress_s", elapsed)
            figures["terminal_s"] = elapsed
            figures["done_at_kill"] = done_at_kill
            return figures
        assert elapsed < timeout, f"{batch_id} still {status} ({done} done) after {timeout} s"
        time.sleep(0.5)


@pytest.mark.parametrize("target", TARGETS)
def test_up_recovers_from_a_sigkill_mid_batch(target: str, tmp_path: Path) -> None:
    with Up(tmp_path) as up:
        up.wait_ready()
        up.add_mock_provider("--latency-ms", str(MOCK_LATENCY_MS))
        client = up.client()
        batch_id = create_batch(client, upload(client, tmp_path, chat_lines("req", LINES)))
        wait_upstream(up, KILL_AFTER_REQUESTS)

        killed = victims(up, target)
        assert killed, f"nothing to kill for {target}"
        for proc in killed:
            proc.kill()
        figures = watch_recovery(client, batch_id)

        [batch] = wait_all_terminal(client, [batch_id], timeout=60)
        check = check_batch(client, batch, "req", LINES, up.upstream_requests())
        assert batch.status == "completed", batch
        assert check.problems == [], check.problems

        httpx.post(f"{up.mock_url}/config", json={"latency_ms": 0}).raise_for_status()
        new_started = time.monotonic()
        new_id = create_batch(client, upload(client, tmp_path, chat_lines("new", 200)))
        [new] = wait_all_terminal(client, [new_id], timeout=300)
        assert new.status == "completed", new
        new_seconds = round(time.monotonic() - new_started, 1)

        code, stop_seconds = up.interrupt()
        assert code == 0, up.text
        assert stop_seconds < STOP_BUDGET_SECONDS, up.text
        assert "did not stop" not in up.text
        restarts = [line.strip() for line in up.text.splitlines() if "=== restarting" in line]
        ROWS.append(
            {
                "target": target,
                "killed": len(killed),
                "restarts": restarts,
                "repeated": check.repeated,
                "new_batch_s": new_seconds,
                "stop_s": round(stop_seconds, 1),
                **figures,
            }
        )
    if len(ROWS) == len(TARGETS):
        write_up_kills(ROWS, LINES, MOCK_LATENCY_MS)
