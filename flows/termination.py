"""SIGTERM in a flow run under uvloop: Prefect's termination, delivered.

Prefect turns SIGTERM (its runner's cancel, `batchgate up` stopping) into
`TerminationSignal`, raised from a Python signal handler. Two things stood in
its way under uvloop (flows/forkserver.py sets uvloop for every run):

- uvloop lets only `KeyboardInterrupt` and `SystemExit` out of a loop
  callback: `UvloopTermination` is both a `TerminationSignal` (Prefect still
  catches it as one) and a `SystemExit`.
- A Python signal handler runs at the next bytecode of whatever the main
  thread is doing. Under uvloop that may be a protocol callback (an HTTP
  connection's `data_received`), where uvloop catches every exception as the
  transport's fatal error, logs it and goes on: a run took the signal that
  way and carried its batch on for 30 s more. So the handler raises in a
  loop callback of its own, scheduled at once, never inside the code it
  interrupted; with no loop running it raises where it is.
"""

from __future__ import annotations

import asyncio

from prefect.exceptions import TerminationSignal


class UvloopTermination(TerminationSignal, SystemExit):
    """Prefect's `TerminationSignal`, also a `SystemExit` so uvloop lets it out."""

    def __init__(self, signal: int) -> None:
        SystemExit.__init__(self, 128 + signal)
        self.signal = signal


def raise_termination(sig_num: int, *args: object) -> None:
    """The SIGTERM handler: end the run from the loop's top level."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise UvloopTermination(signal=sig_num) from None
    loop.call_soon_threadsafe(_terminate, sig_num)


def _terminate(sig_num: int) -> None:
    raise UvloopTermination(signal=sig_num)
