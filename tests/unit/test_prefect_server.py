"""The local Prefect server bounds SQLite's busy timeout (batchgate/up/prefect_server.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from prefect.server.database.configurations import AioSqliteConfiguration

from batchgate.up.prefect_server import SQLITE_BUSY_TIMEOUT_MS, bound_sqlite_busy_timeout, command
from batchgate.up.supervisor import prefect_server_command


def busy_timeout_after_setup(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")
        config.setup_sqlite(conn, None)  # type: ignore[arg-type]
        return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    finally:
        conn.close()


def test_prefects_own_setup_waits_a_minute_for_a_lock(tmp_path: Path) -> None:
    """What the wrap is for: without it a connection waits 60 s, the length
    of the freeze seen under load (see the module docstring)."""
    original = AioSqliteConfiguration.setup_sqlite
    unwrapped = getattr(original, "__wrapped__", original)
    conn = sqlite3.connect(tmp_path / "plain.db")
    try:
        unwrapped(AioSqliteConfiguration(connection_url="sqlite+aiosqlite://"), conn, None)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000
    finally:
        conn.close()


def test_the_wrap_bounds_every_new_connection(tmp_path: Path) -> None:
    bound_sqlite_busy_timeout()
    bound_sqlite_busy_timeout()  # a second call does not wrap twice
    assert busy_timeout_after_setup(tmp_path / "prefect.db") == SQLITE_BUSY_TIMEOUT_MS
    assert SQLITE_BUSY_TIMEOUT_MS < 60_000


def test_batchgate_up_and_the_test_stack_start_this_server() -> None:
    argv = prefect_server_command(4999)
    assert argv == command("127.0.0.1", 4999)
    assert argv[1:3] == ["-m", "batchgate.up.prefect_server"]
    assert argv[3:5] == ["server", "start"]
