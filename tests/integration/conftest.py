"""Fixtures shared by the end-to-end tests: one Prefect server per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.stack import PrefectServer


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with PrefectServer(Path(tmp_path_factory.mktemp("prefect"))) as server:
        yield server
