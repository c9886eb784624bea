"""Results as data end to end: live results followed by cursor
while the batch runs, the results table read by three readers, the
summary, retry of the failures, and usage over time. One stack (real
Prefect server, gateway, runner and `batchgate mock-upstream`) for all."""

from __future__ import annotations

import collections
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import openai
import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest

from flows.process_batch import artifact_key
from harness.batches import numbered_chat_line as chat_line
from harness.batches import run_batch, upload
from harness.openapi_schemas import schema_errors
from harness.stack import PrefectServer, Stack
from harness.stack import prefect_artifacts as _artifacts
from tasks.ledger import derived_blob_name
from tasks.results_table import TABLE_SCHEMA
from tasks.summary_report import summary_headline, summary_rows

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("results"))
    with Stack(
        root,
        prefect_server,
        chunk_size=250,
        chunk_parallelism=4,
        lease_seconds=6,
        reconcile_interval_seconds=1,
        max_attempts=1,
        retention_interval_seconds=3600,
        flow_run_nice=7,
    ) as running:
        # Enough in flight that 5,000 lines at 200 ms take seconds, not minutes.
        running.add_provider("openai", f"{running.mock_url}/v1", "sk-mock-openai", 500, True)
        yield running


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.create_key("results")


@pytest.fixture(scope="module")
def client(stack: Stack, key: str) -> openai.OpenAI:
    return stack.client(key)


def lines_of(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line]


