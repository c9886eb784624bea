"""Named crash points: a TEST-ONLY hook that SIGKILLs a process at a chosen spot.

The crash-matrix tests (tests/integration/test_crash_matrix.py) need to kill
the runner or the gateway at exact places in a batch - after the plan is
saved, between two chunks, in the middle of finalize - rather than at a
random moment. Production code calls `crash_point("name")` at those places;
it does nothing unless the process was started with

    BATCHGATE_CRASH_AT="validate:after_plan,execute:after_response#40"
    BATCHGATE_CRASH_DIR=/some/dir      (optional, but what tests use)

`name#N` fires at the N-th time this process reaches the point (default the
first). With BATCHGATE_CRASH_DIR each point fires once across all processes
and restarts: the first to reach it creates `<dir>/<name>` and dies; later
ones see the marker and go on, so a restarted process does not crash again.

Firing sends SIGKILL to the caller's whole process group - the runner and
every flow run it spawned, or the gateway - exactly as `kill -9` of the
process a user started would. With BATCHGATE_CRASH_SCOPE=process only the
calling process dies (one flow run, not its runner). Arm it only in a
process started in its own session (harness/stack.py does so); never set
these variables in production.

When unset, `crash_point` costs one test of an empty set: the variables are
read once, at import.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_ARMED: dict[str, int] = {}
for _spec in filter(None, (s.strip() for s in os.environ.get("BATCHGATE_CRASH_AT", "").split(","))):
    _name, _, _count = _spec.partition("#")
    _ARMED[_name] = int(_count or 1)
_MARKERS = os.environ.get("BATCHGATE_CRASH_DIR")
_SCOPE = os.environ.get("BATCHGATE_CRASH_SCOPE", "group")
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here (SIGKILL to the process group) if the test armed `name`."""
    if _ARMED and name in _ARMED:
        _maybe_die(name)


def marker_path(directory: Path | str, name: str) -> Path:
    """Where a fired point (`name` or `name#N`, as armed) leaves its marker."""
    return Path(directory) / name.replace("/", "_")


def _maybe_die(name: str) -> None:
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != _ARMED[name]:
        return
    if _MARKERS:
        try:
            spec = name if _ARMED[name] == 1 else f"{name}#{_ARMED[name]}"
            fd = os.open(marker_path(_MARKERS, spec), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # fired once already, in this or an earlier process
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        os.close(fd)
    if _SCOPE == "process":
        os.kill(os.getpid(), signal.SIGKILL)
    os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(137)  # not reached; in case the group could not be signalled
