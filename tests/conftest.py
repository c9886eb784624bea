"""Test-wide set-up: importable `tests.live`, no Prefect telemetry, and an
in-process gateway fixture for fast HTTP tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from tests.live import FakeFlowRuns, inprocess_app  # noqa: E402


@pytest.fixture
def inproc_app(tmp_path: Path) -> Iterator[Any]:
    """The gateway app in this process over a fresh data directory; its
    flow-run starter is a `FakeFlowRuns` (ready) at `app.state.gateway.flow_runs`."""
    app = inprocess_app(tmp_path / "data", flow_runs=FakeFlowRuns(ready=True))
    yield app
    app.state.gateway.store.close()
