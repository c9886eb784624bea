"""Writing a batch straight into storage, as `POST /v1/files` + `POST
/v1/batches` would, for tests that drive the ledger or pipeline without HTTP."""

from __future__ import annotations

import time
from typing import Any

from storage import ids
from storage.blobs import BlobStore
from storage.metadata import MetadataStore, now
from storage.records import BatchRecord, FileRecord


def store_batch(
    store: MetadataStore, blobs: BlobStore, key_id: str, data: bytes, endpoint: str, **fields: Any
) -> str:
    """An input file holding `data` and a `validating` batch over it; the batch id."""
    file_id = f"file-{time.monotonic_ns()}"
    blobs.write_bytes(file_id, data)
    store.insert_file(
        FileRecord(
            id=file_id,
            api_key_id=key_id,
            filename="in.jsonl",
            purpose="batch",
            bytes=len(data),
            created_at=now(),
            expires_at=None,
            deleted_at=None,
            blob_name=file_id,
        )
    )
    batch_id = f"batch_{time.monotonic_ns()}"
    store.insert_batch(
        BatchRecord(
            id=batch_id,
            api_key_id=key_id,
            endpoint=endpoint,
            input_file_id=file_id,
            completion_window="24h",
            status="validating",
            created_at=now(),
            expires_at=fields.pop("expires_at", now() + 86400),
            **fields,
        )
    )
    return batch_id


def batch_record(batch_id: str = "batch_x", **fields: Any) -> BatchRecord:
    """A batch record for tests of pure logic: a `validating` chat batch
    unless `fields` say otherwise."""
    defaults: dict[str, Any] = {
        "api_key_id": "key",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-x",
        "completion_window": "24h",
        "status": "validating",
        "created_at": 0,
        "expires_at": 10**10,
    }
    return BatchRecord(id=batch_id, **{**defaults, **fields})


def file_record(
    key_id: str,
    *,
    created_at: int,
    purpose: str = "batch",
    expires_at: int | None = None,
    file_id: str | None = None,
) -> FileRecord:
    fid = file_id or ids.new_file_id()
    return FileRecord(
        id=fid,
        api_key_id=key_id,
        filename=f"{fid}.jsonl",
        purpose=purpose,
        bytes=3,
        created_at=created_at,
        expires_at=expires_at,
        deleted_at=None,
        blob_name=fid,
        mime_type="application/jsonl",
    )
