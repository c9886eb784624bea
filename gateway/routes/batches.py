"""/v1/batches: create, list, retrieve, cancel (SPEC section 3), and the
reconciler that gives every live batch a running flow run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import require_key
from gateway.errors import APIError, bad_request, not_found
from gateway.pagination import parse_order
from storage import ids
from storage.metadata import now
from storage.records import ApiKeyRecord, BatchRecord, batch_object
from tasks import status as st
from tasks.batch_rules import BatchRequest, RuleViolation, parse_batch_request
from tasks.crashpoints import crash_point

log = logging.getLogger("batchgate.gateway")

# How long a freshly started flow run has to claim its batch before the
# reconciler may start another one.
LAUNCH_GRACE_SECONDS = 120


def _state(request: Request) -> Any:
    return request.app.state.gateway


def _first_model(state: Any, blob_name: str) -> str | None:
    """The model of the input's first line, for the flow run's tags (best effort)."""
    try:
        with state.blobs.open(blob_name) as handle:
            first = handle.readline(1 << 20)
        body = orjson.loads(first).get("body") or {}
        model = body.get("model")
        return model if isinstance(model, str) else None
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None


def launch_reserved_until(settings: Any) -> float:
    """When the grace for a flow run being started ends: until then the
    reconciler leaves the batch to that run. Short leases (tests) get a
    short grace; queued runs are kept by `is_queued` anyway."""
    return time.time() + min(LAUNCH_GRACE_SECONDS, max(30, 5 * settings.lease_seconds))


async def reserve_launch(state: Any, batch: BatchRecord) -> None:
    """Give the batch a grace period in which the reconciler leaves it to the
    flow run being started for it."""
    await run_in_threadpool(
        state.store.update_batch,
        batch.id,
        lease_token=None,
        lease_expires_at=launch_reserved_until(state.settings),
    )


async def start_run(state: Any, batch: BatchRecord) -> None:
    """Start a flow run for the batch; on failure the reconciler tries again."""
    update = state.store.update_batch
    try:
        flow_run_id = await state.flow_runs.start_batch(batch)
    except Exception as exc:
        log.warning("could not start a flow run for %s: %s", batch.id, exc)
        await run_in_threadpool(update, batch.id, lease_expires_at=None)
        return
    if flow_run_id:
        await run_in_threadpool(update, batch.id, flow_run_id=flow_run_id)


async def launch(state: Any, batch: BatchRecord) -> None:
    await reserve_launch(state, batch)
    await start_run(state, batch)


def launch_in_background(state: Any, batch: BatchRecord) -> None:
    """Start the batch's flow run after `batches.create` has answered.

    Creating a flow run is a Prefect API call that usually takes ~50 ms but
    took 2-13 s while the Prefect server was busy starting other runs
    (its client retries with backoff); the caller should not wait for that.
    The batch is stored and reserved first, so a gateway that dies before
    the start leaves a batch the reconciler starts once the grace lapses."""
    task = asyncio.create_task(start_run(state, batch))
    state.launches.add(task)  # the loop keeps only a weak reference
    task.add_done_callback(state.launches.discard)


def _record_batch(state: Any, key: ApiKeyRecord, parsed: BatchRequest) -> BatchRecord:
    """Check the input file and store the new batch (blocking: runs in a thread)."""
    input_file = state.store.get_file(parsed.input_file_id, key.id)
    if input_file is None:
        raise not_found("File", parsed.input_file_id, param="input_file_id")
    if input_file.purpose != "batch":
        raise bad_request(
            f"File {input_file.id} has purpose '{input_file.purpose}'; a batch "
            "needs a file uploaded with purpose 'batch'.",
            param="input_file_id",
        )
    created = now()
    batch = BatchRecord(
        id=ids.new_batch_id(),
        api_key_id=key.id,
        endpoint=parsed.endpoint,
        input_file_id=input_file.id,
        completion_window=parsed.completion_window,
        status="validating",
        created_at=created,
        expires_at=created + state.settings.completion_window_seconds,
        metadata=parsed.metadata,
        output_expires_after_seconds=parsed.output_expires_after_seconds,
        output_expires_after_anchor="created_at" if parsed.output_expires_after_seconds else None,
        model=_first_model(state, input_file.blob_name),
        # Stored already reserved for the run `create_batch` starts next: a
        # reconciler pass between the insert and a later reservation would
        # start a second flow run for the same batch.
        lease_expires_at=launch_reserved_until(state.settings),
    )
    state.store.insert_batch(batch)
    return batch


async def create_batch(request: Request) -> Response:
    key = require_key(request)
    state = _state(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise bad_request("The request body is not valid JSON.") from exc
    parsed = parse_batch_request(body)
    if isinstance(parsed, RuleViolation):
        raise bad_request(parsed.message, param=parsed.param)
    batch = await run_in_threadpool(_record_batch, state, key, parsed)
    crash_point("create:after_insert")
    launch_in_background(state, batch)
    stored = await run_in_threadpool(state.store.get_batch, batch.id)
    return JSONResponse(batch_object(stored))


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
    store = _state(request).store
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
    batch = _state(request).store.get_batch(batch_id, key.id)
    if batch is None:
        raise not_found("Batch", batch_id)
    return JSONResponse(batch_object(batch))


def cancel_batch(request: Request) -> Response:
    key = require_key(request)
    store = _state(request).store
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


def lease_is_live(batch: BatchRecord, at: float, *, first_pass: bool = False) -> bool:
    """True while a run holds the batch, or a launch has reserved it.

    On a gateway's first pass a reservation without a lease token counts as
    lapsed: the process that was starting that run is gone (it crashed just
    after storing the batch, say). Starting again is safe: flow-run creation
    is idempotent per batch and previous run (`PrefectFlowRuns.start_batch`)."""
    if first_pass and batch.lease_token is None:
        return False
    return (batch.lease_expires_at or 0) > at


async def reconcile_once(state: Any, *, first_pass: bool = False) -> int:
    """Start a new flow run for every live batch that nobody is working on:
    its lease lapsed (the run died) and no queued flow run is waiting for it."""
    started = 0
    for batch in await run_in_threadpool(state.store.live_batches):
        if lease_is_live(batch, time.time(), first_pass=first_pass):
            continue
        if (
            batch.lease_token is None
            and batch.flow_run_id
            and await state.flow_runs.is_queued(batch.flow_run_id)
        ):
            continue
        log.info("batch %s has no live run; starting one", batch.id)
        await launch(state, batch)
        started += 1
    return started


@contextlib.asynccontextmanager
async def background_tasks(state: Any) -> AsyncIterator[None]:
    """Run the reconciler while the app lives; cancel what is left at the end."""

    async def loop() -> None:
        first_pass = True
        while True:
            try:
                await reconcile_once(state, first_pass=first_pass)
                first_pass = False
            except Exception:
                log.exception("reconciler pass failed")
            await asyncio.sleep(state.settings.reconcile_interval_seconds)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        # Unfinished launches are dropped: their batches are reserved only
        # for the grace period, then the next reconciler pass starts them.
        for pending in [task, *state.launches]:
            pending.cancel()
        await asyncio.gather(task, *state.launches, return_exceptions=True)


routes = [
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
