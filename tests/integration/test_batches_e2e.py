"""Batches end to end: the official `openai` SDK against the gateway, with a
real Prefect server, a real runner and `batchgate mock-upstream`, each its
own process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import openai
import orjson
import psutil
import pytest

from harness.batches import (
    lines_of,
    run_batch,
    upload,
    wait_progress,
    wait_terminal,
)
from harness.batches import (
    numbered_chat_line as chat_line,
)
from harness.stack import PrefectServer, Stack
from harness.stack import prefect_artifacts as _artifacts
from tests.integration.batch_control_cases import (  # batch control, on this Stack
    CONTROL_SETTINGS,
    control_finished,  # noqa: F401 (fixture)
    test_a_budget_lets_half_a_batch_through_then_stops_it_and_refuses_more,  # noqa: F401
    test_pause_resume_and_a_lowered_ceiling_act_on_a_running_batch,  # noqa: F401
    test_the_estimate_is_within_ten_percent_once_a_batch_has_finished,  # noqa: F401
    test_the_estimate_reports_the_line_errors_a_batch_fails_with,  # noqa: F401
)

pytestmark = pytest.mark.timeout(900)
CHUNK = 100


@pytest.fixture(scope="module")
def stack(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("stack"))
    with Stack(
        root,
        prefect_server,
        chunk_size=CHUNK,
        lease_seconds=6,
        reconcile_interval_seconds=1,
        max_attempts=10,
        backoff_base_seconds=0.05,
        backoff_max_seconds=1,
        retention_interval_seconds=3600,
        flow_run_nice=7,
        **CONTROL_SETTINGS,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return stack.client(stack.create_key("e2e"))


@pytest.fixture(autouse=True)
def fresh_mock(stack: Stack) -> None:
    stack.reset_mock()


def test_chat_and_embeddings_batches_complete(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    chat_id = upload(client, tmp_path, [chat_line(i) for i in range(2000)])
    embed_id = upload(
        client,
        tmp_path,
        [
            {
                "custom_id": f"emb-{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "mistral/mistral-embed", "input": f"text {i}"},
            }
            for i in range(500)
        ],
    )
    chat_batch = client.batches.create(
        input_file_id=chat_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "e2e"},
    )
    embed_batch = run_batch(client, embed_id, endpoint="/v1/embeddings")
    chat_batch = wait_terminal(client, chat_batch.id)

    assert chat_batch.status == "completed", chat_batch
    assert chat_batch.request_counts.model_dump() == {"total": 2000, "completed": 2000, "failed": 0}
    out = lines_of(client, chat_batch.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(2000))
    assert chat_batch.error_file_id is None
    usage = chat_batch.usage
    assert usage is not None
    assert usage.input_tokens == sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in out)
    assert usage.output_tokens == sum(
        x["response"]["body"]["usage"]["completion_tokens"] for x in out
    )
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert chat_batch.model == "gpt-4o-mini"
    assert chat_batch.metadata == {"run": "e2e"}

    assert embed_batch.status == "completed"
    assert embed_batch.request_counts.completed == 500
    emb = lines_of(client, embed_batch.output_file_id)
    assert sorted(x["custom_id"] for x in emb) == sorted(f"emb-{i}" for i in range(500))
    assert all(x["response"]["body"]["object"] == "list" for x in emb)
    assert embed_batch.model == "mistral-embed"
    assert stack.mock_stats()["duplicates_ok"] == []


def test_bad_lines_fail_with_their_line_numbers(client: openai.OpenAI, tmp_path: Path) -> None:
    lines: list[Any] = [chat_line(i) for i in range(30)]
    for number in (2, 9, 14, 22, 30):
        lines[number - 1] = b'{"custom_id": broken'
    batch = run_batch(client, upload(client, tmp_path, lines))
    assert batch.status == "failed"
    assert [e.line for e in batch.errors.data] == [2, 9, 14, 22, 30]
    assert {e.code for e in batch.errors.data} == {"invalid_json_line"}


def test_an_unknown_create_argument_is_refused_and_creates_nothing(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    """Through the SDK, as OpenAI answers it: 400 naming the argument, and no
    batch is made (a misspelled option must not be dropped silently)."""
    file_id = upload(client, tmp_path, [chat_line(0)])
    before = [b.id for b in client.batches.list(limit=100)]
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"batchgate_mode": "native"},
        )
    assert refused.value.param == "batchgate_mode"
    assert refused.value.code == "unknown_parameter"
    assert "Unrecognized request argument supplied: batchgate_mode" in refused.value.message
    assert [b.id for b in client.batches.list(limit=100)] == before


def test_url_endpoint_mismatch_fails(client: openai.OpenAI, tmp_path: Path) -> None:
    line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "gpt-4o-mini", "input": "x"},
    }
    batch = run_batch(client, upload(client, tmp_path, [line]))
    assert batch.status == "failed"
    assert "does not match batch endpoint" in batch.errors.data[0].message


def test_stream_true_gets_json_and_unknown_provider_fails_one_line(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    lines = [chat_line(1, stream=True), chat_line(2, model="nosuch/model"), chat_line(3)]
    batch = run_batch(client, upload(client, tmp_path, lines))
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    out = {x["custom_id"]: x for x in lines_of(client, batch.output_file_id)}
    assert out["req-1"]["response"]["body"]["object"] == "chat.completion"
    (err,) = lines_of(client, batch.error_file_id)
    assert err["custom_id"] == "req-2"
    assert err["response"]["status_code"] >= 400 and err["response"]["body"]["error"]
    assert stack.mock_stats()["streamed"] == 0


def test_no_successes_means_no_output_file(client: openai.OpenAI, tmp_path: Path) -> None:
    batch = run_batch(client, upload(client, tmp_path, [chat_line(1, model="nosuch/m")]))
    assert batch.status == "completed"
    assert batch.output_file_id is None and batch.error_file_id is not None


def test_rate_limits_and_5xx_are_retried(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    # Each 429's Retry-After (1 s) pauses the provider: the batch takes about a
    # second per round of requests, so it is kept small.
    stack.mock_config(rate_429=0.2, failure_rate=0.1, retry_after=1)
    batch = run_batch(client, upload(client, tmp_path, [chat_line(i) for i in range(120)]))
    stats = stack.mock_stats()
    assert batch.status == "completed"
    assert batch.request_counts.completed == 120 and batch.request_counts.failed == 0
    assert stats["status_429"] > 0 and stats["status_5xx"] > 0
    assert stats["duplicates_ok"] == []


def test_request_ids_when_the_provider_sends_none(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    """With no `x-request-id` from the provider, every line with a
    response carries batchgate's own `req_…` id: the `X-Client-Request-Id` of
    the attempt it kept (retried lines included), and a failed line's id is in
    the runner's log next to its custom_id."""
    stack.mock_config(missing_request_id_rate=1.0, rate_429=0.2, retry_after=0)
    try:
        lines = [chat_line(i) for i in range(200)] + [chat_line(999, model="nosuch/m")]
        batch = run_batch(client, upload(client, tmp_path, lines))
        sent = httpx.get(f"{stack.mock_url}/stats/client-request-ids").json()
    finally:
        stack.mock_config(missing_request_id_rate=0, rate_429=0)
    assert batch.status == "completed"
    out, (err,) = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert len(out) == 200
    ids = [x["response"]["request_id"] for x in out]
    assert all(isinstance(i, str) and i.startswith("req_") for i in ids)
    assert ids == [sent[x["custom_id"]][-1] for x in out]
    assert any(len(sent[x["custom_id"]]) > 1 for x in out)  # some were retried after a 429
    assert err["custom_id"] == "req-999" and err["response"]["status_code"] == 404
    own = err["response"]["request_id"]
    assert isinstance(own, str) and own.startswith("req_")
    assert stack.runner is not None
    logged = [x for x in stack.runner.log_path.read_text().splitlines() if own in x]
    assert len(logged) == 1 and "WARNING" in logged[0] and "custom_id=req-999" in logged[0]


