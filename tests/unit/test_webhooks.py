"""Webhook endpoints and the outbox in the metadata store, and the signing:
an ended batch always has its deliveries queued, only to the endpoints that
should hear it, with a secret nobody can read from the database file."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
import standardwebhooks

from gateway.app import build_state
from gateway.loops import webhooks as webhook_loop
from gateway.state import GatewayState
from harness.records import batch_record
from harness.webhook_receiver import Receiver
from storage.ids import new_batch_id
from storage.metadata import MetadataStore
from storage.secrets import SecretKeys, new_key
from tasks.settings import Settings
from tasks.webhooks import EVENT_TYPES, event_payload, next_attempt, retry_delay, signed_headers


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    s = MetadataStore(tmp_path / "meta.duckdb", SecretKeys(new_key()))
    yield s
    s.close()


def _batch(store: MetadataStore, key_id: str | None, status: str = "in_progress") -> str:
    record = batch_record(new_batch_id(), api_key_id=key_id, status=status)
    store.insert_batch(record)
    return record.id


def test_a_terminal_status_queues_one_event_per_matching_endpoint(store: MetadataStore) -> None:
    mine = store.create_webhook_endpoint("http://127.0.0.1:1/mine", ["batch.completed"], "key_a")
    everyone = store.create_webhook_endpoint(
        "http://127.0.0.1:1/all", ["batch.completed", "batch.failed"], None
    )
    store.create_webhook_endpoint("http://127.0.0.1:1/other", ["batch.completed"], "key_b")
    store.create_webhook_endpoint("http://127.0.0.1:1/fails", ["batch.failed"], "key_a")
    batch_id = _batch(store, "key_a")

    assert store.transition_batch(batch_id, ["in_progress"], status="finalizing")
    assert store.due_webhook_deliveries(time.time() + 1) == []  # not terminal yet
    assert store.transition_batch(batch_id, ["finalizing"], status="completed", completed_at=1)

    due = store.due_webhook_deliveries(time.time() + 1)
    assert {d.endpoint_id for d in due} == {mine.id, everyone.id}
    assert {d.type for d in due} == {"batch.completed"} and {d.batch_id for d in due} == {batch_id}
    assert len({d.event_id for d in due}) == 1 and due[0].event_id.startswith("evt_")
    assert {d.secret for d in due} == {mine.secret, everyone.secret}  # opened to sign


def test_a_lost_compare_and_set_queues_nothing_and_a_cancel_queues_its_event(
    store: MetadataStore,
) -> None:
    store.create_webhook_endpoint("http://127.0.0.1:1/all", ["batch.cancelled"], None)
    batch_id = _batch(store, "key_a", status="completed")
    assert not store.transition_batch(batch_id, ["cancelling"], status="cancelled")
    assert store.due_webhook_deliveries(time.time() + 1) == []
    cancelled = _batch(store, "key_a", status="cancelling")
    assert store.transition_batch(cancelled, ["cancelling"], status="cancelled", cancelled_at=1)
    (due,) = store.due_webhook_deliveries(time.time() + 1)
    assert (due.batch_id, due.type) == (cancelled, "batch.cancelled")


def test_the_secret_is_sealed_at_rest_and_never_listed(tmp_path: Path) -> None:
    db = tmp_path / "meta.duckdb"
    store = MetadataStore(db, SecretKeys(new_key()))
    record = store.create_webhook_endpoint("https://example.invalid/hook", ["batch.failed"], None)
    assert record.secret.startswith("whsec_")
    listed = store.list_webhook_endpoints()
    assert [e.id for e in listed] == [record.id] and listed[0].secret.startswith("fernet:")
    store.close()
    assert record.secret.encode() not in db.read_bytes()


def test_attempts_are_recorded_until_delivered_or_given_up(store: MetadataStore) -> None:
    endpoint = store.create_webhook_endpoint("http://127.0.0.1:1/h", ["batch.failed"], None)
    first, second = _batch(store, None), _batch(store, None)
    for batch_id in (first, second):
        store.transition_batch(batch_id, ["in_progress"], status="failed", failed_at=1)
    due = {d.batch_id: d for d in store.due_webhook_deliveries(time.time() + 1)}
    later = time.time() + 60
    store.settle_webhook_delivery(
        due[first].event_id, endpoint.id, delivered=False, next_attempt_at=later, error="HTTP 500"
    )
    store.settle_webhook_delivery(due[second].event_id, endpoint.id, delivered=True)
    assert store.due_webhook_deliveries(time.time() + 1) == []
    (retry,) = store.due_webhook_deliveries(later + 1)
    assert retry.batch_id == first and retry.attempts == 1
    store.settle_webhook_delivery(retry.event_id, endpoint.id, delivered=False, error="HTTP 500")
    assert store.due_webhook_deliveries(later + 1) == []
    assert store.webhook_outbox_counts() == {"delivered": 1, "failed": 1}


def test_deleting_an_endpoint_drops_its_pending_deliveries(store: MetadataStore) -> None:
    endpoint = store.create_webhook_endpoint("http://127.0.0.1:1/h", ["batch.expired"], None)
    store.transition_batch(_batch(store, None), ["in_progress"], status="expired", expired_at=1)
    assert store.delete_webhook_endpoint(endpoint.id)
    assert not store.delete_webhook_endpoint(endpoint.id)
    assert store.due_webhook_deliveries(time.time() + 1) == []
    assert store.list_webhook_endpoints() == []
    store.transition_batch(_batch(store, None), ["in_progress"], status="expired", expired_at=1)
    assert store.webhook_outbox_counts() == {"failed": 1}  # nothing new for a deleted one


def test_rotation_re_seals_webhook_secrets(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "meta.duckdb", SecretKeys(new_key()))
    endpoint = store.create_webhook_endpoint("http://127.0.0.1:1/h", ["batch.failed"], None)
    fresh = SecretKeys(new_key())
    store.rotate_provider_keys(fresh)
    store.close()
    store = MetadataStore(tmp_path / "meta.duckdb", fresh)
    store.transition_batch(_batch(store, None), ["in_progress"], status="failed", failed_at=1)
    (due,) = store.due_webhook_deliveries(time.time() + 1)
    assert due.secret == endpoint.secret
    store.close()


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_a_signed_event_verifies_with_the_sdk_and_standard_webhooks(event_type: str) -> None:
    from storage.ids import new_webhook_secret

    secret = new_webhook_secret()
    body = event_payload("evt_1", event_type, 1700000000, "batch_1")
    headers = signed_headers(secret, "evt_1", body, time.time())
    event = openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(body, headers)
    # The SDK parses each type into its own model (BatchFailedWebhookEvent, ...).
    assert type(event).__name__ == "Batch" + event_type.split(".")[1].title() + "WebhookEvent"
    assert (event.type, event.id, event.data.id, event.object, event.created_at) == (
        event_type,
        "evt_1",
        "batch_1",
        "event",
        1700000000,
    )
    assert standardwebhooks.Webhook(secret).verify(body, headers)["created_at"] == 1700000000
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="u", webhook_secret=new_webhook_secret()).webhooks.unwrap(
            body, headers
        )


def test_backoff_doubles_up_to_its_cap_and_gives_up_after_the_last_attempt() -> None:
    assert [retry_delay(n, 5, 60) for n in range(1, 6)] == [5, 10, 20, 40, 60]
    assert next_attempt(2, 100.0, max_attempts=3, base=1, cap=10) == 102.0
    assert next_attempt(3, 100.0, max_attempts=3, base=1, cap=10) is None


def test_retention_prunes_old_settled_deliveries_and_keeps_pending_ones(
    store: MetadataStore,
) -> None:
    endpoint = store.create_webhook_endpoint("http://127.0.0.1:1/h", ["batch.failed"], None)
    done, waiting = _batch(store, None), _batch(store, None)
    for batch_id in (done, waiting):
        store.transition_batch(batch_id, ["in_progress"], status="failed", failed_at=1)
    delivered = next(d for d in store.due_webhook_deliveries(time.time() + 1) if d.batch_id == done)
    store.settle_webhook_delivery(delivered.event_id, endpoint.id, delivered=True)

    assert store.prune_webhook_outbox(int(time.time()) - 60) == 0  # too young
    assert store.prune_webhook_outbox(int(time.time()) + 60) == 1
    assert [d.batch_id for d in store.due_webhook_deliveries(time.time() + 1)] == [waiting]


@contextlib.asynccontextmanager
async def hanging_endpoint() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A receiver that takes the connection and never answers: its URL, and
    an event set once a delivery reached it."""
    accepted = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/h", accepted
    finally:
        server.close()


