"""/v1/batches: create, list, retrieve, cancel, and the
dry-run estimate. The flow run a new batch needs is started by
`gateway/loops/reconciler.py`."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import require_key
from gateway.batch_creation import batch_input, record_batch
from gateway.errors import APIError, bad_request, not_found
from gateway.json_body import json_value
from gateway.loops.reconciler import launch_in_background
from gateway.models.batches import BatchCreate, BatchEstimateRequest
from gateway.models.body import parse
from gateway.models.objects import batch_object
from gateway.pagination import parse_order
from gateway.state import GatewayState, gateway_state
from storage.metadata import now
from storage.records import ApiKeyRecord
from tasks import status as st
from tasks.batch_rules import BatchRequest
from tasks.crashpoints import crash_point
from tasks.estimate import EstimateTally
from tasks.validate import validate_jsonl


async def create_batch(request: Request) -> Response:
    key = require_key(request)
    state = gateway_state(request)
    parsed = parse(BatchCreate, await json_value(request)).request()
    batch = await run_in_threadpool(record_batch, state, key, parsed)
    crash_point("create:after_insert")
    launch_in_background(state, batch)
    stored = await run_in_threadpool(state.store.get_batch, batch.id)
    return JSONResponse(batch_object(stored or batch))


def _estimate(state: GatewayState, key: ApiKeyRecord, parsed: BatchRequest) -> dict[str, object]:
    """Validate the file exactly as a batch's run does and count what it
    would send (blocking: runs in a thread). No provider is called."""
    input_file = batch_input(state, key, parsed.input_file_id)
    tally = EstimateTally(state.store.list_providers())
    settings = state.settings
    result = validate_jsonl(
        state.blobs.iter_bytes(input_file.blob_name),
        parsed.endpoint,
        chunk_size=settings.chunk_size,
        max_lines=settings.max_batch_lines,
        observe=tally.observe,
    )
    errors = [e.as_dict() for e in result.errors]
    return {
        "object": "batch.estimate",
        "input_file_id": input_file.id,
        "endpoint": parsed.endpoint,
        "valid": not errors,
        # exactly the `errors` the batch would end `failed` with
        "errors": {"object": "list", "data": errors} if errors else None,
        "total_lines": result.total,
        **tally.result(state.store.text_stats(), settings.prices),
    }


async def estimate_batch(request: Request) -> Response:
    """POST /v1/batches/estimate {input_file_id, endpoint}: a dry run."""
    key = require_key(request)
    state = gateway_state(request)
    parsed = parse(BatchEstimateRequest, await json_value(request)).request()
    return JSONResponse(await run_in_threadpool(_estimate, state, key, parsed))


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise bad_request(f"{name} must be an integer between {low} and {high}.", param=name)
    return value


def list_batches(request: Request) -> Response:
    key = require_key(request)
    store = gateway_state(request).store
    limit = _int_param(request, "limit", 20, 1, 100)
    # `order` is an extension here (OpenAI's batches list has none).
    order = parse_order(request.query_params)
    after_id = request.query_params.get("after")
    after = None
    if after_id:
        after = store.get_batch(after_id, key.id)
        if after is None:
            raise not_found("Batch", after_id, param="after")
    rows, has_more = store.list_batches(key.id, limit=limit, order=order, after=after)
    data = [batch_object(r) for r in rows]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


def retrieve_batch(request: Request) -> Response:
    key = require_key(request)
    batch_id = request.path_params["batch_id"]
    batch = gateway_state(request).store.get_batch(batch_id, key.id)
    if batch is None:
        raise not_found("Batch", batch_id)
    return JSONResponse(batch_object(batch))


def cancel_batch(request: Request) -> Response:
    key = require_key(request)
    store = gateway_state(request).store
    batch_id = request.path_params["batch_id"]
    batch = store.get_batch(batch_id, key.id)
    if batch is None:
        raise not_found("Batch", batch_id)
    if batch.status in st.CANCELLABLE:
        store.transition_batch(
            batch_id, st.CANCELLABLE, status="cancelling", **st.stamp("cancelling", now())
        )
        batch = store.get_batch(batch_id)
    if batch is None or batch.is_terminal:
        status = batch.status if batch else "unknown"
        raise APIError(
            409,
            f"Cannot cancel a batch with status '{status}'.",
            code="batch_not_cancellable",
            headers={"x-should-retry": "false"},
        )
    return JSONResponse(batch_object(batch))


routes = [
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches/estimate", estimate_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
