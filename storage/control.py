"""The metadata of batch control: key budgets and their spend,
characters per token learned per model, and a batch's pause switch.

Plain functions over a `MetadataStore`, in a module of their own so the
records of keys and batches stay as they were. The arithmetic (periods,
costs, whether a budget is spent) is in `tasks/budgets.py`; this module only
stores and reads numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage.metadata import MetadataStore, now


@dataclass(frozen=True)
class KeyBudget:
    """A key's limits per period; None means no limit of that kind."""

    api_key_id: str
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    budget_period: str | None = None  # "day", "month" or None (the key's lifetime)

    @property
    def limited(self) -> bool:
        return self.max_tokens is not None or self.max_cost_usd is not None


@dataclass(frozen=True)
class Spend:
    tokens: int = 0
    cost_usd: float = 0.0


# -- budgets ----------------------------------------------------------------


def set_budget(store: MetadataStore, budget: KeyBudget) -> None:
    with store.transaction(writes=["key_budgets"]) as conn:
        conn.execute("DELETE FROM key_budgets WHERE api_key_id = ?", [budget.api_key_id])
        if budget.limited:
            conn.execute(
                "INSERT INTO key_budgets VALUES (?, ?, ?, ?)",
                [budget.api_key_id, budget.max_tokens, budget.max_cost_usd, budget.budget_period],
            )


def get_budget(store: MetadataStore, api_key_id: str | None) -> KeyBudget | None:
    if api_key_id is None:
        return None
    rows = store.query(
        "SELECT max_tokens, max_cost_usd, budget_period FROM key_budgets WHERE api_key_id = ?",
        [api_key_id],
    )
    if not rows:
        return None
    max_tokens, max_cost, period = rows[0]
    return KeyBudget(api_key_id, max_tokens, max_cost, period)


def all_budgets(store: MetadataStore) -> dict[str, KeyBudget]:
    rows = store.query(
        "SELECT api_key_id, max_tokens, max_cost_usd, budget_period FROM key_budgets"
    )
    return {r[0]: KeyBudget(*r) for r in rows}


def add_spend(
    store: MetadataStore, api_key_id: str, period_start: int, tokens: int, cost_usd: float
) -> None:
    """Add to the key's spend of the period (a day) starting at `period_start`."""
    store._write(
        "INSERT INTO key_spend VALUES (?, ?, ?, ?) ON CONFLICT (api_key_id, period_start) "
        "DO UPDATE SET tokens = tokens + excluded.tokens, cost_usd = cost_usd + excluded.cost_usd",
        [api_key_id, period_start, tokens, cost_usd],
        ["key_spend"],
    )


def get_spend(store: MetadataStore, api_key_id: str, since: int) -> Spend:
    """The key's spend over the days (rows of `add_spend`) from `since` on."""
    rows = store.query(
        "SELECT sum(tokens), sum(cost_usd) FROM key_spend "
        "WHERE api_key_id = ? AND period_start >= ?",
        [api_key_id, since],
    )
    if not rows or rows[0][0] is None:
        return Spend()
    return Spend(int(rows[0][0]), float(rows[0][1]))


# -- characters per token, learned ------------------------------------------


def add_text_stats(store: MetadataStore, stats: Mapping[str, Mapping[str, Any]]) -> None:
    """Add a finished chunk's input characters and tokens per model."""
    rows = [
        (model, int(s.get("input_chars") or 0), int(s.get("input_tokens") or 0), int(s["lines"]))
        for model, s in stats.items()
        if s.get("input_chars") and s.get("input_tokens") and s.get("lines")
    ]
    if not rows:
        return
    with store.transaction(writes=["model_text_stats"]) as conn:
        for row in rows:
            conn.execute(
                "INSERT INTO model_text_stats VALUES (?, ?, ?, ?) ON CONFLICT (model) DO UPDATE "
                "SET input_chars = input_chars + excluded.input_chars, "
                "input_tokens = input_tokens + excluded.input_tokens, "
                "lines = lines + excluded.lines",
                list(row),
            )


def text_stats(store: MetadataStore) -> dict[str, tuple[int, int, int]]:
    """(input characters, input tokens, lines) per model seen in finished chunks."""
    rows = store.query("SELECT model, input_chars, input_tokens, lines FROM model_text_stats")
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


# -- pause ------------------------------------------------------------------


def set_paused(store: MetadataStore, batch_id: str, paused: bool) -> None:
    store._write(
        "INSERT INTO batch_controls VALUES (?, ?, ?) ON CONFLICT (batch_id) "
        "DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
        [batch_id, paused, now()],
        ["batch_controls"],
    )


def is_paused(store: MetadataStore, batch_id: str) -> bool:
    rows = store.query("SELECT paused FROM batch_controls WHERE batch_id = ?", [batch_id])
    return bool(rows and rows[0][0])


def provider_ceilings(store: MetadataStore) -> dict[str, int]:
    """Each provider's `max_concurrency`, without opening its key."""
    rows = store.query("SELECT name, max_concurrency FROM providers")
    return {r[0]: int(r[1]) for r in rows}


def set_provider_ceiling(store: MetadataStore, name: str, max_concurrency: int) -> bool:
    rows = store._write(
        "UPDATE providers SET max_concurrency = ? WHERE name = ? RETURNING 1",
        [max_concurrency, name],
        ["providers"],
    )
    return bool(rows)
