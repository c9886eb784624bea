"""Key budgets and their spend. The arithmetic (periods, costs, whether a
budget is spent) is in `tasks/budgets.py`; this only stores and reads numbers."""

from __future__ import annotations

from storage.database import Database
from storage.records import KeyBudget, Spend


class Budgets(Database):
    """A key's limits per period, and its spend per day."""

    def set_budget(self, budget: KeyBudget) -> None:
        with self.transaction(writes=["key_budgets"]) as conn:
            conn.execute("DELETE FROM key_budgets WHERE api_key_id = ?", [budget.api_key_id])
            if budget.limited:
                conn.execute(
                    "INSERT INTO key_budgets VALUES (?, ?, ?, ?)",
                    [
                        budget.api_key_id,
                        budget.max_tokens,
                        budget.max_cost_usd,
                        budget.budget_period,
                    ],
                )

    def get_budget(self, api_key_id: str | None) -> KeyBudget | None:
        if api_key_id is None:
            return None
        rows = self.query(
            "SELECT max_tokens, max_cost_usd, budget_period FROM key_budgets WHERE api_key_id = ?",
            [api_key_id],
        )
        if not rows:
            return None
        max_tokens, max_cost, period = rows[0]
        return KeyBudget(api_key_id, max_tokens, max_cost, period)

    def all_budgets(self) -> dict[str, KeyBudget]:
        rows = self.query(
            "SELECT api_key_id, max_tokens, max_cost_usd, budget_period FROM key_budgets"
        )
        return {r[0]: KeyBudget(*r) for r in rows}

    def add_spend(self, api_key_id: str, period_start: int, tokens: int, cost_usd: float) -> None:
        """Add to the key's spend of the period (a day) starting at `period_start`."""
        self._write(
            "INSERT INTO key_spend VALUES (?, ?, ?, ?) ON CONFLICT (api_key_id, period_start) "
            "DO UPDATE SET tokens = tokens + excluded.tokens, "
            "cost_usd = cost_usd + excluded.cost_usd",
            [api_key_id, period_start, tokens, cost_usd],
            ["key_spend"],
        )

    def get_spend(self, api_key_id: str, since: int) -> Spend:
        """The key's spend over the days (rows of `add_spend`) from `since` on."""
        rows = self.query(
            "SELECT sum(tokens), sum(cost_usd) FROM key_spend "
            "WHERE api_key_id = ? AND period_start >= ?",
            [api_key_id, since],
        )
        if not rows or rows[0][0] is None:
            return Spend()
        return Spend(int(rows[0][0]), float(rows[0][1]))
