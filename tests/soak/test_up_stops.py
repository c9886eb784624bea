"""Every way users stop `batchgate up`, six times each, at six moments of its
life: just launched, children starting, waiting for the Prefect server,
ready, a batch running, and with another signal while it stops. Each stop
ends with `up` exiting 0 and none of its processes left (found by their
environment: the data directory). Marked `soak`: 18 starts take ~5 minutes;
`make test` runs the SIGKILL and double-signal cases in
tests/integration/test_up_stop.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.batches import create_batch, upload
from harness.lines import chat_lines
from harness.up import STOPS, Up

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]

MOCK_LATENCY_MS = 200


def _batch_running(up: Up, tmp_path: Path) -> None:
    up.wait_ready()
    up.add_mock_provider("--latency-ms", str(MOCK_LATENCY_MS))
    client = up.client()
    create_batch(client, upload(client, tmp_path, chat_lines("stop", 500)))
    deadline = time.monotonic() + 60
    while sum(up.upstream_requests().values()) < 20:
        assert time.monotonic() < deadline, "the batch never started"
        time.sleep(0.2)


def _sleep(seconds: float) -> Callable[[Up, Path], None]:
    return lambda up, tmp_path: time.sleep(seconds)


# When the stop comes; "while stopping" signals once more a second later.
MOMENTS: dict[str, Callable[[Up, Path], None]] = {
    "just launched": _sleep(0.3),
    "children starting": _sleep(1.5),
    "waiting for Prefect": _sleep(4.0),
    "ready": lambda up, tmp_path: up.wait_ready(),
    "a batch running": _batch_running,
    "while stopping": lambda up, tmp_path: up.wait_ready(),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_every_stop_leaves_nothing_running(how: str, up_dir: Path) -> None:
    stop_seconds: list[float] = []
    for number, (moment, wait) in enumerate(MOMENTS.items()):
        root = up_dir / str(number)
        with Up(root) as up:
            wait(up, root)
            assert up.proc is not None
            if moment == "while stopping":
                STOPS[how](up.proc.pid)
                time.sleep(1.0)
            started = time.monotonic()
            code = up.stop(how)
            stop_seconds.append(time.monotonic() - started)
            left = up.wait_gone(5.0)
            assert code == 0, f"{moment}: exit {code}\n{up.text}"
            assert not left, f"{moment}: {[p.cmdline() for p in left]}\n{up.text}"
    print(f"{how}: stops took {min(stop_seconds):.1f}-{max(stop_seconds):.1f} s")
