"""What the flow-run forkserver loads before it forks its first run.

`flows.serve.prefork_flow_runs` names this module as the forkserver's only
preload. Everything imported here is shared, copy-on-write, by every run
forked afterwards; anything a run imports itself is paid again by each run.
So it imports the flows and the Prefect engine modules a run needs (Prefect
imports those lazily, inside the child), then freezes the garbage
collector: a collection in a child would otherwise write to every object
header it visits and copy the parent's pages into the child one by one
(measured: a run started with 47 MB of its own pages before any work).

It also lowers its own CPU priority (`flow_run_nice`, inherited by every run):
a batch is background work, and when it shares cores with the gateway the
API's answers should not wait behind it (measured with the load test: the
slowest answers all came while 11 runs started at once; docs/reliability.md).
"""

from __future__ import annotations

import gc
import os

import prefect.flow_engine
import prefect.task_engine

import flows.process_batch
import flows.retention
from tasks.settings import load_settings

PRELOADED = (flows.process_batch, flows.retention, prefect.flow_engine, prefect.task_engine)

os.nice(load_settings().flow_run_nice)
gc.collect()
gc.freeze()
