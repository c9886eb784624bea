"""Upstream faults: 5xx, 429 storms with Retry-After, connections reset,
answers that hang past the timeout, bodies that are not JSON. The batch
always finishes, and every line ends in exactly one file with the code a
user can act on:

| fault (every attempt) | file  | response.status_code | code                                  |
|-----------------------|-------|----------------------|---------------------------------------|
| 500                   | error | 500                  | body.error.code server_error          |
| 429 + Retry-After     | error | 429                  | body.error.code rate_limit_exceeded   |
| connection reset      | error | (response null)      | error.code connection_error           |
| hang past the timeout | error | (response null)      | error.code timeout                    |
| 200, body not JSON    | error | 200                  | body.error.code invalid_upstream_response |

These run the real pipeline (validate -> execute -> finalize through the
ledger) against `batchgate mock-upstream` over HTTP, without Prefect, so
they are fast; `make soak` adds a large mixed batch through the whole stack.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchgate.mock_provider.server import MockConfig, create_mock_app
from harness.lines import chat_lines
from harness.pipeline import Harness
from harness.servers import ThreadedServer

FAULTS_OFF = {
    "latency_ms": 0,
    "failure_rate": 0,
    "rate_429": 0,
    "reset_rate": 0,
    "hang_rate": 0,
    "non_json_rate": 0,
}
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def mock() -> Iterator[ThreadedServer]:
    with ThreadedServer(create_mock_app(MockConfig(seed=3, hang_seconds=20))) as server:
        yield server


def harness(root: Path, mock: ThreadedServer, max_attempts: int, **faults: Any) -> Harness:
    h = Harness(root, mock.url, max_attempts=max_attempts, request_timeout_seconds=TIMEOUT)
    httpx.post(f"{mock.url}/config", json={**FAULTS_OFF, "retry_after": 0.05, **faults})
    return h


def outcome_of(line: dict[str, Any]) -> tuple[int | None, str | None]:
    """(status_code, code) of a result line: the upstream's body.error.code,
    or the gateway's error.code when no response arrived."""
    if line["response"] is None:
        return None, line["error"]["code"]
    body = line["response"]["body"]
    return line["response"]["status_code"], (body.get("error") or {}).get("code")


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"failure_rate": 1.0}, (500, "server_error")),
        ({"rate_429": 1.0}, (429, "rate_limit_exceeded")),
        ({"reset_rate": 1.0}, (None, "connection_error")),
        ({"hang_rate": 1.0}, (None, "timeout")),
        ({"non_json_rate": 1.0}, (200, "invalid_upstream_response")),
    ],
    ids=["5xx", "429", "reset", "hang", "non_json"],
)
async def test_each_fault_ends_every_line_in_the_error_file_with_its_code(
    tmp_path: Path, mock: ThreadedServer, fault: dict[str, float], expected: tuple
) -> None:
    h = harness(tmp_path, mock, max_attempts=2, **fault)
    batch = await h.run(h.add_batch(chat_lines("f", 12)))
    assert batch.status == "completed"
    assert (batch.total, batch.completed, batch.failed) == (12, 0, 12)
    assert batch.output_file_id is None
    errors = h.lines(batch.error_file_id)
    assert sorted(x["custom_id"] for x in errors) == sorted(f"f-{i}" for i in range(12))
    assert {outcome_of(x) for x in errors} == {expected}
    retried = expected[1] != "invalid_upstream_response"  # a 200 is final, even unreadable
    sent = h.stats()["custom_ids"]
    assert set(sent.values()) == {2 if retried else 1}
    h.store.close()


async def test_mixed_faults_batch_finishes_with_every_line_once(
    tmp_path: Path, mock: ThreadedServer
) -> None:
    """30 % 5xx, a 429 storm, resets, hangs and non-JSON at once, with enough
    attempts that most lines get through: the batch completes, each line is in
    exactly one file, successes are real answers, failures carry a known code."""
    figures = await run_mixed(tmp_path, mock, lines=300, chunk_size=50)
    assert figures["completed"] > 200  # retries did their job
    h = figures["harness"]
    assert h.stats()["duplicates_ok"] == []  # no line was answered OK twice
    h.store.close()


MIXED = {
    "failure_rate": 0.3,
    "rate_429": 0.2,
    "reset_rate": 0.05,
    "hang_rate": 0.02,
    "non_json_rate": 0.03,
}
KNOWN = {
    (500, "server_error"),
    (429, "rate_limit_exceeded"),
    (None, "connection_error"),
    (None, "timeout"),
    (200, "invalid_upstream_response"),
}


async def run_mixed(
    root: Path, mock: ThreadedServer, lines: int, chunk_size: int, **faults: float
) -> dict[str, Any]:
    h = harness(root, mock, max_attempts=6, **{**MIXED, **faults})
    h.settings.chunk_size = chunk_size
    started = time.monotonic()
    batch = await h.run(h.add_batch(chat_lines("m", lines)))
    seconds = time.monotonic() - started
    out, err = h.lines(batch.output_file_id), h.lines(batch.error_file_id)
    assert batch.status == "completed"
    ids = [x["custom_id"] for x in out + err]
    assert len(ids) == len(set(ids)) == lines
    assert (batch.total, batch.completed, batch.failed) == (lines, len(out), len(err))
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    assert all(x["response"]["body"]["object"] == "chat.completion" for x in out)
    codes = Counter(outcome_of(x) for x in err)
    assert set(codes) <= KNOWN, codes
    return {
        "harness": h,
        "status": batch.status,
        "completed": len(out),
        "failed": len(err),
        "codes": {f"{s or '-'} {c}": n for (s, c), n in codes.items()},
        "seconds": round(seconds, 1),
        "lines": lines,
        "faults": ", ".join(f"{k} {v}" for k, v in {**MIXED, **faults}.items()),
    }


# -- make soak -----------------------------------------------------------------

_ROWS: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def soak_rows() -> Iterator[list[dict[str, Any]]]:
    yield _ROWS
    if _ROWS:
        from harness.reliability_report import write_upstream_faults

        write_upstream_faults(_ROWS)


@pytest.mark.soak
@pytest.mark.parametrize(
    "extra",
    [{}, {"rate_429": 0.6}, {"failure_rate": 0.6}, {"reset_rate": 0.2, "hang_rate": 0.05}],
    ids=["mixed", "429-storm", "5xx-storm", "network"],
)
async def test_soak_large_faulty_batches_finish(
    tmp_path: Path, mock: ThreadedServer, soak_rows: list[dict[str, Any]], extra: dict[str, float]
) -> None:
    figures = await run_mixed(tmp_path, mock, lines=3000, chunk_size=500, **extra)
    h = figures.pop("harness")
    assert h.stats()["duplicates_ok"] == []
    h.store.close()
    soak_rows.append(figures)
