"""Helpers for the crash-matrix and upstream-fault tests: a restarter that
brings back whatever a crash point killed, batch helpers that tolerate the
gateway being down, the end-of-batch checks, and `batchgate doctor`.

Crash points (tasks/crashpoints.py) are armed through the stack's settings
(`crash_at`, `crash_dir`), so every process of the stack reads them and each
point fires once, in whichever process reaches it first.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson

from batchgate.up.supervisor import stop_child
from harness.lines import chat_line
from harness.stack import Stack
from tasks.crashpoints import marker_path

TERMINAL = {"completed", "failed", "expired", "cancelled"}


class Restarter:
    """Polls the runner and gateway; restarts the one a crash point killed,
    as an operator's process manager would, and counts the deaths."""

    def __init__(self, stack: Stack, poll: float = 0.2) -> None:
        self.stack = stack
        self.poll = poll
        self.deaths: Counter[str] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="restarter", daemon=True)

    def __enter__(self) -> Restarter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            for name in ("gateway", "runner"):
                child = getattr(self.stack, name)
                if child is None or child.popen.poll() is None:
                    continue
                self.deaths[name] += 1
                try:
                    (self.stack.start_gateway if name == "gateway" else self.stack.start_runner)()
                except Exception as exc:  # reported by the test, not lost in a thread
                    self.errors.append(f"restarting {name}: {exc}")


def _retrying(call: Any, timeout: float = 120) -> Any:
    """Call the gateway, waiting out a restart (connection refused / reset)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (openai.APIConnectionError, openai.InternalServerError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def upload(client: openai.OpenAI, tmp_path: Path, lines: Sequence[dict[str, Any] | bytes]) -> str:
    """Upload `lines` (objects, or raw bytes for a broken line) as a batch file."""
    path = tmp_path / f"input-{time.monotonic_ns()}.jsonl"
    path.write_bytes(
        b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    )

    def send() -> str:
        with path.open("rb") as handle:
            return client.files.create(file=handle, purpose="batch").id

    return _retrying(send)


def create_batch(client: openai.OpenAI, file_id: str) -> str:
    """Create a batch; if the gateway died answering, find the batch it stored."""
    try:
        return client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
    except openai.APIConnectionError:
        found = _retrying(
            lambda: [b for b in client.batches.list(limit=100) if b.input_file_id == file_id]
        )
        assert len(found) == 1, f"the gateway died creating a batch for {file_id}: {found}"
        return found[0].id


def wait_all_terminal(client: openai.OpenAI, batch_ids: list[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    pending = set(batch_ids)
    ended: dict[str, Any] = {}
    while pending:
        for batch_id in sorted(pending):
            batch = _retrying(lambda b=batch_id: client.batches.retrieve(b))
            if batch.status in TERMINAL:
                ended[batch_id] = batch
                pending.discard(batch_id)
        if pending:
            assert time.monotonic() < deadline, f"still live after {timeout:.0f} s: {pending}"
            time.sleep(0.5)
    return [ended[b] for b in batch_ids]


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = _retrying(lambda: client.files.content(file_id).content)
    return [orjson.loads(x) for x in content.splitlines()]


@dataclass
class BatchCheck:
    """What one batch ended with, checked against what the API promises."""

    batch: Any
    output: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    repeated: int  # upstream requests beyond one per custom_id
    problems: list[str] = field(default_factory=list)


def check_batch(
    client: openai.OpenAI, batch: Any, prefix: str, count: int, sent: dict[str, int]
) -> BatchCheck:
    """Every custom_id exactly once across output+error, counts equal to the
    files, and how many upstream requests were repeats."""
    out, err = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    result = BatchCheck(batch, out, err, 0)
    ids = [x["custom_id"] for x in out + err]
    expected = {f"{prefix}-{i}" for i in range(count)}
    if len(ids) != len(set(ids)) or set(ids) != expected:
        dupes = sorted(c for c, n in Counter(ids).items() if n > 1)[:5]
        result.problems.append(f"custom_ids: {len(ids)} lines, dupes {dupes}, want {count}")
    counts = batch.request_counts
    if (counts.total, counts.completed, counts.failed) != (count, len(out), len(err)):
        result.problems.append(f"request_counts {counts} vs files {len(out)}/{len(err)}")
    result.repeated = sum(n - 1 for c, n in sent.items() if c in expected)
    return result


def run_doctor(stack: Stack) -> subprocess.CompletedProcess[str]:
    """Stop the gateway (DuckDB has one owner) and run `batchgate doctor` on its data."""
    if stack.gateway is not None and stack.gateway.popen.poll() is None:
        stop_child(stack.gateway)
    env = {k: v for k, v in stack.env().items() if not k.startswith("BATCHGATE_CRASH")}
    return subprocess.run(
        [sys.executable, "-m", "batchgate.cli", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def fired(crash_dir: Path, points: list[str]) -> list[str]:
    return [p for p in points if marker_path(crash_dir, p).exists()]


def numbered_chat_line(i: int, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return chat_line(f"req-{i}", f"q {i}", model, **extra)


def run_batch(
    client: openai.OpenAI,
    file_id: str,
    endpoint: str = "/v1/chat/completions",
    timeout: float = 180,
    **kwargs: Any,
) -> Any:
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kwargs,
    )
    assert batch.status == "validating"
    return wait_terminal(client, batch.id, timeout)


def wait_terminal(client: openai.OpenAI, batch_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in {"completed", "failed", "expired", "cancelled"}:
            return batch
        assert time.monotonic() < deadline, f"{batch_id} still {batch.status}"
        time.sleep(0.5)


def wait_progress(client: openai.OpenAI, batch_id: str, at_least: int, timeout: float = 120) -> int:
    """Wait until `at_least` lines of a running batch completed; return the count."""
    deadline = time.monotonic() + timeout
    while (done := client.batches.retrieve(batch_id).request_counts.completed) < at_least:
        assert time.monotonic() < deadline, f"{batch_id}: {done} of {at_least} lines done"
        time.sleep(0.1)
    return done
