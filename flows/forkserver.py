"""What the flow-run forkserver loads before it forks its first run.

`flows.serve.prefork_flow_runs` names this module as the forkserver's only
preload. Everything imported here is shared, copy-on-write, by every run
forked afterwards; anything a run imports itself is paid again by each run.
So it imports the flows and the Prefect engine modules a run needs (Prefect
imports those lazily, inside the child), then freezes the garbage
collector: a collection in a child would otherwise write to every object
header it visits and copy the parent's pages into the child one by one
(measured: a run started with 47 MB of its own pages before any work).

It sets two things every run inherits: uvloop as the event loop (the
request loop of a chunk is the run's hot path: measured 2,331 -> 2,684-2,800
requests/s in the overhead-bound benchmark), and the CPU niceness
`flow_run_nice` (0 unless set: see docs/reliability.md for the trade-off).
"""

from __future__ import annotations

import asyncio
import gc
import os

import prefect.flow_engine
import prefect.task_engine
import uvloop

import flows.process_batch
import flows.retention
from tasks.settings import load_settings

PRELOADED = (flows.process_batch, flows.retention, prefect.flow_engine, prefect.task_engine)

os.nice(load_settings().flow_run_nice)
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
gc.collect()
gc.freeze()
