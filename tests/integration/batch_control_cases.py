"""Batch control end to end: dry-run estimates, key budgets,
pause / resume and live concurrency, through the official `openai` SDK and
the admin API (real Prefect server, gateway, runner and
`batchgate mock-upstream`).

Collected in tests/integration/test_batches_e2e.py, which imports these
tests so they run on its Stack (a Stack of their own would cost ~25 s of
start-up): that Stack runs with CONTROL_SETTINGS, a 0.5 s heartbeat, so
"within one heartbeat" is half a second here, and a 6 s lease, so a pause
longer than the lease proves the heartbeat keeps the lease."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchgate.mock_provider.server import _reply as mock_reply
from batchgate.mock_provider.server import count_tokens
from harness.stack import Stack

CHUNK = 100
ESTIMATED = 500  # lines of the batch the estimate learns from
TERMINAL = {"completed", "failed", "expired", "cancelled"}
LINES = 2000
# The estimate tests use a model no other test sends, so nothing was learned
# about it before their batch.
ESTIMATE_MODEL = "gpt-4.1-nano"
PRICES = [
    {
        "model": ESTIMATE_MODEL,
        "input_per_million": 0.15,
        "output_per_million": 0.60,
        "cached_input_per_million": 0.075,
    }
]


# What the Stack these tests run on needs besides its chunk size of CHUNK.
CONTROL_SETTINGS = {"heartbeat_seconds": 0.5, "prices": orjson.dumps(PRICES).decode()}


def upload(client: openai.OpenAI, tmp_path: Path, lines: list[Any]) -> str:
    path = tmp_path / f"control-{time.monotonic_ns()}.jsonl"
    path.write_bytes(
        b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    )
    with path.open("rb") as handle:
        return client.files.create(file=handle, purpose="batch").id


def wait_terminal(client: openai.OpenAI, batch_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in TERMINAL:
        assert time.monotonic() < deadline, f"{batch_id} still {batch.status}"
        time.sleep(0.25)
    return batch


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in client.files.content(file_id).content.splitlines()]


def _progress_artifacts(stack: Stack, batch_id: str) -> list[dict[str, Any]]:
    key = batch_id.replace("_", "-").lower() + "-progress"
    response = httpx.post(
        f"{stack.prefect.api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 5},
    )
    response.raise_for_status()
    return response.json()


def mock_total_tokens(lines: list[dict[str, Any]]) -> int:
    """What the mock provider will count for these chat lines, by its own rules."""
    total = 0
    for request in lines:
        prompt = count_tokens(request["body"]["messages"][0]["content"])
        total += prompt + count_tokens(mock_reply(request["body"]["model"], prompt))
    return total


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
def control_finished(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One whole batch of ESTIMATED lines, with the estimate made before it ran."""
    client = stack.client(stack.create_key("control-full"))
    file_id = upload(
        client, tmp_path_factory.mktemp("full"), [line(i, ESTIMATE_MODEL) for i in range(ESTIMATED)]
    )
    before = estimate(client, file_id)
    batch = wait_terminal(client, create(client, file_id).id)
    assert batch.status == "completed", batch
    return {"client": client, "file_id": file_id, "before": before, "batch": batch}


def test_the_estimate_is_within_ten_percent_once_a_batch_has_finished(
    control_finished: dict[str, Any], stack: Stack
) -> None:
    before, batch = control_finished["before"], control_finished["batch"]
    assert before["valid"] and before["errors"] is None
    assert before["lines"] == before["total_lines"] == ESTIMATED
    (row,) = before["models"]
    assert (row["model"], row["provider"], row["lines"]) == (ESTIMATE_MODEL, "openai", ESTIMATED)
    assert row["token_source"] == "default"
    assert before["max_output_tokens"] == 16 * ESTIMATED
    assert before["estimated_cost_usd"] > 0

    sent = stack.mock_stats()["total"]
    after = estimate(control_finished["client"], control_finished["file_id"])
    assert stack.mock_stats()["total"] == sent  # the estimate called no provider
    real = batch.usage.input_tokens
    assert after["models"][0]["token_source"] == "learned"
    assert abs(after["estimated_input_tokens"] - real) <= 0.10 * real, (after, real)
    expected_cost = (after["estimated_input_tokens"] * 0.15 + 16 * ESTIMATED * 0.60) / 1e6
    assert after["estimated_cost_usd"] == pytest.approx(expected_cost, rel=1e-3)


