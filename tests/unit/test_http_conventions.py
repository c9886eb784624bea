"""HTTP conventions on the in-process app: error envelope, request ids, CORS,
/health and the OpenAPI document (checked against real responses)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from starlette.routing import Route

from gateway.app import ROUTES
from gateway.json_body import MAX_JSON_BODY_BYTES
from gateway.models.objects import batch_object
from gateway.routes.openapi import UndocumentedRoute, document
from harness.live import FakeFlowRuns, asgi_client, inprocess_app
from harness.openapi_schemas import DOCUMENT, schema_errors
from storage.metadata import now
from storage.records import BatchRecord, FileRecord

ENVELOPE = {"message", "type", "param", "code"}


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id")
    assert set(response.json()["error"]) == ENVELOPE
    assert not schema_errors("Error", response.json())
    return response.json()["error"]


def new_key(app: Any) -> str:
    return app.state.gateway.store.create_api_key("test")[1]


async def test_every_error_status_uses_the_envelope(tmp_path: Path) -> None:
    app = inprocess_app(tmp_path / "d", max_file_bytes=100)

    async def explode(request: Any) -> None:
        raise RuntimeError("boom")

    app.router.routes.append(Route("/v1/explode", explode))
    key = new_key(app)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gw", headers={"Authorization": f"Bearer {key}"}
    ) as client:
        assert_envelope(await client.get("/v1/files", headers={"Authorization": ""}), 401)
        assert_envelope(await client.get("/v1/files/file-none"), 404)
        assert_envelope(await client.get("/v1/not-a-route"), 404)
        assert_envelope(await client.patch("/v1/files"), 405)
        too_big = await client.post(
            "/v1/files", files={"file": ("a.jsonl", b"x" * 70_000)}, data={"purpose": "batch"}
        )
        assert assert_envelope(too_big, 413)["param"] == "file"
        assert (
            assert_envelope(
                await client.post(
                    "/v1/files", files={"file": ("a", b"x")}, data={"purpose": "nope"}
                ),
                400,
            )["param"]
            == "purpose"
        )
        crashed = await client.get("/v1/explode")
        assert assert_envelope(crashed, 500)["code"] == "internal_error"
        assert "boom" not in crashed.text
    app.state.gateway.store.close()


async def test_a_json_body_over_the_limit_is_refused_before_it_is_read_whole(
    tmp_path: Path,
) -> None:
    """Batch create, estimate and the admin routes take at most
    MAX_JSON_BODY_BYTES of JSON: a larger body is a 413 in the envelope,
    whether its Content-Length says so or it just keeps coming (chunked)."""
    app = inprocess_app(tmp_path / "d")
    key = new_key(app)
    big = b'{"metadata": {"k": "' + b"x" * MAX_JSON_BODY_BYTES + b'"}}'

    async def chunked() -> Any:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        user = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        admin = {"Authorization": f"Bearer {app.state.gateway.admin_key}"}
        for path, headers in [
            ("/v1/batches", user),
            ("/v1/batches/estimate", user),
            ("/admin/keys", admin),
        ]:
            assert_envelope(await client.post(path, content=big, headers=headers), 413)
            assert_envelope(await client.post(path, content=chunked(), headers=headers), 413)
    store = app.state.gateway.store
    assert store.list_batches(store.find_api_key(key).id)[0] == []
    store.close()


async def test_malformed_internal_posts_are_400_naming_the_field(tmp_path: Path) -> None:
    """A worker post of another version (or a broken one) gets a 400 that
    names the field, before the ledger reads it: never a server error."""
    app = inprocess_app(tmp_path / "d", internal_token="internal-test-token")
    base = "/internal/batches/batch_x"
    chunk = {"index": 0, "start_offset": 0, "end_offset": 9, "first_line": 0}
    cases = [
        ("plan", {}, "total"),
        ("plan", {"total": "3", "chunks": [], "errors": []}, "total"),
        ("plan", {"total": 3, "chunks": {}, "errors": []}, "chunks"),
        ("plan", {"total": 3, "chunks": [chunk], "errors": []}, "chunks[].line_count"),
        ("plan", {"total": 3, "chunks": [], "errors": None}, "errors"),
        ("chunks/0", {}, "output"),
        ("chunks/0", {"output": "", "errors": "", "completed": 1}, "failed"),
        ("chunks/0", {"output": "", "errors": "", "completed": 1, "failed": True}, "failed"),
        (
            "chunks/0",
            {"output": "", "errors": "", "completed": 1, "failed": 0, "usage": []},
            "usage",
        ),
        ("finalize", {"outcome": "done"}, "outcome"),
    ]
    cases += [
        ("plan", {"total": 3, "chunks": [], "errors": []}, "lease_token"),
        ("chunks/0", {"output": "", "errors": "", "completed": 1, "failed": 0, "x": 1}, "x"),
    ]
    async with asgi_client(app, "internal-test-token") as client:
        for path, body, param in cases:
            signed = body if param == "lease_token" else {"lease_token": "t", **body}
            response = await client.post(f"{base}/{path}", json=signed)
            assert assert_envelope(response, 400)["param"] == param, (path, body)
    app.state.gateway.store.close()


async def test_an_admin_write_waiting_for_the_write_lock_holds_no_other_request(
    tmp_path: Path,
) -> None:
    """A chunk checkpoint's commit holds DuckDB's write lock; an admin write
    waits for it in the thread pool, and the gateway answers meanwhile."""
    app = inprocess_app(tmp_path / "d")
    store = app.state.gateway.store
    held, release = threading.Event(), threading.Event()

    def commit_in_progress() -> None:
        with store.transaction(writes=[]):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=commit_in_progress)
    thread.start()
    held.wait(5)
    try:
        async with asgi_client(app, "admin-test-key") as client:
            write = asyncio.create_task(client.post("/admin/keys", json={"name": "k"}))
            await asyncio.sleep(0.2)
            other = await asyncio.wait_for(client.get("/openapi.json"), 5)
            assert other.status_code == 200 and not write.done()
            release.set()
            assert (await write).status_code == 201
    finally:
        release.set()
        thread.join()
        store.close()


async def test_request_id_is_echoed_or_made(inproc_app: Any) -> None:
    async with asgi_client(inproc_app) as client:
        echoed = await client.get("/openapi.json", headers={"x-request-id": "abc-123"})
        made = await client.get("/openapi.json")
    assert echoed.headers["x-request-id"] == "abc-123"
    assert made.headers["x-request-id"].startswith("req_")


async def test_expired_file_is_not_found_on_every_route(inproc_app: Any) -> None:
    state = inproc_app.state.gateway
    key = new_key(inproc_app)
    key_id = state.store.find_api_key(key).id
    t = now()
    state.blobs.write_bytes("file-old", b"{}\n")
    state.store.insert_file(
        FileRecord(
            id="file-old",
            api_key_id=key_id,
            filename="old.jsonl",
            purpose="batch",
            bytes=3,
            created_at=t - 100,
            expires_at=t - 1,
            deleted_at=None,
            blob_name="file-old",
        )
    )
    async with asgi_client(inproc_app, key) as client:
        for method, path in [
            ("GET", "/v1/files/file-old"),
            ("GET", "/v1/files/file-old/content"),
            ("DELETE", "/v1/files/file-old"),
        ]:
            error = assert_envelope(await client.request(method, path), 404)
            assert error["message"] == "No such File object: file-old"
        assert (await client.get("/v1/files")).json()["data"] == []


@pytest.mark.parametrize("origins", [[], ["https://app.example"]])
async def test_cors_preflight_answers_only_listed_origins(
    tmp_path: Path, origins: list[str]
) -> None:
    app = inprocess_app(tmp_path / "d", cors_origins=origins)
    async with asgi_client(app) as client:
        for path in ["/v1/files", "/v1/files/f/content", "/v1/batches/b/cancel"]:
            response = await client.options(path, headers={"Origin": "https://app.example"})
            assert response.status_code == 204
            assert "Authorization" in response.headers["access-control-allow-headers"]
            assert response.headers.get("access-control-allow-origin") == (
                "https://app.example" if origins else None
            )
        # A real (non-preflight) answer carries the origin header too, errors included.
        unauthorized = await client.get("/v1/files", headers={"Origin": "https://app.example"})
        assert unauthorized.status_code == 401
        assert unauthorized.headers.get("access-control-allow-origin") == (
            "https://app.example" if origins else None
        )
    app.state.gateway.store.close()


async def test_health_follows_flow_run_readiness(tmp_path: Path) -> None:
    flow_runs = FakeFlowRuns(ready=False)
    app = inprocess_app(tmp_path / "d", flow_runs=flow_runs)
    async with asgi_client(app) as client:
        starting = await client.get("/health")
        flow_runs.is_ready = True
        ready = await client.get("/health")
    app.state.gateway.store.close()
    assert (starting.status_code, starting.json()["status"]) == (503, "starting")
    assert (ready.status_code, ready.json()["status"]) == (200, "ok")
    assert starting.headers["x-request-id"] and ready.headers["x-request-id"]
    assert not schema_errors("Health", ready.json())


async def test_health_is_503_when_the_probe_itself_fails(tmp_path: Path) -> None:
    class Broken(FakeFlowRuns):
        async def ready(self) -> bool:
            raise ConnectionError("prefect is down")

    app = inprocess_app(tmp_path / "d", flow_runs=Broken())
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 503
    app.state.gateway.store.close()


def test_openapi_document_is_well_formed() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    for name, schema in DOCUMENT["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        for prop in schema.get("required", []):
            assert prop in schema["properties"], (name, prop)
    paths = DOCUMENT["paths"]
    for path, ops in paths.items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            if path.startswith("/v1/"):
                assert "401" in op["responses"], (path, method)
            elif path.startswith("/admin/"):  # the admin key, never an API key
                assert op["security"] == [{"adminAuth": []}], (path, method)
                assert "401" in op["responses"], (path, method)
            elif path == "/metrics":  # the admin key or the read-only metrics token
                assert op["security"] == [{"adminAuth": []}, {"metricsToken": []}]
                assert "401" in op["responses"], (path, method)
            else:
                assert op["security"] == []


def test_batch_schema_matches_the_batch_object() -> None:
    record = BatchRecord(
        id="batch_1",
        api_key_id="k",
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        completion_window="24h",
        status="failed",
        created_at=1,
        errors=[{"code": "invalid_json_line", "message": "m", "param": None, "line": 2}],
        metadata={"a": "b"},
        usage={
            "input_tokens": 1,
            "output_tokens": 2,
            "total_tokens": 3,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    )
    obj = batch_object(record)
    assert not schema_errors("Batch", obj)
    assert set(DOCUMENT["components"]["schemas"]["Batch"]["required"]) == set(obj)
    fresh = batch_object(
        BatchRecord(
            id="batch_2",
            api_key_id="k",
            endpoint="/v1/embeddings",
            input_file_id="file-1",
            completion_window="24h",
            status="validating",
            created_at=1,
        )
    )
    assert not schema_errors("Batch", fresh)


async def test_file_responses_match_the_document(inproc_app: Any) -> None:
    key = new_key(inproc_app)
    async with asgi_client(inproc_app, key) as client:
        created = (
            await client.post(
                "/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"}
            )
        ).json()
        listed = (await client.get("/v1/files?limit=1")).json()
        retrieved = (await client.get(f"/v1/files/{created['id']}")).json()
        deleted = (await client.delete(f"/v1/files/{created['id']}")).json()
        empty = (await client.get("/v1/files")).json()
    assert not schema_errors("File", created)
    assert not schema_errors("File", retrieved)
    assert not schema_errors("FileList", listed)
    assert not schema_errors("FileList", empty) and empty["first_id"] is None
    assert not schema_errors("FileDeleted", deleted)
    assert schema_errors("File", {**created, "status": "processed", "bytes": "3"})


def test_a_route_without_its_operation_cannot_make_a_document() -> None:
    """The document is built from the app's routes: a route added without an
    operation fails the document (and so every test that reads it)."""

    async def extra(request: Any) -> None:
        return None

    with pytest.raises(UndocumentedRoute, match="GET /v1/extra"):
        document([*ROUTES, Route("/v1/extra", extra, methods=["GET"])])


def test_every_public_and_admin_route_is_in_the_openapi_document(tmp_path: Path) -> None:
    """The document is the one list of what the gateway serves: a route
    added without its operation would be invisible to clients and to the
    conformance fuzzing. Only the workers' internal API and the document
    itself stay out."""
    app = inprocess_app(tmp_path / "d")
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        and not route.path.startswith("/internal")
        and route.path != "/openapi.json"
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (path, method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served - documented == set()
    assert documented - served == set()
    app.state.gateway.store.close()
