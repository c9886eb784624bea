"""The local Prefect server that `batchgate up` runs: Prefect's own
`prefect server start`, with SQLite's busy timeout bounded.

Why not plain `prefect server start`: under load its event loop froze for a
whole minute at a time (the load soak test: a batch created just before 50
clients started stayed `validating`, its flow run never started). gdb on the
frozen server showed the loop thread in `sqlite3_reset`, waiting for a
connection's mutex while it freed an exception whose traceback still held a
cursor of that connection. An aiosqlite worker thread held the mutex: it was
inside `sqlite3_step`, waiting in SQLite's busy handler for the write lock,
and Prefect sets that wait to 60 s (`PRAGMA busy_timeout = 60000`). The write
lock's owner was a coroutine on the frozen loop, so nothing moved until the
60 s ran out: every API call (the runner's poll for scheduled runs, state
changes, the gateway's flow-run starts) waited with it.

A bounded busy timeout bounds that freeze. A write that cannot get the lock
within it fails with "database is locked"; Prefect answers 503 and its
clients retry, and its services retry on their next loop. Prefect 3.8.8 has
no setting for the value (`PREFECT_SERVER_DATABASE_TIMEOUT` is overridden by
the PRAGMA), so the connection set-up is wrapped here; a unit test checks the
wrap still takes effect on the pinned Prefect.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

# Prefect's writes take milliseconds; a few seconds covers a busy, CPU-starved
# server, and the loop can never freeze for longer than this.
SQLITE_BUSY_TIMEOUT_MS = 5000


def bound_sqlite_busy_timeout(milliseconds: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
    """Make every SQLite connection of Prefect's server wait at most
    `milliseconds` for a lock, after Prefect's own set-up has run."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    original = AioSqliteConfiguration.setup_sqlite
    if getattr(original, "bounded_busy_timeout", None) == milliseconds:
        return

    @functools.wraps(original)
    def setup_sqlite(self: AioSqliteConfiguration, conn: Any, record: Any) -> None:
        original(self, conn, record)
        cursor = conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(milliseconds)};")
        cursor.close()

    setup_sqlite.bounded_busy_timeout = milliseconds  # type: ignore[attr-defined]
    AioSqliteConfiguration.setup_sqlite = setup_sqlite  # type: ignore[method-assign]


def command(host: str, port: int) -> list[str]:
    """The argv that starts this server on host:port (its SQLite file lives in
    PREFECT_HOME)."""
    return [sys.executable, "-m", "batchgate.up.prefect_server", "server", "start",
            "--host", host, "--port", str(port), "--analytics-off"]  # fmt: skip


def main() -> None:
    """`prefect <args>` in this process, with the busy timeout bounded (the
    server runs in-process with one worker, so the wrap applies to it).
    Prefect's CLI reads its arguments from `sys.argv`."""
    from batchgate.up.supervised import watch_supervisor

    watch_supervisor()  # started by `up`: stop with it, even a SIGKILLed one
    bound_sqlite_busy_timeout()
    from prefect.cli import app

    app()


if __name__ == "__main__":
    main()
