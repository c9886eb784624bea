"""Stopping `batchgate up` leaves nothing running: not after two stop signals
at once (a service manager's SIGTERM to the group plus `uv run`'s forwarded
one), not after `up` itself is SIGKILLed. Its processes are found by their
environment (the data directory), wherever they sit in the process tree.
The full matrix - each way of stopping, six times, at every moment of a
start - is the soak test tests/soak/test_up_stops.py."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from batchgate.up.supervisor import Shutdown, StopRequest
from harness.up import Up

# Nothing of a SIGKILLed `up` may be running this long after it died.
ORPHAN_DEADLINE_SECONDS = 20.0


def test_a_sigkilled_up_leaves_nothing_and_up_starts_again_on_its_directory(
    up_dir: Path,
) -> None:
    with Up(up_dir) as up:
        up.wait_ready()
        before = up.processes()
        # up, Prefect server, gateway, runner, and the runner's forkserver
        assert len(before) >= 5, [p.cmdline() for p in before]
        assert up.proc is not None
        up.proc.kill()
        up.proc.wait()
        left = up.wait_gone(ORPHAN_DEADLINE_SECONDS)
        assert not left, [p.cmdline() for p in left]
    # The same directory and ports: nothing holds the DuckDB file or a port.
    with Up(up_dir, ports=(up.port, up.prefect_port)) as again:
        again.wait_ready()
        assert again.client().files.list().data == []
        assert again.stop("SIGTERM to the group, then to up") == 0
        assert not again.wait_gone(5.0)
        assert "stopped" in again.text


def test_the_first_stop_signal_raises_and_later_ones_are_only_noted() -> None:
    stop = StopRequest()
    with pytest.raises(Shutdown, match="SIGTERM"):
        stop.handle(signal.SIGTERM, None)
    stop.handle(signal.SIGTERM, None)  # during the stop: must not raise again
    stop.handle(signal.SIGINT, None)
    assert stop.received == ["SIGTERM", "SIGTERM", "SIGINT"]


def test_a_stop_signal_during_a_stop_for_a_failure_is_only_noted() -> None:
    stop = StopRequest()
    stop.disarm()  # `up` is already stopping: a crash loop, a failed start
    stop.handle(signal.SIGINT, None)
    assert stop.received == ["SIGINT"]
