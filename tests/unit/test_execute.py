"""How a chunk's lines are worked off (tasks/execute.py): a queue per provider
with as many workers as its `max_concurrency`, results in input order, and a
slow provider never holding up another's lines."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from storage.records import ProviderRecord
from tasks.execute import execute_lines
from tasks.upstream import UpstreamResult

CHAT = "/v1/chat/completions"
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


def line(custom_id: str, model: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": {"model": model, "messages": []}}


async def test_each_provider_gets_its_own_workers_and_results_keep_input_order() -> None:
    providers = [
        ProviderRecord(name="slow", base_url="http://slow/v1", api_key="", max_concurrency=2),
        ProviderRecord(name="fast", base_url="http://fast/v1", api_key="", max_concurrency=50),
    ]
    lines = [line(f"s{i}", "slow/m") for i in range(20)]
    lines += [line(f"f{i}", "fast/m") for i in range(20)]
    lines.append(line("nowhere", "nobody/m"))
    upstream = FakeUpstream()

    result = await execute_lines(lines, CHAT, providers, upstream, lambda: None)  # type: ignore[arg-type]

    assert upstream.most_in_flight == {"slow": 2, "fast": 20}
    # the fast provider's lines, queued behind 20 slow ones, finish before the 3rd slow one
    third_slow = sorted(upstream.done_at[f"s{i}"] for i in range(20))[2]
    assert max(upstream.done_at[f"f{i}"] for i in range(20)) < third_slow
    out = [orjson.loads(x) for x in result.output.splitlines()]
    assert [x["custom_id"] for x in out] == [x["custom_id"] for x in lines[:-1]]
    assert {x["response"]["body"]["model"] for x in out} == {"m"}  # prefix taken off
    (error,) = [orjson.loads(x) for x in result.errors.splitlines()]
    assert error["custom_id"] == "nowhere" and error["response"]["status_code"] == 404
    assert (result.completed, result.failed) == (40, 1)
