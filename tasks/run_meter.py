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

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from storage.records import ProviderRecord
from tasks.upstream import UpstreamClient, UpstreamResult
from tasks.usage import usage_of


@dataclass
class ModelStats:
    lines: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # Seconds per answered line, 8 bytes each: 200,000 lines hold 1.6 MB.
    latencies: array = field(default_factory=lambda: array("d"))

    def percentile(self, share: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


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
            stats.latencies.append(latency)
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
