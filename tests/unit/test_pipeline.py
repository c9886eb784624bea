"""The batch pipeline (validate -> execute -> finalize) against the in-process
worker API, a real DuckDB file, and the mock provider over real HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from gateway.errors import APIError
from gateway.table_builds import ensure_built
from harness.pipeline import CHAT, Harness, chat
from storage.metadata import now
from tasks.ledger import LeaseLost
from tasks.retention import sweep


async def test_chat_batch_completes_with_every_line_once_and_usage(h: Harness) -> None:
    batch_id = h.add_batch([chat(i) for i in range(35)])
    batch = await h.run(batch_id)
    assert batch.status == "completed"
    assert (batch.total, batch.completed, batch.failed) == (35, 35, 0)
    out = h.lines(batch.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(35))
    assert batch.error_file_id is None
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    assert all(x["id"].startswith("batch_req_") for x in out)
    expected_in = sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in out)
    expected_out = sum(x["response"]["body"]["usage"]["completion_tokens"] for x in out)
    assert batch.usage is not None
    assert batch.usage["input_tokens"] == expected_in > 0
    assert batch.usage["output_tokens"] == expected_out > 0
    assert batch.usage["total_tokens"] == expected_in + expected_out
    assert batch.model == "gpt-4o-mini"
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert h.stats()["duplicates_ok"] == []


async def test_bad_lines_fail_the_batch_naming_each_line(h: Harness) -> None:
    lines: list[Any] = [chat(i) for i in range(20)]
    bad = {
        3: b"{not json",
        7: {"method": "POST", "url": CHAT, "body": {}},
        11: chat(0),
        15: {**chat(14), "url": "/v1/embeddings"},
        19: b"[1, 2]",
    }
    for number, value in bad.items():
        lines[number - 1] = value
    batch = await h.run(h.add_batch(lines))
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors is not None
    assert [e["line"] for e in batch.errors] == [3, 7, 11, 15, 19]
    mismatch = next(e for e in batch.errors if e["line"] == 15)
    assert "does not match batch endpoint" in mismatch["message"]
    assert h.stats()["total"] == 0


async def test_stream_true_gets_a_json_body(h: Harness) -> None:
    batch = await h.run(h.add_batch([chat(1, stream=True)]))
    assert batch.status == "completed"
    (line,) = h.lines(batch.output_file_id)
    assert line["response"]["body"]["choices"][0]["message"]["content"]
    assert h.stats()["streamed"] == 0


async def test_unknown_provider_fails_only_that_line(h: Harness) -> None:
    lines = [chat(1), chat(2, model="non-existent-provider/model"), chat(3)]
    batch = await h.run(h.add_batch(lines))
    assert (batch.status, batch.completed, batch.failed) == ("completed", 2, 1)
    (err,) = h.lines(batch.error_file_id)
    assert err["custom_id"] == "req-2"
    assert err["response"]["status_code"] >= 400 and err["response"]["body"]["error"]


async def test_no_successes_means_no_output_file(h: Harness) -> None:
    batch = await h.run(h.add_batch([chat(1, model="nope/x")]))
    assert batch.status == "completed" and batch.output_file_id is None
    assert batch.error_file_id is not None


async def test_embeddings_route_to_embeddings_upstream(h: Harness) -> None:
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "mistral/mistral-embed", "input": f"text {i}"},
        }
        for i in range(12)
    ]
    batch = await h.run(h.add_batch(lines, endpoint="/v1/embeddings"))
    assert (batch.status, batch.completed) == ("completed", 12)
    out = h.lines(batch.output_file_id)
    assert all(x["response"]["body"]["object"] == "list" for x in out)
    assert h.stats()["routes"].get("/v1/embeddings") == 12
    assert batch.usage and batch.usage["input_tokens"] > 0


async def test_cancel_mid_run_keeps_partial_results(h: Harness) -> None:
    httpx.post(f"{h.mock_url}/config", json={"latency_ms": 50})
    h.settings.chunk_parallelism = 1
    batch_id = h.add_batch([chat(i) for i in range(200)])

    live: dict[str, Any] = {}

    async def cancel_soon() -> None:
        while (b := h.store.get_batch(batch_id)) and b.completed < 10:
            await asyncio.sleep(0.02)
        h.store.transition_batch(
            batch_id, ["in_progress"], status="cancelling", cancelling_at=now()
        )
        live["cursor"], live["read"] = h.read_live(batch_id)  # read while `cancelling`

    canceller = asyncio.create_task(cancel_soon())
    batch = await h.run(batch_id)
    await canceller
    assert batch.status == "cancelled" and batch.cancelled_at
    out, err = h.lines(batch.output_file_id), h.lines(batch.error_file_id)
    assert 10 <= len(out) < 200
    # live results: what was read while cancelling plus what followed its
    # cursor once cancelled are the final files' lines, each once
    _, rest = h.read_live(batch_id, live["cursor"])
    assert len(live["read"]) >= 10 and sorted(live["read"] + rest) == sorted(h.final_lines(batch))
    assert sorted(x["custom_id"] for x in out + err) == sorted(f"req-{i}" for i in range(200))
    assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
    assert (batch.completed, batch.failed) == (len(out), len(err))


async def test_expiry_stops_the_run(h: Harness) -> None:
    httpx.post(f"{h.mock_url}/config", json={"latency_ms": 100})
    h.settings.chunk_parallelism = 1
    batch_id = h.add_batch([chat(i) for i in range(300)], expires_at=now() + 2)
    batch = await h.run(batch_id)
    assert batch.status == "expired" and batch.expired_at
    out, err = h.lines(batch.output_file_id), h.lines(batch.error_file_id)
    assert len(out) > 0 and len(err) > 0
    assert {x["error"]["code"] for x in err} == {"batch_expired"}
    assert len({x["custom_id"] for x in out + err}) == 300
    # live results of an expired batch: every final line, each once
    assert sorted(h.read_live(batch_id)[1]) == sorted(h.final_lines(batch))


async def test_resume_skips_finished_chunks(h: Harness) -> None:
    batch_id = h.add_batch([chat(i) for i in range(30)])
    claim = h.api.claim(batch_id, None)
    from flows.process_batch import validate_input

    validate_input(h.api, batch_id, claim["lease_token"], CHAT, 10, 1000)
    # chunk 0 finished before the "crash"; its lines must not be sent again
    first = h.ledger.chunk_input(batch_id, 0)
    done_ids = [orjson.loads(x)["custom_id"] for x in first.splitlines() if x.strip()]
    fake = b"".join(
        orjson.dumps(
            {
                "id": "batch_req_x",
                "custom_id": c,
                "response": {"status_code": 200, "request_id": None, "body": {}},
                "error": None,
            }
        )
        + b"\n"
        for c in done_ids
    )
    h.api.record_chunk(
        batch_id,
        claim["lease_token"],
        0,
        output=fake,
        errors=b"",
        completed=len(done_ids),
        failed=0,
        usage=None,
        model=None,
    )
    h.store.update_batch(batch_id, lease_expires_at=time.time() - 1)  # the run died
    batch = await h.run(batch_id)
    assert (batch.status, batch.completed) == ("completed", 30)
    sent = h.stats()["custom_ids"]
    assert not set(done_ids) & set(sent)
    assert len(sent) == 20
    assert len({x["custom_id"] for x in h.lines(batch.output_file_id)}) == 30


async def test_interrupted_finalize_without_plan_fails_clearly(h: Harness) -> None:
    batch_id = h.add_batch([chat(1)])
    h.store.update_batch(batch_id, status="finalizing", finalizing_at=now())
    batch = await h.run(batch_id)
    assert batch.status == "failed"
    assert batch.errors and "interrupted during finalization" in batch.errors[0]["message"]


async def test_a_failed_finalize_keeps_the_finished_lines_readable_until_retention(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finalize failing (a full disk) ends the batch `finalization_failed`,
    but the lines already run are not thrown away: they stay readable
    through the results route until the batch's retention passes."""
    batch_id = h.add_batch([chat(i) for i in range(25)])

    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h.ledger, "_write_results", disk_full)
    batch = await h.run(batch_id)
    assert batch.status == "failed" and batch.output_file_id is None
    assert batch.errors and batch.errors[0]["code"] == "finalization_failed"
    assert f"/v1/batches/{batch_id}/results" in batch.errors[0]["message"]
    _, lines = h.read_live(batch_id)
    assert sorted(orjson.loads(x)["custom_id"] for x in lines) == sorted(
        f"req-{i}" for i in range(25)
    )
    h.ledger.finalize(batch_id, "any-token", "completed")  # a late retry keeps them too
    sweep(h.store, h.blobs)
    assert len(h.read_live(batch_id)[1]) == 25
    with pytest.raises(APIError) as no_table:  # no table of nothing: it points to the lines
        await ensure_built(h.blobs, batch)
    assert no_table.value.status == 404 and no_table.value.code == "results_unavailable"
    assert f"/v1/batches/{batch_id}/results" in no_table.value.message
    sweep(h.store, h.blobs, at=now() + 31 * 24 * 3600)  # past the kept-parts window
    assert h.read_live(batch_id)[1] == []


