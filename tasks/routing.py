"""Model routing: which provider connection a request line goes to.

Pure functions over plain records, so the rules read in one
place and are tested without HTTP:

- ``"provider/model"`` goes to the provider named by the prefix, with the
  prefix removed. Only the first ``/`` splits, so ``"vllm/meta-llama/Llama-3"``
  asks provider ``vllm`` for ``meta-llama/Llama-3``.
- A prefix that names no provider is not an error by itself: model names such
  as ``"meta-llama/Llama-3"`` contain slashes. If some provider lists the whole
  string in its ``models``, that provider gets it unchanged; otherwise the line
  fails with "unknown provider".
- A bare model goes to the provider whose ``models`` lists it, else to the
  default provider, else to the only active provider if there is exactly one.
- Inactive providers are never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.records import ProviderRecord

# Batch endpoint -> path under the provider's OpenAI-style base URL ("…/v1").
UPSTREAM_PATHS: dict[str, str] = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/embeddings": "/embeddings",
    "/v1/completions": "/completions",
    "/v1/responses": "/responses",
    "/v1/moderations": "/moderations",
}


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the provider and the model name it knows."""

    provider: ProviderRecord
    upstream_model: str | None


@dataclass(frozen=True, slots=True)
class RoutingError:
    """Why a line cannot be routed; it fails that line only, never the batch."""

    status: int
    code: str
    message: str

    def error_body(self) -> dict[str, Any]:
        """The OpenAI error envelope for the error file's `response.body`."""
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": "model",
                "code": self.code,
            }
        }


def upstream_url(provider: ProviderRecord, endpoint: str) -> str:
    """The full URL of `endpoint` (e.g. "/v1/embeddings") at `provider`."""
    return provider.base_url.rstrip("/") + UPSTREAM_PATHS[endpoint]


def _lists(provider: ProviderRecord, model: str) -> bool:
    return model in (provider.models or ())


def _by_models_list(model: str, active: Sequence[ProviderRecord]) -> ProviderRecord | None:
    """The active provider listing `model`; the default one wins a tie."""
    listing = [p for p in active if _lists(p, model)]
    if not listing:
        return None
    return next((p for p in listing if p.is_default), listing[0])


def _fallback(active: Sequence[ProviderRecord]) -> ProviderRecord | None:
    """The default provider, else the only active one."""
    default = next((p for p in active if p.is_default), None)
    if default is not None:
        return default
    return active[0] if len(active) == 1 else None


def resolve_route(model: str | None, providers: Sequence[ProviderRecord]) -> Route | RoutingError:
    """Pick the provider and upstream model name for a request's `model`."""
    active = [p for p in providers if p.is_active]
    by_name = {p.name: p for p in providers}

    if model and "/" in model:
        prefix, rest = model.split("/", 1)
        named = by_name.get(prefix)
        if named is not None:
            if not named.is_active:
                return RoutingError(400, "provider_inactive", f"Provider '{prefix}' is not active.")
            if not rest:
                return RoutingError(400, "invalid_model", f"Model '{model}' names no model.")
            return Route(named, rest)
        listed = _by_models_list(model, active)
        if listed is not None:
            return Route(listed, model)
        return RoutingError(
            404,
            "unknown_provider",
            f"Unknown provider '{prefix}' in model '{model}', and no active provider "
            "lists that model.",
        )

    if model:
        listed = _by_models_list(model, active)
        if listed is not None:
            return Route(listed, model)

    chosen = _fallback(active)
    if chosen is not None:
        return Route(chosen, model or None)
    if not active:
        return RoutingError(404, "no_active_provider", "No active provider connection.")
    return RoutingError(
        404,
        "model_not_found",
        f"No provider lists model '{model}' and there is no default provider; "
        "use 'provider/model'.",
    )


def prepare_body(body: dict[str, Any], upstream_model: str | None) -> dict[str, Any]:
    """A copy of a line's body as the provider should get it.

    The model loses its provider prefix, and streaming is always off: a batch
    stores one JSON response per line, never an event stream. A body without
    `stream` is left without it (off is the default everywhere), because some
    providers refuse parameters an endpoint does not know (embeddings).
    """
    out = dict(body)
    if upstream_model is not None:
        out["model"] = upstream_model
    if "stream" in out:
        out["stream"] = False
    out.pop("stream_options", None)
    return out