def test_cancel_mid_run_keeps_partial_results(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    stack.mock_config(latency_ms=100)
    batch = client.batches.create(
        input_file_id=upload(client, tmp_path, [chat_line(i) for i in range(3000)]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_progress(client, batch.id, CHUNK)
    # A run and its forkserver take the configured CPU niceness (flow_run_nice).
    assert stack.gateway is not None and stack.runner is not None
    runs = flow_run_processes(stack)
    assert runs
    forkserver = [run.parent() for run in runs]
    assert {p.nice() for p in [*forkserver, *runs]} == {7}
    assert psutil.Process(stack.gateway.pid).nice() == 0
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = wait_terminal(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    out, err = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    assert CHUNK <= len(out) < 3000
    assert sorted(x["custom_id"] for x in out + err) == sorted(f"req-{i}" for i in range(3000))
    assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(batch.id)
    assert info.value.response.headers["x-should-retry"] == "false"


def flow_run_processes(stack: Stack) -> list[psutil.Process]:
    """The running flow-run processes: children of the runner's forkserver."""
    assert stack.runner is not None
    runner = psutil.Process(stack.runner.pid)
    forkserver = [p for p in runner.children() if "forkserver" in " ".join(p.cmdline())]
    return [run for server in forkserver for run in server.children()]


def start_slow_batch(stack: Stack, client: openai.OpenAI, tmp_path: Path, lines: int) -> Any:
    """A chat batch of `lines` against a 300 ms upstream, once its first
    chunk is done (so its run is working)."""
    stack.mock_config(latency_ms=300)
    batch = client.batches.create(
        input_file_id=upload(client, tmp_path, [chat_line(i) for i in range(lines)]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_progress(client, batch.id, CHUNK)
    return batch


def test_sigterm_stops_a_flow_run_at_once_and_the_batch_goes_on(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    """SIGTERM (Prefect's cancel of a flow run, `batchgate up` stopping) ends
    a run on uvloop at once, as on the standard loop; the batch is then
    resumed by a new run and every line ends once."""
    lines = 6000
    batch = start_slow_batch(stack, client, tmp_path, lines)
    runs = flow_run_processes(stack)
    assert runs
    for run in runs:
        run.terminate()
    # A run that ignores the signal goes on for ~25 s more (6,000 lines,
    # 300 ms each, 64 at a time); one that takes it is gone within a second
    # or two, and 15 s leaves room for a busy machine.
    _, alive = psutil.wait_procs(runs, timeout=15)
    assert alive == [], "flow-run processes still running 15 s after SIGTERM"
    assert client.batches.retrieve(batch.id).request_counts.completed < lines
    stack.mock_config(latency_ms=0)  # the resumed run need not take as long
    final = wait_terminal(client, batch.id, timeout=300)
    assert final.status == "completed"
    out = lines_of(client, final.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(lines))


def test_a_run_suspended_in_the_prefect_ui_pauses_its_batch_until_resumed_there(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    """Prefect's Suspend ends the run's process; the batch waits for that run
    (no new run takes it after its lease lapses) and goes on when the run is
    resumed (here through the admin API, which resumes it in Prefect): one
    flow run in the UI, every line once."""
    lines = 3000
    batch = start_slow_batch(stack, client, tmp_path, lines)
    api = stack.prefect.api_url
    (run,) = _flow_runs_named(api, batch.id)
    suspended = httpx.post(
        f"{api}/flow_runs/{run['id']}/set_state",
        json={
            "state": {
                "type": "PAUSED",
                "name": "Suspended",
                "state_details": {"pause_reschedule": True},
            }
        },
    )
    assert suspended.json()["status"] == "ACCEPT", suspended.text
    psutil.wait_procs(flow_run_processes(stack), timeout=15)
    assert flow_run_processes(stack) == []
    held = client.batches.retrieve(batch.id).request_counts.completed
    time.sleep(6 + 4)  # the lease (6 s) lapses; reconciler passes every second
    assert client.batches.retrieve(batch.id).request_counts.completed == held < lines
    assert [r["id"] for r in _flow_runs_named(api, batch.id)] == [run["id"]]
    stack.mock_config(latency_ms=0)
    # The admin API's resume resumes the suspended run, as the UI's Resume does.
    resumed = stack.admin("POST", f"/admin/batches/{batch.id}/resume")
    assert resumed.json()["paused"] is False, resumed.text
    assert _flow_runs_named(api, batch.id)[0]["state"]["type"] != "PAUSED"
    final = wait_terminal(client, batch.id, timeout=120)
    assert final.status == "completed"
    out = lines_of(client, final.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(lines))
    assert [r["id"] for r in _flow_runs_named(api, batch.id)] == [run["id"]]


def _flow_runs_named(api: str, name: str) -> list[dict[str, Any]]:
    found = httpx.post(
        f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}, "limit": 10}
    )
    return found.json()


def test_runner_killed_mid_batch_resumes_without_repeats(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    stack.mock_config(latency_ms=20)
    batch = client.batches.create(
        input_file_id=upload(client, tmp_path, [chat_line(i) for i in range(1500)]),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done_at_kill = wait_progress(client, batch.id, 300)
    stack.kill_runner()
    stack.start_runner()
    final = wait_terminal(client, batch.id, timeout=300)
    assert final.status == "completed"
    out = lines_of(client, final.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(1500))
    sent = stack.mock_stats()["custom_ids"]
    repeated = [c for c, n in sent.items() if n > 1]
    # only the chunks in flight at the kill may be sent again, never a finished one
    assert len(repeated) <= 2 * CHUNK
    assert done_at_kill % CHUNK == 0


def test_prefect_shows_flow_run_tasks_and_artifacts(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    # Mixed models: the run is tagged with each (the batch's `model` is its first line's).
    lines = [chat_line(i, model="gpt-4o" if i % 50 == 7 else "gpt-4o-mini") for i in range(250)]
    batch = run_batch(client, upload(client, tmp_path, lines))
    assert batch.status == "completed"
    deadline = time.monotonic() + 60
    # The summary artifact and the final flow-run state land just after the
    # batch turns completed; wait for them.
    while (
        not (found := asyncio.run(_prefect_view(stack, batch.id)))["summary"]
        or found["state"] != "COMPLETED"
    ):
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    assert found["flow_run_name"] == batch.id
    assert found["state"] == "COMPLETED"
    assert "endpoint:/v1/chat/completions" in found["tags"]
    assert {"model:gpt-4o-mini", "model:gpt-4o"} <= set(found["tags"])
    names = found["task_names"]
    assert any(n.startswith("validate") for n in names)
    assert any(n.startswith("finalize") for n in names)
    assert sum(1 for n in names if n.startswith("chunk-")) == 3
    assert found["progress"] == 100.0
    assert any(row["field"] == "completed" and row["value"] == 250 for row in found["summary"])
    # Starting the same launch again (a retried create, a restarted gateway)
    # gets the run Prefect already made, not a second run for the batch.
    assert asyncio.run(_start_again(stack, batch.id, tmp_path)) == found["flow_run_id"]
    assert asyncio.run(_prefect_view(stack, batch.id))["flow_run_id"] == found["flow_run_id"]


async def _start_again(stack: Stack, batch_id: str, tmp_path: Path) -> str | None:
    """The gateway's first start of `batch_id`, made once more."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from gateway.flow_runs import PrefectFlowRuns
    from harness.records import batch_record
    from tasks.settings import load_settings

    runs = PrefectFlowRuns(load_settings(data_dir=tmp_path))
    with temporary_settings({PREFECT_API_URL: stack.prefect.api_url}):
        try:
            return await runs.start_batch(batch_record(batch_id))
        finally:
            await runs.aclose()


async def _prefect_view(stack: Stack, batch_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    key = batch_id.replace("_", "-").lower()
    async with PrefectClient(stack.prefect.api_url) as prefect:
        runs = await prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[batch_id])),
            sort=FlowRunSort.ID_DESC,
            limit=10,
        )
        assert len(runs) == 1, f"one flow run per batch, got {[str(r.id) for r in runs]}"
        (run,) = runs
        tasks = await prefect.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id])),
            sort=TaskRunSort.ID_DESC,
            limit=100,
        )
        progress = _artifacts(stack, f"{key}-progress")
        summary = _artifacts(stack, f"{key}-summary")
    data = summary[0]["data"] if summary else []
    return {
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "state": run.state.type.value,
        "tags": run.tags,
        "task_names": [t.name for t in tasks],
        "progress": progress[0]["data"] if progress else None,
        "summary": orjson.loads(data) if isinstance(data, str) else data,
    }


def test_retention_flow_deletes_expired_output_keeps_input(
    stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    input_id = upload(client, tmp_path, [chat_line(i) for i in range(5)])
    batch = run_batch(
        client,
        input_id,
        extra_body={"output_expires_after": {"anchor": "created_at", "seconds": 3600}},
    )
    assert batch.status == "completed" and batch.output_file_id
    # Age the batch by an hour: stop the gateway (DuckDB has one owner), edit, restart.
    assert stack.gateway is not None
    from batchgate.up.supervisor import stop_child

    stop_child(stack.gateway)
    db = duckdb.connect(str(stack.root / "data" / "batchgate.duckdb"))
    db.execute("UPDATE batches SET created_at = created_at - 3700 WHERE id = ?", [batch.id])
    db.close()
    stack.start_gateway()
    stack.kill_runner()
    stack.settings["RETENTION_INTERVAL_SECONDS"] = "2"
    stack.start_runner()
    deadline = time.monotonic() + 120
    while True:
        try:
            client.files.retrieve(batch.output_file_id)
        except openai.NotFoundError:
            break
        assert time.monotonic() < deadline, "retention did not delete the output file"
        time.sleep(1)
    assert client.files.retrieve(input_id).id == input_id
    assert (stack.root / "data" / "blobs" / input_id).exists()
    assert not (stack.root / "data" / "blobs" / batch.output_file_id).exists()
