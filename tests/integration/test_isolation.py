"""Isolation between keys, as a table: every /v1 route against every kind of
object (input, output, error and other files; finished and live batches)
answers another key exactly as if the object did not exist, and changes
nothing. Admin routes refuse API keys; internal routes refuse everything but
the internal token. Objects come from real batch runs (tests/objects.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.objects import Objects, make_objects
from tests.parity.test_batches_parity import ADMIN, TOKEN, Env

FILE_KINDS = ["input", "user_data", "output", "error"]
BATCH_KINDS = ["completed", "live"]
# (method, path template, json body template); {id} is the foreign object.
FILE_ROUTES = [
    ("GET", "/v1/files/{id}", None),
    ("GET", "/v1/files/{id}/content", None),
    ("DELETE", "/v1/files/{id}", None),
    ("GET", "/v1/files?after={id}", None),
    (
        "POST",
        "/v1/batches",
        {"input_file_id": "{id}", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ),
]
BATCH_ROUTES = [
    ("GET", "/v1/batches/{id}", None),
    ("POST", "/v1/batches/{id}/cancel", None),
    ("GET", "/v1/batches?after={id}", None),
]
V1_ROUTES = [
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file-x"),
    ("DELETE", "/v1/files/file-x"),
    ("GET", "/v1/files/file-x/content"),
    ("GET", "/v1/batches"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/batch_x"),
    ("POST", "/v1/batches/batch_x/cancel"),
]
ADMIN_ROUTES = [
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("DELETE", "/admin/keys/{key_id}"),
    ("GET", "/admin/providers"),
    ("POST", "/admin/providers"),
    ("DELETE", "/admin/providers/openai"),
]
INTERNAL_ROUTES = [
    ("POST", "/internal/batches/{batch_id}/claim"),
    ("POST", "/internal/batches/{batch_id}/renew"),
    ("POST", "/internal/batches/{batch_id}/release"),
    ("GET", "/internal/batches/{batch_id}/input"),
    ("POST", "/internal/batches/{batch_id}/plan"),
    ("GET", "/internal/batches/{batch_id}/chunks"),
    ("GET", "/internal/batches/{batch_id}/chunks/0/input"),
    ("POST", "/internal/batches/{batch_id}/chunks/0"),
    ("POST", "/internal/batches/{batch_id}/finalize"),
    ("POST", "/internal/batches/{batch_id}/fail"),
    ("GET", "/internal/providers"),
    ("POST", "/internal/retention"),
]


@dataclass
class Two:
    env: Env
    a: Objects
    b: Objects
    http: httpx.Client

    def pairs(self) -> list[tuple[Objects, Objects]]:
        """(owner, intruder) both ways round."""
        return [(self.a, self.b), (self.b, self.a)]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    env = Env(Path(tmp_path_factory.mktemp("isolation")))
    try:
        with httpx.Client(base_url=env.url, timeout=30) as http:
            yield Two(env, make_objects(env, "alice"), make_objects(env, "bob"), http)
    finally:
        env.close()


def _request(
    two: Two, key: str | None, method: str, path: str, body: object = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return two.http.request(method, path, json=body, headers=headers)


def _fill(template: object, object_id: str) -> object:
    if isinstance(template, dict):
        return {k: _fill(v, object_id) for k, v in template.items()}
    return template.replace("{id}", object_id) if isinstance(template, str) else template


def _assert_not_found(response: httpx.Response, kind: str, object_id: str) -> None:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["message"] == f"No such {kind} object: {object_id}"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize(("method", "path", "body"), FILE_ROUTES)
def test_another_keys_file_is_not_found_on_every_route(
    two: Two, kind: str, method: str, path: str, body: object
) -> None:
    for owner, intruder in two.pairs():
        file_id = owner.file_ids[kind]
        response = _request(two, intruder.key, method, _fill(path, file_id), _fill(body, file_id))
        _assert_not_found(response, "File", file_id)
        # The owner still has it, bytes and all.
        assert _request(two, owner.key, "GET", f"/v1/files/{file_id}").status_code == 200
        content = _request(two, owner.key, "GET", f"/v1/files/{file_id}/content")
        assert content.status_code == 200 and content.content


@pytest.mark.parametrize("kind", BATCH_KINDS)
@pytest.mark.parametrize(("method", "path", "body"), BATCH_ROUTES)
def test_another_keys_batch_is_not_found_on_every_route(
    two: Two, kind: str, method: str, path: str, body: object
) -> None:
    for owner, intruder in two.pairs():
        batch_id = owner.batch_ids[kind]
        before = _request(two, owner.key, "GET", f"/v1/batches/{batch_id}").json()
        response = _request(two, intruder.key, method, _fill(path, batch_id))
        _assert_not_found(response, "Batch", batch_id)
        after = _request(two, owner.key, "GET", f"/v1/batches/{batch_id}").json()
        assert after["status"] == before["status"]


@pytest.mark.parametrize("purpose", [None, "batch", "batch_output", "user_data"])
def test_lists_show_only_the_callers_objects(two: Two, purpose: str | None) -> None:
    query = f"?purpose={purpose}" if purpose else ""
    for owner, intruder in two.pairs():
        files = _request(two, intruder.key, "GET", f"/v1/files{query}").json()["data"]
        assert not {f["id"] for f in files} & set(owner.file_ids.values())
        if purpose is None:
            assert set(intruder.file_ids.values()) <= {f["id"] for f in files}
        batches = _request(two, intruder.key, "GET", "/v1/batches?limit=100").json()["data"]
        assert {b["id"] for b in batches} == set(intruder.batch_ids.values())


@pytest.mark.parametrize("who", ["no key", "unknown key", "admin key", "internal token"])
@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
def test_v1_routes_need_an_api_key(two: Two, who: str, method: str, path: str) -> None:
    key = {"no key": None, "unknown key": "sk-nobody", "admin key": ADMIN, "internal token": TOKEN}
    response = _request(two, key[who], method, path)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] in {"missing_api_key", "invalid_api_key"}


@pytest.mark.parametrize("who", ["no key", "api key", "internal token"])
@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_refuse_anything_but_the_admin_key(
    two: Two, who: str, method: str, path: str
) -> None:
    key = {"no key": None, "api key": two.a.key, "internal token": TOKEN}[who]
    keys_before = _request(two, ADMIN, "GET", "/admin/keys").json()["data"]
    body = {"name": "intruder", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-stolen"}
    response = _request(two, key, method, path.replace("{key_id}", keys_before[0]["id"]), body)
    assert response.status_code == 401, response.text
    assert _request(two, ADMIN, "GET", "/admin/keys").json()["data"] == keys_before
    providers = _request(two, ADMIN, "GET", "/admin/providers").json()["data"]
    assert {p["name"] for p in providers} == {"openai", "mistral", "cancelable"}


@pytest.mark.parametrize("who", ["no token", "wrong token", "api key", "admin key"])
@pytest.mark.parametrize(("method", "path"), INTERNAL_ROUTES)
def test_internal_routes_refuse_anything_but_the_internal_token(
    two: Two, who: str, method: str, path: str
) -> None:
    key = {"no token": None, "wrong token": TOKEN + "x", "api key": two.a.key, "admin key": ADMIN}
    batch_id = two.a.live_batch_id
    response = _request(
        two, key[who], method, path.replace("{batch_id}", batch_id), {"lease_token": "t"}
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["message"] == "This route needs the internal token."
    batch = _request(two, two.a.key, "GET", f"/v1/batches/{batch_id}").json()
    assert batch["status"] == "validating"
