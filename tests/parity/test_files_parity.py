"""Pytest twins of the Files tests in reference/omniroute_batch_api.test.ts.

Each twin asserts the reference test's behaviour through batchgate's HTTP
routes, on the in-process app (same routes and middleware as the server, and
the metadata store stays readable from the test). Reference helpers that are
internal there (createFile, getFileContent, the raw DB) map to
`state.store` / `state.blobs` here, used only where the reference uses them.
"""

from __future__ import annotations

from typing import Any

import httpx

from harness.live import asgi_client
from storage import ids
from storage.metadata import now
from storage.records import FileRecord

INTERNAL_FIELDS = (
    "status",
    "content",
    "apiKeyId",
    "api_key_id",
    "mimeType",
    "mime_type",
    "blob_name",
)


def new_key(app: Any, name: str = "key") -> str:
    return app.state.gateway.store.create_api_key(name)[1]


def create_file(
    app: Any,
    key: str,
    *,
    filename: str,
    content: bytes,
    purpose: str = "batch",
    expires_at: int | None = None,
    mime_type: str | None = None,
) -> FileRecord:
    """batchgate's counterpart of the reference's internal `createFile`."""
    state = app.state.gateway
    file_id = ids.new_file_id()
    record = FileRecord(
        id=file_id,
        api_key_id=state.store.find_api_key(key).id,
        filename=filename,
        purpose=purpose,
        bytes=len(content),
        created_at=now(),
        expires_at=expires_at,
        deleted_at=None,
        blob_name=file_id,
        mime_type=mime_type,
    )
    state.blobs.write_bytes(record.blob_name, content)
    return state.store.insert_file(record)


