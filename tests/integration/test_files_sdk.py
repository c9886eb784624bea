"""The Files API through the official `openai` SDK against a gateway subprocess.

One gateway per module (start-up costs seconds); each test makes its own
keys, so tests do not see each other's files.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import openai
import psutil
import pytest

from harness.live import LiveGateway

FILE_FIELDS = {"id", "object", "bytes", "created_at", "filename", "purpose", "expires_at"}
ENVELOPE_FIELDS = {"message", "type", "param", "code"}
MB = 1 << 20
CORS_PATHS = [
    "/v1/files",
    "/v1/files/file-x",
    "/v1/files/file-x/content",
    "/v1/batches",
    "/v1/batches/batch_x",
    "/v1/batches/batch_x/cancel",
]
LIMITED_MAX_BYTES = 1000


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with LiveGateway(tmp_path_factory.mktemp("files-gw")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def limited_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """A gateway with a tiny upload limit and one allowed CORS origin."""
    env = {
        "BATCHGATE_MAX_FILE_BYTES": str(LIMITED_MAX_BYTES),
        "BATCHGATE_CORS_ORIGINS": '["https://app.example"]',
    }
    with LiveGateway(tmp_path_factory.mktemp("limited-gw"), env=env) as gateway:
        yield gateway


def client_for(gateway: LiveGateway, name: str) -> openai.OpenAI:
    return gateway.openai_client(gateway.create_key(name))


def assert_envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ENVELOPE_FIELDS
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def write_jsonl(path: Path, size: int) -> Path:
    """A JSONL file of about `size` bytes, written in blocks (never whole in memory)."""
    line = b'{"custom_id":"r","method":"POST","url":"/v1/chat/completions","body":{}}\n'
    block = line * (MB // len(line))
    written = 0
    with open(path, "wb") as out:
        while written < size:
            piece = block[: size - written]
            out.write(piece)
            written += len(piece)
    return path


class PeakRss:
    """Samples a process's RSS in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def test_a_50_mb_upload_streams_to_disk_without_growing_the_gateway(
    gw: LiveGateway, tmp_path: Path
) -> None:
    client = client_for(gw, "big")
    client.files.create(file=("warm.jsonl", b"{}\n"), purpose="batch")  # warm code paths
    source = write_jsonl(tmp_path / "big.jsonl", 50 * MB)
    baseline = psutil.Process(gw.pid).memory_info().rss
    with PeakRss(gw.pid) as rss, open(source, "rb") as handle:
        created = client.files.create(file=("big.jsonl", handle), purpose="batch")
    growth = rss.peak - baseline
    assert growth < 30 * MB, f"gateway RSS grew by {growth / MB:.1f} MB during the upload"

    assert created.bytes == 50 * MB
    blob = gw.data_dir / "blobs" / created.id
    assert blob.stat().st_size == 50 * MB
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    with client.files.with_streaming_response.content(created.id) as response:
        assert response.headers["content-type"].startswith("application/jsonl")
        for block in response.iter_bytes():
            digest.update(block)
    assert digest.hexdigest() == expected


def test_list_pages_through_25_files_by_limit_after_order_and_purpose(gw: LiveGateway) -> None:
    client = client_for(gw, "lister")
    created = [
        client.files.create(
            file=(f"f{i}.jsonl", b"{}\n"), purpose="batch" if i % 2 == 0 else "user_data"
        )
        for i in range(25)
    ]
    newest_first = [f.id for f in reversed(created)]  # files of one second too

    seen: list[str] = []
    after: str | None = None
    pages = []
    while True:
        page = client.files.list(limit=10, **({"after": after} if after else {}))
        pages.append(page)
        seen.extend(f.id for f in page.data)
        if not page.has_more:
            break
        after = page.data[-1].id
    assert [len(p.data) for p in pages] == [10, 10, 5]
    assert [p.has_more for p in pages] == [True, True, False]
    assert seen == newest_first
    assert pages[0].first_id == newest_first[0] and pages[-1].last_id == newest_first[-1]

    # The SDK's own auto-pagination follows `after` in ascending order.
    assert [f.id for f in client.files.list(limit=7, order="asc")] == newest_first[::-1]
    batch_files = list(client.files.list(purpose="batch"))
    assert len(batch_files) == 13 and {f.purpose for f in batch_files} == {"batch"}
    assert client.files.list().data[0].id == newest_first[0]  # default order: newest first


