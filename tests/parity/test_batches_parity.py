"""Pytest twins of the Batch tests in reference/omniroute_batch_api.test.ts.

The gateway runs in this process under uvicorn (real HTTP, real DuckDB), so a
twin can use the metadata store exactly where the reference calls an
internal helper (updateBatch, getTerminalBatches, createFile for output
artifacts). Batches run through the same `drive_batch` the Prefect flow runs,
talking to the gateway's internal API over HTTP, in a runner thread started
by `InlineFlowRuns`; the provider is `batchgate mock-upstream`'s app. The
Prefect-hosted path is covered by tests/integration/test_batches_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.loops.reconciler import reconcile_once
from harness.inline_gateway import TERMINAL, TOKEN, Env
from harness.lines import chat_line
from storage import ids
from storage.metadata import now
from storage.records import FileRecord


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    running = Env(Path(tmp_path_factory.mktemp("parity")))
    yield running
    running.close()


def first_line(data: bytes) -> dict[str, Any]:
    return orjson.loads(data.splitlines()[0])


def test_batch_api_and_processing(env: Env) -> None:
    """Reference: "Batch API and Processing". Same flow through HTTP; the
    provider is the mock, so the batch must complete (no tolerated failures)."""
    key = env.create_key("Test Key")
    file_id = env.upload(
        key,
        [chat_line("request-1", "Hello world"), chat_line("request-2", "Goodbye world")],
        "test_batch.jsonl",
    )
    assert file_id.startswith("file-")
    batch = env.create_batch(key, file_id)
    assert batch["id"].startswith("batch_")
    assert batch["status"] == "validating"
    done = env.wait(key, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["total"] == 2
    assert done["request_counts"]["completed"] == 2
    assert done["output_file_id"]
    assert env.call(key, "GET", f"/v1/files/{file_id}").status_code == 200
    assert env.call(key, "GET", f"/v1/files/{done['output_file_id']}").status_code == 200
    lines = [x for x in env.content(key, done["output_file_id"]).splitlines() if x.strip()]
    assert len(lines) == 2
    result = orjson.loads(lines[0])
    assert result["custom_id"] and result["response"]
    assert isinstance(done["usage"]["total_tokens"], int)
    assert done["model"]


def test_batch_handles_and_counts_failures_correctly(env: Env) -> None:
    """Reference: "Batch handles and counts failures correctly". An unknown
    provider fails its line only; the batch itself completes (the reference
    accepts completed or failed)."""
    key = env.create_key("fail")
    batch = env.create_batch(
        key,
        env.upload(
            key, [chat_line("fail-request", "Fail me", model="non-existent-provider/model")]
        ),
    )
    done = env.wait(key, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    assert done["error_file_id"]
    assert not done["output_file_id"]
    result = first_line(env.content(key, done["error_file_id"]))
    assert result["response"]["status_code"] >= 400
    assert result["response"]["body"]["error"]


def test_batch_dispatches_non_chat_endpoints_through_the_matching_route_handler(env: Env) -> None:
    """Reference: "Batch dispatches non-chat endpoints through the matching route
    handler". The embeddings line goes to the provider's /embeddings route."""
    key = env.create_key("embed")
    batch = env.create_batch(
        key,
        env.upload(
            key,
            [
                {
                    "custom_id": "embed-request",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "openai/text-embedding-3-small", "input": "Hello embeddings"},
                }
            ],
        ),
        endpoint="/v1/embeddings",
    )
    done = env.wait(key, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["completed"] == 1
    assert done["output_file_id"]
    result = first_line(env.content(key, done["output_file_id"]))
    assert result["response"]["status_code"] == 200
    assert isinstance(result["response"]["body"]["data"], list)
    assert result["response"]["body"]["object"] == "list"


def test_batch_rejects_input_lines_whose_url_does_not_match_the_batch_endpoint(env: Env) -> None:
    """Reference: "Batch rejects input lines whose url does not match the batch
    endpoint". Errors come as the OpenAI list `errors.data`."""
    key = env.create_key("mismatch")
    batch = env.create_batch(
        key,
        env.upload(
            key,
            [
                {
                    "custom_id": "wrong-endpoint",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "openai/text-embedding-3-small", "input": "Wrong endpoint"},
                }
            ],
        ),
    )
    done = env.wait(key, batch["id"])
    assert done["status"] == "failed"
    assert "does not match batch endpoint" in done["errors"]["data"][0]["message"].lower()


def test_batch_forces_stream_false_for_all_requests(env: Env) -> None:
    """Reference: "Batch forces stream: false for all requests"."""
    key = env.create_key("stream")
    batch = env.create_batch(
        key, env.upload(key, [chat_line("stream-request", "Hello", stream=True)])
    )
    done = env.wait(key, batch["id"])
    assert done["status"] == "completed"
    result = first_line(env.content(key, done["output_file_id"] or done["error_file_id"]))
    assert result["response"]["status_code"] != 200 or result["response"]["body"]["choices"]
    error = result["response"]["body"].get("error")
    assert not error or "Unexpected token" not in error["message"]


