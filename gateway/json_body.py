"""Reading a request's JSON body, bounded: every route that takes JSON reads
it through here, so no client holds more of the gateway's memory than
`MAX_JSON_BODY_BYTES` however large a body it sends (uploads stream to disk
through gateway/uploads.py instead)."""

from __future__ import annotations

import orjson
from starlette.requests import Request

from gateway.errors import APIError, bad_request

MAX_JSON_BODY_BYTES = 1 << 20


async def read_bounded(request: Request, limit: int = MAX_JSON_BODY_BYTES) -> bytes:
    """The body's bytes, refused with 413 as soon as it is known to be
    larger than `limit` (by its Content-Length, or while it arrives)."""
    too_large = APIError(413, f"Request body too large: at most {limit} bytes.")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


async def json_value(request: Request) -> object:
    """The body as JSON (any value: the body's model says what it must be)."""
    try:
        return orjson.loads(await read_bounded(request))
    except orjson.JSONDecodeError:
        raise bad_request("The request body is not valid JSON.") from None


async def json_object(request: Request) -> dict[str, object]:
    """The body as a JSON object; an empty body is `{}`."""
    raw = await read_bounded(request)
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body
