"""Admin routes (SPEC section 1): API keys and provider connections.

All take the admin key. A key's clear text leaves the gateway exactly once,
in the answer to its creation; a provider's upstream key is never shown
whole again after it is stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import require_admin
from gateway.errors import APIError, bad_request
from gateway.state import GatewayState, gateway_state
from storage.metadata import now
from storage.records import ApiKeyRecord, ProviderRecord

MAX_NAME_CHARS = 200
MAX_BODY_BYTES = 1 << 20


def mask_secret(secret: str) -> str:
    """Enough of a key to recognise it ("sk-...abcd"), never enough to use it."""
    if not secret:
        return ""
    if len(secret) < 12:
        return "..." if len(secret) < 8 else f"...{secret[-2:]}"
    return f"{secret[:3]}...{secret[-4:]}"


def key_object(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "api_key",
        "name": record.name,
        "created_at": record.created_at,
    }


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


def _name(body: dict[str, Any], param: str = "name") -> str:
    value = body.get(param)
    if value is None:
        raise bad_request(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise bad_request(
            f"Invalid '{param}': expected a non-empty string of at most "
            f"{MAX_NAME_CHARS} characters.",
            param=param,
            code="invalid_value",
        )
    return value.strip()


def _typed(body: dict[str, Any], param: str, kind: type, default: Any) -> Any:
    value = body.get(param, default)
    # bool is an int in Python; an integer field must not take true/false.
    if value is not None and (
        not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    ):
        raise bad_request(
            f"Invalid '{param}': expected {kind.__name__}.", param=param, code="invalid_value"
        )
    return value


def parse_provider(body: dict[str, Any], created_at: int) -> ProviderRecord:
    """A provider connection from an admin request body (SPEC section 4)."""
    name = _name(body)
    if "/" in name:
        raise bad_request(
            "Invalid 'name': a provider name cannot contain '/' (it prefixes "
            "model names as 'provider/model').",
            param="name",
            code="invalid_value",
        )
    base_url = _name(body, "base_url")
    if not base_url.startswith(("http://", "https://")):
        raise bad_request(
            "Invalid 'base_url': expected an http(s) URL.", param="base_url", code="invalid_value"
        )
    api_key = _typed(body, "api_key", str, "") or ""
    is_active = _typed(body, "is_active", bool, True)
    max_concurrency = _typed(body, "max_concurrency", int, 64)
    if max_concurrency is None or not 1 <= max_concurrency <= 10000:
        raise bad_request(
            "Invalid 'max_concurrency': expected an integer from 1 to 10000.",
            param="max_concurrency",
            code="invalid_value",
        )
    models = _typed(body, "models", list, None)
    if models is not None and not all(isinstance(m, str) and m for m in models):
        raise bad_request(
            "Invalid 'models': expected a list of model names.",
            param="models",
            code="invalid_value",
        )
    is_default = _typed(body, "default", bool, False)
    return ProviderRecord(
        name=name,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        is_active=True if is_active is None else is_active,
        max_concurrency=max_concurrency,
        models=models,
        is_default=bool(is_default),
        created_at=created_at,
    )


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 in the envelope."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, "Request body too large.")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return body


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


async def keys_collection(request: Request) -> Response:
    require_admin(request)
    store = gateway_state(request).store
    if request.method == "POST":
        name = _name(await json_body(request))
        record, clear = store.create_api_key(name)
        return JSONResponse({**key_object(record), "key": clear}, status_code=201)
    data = [key_object(r) for r in store.list_api_keys()]
    return JSONResponse({"object": "list", "data": data})


async def key_item(request: Request) -> Response:
    require_admin(request)
    key_id = request.path_params["key_id"]
    if not gateway_state(request).store.revoke_api_key(key_id):
        raise APIError(404, f"No such API key: {key_id}")
    return JSONResponse({"id": key_id, "object": "api_key", "deleted": True})


async def providers_collection(request: Request) -> Response:
    require_admin(request)
    store = gateway_state(request).store
    if request.method == "POST":
        body = await json_body(request)
        record = parse_provider(body, now())
        existing = store.get_provider(record.name)
        if existing is not None:
            record = dataclasses.replace(record, created_at=existing.created_at)
        store.upsert_provider(record)
        return JSONResponse(provider_object(record), status_code=200 if existing else 201)
    data = [provider_object(r) for r in store.list_providers()]
    return JSONResponse({"object": "list", "data": data})


async def provider_item(request: Request) -> Response:
    require_admin(request)
    name = request.path_params["name"]
    if not gateway_state(request).store.delete_provider(name):
        raise APIError(404, f"No such provider: {name}")
    return JSONResponse({"name": name, "object": "provider", "deleted": True})


routes: list[Route] = [
    Route("/admin/keys", keys_collection, methods=["GET", "POST"]),
    Route("/admin/keys/{key_id}", key_item, methods=["DELETE"]),
    Route("/admin/providers", providers_collection, methods=["GET", "POST"]),
    Route("/admin/providers/{name}", provider_item, methods=["DELETE"]),
]