def test_batch_api_response_format_is_spec_compliant(env: Env) -> None:
    """Reference: "Batch API response format is spec-compliant". The update the
    reference makes with updateBatch is made on the store; the object is read
    back through GET /v1/batches/{id}."""
    key = env.create_key("Spec Test Key")
    with env.held():
        batch = env.create_batch(key, env.upload(key, b"{}"), metadata={"test": "meta"})
    usage = {
        "input_tokens": 100,
        "output_tokens": 50,
        "total_tokens": 150,
        "input_tokens_details": {"cached_tokens": 10},
        "output_tokens_details": {"reasoning_tokens": 5},
    }
    env.state.store.update_batch(
        batch["id"],
        status="completed",
        total=10,
        completed=8,
        failed=2,
        model="gpt-4o-mini",
        usage=usage,
    )
    response = env.get_batch(key, batch["id"])
    assert response["id"] == batch["id"]
    assert response["object"] == "batch"
    assert response["endpoint"] == "/v1/chat/completions"
    assert response["completion_window"] == "24h"
    assert response["status"] == "completed"
    assert response["request_counts"] == {"total": 10, "completed": 8, "failed": 2}
    assert response["usage"]["total_tokens"] == 150
    assert response["usage"]["input_tokens_details"]["cached_tokens"] == 10
    assert response["usage"]["output_tokens_details"]["reasoning_tokens"] == 5
    assert response["model"] == "gpt-4o-mini"
    assert response["metadata"] == {"test": "meta"}
    for field in (
        "errors",
        "output_file_id",
        "error_file_id",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    ):
        assert field in response


def test_list_batches_pagination_and_response_format(env: Env) -> None:
    """Reference: "List batches pagination and response format", through
    GET /v1/batches?limit=&after= (the reference calls listBatches directly)."""
    key = env.create_key("List Test Key")
    file_id = env.upload(key, b"{}")
    base = now() - 10_000
    order = []
    with env.held():
        for i in range(5):
            b = env.create_batch(key, file_id, metadata={"index": str(i)})
            env.state.store.update_batch(b["id"], created_at=base + i)
            order.append((base + i, b["id"]))
    expected = [bid for _, bid in sorted(order, reverse=True)]
    everything = env.call(key, "GET", "/v1/batches?limit=10").json()
    assert [b["id"] for b in everything["data"]] == expected
    page1 = env.call(key, "GET", "/v1/batches?limit=2").json()
    assert [b["id"] for b in page1["data"]] == expected[:2] and page1["has_more"] is True
    page2 = env.call(key, "GET", f"/v1/batches?limit=2&after={page1['last_id']}").json()
    assert [b["id"] for b in page2["data"]] == expected[2:4] and page2["has_more"] is True
    page3 = env.call(key, "GET", f"/v1/batches?limit=2&after={page2['last_id']}").json()
    assert [b["id"] for b in page3["data"]] == expected[4:] and page3["has_more"] is False
    assert page1["object"] == "list" and page1["first_id"] == expected[0]


def _system_file(env: Env, key_id: str, name: str) -> str:
    """An output artifact as the reference's createFile(purpose batch_output) makes it."""
    file_id = ids.new_file_id()
    env.state.blobs.write_bytes(file_id, b"{}")
    env.state.store.insert_file(
        FileRecord(
            id=file_id,
            api_key_id=key_id,
            filename=name,
            purpose="batch_output",
            bytes=2,
            created_at=now(),
            expires_at=None,
            deleted_at=None,
            blob_name=file_id,
        )
    )
    return file_id


