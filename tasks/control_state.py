"""A live batch's control state, as the gateway tells its run (docs/how-it-works.md,
"Control"): the same path as cancel. Every heartbeat (lease renewal) and
every chunk-post answer carries it, and the run obeys within a heartbeat:

- `paused`: send no new request (in-flight ones finish), keep the lease;
- `stop_reason`: "budget_exceeded" once the batch's key has spent its
  budget for the period: stop like a cancel, the batch ends `failed`;
- `ceilings`: each provider's current `max_concurrency`, the ceiling of the
  run's adaptive window (an admin may change it while batches run).

Runs on the gateway only (it reads DuckDB); imported lazily from the ledger
so that a flow process, which imports the ledger for its errors, never
loads DuckDB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tasks.budgets import budget_reached, period_start, spend_of

if TYPE_CHECKING:
    from storage.metadata import MetadataStore

BUDGET_EXCEEDED = "budget_exceeded"


def budget_state(store: MetadataStore, api_key_id: str | None) -> dict[str, Any] | None:
    """The key's budget and its spend in the current period, or None without a budget."""
    budget = store.get_budget(api_key_id)
    if budget is None or api_key_id is None:
        return None
    start = period_start(budget.budget_period)
    spend = store.get_spend(api_key_id, start)
    return {
        "max_tokens": budget.max_tokens,
        "max_cost_usd": budget.max_cost_usd,
        "budget_period": budget.budget_period,
        "period_start": start,
        "spent_tokens": spend.tokens,
        "spent_cost_usd": round(spend.cost_usd, 6),
        "exceeded": budget_reached(
            budget.max_tokens, budget.max_cost_usd, spend.tokens, spend.cost_usd
        ),
    }


def control_state(store: MetadataStore, batch_id: str, api_key_id: str | None) -> dict[str, Any]:
    budget = budget_state(store, api_key_id)
    return {
        "paused": store.is_paused(batch_id),
        "stop_reason": BUDGET_EXCEEDED if budget and budget["exceeded"] else None,
        "ceilings": store.provider_ceilings(),
    }


def record_spend(
    store: MetadataStore,
    api_key_id: str | None,
    model_stats: Mapping[str, Mapping[str, Any]],
    prices: Sequence[Any],
) -> None:
    """Add a finished chunk's usage to its key's spend of the day (UTC; a
    month or a lifetime budget sums the days, so a budget set later counts
    what was spent before it) and its characters and tokens to what
    estimates learn."""
    store.add_text_stats(model_stats)
    if api_key_id is None:
        return
    tokens, cost = spend_of(model_stats, prices)
    if tokens or cost:
        store.add_spend(api_key_id, period_start("day"), tokens, cost)
