"""Admin routes: API keys and provider connections, and
batch control: key budgets, a provider's live concurrency
ceiling, pausing and resuming a batch.

All take the admin key. A key's clear text leaves the gateway exactly once,
in the answer to its creation; a provider's upstream key is never shown
whole again after it is stored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import require_admin
from gateway.errors import APIError
from gateway.json_body import json_object
from gateway.models.admin import (
    KeyBudgetFields,
    KeyCreate,
    ProviderConcurrency,
    ProviderCreate,
)
from gateway.models.body import parse
from gateway.state import GatewayState, gateway_state
from storage.metadata import MetadataStore, now
from storage.records import ApiKeyRecord, BatchRecord, KeyBudget, ProviderRecord
from tasks.control_state import budget_state

log = logging.getLogger("batchgate.gateway")


def mask_secret(secret: str) -> str:
    """Enough of a key to recognise it ("sk-...abcd"), never enough to use it."""
    if not secret:
        return ""
    if len(secret) < 12:
        return "..." if len(secret) < 8 else f"...{secret[-2:]}"
    return f"{secret[:3]}...{secret[-4:]}"


def key_object(record: ApiKeyRecord, store: MetadataStore | None = None) -> dict[str, Any]:
    """The key as the admin API shows it; with the store, its budget and
    the spend of the current period too (null without a budget)."""
    found = {
        "id": record.id,
        "object": "api_key",
        "name": record.name,
        "created_at": record.created_at,
    }
    if store is not None:
        found["budget"] = budget_state(store, record.id)
    return found


def key_budget(body: KeyBudgetFields, api_key_id: str) -> KeyBudget:
    return KeyBudget(api_key_id, body.max_tokens, body.max_cost_usd, body.budget_period)


def provider_object(record: ProviderRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "object": "provider",
        "base_url": record.base_url,
        "api_key": mask_secret(record.api_key),
        "is_active": record.is_active,
        "max_concurrency": record.max_concurrency,
        "models": record.models,
        "default": record.is_default,
        "created_at": record.created_at,
    }


def provider_record(body: ProviderCreate, created_at: int) -> ProviderRecord:
    """A provider connection from an admin request body."""
    return ProviderRecord(
        name=body.name,
        base_url=body.base_url.rstrip("/"),
        api_key=body.api_key or "",
        is_active=True if body.is_active is None else body.is_active,
        max_concurrency=body.max_concurrency,
        models=body.models,
        is_default=bool(body.default),
        created_at=created_at,
    )


def load_configured_providers(state: GatewayState) -> None:
    """Upsert the providers declared in settings (the config file) at start-up.
    The config file wins over a same-named connection made at run time."""
    for config in state.settings.providers:
        existing = state.store.get_provider(config.name)
        state.store.upsert_provider(
            ProviderRecord(
                name=config.name,
                base_url=config.base_url.rstrip("/"),
                api_key=config.api_key,
                is_active=config.is_active,
                max_concurrency=config.max_concurrency,
                models=config.models,
                is_default=config.default,
                created_at=existing.created_at if existing else now(),
            )
        )


# -- routes ---------------------------------------------------------------
# Handlers are plain functions of the request and its JSON body, run in the
# thread pool by `_admin`: a write waits for DuckDB's write lock, which a
# chunk checkpoint's commit holds, and must not hold the event loop (every
# other request) meanwhile.

Handler = Callable[[Request, dict[str, object]], Response]


def _admin(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The admin check and the body read on the loop; the handler off it."""

    async def endpoint(request: Request) -> Response:
        require_admin(request)
        body = await json_object(request) if request.method in {"POST", "PATCH"} else {}
        return await run_in_threadpool(handler, request, body)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def keys_collection(request: Request, body: dict[str, object]) -> Response:
    store = gateway_state(request).store
    if request.method == "POST":
        fields = parse(KeyCreate, body)  # the whole body checked before the key exists
        record, clear = store.create_api_key(fields.name)
        store.set_budget(key_budget(fields, record.id))
        return JSONResponse({**key_object(record, store), "key": clear}, status_code=201)
    data = [key_object(r, store) for r in store.list_api_keys()]
    return JSONResponse({"object": "list", "data": data})


def key_item(request: Request, body: dict[str, object]) -> Response:
    key_id = request.path_params["key_id"]
    if not gateway_state(request).store.revoke_api_key(key_id):
        raise APIError(404, f"No such API key: {key_id}")
    return JSONResponse({"id": key_id, "object": "api_key", "deleted": True})


