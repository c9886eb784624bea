"""The DuckDB metadata store: keys, files, batches, chunks, providers.

DuckDB allows one read-write process per database file, so exactly one
process (the gateway) opens it; everything else asks the gateway. Inside
that process writes share one connection behind a lock, which keeps
transactions simple (no write-write conflicts to retry). Reads take a cursor
from a small pool instead: each is its own DuckDB transaction that sees every
committed write, and a list or poll never queues behind a write's commit.
The reads an API client repeats (a batch, a file, a page of either) are
remembered until a write could change them (`storage/read_cache.py`).
Nothing here reads file bytes.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import orjson

from storage import ids
from storage import secrets as provider_secrets
from storage.db_lock import DatabaseInUse, is_lock_conflict
from storage.private import FILE_MODE
from storage.read_cache import ReadCache
from storage.records import (
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    USAGE_COUNTS,
    WEBHOOK_EVENTS,
    ApiKeyRecord,
    BatchRecord,
    ChunkRecord,
    FileRecord,
    ProviderRecord,
    WebhookDelivery,
    WebhookEndpointRecord,
    file_is_live,
)

SCHEMA_VERSION = 6
R = TypeVar("R")

# Columns stored as JSON text, per table.
_JSON_COLUMNS = {
    "batches": {"metadata", "usage", "errors"},
    "batch_chunks": {"usage"},
    "providers": {"models"},
    "webhook_endpoints": {"events"},
}


PLAN_ROWS_PER_INSERT = 1000  # chunk rows per INSERT statement when a plan is saved


def now() -> int:
    return int(time.time())


def _columns(record_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(record_cls) if f.name != "extra"]


def _encode(table: str, values: dict[str, Any]) -> dict[str, Any]:
    json_cols = _JSON_COLUMNS.get(table, set())
    return {
        k: (orjson.dumps(v).decode() if k in json_cols and v is not None else v)
        for k, v in values.items()
    }


def _decode(table: str, values: dict[str, Any]) -> dict[str, Any]:
    json_cols = _JSON_COLUMNS.get(table, set())
    return {
        k: (orjson.loads(v) if k in json_cols and v is not None else v) for k, v in values.items()
    }


def _owner_scope(table: str, owner: str | None) -> str:
    """The cache scope of one key's rows in `table` (its list pages)."""
    return f"{table}:{owner}"


def _earliest_expiry(page: tuple[list[FileRecord], bool]) -> int | None:
    """When a page of files stops being right by itself: its first expiry."""
    return min((f.expires_at for f in page[0] if f.expires_at is not None), default=None)


def _page_cursor(after: FileRecord | BatchRecord | None) -> tuple[int, int | None] | None:
    """The part of a page's `after` row that decides the page (a cache key)."""
    return None if after is None else (after.created_at, after.seq)


def _sql_direction(order: str) -> str:
    return "DESC" if order == "desc" else "ASC"


# Creation order: by the second shown as `created_at`, and within a second
# by `seq`, which follows the order the inserts committed in and never ties.
# (`seq` alone would be creation order too, but two uploads that overlap can
# commit in the other order than their `created_at` seconds; this way a list
# never shows a later second before an earlier one.)
_CREATION_ORDER = ("created_at", "seq")


def _order_by(direction: str) -> str:
    return "ORDER BY " + ", ".join(f"{c} {direction}" for c in _CREATION_ORDER)


def _after_clause(direction: str, after: FileRecord | BatchRecord | None) -> tuple[str, list[Any]]:
    """The condition that starts a page right after `after` in creation
    order. Rows created since sort after every older row: before the cursor
    in DESC order (on no later page), at the end in ASC."""
    if after is None:
        return "TRUE", []
    op = "<" if direction == "DESC" else ">"
    return f"({', '.join(_CREATION_ORDER)}) {op} (?, ?)", [after.created_at, after.seq]


_MIGRATION_HEADER = re.compile(r"^-- migration (\d+)[ \t]*$", re.MULTILINE)


