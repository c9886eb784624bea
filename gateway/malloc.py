"""glibc's malloc arenas for the gateway process, limited at start.

The gateway runs its DuckDB calls on worker threads, and glibc gives a
thread that contends for the heap an arena of its own (up to eight per
core), each keeping what was freed in it. With two arenas the gateway's
peak RSS on the big-file benchmark went from 212 MB to 199-201 MB
(docs/benchmarks.md), at no measured cost in speed. The runner sets the
same for its flow runs through the environment (flows/serve.py); the
gateway sets it with `mallopt` before any thread starts, so `batchgate
serve` gets it however it was started.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas(count: int = ARENAS) -> bool:
    """Limit the arenas unless `MALLOC_ARENA_MAX` says otherwise (the
    operator's choice wins); False where there is no glibc `mallopt`."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, count))
