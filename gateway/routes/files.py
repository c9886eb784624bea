"""The Files API: upload, list, retrieve, download, delete.

Uploads stream from the socket into the blob store (see gateway.uploads);
the blob is named by the file id, never by the client's filename. Metadata
routes read DuckDB only; only `/content` touches the bytes. A file that is
deleted, expired or another key's is the same 404 everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import require_key
from gateway.errors import APIError, bad_request, not_found
from gateway.models.objects import file_object
from gateway.pagination import list_envelope, parse_choice, parse_int, parse_limit, parse_order
from gateway.state import gateway_state
from gateway.uploads import StreamingFormParser, UploadForm, UploadMalformed, UploadTooLarge
from storage import ids
from storage.metadata import now
from storage.records import ApiKeyRecord, FilePurpose, FileRecord
from tasks.retention import delete_file

UPLOAD_PURPOSES: frozenset[FilePurpose] = frozenset(
    {"batch", "user_data", "assistants", "fine-tune", "vision", "evals"}
)
# A name as a purpose (the dict types the lookup: str in, FilePurpose out).
_UPLOAD_PURPOSE: dict[str, FilePurpose] = {purpose: purpose for purpose in UPLOAD_PURPOSES}
# Purposes of files the system writes (batch output and error files).
SYSTEM_PURPOSES: frozenset[FilePurpose] = frozenset({"batch_output"})
ALL_PURPOSES = UPLOAD_PURPOSES | SYSTEM_PURPOSES
MIN_EXPIRES_SECONDS = 3600
MAX_EXPIRES_SECONDS = 30 * 24 * 3600
MAX_LIST_LIMIT = 10000
# Room for multipart boundaries and headers on top of the file itself when
# judging a request by its Content-Length.
MULTIPART_OVERHEAD = 64 * 1024
# After a too-large file is detected, read (and drop) at most this much more of
# the body so the client gets the 413 instead of a reset connection.
DRAIN_LIMIT = 16 * 1024 * 1024
JSONL_MIME = "application/jsonl"


@dataclass(frozen=True)
class UploadParams:
    filename: str
    purpose: FilePurpose
    expires_at: int | None
    mime_type: str


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"File exceeds the maximum upload size of {limit} bytes.",
        param="file",
        code="file_too_large",
    )


def _missing(param: str) -> APIError:
    return bad_request(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def parse_expires_after(fields: Mapping[str, str]) -> int | None:
    """Seconds from `expires_after[anchor]` + `expires_after[seconds]`, or None."""
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor is None:
        anchor = "created_at"  # the only anchor there is
    if anchor != "created_at":
        raise bad_request(
            f"Invalid 'expires_after.anchor': {anchor!r}. Expected 'created_at'.",
            param="expires_after.anchor",
            code="invalid_value",
        )
    if seconds is None:
        raise _missing("expires_after.seconds")
    value = parse_int(seconds)
    if value is None:
        raise bad_request(
            "Invalid 'expires_after.seconds': expected an integer.",
            param="expires_after.seconds",
            code="invalid_value",
        )
    if not MIN_EXPIRES_SECONDS <= value <= MAX_EXPIRES_SECONDS:
        raise bad_request(
            f"Invalid 'expires_after.seconds': must be between {MIN_EXPIRES_SECONDS} and "
            f"{MAX_EXPIRES_SECONDS}.",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return value


def upload_params(form: UploadForm, created_at: int, batch_ttl_seconds: int) -> UploadParams:
    """Validate an upload's fields; its rules in one place."""
    if form.filename is None:
        raise _missing("file")
    given = form.fields.get("purpose")
    if given is None or given == "":
        raise _missing("purpose")
    purpose = _UPLOAD_PURPOSE.get(given)
    if purpose is None:
        raise bad_request(
            f"Invalid 'purpose': {given!r}. Expected one of {', '.join(sorted(UPLOAD_PURPOSES))}.",
            param="purpose",
            code="invalid_value",
        )
    seconds = parse_expires_after(form.fields)
    if seconds is None and purpose == "batch":
        seconds = batch_ttl_seconds
    expires_at = created_at + seconds if seconds is not None else None
    if form.filename.lower().endswith(".jsonl"):
        mime = JSONL_MIME
    else:
        mime = form.file_content_type or "application/octet-stream"
    return UploadParams(form.filename, purpose, expires_at, mime)


def is_jsonl(record: FileRecord) -> bool:
    return record.mime_type == JSONL_MIME or record.filename.lower().endswith(".jsonl")


# -- routes ---------------------------------------------------------------


