"""Budget arithmetic: budget periods, cost from the price table, and
whether a key's spend has reached its budget. Pure functions over plain
values, so the rules are tested without a gateway.

Spend is counted by the gateway when a chunk's checkpoint is posted
(`tasks/ledger.py`), from the per-model usage the run posts with it. A key
whose budget is reached gets new batches refused (429 `insufficient_quota`)
and its running batches told to stop at their next heartbeat or chunk post,
so a batch can overshoot by at most the chunks it has in flight
(`chunk_parallelism` chunks per running batch; docs/operations.md).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, get_args

from storage.records import BudgetPeriod

PERIODS: tuple[BudgetPeriod, ...] = get_args(BudgetPeriod)


class Price(Protocol):
    """A `[[prices]]` entry of the config file (`tasks.settings.PriceConfig`)."""

    model: str
    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None


def period_start(period: str | None, at: float | None = None) -> int:
    """The Unix second the current budget period began (UTC); 0 for no period."""
    if period is None:
        return 0
    moment = time.gmtime(time.time() if at is None else at)
    if period == "day":
        return calendar.timegm((moment.tm_year, moment.tm_mon, moment.tm_mday, 0, 0, 0))
    if period == "month":
        return calendar.timegm((moment.tm_year, moment.tm_mon, 1, 0, 0, 0))
    raise ValueError(f"unknown budget period {period!r}")


def period_end(period: str | None, at: float | None = None) -> int | None:
    """When the current period ends (UTC), None for a lifetime budget."""
    if period is None:
        return None
    start = time.gmtime(period_start(period, at))
    if period == "day":
        return period_start(period, at) + 86400
    year, month = (
        (start.tm_year + 1, 1) if start.tm_mon == 12 else (start.tm_year, start.tm_mon + 1)
    )
    return calendar.timegm((year, month, 1, 0, 0, 0))


def price_for(model: str | None, prices: Iterable[Price]) -> Price | None:
    """The price of `model`: its exact entry, else that of the name without
    its `provider/` prefix. None when the table does not list it (cost 0)."""
    if not model:
        return None
    table = {p.model: p for p in prices}
    found = table.get(model)
    if found is None and "/" in model:
        found = table.get(model.split("/", 1)[1])
    return found


def cost_of(
    model: str | None,
    input_tokens: float,
    output_tokens: float,
    cached_tokens: float,
    prices: Iterable[Price],
) -> float:
    """US dollars for this usage of `model`; cached input at its own price
    (the input price when the table gives none)."""
    price = price_for(model, prices)
    if price is None:
        return 0.0
    cached = min(max(0.0, cached_tokens), input_tokens)
    cached_price = (
        price.input_per_million
        if price.cached_input_per_million is None
        else price.cached_input_per_million
    )
    return (
        (input_tokens - cached) * price.input_per_million
        + cached * cached_price
        + output_tokens * price.output_per_million
    ) / 1_000_000


def per_model(usage_rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """A chunk's usage rows (one per requested model and provider, as the run
    posts them) summed per requested model: what prices and the learned
    characters-per-token ratio are keyed by. `lines` counts the answered
    lines, the ones whose characters and tokens are known."""
    totals: dict[str, dict[str, int]] = {}
    for row in usage_rows:
        into = totals.setdefault(str(row.get("model") or ""), dict.fromkeys(_MODEL_FIELDS, 0))
        into["lines"] += int(row.get("succeeded") or 0)
        for name in _MODEL_FIELDS[1:]:
            into[name] += int(row.get(name) or 0)
    return totals


_MODEL_FIELDS = (
    "lines",
    "input_chars",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "total_tokens",
)


def spend_of(stats: Mapping[str, Mapping[str, Any]], prices: Iterable[Price]) -> tuple[int, float]:
    """(tokens, dollars) of a chunk's per-model usage, as posted by the run."""
    table = list(prices)
    tokens, cost = 0, 0.0
    for model, s in stats.items():
        used_in, used_out = int(s.get("input_tokens") or 0), int(s.get("output_tokens") or 0)
        tokens += int(s.get("total_tokens") or used_in + used_out)
        cost += cost_of(model, used_in, used_out, int(s.get("cached_tokens") or 0), table)
    return tokens, cost


def budget_reached(
    max_tokens: int | None, max_cost_usd: float | None, tokens: int, cost_usd: float
) -> bool:
    """True once either limit is reached (a spend equal to the limit counts)."""
    if max_tokens is not None and tokens >= max_tokens:
        return True
    return max_cost_usd is not None and cost_usd >= max_cost_usd
