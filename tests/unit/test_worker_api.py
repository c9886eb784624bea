"""The HTTP twin of the worker API: how long a run waits for a gateway that
does not answer."""

from __future__ import annotations

import time

import httpx
import pytest

from harness.live import free_port
from tasks.worker_api import SUMMARY_PATIENCE, HttpWorkerAPI


def test_a_finished_runs_summary_waits_briefly_for_an_unreachable_gateway() -> None:
    """The summary comes after the batch has ended: a gateway going down (as
    `batchgate up` stops) must not hold the run, and with it its runner, for
    the run's whole patience."""
    api = HttpWorkerAPI(f"http://127.0.0.1:{free_port()}", "token", patience=120)
    began = time.monotonic()
    with pytest.raises(httpx.TransportError):
        api.results_summary("batch_x")
    assert time.monotonic() - began < SUMMARY_PATIENCE + 6  # one back-off step past it at most
