"""How a chunk's lines are worked off (tasks/execute.py): a queue per provider
with as many workers as its `max_concurrency`, results in input order, and a
slow provider never holding up another's lines."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from batchgate.mock_provider.server import MockConfig, serve_mock_in_thread
from harness.fake_upstream import FakeUpstream
from storage.records import ProviderRecord
from tasks.execute import execute_lines
from tasks.upstream import UpstreamClient

CHAT = "/v1/chat/completions"


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


def mock_provider(base_url: str) -> ProviderRecord:
    return ProviderRecord(name="mock", base_url=base_url, api_key="sk-test", max_concurrency=8)


def client_request_ids(base_url: str) -> dict[str, list[str]]:
    return httpx.get(base_url.removesuffix("/v1") + "/stats/client-request-ids").json()


async def test_every_answered_line_has_a_string_request_id() -> None:
    """The provider's `x-request-id`, else batchgate's own, which
    is what the provider received as `X-Client-Request-Id`; a line batchgate
    answers itself (unknown provider prefix) carries batchgate's own id."""
    lines = [line(f"c{i}", "mock/gpt-4o-mini") for i in range(30)]
    lines.append(line("nowhere", "nobody/m"))
    with serve_mock_in_thread(MockConfig(missing_request_id_rate=0.5, seed=3)) as url:
        async with UpstreamClient(max_attempts=1) as upstream:
            result = await execute_lines(lines, CHAT, [mock_provider(url)], upstream, lambda: None)
        sent = client_request_ids(url)

    out = [orjson.loads(x) for x in result.output.splitlines()]
    assert len(out) == 30
    ids = {x["custom_id"]: x["response"]["request_id"] for x in out}
    theirs = {c for c, rid in ids.items() if rid.startswith("req_mock")}
    ours = set(ids) - theirs
    assert theirs and ours  # the seeded mock left out the header on some answers only
    assert all(ids[c] == sent[c][0] and ids[c].startswith("req_") for c in ours)
    assert all(ids[c] != sent[c][0] for c in theirs)
    (error,) = [orjson.loads(x) for x in result.errors.splitlines()]
    assert error["custom_id"] == "nowhere" and error["response"]["status_code"] == 404
    assert isinstance(error["response"]["request_id"], str)
    assert error["response"]["request_id"].startswith("req_")
    assert "nowhere" not in sent


@pytest.mark.parametrize("reason", ["cancelled", "expired"])
async def test_lines_never_sent_keep_a_null_response(reason: str) -> None:
    with serve_mock_in_thread(MockConfig()) as url:
        async with UpstreamClient() as upstream:
            result = await execute_lines(
                [line("c0", "mock/m")], CHAT, [mock_provider(url)], upstream, lambda: reason
            )
        assert client_request_ids(url) == {}
    (error,) = [orjson.loads(x) for x in result.errors.splitlines()]
    assert error["response"] is None and error["error"]["code"] == f"batch_{reason}"


async def test_a_request_that_never_got_an_answer_keeps_a_null_response() -> None:
    """A timeout reached the provider but got no HTTP answer: no response, so no
    request_id (`"response": null` and the error shape)."""
    with serve_mock_in_thread(MockConfig(latency_ms=1000)) as url:
        async with UpstreamClient(max_attempts=1, timeout=0.2) as upstream:
            result = await execute_lines(
                [line("c0", "mock/m")], CHAT, [mock_provider(url)], upstream, lambda: None
            )
    (error,) = [orjson.loads(x) for x in result.errors.splitlines()]
    assert error["response"] is None
    assert error["error"]["code"] == "timeout" and "timed out" in error["error"]["message"]
