"""Model routing: which provider a line's model goes to."""

from __future__ import annotations

import pytest

from storage.records import ProviderRecord
from tasks.routing import (
    UPSTREAM_PATHS,
    Route,
    RoutingError,
    prepare_body,
    resolve_route,
    upstream_url,
)

OPENAI = ProviderRecord("openai", "https://api.openai.com/v1", "sk-o", is_default=True)
MISTRAL = ProviderRecord(
    "mistral", "https://api.mistral.ai/v1/", "sk-m", models=["mistral-embed", "mistral-small"]
)
VLLM = ProviderRecord("vllm", "http://127.0.0.1:9000/v1", "", models=["meta-llama/Llama-3"])
OFF = ProviderRecord("off", "http://127.0.0.1:9001/v1", "", is_active=False, models=["off-model"])
ALL = [OPENAI, MISTRAL, VLLM, OFF]


@pytest.mark.parametrize(
    ("model", "providers", "provider", "upstream_model"),
    [
        ("openai/gpt-4o-mini", ALL, "openai", "gpt-4o-mini"),
        ("gpt-4o-mini", ALL, "openai", "gpt-4o-mini"),
        ("mistral/mistral-embed", ALL, "mistral", "mistral-embed"),
        ("mistral-small", ALL, "mistral", "mistral-small"),
        ("meta-llama/Llama-3", ALL, "vllm", "meta-llama/Llama-3"),
        ("vllm/meta-llama/Llama-3", ALL, "vllm", "meta-llama/Llama-3"),
        ("gpt-4o-mini", [MISTRAL], "mistral", "gpt-4o-mini"),
        ("off-model", ALL, "openai", "off-model"),
        (None, ALL, "openai", None),
    ],
    ids=[
        "prefix-removed",
        "bare-to-default",
        "prefix-second-provider",
        "models-list-match",
        "slash-model-listed",
        "only-first-slash-splits",
        "only-active-provider",
        "listed-by-inactive-only-falls-back",
        "no-model-to-default",
    ],
)
def test_routes(
    model: str | None, providers: list[ProviderRecord], provider: str, upstream_model: str | None
) -> None:
    route = resolve_route(model, providers)
    assert isinstance(route, Route)
    assert route.provider.name == provider
    assert route.upstream_model == upstream_model


@pytest.mark.parametrize(
    ("model", "providers", "status", "code"),
    [
        ("acme/gpt-4o", ALL, 404, "unknown_provider"),
        ("off/off-model", ALL, 400, "provider_inactive"),
        ("openai/", ALL, 400, "invalid_model"),
        ("gpt-4o", [OFF], 404, "no_active_provider"),
        ("gpt-4o", [], 404, "no_active_provider"),
        ("gpt-4o", [MISTRAL, VLLM], 404, "model_not_found"),
    ],
    ids=[
        "unknown-provider",
        "inactive-provider",
        "empty-model",
        "all-inactive",
        "none",
        "no-default-ambiguous",
    ],
)
def test_routing_errors(
    model: str, providers: list[ProviderRecord], status: int, code: str
) -> None:
    error = resolve_route(model, providers)
    assert isinstance(error, RoutingError)
    assert (error.status, error.code) == (status, code)
    body = error.error_body()
    assert body["error"]["code"] == code
    assert body["error"]["message"] == error.message


def test_models_list_wins_over_default() -> None:
    """A model a provider names explicitly goes there, not to the default."""
    route = resolve_route("mistral-embed", [OPENAI, MISTRAL])
    assert isinstance(route, Route) and route.provider is MISTRAL


def test_upstream_url_joins_openai_style_base() -> None:
    assert upstream_url(MISTRAL, "/v1/embeddings") == "https://api.mistral.ai/v1/embeddings"
    assert upstream_url(OPENAI, "/v1/chat/completions") == (
        "https://api.openai.com/v1/chat/completions"
    )
    assert set(UPSTREAM_PATHS) == {
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/responses",
        "/v1/moderations",
    }


def test_prepare_body_forces_stream_false_and_replaces_model() -> None:
    body = {
        "model": "openai/gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [],
    }
    out = prepare_body(body, "gpt-4o-mini")
    assert out == {"model": "gpt-4o-mini", "stream": False, "messages": []}
    assert body["stream"] is True and body["model"] == "openai/gpt-4o-mini"  # input untouched


def test_prepare_body_adds_no_stream_key_and_keeps_model_when_none() -> None:
    out = prepare_body({"input": "x"}, None)
    assert out == {"input": "x"}
