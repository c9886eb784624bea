"""The gateway's Prometheus metrics: one `prometheus_client` registry per app.

Three sources meet here:
- Flow runs count their upstream requests in plain ints (tasks/run_metrics.py)
  and post them with each chunk checkpoint; `add_chunk` adds a report when
  the ledger accepts the checkpoint, so each is counted once, wherever the
  run executed. Lines completed / failed come from the same checkpoints, and
  from finalize for lines never sent (they add up to `request_counts`).
- Each report also carries the run's current AIMD window per provider: a
  level, kept per batch and run, shown summed per provider for the batches
  still live (asked of DuckDB at scrape), so an ended batch's windows leave
  the gauge instead of standing there at their last value.
- What the gateway knows itself: batches by status (asked of DuckDB at
  scrape time), webhook deliveries, and the latency of its own HTTP routes
  (`HttpMetricsMiddleware`).
- Counters start from zero when the gateway starts, as Prometheus expects
  of a process's counters.

The registry is the app's own, not prometheus_client's global default, so
several apps in one process (tests) never collide and nothing else's
metrics leak into a scrape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.records import LIVE_STATUSES, TERMINAL_STATUSES
from tasks.run_metrics import LATENCY_BUCKETS, RunMetrics

BATCH_STATUSES = sorted(LIVE_STATUSES | TERMINAL_STATUSES)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _RunCollector(Collector):
    """Families built at scrape time from the totals of the flow runs'
    reports and from DuckDB (batches by status)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not ask DuckDB (collect does)."""
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        with m.lock:
            runs = m.runs
            requests = dict(runs.requests)
            retries, throttled = dict(runs.retries), dict(runs.throttled)
            latency = {p: list(b) for p, b in runs.latency.items()}
            latency_sum = dict(runs.latency_sum)
            tokens = dict(runs.tokens)
            lines = dict(m.lines)
        window = m.live_windows()
        family = CounterMetricFamily(
            "batchgate_lines",
            "Batch lines finished, by outcome (failed: also the lines a cancel, expiry or "
            "budget stop left unsent).",
            labels=["outcome"],
        )
        for outcome, n in sorted(lines.items()):
            family.add_metric([outcome], n)
        yield family
        family = CounterMetricFamily(
            "batchgate_upstream_requests",
            "Upstream HTTP attempts, by provider and status class (error: no answer).",
            labels=["provider", "status_class"],
        )
        for (provider, status), n in sorted(requests.items()):
            family.add_metric([provider, status], n)
        yield family
        for name, doc, values in (
            ("batchgate_upstream_retries", "Upstream attempts that were retried.", retries),
            ("batchgate_upstream_429", "Upstream answers with status 429.", throttled),
        ):
            family = CounterMetricFamily(name, doc, labels=["provider"])
            for provider, n in sorted(values.items()):
                family.add_metric([provider], n)
            yield family
        hist = HistogramMetricFamily(
            "batchgate_upstream_latency_seconds",
            "Time of one upstream attempt, from its send to its answer.",
            labels=["provider"],
        )
        for provider, counts in sorted(latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip([*LATENCY_BUCKETS, float("inf")], counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([provider], buckets, latency_sum.get(provider, 0.0))
        yield hist
        family = CounterMetricFamily(
            "batchgate_tokens",
            "Tokens of successful upstream answers, by model and kind.",
            labels=["model", "kind"],
        )
        for (model, kind), n in sorted(tokens.items()):
            family.add_metric([model, kind], n)
        yield family
        gauge = GaugeMetricFamily(
            "batchgate_aimd_window",
            "Requests the flow runs of live batches may have in flight to a provider: "
            "the sum of each run's last reported AIMD window.",
            labels=["provider"],
        )
        for provider, n in sorted(window.items()):
            gauge.add_metric([provider], n)
        yield gauge
        gauge = GaugeMetricFamily("batchgate_batches", "Batches by status.", labels=["status"])
        status_counts = m.batch_counts()
        for status in BATCH_STATUSES:
            gauge.add_metric([status], status_counts.get(status, 0))
        yield gauge


class GatewayMetrics:
    def __init__(
        self,
        batch_counts: Callable[[], dict[str, int]],
        live_batch_ids: Callable[[], set[str]] = set,
    ) -> None:
        """`batch_counts` answers batches per status and `live_batch_ids` the
        batches not yet ended (the store, at scrape)."""
        self.batch_counts = batch_counts
        self.live_batch_ids = live_batch_ids
        self.lock = threading.Lock()
        self.runs = RunMetrics()
        # batch id -> flow run id -> provider -> that run's last window
        self.windows: dict[str, dict[str, dict[str, int]]] = {}
        self.lines: dict[str, int] = {"completed": 0, "failed": 0}
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_latency = Histogram(
            "batchgate_http_request_duration_seconds",
            "Time the gateway took to answer, by route template, method and status class.",
            ["route", "method", "status_class"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "batchgate_webhook_deliveries",
            "Webhook delivery attempts by event type and outcome "
            "(delivered, retry: will be tried again, failed: given up).",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.rejected_reports = Counter(
            "batchgate_metrics_reports_rejected",
            "Chunk metrics reports from flow runs that were malformed and not counted.",
            registry=self.registry,
        )
        self.registry.register(_RunCollector(self))

    def add_chunk(
        self,
        completed: int,
        failed: int,
        report: dict[str, Any] | None,
        *,
        batch_id: str = "",
        run: str | None = None,
    ) -> None:
        """An accepted checkpoint of `batch_id` posted by flow run `run`: its
        lines and the run's report (the ledger's `on_chunk` hook, called once
        per chunk)."""
        with self.lock:
            self.lines["completed"] += completed
            self.lines["failed"] += failed
            if report is None:
                return
            window = self.runs.add(report)
            if window:
                self.windows.setdefault(batch_id, {})[run or ""] = window
        if window is None:
            self.rejected_reports.inc()

    def live_windows(self) -> dict[str, int]:
        """The AIMD windows of the runs of live batches, summed per provider;
        the windows of batches that ended are forgotten here."""
        with self.lock:
            known = set(self.windows)
        ended = known - self.live_batch_ids() if known else set()
        totals: dict[str, int] = {}
        with self.lock:
            for batch_id in ended:
                self.windows.pop(batch_id, None)
            for runs in self.windows.values():
                for window in runs.values():
                    for provider, n in window.items():
                        totals[provider] = totals.get(provider, 0) + n
        return totals

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpMetricsMiddleware:
    """Observe each HTTP answer's latency, labelled by route template (not the
    raw path, which would make a series per object id). Pure ASGI, like the
    others; it times the whole answer, a streamed body included."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.http_latency.labels(route, scope["method"], f"{status // 100}xx").observe(
                time.perf_counter() - started
            )
