"""Batch control as plain logic and against the in-process worker
API: budget periods and costs, token estimates, the control state the
heartbeat carries, the pause gate, live concurrency ceilings, and a budget
that stops a run like a cancel."""

from __future__ import annotations

import asyncio
import calendar
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.metrics import GatewayMetrics
from harness.pipeline import CHAT, Harness, chat
from harness.servers import ThreadedServer
from storage.metadata import MetadataStore
from storage.records import KeyBudget, Spend
from tasks.aimd import AdaptiveLimiter
from tasks.budgets import budget_reached, cost_of, period_end, period_start, price_for, spend_of
from tasks.control_state import budget_state, control_state, record_spend
from tasks.estimate import (
    DEFAULT_CHARS_PER_TOKEN,
    EstimateTally,
    input_chars,
    max_output_tokens,
)
from tasks.run_control import RunControl
from tasks.settings import PriceConfig, load_settings
from tasks.upstream import UpstreamClient
from tasks.validate import validate_jsonl

PRICES = [
    PriceConfig(
        model="gpt-4o-mini",
        input_per_million=0.15,
        output_per_million=0.60,
        cached_input_per_million=0.075,
    ),
    PriceConfig(model="plain", input_per_million=1.0, output_per_million=2.0),
]


@pytest.fixture
def h(tmp_path: Path, mock: ThreadedServer) -> Iterator[Harness]:  # noqa: F811
    harness = Harness(tmp_path, mock.url)
    yield harness
    harness.store.close()


def utc(*parts: int) -> int:
    return calendar.timegm((*parts, 0, 0, 0)[:6])


# -- budgets ------------------------------------------------------------------


def test_periods_start_at_utc_midnight_and_the_first_of_the_month() -> None:
    at = utc(2026, 12, 31, 23, 59, 59)
    assert period_start("day", at) == utc(2026, 12, 31)
    assert period_start("month", at) == utc(2026, 12, 1)
    assert period_end("month", at) == utc(2027, 1, 1)
    assert period_end("day", at) == utc(2027, 1, 1)
    assert period_start(None, at) == 0 and period_end(None, at) is None
    with pytest.raises(ValueError):
        period_start("week", at)


def test_cost_counts_cached_input_at_its_own_price_and_finds_prefixed_models() -> None:
    # 1M input of which 400k cached, 1M output
    cost = cost_of("gpt-4o-mini", 1_000_000, 1_000_000, 400_000, PRICES)
    assert cost == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.60)
    assert price_for("openai/gpt-4o-mini", PRICES) is PRICES[0]
    # no cached price: cached input costs the input price
    assert cost_of("plain", 1_000_000, 0, 500_000, PRICES) == pytest.approx(1.0)
    assert cost_of("unknown", 10**6, 10**6, 0, PRICES) == 0.0


def test_prices_are_read_from_the_config_file_s_prices_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "batchgate.toml"
    config.write_text(
        '[[prices]]\nmodel = "gpt-4o-mini"\ninput_per_million = 0.15\n'
        "output_per_million = 0.60\ncached_input_per_million = 0.075\n\n"
        '[[prices]]\nmodel = "plain"\ninput_per_million = 1\noutput_per_million = 2\n'
    )
    monkeypatch.setenv("BATCHGATE_CONFIG", str(config))
    assert load_settings(data_dir=tmp_path).prices == PRICES


def test_spend_of_a_chunk_sums_models_and_a_budget_is_reached_at_equality() -> None:
    stats = {
        "gpt-4o-mini": {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500},
        "plain": {"input_tokens": 1_000_000, "output_tokens": 0, "cached_tokens": 0},
    }
    tokens, cost = spend_of(stats, PRICES)
    assert tokens == 1_001_500
    assert cost == pytest.approx((1000 * 0.15 + 500 * 0.6) / 1e6 + 1.0)
    assert budget_reached(100, None, 100, 0.0) and not budget_reached(100, None, 99, 9e9)
    assert budget_reached(None, 1.0, 0, 1.0) and not budget_reached(None, None, 10**9, 1e9)


