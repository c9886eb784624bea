"""Results as data, the pure parts and the ledger's side: the
cursor and its crossing of finalize, the per-line meta, the table schema,
the summary's aggregation, retry's line selection, the progress line."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from flows.process_batch import Steps, drive_batch, finalize_batch
from gateway.errors import APIError
from gateway.routes.results import parse_time
from harness.live import asgi_client, inprocess_app
from harness.pipeline import Harness
from harness.servers import ThreadedServer
from storage.metadata import now
from storage.records import BatchRecord, FileRecord, KeyBudget
from tasks import live_results
from tasks.drive import _progress_of
from tasks.ledger import derived_blob_name, derived_file_id
from tasks.results_table import TABLE_SCHEMA, build_table, csv_frame, summarize
from tasks.retention import sweep
from tasks.retry_failed import failed_custom_ids, line_codes, parse_codes, select_lines
from tasks.summary_report import LineProgress, summary_headline, summary_markdown, summary_rows
from tasks.upstream import UpstreamClient


def chat(i: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "custom_id": f"r-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"q {i}"}]},
    }


@pytest.fixture
def harness(tmp_path: Path, mock: ThreadedServer) -> Iterator[Harness]:  # noqa: F811
    yield Harness(tmp_path, mock.url, chunk_size=4, chunk_parallelism=3)


def test_cursor_follows_chunks_across_finalize(harness: Harness) -> None:
    """A page read before finalize and streamed after it (the parts gone),
    plus what follows its cursor, is every final line exactly once."""
    h = harness
    lines = [chat(i, "no-such/m" if i % 5 == 0 else "gpt-4o-mini") for i in range(22)]
    batch_id = h.add_batch(lines)
    held: dict[str, Any] = {}

    def finalize(api: Any, bid: str, token: str, outcome: str) -> dict[str, Any]:
        held["page"] = live_results.results_page(h.store, bid, 0, live_results.KINDS)
        held["parts"] = sorted(n for n in h.blobs.names() if ".c0" in n)
        return finalize_batch(api, bid, token, outcome)

    async def run() -> None:
        async with UpstreamClient.from_settings(h.settings) as client:
            await drive_batch(
                h.api, client, batch_id, settings=h.settings, steps=Steps(finalize=finalize)
            )

    asyncio.run(run())
    batch = h.store.get_batch(batch_id)
    assert batch is not None and batch.status == "completed"
    page = held["page"]
    assert len(page.rows) == 6 and held["parts"]  # every chunk readable from its parts
    assert not any(".c0" in n for n in h.blobs.names())  # parts are gone now
    streamed = b"".join(live_results.page_blocks(h.store, h.blobs, batch_id, page))
    cursor, rest = h.read_live(batch_id, page.cursor)
    assert rest == [] and cursor == page.cursor
    final = h.blobs.path(derived_file_id(batch_id, "output")).read_bytes()
    final += h.blobs.path(derived_file_id(batch_id, "error")).read_bytes()
    got = [ln for ln in streamed.split(b"\n") if ln]
    assert len(got) == 22 and collections.Counter(got) == collections.Counter(
        ln for ln in final.split(b"\n") if ln
    )
    # the stamps are in the order chunks finished, one per chunk
    seqs = [r[0] for r in page.rows]
    assert seqs == sorted(seqs) and sorted(r[1] for r in page.rows) == list(range(6))

    # the per-line meta kept for the table, in input order
    meta = h.blobs.path(derived_blob_name(batch_id, "meta")).read_bytes().splitlines()
    parsed = [orjson.loads(m) for m in meta]
    assert [m["custom_id"] for m in parsed] == [f"r-{i}" for i in range(22)]
    sent = [m for m in parsed if m["provider"] == "openai"]
    assert len(sent) == 17 and all(m["attempts"] == 1 and m["latency_ms"] > 0 for m in sent)

    # the usage per model, recorded with the checkpoints
    usage = {r["model"]: r for r in h.store.usage_report(["model", "provider"])}
    assert usage["gpt-4o-mini"]["lines"] == 17 and usage["gpt-4o-mini"]["provider"] == "openai"
    assert usage["no-such/m"]["failed"] == 5 and usage["no-such/m"]["input_tokens"] == 0

    # and the table built from those files: the one schema, input order
    parquet = h.blobs.root / "t.parquet"
    rows = build_table(
        h.blobs.path(derived_blob_name(batch_id, "meta")),
        h.blobs.path(derived_file_id(batch_id, "output")),
        h.blobs.path(derived_file_id(batch_id, "error")),
        parquet,
    )
    table = pl.read_parquet(parquet)
    assert rows == 22 and table.schema == pl.Schema(TABLE_SCHEMA)
    assert table["custom_id"].to_list() == [f"r-{i}" for i in range(22)]
    assert table.filter(pl.col("ok"))["text"].null_count() == 0
    assert set(table.filter(~pl.col("ok"))["error_code"]) == {"unknown_provider"}


def test_cursor_parsing() -> None:
    assert live_results.parse_cursor(None) == 0
    assert live_results.parse_cursor("17") == 17
    for bad in ("-1", "x", "1.5", "٣", "9" * 19):
        with pytest.raises(live_results.BadCursor):
            live_results.parse_cursor(bad)
    assert live_results.parse_kinds("error") == ("error",)
    with pytest.raises(ValueError):
        live_results.parse_kinds("all")


def test_table_of_nothing_has_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    assert build_table(None, tmp_path / "missing", None, path, csv=tmp_path / "e.csv") == 0
    assert pl.read_parquet(path).schema == pl.Schema(TABLE_SCHEMA)
    assert (tmp_path / "e.csv").read_text().startswith("line,custom_id,model")


def test_csv_holds_embeddings_as_json_text() -> None:
    frame = pl.DataFrame(
        {"embedding": [[0.5, 1.0], None]}, schema={"embedding": pl.List(pl.Float64())}
    )
    assert csv_frame(frame)["embedding"].to_list() == ["[0.5,1.0]", None]


def test_summary_aggregates_per_model_and_provider() -> None:
    table = pl.DataFrame(
        {
            "model": ["a", "a", "a", "b"],
            "provider": ["p", "p", "q", None],
            "ok": [True, True, False, False],
            "input_tokens": [1, 2, None, None],
            "output_tokens": [3, 4, None, None],
            "cached_tokens": [0, 1, None, None],
            "reasoning_tokens": [0, 0, None, None],
            "latency_ms": [10.0, 30.0, 20.0, None],
            "attempts": [1, 3, 2, 0],
            "error_code": [None, None, "500", "unknown_provider"],
        }
    )
    summary = summarize(table)
    assert (summary["lines"], summary["succeeded"], summary["failed"]) == (4, 2, 2)
    assert summary["retries"] == 3 and summary["ran"] == 3
    a = next(m for m in summary["by_model"] if m["model"] == "a")
    assert (a["input_tokens"], a["output_tokens"], a["cached_tokens"]) == (3, 7, 1)
    assert (a["latency_ms_p50"], a["latency_ms_max"]) == (20.0, 30.0)
    assert a["top_errors"] == [{"code": "500", "count": 1}]
    providers = {p["provider"]: p for p in summary["by_provider"]}
    assert providers["p"]["succeeded"] == 2 and providers[None]["failed"] == 1
    assert summary["errors"] == [
        {"code": "500", "count": 1},
        {"code": "unknown_provider", "count": 1},
    ]
    rows = summary_rows(summary)
    assert [r["group"] for r in rows].count("model") == 2
    # no lone "-" in a cell: the Prefect UI renders it as a list bullet
    providers = {r["name"]: r for r in rows if r["group"] == "provider"}
    assert set(providers) == {"p", "q", "(not sent)"}
    assert providers["(not sent)"]["top_errors"] == "unknown_provider: 1"
    assert next(r for r in rows if r["name"] == "p")["top_errors"] == "none"
    figures = {"batch_id": "batch_x", "status": "completed", "wall_time_seconds": 2}
    report = summary_markdown({**summary, **figures, "requests_per_second": 1.5})
    assert summary_headline({**summary, **figures, "requests_per_second": 1.5}) == (
        "batch_x completed: 4 lines (2 ok, 2 failed) in 2 s, 1.5 requests/s"
    )
    # compact rows and the errors by model, so the report fits the Prefect UI's page
    assert "| a | 3 (2 / 1) | 3 / 7 | 1 / 0 | 20 / 29 / 30 | 3 |" in report
    assert "| (not sent) | 1 (0 / 1) | 0 / 0 | 0 / 0 | - | 0 |" in report
    assert "| 500 | 1 | a: 1 |" in report and "| unknown_provider | 1 | b: 1 |" in report
    assert "/v1/batches/batch_x/results?format=parquet" in report


def test_retry_selects_failed_lines_by_code() -> None:
    errors = [
        {"custom_id": "a", "response": {"status_code": 500, "body": {"error": {"code": None}}}},
        {"custom_id": "b", "response": {"status_code": 429, "body": {"error": {"code": "rl"}}}},
        {"custom_id": "c", "response": None, "error": {"code": "batch_expired"}},
    ]
    blocks = [b"".join(orjson.dumps(e) + b"\n" for e in errors)]
    assert line_codes(errors[1]) == {"rl", "429"}
    assert failed_custom_ids(blocks, None) == {"a", "b", "c"}
    assert failed_custom_ids(blocks, parse_codes("500, batch_expired")) == {"a", "c"}
    assert failed_custom_ids(blocks, parse_codes("rl")) == {"b"}
    assert parse_codes(" , ") is None
    source = b"".join(orjson.dumps({"custom_id": c, "body": {}}) + b"\n" for c in "abcd")
    picked = list(select_lines([source[:7], source[7:]], {"b", "d"}))
    assert [orjson.loads(p)["custom_id"] for p in picked] == ["b", "d"]


def test_progress_line() -> None:
    progress = LineProgress(total=1000, done=100, at_start=100, started=0.0)
    assert progress.describe(now=10.0) == "100 / 1000 lines"
    progress.done = 500
    assert progress.describe(now=10.0) == "500 / 1000 lines, 40.0 requests/s, ETA 12 s"


def test_progress_rate_counts_from_the_start_of_execution() -> None:
    """The line counts are made when the flow run starts; the rate and ETA
    count from when its chunks start, after claim and validation."""

    made = time.monotonic() - 30  # the flow run began 30 s ago

    async def begin() -> LineProgress:
        steps = Steps(lines=LineProgress(started=made))
        chunks = [{"line_count": 10, "done": True}, {"line_count": 30, "done": False}]
        progress, lines = _progress_of(steps, chunks)
        await progress.close()
        assert lines is not None
        return lines

    lines = asyncio.run(begin())
    assert (lines.total, lines.done, lines.at_start) == (40, 10, 10)
    assert lines.started >= made + 30
    lines.done = 25
    described = lines.describe(now=lines.started + 5.0)
    assert described == "25 / 40 lines, 3.0 requests/s, ETA 5 s"


def test_retention_drops_derived_results_with_the_result_files(harness: Harness) -> None:
    h = harness
    batch = asyncio.run(h.run(h.add_batch([chat(i) for i in range(3)])))
    meta = derived_blob_name(batch.id, "meta")
    h.blobs.write_bytes(derived_blob_name(batch.id, "parquet"), b"table")
    sweep(h.store, h.blobs)
    assert h.blobs.exists(meta)  # the output file is live: kept
    h.blobs.delete(batch.output_file_id)  # gone without a delete (an older version's)
    h.store.mark_file_deleted(batch.output_file_id)
    sweep(h.store, h.blobs)
    assert not h.blobs.exists(meta)
    assert not h.blobs.exists(derived_blob_name(batch.id, "parquet"))


def test_table_reads_a_provider_value_of_another_type_as_null(tmp_path: Path) -> None:
    """A base64 embedding where floats are expected fails the fast decode;
    the file is read again and only that value is null."""

    def line(custom_id: str, embedding: Any, tokens: int) -> dict[str, Any]:
        body = {"data": [{"embedding": embedding}], "usage": {"prompt_tokens": tokens}}
        return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}}

    lines = [line("a", [0.5], 2), line("b", "AAAA", 3)]
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    meta = tmp_path / "meta.jsonl"
    meta.write_bytes(b'{"custom_id": "a"}\n{"custom_id": "b"}\n')
    build_table(meta, out, None, tmp_path / "t.parquet")
    table = pl.read_parquet(tmp_path / "t.parquet")
    assert table["embedding"].to_list() == [[0.5], None]
    assert table["input_tokens"].to_list() == [2, 3] and table["ok"].all()


def test_live_results_of_a_batch_failed_after_it_ran(
    tmp_path: Path,
    mock: ThreadedServer,  # noqa: F811
) -> None:
    """`failed` after execution started (a budget stopped it): the lines
    that ran and the lines it never sent, each once (cancelled and expired
    are in tests/unit/test_pipeline.py)."""
    h = Harness(tmp_path, mock.url, chunk_size=10, chunk_parallelism=2)
    h.store.set_budget(KeyBudget(h.key.id, max_tokens=60))
    batch = asyncio.run(h.run(h.add_batch([chat(i) for i in range(50)])))
    assert batch.status == "failed" and batch.completed > 0 and batch.failed > 0
    assert sorted(h.read_live(batch.id)[1]) == sorted(h.final_lines(batch))
    # its table: every input line in order, the unsent ones with 0 attempts
    parquet = tmp_path / "t.parquet"
    build_table(
        h.blobs.path(derived_blob_name(batch.id, "meta")),
        h.blobs.path(derived_file_id(batch.id, "output")),
        h.blobs.path(derived_file_id(batch.id, "error")),
        parquet,
    )
    table = pl.read_parquet(parquet)
    assert table["custom_id"].to_list() == [f"r-{i}" for i in range(50)]
    unsent = table.filter(~pl.col("ok"))
    assert unsent.height == batch.failed and set(unsent["error_code"]) == {"budget_exceeded"}
    assert set(unsent["attempts"]) == {0} and unsent["provider"].null_count() == batch.failed
    assert summarize(table)["ran"] == batch.completed


def test_table_columns_for_every_endpoint(tmp_path: Path) -> None:
    """Text from chat, completions and responses bodies, the embedding from
    embeddings, usage under either naming, error codes from batchgate or
    the provider, in input (meta) order: one typed schema for all."""

    def ok(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}}

    chat_usage = {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 1},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    choice = {"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    responses_body = {
        "status": "completed",
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "ab"}] * 2},
        ],
        "usage": {
            "input_tokens": 5,
            "output_tokens": 6,
            "input_tokens_details": {"cached_tokens": 2},
            "output_tokens_details": {"reasoning_tokens": 4},
        },
    }
    output = [
        ok("chat", {"choices": [choice], "usage": chat_usage}),
        ok("comp", {"choices": [{"text": "yo", "finish_reason": "length"}]}),
        ok("resp", responses_body),
        ok("emb", {"data": [{"embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": 7}}),
    ]
    provider_error = {"error": {"message": "boom", "code": None}}
    errors = [
        {"custom_id": "e500", "response": {"status_code": 500, "body": provider_error}},
        {"custom_id": "exp", "response": None, "error": {"code": "batch_expired", "message": "x"}},
    ]
    order = ["exp", "chat", "comp", "e500", "resp", "emb"]
    meta = [{"custom_id": c, "model": "m", "latency_ms": 1.5, "attempts": 1} for c in order]
    for name, rows in (("out", output), ("err", errors), ("meta", meta)):
        (tmp_path / name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    build_table(tmp_path / "meta", tmp_path / "out", tmp_path / "err", tmp_path / "t.parquet")
    table = pl.read_parquet(tmp_path / "t.parquet")
    assert table.schema == pl.Schema(TABLE_SCHEMA)
    assert table["line"].to_list() == [1, 2, 3, 4, 5, 6]
    rows = {r["custom_id"]: r for r in table.to_dicts()}
    assert [rows[c]["text"] for c in order] == [None, "hi", "yo", None, "abab", None]
    assert rows["emb"]["embedding"] == [0.1, 0.2] and rows["chat"]["embedding"] is None
    assert [rows[c]["finish_reason"] for c in ("chat", "comp", "resp")] == [
        "stop",
        "length",
        "completed",
    ]
    tokens = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
    assert [rows["chat"][t] for t in tokens] == [3, 2, 1, 1]
    assert [rows["resp"][t] for t in tokens] == [5, 6, 2, 4]
    assert rows["emb"]["input_tokens"] == 7
    assert [rows[c]["ok"] for c in order] == [False, True, True, False, True, True]
    assert (rows["e500"]["error_code"], rows["e500"]["error_message"]) == ("500", "boom")
    assert (rows["exp"]["error_code"], rows["exp"]["status_code"]) == ("batch_expired", None)


def completed_batch(batch_id: str, key_id: str, **files: str) -> BatchRecord:
    """A chat batch that completed just now, with the result `files` given."""
    return BatchRecord(
        id=batch_id,
        api_key_id=key_id,
        endpoint="/v1/chat/completions",
        input_file_id="file-in",
        completion_window="24h",
        status="completed",
        created_at=now(),
        completed_at=now(),
        **files,
    )


async def test_results_of_a_batch_whose_files_are_gone_are_404(tmp_path: Path) -> None:
    """Once an ended batch's output file was deleted (or expired), its lines,
    table and summary are gone too: a 404 envelope, not an empty answer or a
    table that shows every line as never answered."""
    app = inprocess_app(tmp_path / "d")
    state = app.state.gateway
    key = state.store.create_api_key("test")
    state.store.insert_batch(
        completed_batch(
            "batch_gone",
            key[0].id,
            output_file_id="file-deleted-output",
            error_file_id="file-deleted-errors",
        )
    )
    for kind in ("parquet", "csv", "summary"):  # built before the files went
        state.blobs.write_bytes(derived_blob_name("batch_gone", kind), b"{}")
    async with asgi_client(app, key[1]) as client:
        for path, params in [
            ("/v1/batches/batch_gone/results", {}),
            ("/v1/batches/batch_gone/results", {"format": "parquet"}),
            ("/v1/batches/batch_gone/summary", {}),
            ("/v1/batches/batch_gone/retry", {}),
        ]:
            method = "POST" if path.endswith("/retry") else "GET"
            response = await client.request(method, path, params=params)
            assert response.status_code == 404, (path, params, response.text)
            assert response.json()["error"]["code"] == "results_unavailable"
    state.store.close()


async def test_deleting_an_output_file_deletes_the_batch_s_table_and_summary(
    tmp_path: Path,
) -> None:
    """The table holds every line's text: `DELETE /v1/files/{output}` takes
    it (and the summary) along at once, not at the next retention pass."""
    app = inprocess_app(tmp_path / "d")
    state = app.state.gateway
    key = state.store.create_api_key("test")
    output = derived_file_id("batch_done", "output")
    state.blobs.write_bytes(output, b'{"custom_id": "a"}\n')
    state.store.insert_file(
        FileRecord(
            id=output,
            api_key_id=key[0].id,
            filename="batch_done_output.jsonl",
            purpose="batch_output",
            bytes=19,
            created_at=now(),
            expires_at=None,
            deleted_at=None,
            blob_name=output,
            mime_type="application/jsonl",
        )
    )
    state.store.insert_batch(completed_batch("batch_done", key[0].id, output_file_id=output))
    derived = [derived_blob_name("batch_done", k) for k in ("meta", "parquet", "csv", "summary")]
    for name in derived:
        state.blobs.write_bytes(name, b"{}")
    async with asgi_client(app, key[1]) as client:
        table = "/v1/batches/batch_done/results"
        assert (await client.get(table, params={"format": "csv"})).status_code == 200
        assert (await client.delete(f"/v1/files/{output}")).json()["deleted"] is True
        assert [n for n in derived if state.blobs.exists(n)] == []
        for path, params in [(table, {"format": "csv"}), ("/v1/batches/batch_done/summary", {})]:
            response = await client.get(path, params=params)
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "results_unavailable"
    state.store.close()


@pytest.mark.parametrize("raw", ["¹", "²⁰²⁶", "225171279444564267962500294639616", "253402300800"])
def test_a_usage_time_that_is_no_epoch_second_is_a_400_not_a_500(raw: str) -> None:
    """Found by the conformance soak: "¹" passed str.isdigit and int() then
    raised; a 33-digit number overflowed DuckDB's BIGINT."""
    with pytest.raises(APIError) as refused:
        parse_time(raw, "since")
    assert refused.value.status == 400
    assert refused.value.param == "since"
    assert parse_time("253402300799", "since") == 253_402_300_799
