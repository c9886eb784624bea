"""Characters per token, learned per model from finished chunks: what the
dry-run estimate (`tasks/estimate.py`) counts tokens with when no tokenizer
knows the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from storage.database import Database


class TextStats(Database):
    """Input characters, tokens and lines per model, summed."""

    def add_text_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Add a finished chunk's input characters and tokens per model."""
        rows = [
            (
                model,
                int(s.get("input_chars") or 0),
                int(s.get("input_tokens") or 0),
                int(s["lines"]),
            )
            for model, s in stats.items()
            if s.get("input_chars") and s.get("input_tokens") and s.get("lines")
        ]
        if not rows:
            return
        with self.transaction(writes=["model_text_stats"]) as conn:
            for row in rows:
                conn.execute(
                    "INSERT INTO model_text_stats VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (model) DO UPDATE SET "
                    "input_chars = input_chars + excluded.input_chars, "
                    "input_tokens = input_tokens + excluded.input_tokens, "
                    "lines = lines + excluded.lines",
                    list(row),
                )

    def text_stats(self) -> dict[str, tuple[int, int, int]]:
        """(input characters, input tokens, lines) per model seen in finished chunks."""
        rows = self.query("SELECT model, input_chars, input_tokens, lines FROM model_text_stats")
        return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}
