"""Counters a flow run keeps about its upstream requests, in plain ints.

The gateway serves the Prometheus metrics (`gateway/metrics.py`), but flow
runs may run on other machines, so each run counts here and hands what it
counted since its last report to the gateway with each chunk checkpoint
(`report()`, the `metrics` field of the chunk post). The gateway adds a
report only when it accepts the checkpoint, so a re-sent post is not counted
twice. Counting costs a few dict updates per attempt: no Prometheus object
lives on the hot path of a run.

A report is JSON:
    {"requests": [[provider, status_class, n], ...], "retries": {provider: n},
     "throttled": {provider: n}, "latency": {provider: {"buckets": [n, ...],
     "sum": seconds}}, "tokens": [[model, "input"|"output", n], ...],
     "window": {provider: current AIMD window}}
`buckets` are per-bucket (not cumulative) counts over LATENCY_BUCKETS plus
one for +Inf. The gateway keeps the same structure as running totals, except
for `window`: a window is a level, not a count, so `add` hands it back for
the gateway to keep per run (gateway/metrics.py) instead of adding it up.
"""

from __future__ import annotations

import bisect
from typing import Any

# Upper bounds (seconds) of the upstream latency histogram.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)  # fmt: skip


_TOKEN_KINDS = (("input", "input_tokens"), ("output", "output_tokens"))
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


def status_class(status: int | None) -> str:
    """ "2xx".."5xx", or "error" when no answer came (timeout, connection)."""
    if status is None:
        return "error"
    return _STATUS_CLASSES.get(status // 100) or f"{status // 100}xx"


class RunMetrics:
    """Running counts; `report()` hands them over and starts again from zero."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.retries: dict[str, int] = {}
        self.throttled: dict[str, int] = {}
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.window: dict[str, int] = {}

    # -- counting (the flow run) -------------------------------------------

    def attempt(self, provider: str, status: int | None, seconds: float) -> None:
        """One HTTP attempt to `provider` ended with `status` after `seconds`."""
        key = (provider, status_class(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        if status == 429:
            self.throttled[provider] = self.throttled.get(provider, 0) + 1
        buckets = self.latency.get(provider)
        if buckets is None:
            buckets = self.latency[provider] = [0] * (len(LATENCY_BUCKETS) + 1)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[provider] = self.latency_sum.get(provider, 0.0) + seconds

    def retry(self, provider: str) -> None:
        self.retries[provider] = self.retries.get(provider, 0) + 1

    def add_tokens(self, model: str, usage: dict[str, Any]) -> None:
        """Tokens of one successful answer, by the model that answered. `usage`
        is already in the batch's shape (`tasks.usage.usage_of`, computed once
        per answer as `UpstreamResult.usage`), so the body is not read again."""
        tokens = self.tokens
        for kind, name in _TOKEN_KINDS:
            value = usage[name]
            if value:
                key = (model, kind)
                tokens[key] = tokens.get(key, 0) + value

    def report(self, windows: dict[str, int] | None = None) -> dict[str, Any] | None:
        """What was counted since the last report, as JSON; None if nothing."""
        if windows:
            self.window.update(windows)
        if not (self.requests or self.window):
            return None
        out = {
            "requests": [[p, c, n] for (p, c), n in self.requests.items()],
            "retries": self.retries,
            "throttled": self.throttled,
            "latency": {
                p: {"buckets": b, "sum": self.latency_sum.get(p, 0.0)}
                for p, b in self.latency.items()
            },
            "tokens": [[m, k, n] for (m, k), n in self.tokens.items()],
            "window": self.window,
        }
        self.reset()
        return out

    # -- adding up (the gateway) -------------------------------------------

    def add(self, report: Any) -> dict[str, int] | None:
        """Add a run's report to these totals and answer its AIMD windows. A
        malformed report (a run of another version, say) is ignored as a
        whole: None."""
        try:
            parsed = _parse(report)
        except (TypeError, ValueError, KeyError, AttributeError):
            return None
        requests, retries, throttled, latency, tokens, window = parsed
        for key, n in requests:
            self.requests[key] = self.requests.get(key, 0) + n
        for provider, n in retries:
            self.retries[provider] = self.retries.get(provider, 0) + n
        for provider, n in throttled:
            self.throttled[provider] = self.throttled.get(provider, 0) + n
        for provider, buckets, total in latency:
            mine = self.latency.setdefault(provider, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, n in enumerate(buckets):
                mine[i] += n
            self.latency_sum[provider] = self.latency_sum.get(provider, 0.0) + total
        for key, n in tokens:
            self.tokens[key] = self.tokens.get(key, 0) + n
        return window


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ValueError(f"not a label: {value!r}")
    return value


# A checked report: requests by (provider, code), retries and throttles by
# provider, latency histograms, tokens by (model, kind), AIMD windows.
ParsedReport = tuple[
    list[tuple[tuple[str, str], int]],
    list[tuple[str, int]],
    list[tuple[str, int]],
    list[tuple[str, list[int], float]],
    list[tuple[tuple[str, str], int]],
    dict[str, int],
]


def _parse(report: Any) -> ParsedReport:
    """A report checked all through before any of it is added."""
    if not isinstance(report, dict):
        raise TypeError("a report is an object")
    requests = [((_text(p), _text(c)), _count(n)) for p, c, n in report.get("requests", [])]
    retries = [(_text(p), _count(n)) for p, n in report.get("retries", {}).items()]
    throttled = [(_text(p), _count(n)) for p, n in report.get("throttled", {}).items()]
    latency = []
    for provider, hist in report.get("latency", {}).items():
        buckets = [_count(n) for n in hist["buckets"]]
        if len(buckets) != len(LATENCY_BUCKETS) + 1:
            raise ValueError("latency buckets do not match")
        total = hist["sum"]
        if not isinstance(total, int | float) or total < 0:
            raise ValueError("latency sum")
        latency.append((_text(provider), buckets, float(total)))
    tokens = [((_text(m), _text(k)), _count(n)) for m, k, n in report.get("tokens", [])]
    window = {_text(p): _count(n) for p, n in report.get("window", {}).items()}
    return requests, retries, throttled, latency, tokens, window