async def test_interrupted_finalize_is_run_again(h: Harness) -> None:
    batch_id = h.add_batch([chat(i) for i in range(15)])
    first = await h.run(batch_id)
    assert first.status == "completed"
    # a second finalize of an ended batch changes nothing
    claim = h.ledger.claim(batch_id, None)
    assert claim["lease_token"] is None and claim["status"] == "completed"


async def test_a_heartbeat_after_finalize_is_not_a_lost_lease(h: Harness) -> None:
    """Finalize clears the lease as it ends the batch; a heartbeat racing it
    hears "completed" (stop), not "another run holds the lease"."""
    batch_id = h.add_batch([chat(1)])
    h.ledger.claim(batch_id, None)
    with pytest.raises(LeaseLost):  # a live batch: only its lease holder may renew
        h.ledger.renew(batch_id, "another-runs-token")
    h.ledger.release(batch_id, h.ledger.batch(batch_id).lease_token or "")
    assert (await h.run(batch_id)).status == "completed"
    assert h.ledger.batch(batch_id).lease_token is None
    assert h.ledger.renew(batch_id, "the-finished-runs-token")["status"] == "completed"


async def test_status_set_elsewhere_is_left_alone(h: Harness) -> None:
    httpx.post(f"{h.mock_url}/config", json={"latency_ms": 30})
    batch_id = h.add_batch([chat(i) for i in range(40)])

    async def end_elsewhere() -> None:
        while (b := h.store.get_batch(batch_id)) and b.status != "in_progress":
            await asyncio.sleep(0.01)
        h.store.update_batch(batch_id, status="cancelled", cancelled_at=now())

    task = asyncio.create_task(end_elsewhere())
    batch = await h.run(batch_id)
    await task
    assert batch.status == "cancelled"
    assert batch.output_file_id is None and batch.error_file_id is None


async def test_retention_deletes_expired_outputs_keeps_input(h: Harness) -> None:
    batch_id = h.add_batch(
        [chat(i) for i in range(3)],
        output_expires_after_seconds=3600,
        output_expires_after_anchor="created_at",
    )
    batch = await h.run(batch_id)
    assert batch.output_file_id
    h.store.update_batch(batch_id, created_at=now() - 3700)
    result = sweep(h.store, h.blobs)
    assert batch.output_file_id in result["file_ids"]
    assert h.store.get_file(batch.output_file_id) is None
    assert not h.blobs.exists(batch.output_file_id)
    assert h.store.get_file(batch.input_file_id) is not None
