"""Batch control end to end (issue 13): dry-run estimates, key budgets,
pause / resume and live concurrency, through the official `openai` SDK and
the admin API, on one Stack (real Prefect server, gateway, runner and
`batchgate mock-upstream`). The heartbeat is 0.5 s here, so "within one
heartbeat" is half a second."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.integration.test_batches_e2e import _artifacts, lines_of, upload, wait_terminal
from tests.stack import PrefectServer, Stack

pytestmark = pytest.mark.timeout(600)
CHUNK = 100
LINES = 2000
PRICES = [
    {
        "model": "gpt-4o-mini",
        "input_per_million": 0.15,
        "output_per_million": 0.60,
        "cached_input_per_million": 0.075,
    }
]


@pytest.fixture(scope="module")
def stack(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("control"))
    with Stack(
        root,
        prefect_server,
        chunk_size=CHUNK,
        heartbeat_seconds=0.5,
        reconcile_interval_seconds=1,
        backoff_base_seconds=0.05,
        backoff_max_seconds=1,
        prices=orjson.dumps(PRICES).decode(),
        flow_run_nice=7,
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_mock(stack: Stack) -> None:
    stack.reset_mock()


def line(i: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """Prompts of many lengths, so characters per token is learned, not given."""
    text = ("lorem ipsum dolor sit amet " * 12)[: 10 + (i * 37) % 300] + f" #{i}"
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 16,
        },
    }


def estimate(client: openai.OpenAI, file_id: str) -> dict[str, Any]:
    return client.post(
        "/batches/estimate",
        body={"input_file_id": file_id, "endpoint": "/v1/chat/completions"},
        cast_to=httpx.Response,
    ).json()


def create(client: openai.OpenAI, file_id: str) -> Any:
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


@pytest.fixture(scope="module")
def finished(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One whole batch of LINES lines, with the estimate made before it ran."""
    client = stack.client(stack.create_key("control-full"))
    file_id = upload(client, tmp_path_factory.mktemp("full"), [line(i) for i in range(LINES)])
    before = estimate(client, file_id)
    batch = wait_terminal(client, create(client, file_id).id)
    assert batch.status == "completed", batch
    return {"client": client, "file_id": file_id, "before": before, "batch": batch}


def test_the_estimate_is_within_ten_percent_once_a_batch_has_finished(
    finished: dict[str, Any], stack: Stack
) -> None:
    before, batch = finished["before"], finished["batch"]
    assert before["valid"] and before["errors"] is None
    assert before["lines"] == before["total_lines"] == LINES
    (row,) = before["models"]
    assert (row["model"], row["provider"], row["lines"]) == ("gpt-4o-mini", "openai", LINES)
    assert row["token_source"] == "default"
    assert before["max_output_tokens"] == 16 * LINES
    assert before["estimated_cost_usd"] > 0

    sent = stack.mock_stats()["total"]
    after = estimate(finished["client"], finished["file_id"])
    assert stack.mock_stats()["total"] == sent  # the estimate called no provider
    real = batch.usage.input_tokens
    assert after["models"][0]["token_source"] == "learned"
    assert abs(after["estimated_input_tokens"] - real) <= 0.10 * real, (after, real)
    expected_cost = (after["estimated_input_tokens"] * 0.15 + 16 * LINES * 0.60) / 1e6
    assert after["estimated_cost_usd"] == pytest.approx(expected_cost, rel=1e-3)


def test_the_estimate_reports_the_line_errors_a_batch_fails_with(
    finished: dict[str, Any], tmp_path: Path
) -> None:
    client = finished["client"]
    bad = [line(0), b"{not json", line(0), {**line(3), "url": "/v1/embeddings"}]
    file_id = upload(client, tmp_path, bad)
    found = estimate(client, file_id)
    assert not found["valid"]
    batch = wait_terminal(client, create(client, file_id).id)
    assert batch.status == "failed"
    assert found["errors"]["data"] == [e.model_dump() for e in batch.errors.data]
    assert [e["code"] for e in found["errors"]["data"]] == [
        "invalid_json_line",
        "duplicate_custom_id",
        "invalid_url",
    ]
    with pytest.raises(openai.BadRequestError):
        client.post("/batches/estimate", body={"input_file_id": file_id}, cast_to=httpx.Response)


