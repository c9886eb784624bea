"""A live batch's pause switch, set by the admin API and read by its runs
through every heartbeat."""

from __future__ import annotations

from storage.database import Database, now


class BatchControls(Database):
    """Which batches are paused."""

    def set_paused(self, batch_id: str, paused: bool) -> None:
        self._write(
            "INSERT INTO batch_controls VALUES (?, ?, ?) ON CONFLICT (batch_id) "
            "DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
            [batch_id, paused, now()],
            ["batch_controls"],
        )

    def is_paused(self, batch_id: str) -> bool:
        rows = self.query("SELECT paused FROM batch_controls WHERE batch_id = ?", [batch_id])
        return bool(rows and rows[0][0])
