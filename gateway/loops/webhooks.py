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
path: a slow or dead receiver delays only its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
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

# Due rows taken per pass; a full pass goes on at once instead of sleeping.
BATCH = 64


class Posts:
    """The HTTP posts in flight, so shutdown can cut them short without
    interrupting the loop's DuckDB calls: a DuckDB call runs in a thread that
    cancelling its task does not stop, and the store closes right after."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Future[httpx.Response]] = set()

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
    """Send every due delivery once (concurrently); how many were due."""
    due = await run_in_threadpool(state.store.due_webhook_deliveries, time.time(), BATCH)
    await asyncio.gather(*(deliver(state, client, item, posts) for item in due))
    return len(due)


@contextlib.asynccontextmanager
async def running(state: GatewayState) -> AsyncIterator[None]:
    """Run the delivery loop while the app lives."""
    settings = state.settings

    posts = Posts()

    async def loop(client: httpx.AsyncClient) -> None:
        while not posts.stopping.is_set():
            try:
                if await deliver_due(state, client, posts) >= BATCH:
                    continue
            except Exception:
                log.exception("webhook delivery pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(posts.stopping.wait(), settings.webhook_poll_seconds)

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