async def upload(
    client: httpx.AsyncClient,
    filename: str,
    content: bytes,
    purpose: str = "batch",
    ctype: str = "application/octet-stream",
    **fields: str,
) -> dict[str, Any]:
    response = await client.post(
        "/v1/files", files={"file": (filename, content, ctype)}, data={"purpose": purpose, **fields}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_files_upload_route_stores_multipart_content(inproc_app: Any) -> None:
    """Reference: "Files upload route stores multipart content".

    Same behaviour: a multipart POST to the files route answers 200 with an id
    and the stored bytes are exactly the uploaded ones (read from the blob
    store, as the reference reads getFileContent, and through /content).
    Difference: the upload needs an API key (every /v1 call does)."""
    content = b'{"custom_id":"req-1"}\n'
    async with asgi_client(inproc_app, new_key(inproc_app)) as client:
        response = await client.post(
            "/v1/files",
            data={"purpose": "batch"},
            files={"file": ("upload.jsonl", content, "application/json")},
        )
        assert response.status_code == 200
        file_id = response.json()["id"]
        assert file_id
        assert (await client.get(f"/v1/files/{file_id}/content")).content == content
    assert b"".join(inproc_app.state.gateway.blobs.iter_bytes(file_id)) == content


async def test_files_and_batches_routes_expose_explicit_cors_preflight_handlers(
    inproc_app: Any,
) -> None:
    """Reference: "Files and batches routes expose explicit CORS preflight handlers".

    Same behaviour: OPTIONS on every files and batches route answers 204, with
    Authorization among the allowed headers and no Access-Control-Allow-Origin
    (the allow-list is empty by default). Difference: batchgate answers
    preflights in one CORS middleware for all these paths rather than a handler
    exported per route module, so the twin calls the paths over HTTP."""
    paths = [
        "/v1/batches",
        "/v1/batches/batch_abc",
        "/v1/batches/batch_abc/cancel",
        "/v1/files",
        "/v1/files/file-abc",
        "/v1/files/file-abc/content",
    ]
    async with asgi_client(inproc_app) as client:
        for path in paths:
            response = await client.options(path)
            assert response.status_code == 204, path
            assert response.headers.get("Access-Control-Allow-Origin") is None
            assert (
                "authorization" in response.headers.get("Access-Control-Allow-Headers", "").lower()
            )


async def test_list_files_pagination_and_response_format(inproc_app: Any) -> None:
    """Reference: "List files pagination and response format".

    Same behaviour: five files of one key, purposes batch/fine-tune
    alternating; newest first by default (the reverse of upload order, files
    uploaded in the same second included); purpose filter;
    pages of 2 with `after`; ascending order reverses the list. Difference:
    the files are uploaded and listed through the HTTP routes (the reference
    calls createFile/listFiles directly), so the twin also checks the list
    envelope's has_more/first_id/last_id."""
    async with asgi_client(inproc_app, new_key(inproc_app, "File List Test Key")) as client:
        uploaded = [
            (
                await upload(
                    client,
                    f"file_{i}.jsonl",
                    b"{}",
                    purpose="batch" if i % 2 == 0 else "fine-tune",
                )
            )["id"]
            for i in range(5)
        ]

        async def ids(**params: Any) -> tuple[list[str], dict[str, Any]]:
            body = (await client.get("/v1/files", params=params)).json()
            assert body["object"] == "list"
            return [f["id"] for f in body["data"]], body

        sorted_ids, everything = await ids(order="desc")
        assert len(sorted_ids) == 5 and everything["has_more"] is False
        assert sorted_ids == uploaded[::-1]

        batch = (await client.get("/v1/files", params={"purpose": "batch"})).json()["data"]
        assert len(batch) == 3 and all(f["purpose"] == "batch" for f in batch)

        page1, body1 = await ids(limit=2)
        assert page1 == sorted_ids[:2] and body1["has_more"] is True
        assert body1["last_id"] == sorted_ids[1]
        page2, _ = await ids(limit=2, after=page1[-1])
        assert page2 == sorted_ids[2:4]
        page3, body3 = await ids(limit=2, after=page2[-1])
        assert page3 == sorted_ids[4:] and body3["has_more"] is False

        ascending, _ = await ids(order="asc")
        assert ascending == uploaded


async def test_file_upload_with_expiration_and_spec_compliant_response(inproc_app: Any) -> None:
    """Reference: "File upload with expiration and spec-compliant response".

    Same behaviour: a file stored with a one-hour expiry answers with that
    `expires_at`, `object: "file"`, and no status, content or owner field.
    Difference: the reference computes the expiry itself and calls createFile;
    in batchgate the client asks for it with `expires_after` on the upload
    (OpenAI's parameter), so the twin uploads through HTTP and expects
    created_at + 3600."""
    async with asgi_client(inproc_app, new_key(inproc_app)) as client:
        response = await upload(
            client,
            "test.txt",
            b"test content",
            ctype="text/plain",
            **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
        )
    assert response["id"].startswith("file-")
    assert response["object"] == "file"
    assert response["expires_at"] == response["created_at"] + 3600
    for field in INTERNAL_FIELDS:
        assert field not in response


async def test_retrieve_file_spec_compliance(inproc_app: Any) -> None:
    """Reference: "Retrieve file spec compliance".

    Same behaviour: a stored file (created through the storage helper with
    bytes 123 and no expiry, as the reference's createFile) retrieved through
    GET /v1/files/{id} has every spec field and no internal one. Difference:
    none in the answer; batchgate checks the HTTP answer where the reference
    checks its formatter."""
    key = new_key(inproc_app, "File Retrieve Test Key")
    record = create_file(inproc_app, key, filename="retrieve_test.jsonl", content=b"x" * 123)
    async with asgi_client(inproc_app, key) as client:
        response = (await client.get(f"/v1/files/{record.id}")).json()
    assert response["id"] == record.id
    assert response["bytes"] == 123
    assert isinstance(response["created_at"], int)
    assert response["filename"] == "retrieve_test.jsonl"
    assert response["object"] == "file"
    assert response["purpose"] == "batch"
    assert response["expires_at"] is None
    for field in INTERNAL_FIELDS:
        assert field not in response


async def test_file_deletion(inproc_app: Any) -> None:
    """Reference: "File deletion".

    Same behaviour: a file exists, deleting it succeeds, afterwards it is not
    found, and its DB row stays with `deleted_at` set while the content is
    gone. Difference: batchgate keeps bytes in a blob directory, not a DB
    column, so "content is null" becomes "the blob file no longer exists";
    the twin reads the row straight from the store, as the reference does."""
    state = inproc_app.state.gateway
    async with asgi_client(inproc_app, new_key(inproc_app, "File Delete Test Key")) as client:
        record = await upload(client, "delete_test.jsonl", b"{}")
        before = await client.get(f"/v1/files/{record['id']}")
        assert before.status_code == 200 and before.json()["id"] == record["id"]
        deleted = await client.delete(f"/v1/files/{record['id']}")
        assert deleted.json() == {"id": record["id"], "object": "file", "deleted": True}
        after = await client.get(f"/v1/files/{record['id']}")
        assert after.status_code == 404
    rows = state.store.execute(
        "SELECT blob_name, deleted_at FROM files WHERE id = ?", [record["id"]]
    )
    assert len(rows) == 1
    blob_name, deleted_at = rows[0]
    assert deleted_at is not None
    assert not state.blobs.exists(blob_name)


async def test_retrieve_file_content_spec_compliance(inproc_app: Any) -> None:
    """Reference: "Retrieve file content spec compliance".

    Same behaviour: stored JSONL content comes back byte for byte; the file
    belongs to its creator's key and another key is refused. Difference: the
    reference only computes the ownership flag "as the route would"; the twin
    asks the real route with the other key and gets a 404, and
    checks the `application/jsonl` content type."""
    content = (
        b'{"id":"req_1","custom_id":"request-1","response":{"status_code":200,'
        b'"body":{"choices":[{"message":{"content":"Hello"}}]}}}'
    )
    key = new_key(inproc_app, "File Content Test Key")
    record = create_file(
        inproc_app,
        key,
        filename="content_test.jsonl",
        content=content,
        mime_type="application/jsonl",
    )
    async with asgi_client(inproc_app, key) as client:
        response = await client.get(f"/v1/files/{record.id}/content")
    assert response.content == content
    assert response.headers["content-type"].startswith("application/jsonl")
    assert record.api_key_id == inproc_app.state.gateway.store.find_api_key(key).id

    async with asgi_client(inproc_app, new_key(inproc_app, "Other Key")) as other:
        refused = await other.get(f"/v1/files/{record.id}/content")
    assert refused.status_code == 404
    assert refused.json()["error"]["message"] == f"No such File object: {record.id}"


async def test_file_metadata_helpers_do_not_load_content_blobs(inproc_app: Any) -> None:
    """Reference: "File metadata helpers do not load content blobs".

    Same behaviour: getting and listing a file return metadata without
    content, and the content is still retrievable afterwards. Difference:
    batchgate proves "does not load" directly: the blob is moved away while
    the metadata routes answer, then put back for the content route."""
    content = b"large-content-placeholder"
    blobs = inproc_app.state.gateway.blobs
    async with asgi_client(inproc_app, new_key(inproc_app, "Metadata Key")) as client:
        record = await upload(client, "metadata_only.jsonl", content)
        blob = blobs.path(record["id"])
        hidden = blob.with_name("hidden-elsewhere")
        blob.rename(hidden)
        try:
            got = await client.get(f"/v1/files/{record['id']}")
            listed = (await client.get("/v1/files")).json()["data"]
        finally:
            hidden.rename(blob)
        assert got.status_code == 200 and "content" not in got.json()
        listed_file = next(f for f in listed if f["id"] == record["id"])
        assert "content" not in listed_file
        assert (await client.get(f"/v1/files/{record['id']}/content")).content == content
