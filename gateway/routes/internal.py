"""The internal worker API: how flow runs reach metadata and blobs.

Not under /v1 and never for clients: every route needs the internal token.
Each route is a thin adapter around `tasks.ledger.BatchLedger`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import orjson
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import require_internal
from gateway.errors import APIError
from gateway.state import gateway_state
from gateway.table_builds import ensure_built, read_summary
from tasks.ledger import OUTCOMES, BatchLedger, LedgerError, chunk_view
from tasks.retention import sweep

Endpoint = Callable[[Request], Awaitable[Response]]


def _ledger(request: Request) -> BatchLedger:
    return gateway_state(request).ledger


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise APIError(400, "Body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise APIError(400, "Body must be a JSON object.")
    return body


# The fields of one planned chunk (`save_plan`), each an integer.
PLAN_CHUNK_FIELDS = ("index", "start_offset", "end_offset", "first_line", "line_count")


def _malformed(name: str, expected: str) -> APIError:
    return APIError(400, f"'{name}' is missing or not {expected}.", param=name)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int(body: dict[str, Any], name: str) -> int:
    """A required count: a post of another version, or a broken one, gets a
    400 naming the field, not a server error."""
    value = body.get(name)
    if not _is_count(value):
        raise _malformed(name, "a non-negative integer")
    return value


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise _malformed(name, "a string")
    return value


_KINDS = {dict: "an object", list: "a list", str: "a string"}


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise _malformed(name, f"{_KINDS[kind]} or null")
    return value


def _objects(body: dict[str, Any], name: str, counts: tuple[str, ...] = ()) -> list[dict]:
    """A required list of objects, each with the integer fields `counts`."""
    value = body.get(name)
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise _malformed(name, "a list of objects")
    for field in counts:
        if not all(_is_count(item.get(field)) for item in value):
            raise _malformed(f"{name}[].{field}", "a non-negative integer")
    return value


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except LedgerError as exc:
        raise APIError(exc.status, str(exc)) from exc


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def claim(request: Request) -> Response:
    body = await _body(request)
    return _json(
        await _call(
            _ledger(request).claim, request.path_params["batch_id"], body.get("flow_run_id")
        )
    )


async def renew(request: Request) -> Response:
    body = await _body(request)
    return _json(
        await _call(
            _ledger(request).renew,
            request.path_params["batch_id"],
            str(body.get("lease_token")),
            claims=bool(body.get("claims")),
        )
    )


async def claim_chunk(request: Request) -> Response:
    """The next free chunk for a run (tasks/ledger.py `claim_chunk`)."""
    body = await _body(request)
    token = body.get("lease_token")
    return _json(
        await _call(
            _ledger(request).claim_chunk,
            request.path_params["batch_id"],
            body.get("flow_run_id"),
            None if token is None else str(token),
        )
    )


async def renew_claims(request: Request) -> Response:
    """A helper run's heartbeat: its chunk claims renewed, the batch's control read."""
    body = await _body(request)
    tokens = body.get("chunk_tokens") or []
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise APIError(400, "chunk_tokens must be a list of strings.", param="chunk_tokens")
    return _json(
        await _call(_ledger(request).renew_claims, request.path_params["batch_id"], tokens)
    )


async def release(request: Request) -> Response:
    body = await _body(request)
    await _call(
        _ledger(request).release, request.path_params["batch_id"], str(body.get("lease_token"))
    )
    return _json({"released": True})


async def input_file(request: Request) -> Response:
    blocks = await _call(_ledger(request).input_blocks, request.path_params["batch_id"])
    return StreamingResponse(iterate_in_threadpool(blocks), media_type="application/jsonl")


async def plan(request: Request) -> Response:
    body = await _body(request)
    return _json(
        await _call(
            _ledger(request).save_plan,
            request.path_params["batch_id"],
            str(body.get("lease_token")),
            total=_int(body, "total"),
            chunks=_objects(body, "chunks", PLAN_CHUNK_FIELDS),
            errors=_objects(body, "errors"),
            models=body.get("models") or [],
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
    body = await _body(request)
    return _json(
        await _call(
            _ledger(request).record_chunk,
            request.path_params["batch_id"],
            str(body.get("lease_token")),
            request.path_params["index"],
            output=_text(body, "output").encode(),
            errors=_text(body, "errors").encode(),
            completed=_int(body, "completed"),
            failed=_int(body, "failed"),
            usage=_optional(body, "usage", dict),
            model=_optional(body, "model", str),
            meta=_optional(body, "meta", list),
            usage_rows=_optional(body, "usage_rows", list),
            metrics=body.get("metrics"),
            stopped=int(body.get("stopped") or 0),
        )
    )


async def finalize(request: Request) -> Response:
    body = await _body(request)
    outcome = body.get("outcome", "completed")
    if outcome not in OUTCOMES:
        raise _malformed("outcome", f"one of {', '.join(sorted(OUTCOMES))}")
    batch = await _call(
        _ledger(request).finalize,
        request.path_params["batch_id"],
        str(body.get("lease_token")),
        outcome,
    )
    return _json(asdict(batch))


async def fail(request: Request) -> Response:
    body = await _body(request)
    batch = await _call(
        _ledger(request).fail,
        request.path_params["batch_id"],
        str(body.get("lease_token")),
        body.get("errors") or [],
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