def test_spend_is_kept_per_day_and_a_month_budget_sums_the_days(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "m.duckdb")
    try:
        store.add_spend("k", utc(2026, 11, 1), 10, 0.5)
        store.add_spend("k", utc(2026, 11, 2), 5, 0.25)
        store.add_spend("k", utc(2026, 11, 2), 5, 0.25)
        store.add_spend("other", utc(2026, 11, 2), 99, 9.0)
        assert store.get_spend("k", utc(2026, 11, 2)).tokens == 10
        assert store.get_spend("k", 0) == Spend(20, 1.0)
        assert store.get_spend("nobody", 0) == Spend()
    finally:
        store.close()


# -- estimates ------------------------------------------------------------------


def test_input_characters_and_output_bounds_of_each_endpoint() -> None:
    assert input_chars({"messages": [{"role": "user", "content": "abcd"}]}) == 4
    parts = [{"type": "text", "text": "ab"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert input_chars({"messages": [{"role": "user", "content": parts}]}) == 2
    assert input_chars({"input": ["abc", "de"], "instructions": "f"}) == 6
    assert input_chars({"prompt": [1, 2, 3]}) == 0  # token ids are not characters
    assert max_output_tokens({"max_tokens": 50, "n": 3}) == 150
    assert max_output_tokens({"max_completion_tokens": 7}) == 7
    assert max_output_tokens({"max_output_tokens": 9}) == 9
    assert max_output_tokens({"temperature": 0}) is None


def test_estimate_uses_the_learned_ratio_else_the_default_and_prices_it() -> None:
    from storage.records import ProviderRecord

    providers = [ProviderRecord(name="openai", base_url="http://x", api_key="", is_default=True)]
    tally = EstimateTally(providers)
    data = (
        b"".join(
            orjson.dumps(chat(i, max_tokens=10, messages=[{"role": "user", "content": "x" * 400}]))
            + b"\n"
            for i in range(10)
        )
        + orjson.dumps(chat(99, model="plain"))
        + b"\n"
    )
    result = validate_jsonl([data], CHAT, observe=tally.observe)
    assert result.ok
    # learned: 2 characters per token for gpt-4o-mini; nothing for "plain"
    estimate = tally.result({"gpt-4o-mini": (2000, 1000, 10)}, PRICES)
    rows = {r["model"]: r for r in estimate["models"]}
    mini, plain = rows["gpt-4o-mini"], rows["plain"]
    assert (mini["lines"], mini["provider"], mini["token_source"]) == (10, "openai", "learned")
    assert mini["estimated_input_tokens"] == 4000 / 2
    assert mini["max_output_tokens"] == 100
    assert plain["token_source"] == "default"
    assert plain["estimated_input_tokens"] == round(len("hi 99") / DEFAULT_CHARS_PER_TOKEN)
    assert plain["max_output_tokens"] is None and estimate["max_output_tokens"] is None
    assert estimate["lines"] == 11
    expected = (2000 * 0.15 + 100 * 0.60) / 1e6 + plain["estimated_input_tokens"] * 1.0 / 1e6
    assert estimate["estimated_cost_usd"] == pytest.approx(expected, abs=1e-6)


def test_tiktoken_counts_only_with_its_encoding_on_disk_and_never_downloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tiktoken is optional: a stand-in module plays it. Its encoding of
    gpt-4o-mini is on disk; that of "plain" would be fetched from the
    internet (tiktoken.load.read_file), which the estimate refuses."""
    import types

    from storage.records import ProviderRecord
    from tasks import estimate as estimate_module

    fetched: list[str] = []
    load = types.ModuleType("tiktoken.load")
    load.read_file = fetched.append  # type: ignore[attr-defined]
    fake = types.ModuleType("tiktoken")
    fake.load = load  # type: ignore[attr-defined]

    class Words:
        def encode(self, text: str) -> list[str]:
            return text.split()

    def encoding_for_model(model: str) -> Words:
        if model != "gpt-4o-mini":
            load.read_file(f"https://example.invalid/{model}.tiktoken")  # type: ignore[attr-defined]
        return Words()

    fake.encoding_for_model = encoding_for_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    monkeypatch.setitem(sys.modules, "tiktoken.load", load)
    estimate_module._tiktoken_encoding.cache_clear()
    try:
        providers = [
            ProviderRecord(name="openai", base_url="http://x", api_key="", is_default=True)
        ]
        tally = EstimateTally(providers)
        for line in (chat(1), chat(2), chat(3, model="plain")):
            tally.observe(line)
        rows = {r["model"]: r for r in tally.result({}, PRICES)["models"]}
        # A tokenizer on disk wins over a ratio learned from finished batches.
        learned = {"gpt-4o-mini": (1000, 100, 1), "plain": (1000, 100, 1)}
        rows_learned = {r["model"]: r for r in tally.result(learned, PRICES)["models"]}
    finally:
        estimate_module._tiktoken_encoding.cache_clear()
    assert fetched == []
    mini, plain = rows["gpt-4o-mini"], rows["plain"]
    # "hi N" x2 (2 words each), and OpenAI's overhead of one message and the reply
    overhead = estimate_module.MESSAGE_OVERHEAD + estimate_module.REPLY_PRIMING
    assert (mini["token_source"], mini["estimated_input_tokens"]) == ("tiktoken", 4 + 2 * overhead)
    assert plain["token_source"] == "default"
    assert rows_learned["gpt-4o-mini"]["token_source"] == "tiktoken"
    assert rows_learned["plain"]["token_source"] == "learned"


def test_validation_shows_only_valid_lines_to_the_estimate() -> None:
    seen: list[str] = []
    data = orjson.dumps(chat(1)) + b"\n{not json\n" + orjson.dumps(chat(1)) + b"\n"
    result = validate_jsonl([data], CHAT, observe=lambda line: seen.append(line["custom_id"]))
    assert [e.code for e in result.errors] == ["invalid_json_line", "duplicate_custom_id"]
    assert seen == ["req-1"]


# -- the control state and the run's obedience ------------------------------------


def test_control_state_carries_pause_budget_stop_and_ceilings(h: Harness) -> None:
    batch_id = h.add_batch([chat(i) for i in range(3)])
    state = control_state(h.store, batch_id, h.key.id)
    assert state == {
        "paused": False,
        "stop_reason": None,
        "ceilings": {"openai": 16, "mistral": 64},
    }
    h.store.set_paused(batch_id, True)
    h.store.set_provider_ceiling("openai", 4)
    h.store.set_budget(KeyBudget(h.key.id, max_tokens=100))
    record_spend(h.store, h.key.id, {"m": {"input_tokens": 60, "output_tokens": 40}}, [])
    state = control_state(h.store, batch_id, h.key.id)
    assert state["paused"] and state["stop_reason"] == "budget_exceeded"
    assert state["ceilings"]["openai"] == 4


class _NoAPI:
    def renew(self, batch_id: str, token: str) -> dict[str, Any]:
        raise AssertionError("no heartbeat in this test")


async def test_the_gate_holds_while_paused_and_opens_on_resume_or_stop() -> None:
    control = RunControl(_NoAPI(), "b", "t", {"status": "in_progress", "paused": True})  # type: ignore[arg-type]
    waiter = asyncio.create_task(control.gate())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    control.update({"status": "in_progress", "paused": False})
    await asyncio.wait_for(waiter, 1)
    control.update({"status": "in_progress", "paused": True})
    waiter = asyncio.create_task(control.gate())
    await asyncio.sleep(0.05)
    control.update({"status": "cancelling", "paused": True})  # a cancel ends a pause
    await asyncio.wait_for(waiter, 1)
    assert control.reason == "cancelled"
    control.update({"status": "in_progress", "stop_reason": "budget_exceeded"})
    assert control.reason == "budget_exceeded"


async def test_a_lowered_ceiling_grants_nothing_until_in_flight_falls_under_it() -> None:
    limiter = AdaptiveLimiter(64, initial=8)
    held = [await limiter.acquire() for _ in range(8)]
    limiter.set_ceiling(2)
    waiter = asyncio.create_task(limiter.acquire())
    for _ in range(6):
        limiter.release()
        await asyncio.sleep(0)
        assert not waiter.done()  # 7..2 in flight: still at or above the ceiling
    limiter.release()  # one in flight now: room for one more
    await asyncio.wait_for(waiter, 1)
    assert limiter.in_flight == 2 and len(held) == 8


# -- a budget stops a run like a cancel --------------------------------------------


async def test_a_budget_stops_the_run_and_fails_the_batch_keeping_finished_lines(
    h: Harness,
) -> None:
    # A mock answer to "hi N" costs 14 or 15 tokens: about 48 lines fit.
    budget = 700
    h.store.set_budget(KeyBudget(h.key.id, max_tokens=budget))
    metrics = GatewayMetrics(h.store.batch_status_counts)
    h.ledger.on_chunk = metrics.add_chunk
    batch_id = h.add_batch([chat(i) for i in range(100)])
    batch = await h.run(batch_id)
    assert batch.status == "failed"
    assert batch.errors and batch.errors[0]["code"] == "budget_exceeded"
    # Chunks of 10 run two at a time; spend is counted as each is posted, so
    # the run overshoots by at most the other chunk in flight.
    assert batch.usage is not None
    spent = batch.usage["total_tokens"]
    assert budget <= spent <= budget + 2 * 10 * 15
    assert 40 <= batch.completed <= 70
    assert batch.completed + batch.failed == 100
    errors = h.lines(batch.error_file_id) if batch.error_file_id else []
    assert {e["error"]["code"] for e in errors} == {"budget_exceeded"}
    assert len(errors) == batch.failed
    assert not h.stats()["duplicates_ok"]
    # /metrics counts the lines no request was sent for too: its lines
    # counters match the batch's request counts.
    lines = {
        s.labels["outcome"]: s.value
        for s in metrics.registry.collect()
        for s in s.samples
        if s.name == "batchgate_lines_total"
    }
    assert lines == {"completed": batch.completed, "failed": batch.failed}


def test_a_cost_budget_counts_dollars_from_the_price_table(h: Harness) -> None:
    h.store.set_budget(KeyBudget(h.key.id, max_cost_usd=1.0, budget_period="month"))
    chunk = {"plain": {"input_tokens": 600_000, "output_tokens": 100_000, "lines": 3}}
    record_spend(h.store, h.key.id, chunk, PRICES)
    state = budget_state(h.store, h.key.id)
    assert state is not None
    assert state["spent_cost_usd"] == pytest.approx(0.8) and not state["exceeded"]
    record_spend(h.store, h.key.id, chunk, PRICES)
    state = budget_state(h.store, h.key.id)
    assert state is not None and state["exceeded"] and state["spent_tokens"] == 1_400_000


def test_the_client_takes_announced_ceilings_for_limiters_old_and_new() -> None:
    from storage.records import ProviderRecord

    client = UpstreamClient()
    old = ProviderRecord(name="a", base_url="http://a", api_key="", max_concurrency=64)
    assert client.limiter(old).window.ceiling == 64
    client.set_ceilings({"a": 4, "b": 2})
    assert client.limiter(old).window.ceiling == 4  # a record from before keeps it at 4
    fresh = ProviderRecord(name="b", base_url="http://b", api_key="", max_concurrency=64)
    assert client.limiter(fresh).window.ceiling == 2
