"""Webhooks and Prometheus metrics end to end, on one stack: a real Prefect
server, the gateway and a runner as processes, `batchgate mock-upstream`,
and a webhook receiver that verifies every delivery with the official SDK
and the standardwebhooks library. The stack fans a batch of several chunks
out to three flow runs (`fanout_runs=3`), so these checks hold
for a batch worked by helper runs too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchgate.up.supervisor import stop_child
from harness.batches import check_batch, create_batch, upload, wait_all_terminal
from harness.lines import chat_lines
from harness.stack import INTERNAL_TOKEN, PrefectServer, Stack
from harness.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(600)
METRICS_TOKEN = "metrics-read-only-token"
FANOUT = 3


@pytest.fixture(scope="module")
def stack(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("hooks"))
    with Stack(
        root,
        prefect_server,
        chunk_size=25,
        lease_seconds=6,
        reconcile_interval_seconds=1,
        max_attempts=10,
        backoff_base_seconds=0.05,
        backoff_max_seconds=0.5,
        webhook_poll_seconds=0.1,
        webhook_backoff_base_seconds=0.2,
        webhook_backoff_max_seconds=1,
        webhook_max_attempts=100,
        metrics_token=METRICS_TOKEN,
        fanout_runs=FANOUT,
    ) as running:
        yield running


def new_key(stack: Stack, name: str) -> tuple[str, str]:
    """(key id, clear key)."""
    created = stack.admin("POST", "/admin/keys", json={"name": name}).json()
    return created["id"], created["key"]


def register(stack: Stack, receiver: Receiver, **fields: Any) -> dict[str, Any]:
    created = stack.admin("POST", "/admin/webhooks", json={"url": receiver.url, **fields}).json()
    receiver.secret = created["secret"]
    return created


def scrape(stack: Stack, token: str = METRICS_TOKEN) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_events_arrive_signed_after_500s_and_only_at_the_batch_s_key_endpoints(
    stack: Stack, tmp_path: Path
) -> None:
    key_id, key = new_key(stack, "hooks")
    other_id, _ = new_key(stack, "someone-else")
    mine = Receiver(fail_first=3).start()
    theirs = Receiver().start()
    try:
        register(stack, mine, key_id=key_id)
        register(stack, theirs, key_id=other_id)
        listed = stack.admin("GET", "/admin/webhooks").json()["data"]
        assert all("secret" not in e for e in listed) and len(listed) == 2

        client = stack.client(key)
        batch_id = create_batch(client, upload(client, tmp_path, chat_lines("w", 10)))
        (batch,) = wait_all_terminal(client, [batch_id], 120)
        mine.wait_for([batch_id], timeout=30)

        (delivery,) = mine.for_batch(batch_id)
        assert batch.status == "completed"
        assert delivery.sdk_type == "batch.completed" and delivery.event["object"] == "event"
        assert delivery.event["type"] == "batch.completed"
        assert delivery.event["id"] == delivery.webhook_id and delivery.webhook_id.startswith(
            "evt_"
        )
        assert isinstance(delivery.event["created_at"], int)
        assert mine.refused == 3 and mine.bad_signatures == 0  # 500 x3, then 200
        assert theirs.attempts == 0  # another key's endpoint hears nothing
        samples = scrape(stack)
        assert total(samples, "batchgate_webhook_deliveries_total", outcome="retry") >= 3
        assert total(samples, "batchgate_webhook_deliveries_total", outcome="delivered") >= 1
    finally:
        mine.stop()
        theirs.stop()
        for endpoint in stack.admin("GET", "/admin/webhooks").json()["data"]:
            stack.admin("DELETE", f"/admin/webhooks/{endpoint['id']}")


def test_metrics_during_and_after_a_batch_match_the_provider_s_counts(
    stack: Stack, tmp_path: Path
) -> None:
    _, key = new_key(stack, "metrics")
    client = stack.client(key)
    stack.reset_mock()
    # 100 ms an answer: the chunks end in waves, so scrapes find the batch
    # part-done and standing still (~8 times here); at 20 ms a quick machine
    # had ended it before the first steady scrape.
    stack.mock_config(latency_ms=100, rate_429=0.1, retry_after=0.05)
    before = scrape(stack)
    try:
        batch_id = create_batch(client, upload(client, tmp_path, chat_lines("m", 300)))
        during: list[dict] = []
        # Scrapes taken while the batch's counts stood still (the same just
        # before and just after): the line counters must equal them exactly.
        # The pause before the scrape lets the metrics hear a checkpoint that
        # committed just before the first read (they hear it after its commit).
        steady: list[tuple[Any, dict]] = []
        deadline = time.monotonic() + 120
        while (first := client.batches.retrieve(batch_id)).status not in {"completed", "failed"}:
            time.sleep(0.05)
            during.append(scrape(stack))
            second = client.batches.retrieve(batch_id)
            if second.status == "in_progress" and first.request_counts == second.request_counts:
                steady.append((second.request_counts, during[-1]))
            assert time.monotonic() < deadline
            time.sleep(0.15)
        (batch,) = wait_all_terminal(client, [batch_id], 30)
    finally:
        stack.mock_config(latency_ms=0, rate_429=0)
    after = scrape(stack)
    stats = stack.mock_stats()

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    completed = batch.request_counts.completed
    assert batch.status == "completed" and completed >= 290  # a line may run out of attempts
    assert stats["status_429"] > 0
    assert grew("batchgate_upstream_requests_total") == stats["total"]
    assert grew("batchgate_upstream_requests_total", status_class="2xx") == completed
    assert grew("batchgate_upstream_429_total") == stats["status_429"]
    assert grew("batchgate_upstream_retries_total") == stats["total"] - 300
    assert grew("batchgate_upstream_latency_seconds_count") == stats["total"]
    assert grew("batchgate_lines_total", outcome="completed") == completed
    assert grew("batchgate_lines_total", outcome="failed") == batch.request_counts.failed
    assert grew("batchgate_tokens_total", kind="input") == batch.usage.input_tokens
    # The AIMD window shows while the batch runs and leaves with it.
    assert total(after, "batchgate_aimd_window", provider="openai") == 0
    assert total(after, "batchgate_batches", status="completed") >= 1
    # During the run: the batch was live in the gauge, and counters only grew.
    live = [total(s, "batchgate_batches", status="in_progress") for s in during]
    assert max(live, default=0) >= 1, live
    for counts_then, sample in steady:
        for outcome in ("completed", "failed"):
            grown = total(sample, "batchgate_lines_total", outcome=outcome) - total(
                before, "batchgate_lines_total", outcome=outcome
            )
            assert grown == getattr(counts_then, outcome), (outcome, counts_then, grown)
    assert any(0 < c.completed < 300 for c, _ in steady), [c for c, _ in steady]
    for counts_then, sample in steady:
        if counts_then.completed:
            assert total(sample, "batchgate_aimd_window", provider="openai") >= 1
    counts = [total(s, "batchgate_upstream_requests_total") for s in during]
    assert counts == sorted(counts) and counts[-1] <= total(
        after, "batchgate_upstream_requests_total"
    )
    assert (
        total(
            after, "batchgate_http_request_duration_seconds_count", route="/v1/batches/{batch_id}"
        )
        > 0
    )


def test_metrics_take_the_admin_key_or_the_metrics_token_only(stack: Stack) -> None:
    _, key = new_key(stack, "no-metrics")
    for token, status in [(None, 401), (key, 401), ("wrong", 401), (stack.admin_key, 200)]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        assert httpx.get(f"{stack.url}/metrics", headers=headers).status_code == status, token
    scrape(stack)  # the metrics token reads /metrics ...
    denied = httpx.get(
        f"{stack.url}/admin/keys", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"


def test_a_receiver_down_across_a_gateway_restart_still_gets_the_event(
    stack: Stack, tmp_path: Path
) -> None:
    _, key = new_key(stack, "restart")
    receiver = Receiver()  # not started: connection refused
    register(stack, receiver)  # global: every key's batches
    try:
        client = stack.client(key)
        batch_id = create_batch(client, upload(client, tmp_path, chat_lines("r", 5)))
        wait_all_terminal(client, [batch_id], 120)
        deadline = time.monotonic() + 30
        while total(scrape(stack), "batchgate_webhook_deliveries_total", outcome="retry") < 1:
            assert time.monotonic() < deadline, "no failed attempt was recorded"
            time.sleep(0.2)
        assert stack.gateway is not None
        stop_child(stack.gateway)
        receiver.start()
        stack.start_gateway()
        receiver.wait_for([batch_id], timeout=30)
        (delivery,) = receiver.for_batch(batch_id)
        assert delivery.sdk_type == "batch.completed" and receiver.bad_signatures == 0
    finally:
        receiver.stop()
        for endpoint in stack.admin("GET", "/admin/webhooks").json()["data"]:
            stack.admin("DELETE", f"/admin/webhooks/{endpoint['id']}")


def test_bad_webhook_requests_get_the_error_envelope(stack: Stack) -> None:
    cases = [
        ({}, 400, "url"),
        ({"url": "ftp://x"}, 400, "url"),
        ({"url": "http://127.0.0.1:9/h", "events": ["batch.started"]}, 400, "events"),
        ({"url": "http://127.0.0.1:9/h", "events": []}, 400, "events"),
        ({"url": "http://127.0.0.1:9/h", "key_id": "key_nope"}, 404, "key_id"),
    ]
    for body, status, param in cases:
        response = httpx.post(
            f"{stack.url}/admin/webhooks", json=body, headers=stack.admin_headers()
        )
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == param
    response = httpx.post(f"{stack.url}/admin/webhooks", json={"url": "http://127.0.0.1:9/h"})
    assert response.status_code == 401
    missing = httpx.delete(f"{stack.url}/admin/webhooks/we_nope", headers=stack.admin_headers())
    assert missing.status_code == 404 and missing.json()["error"]["message"]


def test_a_batch_is_worked_by_its_run_and_helper_runs_with_every_line_once(
    stack: Stack, tmp_path: Path
) -> None:
    """The upstream is slow (1 s a request, 4 in flight: ~7 s a chunk) until
    a second flow run holds a chunk, then fast: helper runs are shown to take
    chunks however long they took to start, and the test stays short."""
    _, key = new_key(stack, "fanout")
    client = stack.client(key)
    stack.reset_mock()
    stack.mock_config(latency_ms=1000)
    stack.add_provider("openai", f"{stack.mock_url}/v1", "sk-mock-openai", 4, default=True)
    try:
        batch_id = create_batch(client, upload(client, tmp_path, chat_lines("f", 200)))
        workers = _runs_holding_chunks(stack, batch_id, at_least=2, timeout=90)
        assert len(workers) >= 2, f"no helper run took a chunk within 90 s: {workers}"
        stack.mock_config(latency_ms=0)
        (batch,) = wait_all_terminal(client, [batch_id], 120)
    finally:
        stack.mock_config(latency_ms=0)
        stack.add_provider("openai", f"{stack.mock_url}/v1", "sk-mock-openai", 64, default=True)
    sent = stack.mock_stats()
    check = check_batch(client, batch, "f", 200, {})
    assert batch.status == "completed" and not check.problems, check.problems
    assert sent["total"] == 200  # no line was sent twice
    # The gateway knows which flow run's checkpoint it accepted for each chunk.
    chunks = httpx.get(
        f"{stack.url}/internal/batches/{batch_id}/chunks",
        headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"},
    ).json()
    runs = {c["done_by"] for c in chunks}
    assert len(chunks) == 8 and len(runs) > 1, runs
    names = {httpx.get(f"{stack.prefect.api_url}/flow_runs/{run}").json()["name"] for run in runs}
    helpers = {f"{batch_id}-helper-{n}" for n in range(1, FANOUT)}
    assert batch_id in names and names - {batch_id} <= helpers, names


def _runs_holding_chunks(stack: Stack, batch_id: str, at_least: int, timeout: float) -> set[str]:
    """The flow runs that have claimed or finished a chunk of the batch,
    polled until there are `at_least` of them or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        chunks = httpx.get(
            f"{stack.url}/internal/batches/{batch_id}/chunks",
            headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"},
        ).json()
        runs = {c[k] for c in chunks for k in ("claimed_by", "done_by") if c.get(k)}
        if len(runs) >= at_least or time.monotonic() > deadline:
            return runs
        time.sleep(0.25)
