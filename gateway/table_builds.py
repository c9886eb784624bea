"""Building a finished batch's results table and summary, once, off the gateway's heap.

The table is built by `tasks/results_table.py` in a child process reading
the blob files directly: Polars then holds the batch's results in that
process, never in the gateway, whose memory stays flat however large the
batch. The Parquet file, the CSV file and the summary are stored as blobs
derived from the batch and served from there on every later request; a
per-batch lock makes concurrent first requests wait for one build.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import orjson

from gateway.errors import APIError
from storage.blobs import BlobStore
from storage.records import BatchRecord
from tasks.ledger import derived_blob_name, derived_file_id, keeps_parts

log = logging.getLogger("batchgate.gateway")

_locks: dict[str, asyncio.Lock] = {}
BUILT = ("parquet", "csv", "summary")


def is_built(blobs: BlobStore, batch_id: str) -> bool:
    return all(blobs.exists(derived_blob_name(batch_id, kind)) for kind in BUILT)


def require_result_files(blobs: BlobStore, batch: BatchRecord) -> None:
    """An ended batch's results come from its output and error files; once
    one was deleted (by its owner, or on expiry) they are gone, and a table
    built now would show its lines as never answered."""
    gone = [f for f in (batch.output_file_id, batch.error_file_id) if f and not blobs.exists(f)]
    if gone:
        raise APIError(
            404,
            f"The results of {batch.id} are no longer available: {', '.join(gone)} was "
            "deleted or has expired.",
            code="results_unavailable",
        )


def build_command(blobs: BlobStore, batch_id: str) -> list[str]:
    """The child process that writes the table, its CSV and the summary."""
    return [
        sys.executable,
        "-m",
        "tasks.results_table",
        str(blobs.path(derived_blob_name(batch_id, "meta"))),
        str(blobs.path(derived_file_id(batch_id, "output"))),
        str(blobs.path(derived_file_id(batch_id, "error"))),
        str(blobs.path(derived_blob_name(batch_id, "parquet"))),
        "--csv",
        str(blobs.path(derived_blob_name(batch_id, "csv"))),
        "--summary",
        str(blobs.path(derived_blob_name(batch_id, "summary"))),
    ]


async def ensure_built(blobs: BlobStore, batch: BatchRecord) -> None:
    """Build the table and summary of an ended batch unless they exist. A
    result file deleted since the table was built takes the table with it
    (`tasks.retention.delete_file`); the check comes first all the same, so
    a table is never served beside a file that is gone."""
    require_result_files(blobs, batch)
    if is_built(blobs, batch.id):
        return
    lock = _locks.setdefault(batch.id, asyncio.Lock())
    try:
        async with lock:
            if is_built(blobs, batch.id):
                return
            if keeps_parts(batch):
                raise APIError(
                    404,
                    f"{batch.id} has no results table: its finalize failed, so it has no "
                    f"output or error file. Its finished lines are at GET "
                    f"/v1/batches/{batch.id}/results.",
                    code="results_unavailable",
                )
            process = await asyncio.create_subprocess_exec(
                *build_command(blobs, batch.id),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await process.communicate()
            if process.returncode != 0:
                log.error(
                    "results table of %s failed (exit %s): %s",
                    batch.id,
                    process.returncode,
                    stderr.decode(errors="replace")[-2000:],
                )
                raise APIError(
                    500,
                    f"The results table of {batch.id} could not be built.",
                    code="results_table_failed",
                )
    finally:
        if not lock.locked():
            _locks.pop(batch.id, None)


_ENDED_AT = ("completed_at", "cancelled_at", "expired_at", "failed_at")


def summary_object(batch: BatchRecord, summary: dict[str, Any]) -> dict[str, Any]:
    """The stored summary with the batch's own figures: status, wall time
    (in progress to ended, whole seconds as the Batch object has them) and
    lines run per second."""
    ended = next((getattr(batch, f) for f in _ENDED_AT if getattr(batch, f)), None)
    started = batch.in_progress_at
    wall = max(1, ended - started) if ended and started else None
    ran = summary.get("ran", 0)
    return {
        "object": "batch.summary",
        "batch_id": batch.id,
        "status": batch.status,
        "endpoint": batch.endpoint,
        "wall_time_seconds": wall,
        "requests_per_second": round(ran / wall, 3) if wall else None,
        **summary,
    }


def read_summary(blobs: BlobStore, batch: BatchRecord) -> dict[str, Any]:
    with blobs.open(derived_blob_name(batch.id, "summary")) as handle:
        return summary_object(batch, orjson.loads(handle.read()))