def test_list_rejects_bad_query_values_with_param(gw: LiveGateway) -> None:
    key = gw.create_key("bad-list")
    headers = {"Authorization": f"Bearer {key}"}
    for query, param in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=x", "limit"),
        ("order=sideways", "order"),
        ("purpose=nonsense", "purpose"),
    ]:
        error = assert_envelope(httpx.get(f"{gw.url}/v1/files?{query}", headers=headers), 400)
        assert error["param"] == param, query
    error = assert_envelope(httpx.get(f"{gw.url}/v1/files?after=file-nope", headers=headers), 404)
    assert error["param"] == "after"


def test_retrieve_content_and_delete(gw: LiveGateway) -> None:
    client = client_for(gw, "crud")
    content = b'{"custom_id":"a"}\n{"custom_id":"b"}\n'
    created = client.files.create(file=("input.jsonl", content), purpose="batch")
    assert created.filename == "input.jsonl" and created.bytes == len(content)

    retrieved = client.files.retrieve(created.id)
    assert retrieved.model_dump(exclude_none=True) == created.model_dump(exclude_none=True)
    assert client.files.content(created.id).content == content

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    assert created.id not in {f.id for f in client.files.list()}


def test_deleted_and_other_keys_files_are_not_found_on_every_route(gw: LiveGateway) -> None:
    alice, bob = client_for(gw, "alice"), client_for(gw, "bob")
    mine = alice.files.create(file=("mine.jsonl", b"{}\n"), purpose="batch")
    gone = alice.files.create(file=("gone.jsonl", b"{}\n"), purpose="batch")
    alice.files.delete(gone.id)

    cases = [(bob, mine.id), (alice, gone.id), (bob, gone.id)]
    for client, file_id in cases:
        for call in (client.files.retrieve, client.files.content, client.files.delete):
            with pytest.raises(openai.NotFoundError) as caught:
                call(file_id)
            assert caught.value.body["message"] == f"No such File object: {file_id}"
    assert mine.id not in {f.id for f in bob.files.list()}
    assert alice.files.retrieve(mine.id).id == mine.id  # bob's attempts changed nothing


def test_file_objects_carry_only_the_openai_fields(gw: LiveGateway) -> None:
    key = gw.create_key("fields")
    headers = {"Authorization": f"Bearer {key}"}
    created = httpx.post(
        f"{gw.url}/v1/files",
        headers=headers,
        data={"purpose": "user_data"},
        files={"file": ("notes.txt", b"hello", "text/plain")},
    )
    assert created.status_code == 200
    file_id = created.json()["id"]
    retrieved = httpx.get(f"{gw.url}/v1/files/{file_id}", headers=headers).json()
    listed = httpx.get(f"{gw.url}/v1/files", headers=headers).json()["data"]
    for obj in (created.json(), retrieved, *listed):
        assert set(obj) == FILE_FIELDS
        assert obj["object"] == "file" and obj["expires_at"] is None  # user_data never expires


def test_upload_keeps_only_the_base_name_and_sets_expiry(gw: LiveGateway) -> None:
    client = client_for(gw, "names")
    created = client.files.create(file=("../../etc/evil.jsonl", b"{}\n"), purpose="batch")
    assert created.filename == "evil.jsonl"
    assert not (gw.data_dir / "etc").exists()
    assert created.expires_at == created.created_at + 30 * 24 * 3600  # batch default

    dated = client.files.create(
        file=("d.jsonl", b"{}\n"),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert dated.expires_at == dated.created_at + 7200
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(
            file=("d.jsonl", b"{}\n"),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 60},
        )
    assert caught.value.body["param"] == "expires_after.seconds"


def test_bad_or_missing_upload_fields_are_400_with_param(gw: LiveGateway) -> None:
    client = client_for(gw, "bad-upload")
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch_output")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "purpose"

    headers = {"Authorization": f"Bearer {client.api_key}"}
    no_file = httpx.post(f"{gw.url}/v1/files", headers=headers, files={"purpose": (None, "batch")})
    assert assert_envelope(no_file, 400)["param"] == "file"
    no_purpose = httpx.post(
        f"{gw.url}/v1/files", headers=headers, files={"file": ("x.jsonl", b"{}\n")}
    )
    assert assert_envelope(no_purpose, 400)["param"] == "purpose"
    assert client.files.list().data == []


