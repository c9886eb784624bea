"""Admin routes (keys, providers) against a gateway subprocess."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from harness.live import LiveGateway, free_port

CONFIGURED = {
    "name": "configured",
    "base_url": "http://127.0.0.1:9/v1",
    "api_key": "sk-configured-secret-9876",
    "models": ["m1"],
    "default": True,
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    env = {
        "BATCHGATE_PROVIDERS": json.dumps([CONFIGURED]),
        # Nothing listens there: /health must say "starting", quickly.
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
    }
    with LiveGateway(tmp_path_factory.mktemp("admin-gw"), env=env) as gateway:
        yield gateway


def admin(
    gw: LiveGateway,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    **kwargs: object,
) -> httpx.Response:
    return httpx.request(
        method,
        f"{gw.url}{path}",
        headers={**gw.admin_headers(), **(headers or {})},
        timeout=10.0,
        **kwargs,
    )  # type: ignore[arg-type]


def test_admin_routes_need_the_admin_key(gw: LiveGateway) -> None:
    api_key = gw.create_key("not-admin")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {api_key}"}):
        for method, path in [
            ("GET", "/admin/keys"),
            ("POST", "/admin/keys"),
            ("GET", "/admin/providers"),
            ("DELETE", "/admin/providers/x"),
        ]:
            response = httpx.request(method, f"{gw.url}{path}", headers=headers, json={})
            assert response.status_code == 401, (method, path)
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_key_lifecycle(gw: LiveGateway) -> None:
    created = admin(gw, "POST", "/admin/keys", json={"name": "team-a"})
    assert created.status_code == 201
    body = created.json()
    assert {"id", "name", "key", "created_at"} <= set(body) and body["name"] == "team-a"

    listed = admin(gw, "GET", "/admin/keys").json()["data"]
    mine = [k for k in listed if k["id"] == body["id"]]
    assert len(mine) == 1 and mine[0]["name"] == "team-a"
    for entry in listed:
        assert "key" not in entry and "key_hash" not in entry
    assert body["key"] not in admin(gw, "GET", "/admin/keys").text

    headers = {"Authorization": f"Bearer {body['key']}"}
    assert httpx.get(f"{gw.url}/v1/files", headers=headers).status_code == 200
    assert admin(gw, "DELETE", f"/admin/keys/{body['id']}").status_code == 200
    assert httpx.get(f"{gw.url}/v1/files", headers=headers).status_code == 401
    assert body["id"] not in {k["id"] for k in admin(gw, "GET", "/admin/keys").json()["data"]}
    assert admin(gw, "DELETE", f"/admin/keys/{body['id']}").status_code == 404


def test_key_bodies_are_validated(gw: LiveGateway) -> None:
    bad_json = admin(
        gw,
        "POST",
        "/admin/keys",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    for body in ({}, {"name": ""}, {"name": 5}):
        response = admin(gw, "POST", "/admin/keys", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == "name"
    assert admin(gw, "POST", "/admin/keys", json=["name"]).status_code == 400


def test_configured_providers_are_loaded_at_start_with_masked_keys(gw: LiveGateway) -> None:
    response = admin(gw, "GET", "/admin/providers")
    assert response.status_code == 200
    providers = {p["name"]: p for p in response.json()["data"]}
    configured = providers["configured"]
    assert configured["base_url"] == CONFIGURED["base_url"]
    assert configured["models"] == ["m1"] and configured["default"] is True
    assert configured["api_key"] == "sk-...9876"
    assert CONFIGURED["api_key"] not in response.text


def test_provider_upsert_list_and_delete(gw: LiveGateway) -> None:
    body = {
        "name": "local",
        "base_url": "http://127.0.0.1:8001/v1",
        "api_key": "sk-local-very-secret-1234",
        "max_concurrency": 8,
    }
    created = admin(gw, "POST", "/admin/providers", json=body)
    assert created.status_code == 201
    assert created.json()["api_key"] == "sk-...1234"
    assert created.json()["is_active"] is True and created.json()["default"] is False

    updated = admin(gw, "POST", "/admin/providers", json={**body, "is_active": False})
    assert updated.status_code == 200 and updated.json()["is_active"] is False
    listed = admin(gw, "GET", "/admin/providers")
    assert [p["is_active"] for p in listed.json()["data"] if p["name"] == "local"] == [False]
    assert body["api_key"] not in listed.text

    assert admin(gw, "DELETE", "/admin/providers/local").status_code == 200
    assert "local" not in {p["name"] for p in admin(gw, "GET", "/admin/providers").json()["data"]}
    assert admin(gw, "DELETE", "/admin/providers/local").status_code == 404


def test_provider_bodies_are_validated_with_param(gw: LiveGateway) -> None:
    good = {"name": "p", "base_url": "http://127.0.0.1:1/v1"}
    cases = [
        ({"base_url": good["base_url"]}, "name"),
        ({"name": "p"}, "base_url"),
        ({**good, "name": "a/b"}, "name"),
        ({**good, "base_url": "ftp://x"}, "base_url"),
        ({**good, "max_concurrency": 0}, "max_concurrency"),
        ({**good, "max_concurrency": True}, "max_concurrency"),
        ({**good, "is_active": "yes"}, "is_active"),
        ({**good, "models": "m1"}, "models"),
        ({**good, "api_key": 12}, "api_key"),
    ]
    for body, param in cases:
        response = admin(gw, "POST", "/admin/providers", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param, body
    bad_json = admin(
        gw, "POST", "/admin/providers", content=b"[", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert "p" not in {p["name"] for p in admin(gw, "GET", "/admin/providers").json()["data"]}


def test_health_needs_no_key_and_says_starting_without_prefect(gw: LiveGateway) -> None:
    response = httpx.get(f"{gw.url}/health", timeout=30.0)
    assert response.status_code == 503
    assert response.json()["status"] == "starting"
    assert response.headers.get("x-request-id")


def test_only_key_hashes_reach_the_database(gateway_dir: Path) -> None:
    data_dir = gateway_dir / "data"
    with LiveGateway(data_dir) as gateway:
        clear = [gateway.create_key(f"k{i}") for i in range(3)]
    with duckdb.connect(str(data_dir / "batchgate.duckdb"), read_only=True) as db:
        hashes = {row[0] for row in db.execute("SELECT key_hash FROM api_keys").fetchall()}
    assert hashes == {hashlib.sha256(k.encode()).hexdigest() for k in clear}
    stored = b"".join(
        p.read_bytes()
        for p in data_dir.iterdir()
        if p.is_file() and p.name.startswith("batchgate.duckdb")
    )
    assert stored
    for key in clear:
        assert key.encode() not in stored


@pytest.mark.parametrize(
    ("method", "path", "body", "unknown"),
    [
        ("POST", "/admin/providers", {"name": "p", "base_url": "http://x", "proxy": "h"}, "proxy"),
        (
            "POST",
            "/admin/providers",
            {"name": "p", "base_url": "http://x", "batch_api": {}},
            "batch_api",
        ),
        ("POST", "/admin/keys", {"name": "k", "max_token": 5}, "max_token"),
        ("PATCH", "/admin/providers/configured", {"max_concurrency": 4, "limit": 1}, "limit"),
    ],
)
def test_a_field_the_body_does_not_know_is_refused_naming_it(
    gw: LiveGateway, method: str, path: str, body: dict[str, object], unknown: str
) -> None:
    """A misspelled (or not yet supported) setting is refused, not dropped:
    nothing is created or changed."""
    before = admin(gw, "GET", "/admin/providers").json()["data"]
    keys_before = len(admin(gw, "GET", "/admin/keys").json()["data"])
    answer = admin(gw, method, path, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == unknown
    assert error["message"] == f"Unrecognized request argument supplied: {unknown}"
    assert error["code"] == "unknown_parameter"
    assert admin(gw, "GET", "/admin/providers").json()["data"] == before
    assert len(admin(gw, "GET", "/admin/keys").json()["data"]) == keys_before


def test_numbers_are_json_numbers_and_strings_are_not_numbers(gw: LiveGateway) -> None:
    """8.0 is the integer 8 (JSON has one number type); "8" and true are not."""
    made = admin(gw, "POST", "/admin/keys", json={"name": "whole", "max_tokens": 8.0})
    assert made.status_code == 201, made.text
    assert made.json()["budget"]["max_tokens"] == 8
    for value in ("8", True, 8.5):
        refused = admin(gw, "POST", "/admin/keys", json={"name": "typed", "max_tokens": value})
        assert refused.status_code == 400, (value, refused.text)
        assert refused.json()["error"]["param"] == "max_tokens"
    refused = admin(gw, "PATCH", "/admin/providers/configured", json={"max_concurrency": "8"})
    assert refused.json()["error"] == {
        "message": "Invalid 'max_concurrency': expected int.",
        "type": "invalid_request_error",
        "param": "max_concurrency",
        "code": "invalid_value",
    }
