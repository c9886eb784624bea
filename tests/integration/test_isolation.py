"""Isolation between keys, as a table: every /v1 route that names a file or a
batch, against every kind of object (input, output, error and other files;
finished and live batches), answers another key exactly as if the object did
not exist, and changes nothing. Every route of the app (gateway/app.py
`ROUTES`, so a route added later is in the table too) refuses every
credential but its own: /v1 takes API keys, /admin the admin key, /internal
the internal token, /metrics the admin key or the metrics token; /health and
/openapi.json are public. Objects come from real batch runs (harness/objects.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from gateway.app import ROUTES
from harness.inline_gateway import ADMIN, TOKEN, Env
from harness.objects import Objects, make_objects

METRICS = "metrics-isolation"
PUBLIC = {("GET", "/health"), ("GET", "/openapi.json")}
# Who may call a route, by the start of its path: the credentials that open it.
AUDIENCES = {
    "/v1/": {"api key"},
    "/admin/": {"admin key"},
    "/internal/": {"internal token"},
    "/metrics": {"admin key", "metrics token"},
}
# What each audience's refusal says (401, the OpenAI error envelope).
REFUSALS = {
    "/admin/": "This route needs the admin key.",
    "/internal/": "This route needs the internal token.",
    "/metrics": "This route needs the admin key.",
}
# "altered key": the route's own credential with one character more.
CREDENTIALS = ["no key", "unknown key", "altered key", "api key", "admin key",
               "internal token", "metrics token"]  # fmt: skip
BATCH_BODY = {
    "input_file_id": "{id}",
    "endpoint": "/v1/chat/completions",
    "completion_window": "24h",
}


def app_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the gateway serves; HEAD is
    Starlette's copy of GET and has no body to check."""
    return [
        (method, route.path)
        for route in ROUTES
        if isinstance(route, Route)
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]


def audience(path: str) -> str | None:
    return next((p for p in AUDIENCES if path == p or path.startswith(p)), None)


def naming(param: str) -> list[tuple[str, str, object]]:
    """The /v1 routes whose path names a `param` object, {id} standing for it."""
    return [
        (method, path.replace(f"{{{param}}}", "{id}"), None)
        for method, path in app_routes()
        if path.startswith("/v1/") and f"{{{param}}}" in path
    ]


# (method, path template, json body template); {id} is the foreign object.
# Each route naming the object in its path, plus where it goes elsewhere.
FILE_ROUTES = [
    *naming("file_id"),
    ("GET", "/v1/files?after={id}", None),
    ("POST", "/v1/batches", BATCH_BODY),
    ("POST", "/v1/batches/estimate", BATCH_BODY),
]
BATCH_ROUTES = [
    *naming("batch_id"),
    ("GET", "/v1/batches?after={id}", None),
    ("GET", "/v1/batches/{id}/results?format=parquet", None),
    ("GET", "/v1/batches/{id}/results?format=csv", None),
]
FILE_KINDS = ["input", "user_data", "output", "error"]
BATCH_KINDS = ["completed", "live"]
GUARDED = [route for route in app_routes() if route not in PUBLIC]


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
    env = Env(Path(tmp_path_factory.mktemp("isolation")), metrics_token=METRICS)
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


def test_the_table_covers_every_route_of_the_app(two: Two) -> None:
    """The app serves ROUTES, and each is public or has an audience: a route
    under a new prefix fails here until AUDIENCES says who may call it."""
    assert [(r.path, r.methods) for r in two.env.app.routes] == [
        (r.path, r.methods) for r in ROUTES
    ]
    assert all(isinstance(r, Route) for r in ROUTES)  # a Mount would hide its routes
    assert [r for r in GUARDED if audience(r[1]) is None] == []


def _state(two: Two) -> tuple[object, ...]:
    """All a refused request could have changed, read from the store."""
    store = two.env.state.store
    keys = store.list_api_keys()
    return (
        keys,
        store.list_providers(),
        store.list_webhook_endpoints(),
        store.all_budgets(),
        store.provider_ceilings(),
        [store.is_paused(o.live_batch_id) for o in (two.a, two.b)],
        [store.list_files(k.id)[0] for k in keys],
        [store.list_batches(k.id, limit=100)[0] for k in keys],
    )


def _concrete(two: Two, path: str) -> str:
    """A path template with real targets: alice's live batch and input file,
    her key, a configured provider."""
    key_id = next(k.id for k in two.env.state.store.list_api_keys() if k.name == "alice")
    values = {
        "batch_id": two.a.live_batch_id,
        "file_id": two.a.input_file_id,
        "key_id": key_id,
        "name": "openai",
        "webhook_id": "wh_none",
        "index": "0",
    }
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], path)


def _refusal_problem(response: httpx.Response, prefix: str, key: str | None) -> str | None:
    """What is wrong with a refusal: not a 401 in the OpenAI envelope saying why."""
    if response.status_code != 401:
        return f"{response.status_code} {response.text[:200]}"
    error = response.json().get("error") or {}
    if set(error) != {"message", "type", "param", "code"}:
        return f"not the error envelope: {response.text[:200]}"
    if prefix == "/v1/":
        want = "missing_api_key" if key is None else "invalid_api_key"
        return None if error["code"] == want else f"code {error['code']}, not {want}"
    return None if error["message"] == REFUSALS[prefix] else f"message {error['message']!r}"


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_every_route_refuses_all_but_its_own_credential(two: Two, method: str, path: str) -> None:
    """No key, an unknown or altered key, and every other kind of credential:
    401 in the error envelope, and nothing in the store changed."""
    prefix = audience(path)
    assert prefix is not None, f"{path}: add who may call it to AUDIENCES"
    own = {"/v1/": two.a.key, "/admin/": ADMIN, "/internal/": TOKEN, "/metrics": METRICS}
    keys = {
        "no key": None,
        "unknown key": "sk-nobody",
        "altered key": own[prefix] + "x",
        "api key": two.a.key,
        "admin key": ADMIN,
        "internal token": TOKEN,
        "metrics token": METRICS,
    }
    wrong = [who for who in CREDENTIALS if who not in AUDIENCES[prefix]]
    assert len(wrong) >= 5
    body = {
        "name": "intruder",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": "sk-stolen",
        "url": "http://127.0.0.1:9/hook",
        "lease_token": "t",
        "max_concurrency": 1,
        **_fill(BATCH_BODY, two.a.input_file_id),  # type: ignore[dict-item]
    }
    target = _concrete(two, path)
    before = _state(two)
    problems = {}
    for who in wrong:
        response = _request(two, keys[who], method, target, body)
        if problem := _refusal_problem(response, prefix, keys[who]):
            problems[who] = problem
    assert problems == {}
    assert _state(two) == before


@pytest.mark.parametrize("key", [ADMIN, METRICS])
def test_metrics_open_to_the_admin_key_and_the_metrics_token(two: Two, key: str) -> None:
    response = _request(two, key, "GET", "/metrics")
    assert response.status_code == 200, response.text
    assert "batchgate_" in response.text