def raw(stack: Stack, key: str, method: str, path: str, **params: Any) -> httpx.Response:
    """A call whose error answer the test reads (the SDK raises on those)."""
    return httpx.request(
        method,
        f"{stack.url}/v1{path}",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def results_page(client: openai.OpenAI, batch_id: str, **params: Any) -> httpx.Response:
    """What the README shows: the SDK's raw `get`, an httpx.Response back."""
    return client.get(
        f"/batches/{batch_id}/results", cast_to=httpx.Response, options={"params": params}
    )


@pytest.fixture(scope="module")
def live_read(
    stack: Stack, key: str, client: openai.OpenAI, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A 5,000-line batch at 200 ms, read live by cursor until it says complete."""
    stack.reset_mock()
    stack.mock_config(latency_ms=200)
    tmp = Path(tmp_path_factory.mktemp("live"))
    requests = [
        chat_line(i, model="no-such-provider/m" if i % 50 == 7 else "gpt-4o-mini")
        for i in range(5000)
    ]
    batch = client.batches.create(
        input_file_id=upload(client, tmp, requests),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    early = [
        raw(stack, key, "GET", f"/batches/{batch.id}/summary"),
        raw(stack, key, "GET", f"/batches/{batch.id}/results", format="parquet"),
        raw(stack, key, "POST", f"/batches/{batch.id}/retry"),
    ]
    read: list[bytes] = []
    before_end = 0
    cursor = ""  # as the README's loop starts
    deadline = time.monotonic() + 300
    while True:
        response = results_page(client, batch.id, after=cursor)
        assert response.status_code == 200, response.text
        page = lines_of(response.content)
        complete = response.headers["batchgate-results-complete"] == "true"
        if not complete:
            before_end += len(page)
        read += page
        cursor = response.headers["batchgate-next-cursor"]
        if complete:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    stack.reset_mock()
    final = client.batches.retrieve(batch.id)
    return {"batch": final, "read": read, "before_end": before_end, "early": early}


def test_live_results_equal_the_final_files_line_for_line(
    client: openai.OpenAI, live_read: dict[str, Any]
) -> None:
    batch = live_read["batch"]
    assert batch.status == "completed"
    assert batch.request_counts.completed == 4900 and batch.request_counts.failed == 100
    assert live_read["before_end"] > 0, "nothing was readable before the batch ended"
    output = lines_of(client.files.content(batch.output_file_id).content)
    errors = lines_of(client.files.content(batch.error_file_id).content)
    read = live_read["read"]
    assert len(read) == len(set(read)) == 5000  # no line twice
    # OpenAI's line format: the per-line latency and attempts live elsewhere
    parsed = [orjson.loads(line) for line in output + errors]
    assert {tuple(sorted(x)) for x in parsed} == {("custom_id", "error", "id", "response")}
    assert {tuple(sorted(x["response"])) for x in parsed} == {("body", "request_id", "status_code")}
    assert collections.Counter(read) == collections.Counter(output + errors)
    # kind filters, and a cursor past the end gives nothing new
    only_errors = lines_of(results_page(client, batch.id, kind="error").content)
    assert collections.Counter(only_errors) == collections.Counter(errors)
    last = results_page(client, batch.id)
    tail = results_page(client, batch.id, after=last.headers["batchgate-next-cursor"])
    assert tail.content == b"" and tail.headers["batchgate-results-complete"] == "true"


def test_results_table_reads_in_polars_pyarrow_and_duckdb(
    stack: Stack, key: str, live_read: dict[str, Any], tmp_path: Path
) -> None:
    batch = live_read["batch"]
    url = f"{stack.url}/v1/batches/{batch.id}/results"
    auth = {"Authorization": f"Bearer {key}"}
    data = httpx.get(url, params={"format": "parquet"}, headers=auth, timeout=60).content
    path = tmp_path / "results.parquet"
    path.write_bytes(data)

    table = pl.read_parquet(path)
    assert table.schema == pl.Schema(TABLE_SCHEMA)
    assert table["line"].to_list() == list(range(1, 5001))
    assert table["custom_id"].to_list() == [f"req-{i}" for i in range(5000)]
    ok = table.filter(pl.col("ok"))
    assert ok.height == 4900
    assert ok["text"].null_count() == 0 and ok["finish_reason"].to_list()[0] == "stop"
    assert (ok["input_tokens"] > 0).all() and (ok["attempts"] == 1).all()
    assert ok["latency_ms"].min() >= 150  # the provider took 200 ms per request
    failed = table.filter(~pl.col("ok"))
    assert set(failed["error_code"]) == {"unknown_provider"}
    assert set(failed["status_code"]) == {404}

    arrow = pq.read_table(path)
    assert arrow.num_rows == 5000 and arrow.column_names == list(TABLE_SCHEMA)
    counted = (
        duckdb.connect()
        .execute(
            f"SELECT count(*) FILTER (WHERE ok), sum(output_tokens) FROM read_parquet('{path}')"
        )
        .fetchone()
    )
    assert counted == (4900, ok["output_tokens"].sum())

    csv = httpx.get(url, params={"format": "csv"}, headers=auth, timeout=60)
    assert csv.headers["content-type"].startswith("text/csv")
    assert pl.read_csv(io.BytesIO(csv.content)).height == 5000

    # built once and stored: asking again serves the same blob, not a rebuilt one
    stored = stack.root / "data" / "blobs" / derived_blob_name(batch.id, "parquet")
    before = stored.stat()
    again = httpx.get(url, params={"format": "parquet"}, headers=auth, timeout=60).content
    after = stored.stat()
    assert again == data
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_summary_per_model_and_provider(
    stack: Stack, client: openai.OpenAI, live_read: dict[str, Any]
) -> None:
    for early in live_read["early"]:  # summary, table and retry of a running batch
        assert early.status_code == 409, early.text
        assert early.json()["error"]["code"] == "batch_not_finished"
    batch = live_read["batch"]
    summary = client.get(f"/batches/{batch.id}/summary", cast_to=httpx.Response).json()
    assert not schema_errors("BatchSummary", summary)
    assert summary["object"] == "batch.summary" and summary["status"] == "completed"
    assert (summary["lines"], summary["succeeded"], summary["failed"]) == (5000, 4900, 100)
    by_model = {m["model"]: m for m in summary["by_model"]}
    assert by_model["gpt-4o-mini"]["succeeded"] == 4900
    assert by_model["gpt-4o-mini"]["latency_ms_p50"] >= 150
    assert by_model["no-such-provider/m"]["top_errors"] == [
        {"code": "unknown_provider", "count": 100}
    ]
    assert {p["provider"] for p in summary["by_provider"]} == {"openai", None}
    assert summary["errors"] == [{"code": "unknown_provider", "count": 100}]
    assert summary["requests_per_second"] > 0
    # the same numbers on the flow run: a table and a markdown report
    deadline = time.monotonic() + 60
    while not (report := _artifacts(stack, artifact_key(batch.id, "report"))):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert "| unknown_provider | 100 |" in report[0]["data"]
    assert f"/v1/batches/{batch.id}/results?format=parquet" in report[0]["data"]
    analytics = _artifacts(stack, artifact_key(batch.id, "analytics"))[0]
    rows = analytics["data"]
    rows = orjson.loads(rows) if isinstance(rows, str) else rows
    assert rows == summary_rows(summary)  # the artifact holds what the API answers
    assert analytics["description"].endswith(summary_headline(summary))  # rate, wall time
    # the progress artifact counts lines, with the rate and an ETA
    progress = _artifacts(stack, artifact_key(batch.id, "progress"))[0]
    assert re.search(r" 5000 / 5000 lines, [0-9.]+ requests/s, ETA \d+ s", progress["description"])


def test_bad_requests_get_error_envelopes(
    stack: Stack, key: str, live_read: dict[str, Any]
) -> None:
    batch_id = live_read["batch"].id
    other = stack.create_key("someone-else")
    cases = [
        (key, f"/batches/{batch_id}/results", {"format": "xls"}, 400),
        (key, f"/batches/{batch_id}/results", {"after": "abc"}, 400),
        (key, f"/batches/{batch_id}/results", {"kind": "both"}, 400),
        (key, "/batches/batch_nope/results", {}, 404),
        (other, f"/batches/{batch_id}/results", {}, 404),
        (other, f"/batches/{batch_id}/summary", {}, 404),
    ]
    for who, path, params, status in cases:
        response = raw(stack, who, "GET", path, **params)
        assert response.status_code == status, (path, params, response.text)
        assert set(response.json()["error"]) >= {"message", "type", "code"}
    stolen = raw(stack, other, "POST", f"/batches/{batch_id}/retry")
    assert stolen.status_code == 404, stolen.text
    none_failed = raw(stack, key, "POST", f"/batches/{batch_id}/retry", codes="429")
    assert none_failed.status_code == 409
    assert none_failed.json()["error"]["code"] == "no_failed_lines"
    # a retry's batch is an ordinary batch: the SDK retrieves and cancels it
    child = raw(stack, key, "POST", f"/batches/{batch_id}/retry", codes="unknown_provider")
    assert child.status_code == 200, child.text
    sdk = stack.client(key)
    assert sdk.batches.retrieve(child.json()["id"]).metadata == {
        "batchgate_parent_batch_id": batch_id
    }
    assert sdk.batches.cancel(child.json()["id"]).status in ("cancelling", "cancelled")


def test_retry_only_the_failures(stack: Stack, client: openai.OpenAI, tmp_path: Path) -> None:
    stack.reset_mock()
    stack.mock_config(failure_rate=0.1)
    parent = run_batch(client, upload(client, tmp_path, [chat_line(i) for i in range(1000)]))
    stack.reset_mock()
    assert parent.status == "completed" and 50 < parent.request_counts.failed < 160
    response = client.post(
        f"/batches/{parent.id}/retry",
        cast_to=httpx.Response,
        options={"params": {"codes": "500"}},
    )
    assert response.status_code == 200, response.text
    child = response.json()
    assert child["metadata"]["batchgate_parent_batch_id"] == parent.id
    # exactly the failed lines' requests, as uploaded, in input order
    failed = {
        orjson.loads(x)["custom_id"]
        for x in lines_of(client.files.content(parent.error_file_id).content)
    }
    parent_input = lines_of(client.files.content(parent.input_file_id).content)
    child_input = lines_of(client.files.content(child["input_file_id"]).content)
    assert len(failed) == parent.request_counts.failed
    assert child_input == [x for x in parent_input if orjson.loads(x)["custom_id"] in failed]
    deadline = time.monotonic() + 180
    while (done := client.batches.retrieve(child["id"])).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert done.status == "completed" and done.request_counts.failed == 0
    seen: collections.Counter[str] = collections.Counter()
    for batch in (parent, done):
        for line in lines_of(client.files.content(batch.output_file_id).content):
            parsed = orjson.loads(line)
            assert parsed["response"]["status_code"] == 200
            seen[parsed["custom_id"]] += 1
    assert seen == collections.Counter(f"req-{i}" for i in range(1000))


def test_admin_usage_by_key_and_model(stack: Stack, tmp_path: Path) -> None:
    stack.reset_mock()
    keys = {name: stack.create_key(name) for name in ("usage-a", "usage-b")}
    batches = [
        ("usage-a", "gpt-4o-mini", 6),
        ("usage-a", "mistral/mistral-small", 4),
        ("usage-b", "gpt-4o", 3),
    ]
    started = []
    for name, model, count in batches:  # all three at once, then wait for each
        sdk = stack.client(keys[name])
        file_id = upload(sdk, tmp_path, [chat_line(i, model) for i in range(count)])
        batch = sdk.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        started.append((sdk, batch.id))
    deadline = time.monotonic() + 180
    for sdk, batch_id in started:
        while sdk.batches.retrieve(batch_id).status != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    ids = {k["name"]: k["id"] for k in stack.admin("GET", "/admin/keys").json()["data"]}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    report = stack.admin("GET", f"/admin/usage?group_by=key,model,day&since={today}").json()
    assert not schema_errors("UsageReport", report)
    rows = {
        (r["key"], r["model"]): r
        for r in report["data"]
        if r["key"] in (ids["usage-a"], ids["usage-b"])
    }
    assert set(rows) == {
        (ids["usage-a"], "gpt-4o-mini"),
        (ids["usage-a"], "mistral/mistral-small"),
        (ids["usage-b"], "gpt-4o"),
    }
    for name, model, count in batches:
        row = rows[(ids[name], model)]
        assert (row["lines"], row["succeeded"], row["failed"]) == (count, count, 0)
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
        assert row["day"] == today
    by_provider = stack.admin("GET", "/admin/usage?group_by=provider").json()["data"]
    assert {"openai", "mistral"} <= {r["provider"] for r in by_provider}
    later = stack.admin("GET", "/admin/usage?group_by=key&since=2999-01-01").json()
    assert later["data"] == []
    bad = httpx.get(
        f"{stack.url}/admin/usage?group_by=colour", headers=stack.admin_headers(), timeout=30
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    bad_since = httpx.get(
        f"{stack.url}/admin/usage?since=last-week", headers=stack.admin_headers(), timeout=30
    )
    assert bad_since.status_code == 400 and bad_since.json()["error"]["param"] == "since"
    forbidden = httpx.get(
        f"{stack.url}/admin/usage", headers={"Authorization": f"Bearer {keys['usage-a']}"}
    )
    assert forbidden.status_code == 401
