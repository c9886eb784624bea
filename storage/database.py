"""The core of the DuckDB metadata store: one connection, its transactions,
its read cursors and read cache, and the helpers every repository shares.

DuckDB allows one read-write process per database file, so exactly one
process (the gateway) opens it; everything else asks the gateway. Inside
that process writes share one connection behind a lock, which keeps
transactions simple (no write-write conflicts to retry). Reads take a cursor
from a small pool instead: each is its own DuckDB transaction that sees every
committed write, and a list or poll never queues behind a write's commit.
The reads an API client repeats (a batch, a file, a page of either) are
remembered until a write could change them (`storage/read_cache.py`).
Nothing here reads file bytes. The tables of each area are read and written
by a repository of their own (`storage/repositories/`); `MetadataStore`
(storage/metadata.py) is all of them on one connection.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import orjson

from storage import secrets as provider_secrets
from storage.db_lock import DatabaseInUse, is_lock_conflict
from storage.private import FILE_MODE
from storage.read_cache import ReadCache
from storage.records import (
    BatchRecord,
    FileRecord,
)

SCHEMA_VERSION = 6
if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")  # a record of storage/records.py

# Columns stored as JSON text, per table.
_JSON_COLUMNS = {
    "batches": {"metadata", "usage", "errors"},
    "batch_chunks": {"usage"},
    "providers": {"models"},
    "webhook_endpoints": {"events"},
}


def now() -> int:
    return int(time.time())


def columns_of(record_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(record_cls) if f.name != "extra"]


# Any in the row helpers: a row's values, as DuckDB gives and takes them;
# each record's dataclass (storage/records.py) types them.
def encode_row(table: str, values: dict[str, Any]) -> dict[str, Any]:
    json_cols = _JSON_COLUMNS.get(table, set())
    return {
        k: (orjson.dumps(v).decode() if k in json_cols and v is not None else v)
        for k, v in values.items()
    }


def decode_row(table: str, values: dict[str, Any]) -> dict[str, Any]:
    json_cols = _JSON_COLUMNS.get(table, set())
    return {
        k: (orjson.loads(v) if k in json_cols and v is not None else v) for k, v in values.items()
    }


def owner_scope(table: str, owner: str | None) -> str:
    """The cache scope of one key's rows in `table` (its list pages)."""
    return f"{table}:{owner}"


def page_cursor(after: FileRecord | BatchRecord | None) -> tuple[int, int | None] | None:
    """The part of a page's `after` row that decides the page (a cache key)."""
    return None if after is None else (after.created_at, after.seq)


def sql_direction(order: str) -> str:
    return "DESC" if order == "desc" else "ASC"


# Creation order: by the second shown as `created_at`, and within a second
# by `seq`, which follows the order the inserts committed in and never ties.
# (`seq` alone would be creation order too, but two uploads that overlap can
# commit in the other order than their `created_at` seconds; this way a list
# never shows a later second before an earlier one.)
CREATION_ORDER = ("created_at", "seq")


def order_by(direction: str) -> str:
    return "ORDER BY " + ", ".join(f"{c} {direction}" for c in CREATION_ORDER)


def after_clause(
    direction: str, after: FileRecord | BatchRecord | None
) -> tuple[str, list[object]]:
    """The condition that starts a page right after `after` in creation
    order. Rows created since sort after every older row: before the cursor
    in DESC order (on no later page), at the end in ASC."""
    if after is None:
        return "TRUE", []
    op = "<" if direction == "DESC" else ">"
    return f"({', '.join(CREATION_ORDER)}) {op} (?, ?)", [after.created_at, after.seq]


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


class Database:
    """The one DuckDB connection and what every repository shares: the write
    lock and transactions, the pool of read cursors, the read cache, the
    secret keys, and the generic row helpers (`_fetch`, `_insert`, ...)."""

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

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run a statement that may write anything, under the write lock."""
        return self._write(sql, params, None)

    def _write(
        self, sql: str, params: Sequence[object], writes: Sequence[str] | None
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

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
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
        self, table: str, record_cls: type[R], where: str, params: Sequence[object], tail: str = ""
    ) -> list[R]:
        cols = columns_of(record_cls)
        sql = f"SELECT {', '.join(cols)} FROM {table} WHERE {where} {tail}"
        rows = self.query(sql, params)
        return [record_cls(**decode_row(table, dict(zip(cols, row, strict=True)))) for row in rows]

    def _first(
        self, table: str, record_cls: type[R], where: str, params: Sequence[object]
    ) -> R | None:
        found = self._fetch(table, record_cls, where, params)
        return found[0] if found else None

    def _insert(self, table: str, record: R) -> R:
        """Store a new row; it changes its owner's pages only, no remembered
        row. A record with a `seq` gets it from the table's sequence, under
        the write lock, so `seq` follows the order the inserts commit in;
        the record is returned with it."""
        numbered = hasattr(record, "seq")
        columns = [c for c in columns_of(type(record)) if c != "seq"]
        values = encode_row(table, {c: getattr(record, c) for c in columns})
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        owner = getattr(record, "api_key_id", None)
        rows = self._write(
            f"INSERT INTO {table} ({names}) VALUES ({marks})"
            + (" RETURNING seq" if numbered else ""),
            list(values.values()),
            [owner_scope(table, owner)],
        )
        return dataclasses.replace(record, seq=rows[0][0]) if numbered else record

    def _update(
        self, table: str, key_where: str, key_params: Sequence[object], fields: dict[str, Any]
    ) -> int:
        if not fields:
            return 0
        values = encode_row(table, fields)
        assignments = ", ".join(f"{k} = ?" for k in values)
        rows = self._write(
            f"UPDATE {table} SET {assignments} WHERE {key_where} RETURNING 1",
            [*values.values(), *key_params],
            [table],
        )
        return len(rows)

    def _page(
        self,
        table: str,
        record_cls: type[R],
        where: list[str],
        params: list[object],
        limit: int,
        direction: str,
        after: FileRecord | BatchRecord | None,
    ) -> tuple[list[R], bool]:
        """Up to `limit` rows matching `where` in creation order (`direction`)
        right after `after`, and whether more follow."""
        after_where, after_params = after_clause(direction, after)
        rows = self._fetch(
            table,
            record_cls,
            " AND ".join([*where, after_where]),
            [*params, *after_params],
            f"{order_by(direction)} LIMIT {int(limit) + 1}",
        )
        return rows[:limit], len(rows) > limit

    def _keys(self) -> provider_secrets.SecretKeys:
        if self._secret_keys is None:
            raise RuntimeError("this metadata store was opened without the secret key")
        return self._secret_keys
