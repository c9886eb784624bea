"""The blob store and the file/key/provider parts of the metadata store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import duckdb
import pytest

from gateway.models.objects import file_object
from harness.records import batch_record, file_record
from storage import ids, metadata
from storage.blobs import BlobStore
from storage.metadata import SCHEMA_VERSION, MetadataStore, migrations, now
from storage.records import ProviderRecord
from storage.secrets import SecretKeys, new_key


@pytest.fixture
def store(tmp_path: Path):  # noqa: ANN201
    s = MetadataStore(tmp_path / "meta.duckdb", SecretKeys(new_key()))
    yield s
    s.close()


def test_blob_writer_publishes_only_complete_blobs(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(RuntimeError), blobs.writer("file-a") as out:
        out.write(b"partial")
        raise RuntimeError("client went away")
    assert not blobs.exists("file-a")
    assert list((tmp_path / "blobs").iterdir()) == []  # no temp debris either

    with blobs.writer("file-a") as out:
        out.write(b"0123456789")
    assert blobs.names() == ["file-a"]
    assert b"".join(blobs.iter_bytes("file-a")) == b"0123456789"
    assert b"".join(blobs.iter_bytes("file-a", 2, 5)) == b"234"
    blobs.delete("file-a")
    assert not blobs.exists("file-a")


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b"])
def test_blob_names_cannot_leave_the_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path(name)


def test_keys_are_stored_as_hashes_and_revocation_is_immediate(store: MetadataStore) -> None:
    record, clear = store.create_api_key("team")
    assert record.key_hash == ids.hash_key(clear) and clear not in record.key_hash
    assert store.find_api_key(clear) == record
    assert store.revoke_api_key(record.id)
    assert store.find_api_key(clear) is None
    assert not store.revoke_api_key(record.id)
    assert store.list_api_keys() == []


def test_files_are_invisible_when_deleted_expired_or_foreign(store: MetadataStore) -> None:
    t = now()
    live = store.insert_file(file_record("k1", created_at=t))
    expired = store.insert_file(file_record("k1", created_at=t - 10, expires_at=t - 1))
    deleted = store.insert_file(file_record("k1", created_at=t))
    store.mark_file_deleted(deleted.id)

    assert store.get_file(live.id, "k1") == live
    assert store.get_file(live.id, "k2") is None
    assert store.get_file(expired.id, "k1") is None
    assert store.get_file(deleted.id, "k1") is None
    assert store.get_file(deleted.id, "k1", include_gone=True).deleted_at is not None
    assert [f.id for f in store.list_files("k1")[0]] == [live.id]


def test_lists_follow_creation_order_within_a_second(store: MetadataStore) -> None:
    """Files and batches made in the same second list in the order they were
    made (ids sort the other way here), after the older seconds; `after`
    goes on from its object in that order, even once that file is deleted."""
    t = now()
    older = store.insert_file(file_record("k", created_at=t - 1, file_id="file-00"))
    files = [older] + [
        store.insert_file(
            file_record(
                "k",
                created_at=t,
                purpose="batch" if i % 2 else "user_data",
                file_id=f"file-{9 - i:02d}",
            )
        )
        for i in range(7)
    ]
    made = [f.id for f in files]
    assert [f.id for f in store.list_files("k", order="asc")[0]] == made
    assert [f.id for f in store.list_files("k")[0]] == made[::-1]
    page, more = store.list_files("k", limit=3)
    assert [f.id for f in page] == made[::-1][:3] and more
    store.mark_file_deleted(page[-1].id)
    cursor = store.get_file(page[-1].id, "k", include_gone=True)
    page2, more2 = store.list_files("k", limit=3, after=cursor)
    assert [f.id for f in page2] == made[::-1][3:6] and more2
    asc, _ = store.list_files("k", order="asc", limit=3, after=files[1])
    assert [f.id for f in asc] == made[2:5]
    assert {f.purpose for f in store.list_files("k", purpose="batch")[0]} == {"batch"}

    batches = [
        store.insert_batch(batch_record(f"batch_{9 - i}", api_key_id="k", created_at=t))
        for i in range(5)
    ]
    made = [b.id for b in batches]
    assert [b.id for b in store.list_batches("k", order="asc")[0]] == made
    assert [b.id for b in store.list_batches("k", limit=2, after=batches[3])[0]] == made[2::-1][:2]
    assert [b.id for b in store.live_batches()] == made


def v1_database(path: Path, rows: list[tuple[str, int]]) -> None:
    """A database as schema version 1 left it, with a file and a batch per
    (id suffix, created_at) in `rows`, stored in that order."""
    schema = resources.files("storage").joinpath("schema.sql").read_text()
    first_block = schema.split("-- migration 2")[0]
    with duckdb.connect(str(path)) as conn:
        conn.execute(first_block)
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT)")
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        for suffix, created_at in rows:
            conn.execute(
                "INSERT INTO files (id, api_key_id, filename, purpose, bytes, created_at, "
                "blob_name) VALUES (?, 'k', 'a.txt', 'user_data', 1, ?, ?)",
                [f"file-{suffix}", created_at, f"file-{suffix}"],
            )
            conn.execute(
                "INSERT INTO batches (id, api_key_id, endpoint, input_file_id, "
                "completion_window, status, created_at) "
                "VALUES (?, 'k', '/v1/embeddings', 'file-x', '24h', 'completed', ?)",
                [f"batch_{suffix}", created_at],
            )


def test_an_old_database_keeps_its_list_order_and_new_objects_come_after(tmp_path: Path) -> None:
    """Rows from before creation order was stored keep the order lists showed
    them in (created_at, then id); objects made after the upgrade, even in
    the same second, come after every one of them."""
    path = tmp_path / "old.duckdb"
    v1_database(path, [("b", 100), ("a", 100), ("c", 99)])
    store = MetadataStore(path)
    try:
        version = store.query("SELECT max(version) FROM schema_version")[0][0]
        assert version == metadata.SCHEMA_VERSION
        store.insert_file(file_record("k", created_at=100, file_id="file-0"))
        store.insert_batch(batch_record("batch_0", api_key_id="k", created_at=100))
        listed = [f.id for f in store.list_files("k", order="asc")[0]]
        assert listed == ["file-c", "file-a", "file-b", "file-0"]
        listed = [b.id for b in store.list_batches("k", order="asc")[0]]
        assert listed == ["batch_c", "batch_a", "batch_b", "batch_0"]
        assert [b.id for b in store.terminal_batches()] == listed[:3]
    finally:
        store.close()


def test_file_object_leaks_nothing_internal(store: MetadataStore) -> None:
    obj = file_object(file_record("k", created_at=1))
    assert set(obj) == {"id", "object", "bytes", "created_at", "filename", "purpose", "expires_at"}


def test_one_default_provider_at_a_time(store: MetadataStore) -> None:
    store.upsert_provider(
        ProviderRecord(name="a", base_url="http://a", api_key="k", is_default=True, models=["m"])
    )
    store.upsert_provider(
        ProviderRecord(name="b", base_url="http://b", api_key="k", is_default=True)
    )
    providers = {p.name: p for p in store.list_providers()}
    assert (providers["a"].is_default, providers["b"].is_default) == (False, True)
    assert providers["a"].models == ["m"]
    assert store.delete_provider("a") and not store.delete_provider("a")


def test_reads_run_beside_a_write_and_see_only_committed_rows(store: MetadataStore) -> None:
    """A poll or a list must not queue behind a write: while a transaction
    holds the write lock, reads from other threads finish, and they see the
    rows as they were before it; once it commits, the next read sees them."""
    key, _ = store.create_api_key("reader")
    before = file_record(key.id, created_at=now() - 10)
    store.insert_file(before)
    pending = file_record(key.id, created_at=now())
    with ThreadPoolExecutor(max_workers=4) as pool, store.transaction() as conn:
        conn.execute(
            "INSERT INTO files (id, api_key_id, filename, purpose, bytes, created_at, blob_name) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [pending.id, key.id, pending.filename, "batch", 3, pending.created_at, pending.id],
        )
        reads = [pool.submit(store.list_files, key.id) for _ in range(8)]
        seen = [[f.id for f in future.result(timeout=10)[0]] for future in reads]
        assert seen == [[before.id]] * 8
        assert store.get_file(pending.id) is None
    assert [f.id for f in store.list_files(key.id)[0]] == [pending.id, before.id]
    assert store.get_file(pending.id) is not None


def test_only_a_whole_header_line_starts_a_migration() -> None:
    schema = (
        "-- preamble: append a block headed `-- migration N`\n"
        "-- migration 1\nCREATE TABLE a (x INT);\n-- see -- migration 7 in the docs\n"
        "-- migration 2\nALTER TABLE a ADD COLUMN y INT;\n"
    )
    assert [(n, body.strip()) for n, body in migrations(schema)] == [
        (1, "CREATE TABLE a (x INT);\n-- see -- migration 7 in the docs"),
        (2, "ALTER TABLE a ADD COLUMN y INT;"),
    ]
    shipped = migrations(resources.files("storage").joinpath("schema.sql").read_text())
    # Increasing, ending at SCHEMA_VERSION; branches get numbers assigned in
    # advance, so a number may be missing until every branch is merged.
    numbers = [n for n, _ in shipped]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1 and numbers[-1] == SCHEMA_VERSION
