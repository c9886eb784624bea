"""The internal worker API: how flow runs reach metadata and blobs.

Not under /v1 and never for clients: every route needs the internal token.
Each route is a thin adapter around `tasks.ledger.BatchLedger`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import require_internal
from gateway.errors import APIError
from gateway.state import gateway_state
from gateway.table_builds import ensure_built, read_summary
from tasks.ledger import BatchLedger, LedgerError, chunk_view
from tasks.retention import sweep
from tasks.worker_messages import (
    ChunkClaim,
    ChunkResult,
    Claim,
    ClaimsRenewal,
    Failure,
    Finalize,
    Plan,
    Release,
    Renewal,
)

Endpoint = Callable[[Request], Awaitable[Response]]


def _ledger(request: Request) -> BatchLedger:
    return gateway_state(request).ledger


M = TypeVar("M", bound=BaseModel)


def _param(loc: tuple[int | str, ...]) -> str:
    """A field's path as a post names it: `chunks[].line_count`."""
    text = ""
    for part in loc:
        text += "[]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


async def _message(request: Request, model: type[M]) -> M:
    """The post as `model`: a worker of another version, or a broken post,
    gets a 400 that names the field, before the ledger reads it."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if not first["loc"]:
            raise APIError(400, "Body must be a JSON object.") from None
        param = _param(first["loc"])
        if first["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized field: '{param}'.", param=param) from None
        raise APIError(
            400, f"'{param}' is missing or not valid: {first['msg']}.", param=param
        ) from None


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except LedgerError as exc:
        raise APIError(exc.status, str(exc)) from exc


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def claim(request: Request) -> Response:
    body = await _message(request, Claim)
    return _json(
        await _call(_ledger(request).claim, request.path_params["batch_id"], body.flow_run_id)
    )


async def renew(request: Request) -> Response:
    body = await _message(request, Renewal)
    return _json(
        await _call(
            _ledger(request).renew,
            request.path_params["batch_id"],
            body.lease_token,
            claims=body.claims,
        )
    )


async def claim_chunk(request: Request) -> Response:
    """The next free chunk for a run (tasks/ledger.py `claim_chunk`)."""
    body = await _message(request, ChunkClaim)
    return _json(
        await _call(
            _ledger(request).claim_chunk,
            request.path_params["batch_id"],
            body.flow_run_id,
            body.lease_token,
        )
    )


async def renew_claims(request: Request) -> Response:
    """A helper run's heartbeat: its chunk claims renewed, the batch's control read."""
    body = await _message(request, ClaimsRenewal)
    return _json(
        await _call(
            _ledger(request).renew_claims, request.path_params["batch_id"], body.chunk_tokens
        )
    )


async def release(request: Request) -> Response:
    body = await _message(request, Release)
    await _call(_ledger(request).release, request.path_params["batch_id"], body.lease_token)
    return _json({"released": True})


async def input_file(request: Request) -> Response:
    blocks = await _call(_ledger(request).input_blocks, request.path_params["batch_id"])
    return StreamingResponse(iterate_in_threadpool(blocks), media_type="application/jsonl")


async def plan(request: Request) -> Response:
    body = await _message(request, Plan)
    return _json(
        await _call(
            _ledger(request).save_plan,
            request.path_params["batch_id"],
            body.lease_token,
            total=body.total,
            chunks=[chunk.model_dump() for chunk in body.chunks],
            errors=body.errors,
            models=body.models,
        )
    )


async def chunks(request: Request) -> Response:
    found = await _call(_ledger(request).chunks, request.path_params["batch_id"])
    return _json([chunk_view(c) for c in found])


async def chunk_input(request: Request) -> Response:
    data = await _call(
        _ledger(request).chunk_input, request.path_params["batch_id"], request.path_params["index"]
    )
    return Response(data, media_type="application/jsonl")


async def record_chunk(request: Request) -> Response:
    """The checkpoint: the chunk's lines and counts, written with its done mark."""
    body = await _message(request, ChunkResult)
    return _json(
        await _call(
            _ledger(request).record_chunk,
            request.path_params["batch_id"],
            body.lease_token,
            request.path_params["index"],
            output=body.output.encode(),
            errors=body.errors.encode(),
            completed=body.completed,
            failed=body.failed,
            usage=body.usage,
            model=body.model,
            meta=body.meta,
            usage_rows=body.usage_rows,
            metrics=body.metrics,
            stopped=body.stopped,
        )
    )


async def finalize(request: Request) -> Response:
    body = await _message(request, Finalize)
    batch = await _call(
        _ledger(request).finalize, request.path_params["batch_id"], body.lease_token, body.outcome
    )
    return _json(asdict(batch))


async def fail(request: Request) -> Response:
    body = await _message(request, Failure)
    batch = await _call(
        _ledger(request).fail, request.path_params["batch_id"], body.lease_token, body.errors
    )
    return _json(asdict(batch))


async def results_summary(request: Request) -> Response:
    """An ended batch's summary for its flow run's report: the first ask
    builds the results table and summary (gateway/table_builds.py)."""
    state = gateway_state(request)
    batch = await _call(_ledger(request).batch, request.path_params["batch_id"])
    if not batch.is_terminal:
        raise APIError(409, f"{batch.id} has not ended.")
    try:
        await ensure_built(state.blobs, batch)
    except APIError as exc:  # a 5xx would have the run retry for minutes; the report is optional
        raise APIError(409, exc.message, code=exc.code) from exc
    return _json(await run_in_threadpool(read_summary, state.blobs, batch))


async def providers(request: Request) -> Response:
    found = gateway_state(request).store.list_providers()
    return JSONResponse([asdict(p) for p in found])


async def retention(request: Request) -> Response:
    state = gateway_state(request)
    return _json(await run_in_threadpool(sweep, state.store, state.blobs))


def _internal(path: str, endpoint: Endpoint, method: str) -> Route:
    """A route that answers only callers holding the internal token."""

    async def guarded(request: Request) -> Response:
        require_internal(request)
        return await endpoint(request)

    return Route(path, guarded, methods=[method], name=endpoint.__name__)


_B = "/internal/batches/{batch_id}"
routes = [
    _internal(f"{_B}/claim", claim, "POST"),
    _internal(f"{_B}/renew", renew, "POST"),
    _internal(f"{_B}/release", release, "POST"),
    _internal(f"{_B}/input", input_file, "GET"),
    _internal(f"{_B}/plan", plan, "POST"),
    _internal(f"{_B}/chunks", chunks, "GET"),
    _internal(f"{_B}/chunks/claim", claim_chunk, "POST"),
    _internal(f"{_B}/chunks/renew", renew_claims, "POST"),
    _internal(f"{_B}/chunks/{{index:int}}/input", chunk_input, "GET"),
    _internal(f"{_B}/chunks/{{index:int}}", record_chunk, "POST"),
    _internal(f"{_B}/finalize", finalize, "POST"),
    _internal(f"{_B}/fail", fail, "POST"),
    _internal(f"{_B}/summary", results_summary, "GET"),
    _internal("/internal/providers", providers, "GET"),
    _internal("/internal/retention", retention, "POST"),
]