def test_a_budget_lets_half_a_batch_through_then_stops_it_and_refuses_more(
    finished: dict[str, Any], stack: Stack
) -> None:
    full = finished["batch"].usage.total_tokens
    budget = full // 2
    created = stack.admin(
        "POST",
        "/admin/keys",
        json={"name": "half", "max_tokens": budget, "budget_period": "day"},
    ).json()
    assert created["budget"]["max_tokens"] == budget and not created["budget"]["exceeded"]
    client = stack.client(created["key"])
    file_id = upload(client, Path(stack.root), [line(i) for i in range(LINES)])
    batch = wait_terminal(client, create(client, file_id).id)

    assert batch.status == "failed"
    assert [e.code for e in batch.errors.data] == ["budget_exceeded"]
    # Spend is counted per chunk post: at most one more chunk per running
    # batch than the budget allows (here two chunks run at once).
    spent = batch.usage.total_tokens
    per_line = full / LINES
    assert budget <= spent <= budget + 2 * CHUNK * per_line * 1.5, (spent, budget)
    counts = batch.request_counts
    assert counts.total == LINES and counts.completed + counts.failed == LINES
    assert 0.4 * LINES <= counts.completed <= 0.5 * LINES + 2 * CHUNK
    output, errors = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    ids = [x["custom_id"] for x in output + errors]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(LINES))
    assert {x["error"]["code"] for x in errors} == {"budget_exceeded"}
    assert not stack.mock_stats()["duplicates_ok"]

    keys = stack.admin("GET", "/admin/keys").json()["data"]
    (shown,) = [k for k in keys if k["id"] == created["id"]]
    assert shown["budget"]["exceeded"] and shown["budget"]["spent_tokens"] == spent
    with pytest.raises(openai.RateLimitError) as refused:
        create(client, file_id)
    assert refused.value.code == "insufficient_quota"
    assert refused.value.response.headers["x-should-retry"] == "false"


def _flow_run_logs(stack: Stack, batch_id: str) -> list[str]:
    api = stack.prefect.api_url
    runs = httpx.post(
        f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [batch_id]}}, "limit": 5}
    ).json()
    if not runs:
        return []
    logs = httpx.post(
        f"{api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}, "limit": 200},
    ).json()
    return [entry["message"] for entry in logs]


def _wait(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_a_paused_batch_sends_nothing_keeps_going_after_resume_with_every_line_once(
    stack: Stack, tmp_path: Path
) -> None:
    client = stack.client(stack.create_key("pause"))
    count = 600
    stack.mock_config(latency_ms=100)  # mistral: 16 at a time, ~160 requests/s
    file_id = upload(client, tmp_path, [line(i, "mistral/small") for i in range(count)])
    batch_id = create(client, file_id).id
    _wait(lambda: stack.mock_stats()["total"] >= 50, "the batch to start")
    answer = stack.admin("POST", f"/admin/batches/{batch_id}/pause").json()
    assert answer == {
        "id": batch_id,
        "object": "batch.control",
        "status": "in_progress",
        "paused": True,
    }
    time.sleep(0.5 + 0.5)  # one heartbeat, then the requests in flight finish
    sent = stack.mock_stats()["total"]
    time.sleep(5)
    assert stack.mock_stats()["total"] == sent, "a paused batch sent requests"
    assert sent < count
    assert client.batches.retrieve(batch_id).status == "in_progress"
    key = batch_id.replace("_", "-").lower()
    progress = _wait(lambda: _artifacts(stack, f"{key}-progress"), "the progress artifact")
    assert progress[0]["description"].startswith("PAUSED")

    stack.admin("POST", f"/admin/batches/{batch_id}/resume")
    batch = wait_terminal(client, batch_id)
    assert batch.status == "completed"
    assert batch.request_counts.completed == count
    stats = stack.mock_stats()
    assert len(stats["custom_ids_ok"]) == count
    assert set(stats["custom_ids_ok"].values()) == {1}
    logs = _wait(
        lambda: [m for m in _flow_run_logs(stack, batch_id) if "paused" in m or "resumed" in m],
        "the pause in the flow run's log",
    )
    assert any("paused" in m for m in logs)
    with pytest.raises(httpx.HTTPStatusError) as ended:
        stack.admin("POST", f"/admin/batches/{batch_id}/pause")
    assert ended.value.response.status_code == 409


def test_lowering_a_providers_concurrency_holds_running_batches_to_it(
    stack: Stack, tmp_path: Path
) -> None:
    client = stack.client(stack.create_key("ceiling"))
    stack.mock_config(latency_ms=200)
    file_id = upload(client, tmp_path, [line(i) for i in range(1500)])
    batch_id = create(client, file_id).id
    try:
        _wait(lambda: stack.mock_stats()["max_in_flight"] > 16, "the batch to run wide")
        changed = stack.admin("PATCH", "/admin/providers/openai", json={"max_concurrency": 4})
        assert changed.json()["max_concurrency"] == 4
        time.sleep(2)
        httpx.post(f"{stack.mock_url}/stats/reset-max-in-flight").raise_for_status()
        sent = stack.mock_stats()["total"]
        time.sleep(1.5)
        stats = stack.mock_stats()
        assert stats["max_in_flight"] <= 4, stats["max_in_flight"]
        assert stats["total"] > sent  # still running, just narrower
    finally:
        stack.admin("PATCH", "/admin/providers/openai", json={"max_concurrency": 64})
    batch = wait_terminal(client, batch_id)
    assert batch.status == "completed" and batch.request_counts.completed == 1500
    assert set(stack.mock_stats()["custom_ids_ok"].values()) == {1}