def test_batch_cleanup_honors_output_expires_after_for_output_artifacts(env: Env) -> None:
    """Reference: "Batch cleanup honors output_expires_after for output artifacts".
    The cleanup pass is the retention sweep the `retention` flow triggers
    (POST /internal/retention); anchor is the batch's created_at."""
    key = env.create_key("Batch Retention Key")
    key_id = env.state.store.find_api_key(key).id
    input_id = env.upload(key, b"{}", "retention_input.jsonl")
    output_id = _system_file(env, key_id, "retention_output.jsonl")
    error_id = _system_file(env, key_id, "retention_error.jsonl")
    with env.held():
        batch = env.create_batch(
            key, input_id, output_expires_after={"anchor": "created_at", "seconds": 3600}
        )
    env.state.store.update_batch(
        batch["id"],
        status="completed",
        created_at=now() - 3700,
        completed_at=now() - 30,
        output_file_id=output_id,
        error_file_id=error_id,
    )
    swept = httpx.post(
        f"{env.url}/internal/retention", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert swept.status_code == 200
    assert env.call(key, "GET", f"/v1/files/{input_id}").status_code == 200
    assert env.call(key, "GET", f"/v1/files/{output_id}").status_code == 404
    assert env.call(key, "GET", f"/v1/files/{error_id}").status_code == 404


def test_batch_processor_fails_orphaned_finalizing_batches_during_startup_recovery(
    env: Env,
) -> None:
    """Reference: "Batch processor fails orphaned finalizing batches during startup
    recovery". batchgate first re-runs the interrupted finalize; this
    batch never recorded a plan, so finalize cannot complete and the batch
    ends failed with "interrupted during finalization"."""
    key = env.create_key("Finalizing Recovery Key")
    with env.held():
        batch = env.create_batch(key, env.upload(key, b"{}", "finalizing.jsonl"))
    env.state.store.update_batch(batch["id"], status="finalizing", finalizing_at=now())
    assert asyncio.run(reconcile_once(env.state)) >= 1
    recovered = env.wait(key, batch["id"])
    assert recovered["status"] == "failed"
    assert "interrupted during finalization" in recovered["errors"]["data"][0]["message"]


def test_batch_cancel_api(env: Env) -> None:
    """Reference: "Batch Cancel API". Cancel goes through POST .../cancel; the
    terminal case is 409 with x-should-retry: false (the reference's comment
    says 400; batchgate answers as OpenAI does)."""
    key = env.create_key("Cancel Test Key")
    with env.held():
        batch = env.create_batch(key, env.upload(key, b"{}", "cancel_mock.jsonl"))
    assert batch["status"] == "validating"
    before = now()
    cancelling = env.call(key, "POST", f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelling["status"] == "cancelling"
    assert before <= cancelling["cancelling_at"] <= now()
    env.state.store.update_batch(batch["id"], status="completed")
    assert env.get_batch(key, batch["id"])["status"] == "completed"
    refused = env.call(key, "POST", f"/v1/batches/{batch['id']}/cancel")
    assert refused.status_code == 409
    assert refused.headers["x-should-retry"] == "false"
    assert refused.json()["error"]["message"]


def test_batch_processor_keeps_cancelled_status_for_in_flight_batches(env: Env) -> None:
    """Reference: "Batch processor keeps cancelled status for in-flight batches".
    The upstream sets the batch cancelled from outside mid-request; the run
    leaves it exactly as set and writes no files."""
    key = env.create_key("In Flight Cancel Key")
    with env.held():
        batch = env.create_batch(
            key,
            env.upload(
                key, [chat_line("cancel-mid-flight", "cancel me", model="cancelable/gpt-4o-mini")]
            ),
        )
    env.cancel_target[:] = [batch["id"]]
    try:
        env.state.store.update_batch(batch["id"], lease_expires_at=None)
        asyncio.run(reconcile_once(env.state))
        done = env.wait(key, batch["id"])
    finally:
        env.cancel_target.clear()
    for thread in env.runs.threads:
        thread.join(timeout=30)
    final = env.get_batch(key, batch["id"])
    assert final["status"] == done["status"] == "cancelled"
    assert not final["output_file_id"]
    assert not final["error_file_id"]


def test_batch_dispatches_to_embeddings_handler_for_v1_embeddings_url(env: Env) -> None:
    """Reference: "Batch dispatches to embeddings handler for /v1/embeddings URL"."""
    key = env.create_key("mistral")
    batch = env.create_batch(
        key,
        env.upload(
            key,
            [
                {
                    "custom_id": "embed-request-1",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "mistral/mistral-embed", "input": "The food was delicious."},
                }
            ],
        ),
        endpoint="/v1/embeddings",
    )
    done = env.wait(key, batch["id"])
    assert done["status"] in {"completed", "failed"}
    assert done["request_counts"]["total"] == 1
    file_id = done["output_file_id"] or done["error_file_id"]
    assert file_id
    result = first_line(env.content(key, file_id))
    message = ((result.get("response") or {}).get("body") or {}).get("error", {}).get("message", "")
    assert "messages" not in message and "Missing model" not in message
    assert result["response"]["body"]["object"] == "list"


def test_get_terminal_batches_returns_only_terminal_statuses_ordered_oldest_first(env: Env) -> None:
    """Reference: "getTerminalBatches returns only terminal statuses ordered
    oldest first" - `store.terminal_batches()`, the retention sweep's list."""
    key = env.create_key("Terminal Batches Test Key")
    file_id = env.upload(key, b"{}", "terminal_mock.jsonl")
    ended = {
        "completed": "completed_at",
        "failed": "failed_at",
        "cancelled": "cancelled_at",
        "expired": "expired_at",
    }
    ids_by_status = {}
    with env.held():
        for status, stamp in ended.items():
            b = env.create_batch(key, file_id)
            env.state.store.update_batch(b["id"], status=status, **{stamp: now()})
            ids_by_status[status] = b["id"]
        pending = env.create_batch(key, file_id)
    terminal = env.state.store.terminal_batches()
    assert all(b.status in TERMINAL for b in terminal)
    assert set(ids_by_status.values()) <= {b.id for b in terminal}
    assert pending["id"] not in {b.id for b in terminal}
    created = [b.created_at for b in terminal]
    assert created == sorted(created)
