"""Batch records, their status changes (compare-and-set) and lease writes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.database import (
    encode_row,
    now,
    order_by,
    owner_scope,
    page_cursor,
    sql_direction,
)
from storage.records import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    WEBHOOK_EVENTS,
    BatchRecord,
)
from storage.repositories.webhooks import Webhooks


class Batches(Webhooks):
    """Batches. Over `Webhooks`: a terminal status queues its deliveries in
    the same transaction, so no crash leaves an ended batch without them."""

    def insert_batch(self, record: BatchRecord) -> BatchRecord:
        """Store a new batch; returns it with its `seq`."""
        return self._insert("batches", record)

    def get_batch(self, batch_id: str, api_key_id: str | None = None) -> BatchRecord | None:
        record = self._cache.remembered(
            ("batch", batch_id),
            ["batches"],
            lambda: self._first("batches", BatchRecord, "id = ?", [batch_id]),
            at=now(),
        )
        if record is None or api_key_id not in (None, record.api_key_id):
            return None
        return record

    def list_batches(
        self,
        api_key_id: str,
        *,
        limit: int = 20,
        order: str = "desc",
        after: BatchRecord | None = None,
    ) -> tuple[list[BatchRecord], bool]:
        """One page of a key's batches in creation order or its reverse, as
        `list_files`."""
        direction = sql_direction(order)
        return self._cache.remembered(
            ("batches", api_key_id, limit, direction, page_cursor(after)),
            ["batches", owner_scope("batches", api_key_id)],
            lambda: self._page(
                "batches", BatchRecord, ["api_key_id = ?"], [api_key_id], limit, direction, after
            ),
            at=now(),
        )

    def update_batch(self, batch_id: str, **fields: Any) -> int:
        return self._update("batches", "id = ?", [batch_id], fields)

    def update_batch_if_lease(
        self, batch_id: str, token: str | None, expires_at: float | None, **fields: Any
    ) -> bool:
        """Compare-and-set on the lease: apply `fields` only while the batch's
        lease is still (`token`, `expires_at`), so a run that claimed or
        renewed it since the caller read it keeps it."""
        where = (
            "id = ? AND lease_token IS NOT DISTINCT FROM ? "
            "AND lease_expires_at IS NOT DISTINCT FROM ?"
        )
        return bool(self._update("batches", where, [batch_id, token, expires_at], fields))

    def transition_batch(self, batch_id: str, from_statuses: Iterable[str], **fields: Any) -> bool:
        """Compare-and-set: apply `fields` only while the status is one of
        `from_statuses`, so a concurrent cancel or outside change wins."""
        allowed = list(from_statuses)
        marks = ", ".join("?" for _ in allowed)
        where = f"id = ? AND status IN ({marks})"
        event = WEBHOOK_EVENTS.get(fields.get("status", ""))
        if event is None:
            return bool(self._update("batches", where, [batch_id, *allowed], fields))
        # A terminal status: its webhook deliveries are queued in the same
        # transaction, so no crash can leave an ended batch without them.
        values = encode_row("batches", fields)
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self.transaction(writes=["batches", "webhook_outbox"]) as conn:
            rows = conn.execute(
                f"UPDATE batches SET {assignments} WHERE {where} RETURNING api_key_id",
                [*values.values(), batch_id, *allowed],
            ).fetchall()
            if not rows:
                return False
            self._queue_webhooks(conn, batch_id, rows[0][0], event)
            return True

    def _batches_in(self, statuses: Iterable[str]) -> list[BatchRecord]:
        """Batches in any of `statuses`, oldest first (creation order)."""
        wanted = sorted(statuses)
        marks = ", ".join("?" for _ in wanted)
        return self._fetch(
            "batches",
            BatchRecord,
            f"status IN ({marks})",
            wanted,
            order_by("ASC"),
        )

    def terminal_batches(self) -> list[BatchRecord]:
        return self._batches_in(TERMINAL_STATUSES)

    def live_batches(self) -> list[BatchRecord]:
        return self._batches_in(LIVE_STATUSES)

    def batch_of_result_file(self, file_id: str) -> BatchRecord | None:
        """The batch whose output or error file `file_id` is, if any."""
        return self._first(
            "batches", BatchRecord, "output_file_id = ? OR error_file_id = ?", [file_id, file_id]
        )

    def live_batch_ids(self) -> set[str]:
        """Ids of the batches not yet ended (the metrics' AIMD gauge, at scrape)."""
        wanted = sorted(LIVE_STATUSES)
        marks = ", ".join("?" for _ in wanted)
        rows = self.query(f"SELECT id FROM batches WHERE status IN ({marks})", wanted)
        return {batch_id for (batch_id,) in rows}
