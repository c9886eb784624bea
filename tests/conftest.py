"""Test-wide set-up: importable `harness.live`, no Prefect telemetry, an
in-process gateway fixture for fast HTTP tests, and the two tiers.

A test that uses a fixture which starts real servers - a Prefect server,
`batchgate up`, a gateway process - is marked `e2e` at collection
(`E2E_FIXTURES`): `make quick` runs the rest, `make test` everything but
the `soak` runs."""

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

from harness.live import FakeFlowRuns, inprocess_app  # noqa: E402

# Fixtures that start a Prefect server, `batchgate up` or a gateway process.
E2E_FIXTURES = frozenset(
    {
        "prefect_server",
        "up_dir",
        "gateway_dir",
        "stack",
        "gw",
        "limited_gw",
        "env",
        "target",
        "two",
        "run",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def up_dir(tmp_path: Path) -> Path:
    """A directory for a real `batchgate up` (harness/up.py `Up`)."""
    return tmp_path


@pytest.fixture
def gateway_dir(tmp_path: Path) -> Path:
    """A directory for a gateway process of the test's own (harness/live.py `LiveGateway`)."""
    return tmp_path


@pytest.fixture
def inproc_app(tmp_path: Path) -> Iterator[Any]:
    """The gateway app in this process over a fresh data directory; its
    flow-run starter is a `FakeFlowRuns` (ready) at `app.state.gateway.flow_runs`."""
    app = inprocess_app(tmp_path / "data", flow_runs=FakeFlowRuns(ready=True))
    yield app
    app.state.gateway.store.close()