def loop_state(tmp_path: Path) -> GatewayState:
    """A gateway's state for the delivery loop alone: quick polls, a 60 s timeout."""
    settings = Settings(data_dir=tmp_path, webhook_poll_seconds=0.05, webhook_timeout_seconds=60)
    return build_state(settings, flow_runs=object())  # type: ignore[arg-type]


async def test_shutdown_cuts_a_hanging_delivery_short_and_keeps_it_for_the_next_start(
    tmp_path: Path,
) -> None:
    """A receiver that never answers must not hold the gateway's shutdown,
    and the loop must not be cut inside a DuckDB call (the store closes next)."""
    state = loop_state(tmp_path)
    store = state.store
    try:
        async with hanging_endpoint() as (url, accepted):
            store.create_webhook_endpoint(url, ["batch.failed"], None)
            store.transition_batch(
                _batch(store, None), ["in_progress"], status="failed", failed_at=1
            )
            async with webhook_loop.running(state):
                await asyncio.wait_for(accepted.wait(), 10)
                began = time.monotonic()
            assert time.monotonic() - began < 5  # not the 60 s delivery timeout
        (pending,) = store.due_webhook_deliveries(time.time() + 1)
        assert pending.attempts == 0  # nothing recorded: sent again after a restart
    finally:
        store.close()


async def test_a_receiver_that_never_answers_holds_back_no_other_endpoint(
    tmp_path: Path,
) -> None:
    """Endpoint A takes the connection and never answers (60 s timeout); an
    event for endpoint B that comes after still arrives at once."""
    state = loop_state(tmp_path)
    store = state.store
    receiver = Receiver().start()
    try:
        async with hanging_endpoint() as (url, accepted):
            store.create_webhook_endpoint(url, ["batch.failed"], None)
            hook = store.create_webhook_endpoint(receiver.url, ["batch.expired"], None)
            receiver.secret = hook.secret
            async with webhook_loop.running(state):
                store.transition_batch(
                    _batch(store, None), ["in_progress"], status="failed", failed_at=1
                )
                await asyncio.wait_for(accepted.wait(), 10)
                expired = _batch(store, None)
                store.transition_batch(expired, ["in_progress"], status="expired", expired_at=1)
                began = time.monotonic()
                while not receiver.for_batch(expired):
                    assert time.monotonic() - began < 5, "held back by the hanging receiver"
                    await asyncio.sleep(0.05)
        assert receiver.bad_signatures == 0
    finally:
        receiver.stop()
        store.close()
