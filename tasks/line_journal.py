"""Finished lines of a chunk in flight, on disk as they finish, so a killed
`batchgate run` loses only the requests it had in flight.

A chunk is the checkpoint (docs/how-it-works.md, "Recovery"): its lines are kept in
memory until the whole chunk is recorded. A run killed outright (SIGKILL,
the OOM killer, a closed laptop lid that never comes back) loses that memory:
every line of the chunks in flight was sent again on resume, up to
`chunk_parallelism` chunks of work. The journal closes that gap: each line,
once its outcome is known, is appended to its chunk's journal file with one
`write` (the kernel keeps it when the process dies), and the resumed chunk
takes those lines from the journal instead of sending them again. What is
lost is what was in flight: at most the provider's window of requests.

A record is one line: a JSON header (line index in the chunk, provider,
latency, attempts, whether it goes to the output or the error file), a tab,
then the result line as it goes into the output or error file (which ends
the record with its newline). A record cut short by the kill has no newline
and is ignored: that line is sent again, and it is in no file twice because
a chunk's files are written once, from the journal and the new answers
together, when the chunk is recorded. The journal of a recorded chunk is
deleted; the state directory of a finished run goes with it.

Power loss is not covered (no fsync per line: that would cost more than the
request); a checkpoint, which is fsynced, is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class JournaledLine:
    """One finished line as the journal kept it."""

    line: bytes  # the output- or error-file line, newline included
    ok: bool  # True: it goes to the output file
    provider: str | None
    latency_ms: float | None
    attempts: int

    def body(self) -> dict[str, Any]:
        """The provider's response body of an answered line (for usage and model)."""
        response = orjson.loads(self.line).get("response") or {}
        body = response.get("body")
        return body if isinstance(body, dict) else {}


class ChunkJournal:
    """The journal file of one chunk: `replay()` what an earlier run finished,
    then `record()` each line as it finishes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def replay(self) -> dict[int, JournaledLine]:
        """Lines finished by an earlier run of this chunk, by index in the chunk."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        done: dict[int, JournaledLine] = {}
        for record in data.splitlines(keepends=True):
            if not record.endswith(b"\n"):
                break  # the write the kill cut short: that line runs again
            head, tab, line = record.partition(b"\t")
            if not tab:
                break
            try:
                index, ok, provider, latency_ms, attempts = orjson.loads(head)
            except (orjson.JSONDecodeError, ValueError):
                break
            done[index] = JournaledLine(line, ok, provider, latency_ms, attempts)
        return done

    def record(
        self,
        index: int,
        line: bytes,
        *,
        ok: bool,
        provider: str | None,
        latency_ms: float | None,
        attempts: int,
    ) -> None:
        """Append one finished line with a single `write`, so a kill leaves
        either the whole record or a cut one that `replay` drops."""
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        head = orjson.dumps([index, ok, provider, latency_ms, attempts])
        os.write(self._fd, head + b"\t" + line)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Journals:
    """The journals of a run's chunks, one file per chunk in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, index: int) -> Path:
        return self.directory / f"chunk-{index:06d}.journal"

    def open(self, index: int) -> ChunkJournal:
        return ChunkJournal(self._path(index))

    def discard(self, index: int) -> None:
        """The chunk is recorded: its journal has nothing left to give."""
        self._path(index).unlink(missing_ok=True)
