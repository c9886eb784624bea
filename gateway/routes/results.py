"""Results as data: live results, the results table, the summary,
retry of failures, and usage over time. Thin adapters: the logic is in
`tasks/live_results.py`, `tasks/results_table.py` (through
`gateway/table_builds.py`), `tasks/retry_failed.py` and the store."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import require_admin, require_key
from gateway.batch_creation import record_batch, refuse_over_budget
from gateway.errors import APIError, bad_request, not_found
from gateway.loops.reconciler import launch_in_background
from gateway.models.objects import batch_object
from gateway.state import GatewayState, gateway_state
from gateway.table_builds import ensure_built, read_summary, require_result_files
from storage import ids
from storage.metadata import now
from storage.records import ApiKeyRecord, BatchRecord, FileRecord
from tasks import live_results
from tasks.batch_rules import BatchRequest
from tasks.ledger import derived_blob_name
from tasks.retention import delete_file
from tasks.retry_failed import failed_custom_ids, parse_codes, select_lines

FORMATS = {
    "parquet": ("application/vnd.apache.parquet", "parquet"),
    "csv": ("text/csv; charset=utf-8", "csv"),
}
PARENT_KEY = "batchgate_parent_batch_id"


def _owned_batch(request: Request) -> tuple[ApiKeyRecord, BatchRecord]:
    """The caller's batch; another key's batch is as missing as an unknown one."""
    key = require_key(request)
    batch_id = request.path_params["batch_id"]
    batch = gateway_state(request).store.get_batch(batch_id, key.id)
    if batch is None:
        raise not_found("Batch", batch_id)
    return key, batch


def _not_finished(batch: BatchRecord, what: str) -> APIError:
    return APIError(
        409,
        f"The {what} of a batch is ready once it has ended; {batch.id} is '{batch.status}'.",
        code="batch_not_finished",
    )


async def results(request: Request) -> Response:
    _, batch = _owned_batch(request)
    fmt = request.query_params.get("format")
    if fmt in (None, "", "jsonl"):
        return await _live(request, batch)
    if fmt not in FORMATS:
        raise bad_request(
            f"Invalid 'format': {fmt!r}; expected 'jsonl', 'parquet' or 'csv'.", param="format"
        )
    if not batch.is_terminal:
        raise _not_finished(batch, "results table")
    blobs = gateway_state(request).blobs
    await ensure_built(blobs, batch)
    media_type, suffix = FORMATS[fmt]
    name = derived_blob_name(batch.id, fmt)
    return StreamingResponse(
        iterate_in_threadpool(blobs.iter_bytes(name)),
        media_type=media_type,
        headers={
            "content-length": str(blobs.size(name)),
            "content-disposition": f'attachment; filename="{batch.id}_results.{suffix}"',
        },
    )


async def _live(request: Request, batch: BatchRecord) -> Response:
    """The lines of the chunks stamped after `after`, as JSONL; the cursor
    to pass next is in the `batchgate-next-cursor` header."""
    try:
        after = live_results.parse_cursor(request.query_params.get("after"))
    except live_results.BadCursor as exc:
        raise bad_request(str(exc), param="after") from exc
    try:
        kinds = live_results.parse_kinds(request.query_params.get("kind"))
    except ValueError as exc:
        raise bad_request(str(exc), param="kind") from exc
    state = gateway_state(request)
    # The status is read first: once a batch has ended every chunk is stamped,
    # so an answer read after that holds all that is left.
    ended = batch.is_terminal
    if ended:
        require_result_files(state.blobs, batch)
    page = await run_in_threadpool(live_results.results_page, state.store, batch.id, after, kinds)
    blocks = live_results.page_blocks(state.store, state.blobs, batch.id, page)
    return StreamingResponse(
        iterate_in_threadpool(blocks),
        media_type="application/jsonl",
        headers={
            live_results.CURSOR_HEADER: str(page.cursor),
            live_results.COMPLETE_HEADER: "true" if ended else "false",
        },
    )


async def summary(request: Request) -> Response:
    _, batch = _owned_batch(request)
    if not batch.is_terminal:
        raise _not_finished(batch, "summary")
    blobs = gateway_state(request).blobs
    await ensure_built(blobs, batch)
    return JSONResponse(await run_in_threadpool(read_summary, blobs, batch))


def _child_metadata(parent: BatchRecord) -> dict[str, str]:
    """The parent's metadata (as much as fits OpenAI's 16 keys) plus its id."""
    kept = [(k, v) for k, v in (parent.metadata or {}).items() if k != PARENT_KEY][:15]
    return {**dict(kept), PARENT_KEY: parent.id}


def _retry_input(state: GatewayState, key: ApiKeyRecord, parent: BatchRecord, codes: Any) -> str:
    """Write the failed lines' requests as a new batch input file; its id."""
    no_failures = APIError(
        409, f"Batch {parent.id} has no failed lines to retry.", code="no_failed_lines"
    )
    require_result_files(state.blobs, parent)
    if not parent.error_file_id:
        raise no_failures
    wanted = failed_custom_ids(state.blobs.iter_bytes(parent.error_file_id), codes)
    if not wanted:
        raise no_failures
    source = state.store.get_file(parent.input_file_id, key.id)
    if source is None or not state.blobs.exists(source.blob_name):
        raise APIError(
            409,
            f"The input file {parent.input_file_id} of {parent.id} is no longer available.",
            code="input_file_unavailable",
        )
    file_id = ids.new_file_id()
    with state.blobs.writer(file_id) as out:
        for line in select_lines(state.blobs.iter_bytes(source.blob_name), wanted):
            out.write(line)
    created = now()
    ttl = state.settings.batch_file_ttl_seconds
    state.store.insert_file(
        FileRecord(
            id=file_id,
            api_key_id=key.id,
            filename=f"{parent.id}_retry.jsonl",
            purpose="batch",
            bytes=state.blobs.size(file_id),
            created_at=created,
            expires_at=created + ttl if ttl else None,
            deleted_at=None,
            blob_name=file_id,
            mime_type="application/jsonl",
        )
    )
    return file_id


