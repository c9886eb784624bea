"""What a child of `batchgate up` does so that it never outlives `up`.

`up` starts each child in its own process group (batchgate/up/supervisor.py) and
stops them itself. When `up` cannot - it was SIGKILLed, or the OOM killer
took it - nothing else would: the children, the runner's forkserver and its
flow runs would run on for good, holding the data directory's DuckDB lock and
the ports, and the next `up` on that directory would fail. Two layers make
them go:

- The kernel: `up` starts each child with `PR_SET_PDEATHSIG` set to SIGTERM
  (`die_with_parent`, called between fork and exec), so a child whose
  supervisor dies while it is still starting is signalled at once.
- The child itself: as soon as it runs Python, `watch_supervisor` holds a
  pidfd of `up` and waits on it in a thread. When `up` is gone the thread
  stops the child's whole process group - its own children first (the
  forkserver, flow runs, a server's workers), then the child - and kills
  what is left after a grace. It also clears the kernel's death signal: a
  SIGTERM straight to the child would let it exit before its own children
  are stopped, leaving them behind.

A child knows its supervisor by `BATCHGATE_SUPERVISOR_PID`, which `up` puts
in every child's environment and the child takes out of its own, so that the
processes it starts in turn do not watch `up` (they go with their group).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import threading
import time
from collections.abc import MutableMapping

import psutil

SUPERVISOR_PID_ENV = "BATCHGATE_SUPERVISOR_PID"
# How long the child's own children, then the child, may take to stop after
# the supervisor is gone, before SIGKILL. Two graces stay well inside the
# 20 s in which nothing of a killed `up` may be left (docs/operations.md).
ORPHAN_GRACE_SECONDS = 5.0
# Where pidfd_open is missing (Linux before 5.3), the parent is polled.
POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("batchgate.supervised")


def _prctl_death_signal(sig: int) -> None:
    """Set (or clear, with 0) the signal the kernel sends this process when
    its parent dies. Does nothing where there is no prctl (not Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def die_with_parent() -> None:
    """`preexec_fn` of every child of `up`: SIGTERM when `up` dies. Runs in the
    forked child before exec; the death signal survives the exec."""
    _prctl_death_signal(signal.SIGTERM)


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of process group `pgid` (zombies already ended their work)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def stop_processes(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM `procs`, wait up to `grace` for them, SIGKILL the rest."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def stop_own_tree(grace: float = ORPHAN_GRACE_SECONDS) -> None:
    """Stop this process's group and descendants, then this process: its
    children first, so none is left behind when it exits."""
    me = os.getpid()
    others = {proc.pid: proc for proc in group_members(os.getpgrp()) if proc.pid != me}
    with contextlib.suppress(psutil.Error):
        others.update({proc.pid: proc for proc in psutil.Process(me).children(recursive=True)})
    stop_processes(list(others.values()), grace)
    os.kill(me, signal.SIGTERM)  # this process's own orderly stop
    time.sleep(grace)
    os.kill(me, signal.SIGKILL)


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of `pid`, or None where the kernel has none (Linux before 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, ProcessLookupError):
            raise
        return None


def _wait_for_exit(pid: int, pidfd: int | None) -> None:
    """Block until process `pid` (this process's parent) has ended."""
    if pidfd is None:
        while os.getppid() == pid:
            time.sleep(POLL_SECONDS)
        return
    try:
        while not select.select([pidfd], [], [])[0]:
            pass
    finally:
        os.close(pidfd)


def _watch(pid: int, pidfd: int | None) -> None:
    _wait_for_exit(pid, pidfd)
    log.warning("batchgate up (PID %d) is gone: stopping this process and its children", pid)
    stop_own_tree()


def watch_supervisor(environ: MutableMapping[str, str] = os.environ) -> bool:
    """If this process is a child of `up`, stop it when `up` is gone.

    Returns whether it watches. The pidfd is taken before the kernel's death
    signal is cleared, so there is no moment in which neither would act; a
    supervisor already gone by then is noticed at once (this process has
    been re-parented, or its pid has no process)."""
    raw = environ.pop(SUPERVISOR_PID_ENV, None)
    if not raw or not raw.isdigit():
        return False
    pid = int(raw)
    try:
        if os.getppid() != pid:
            raise ProcessLookupError(pid)
        pidfd = _open_pidfd(pid)
    except ProcessLookupError:  # `up` died before this process got here
        threading.Thread(target=stop_own_tree, name="supervisor-gone", daemon=True).start()
        return True
    _prctl_death_signal(0)
    thread = threading.Thread(
        target=_watch, args=(pid, pidfd), name="supervisor-watch", daemon=True
    )
    thread.start()
    return True