def replace_key_budget(request: Request, body: dict[str, object]) -> Response:
    """PATCH /admin/keys/{key_id}: replace the key's budget (all three fields;
    none of them, or nulls, removes it). Spend already counted stays."""
    store = gateway_state(request).store
    key_id = request.path_params["key_id"]
    record = next((k for k in store.list_api_keys() if k.id == key_id), None)
    if record is None:
        raise APIError(404, f"No such API key: {key_id}")
    store.set_budget(key_budget(parse(KeyBudgetFields, body), key_id))
    return JSONResponse(key_object(record, store))


def providers_collection(request: Request, body: dict[str, object]) -> Response:
    store = gateway_state(request).store
    if request.method == "POST":
        record = provider_record(parse(ProviderCreate, body), now())
        existing = store.get_provider(record.name)
        if existing is not None:
            record = dataclasses.replace(record, created_at=existing.created_at)
        store.upsert_provider(record)
        return JSONResponse(provider_object(record), status_code=200 if existing else 201)
    data = [provider_object(r) for r in store.list_providers()]
    return JSONResponse({"object": "list", "data": data})


def provider_concurrency(request: Request, body: dict[str, object]) -> Response:
    """PATCH /admin/providers/{name} {max_concurrency}: the new ceiling holds
    for new runs at once and for running batches within one heartbeat."""
    store = gateway_state(request).store
    name = request.path_params["name"]
    max_concurrency = parse(ProviderConcurrency, body).max_concurrency
    if not store.set_provider_ceiling(name, max_concurrency):
        raise APIError(404, f"No such provider: {name}")
    record = store.get_provider(name)
    if record is None:
        raise APIError(404, f"No such provider: {name}")
    return JSONResponse(provider_object(record))


def _set_paused(request: Request, paused: bool) -> BatchRecord:
    """Pause or resume a live batch: the run obeys within one heartbeat and
    keeps its lease meanwhile; the batch stays `in_progress`."""
    store = gateway_state(request).store
    batch_id = request.path_params["batch_id"]
    batch = store.get_batch(batch_id)
    if batch is None:
        raise APIError(404, f"No such Batch object: {batch_id}")
    if batch.is_terminal or batch.status == "cancelling":
        raise APIError(
            409,
            f"Cannot {'pause' if paused else 'resume'} a batch with status '{batch.status}'.",
            code="batch_not_live",
            headers={"x-should-retry": "false"},
        )
    store.set_paused(batch_id, paused)
    return batch


def _control_object(batch: BatchRecord, paused: bool) -> Response:
    return JSONResponse(
        {"id": batch.id, "object": "batch.control", "status": batch.status, "paused": paused}
    )


def pause_batch(request: Request, body: dict[str, object]) -> Response:
    return _control_object(_set_paused(request, True), True)


async def resume_batch(request: Request) -> Response:
    """Also resumes the batch's run if it was suspended in the Prefect UI
    (which pauses a batch too: docs/operations.md)."""
    require_admin(request)
    batch = await run_in_threadpool(_set_paused, request, False)
    if batch.flow_run_id:
        try:
            if await gateway_state(request).flow_runs.resume_suspended(batch.flow_run_id):
                log.info("batch %s: resumed its flow run suspended in Prefect", batch.id)
        except Exception as exc:  # Prefect away: the pause flag is cleared all the same
            raise APIError(
                503,
                f"{batch.id} is no longer paused here, but its flow run could not be read "
                f"from Prefect to resume it if it was suspended there: {type(exc).__name__}. "
                "Try again.",
                code="prefect_unavailable",
            ) from exc
    return _control_object(batch, False)


def provider_item(request: Request, body: dict[str, object]) -> Response:
    name = request.path_params["name"]
    if not gateway_state(request).store.delete_provider(name):
        raise APIError(404, f"No such provider: {name}")
    return JSONResponse({"name": name, "object": "provider", "deleted": True})


routes: list[Route] = [
    Route("/admin/keys", _admin(keys_collection), methods=["GET", "POST"]),
    Route("/admin/keys/{key_id}", _admin(key_item), methods=["DELETE"]),
    Route("/admin/keys/{key_id}", _admin(replace_key_budget), methods=["PATCH"]),
    Route("/admin/providers", _admin(providers_collection), methods=["GET", "POST"]),
    Route("/admin/providers/{name}", _admin(provider_item), methods=["DELETE"]),
    Route("/admin/providers/{name}", _admin(provider_concurrency), methods=["PATCH"]),
    Route("/admin/batches/{batch_id}/pause", _admin(pause_batch), methods=["POST"]),
    Route("/admin/batches/{batch_id}/resume", resume_batch, methods=["POST"]),
]
