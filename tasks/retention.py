"""Deleting expired files: the work of the `retention` flow.

A file goes when its own `expires_at` passes. Output and error files also
go when their batch's `output_expires_after` (anchored at the batch's
`created_at`) passes; the input file keeps its own expiry. A batch's
derived results (table, CSV, summary, per-line meta) hold the
same data as its output and error files, so they go with the first of
those files to be deleted (by its owner or here): the batch's table and
summary then answer 404 `results_unavailable`, and no copy of the lines
outlives the file. A batch whose finalize failed has only its checkpoint parts,
kept for reading its finished lines; they go once its output expiry (or
KEPT_PARTS_SECONDS) has passed since it failed. Settled webhook deliveries (delivered
or given up) are kept for WEBHOOK_HISTORY_SECONDS, then removed, so the
outbox stays the size of its recent traffic.
"""

from __future__ import annotations

from typing import Any

from storage.blobs import BlobStore
from storage.metadata import MetadataStore, now
from tasks.ledger import (
    DERIVED_SUFFIXES,
    KEPT_PARTS_SECONDS,
    derived_blob_name,
    keeps_parts,
    remove_parts,
)

WEBHOOK_HISTORY_SECONDS = 30 * 24 * 3600


def delete_file(store: MetadataStore, blobs: BlobStore, file_id: str) -> bool:
    """Soft-delete one file: the row keeps `deleted_at`, the bytes go at once,
    and so do the derived results of a batch whose output or error file it is."""
    record = store.get_file(file_id, include_gone=True)
    if record is None or record.deleted_at is not None:
        return False
    store.mark_file_deleted(file_id)
    blobs.delete(record.blob_name)
    if record.purpose == "batch_output" and (batch := store.batch_of_result_file(file_id)):
        drop_derived(blobs, batch.id)
    return True


def sweep(store: MetadataStore, blobs: BlobStore, at: int | None = None) -> dict[str, Any]:
    at = at if at is not None else now()
    deleted: list[str] = []
    for record in store.expired_files(at):
        if delete_file(store, blobs, record.id):
            deleted.append(record.id)
    for batch in store.terminal_batches():
        seconds = batch.output_expires_after_seconds
        if not seconds or batch.created_at + seconds > at:
            continue
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id and delete_file(store, blobs, file_id):
                deleted.append(file_id)
    for batch in store.terminal_batches():
        files = (batch.output_file_id, batch.error_file_id)
        if has_derived(blobs, batch.id) and any(f and store.get_file(f) is None for f in files):
            drop_derived(blobs, batch.id)  # a file deleted before deletes took them along
        if keeps_parts(batch):
            kept = batch.output_expires_after_seconds or KEPT_PARTS_SECONDS
            if (batch.failed_at or batch.created_at) + kept <= at:
                remove_parts(store, blobs, batch.id)
    pruned = store.prune_webhook_outbox(at - WEBHOOK_HISTORY_SECONDS)
    return {"deleted_files": len(deleted), "file_ids": deleted, "pruned_webhook_deliveries": pruned}


def has_derived(blobs: BlobStore, batch_id: str) -> bool:
    return any(blobs.exists(derived_blob_name(batch_id, kind)) for kind in DERIVED_SUFFIXES)


def drop_derived(blobs: BlobStore, batch_id: str) -> None:
    """Remove a batch's derived results (a no-op when it has none)."""
    for kind in DERIVED_SUFFIXES:
        blobs.delete(derived_blob_name(batch_id, kind))
