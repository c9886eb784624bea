"""A batch's chunk plan is stored whole, in order, once, however many chunks
it has (the rows go in many to a statement: storage/metadata.py)."""

from __future__ import annotations

from pathlib import Path

from storage.metadata import PLAN_ROWS_PER_INSERT, MetadataStore
from storage.records import ChunkRecord
from storage.secrets import SecretKeys, new_key


def plan(batch_id: str, count: int, lines: int = 100) -> list[ChunkRecord]:
    return [
        ChunkRecord(
            batch_id=batch_id,
            chunk_index=i,
            start_offset=i * 5_000,
            end_offset=(i + 1) * 5_000,
            first_line=i * lines + 1,
            line_count=lines,
        )
        for i in range(count)
    ]


def test_a_plan_of_more_chunks_than_one_insert_takes_is_stored_whole_and_once(
    tmp_path: Path,
) -> None:
    store = MetadataStore(tmp_path / "meta.duckdb", SecretKeys(new_key()))
    try:
        count = 2 * PLAN_ROWS_PER_INSERT + 345
        store.save_chunks("batch_big", plan("batch_big", count))
        store.save_chunks("batch_small", plan("batch_small", 3, lines=7))
        store.save_chunks("batch_big", plan("batch_big", 5))  # a resumed run: no change
        saved = store.get_chunks("batch_big")
        assert saved == plan("batch_big", count)
        assert not any(c.done for c in saved)
        assert [c.line_count for c in store.get_chunks("batch_small")] == [7, 7, 7]
    finally:
        store.close()
