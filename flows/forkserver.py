"""What the flow-run forkserver loads before it forks its first run.

`flows.serve.prefork_flow_runs` names this module as the forkserver's only
preload. Everything imported here is shared, copy-on-write, by every run
forked afterwards; anything a run imports itself is paid again by each run.
So it imports the flows and the Prefect engine modules a run needs (Prefect
imports those lazily, inside the child), then freezes the garbage
collector: a collection in a child would otherwise write to every object
header it visits and copy the parent's pages into the child one by one
(measured: a run started with 47 MB of its own pages before any work).

It sets what every run inherits: uvloop as the event loop (the request
loop of a chunk is the run's hot path: measured 2,331 -> 2,684-2,800
requests/s in the overhead-bound benchmark), a SIGTERM that still stops a
run under uvloop (`_termination_escapes_uvloop`, flows/termination.py), and the CPU niceness
`flow_run_nice` (0 unless set: see docs/reliability.md for the trade-off),
and the runner's `--log-level` for the `batchgate` loggers: Prefect's
logging set-up leaves the root logger at WARNING in a run, which hid the
per-request DEBUG lines of `batchgate.upstream` and batchgate's INFO lines.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

import prefect.flow_engine
import prefect.task_engine
import prefect.utilities.engine
import uvloop

import flows.process_batch
import flows.process_chunks
import flows.retention
from flows.termination import raise_termination
from tasks.settings import load_settings

PRELOADED = (
    flows.process_batch,
    flows.process_chunks,
    flows.retention,
    prefect.flow_engine,
    prefect.task_engine,
)


def _termination_escapes_uvloop() -> None:
    """Make Prefect's SIGTERM bridge raise `UvloopTermination`. Prefect looks
    the handler up by its module name each time it installs or checks it."""
    prefect.utilities.engine._prefect_sigterm_handler = raise_termination  # type: ignore[assignment]


os.nice(load_settings().flow_run_nice)
logging.getLogger("batchgate").setLevel(os.environ.get("BATCHGATE_LOG_LEVEL", "info").upper())
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
_termination_escapes_uvloop()
gc.collect()
gc.freeze()