def test_unauthenticated_and_revoked_keys_get_401(gw: LiveGateway) -> None:
    assert_envelope(httpx.get(f"{gw.url}/v1/files"), 401)
    assert_envelope(httpx.get(f"{gw.url}/v1/files", headers={"Authorization": "Bearer no"}), 401)
    created = httpx.post(
        f"{gw.url}/admin/keys", json={"name": "short-lived"}, headers=gw.admin_headers()
    ).json()
    client = gw.openai_client(created["key"])
    client.files.list()
    revoked = httpx.delete(f"{gw.url}/admin/keys/{created['id']}", headers=gw.admin_headers())
    assert revoked.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client.files.list()
    with pytest.raises(openai.AuthenticationError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")


def test_errors_come_in_the_envelope(gw: LiveGateway) -> None:
    headers = {"Authorization": f"Bearer {gw.create_key('envelope')}"}
    assert_envelope(httpx.get(f"{gw.url}/v1/files/file-missing", headers=headers), 404)
    assert_envelope(httpx.get(f"{gw.url}/v1/nowhere", headers=headers), 404)
    assert_envelope(httpx.put(f"{gw.url}/v1/files", headers=headers), 405)
    assert_envelope(httpx.post(f"{gw.url}/v1/files/file-x", headers=headers), 405)
    empty = httpx.post(
        f"{gw.url}/v1/files",
        headers=headers,
        data={"purpose": "vision"},
        files={"file": ("x", b"")},
    )
    assert empty.status_code == 200 and empty.json()["bytes"] == 0  # empty is still a file
    not_multipart = httpx.post(f"{gw.url}/v1/files", headers=headers, json={"purpose": "x"})
    assert assert_envelope(not_multipart, 400)["param"] == "file"


def test_cors_preflight_on_every_files_and_batches_route(gw: LiveGateway) -> None:
    for path in CORS_PATHS:
        response = httpx.options(
            f"{gw.url}{path}",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert response.status_code == 204, path
        assert "authorization" in response.headers["access-control-allow-headers"].lower()
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "access-control-allow-origin" not in response.headers  # empty allow-list


def test_cors_allow_listed_origin_is_echoed(limited_gw: LiveGateway) -> None:
    for path in CORS_PATHS:
        allowed = httpx.options(
            f"{limited_gw.url}{path}", headers={"Origin": "https://app.example"}
        )
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(f"{limited_gw.url}{path}", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_upload_over_the_limit_is_413_and_leaves_nothing(limited_gw: LiveGateway) -> None:
    client = client_for(limited_gw, "limited")
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert caught.value.status_code == 413
    assert caught.value.body["param"] == "file"

    # Without Content-Length the limit is enforced while streaming.
    boundary = "bgtestboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="big.jsonl"\r\n\r\n'
    ).encode()

    def chunked_body() -> Iterator[bytes]:
        yield head
        for _ in range(8):
            yield b"y" * 500
        yield f"\r\n--{boundary}--\r\n".encode()

    streamed = httpx.post(
        f"{limited_gw.url}/v1/files",
        content=chunked_body(),
        headers={
            "Authorization": f"Bearer {client.api_key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    assert "content-length" not in streamed.request.headers
    assert assert_envelope(streamed, 413)["param"] == "file"

    exact = client.files.create(file=("ok.jsonl", b"z" * LIMITED_MAX_BYTES), purpose="batch")
    assert exact.bytes == LIMITED_MAX_BYTES
    assert [f.id for f in client.files.list()] == [exact.id]
    assert sorted(p.name for p in (limited_gw.data_dir / "blobs").iterdir()) == [exact.id]


def test_delete_is_soft_in_duckdb_and_removes_the_blob(gateway_dir: Path) -> None:
    with LiveGateway(gateway_dir / "data") as gateway:
        client = client_for(gateway, "soft")
        kept = client.files.create(file=("kept.jsonl", b"{}\n"), purpose="batch")
        doomed = client.files.create(file=("doomed.jsonl", b"{}\n"), purpose="batch")
        client.files.delete(doomed.id)
        blobs = gateway.data_dir / "blobs"
        assert not (blobs / doomed.id).exists()  # removed at once, not at the next sweep
        assert (blobs / kept.id).exists()
    # DuckDB admits one process at a time: read the file once the gateway is gone.
    with duckdb.connect(str(gateway_dir / "data" / "batchgate.duckdb"), read_only=True) as db:
        rows = dict(db.execute("SELECT id, deleted_at FROM files").fetchall())
    assert rows[doomed.id] is not None
    assert rows[kept.id] is None
