"""The webhook delivery loop: sends what the outbox holds, signed, with retries.

A batch's terminal transition writes its outbox rows in the same
transaction (`MetadataStore.transition_batch`), so an ended batch always
has its deliveries queued, also across a gateway crash. This loop asks for
due rows every `webhook_poll_seconds`, POSTs each (signed per Standard
Webhooks, tasks/webhooks.py), and records the attempt: delivered on a 2xx,
else tried again after an exponential backoff, given up after
`webhook_max_attempts`. Delivery is at-least-once: a crash after the POST
and before the record sends again, with the same `webhook-id` (the event
id) for the receiver to dedupe on.

It runs on the gateway's event loop beside the API but never in a batch's
path. Each delivery is a task of its own that a pass starts and does not
wait for, so a slow or dead receiver delays only its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from starlette.concurrency import run_in_threadpool

from storage.records import WebhookDelivery
from tasks.crashpoints import crash_point
from tasks.webhooks import delivered, event_payload, next_attempt, signed_headers

if TYPE_CHECKING:
    from gateway.state import GatewayState

log = logging.getLogger("batchgate.webhooks")

# Deliveries in flight at most; due rows beyond it start as others end.
BATCH = 64


class Posts:
    """The deliveries and HTTP posts in flight, so shutdown can cut the posts
    short without interrupting the loop's DuckDB calls: a DuckDB call runs in
    a thread that cancelling its task does not stop, and the store closes
    right after."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Future[httpx.Response]] = set()
        # One task per outbox row on its way, by (event id, endpoint id): a
        # pass starts the due rows not already here and does not wait for them.
        self.deliveries: dict[tuple[str, str], asyncio.Task[str]] = {}
        # Rows whose delivery ended while a pass was reading the outbox: that
        # read may predate their record, so the pass leaves them to the next.
        self.ended: set[tuple[str, str]] = set()
        # Set when a delivery ends after a pass that left due rows behind (no room).
        self.room = asyncio.Event()

    async def post(self, client: httpx.AsyncClient, url: str, **kwargs: Any) -> httpx.Response:
        if self.stopping.is_set():  # a pass that began before the stop sends nothing more
            raise asyncio.CancelledError
        future = asyncio.ensure_future(client.post(url, **kwargs))
        self.in_flight.add(future)
        try:
            return await future
        finally:
            self.in_flight.discard(future)

    def stop(self) -> None:
        self.stopping.set()
        for future in self.in_flight:
            future.cancel()


async def deliver(
    state: GatewayState, client: httpx.AsyncClient, item: WebhookDelivery, posts: Posts
) -> str:
    """One attempt at one delivery; returns its outcome (delivered, retry,
    failed, or interrupted by shutdown: then nothing is recorded and the
    next start sends it again)."""
    body = event_payload(item.event_id, item.type, item.created_at, item.batch_id)
    crash_point("webhooks:before_send")
    try:
        response = await posts.post(
            client,
            item.url,
            content=body,
            headers=signed_headers(item.secret, item.event_id, body, time.time()),
        )
        ok, error = delivered(response.status_code), f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        ok, error = False, type(exc).__name__
    except asyncio.CancelledError:
        if not posts.stopping.is_set():
            raise
        return "interrupted"
    settings = state.settings
    retry_at = None
    if not ok:
        retry_at = next_attempt(
            item.attempts + 1,
            time.time(),
            max_attempts=settings.webhook_max_attempts,
            base=settings.webhook_backoff_base_seconds,
            cap=settings.webhook_backoff_max_seconds,
        )
    await run_in_threadpool(
        state.store.settle_webhook_delivery,
        item.event_id,
        item.endpoint_id,
        delivered=ok,
        next_attempt_at=retry_at,
        error=None if ok else error,
    )
    outcome = "delivered" if ok else ("retry" if retry_at is not None else "failed")
    state.metrics.webhook_deliveries.labels(item.type, outcome).inc()
    if not ok:
        # The endpoint's id, never its URL (it may carry a token).
        log.warning(
            "webhook %s for %s to endpoint %s: %s (attempt %d, %s)",
            item.type,
            item.batch_id,
            item.endpoint_id,
            error,
            item.attempts + 1,
            "will retry" if retry_at is not None else "giving up",
        )
    return outcome


async def deliver_due(state: GatewayState, client: httpx.AsyncClient, posts: Posts) -> int:
    """Start a delivery for each due row not already on its way, at most
    BATCH in flight; how many started. It does not wait for them: a receiver
    that holds its answer until the timeout holds only its own deliveries."""
    on_way = len(posts.deliveries)
    if on_way >= BATCH:
        return 0
    posts.ended.clear()
    due = await run_in_threadpool(state.store.due_webhook_deliveries, time.time(), BATCH + on_way)
    busy = posts.deliveries.keys() | posts.ended
    fresh = [d for d in due if (d.event_id, d.endpoint_id) not in busy]
    left_behind = len(fresh) > BATCH - on_way
    for item in fresh[: BATCH - on_way]:
        key = (item.event_id, item.endpoint_id)
        task = asyncio.create_task(deliver(state, client, item, posts))
        posts.deliveries[key] = task
        task.add_done_callback(functools.partial(_ended, posts, key, left_behind))
    return min(len(fresh), BATCH - on_way)


def _ended(posts: Posts, key: tuple[str, str], left_behind: bool, task: asyncio.Task[None]) -> None:
    posts.deliveries.pop(key, None)
    posts.ended.add(key)
    if left_behind:
        posts.room.set()  # due rows wait for room: the next pass need not wait a poll
    if not task.cancelled() and task.exception() is not None:
        log.error("webhook delivery failed", exc_info=task.exception())


@contextlib.asynccontextmanager
async def running(state: GatewayState) -> AsyncIterator[None]:
    """Run the delivery loop while the app lives."""
    settings = state.settings

    posts = Posts()

    async def loop(client: httpx.AsyncClient) -> None:
        while not posts.stopping.is_set():
            posts.room.clear()
            try:
                await deliver_due(state, client, posts)
            except Exception:
                log.exception("webhook delivery pass failed")
            stop, room = (
                asyncio.ensure_future(posts.stopping.wait()),
                asyncio.ensure_future(posts.room.wait()),
            )
            await asyncio.wait(
                {stop, room},
                timeout=settings.webhook_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stop.cancel()
            room.cancel()

    timeout = httpx.Timeout(settings.webhook_timeout_seconds)
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False
    ) as client:
        task = asyncio.create_task(loop(client))
        try:
            yield
        finally:
            # Cut the posts short, let the pass record what it has and end:
            # never cancel the loop inside a DuckDB call.
            posts.stop()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.gather(*posts.deliveries.values(), return_exceptions=True)
