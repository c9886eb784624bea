"""Metrics counted by flow runs in plain ints, posted with chunk checkpoints
and added up by the gateway exactly once per accepted checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from harness.pipeline import Harness, chat
from harness.servers import ThreadedServer
from tasks.run_metrics import LATENCY_BUCKETS, RunMetrics
from tasks.usage import usage_of
from tasks.worker_api import LocalWorkerAPI


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def total(scrape: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in scrape.items() if n == name and set(labels.items()) <= set(ls))


def test_a_report_hands_over_what_was_counted_and_starts_again() -> None:
    run = RunMetrics()
    assert run.report() is None
    run.attempt("openai", 200, 0.02)
    run.attempt("openai", 429, 0.001)
    run.attempt("mistral", None, 700.0)
    run.retry("openai")
    run.add_tokens("gpt-4o-mini", usage_of({"usage": {"prompt_tokens": 7, "completion_tokens": 3}}))
    run.add_tokens("resp-model", usage_of({"usage": {"input_tokens": 5, "output_tokens": 2}}))
    report = run.report({"openai": 12})
    assert report is not None and run.report() is None

    gateway = RunMetrics()
    # A window is a level: handed back for the gateway to keep, not added up.
    assert gateway.add(report) == gateway.add(report) == {"openai": 12}
    assert gateway.requests == {("openai", "2xx"): 2, ("openai", "4xx"): 2, ("mistral", "error"): 2}
    assert gateway.throttled == {"openai": 2} and gateway.retries == {"openai": 2}
    assert gateway.latency["mistral"][len(LATENCY_BUCKETS)] == 2  # past the last bound: +Inf
    assert gateway.tokens == {
        ("gpt-4o-mini", "input"): 14,
        ("gpt-4o-mini", "output"): 6,
        ("resp-model", "input"): 10,
        ("resp-model", "output"): 4,
    }


def test_the_aimd_gauge_sums_the_runs_of_live_batches_and_forgets_ended_ones() -> None:
    live = {"batch_a", "batch_b"}
    gateway = GatewayMetrics(dict, lambda: set(live))
    for batch_id, run, window in [
        ("batch_a", "run-1", {"openai": 8}),
        ("batch_a", "run-2", {"openai": 4, "mistral": 2}),
        ("batch_a", "run-1", {"openai": 10}),  # the same run's later window replaces it
        ("batch_b", "run-3", {"openai": 1}),
    ]:
        report = RunMetrics().report(window)
        gateway.add_chunk(1, 0, report, batch_id=batch_id, run=run)
    scrape = samples(gateway.render())
    assert total(scrape, "batchgate_aimd_window", provider="openai") == 15
    assert total(scrape, "batchgate_aimd_window", provider="mistral") == 2
    live.discard("batch_a")
    scrape = samples(gateway.render())
    assert total(scrape, "batchgate_aimd_window", provider="openai") == 1
    assert ("batchgate_aimd_window", (("provider", "mistral"),)) not in scrape
    assert set(gateway.windows) == {"batch_b"}


@pytest.mark.parametrize(
    "report",
    [
        "nonsense",
        {"requests": [["openai", "2xx", -1]]},
        {"requests": [["openai", "2xx", 1]], "latency": {"openai": {"buckets": [1], "sum": 0}}},
        {"retries": {"openai": True}},
    ],
)
def test_a_malformed_report_is_refused_whole(report: Any) -> None:
    gateway = GatewayMetrics(dict)
    gateway.add_chunk(3, 1, report)
    scrape = samples(gateway.render())
    assert total(scrape, "batchgate_upstream_requests_total") == 0
    assert total(scrape, "batchgate_metrics_reports_rejected_total") == 1
    assert total(scrape, "batchgate_lines_total", outcome="completed") == 3  # lines still count


class TwicePosting(LocalWorkerAPI):
    """Every checkpoint arrives twice, as when an HTTP post is retried after
    the gateway accepted it but its answer was lost."""

    def record_chunk(self, batch_id: str, token: str, index: int, **result: Any) -> dict[str, Any]:
        self.ledger.record_chunk(batch_id, token, index, **result)
        return self.ledger.record_chunk(batch_id, token, index, **result)


@pytest.fixture
def harness(tmp_path: Path, mock: ThreadedServer) -> Iterator[Harness]:  # noqa: F811
    h = Harness(tmp_path, mock.url)
    yield h
    h.store.close()


async def test_the_counters_match_the_provider_s_count_even_with_checkpoints_posted_twice(
    harness: Harness,
) -> None:
    metrics = GatewayMetrics(harness.store.batch_status_counts, harness.store.live_batch_ids)
    harness.ledger.on_chunk = metrics.add_chunk
    harness.api = TwicePosting(harness.ledger, harness.store)
    httpx.post(f"{harness.mock_url}/config", json={"rate_429": 0.3, "retry_after": 0.01})
    batch_id = harness.add_batch([chat(i) for i in range(40)])

    batch = await harness.run(batch_id)

    stats = harness.stats()
    scrape = samples(metrics.render())
    assert batch.status == "completed" and batch.completed + batch.failed == 40
    assert stats["status_429"] > 0
    assert total(scrape, "batchgate_upstream_requests_total") == stats["total"]
    assert total(scrape, "batchgate_upstream_requests_total", status_class="2xx") == batch.completed
    assert total(scrape, "batchgate_upstream_429_total") == stats["status_429"]
    assert total(scrape, "batchgate_upstream_retries_total") == stats["total"] - 40
    assert total(scrape, "batchgate_upstream_latency_seconds_count") == stats["total"]
    assert total(scrape, "batchgate_lines_total", outcome="completed") == batch.completed
    assert total(scrape, "batchgate_lines_total", outcome="failed") == batch.failed
    assert total(scrape, "batchgate_tokens_total", kind="input") == batch.usage["input_tokens"]
    assert total(scrape, "batchgate_tokens_total", kind="output") == batch.usage["output_tokens"]
    assert total(scrape, "batchgate_batches", status="completed") == 1
    assert total(scrape, "batchgate_aimd_window") == 0  # the batch ended: no window stands
