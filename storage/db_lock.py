"""The DuckDB file is one process's: what a second opener is told.

DuckDB locks the metadata file for the process that opened it (the
gateway), so a tool run beside it (`batchgate create-key`, `doctor`,
`rotate-secret-key`, a second `serve`) cannot open it. `MetadataStore` turns
that refusal into `DatabaseInUse`, which `batchgate` prints as one line
(batchgate/cli.py `main`). Kept free of DuckDB imports so the command line can
catch it without loading DuckDB for commands that never open the file.
"""

from __future__ import annotations

import re

LOCK_CONFLICT = re.compile(r"Could not set lock on file|Conflicting lock is held")
HOLDER_PID = re.compile(r"\(PID (\d+)\)")


class DatabaseInUse(Exception):
    """Another process (a running gateway, most likely) holds the DuckDB file."""

    def __init__(self, path: str, detail: str) -> None:
        pid = HOLDER_PID.search(detail)
        holder = f" (PID {pid.group(1)})" if pid else ""
        super().__init__(
            f"cannot open {path}: another process{holder} holds it - is the gateway still "
            "running? Stop it first: DuckDB lets only one process open the file."
        )


def is_lock_conflict(error: Exception) -> bool:
    """True for DuckDB's refusal to open a file another process has locked."""
    return bool(LOCK_CONFLICT.search(str(error)))
