"""A batch's chunks: the plan, the claims of helper runs, and the checkpoint
(a chunk done with its counts, in one transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from storage.database import (
    Database,
    columns_of,
    encode_row,
)
from storage.records import (
    ChunkRecord,
)

PLAN_ROWS_PER_INSERT = 1000  # chunk rows per INSERT statement when a plan is saved


class Chunks(Database):
    """The execution checkpoint: a batch's plan, claims and done marks."""

    def save_chunks(self, batch_id: str, chunks: Sequence[ChunkRecord]) -> None:
        """Record the plan once; a second call (a resumed run) changes nothing."""
        with self.transaction(writes=["batch_chunks"]) as conn:
            existing = conn.execute(
                "SELECT count(*) FROM batch_chunks WHERE batch_id = ?", [batch_id]
            ).fetchone()
            if existing and existing[0]:
                return
            # Many rows per statement: DuckDB plans each statement (~1-2 ms),
            # and a 500-chunk plan inserted row by row held the write lock,
            # and with it every checkpoint, for a second (docs/scale-out.md).
            columns = columns_of(ChunkRecord)
            row = "(" + ", ".join("?" for _ in columns) + ")"
            for start in range(0, len(chunks), PLAN_ROWS_PER_INSERT):
                group = chunks[start : start + PLAN_ROWS_PER_INSERT]
                params: list[Any] = []
                for chunk in group:
                    encoded = encode_row("batch_chunks", {c: getattr(chunk, c) for c in columns})
                    params += encoded.values()
                conn.execute(
                    f"INSERT INTO batch_chunks ({', '.join(columns)}) "
                    f"VALUES {', '.join([row] * len(group))}",
                    params,
                )

    def get_chunks(self, batch_id: str) -> list[ChunkRecord]:
        return self._fetch(
            "batch_chunks", ChunkRecord, "batch_id = ?", [batch_id], "ORDER BY chunk_index"
        )

    def complete_chunk(
        self,
        batch_id: str,
        chunk_index: int,
        *,
        completed: int,
        failed: int,
        usage: dict[str, Any] | None,
        model: str | None,
        done_by: str | None = None,
        stopped: int = 0,
    ) -> bool:
        """Mark a chunk done and add its counts to the batch, in one transaction.
        Returns False if it was already done (a repeated post changes nothing).
        The chunk's claim ends with it: a later post on that claim is refused."""
        with self.transaction(writes=["batch_chunks", "batches"]) as conn:
            row = conn.execute(
                "UPDATE batch_chunks SET done = TRUE, completed = ?, failed = ?, usage = ?, "
                "model = ?, done_by = ?, stopped = ?, claim_token = NULL, "
                "claim_expires_at = NULL "
                "WHERE batch_id = ? AND chunk_index = ? AND NOT done RETURNING 1",
                [
                    completed,
                    failed,
                    orjson.dumps(usage).decode() if usage else None,
                    model,
                    done_by,
                    stopped,
                    batch_id,
                    chunk_index,
                ],
            ).fetchall()
            if not row:
                return False
            conn.execute(
                "UPDATE batches SET completed = completed + ?, failed = failed + ? WHERE id = ?",
                [completed, failed, batch_id],
            )
            return True

    def claim_chunk(
        self, batch_id: str, token: str, claimed_by: str | None, until: float, at: float
    ) -> ChunkRecord | None:
        """Give the first chunk that is neither done nor held by a live claim
        to `token` until `until`; None when there is none. One statement
        under the write lock, so two claimants never get the same chunk."""
        rows = self._write(
            "UPDATE batch_chunks SET claim_token = ?, claim_expires_at = ?, claimed_by = ? "
            "WHERE batch_id = ? AND chunk_index = ("
            "  SELECT min(chunk_index) FROM batch_chunks WHERE batch_id = ? AND NOT done"
            "  AND (claim_expires_at IS NULL OR claim_expires_at <= ?)"
            ") RETURNING chunk_index",
            [token, until, claimed_by, batch_id, batch_id, at],
            ["batch_chunks"],
        )
        if not rows:
            return None
        return self._first(
            "batch_chunks", ChunkRecord, "batch_id = ? AND chunk_index = ?", [batch_id, rows[0][0]]
        )

    def renew_claims(
        self, batch_id: str, tokens: Sequence[str], until: float, at: float
    ) -> list[int]:
        """Extend the live claims held with `tokens`; the chunks still held."""
        if not tokens:
            return []
        marks = ", ".join("?" for _ in tokens)
        rows = self._write(
            f"UPDATE batch_chunks SET claim_expires_at = ? WHERE batch_id = ? "
            f"AND claim_token IN ({marks}) AND claim_expires_at > ? AND NOT done "
            "RETURNING chunk_index",
            [until, batch_id, *tokens, at],
            ["batch_chunks"],
        )
        return sorted(row[0] for row in rows)
