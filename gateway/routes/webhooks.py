"""Admin routes for webhook endpoints: register, list, delete (admin key).

An endpoint's signing secret (`whsec_…`) is in the answer to its creation
and nowhere else: lists never show it, logs never hold it.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import require_admin
from gateway.errors import APIError
from gateway.json_body import json_object
from gateway.models.body import parse
from gateway.models.webhooks import (
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
)
from gateway.state import gateway_state
from storage.records import WebhookEndpointRecord
from tasks.webhooks import EVENT_TYPES


def endpoint_object(record: WebhookEndpointRecord) -> WebhookEndpoint:
    return {
        "id": record.id,
        "object": "webhook_endpoint",
        "url": record.url,
        "events": record.events,
        "key_id": record.api_key_id,
        "created_at": record.created_at,
    }


async def webhooks_collection(request: Request) -> Response:
    require_admin(request)
    store = gateway_state(request).store
    if request.method == "GET":
        found = await run_in_threadpool(store.list_webhook_endpoints)
        return JSONResponse({"object": "list", "data": [endpoint_object(r) for r in found]})
    body = parse(WebhookEndpointCreate, await json_object(request))
    url, events, key_id = body.url, body.events or list(EVENT_TYPES), body.key_id
    if key_id is not None and key_id not in {k.id for k in store.list_api_keys()}:
        raise APIError(404, f"No such API key: {key_id}", param="key_id")
    record = await run_in_threadpool(store.create_webhook_endpoint, url, events, key_id)
    created: WebhookEndpointCreated = {**endpoint_object(record), "secret": record.secret}
    return JSONResponse(created, status_code=201)


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
