"""Results as data: the order of a batch's readable chunks for the live
results cursor (`batch_result_chunks`) and each chunk's usage per model
(`chunk_usage`), summed by `usage_report`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.database import (
    Database,
    now,
)
from storage.records import (
    USAGE_COUNTS,
)


class Results(Database):
    """Where each chunk's lines sit in the final files, and usage per chunk."""

    # results cursor; `chunk_usage` holds each chunk's usage per model.

    def add_result_chunk(
        self, batch_id: str, chunk_index: int, usage_rows: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Stamp a checkpointed chunk with the next `seq` and store its usage
        rows, once: a repeated post keeps the first stamp and rows."""
        with self.transaction(writes=["batch_result_chunks", "chunk_usage"]) as conn:
            conn.execute(
                "INSERT INTO batch_result_chunks (batch_id, chunk_index) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                [batch_id, chunk_index],
            )
            at = now()
            for row in usage_rows:
                conn.execute(
                    f"INSERT INTO chunk_usage (batch_id, chunk_index, model, provider, "
                    f"recorded_at, {', '.join(USAGE_COUNTS)}) "
                    f"VALUES ({', '.join('?' * (5 + len(USAGE_COUNTS)))}) ON CONFLICT DO NOTHING",
                    [batch_id, chunk_index, row["model"], row["provider"], at]
                    + [row[c] for c in USAGE_COUNTS],
                )

    def set_result_ranges(
        self, batch_id: str, ranges: Sequence[tuple[int, int, int, int, int]]
    ) -> None:
        """Record where each chunk's lines sit in the final files, in one
        transaction; a chunk without a stamp (it never ran, or its stamp was
        lost in a crash) is stamped now, so every chunk is read exactly once.
        `ranges` rows: (chunk_index, out_start, out_end, err_start, err_end)."""
        with self.transaction(writes=["batch_result_chunks"]) as conn:
            for index, out_start, out_end, err_start, err_end in ranges:
                conn.execute(
                    "INSERT INTO batch_result_chunks "
                    "(batch_id, chunk_index, out_start, out_end, err_start, err_end) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (batch_id, chunk_index) DO UPDATE "
                    "SET out_start = excluded.out_start, out_end = excluded.out_end, "
                    "err_start = excluded.err_start, err_end = excluded.err_end",
                    [batch_id, index, out_start, out_end, err_start, err_end],
                )

    def result_chunks(
        self, batch_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[tuple[int, int, int | None, int | None, int | None, int | None]]:
        """The batch's readable chunks stamped after `after_seq`, in stamp
        order: (seq, chunk_index, out_start, out_end, err_start, err_end)."""
        tail = f" LIMIT {int(limit)}" if limit else ""
        return [
            tuple(r)
            for r in self.query(
                "SELECT seq, chunk_index, out_start, out_end, err_start, err_end "
                "FROM batch_result_chunks WHERE batch_id = ? AND seq > ? ORDER BY seq" + tail,
                [batch_id, after_seq],
            )
        ]

    def usage_report(
        self, group_by: Sequence[str], since: int | None = None, until: int | None = None
    ) -> list[dict[str, Any]]:
        """Line counts and token totals over `chunk_usage`, grouped by any of
        key, model, provider, day (UTC date of the checkpoint) and batch."""
        columns = {
            "key": "b.api_key_id",
            "model": "u.model",
            "provider": "u.provider",
            "day": "strftime(to_timestamp(u.recorded_at) AT TIME ZONE 'UTC', '%Y-%m-%d')",
            "batch": "u.batch_id",
        }
        picked = [(name, columns[name]) for name in group_by]
        select = [f"{expr} AS {name}" for name, expr in picked]
        sums = [f"sum(u.{c})::BIGINT AS {c}" for c in USAGE_COUNTS]
        where, params = ["TRUE"], []
        if since is not None:
            where.append("u.recorded_at >= ?")
            params.append(since)
        if until is not None:
            where.append("u.recorded_at < ?")
            params.append(until)
        group = f" GROUP BY {', '.join(e for _, e in picked)}" if picked else ""
        order = f" ORDER BY {', '.join(e for _, e in picked)}" if picked else ""
        sql = (
            f"SELECT {', '.join([*select, *sums])} FROM chunk_usage u "
            f"JOIN batches b ON b.id = u.batch_id WHERE {' AND '.join(where)}{group}{order}"
        )
        names = [n for n, _ in picked] + [s.rsplit(" AS ", 1)[1] for s in sums]
        rows = self.query(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]
