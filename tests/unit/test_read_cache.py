"""Remembered reads: a poll, a page or a file lookup never shows a value that
a committed write has changed, and repeats of them do not go to DuckDB."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import storage.repositories.files as file_repository
from harness.records import file_record
from storage import ids
from storage.metadata import MetadataStore, now
from storage.read_cache import ReadCache
from storage.records import BatchRecord, ChunkRecord


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    s = MetadataStore(tmp_path / "meta.duckdb")
    yield s
    s.close()


@pytest.fixture
def queries(store: MetadataStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every read that reached DuckDB."""
    seen: list[str] = []
    real = store.query

    def counting(sql: str, params=()):  # noqa: ANN001, ANN202
        seen.append(sql)
        return real(sql, params)

    monkeypatch.setattr(store, "query", counting)
    return seen


def new_batch(store: MetadataStore, key_id: str, created_at: int = 100) -> BatchRecord:
    return store.insert_batch(
        BatchRecord(
            id=ids.new_batch_id(),
            api_key_id=key_id,
            endpoint="/v1/chat/completions",
            input_file_id="file-x",
            completion_window="24h",
            status="validating",
            created_at=created_at,
        )
    )


def test_a_poll_sees_each_committed_write(store: MetadataStore, queries: list[str]) -> None:
    batch = new_batch(store, "key_a")
    assert store.get_batch(batch.id, "key_a").status == "validating"
    assert store.get_batch(batch.id, "key_a").status == "validating"
    assert len(queries) == 1  # the repeat was answered from memory

    assert store.transition_batch(batch.id, ["validating"], status="in_progress", total=2)
    assert store.get_batch(batch.id, "key_a").status == "in_progress"

    store.save_chunks(batch.id, [ChunkRecord(batch.id, 0, 0, 10, 0, 2)])
    assert store.complete_chunk(batch.id, 0, completed=1, failed=1, usage=None, model=None)
    polled = store.get_batch(batch.id, "key_a")
    assert (polled.completed, polled.failed) == (1, 1)
    # Another key still cannot see it, remembered or not.
    assert store.get_batch(batch.id, "key_b") is None


def test_a_batch_page_shows_new_and_changed_batches(store: MetadataStore) -> None:
    first = new_batch(store, "key_a", created_at=100)
    assert [b.id for b in store.list_batches("key_a")[0]] == [first.id]
    second = new_batch(store, "key_a", created_at=200)
    assert [b.id for b in store.list_batches("key_a")[0]] == [second.id, first.id]
    store.update_batch(first.id, status="cancelled")
    assert store.list_batches("key_a")[0][1].status == "cancelled"
    assert store.list_batches("key_b") == ([], False)


def test_a_file_page_shows_each_upload_and_delete(store: MetadataStore) -> None:
    mine = store.insert_file(file_record("key_a", created_at=100))
    others = store.insert_file(file_record("key_b", created_at=100))
    assert [f.id for f in store.list_files("key_a")[0]] == [mine.id]
    assert [f.id for f in store.list_files("key_b")[0]] == [others.id]

    newer = store.insert_file(file_record("key_a", created_at=200))
    assert [f.id for f in store.list_files("key_a")[0]] == [newer.id, mine.id]
    assert [f.id for f in store.list_files("key_b")[0]] == [others.id]

    assert store.get_file(mine.id, "key_a") is not None
    assert store.mark_file_deleted(mine.id)
    assert [f.id for f in store.list_files("key_a")[0]] == [newer.id]
    assert store.get_file(mine.id, "key_a") is None
    assert store.get_file(mine.id, include_gone=True).deleted_at is not None


def test_a_file_expires_from_a_remembered_page_on_time(
    store: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = now()
    monkeypatch.setattr(file_repository, "now", lambda: clock)  # the files' clock
    short = store.insert_file(file_record("key_a", created_at=200, expires_at=clock + 10))
    kept = store.insert_file(file_record("key_a", created_at=100))
    assert [f.id for f in store.list_files("key_a")[0]] == [short.id, kept.id]
    assert store.get_file(short.id, "key_a") is not None

    clock += 10
    assert [f.id for f in store.list_files("key_a")[0]] == [kept.id]
    assert store.get_file(short.id, "key_a") is None


def test_a_raw_statement_forgets_everything(store: MetadataStore) -> None:
    batch = new_batch(store, "key_a")
    store.get_batch(batch.id)
    store.execute("UPDATE batches SET status = 'failed' WHERE id = ?", [batch.id])
    assert store.get_batch(batch.id).status == "failed"


def test_a_write_during_a_read_leaves_that_read_stale() -> None:
    """The read began before the write committed, so what it loaded may be
    the old value: the next read must go to the source again."""
    cache = ReadCache()
    source = {"status": "old"}
    loads: list[str] = []

    def load_racing_a_write() -> str:
        value = source["status"]
        source["status"] = "new"  # a writer commits while the read runs
        cache.invalidate("batches")
        loads.append(value)
        return value

    assert cache.remembered("k", ["batches"], load_racing_a_write, at=0) == "old"
    assert cache.remembered("k", ["batches"], lambda: source["status"], at=0) == "new"
    assert cache.remembered("k", ["batches"], lambda: "not read", at=0) == "new"


def test_reads_and_writes_from_many_threads_end_on_the_last_write(
    store: MetadataStore,
) -> None:
    batch = new_batch(store, "key_a")
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            store.get_batch(batch.id, "key_a")
            store.list_batches("key_a")

    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for thread in pollers:
        thread.start()
    try:
        for n in range(1, 101):
            store.update_batch(batch.id, completed=n)
    finally:
        stop.set()
        for thread in pollers:
            thread.join()
    assert store.get_batch(batch.id, "key_a").completed == 100
    assert store.list_batches("key_a")[0][0].completed == 100


def test_the_cache_stays_bounded() -> None:
    cache = ReadCache(max_entries=10)
    for n in range(25):
        cache.remembered(n, ["files"], lambda n=n: n, at=0)
    assert len(cache._entries) <= 10
    assert cache.remembered(24, ["files"], lambda: "reloaded", at=0) == 24
