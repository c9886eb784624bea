"""What `batchgate run` shows while it works: lines finished, failures, the
provider windows, and per model the lines, tokens and request latency.

`MeteredClient` is the engine's own `UpstreamClient` with a counter around
`send` (one call per line, after all its attempts), so nothing in the
execute path changes and the counts are taken where the line's outcome is
known. Latency is the result's `latency_ms`, the final attempt's request
time: what the provider took to answer, without the time the line queued
for a slot or waited between retries.

The meter covers the lines this process sent; the batch record stays the
source of truth for the whole file (a resumed run sent only part of it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from storage.records import ProviderRecord
from tasks.upstream import UpstreamClient, UpstreamResult
from tasks.usage import usage_of

# Latencies are counted in buckets 1 % wide on a log scale: percentiles to
# within 1 % from a few hundred counters, however long the file (a list of
# every latency grew 8 bytes a line: 1.6 MB at 200,000 lines, against a
# flat memory target).
_BUCKET = math.log(1.01)
_SHORTEST = 1e-6  # seconds; anything faster counts as this


@dataclass
class ModelStats:
    lines: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    answered: int = 0  # lines with a latency
    # bucket -> answered lines whose latency is in (1.01**(b-1), 1.01**b] seconds
    latency_buckets: dict[int, int] = field(default_factory=dict)

    def add_latency(self, seconds: float) -> None:
        bucket = math.ceil(math.log(max(seconds, _SHORTEST)) / _BUCKET)
        self.latency_buckets[bucket] = self.latency_buckets.get(bucket, 0) + 1
        self.answered += 1

    def percentile(self, share: float) -> float | None:
        """The latency below which `share` of the answered lines fall, as the
        upper bound of its bucket (at most 1 % above the true value)."""
        if not self.answered:
            return None
        rank = min(self.answered - 1, int(share * self.answered))
        seen = 0
        for bucket in sorted(self.latency_buckets):
            seen += self.latency_buckets[bucket]
            if seen > rank:
                return math.exp(bucket * _BUCKET)
        return None  # not reached: the buckets count every answered line


class Meter:
    """Counters read by the display; written on the event loop only."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.finished = 0
        self.failed = 0
        self.models: dict[str, ModelStats] = {}

    def line(self, model: str, result: UpstreamResult, latency: float | None) -> None:
        stats = self.models.get(model)
        if stats is None:
            stats = self.models[model] = ModelStats()
        stats.lines += 1
        self.finished += 1
        if latency is not None and result.status_code is not None:
            stats.add_latency(latency)
        if result.ok:
            usage = result.usage if result.usage is not None else usage_of(result.body)
            stats.input_tokens += usage["input_tokens"]
            stats.output_tokens += usage["output_tokens"]
        else:
            stats.failed += 1
            self.failed += 1


def _model_of(body: bytes | None) -> str:
    """The request's model; a byte search for the usual compact `"model":"…"`
    (orjson writes it so), a full parse only when that finds nothing plain."""
    if body is None:
        return "?"
    at = body.find(b'"model":"')
    if at >= 0:
        start = at + 9
        end = body.find(b'"', start)
        if end > start and b"\\" not in body[start:end]:
            return body[start:end].decode()
    try:
        model = orjson.loads(body).get("model")
    except (orjson.JSONDecodeError, AttributeError):
        return "?"
    return model if isinstance(model, str) else "?"


class MeteredClient(UpstreamClient):
    """`UpstreamClient` that reports each line's outcome to a `Meter`."""

    def __init__(self, meter: Meter, **options: Any) -> None:
        super().__init__(**options)
        self.meter = meter
        self.providers: list[ProviderRecord] = []

    @classmethod
    def for_run(cls, meter: Meter, settings: Any) -> MeteredClient:
        return cls(
            meter,
            max_attempts=settings.max_attempts,
            backoff_base=settings.backoff_base_seconds,
            backoff_max=settings.backoff_max_seconds,
            timeout=settings.request_timeout_seconds,
        )

    def windows(self) -> dict[str, tuple[int, int, int]]:
        """Per provider in use: (window now, requests in flight, ceiling)."""
        return {
            name: (limiter.window.limit, limiter.in_flight, limiter.window.ceiling)
            for name, limiter in self._limiters.items()
        }

    async def send(
        self,
        provider: ProviderRecord,
        path: str,
        body: bytes | Callable[[], bytes],
        *,
        custom_id: str | None = None,
        should_stop: Callable[[], bool] | None = None,
        **options: Any,
    ) -> UpstreamResult:
        sent: list[bytes] = []

        def encoded() -> bytes:
            data = body if isinstance(body, bytes) else body()
            sent.append(data)
            return data

        result = await super().send(
            provider, path, encoded, custom_id=custom_id, should_stop=should_stop, **options
        )
        if result.error_code != "stopped":  # a stopped line runs again or is cancelled
            model = _model_of(sent[0] if sent else None)
            latency = None if result.latency_ms is None else result.latency_ms / 1000.0
            self.meter.line(model, result, latency)
        return result
