"""An upstream client that answers without a provider: each line after its
provider's delay ("slow" or "fast"), counting what it had in flight, for
tests of how a chunk's lines are worked off."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import orjson

from storage.records import ProviderRecord
from tasks.upstream import UpstreamResult

DELAY = {"slow": 0.05, "fast": 0.0}


class FakeUpstream:
    """Answers every line after its provider's delay; records what it saw."""

    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self.done_at: dict[str, float] = {}

    async def send(
        self,
        provider: ProviderRecord,
        path: str,
        body: Callable[[], bytes],
        *,
        custom_id: str,
        should_stop: Callable[[], bool],
    ) -> UpstreamResult:
        self.in_flight[provider.name] += 1
        self.most_in_flight[provider.name] = max(
            self.most_in_flight[provider.name], self.in_flight[provider.name]
        )
        await asyncio.sleep(DELAY[provider.name])
        self.in_flight[provider.name] -= 1
        self.done_at[custom_id] = time.monotonic()
        sent = orjson.loads(body())
        return UpstreamResult(
            200, {"model": sent["model"], "echo": custom_id}, "req", None, None, 1
        )
