"""A flow run logs batchgate's lines at the runner's `--log-level`.

Prefect's logging set-up leaves the root logger at WARNING in a flow run,
so the per-request DEBUG lines that name each line's request ids
(tasks/upstream.py) never showed, whatever the level. A real flow-run
process imports `flows.forkserver` (its forkserver preload) and Prefect sets
its logging up; this test does the same in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOW_RUN = """
import logging
import flows.forkserver
from prefect.logging.configuration import setup_logging
setup_logging()
log = logging.getLogger("batchgate.upstream")
log.debug("marker-debug")
log.info("marker-info")
"""


def test_a_flow_run_logs_batchgate_at_the_runner_level(tmp_path: Path) -> None:
    """At `--log-level debug` the DEBUG lines show. One case only: each is an
    interpreter that imports Prefect (5-14 s here), and "info" takes the same path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHGATE_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        BATCHGATE_DATA_DIR=str(tmp_path / "data"),
        BATCHGATE_LOG_LEVEL="debug",
    )
    done = subprocess.run(
        [sys.executable, "-c", FLOW_RUN],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "marker-debug" in done.stderr and "marker-info" in done.stderr
