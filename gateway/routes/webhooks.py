"""Admin routes for webhook endpoints: register, list, delete (admin key).

An endpoint's signing secret (`whsec_…`) is in the answer to its creation
and nowhere else: lists never show it, logs never hold it.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import require_admin
from gateway.errors import APIError, bad_request
from gateway.routes.admin import json_body
from gateway.state import gateway_state
from storage.records import WebhookEndpointRecord
from tasks.webhooks import EVENT_TYPES

MAX_URL_CHARS = 2000


def endpoint_object(record: WebhookEndpointRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "webhook_endpoint",
        "url": record.url,
        "events": record.events,
        "key_id": record.api_key_id,
        "created_at": record.created_at,
    }


# The same rule as the OpenAPI document's pattern, so a URL it calls valid is taken.
URL_PATTERN = re.compile(r"https?://\S+")


def _url(body: dict[str, Any]) -> str:
    value = body.get("url")
    if value is None:
        raise bad_request(
            "Missing required parameter: 'url'.", param="url", code="missing_required_parameter"
        )
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS or not URL_PATTERN.fullmatch(value):
        raise bad_request(
            f"Invalid 'url': expected an http(s) URL of at most {MAX_URL_CHARS} characters.",
            param="url",
            code="invalid_value",
        )
    return value


def _events(body: dict[str, Any]) -> list[str]:
    value = body.get("events")
    if value is None:
        return list(EVENT_TYPES)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(e, str) and e in EVENT_TYPES for e in value)
    ):
        raise bad_request(
            f"Invalid 'events': expected a non-empty list of {', '.join(EVENT_TYPES)}.",
            param="events",
            code="invalid_value",
        )
    return sorted(set(value))


async def webhooks_collection(request: Request) -> Response:
    require_admin(request)
    store = gateway_state(request).store
    if request.method == "GET":
        found = await run_in_threadpool(store.list_webhook_endpoints)
        return JSONResponse({"object": "list", "data": [endpoint_object(r) for r in found]})
    body = await json_body(request)
    url, events = _url(body), _events(body)
    key_id = body.get("key_id")
    if key_id is not None and not isinstance(key_id, str):
        raise bad_request(
            "Invalid 'key_id': expected an API key id or null.",
            param="key_id",
            code="invalid_value",
        )
    if key_id is not None and key_id not in {k.id for k in store.list_api_keys()}:
        raise APIError(404, f"No such API key: {key_id}", param="key_id")
    record = await run_in_threadpool(store.create_webhook_endpoint, url, events, key_id)
    return JSONResponse({**endpoint_object(record), "secret": record.secret}, status_code=201)


async def webhook_item(request: Request) -> Response:
    require_admin(request)
    webhook_id = request.path_params["webhook_id"]
    store = gateway_state(request).store
    if not await run_in_threadpool(store.delete_webhook_endpoint, webhook_id):
        raise APIError(404, f"No such webhook endpoint: {webhook_id}")
    return JSONResponse({"id": webhook_id, "object": "webhook_endpoint", "deleted": True})


routes: list[Route] = [
    Route("/admin/webhooks", webhooks_collection, methods=["GET", "POST"]),
    Route("/admin/webhooks/{webhook_id}", webhook_item, methods=["DELETE"]),
]
