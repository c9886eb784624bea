"""Unit-test fixtures: the mock provider (one per module) and a fresh
pipeline harness (harness/pipeline.py) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgate.mock_provider.server import MockConfig, create_mock_app
from harness.pipeline import Harness
from harness.servers import ThreadedServer


@pytest.fixture(scope="module")
def mock() -> Iterator[ThreadedServer]:
    with ThreadedServer(create_mock_app(MockConfig(seed=1))) as server:
        yield server


@pytest.fixture
def h(tmp_path: Path, mock: ThreadedServer) -> Iterator[Harness]:
    harness = Harness(tmp_path, mock.url)
    yield harness
    harness.store.close()
