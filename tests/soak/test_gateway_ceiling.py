"""`python -m bench.gateway_ceiling --quick` runs end to end and prints every
table of docs/scale-out.md's "The gateway's ceiling" with measured figures.
A subprocess, as a user runs it (the benchmark pins its own process to a
CPU). Marked `soak`: `make soak` only (about a minute)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from harness.live import REPO_ROOT

pytestmark = [pytest.mark.soak, pytest.mark.timeout(600)]

TITLES = (
    "## Chunk posts (worker -> gateway checkpoints)",
    "## Finalize (checkpoint parts -> output files)",
    "## Input served to workers",
    "## Public metadata requests",
    "## Running batches until the gateway is the bottleneck",
    "## A 10-million-line day against these ceilings",
)


def test_the_quick_ceiling_benchmark_prints_its_tables() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway_ceiling", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for title in TITLES:
        assert title in out
    # the 1,000-line chunk row: a real post rate and its cost to the gateway
    row = re.search(
        r"^\| 1,000 +\| 0\.\d\d MB \| 4 x 2 +\| ([\d,]+) +\|.*\| ([\d.]+) ms +\|", out, re.M
    )
    assert row is not None, out
    assert int(row.group(1).replace(",", "")) > 0 and float(row.group(2)) > 0
    assert re.search(r"^- Knee: ", out, re.M)