async def _drain(stream: AsyncIterator[bytes]) -> None:
    """Read and drop up to DRAIN_LIMIT more bytes of a refused body, so a client
    still sending gets the error answer rather than a reset connection."""
    drained = 0
    with contextlib.suppress(ClientDisconnect):
        async for chunk in stream:
            drained += len(chunk)
            if drained > DRAIN_LIMIT:
                break


async def _receive_into_blob(request: Request, blob_name: str, max_bytes: int) -> UploadForm:
    """Stream the multipart body; the file part lands in the blob `blob_name`.
    On any failure the partial blob is discarded."""
    state = gateway_state(request)
    writer = state.blobs.writer(blob_name)
    sink = writer.__enter__()
    stream = request.stream()
    try:
        parser = StreamingFormParser(
            request.headers.get("content-type"), sink, max_file_bytes=max_bytes
        )
        async for chunk in stream:
            parser.feed(chunk)
        form = parser.finish()
    except UploadTooLarge as exc:
        writer.__exit__(type(exc), exc, exc.__traceback__)
        await _drain(stream)
        raise _too_large(max_bytes) from None
    except ClientDisconnect as exc:
        writer.__exit__(type(exc), exc, exc.__traceback__)
        # Nobody will read this answer; it only keeps the log free of a traceback.
        raise bad_request("The client disconnected during the upload.", param="file") from None
    except UploadMalformed as exc:
        writer.__exit__(type(exc), exc, exc.__traceback__)
        raise bad_request(exc.message, param=exc.param) from None
    except BaseException as exc:
        writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    # fsync + rename off the event loop.
    await anyio.to_thread.run_sync(writer.__exit__, None, None, None)
    return form


async def create_file(request: Request) -> Response:
    key = require_key(request)
    state = gateway_state(request)
    limit = state.settings.max_file_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
        await _drain(request.stream())
        raise _too_large(limit)
    file_id = ids.new_file_id()
    form = await _receive_into_blob(request, file_id, limit)
    created_at = now()
    try:
        params = upload_params(form, created_at, state.settings.batch_file_ttl_seconds)
        record = await run_in_threadpool(
            state.store.insert_file,
            FileRecord(
                id=file_id,
                api_key_id=key.id,
                filename=params.filename,
                purpose=params.purpose,
                bytes=form.file_bytes,
                created_at=created_at,
                expires_at=params.expires_at,
                deleted_at=None,
                blob_name=file_id,
                mime_type=params.mime_type,
            ),
        )
    except BaseException:
        state.blobs.delete(file_id)
        raise
    return JSONResponse(file_object(record))


def _owned_file(request: Request, key: ApiKeyRecord) -> FileRecord:
    file_id = request.path_params["file_id"]
    record = gateway_state(request).store.get_file(file_id, key.id)
    if record is None:
        raise not_found("File", file_id)
    return record


def list_files(request: Request) -> Response:
    key = require_key(request)
    store = gateway_state(request).store
    query = request.query_params
    purpose = parse_choice(query, "purpose", ALL_PURPOSES)
    limit = parse_limit(query, default=MAX_LIST_LIMIT, maximum=MAX_LIST_LIMIT)
    order = parse_order(query)
    after_id = query.get("after")
    after = None
    if after_id is not None:
        # A deleted cursor file still marks a place in the order.
        after = store.get_file(after_id, key.id, include_gone=True)
        if after is None:
            raise not_found("File", after_id, param="after")
    records, has_more = store.list_files(
        key.id, purpose=purpose, limit=limit, order=order, after=after
    )
    return JSONResponse(list_envelope([file_object(r) for r in records], has_more))


async def files_collection(request: Request) -> Response:
    if request.method == "POST":
        return await create_file(request)
    return await run_in_threadpool(list_files, request)


def file_item(request: Request) -> Response:
    key = require_key(request)
    record = _owned_file(request, key)
    if request.method == "DELETE":
        state = gateway_state(request)
        delete_file(state.store, state.blobs, record.id)
        return JSONResponse({"id": record.id, "object": "file", "deleted": True})
    return JSONResponse(file_object(record))


def file_content(request: Request) -> Response:
    key = require_key(request)
    record = _owned_file(request, key)
    blobs = gateway_state(request).blobs
    try:
        size = blobs.size(record.blob_name)
    except FileNotFoundError:
        raise not_found("File", record.id) from None
    media_type = JSONL_MIME if is_jsonl(record) else "application/octet-stream"
    return StreamingResponse(
        blobs.iter_bytes(record.blob_name),
        media_type=media_type,
        headers={"content-length": str(size)},
    )


routes: list[Route] = [
    Route("/v1/files", files_collection, methods=["GET", "POST"]),
    Route("/v1/files/{file_id}", file_item, methods=["GET", "DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]