def test_the_estimate_reports_the_line_errors_a_batch_fails_with(
    control_finished: dict[str, Any], tmp_path: Path
) -> None:
    client = control_finished["client"]
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
    stack: Stack,
) -> None:
    full = mock_total_tokens([line(i) for i in range(LINES)])
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
    # Retrying its budget_exceeded lines is refused the same way, and leaves
    # no retry input file behind.
    files = {f.id for f in client.files.list()}
    with pytest.raises(openai.RateLimitError) as refused:
        client.post(f"/batches/{batch.id}/retry", cast_to=httpx.Response)
    assert refused.value.code == "insufficient_quota"
    assert {f.id for f in client.files.list()} == files


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


def _lease_renewals(stack: Stack) -> float:
    """Lease renewals the gateway has answered (its own HTTP metrics)."""
    text = stack.admin("GET", "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "batchgate_http_request_duration_seconds_count"
        and sample.labels["route"] == "/internal/batches/{batch_id}/renew"
    )


def _wait(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_pause_resume_and_a_lowered_ceiling_act_on_a_running_batch(
    stack: Stack, tmp_path: Path
) -> None:
    """One batch: paused, it sends nothing for 5 s (longer than its 6 s
    lease minus a heartbeat: the heartbeat keeps the lease) and stays
    in_progress; resumed, it goes on; its provider's ceiling lowered from 64
    to 4, the mock's in-flight maximum is at most 4 within 2 s. It ends
    completed with every line sent exactly once."""
    client = stack.client(stack.create_key("control"))
    count = 600
    stack.mock_config(latency_ms=200)  # openai: up to 64 at a time
    file_id = upload(client, tmp_path, [line(i) for i in range(count)])
    batch_id = create(client, file_id).id
    try:
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
        renewed = _lease_renewals(stack)
        time.sleep(5)
        assert stack.mock_stats()["total"] == sent, "a paused batch sent requests"
        # The paused run goes on renewing its lease (a 0.5 s heartbeat).
        assert _lease_renewals(stack) - renewed >= 5, "a paused run stopped its heartbeat"
        assert sent < count
        assert client.batches.retrieve(batch_id).status == "in_progress"
        progress = _wait(
            lambda: [
                a for a in _progress_artifacts(stack, batch_id) if "PAUSED" in a["description"]
            ],
            "the progress artifact to say PAUSED",
        )
        assert progress

        stack.admin("POST", f"/admin/batches/{batch_id}/resume")
        httpx.post(f"{stack.mock_url}/stats/reset-max-in-flight").raise_for_status()
        _wait(lambda: stack.mock_stats()["max_in_flight"] > 16, "the resumed batch to run wide")
        changed = stack.admin("PATCH", "/admin/providers/openai", json={"max_concurrency": 4})
        assert changed.json()["max_concurrency"] == 4
        time.sleep(2)
        httpx.post(f"{stack.mock_url}/stats/reset-max-in-flight").raise_for_status()
        sent = stack.mock_stats()["total"]
        time.sleep(1.5)
        stats = stack.mock_stats()
        assert stats["max_in_flight"] <= 4, stats["max_in_flight"]
        assert sent < stats["total"] < count  # still running, just narrower
    finally:
        stack.admin("PATCH", "/admin/providers/openai", json={"max_concurrency": 64})
    batch = wait_terminal(client, batch_id)
    assert batch.status == "completed" and batch.request_counts.completed == count
    stats = stack.mock_stats()
    assert len(stats["custom_ids"]) == count and set(stats["custom_ids"].values()) == {1}
    logs = _wait(
        lambda: [m for m in _flow_run_logs(stack, batch_id) if "paused" in m or "resumed" in m],
        "the pause in the flow run's log",
    )
    assert any("paused" in m for m in logs) and any("resumed" in m for m in logs)
    with pytest.raises(httpx.HTTPStatusError) as ended:
        stack.admin("POST", f"/admin/batches/{batch_id}/pause")
    assert ended.value.response.status_code == 409
