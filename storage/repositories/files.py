"""File records: one per upload or result file; bytes live in the blob store."""

from __future__ import annotations

from typing import Any

from storage.database import (
    Database,
    now,
    owner_scope,
    page_cursor,
    sql_direction,
)
from storage.records import (
    FileRecord,
    file_is_live,
)


def _earliest_expiry(page: tuple[list[FileRecord], bool]) -> int | None:
    """When a page of files stops being right by itself: its first expiry."""
    return min((f.expires_at for f in page[0] if f.expires_at is not None), default=None)


class Files(Database):
    """Files visible to their owner, listed in creation order."""

    def insert_file(self, record: FileRecord) -> FileRecord:
        """Store a new file; returns it with its `seq`."""
        return self._insert("files", record)

    def get_file(
        self, file_id: str, api_key_id: str | None = None, *, include_gone: bool = False
    ) -> FileRecord | None:
        """A file visible to `api_key_id` (any owner when None); deleted or expired
        files are invisible unless `include_gone`."""
        at = now()
        record = self._cache.remembered(
            ("file", file_id),
            ["files"],
            lambda: self._first("files", FileRecord, "id = ?", [file_id]),
            at=at,
        )
        if record is None or api_key_id not in (None, record.api_key_id):
            return None
        return record if include_gone or file_is_live(record, at) else None

    def list_files(
        self,
        api_key_id: str,
        *,
        purpose: str | None = None,
        limit: int = 10000,
        order: str = "desc",
        after: FileRecord | None = None,
    ) -> tuple[list[FileRecord], bool]:
        """One page of a key's live files in creation order (`order` "asc") or
        its reverse ("desc"), starting right after `after`."""
        direction = sql_direction(order)
        at = now()
        return self._cache.remembered(
            ("files", api_key_id, purpose, limit, direction, page_cursor(after)),
            ["files", owner_scope("files", api_key_id)],
            lambda: self._file_page(api_key_id, purpose, limit, direction, after, at),
            at=at,
            valid_until=_earliest_expiry,
        )

    def _file_page(
        self,
        api_key_id: str,
        purpose: str | None,
        limit: int,
        direction: str,
        after: FileRecord | None,
        at: int,
    ) -> tuple[list[FileRecord], bool]:
        where = ["api_key_id = ?", "deleted_at IS NULL", "(expires_at IS NULL OR expires_at > ?)"]
        params: list[Any] = [api_key_id, at]
        if purpose:
            where.append("purpose = ?")
            params.append(purpose)
        return self._page("files", FileRecord, where, params, limit, direction, after)

    def mark_file_deleted(self, file_id: str) -> bool:
        return bool(
            self._update("files", "id = ? AND deleted_at IS NULL", [file_id], {"deleted_at": now()})
        )

    def update_file(self, file_id: str, **fields: Any) -> int:
        return self._update("files", "id = ?", [file_id], fields)

    def expired_files(self, at: int | None = None) -> list[FileRecord]:
        """Files past their own `expires_at` that still have bytes."""
        return self._fetch(
            "files",
            FileRecord,
            "deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?",
            [at if at is not None else now()],
            "ORDER BY expires_at, id",
        )

    def live_blob_names(self) -> set[str]:
        return {r[0] for r in self.query("SELECT blob_name FROM files WHERE deleted_at IS NULL")}
