"""A chunk checkpoint is one commit (docs/scale-out.md, the gateway's ceiling):
writes made inside a metadata transaction join it, so they land together or
not at all, and no read made meanwhile is remembered past the commit."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness.records import store_batch
from storage.blobs import BlobStore
from storage.metadata import MetadataStore
from storage.secrets import SecretKeys, new_key
from tasks.ledger import BatchLedger, part_name

CHAT = "/v1/chat/completions"
LINE = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}\n'
USAGE_ROW = {
    "model": "m",
    "provider": "p",
    "lines": 1,
    "succeeded": 1,
    "failed": 0,
    "input_tokens": 7,
    "output_tokens": 5,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "total_tokens": 12,
    "input_chars": 20,
}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[BatchLedger]:
    store = MetadataStore(tmp_path / "meta.duckdb", SecretKeys(new_key()))
    yield BatchLedger(store, BlobStore(tmp_path / "blobs"), lease_seconds=30)
    store.close()


def planned_batch(ledger: BatchLedger) -> tuple[str, str, str]:
    """A batch with a one-chunk plan, claimed: (batch id, lease token, key id)."""
    key, _ = ledger.store.create_api_key("k")
    batch_id = store_batch(ledger.store, ledger.blobs, key.id, LINE, CHAT)
    token = ledger.claim(batch_id, None)["lease_token"]
    chunk = {"index": 0, "start_offset": 0, "end_offset": len(LINE), "first_line": 1}
    ledger.save_plan(
        batch_id, token, total=1, chunks=[{**chunk, "line_count": 1}], errors=[], models=["m"]
    )
    return batch_id, token, key.id


def post(ledger: BatchLedger, batch_id: str, token: str) -> dict[str, Any]:
    return ledger.record_chunk(
        batch_id,
        token,
        0,
        output=b'{"custom_id":"a"}\n',
        errors=b"",
        completed=1,
        failed=0,
        usage=None,
        model="m",
        usage_rows=[USAGE_ROW],
    )


def test_writes_inside_a_transaction_land_together_or_not_at_all(ledger: BatchLedger) -> None:
    store = ledger.store
    batch_id, _, key_id = planned_batch(ledger)
    with pytest.raises(RuntimeError), store.transaction(writes=["batches"]):
        store.complete_chunk(batch_id, 0, completed=1, failed=0, usage=None, model="m")
        store.update_batch(batch_id, lease_expires_at=123.0)
        store.add_spend(key_id, 0, 12, 0.0)
        raise RuntimeError("the gateway failed halfway through a checkpoint")
    batch = store.get_batch(batch_id)
    assert batch is not None and batch.completed == 0 and batch.lease_expires_at != 123.0
    assert not store.get_chunks(batch_id)[0].done
    assert store.get_spend(key_id, 0).tokens == 0

    with store.transaction(writes=["batches"]):
        store.complete_chunk(batch_id, 0, completed=1, failed=0, usage=None, model="m")
        store.update_batch(batch_id, lease_expires_at=123.0)
    batch = store.get_batch(batch_id)
    assert batch is not None and batch.completed == 1 and batch.lease_expires_at == 123.0
    assert store.get_chunks(batch_id)[0].done


def test_a_read_during_the_transaction_is_not_remembered_past_its_commit(
    ledger: BatchLedger,
) -> None:
    """A poll from another thread while a checkpoint is open sees the batch
    as it was; the first poll after the commit sees the new values (the
    joined writes' reads are forgotten after the commit, not before it)."""
    store = ledger.store
    batch_id, _, _ = planned_batch(ledger)
    assert store.get_batch(batch_id).completed == 0  # type: ignore[union-attr]
    with ThreadPoolExecutor(1) as pool, store.transaction(writes=[]):
        store.complete_chunk(batch_id, 0, completed=1, failed=0, usage=None, model="m")
        store.update_batch(batch_id, lease_expires_at=123.0)
        seen = pool.submit(store.get_batch, batch_id).result(timeout=10)
        assert seen is not None and seen.completed == 0 and seen.lease_expires_at != 123.0
    batch = store.get_batch(batch_id)
    assert batch is not None and batch.completed == 1 and batch.lease_expires_at == 123.0


def test_a_checkpoint_that_fails_midway_is_retried_whole_and_spends_once(
    ledger: BatchLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spend and the done mark commit together: a post that failed after the
    done mark used to leave the chunk done and its spend never counted (the
    retried post found it done)."""
    batch_id, token, key_id = planned_batch(ledger)
    real_add_spend = ledger.store.add_spend
    failures = iter([RuntimeError("disk full")])

    def flaky_add_spend(*args: Any) -> None:
        for exc in failures:
            raise exc
        real_add_spend(*args)

    monkeypatch.setattr(ledger.store, "add_spend", flaky_add_spend)
    with pytest.raises(RuntimeError, match="disk full"):
        post(ledger, batch_id, token)
    assert not ledger.chunks(batch_id)[0].done
    assert ledger.store.get_spend(key_id, 0).tokens == 0

    answer = post(ledger, batch_id, token)
    post(ledger, batch_id, token)  # a repeated post changes nothing
    assert answer["status"] == "in_progress"
    assert ledger.chunks(batch_id)[0].done
    assert ledger.blobs.exists(part_name(batch_id, 0, "out"))
    assert ledger.store.get_spend(key_id, 0).tokens == 12
    batch = ledger.batch(batch_id)
    assert batch.completed == 1 and (batch.lease_expires_at or 0) > 0