async def retry(request: Request) -> Response:
    """A new batch of exactly the failed lines (optionally only some codes)."""
    key, parent = _owned_batch(request)
    try:
        codes = parse_codes(request.query_params.get("codes"))
    except ValueError as exc:
        raise bad_request(str(exc), param="codes") from exc
    if not parent.is_terminal:
        raise _not_finished(parent, "retry")
    state = gateway_state(request)
    await run_in_threadpool(refuse_over_budget, state, key)  # before a file is written
    file_id = await run_in_threadpool(_retry_input, state, key, parent, codes)
    parsed = BatchRequest(
        input_file_id=file_id,
        endpoint=parent.endpoint,
        completion_window=parent.completion_window,
        metadata=_child_metadata(parent),
        output_expires_after_seconds=parent.output_expires_after_seconds,
    )
    try:
        batch = await run_in_threadpool(record_batch, state, key, parsed)
    except APIError:  # refused after all (the budget ran out meanwhile): no stray file
        await run_in_threadpool(delete_file, state.store, state.blobs, file_id)
        raise
    launch_in_background(state, batch)
    stored = await run_in_threadpool(state.store.get_batch, batch.id)
    return JSONResponse(batch_object(stored or batch))


USAGE_GROUPS = ("key", "model", "provider", "day", "batch")


# The last second an ISO 8601 date can name; DuckDB's BIGINT holds far more.
MAX_EPOCH_SECONDS = 253_402_300_799


def parse_time(raw: str | None, param: str) -> int | None:
    """Epoch seconds, or an ISO date / date-time (UTC unless it says otherwise)."""
    if raw is None or raw == "":
        return None
    if raw.isascii() and raw.isdigit():  # not "¹": str.isdigit takes every digit
        if len(raw) > len(str(MAX_EPOCH_SECONDS)) or int(raw) > MAX_EPOCH_SECONDS:
            raise bad_request(
                f"Invalid '{param}': epoch seconds up to {MAX_EPOCH_SECONDS} (9999-12-31).",
                param=param,
            )
        return int(raw)
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise bad_request(
            f"Invalid '{param}': expected epoch seconds or an ISO 8601 date.", param=param
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


async def usage(request: Request) -> Response:
    """Line counts and token totals from the batches' recorded per-model usage."""
    require_admin(request)
    raw = request.query_params.get("group_by") or ""
    group_by = list(dict.fromkeys(g.strip() for g in raw.split(",") if g.strip()))
    if any(g not in USAGE_GROUPS for g in group_by):
        raise bad_request(
            f"Invalid 'group_by': expected a comma-separated subset of {', '.join(USAGE_GROUPS)}.",
            param="group_by",
        )
    since = parse_time(request.query_params.get("since"), "since")
    until = parse_time(request.query_params.get("until"), "until")
    store = gateway_state(request).store
    rows = await run_in_threadpool(store.usage_report, group_by, since, until)
    data = [
        {
            **{k: v for k, v in row.items() if k in USAGE_GROUPS},
            **{k: int(v or 0) for k, v in row.items() if k not in USAGE_GROUPS},
        }
        for row in rows
        if row.get("lines")
    ]
    return JSONResponse({"object": "list", "group_by": group_by, "data": data})


routes = [
    Route("/v1/batches/{batch_id}/results", results, methods=["GET"]),
    Route("/v1/batches/{batch_id}/summary", summary, methods=["GET"]),
    Route("/v1/batches/{batch_id}/retry", retry, methods=["POST"]),
    Route("/admin/usage", usage, methods=["GET"]),
]