def migrations(schema: str) -> list[tuple[int, str]]:
    """The numbered blocks of schema.sql, in file order. Only a line that is
    exactly `-- migration N` starts a block, so a comment that mentions one
    inside a block stays part of it."""
    parts = _MIGRATION_HEADER.split(schema)[1:]
    return [(int(number), body) for number, body in zip(parts[::2], parts[1::2], strict=True)]


def rewrite_database(path: Path) -> None:
    """Copy every table of the (closed) database at `path` into a fresh
    owner-only file and rename it over `path`: only live rows are copied."""
    fresh = path.with_name(f"{path.name}.rewrite")
    fresh.unlink(missing_ok=True)
    conn = duckdb.connect(str(path))
    try:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        target = str(fresh).replace("'", "''")
        conn.execute(f"ATTACH '{target}' AS rewritten")
        conn.execute(f'COPY FROM DATABASE "{row[0]}" TO rewritten')
        conn.execute("DETACH rewritten")
    finally:
        conn.close()
    fresh.chmod(FILE_MODE)
    os.replace(fresh, path)


class MetadataStore:
    def __init__(
        self, path: Path | str, secret_keys: provider_secrets.SecretKeys | None = None
    ) -> None:
        """`secret_keys` encrypt provider keys at rest; a store opened without
        them (a tool that touches no provider) cannot read or write providers."""
        self.path = str(path)
        self._secret_keys = secret_keys
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # The cache scopes written by the open transaction (only ever set by
        # the thread holding `_lock`); None: no transaction is open.
        self._joined: list[Sequence[str] | None] | None = None
        self._reader_lock = threading.Lock()
        self._cache = ReadCache()
        self._connect()
        self._migrate()
        if secret_keys is not None and self._seal_provider_keys():
            self._compact()

    # -- plumbing ---------------------------------------------------------

    def _connect(self) -> None:
        # Every statement here is small: DuckDB's own worker threads only add
        # scheduling cost to them (measured: a third of a list query's time).
        try:
            self._conn = duckdb.connect(self.path, config={"threads": 1})
        except duckdb.IOException as exc:
            if is_lock_conflict(exc):
                raise DatabaseInUse(self.path, str(exc)) from None
            raise
        self._readers: queue.SimpleQueue[duckdb.DuckDBPyConnection] = queue.SimpleQueue()
        self._all_readers: list[duckdb.DuckDBPyConnection] = []
        # New read cursors come from a connection of their own, so making one
        # never waits for the write lock.
        self._reader_source = self._conn.cursor()

    def _compact(self) -> None:
        """Rewrite the database file so replaced values are gone from it:
        DuckDB frees the blocks of an updated row but does not clear them,
        so an old clear or old-key value would stay readable in the file.
        Only while nothing else uses the store (at open, in a rotation)."""
        if self.path == ":memory:":
            return
        self.close()
        rewrite_database(Path(self.path))
        self._connect()

    def close(self) -> None:
        with self._lock, self._reader_lock:
            for reader in self._all_readers:
                reader.close()
            self._reader_source.close()
            self._conn.close()

    def _migrate(self) -> None:
        schema = resources.files("storage").joinpath("schema.sql").read_text()
        with self._lock:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
            current = (row[0] if row else None) or 0
            for number, body in migrations(schema):
                if number <= current:
                    continue
                with self.transaction(writes=[]):
                    self._conn.execute(body)
                    self._conn.execute("INSERT INTO schema_version VALUES (?, ?)", [number, now()])

    @contextmanager
    def transaction(
        self, writes: Sequence[str] | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write transaction. `writes` names the cache scopes it changes;
        None (not known) forgets every remembered read.

        Writes made inside it by the same thread (a nested `transaction`, an
        `update_batch`, ...) join it and commit with it: one commit, one
        fsync of DuckDB's log, instead of one each (a chunk checkpoint made
        five). Their remembered reads are forgotten after the commit, so no
        read can cache a row the commit is about to change."""
        with self._lock:  # re-entrant: a nested call holds it already
            if self._joined is not None:
                self._joined.append(writes)
                yield self._conn
                return
            self._joined = [writes]
            try:
                self._conn.execute("BEGIN TRANSACTION")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            finally:
                joined, self._joined = self._joined, None
                for scopes in joined:
                    self._forget(scopes)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement that may write anything, under the write lock."""
        return self._write(sql, params, None)

    def _write(
        self, sql: str, params: Sequence[Any], writes: Sequence[str] | None
    ) -> list[tuple[Any, ...]]:
        """Run a writing statement, then forget the reads of `writes`."""
        with self._lock:
            if self._joined is not None:  # inside a transaction: forgotten at its commit
                self._joined.append(writes)
                return self._conn.execute(sql, list(params)).fetchall()
            try:
                return self._conn.execute(sql, list(params)).fetchall()
            finally:
                self._forget(writes)

    def _forget(self, writes: Sequence[str] | None) -> None:
        if writes is None:
            self._cache.invalidate_all()
        else:
            self._cache.invalidate(*writes)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement on a pooled cursor, beside any write.
        The pool grows to the number of reads ever in flight at once (the
        thread pool's size at most) and its cursors live until `close`."""
        try:
            reader = self._readers.get_nowait()
        except queue.Empty:
            with self._reader_lock:
                reader = self._reader_source.cursor()
                self._all_readers.append(reader)
        try:
            return reader.execute(sql, list(params)).fetchall()
        finally:
            self._readers.put(reader)

    def _fetch(
        self, table: str, record_cls: type[R], where: str, params: Sequence[Any], tail: str = ""
    ) -> list[R]:
        cols = _columns(record_cls)
        sql = f"SELECT {', '.join(cols)} FROM {table} WHERE {where} {tail}"
        rows = self.query(sql, params)
        return [record_cls(**_decode(table, dict(zip(cols, row, strict=True)))) for row in rows]

    def _first(
        self, table: str, record_cls: type[R], where: str, params: Sequence[Any]
    ) -> R | None:
        found = self._fetch(table, record_cls, where, params)
        return found[0] if found else None

    def _insert(self, table: str, record: R) -> R:
        """Store a new row; it changes its owner's pages only, no remembered
        row. A record with a `seq` gets it from the table's sequence, under
        the write lock, so `seq` follows the order the inserts commit in;
        the record is returned with it."""
        numbered = hasattr(record, "seq")
        columns = [c for c in _columns(type(record)) if c != "seq"]
        values = _encode(table, {c: getattr(record, c) for c in columns})
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        owner = getattr(record, "api_key_id", None)
        rows = self._write(
            f"INSERT INTO {table} ({names}) VALUES ({marks})"
            + (" RETURNING seq" if numbered else ""),
            list(values.values()),
            [_owner_scope(table, owner)],
        )
        return dataclasses.replace(record, seq=rows[0][0]) if numbered else record

    def _update(
        self, table: str, key_where: str, key_params: Sequence[Any], fields: dict[str, Any]
    ) -> int:
        if not fields:
            return 0
        values = _encode(table, fields)
        assignments = ", ".join(f"{k} = ?" for k in values)
        rows = self._write(
            f"UPDATE {table} SET {assignments} WHERE {key_where} RETURNING 1",
            [*values.values(), *key_params],
            [table],
        )
        return len(rows)

    # -- API keys ---------------------------------------------------------

    def create_api_key(self, name: str) -> tuple[ApiKeyRecord, str]:
        """Store a new key's hash; the clear key is returned once and never kept."""
        clear = ids.new_api_key()
        record = ApiKeyRecord(
            id=ids.new_key_id(), name=name, key_hash=ids.hash_key(clear), created_at=now()
        )
        self._insert("api_keys", record)
        return record, clear

    def find_api_key(self, clear_key: str) -> ApiKeyRecord | None:
        """The live key with this clear text. Every request asks, so live keys
        are remembered by hash; revoking is a write to `api_keys`, so a revoked
        key stops working at once."""
        key_hash = ids.hash_key(clear_key)
        return self._cache.remembered(
            ("api_key", key_hash),
            ["api_keys"],
            lambda: self._first(
                "api_keys", ApiKeyRecord, "key_hash = ? AND revoked_at IS NULL", [key_hash]
            ),
            at=now(),
        )

    def list_api_keys(self) -> list[ApiKeyRecord]:
        return self._fetch(
            "api_keys", ApiKeyRecord, "revoked_at IS NULL", [], "ORDER BY created_at, id"
        )

    def revoke_api_key(self, key_id: str) -> bool:
        return bool(
            self._update(
                "api_keys", "id = ? AND revoked_at IS NULL", [key_id], {"revoked_at": now()}
            )
        )

    # -- files ------------------------------------------------------------

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
        direction = _sql_direction(order)
        at = now()
        return self._cache.remembered(
            ("files", api_key_id, purpose, limit, direction, _page_cursor(after)),
            ["files", _owner_scope("files", api_key_id)],
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

    def _page(
        self,
        table: str,
        record_cls: type[R],
        where: list[str],
        params: list[Any],
        limit: int,
        direction: str,
        after: FileRecord | BatchRecord | None,
    ) -> tuple[list[R], bool]:
        """Up to `limit` rows matching `where` in creation order (`direction`)
        right after `after`, and whether more follow."""
        after_where, after_params = _after_clause(direction, after)
        rows = self._fetch(
            table,
            record_cls,
            " AND ".join([*where, after_where]),
            [*params, *after_params],
            f"{_order_by(direction)} LIMIT {int(limit) + 1}",
        )
        return rows[:limit], len(rows) > limit

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

    # -- batches ----------------------------------------------------------

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
        direction = _sql_direction(order)
        return self._cache.remembered(
            ("batches", api_key_id, limit, direction, _page_cursor(after)),
            ["batches", _owner_scope("batches", api_key_id)],
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
        values = _encode("batches", fields)
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
            _order_by("ASC"),
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

    # -- chunks (the execution checkpoint) --------------------------------

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
            columns = _columns(ChunkRecord)
            row = "(" + ", ".join("?" for _ in columns) + ")"
            for start in range(0, len(chunks), PLAN_ROWS_PER_INSERT):
                group = chunks[start : start + PLAN_ROWS_PER_INSERT]
                params: list[Any] = []
                for chunk in group:
                    encoded = _encode("batch_chunks", {c: getattr(chunk, c) for c in columns})
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

    # -- webhooks (endpoints and the outbox) -------------------------------
    # `webhook_endpoints.secret` is sealed like a provider key; the clear
    # secret is shown once, at creation, and opened only to sign.

    def _queue_webhooks(
        self, conn: duckdb.DuckDBPyConnection, batch_id: str, api_key_id: str | None, event: str
    ) -> int:
        """Outbox rows for `event` to every live endpoint of the batch's key
        and every global one; inside the caller's transaction."""
        endpoints = conn.execute(
            "SELECT id, events FROM webhook_endpoints WHERE deleted_at IS NULL "
            "AND (api_key_id IS NULL OR api_key_id = ?)",
            [api_key_id],
        ).fetchall()
        wanted = [e for e, events in endpoints if event in orjson.loads(events)]
        if not wanted:
            return 0
        event_id, at = ids.new_event_id(), now()
        for endpoint_id in wanted:
            conn.execute(
                "INSERT INTO webhook_outbox (event_id, endpoint_id, type, batch_id, "
                "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                [event_id, endpoint_id, event, batch_id, at, float(at)],
            )
        return len(wanted)

    def create_webhook_endpoint(
        self, url: str, events: list[str], api_key_id: str | None
    ) -> WebhookEndpointRecord:
        """Store a new endpoint; the returned record holds the clear secret,
        which is not shown again."""
        record = WebhookEndpointRecord(
            id=ids.new_webhook_endpoint_id(),
            url=url,
            events=list(events),
            api_key_id=api_key_id,
            secret=ids.new_webhook_secret(),
            created_at=now(),
        )
        sealed = dataclasses.replace(
            record, secret=provider_secrets.encrypt(self._keys(), record.secret)
        )
        self._insert("webhook_endpoints", sealed)
        return record

    def list_webhook_endpoints(self) -> list[WebhookEndpointRecord]:
        """Live endpoints, secrets still sealed (a list never shows them)."""
        return self._fetch(
            "webhook_endpoints",
            WebhookEndpointRecord,
            "deleted_at IS NULL",
            [],
            "ORDER BY created_at, id",
        )

    def delete_webhook_endpoint(self, endpoint_id: str) -> bool:
        """Stop an endpoint: it gets no new events and its pending
        deliveries are dropped (marked given up)."""
        at = now()
        with self.transaction(writes=["webhook_endpoints", "webhook_outbox"]) as conn:
            rows = conn.execute(
                "UPDATE webhook_endpoints SET deleted_at = ? WHERE id = ? "
                "AND deleted_at IS NULL RETURNING 1",
                [at, endpoint_id],
            ).fetchall()
            conn.execute(
                "UPDATE webhook_outbox SET gave_up_at = ?, last_error = 'endpoint deleted' "
                "WHERE endpoint_id = ? AND delivered_at IS NULL AND gave_up_at IS NULL",
                [at, endpoint_id],
            )
        return bool(rows)

    def due_webhook_deliveries(self, at: float, limit: int = 100) -> list[WebhookDelivery]:
        """Outbox rows not delivered nor given up whose next attempt is due."""
        rows = self.query(
            "SELECT o.event_id, o.endpoint_id, o.type, o.batch_id, o.created_at, o.attempts, "
            "e.url, e.secret FROM webhook_outbox o JOIN webhook_endpoints e "
            "ON e.id = o.endpoint_id WHERE o.delivered_at IS NULL AND o.gave_up_at IS NULL "
            "AND o.next_attempt_at <= ? ORDER BY o.next_attempt_at, o.event_id LIMIT ?",
            [at, int(limit)],
        )
        keys = self._keys()
        return [
            WebhookDelivery(*row[:7], provider_secrets.decrypt(keys, row[7]))  # type: ignore[arg-type]
            for row in rows
        ]

    def settle_webhook_delivery(
        self,
        event_id: str,
        endpoint_id: str,
        *,
        delivered: bool,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> None:
        """Record one attempt: delivered, retry at `next_attempt_at`, or (no
        next attempt) given up."""
        at = now()
        if delivered:
            fields: dict[str, Any] = {"delivered_at": at, "last_error": None}
        elif next_attempt_at is None:
            fields = {"gave_up_at": at, "last_error": error}
        else:
            fields = {"next_attempt_at": next_attempt_at, "last_error": error}
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self._write(
            f"UPDATE webhook_outbox SET attempts = attempts + 1, {assignments} "
            "WHERE event_id = ? AND endpoint_id = ?",
            [*fields.values(), event_id, endpoint_id],
            ["webhook_outbox"],
        )

    def prune_webhook_outbox(self, before: int) -> int:
        """Remove settled deliveries (delivered or given up) of events made
        before `before`; pending ones stay whatever their age."""
        rows = self._write(
            "DELETE FROM webhook_outbox WHERE created_at < ? "
            "AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL) RETURNING 1",
            [before],
            ["webhook_outbox"],
        )
        return len(rows)

    def webhook_outbox_counts(self) -> dict[str, int]:
        """Outbox rows by state (pending, delivered, failed), for metrics and doctor."""
        rows = self.query(
            "SELECT CASE WHEN delivered_at IS NOT NULL THEN 'delivered' "
            "WHEN gave_up_at IS NOT NULL THEN 'failed' ELSE 'pending' END AS state, "
            "count(*) FROM webhook_outbox GROUP BY state"
        )
        return {state: count for state, count in rows}

    def batch_status_counts(self) -> dict[str, int]:
        """How many batches are in each status (the metrics gauge, at scrape)."""
        return {s: n for s, n in self.query("SELECT status, count(*) FROM batches GROUP BY status")}

    # -- providers --------------------------------------------------------
    # `providers.api_key` holds `fernet:<token>` (storage/secrets.py); the
    # clear key exists only in memory, on its way to the provider.

    def _keys(self) -> provider_secrets.SecretKeys:
        if self._secret_keys is None:
            raise RuntimeError("this metadata store was opened without the secret key")
        return self._secret_keys

    def _stored_provider_keys(self, conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
        return conn.execute("SELECT name, api_key FROM providers ORDER BY name").fetchall()

    def _rewrite_provider_keys(
        self,
        conn: duckdb.DuckDBPyConnection,
        names: list[str],
        stored: list[str],
    ) -> None:
        for name, value in zip(names, stored, strict=True):
            conn.execute("UPDATE providers SET api_key = ? WHERE name = ?", [value, name])

    def _seal_provider_keys(self) -> bool:
        """At open: encrypt the clear keys an older version stored, and fail
        now, with a message, if a stored key does not open under our keys
        (better than every upstream call failing with 401 later). True when
        a clear key was replaced (the file then needs a rewrite)."""
        keys = self._keys()
        with self.transaction(writes=["providers"]) as conn:
            rows = self._stored_provider_keys(conn)
            for _, value in rows:
                provider_secrets.decrypt(keys, value)
            clear = [(n, v) for n, v in rows if not provider_secrets.is_encrypted(v)]
            sealed = provider_secrets.reencrypt(keys, keys, [v for _, v in clear])
            self._rewrite_provider_keys(conn, [n for n, _ in clear], sealed)
        return bool(clear)

    def rotate_provider_keys(self, new: provider_secrets.SecretKeys) -> int:
        """Re-encrypt every stored provider key under `new`, all in one
        transaction (a failure leaves every row under the old key), then
        rewrite the file so no old-key value stays in its free blocks.
        Returns how many keys were re-encrypted."""
        old = self._keys()
        with self.transaction(writes=None) as conn:
            rows = self._stored_provider_keys(conn)
            sealed = provider_secrets.reencrypt(old, new, [v for _, v in rows])
            self._rewrite_provider_keys(conn, [n for n, _ in rows], sealed)
            # Webhook signing secrets are sealed under the same key.
            hooks = conn.execute("SELECT id, secret FROM webhook_endpoints").fetchall()
            resealed = provider_secrets.reencrypt(old, new, [v for _, v in hooks])
            for (hook_id, _), value in zip(hooks, resealed, strict=True):
                conn.execute(
                    "UPDATE webhook_endpoints SET secret = ? WHERE id = ?", [value, hook_id]
                )
        self._secret_keys = new
        self._compact()
        return len(rows)

    def _opened(self, record: ProviderRecord) -> ProviderRecord:
        return dataclasses.replace(
            record, api_key=provider_secrets.decrypt(self._keys(), record.api_key)
        )

    def upsert_provider(self, record: ProviderRecord) -> ProviderRecord:
        sealed = provider_secrets.encrypt(self._keys(), record.api_key)
        with self.transaction(writes=["providers"]) as conn:
            if record.is_default:
                conn.execute(
                    "UPDATE providers SET is_default = FALSE WHERE name <> ?", [record.name]
                )
            conn.execute("DELETE FROM providers WHERE name = ?", [record.name])
            values = _encode("providers", {c: getattr(record, c) for c in _columns(ProviderRecord)})
            values["api_key"] = sealed
            conn.execute(
                f"INSERT INTO providers ({', '.join(values)}) "
                f"VALUES ({', '.join('?' for _ in values)})",
                list(values.values()),
            )
        return record

    def list_providers(self) -> list[ProviderRecord]:
        found = self._fetch("providers", ProviderRecord, "TRUE", [], "ORDER BY name")
        return [self._opened(r) for r in found]

    def get_provider(self, name: str) -> ProviderRecord | None:
        found = self._first("providers", ProviderRecord, "name = ?", [name])
        return None if found is None else self._opened(found)

    def delete_provider(self, name: str) -> bool:
        return bool(
            self._write("DELETE FROM providers WHERE name = ? RETURNING 1", [name], ["providers"])
        )

    # -- results as data (issue 12) -----------------------------------------
    # `batch_result_chunks` orders a batch's readable chunks for the live
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
