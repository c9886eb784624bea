"""Webhook events in OpenAI's format, signed per Standard Webhooks.

Pure functions: the payload of an event, the headers that sign it, when a
failed delivery is tried again. The gateway's delivery loop
(`gateway/loops/webhooks.py`) does the sending and the outbox bookkeeping.

Signing uses the `standardwebhooks` library (the reference implementation of
the scheme; `webhook-id`, `webhook-timestamp` and `webhook-signature`
headers, HMAC-SHA256 over `id.timestamp.body`), which is what the official
`openai` SDK's `client.webhooks.unwrap` verifies.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks import Webhook

from storage.records import WEBHOOK_EVENTS, WebhookEvent

__all__ = ["EVENT_TYPES", "WEBHOOK_EVENTS", "WebhookEvent"]
EVENT_TYPES: list[WebhookEvent] = sorted(WEBHOOK_EVENTS.values())


def event_payload(event_id: str, event_type: str, created_at: int, batch_id: str) -> bytes:
    """The body OpenAI sends for a batch event (its `Webhook*` event schemas)."""
    event: dict[str, Any] = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created_at": created_at,
        "data": {"id": batch_id},
    }
    return orjson.dumps(event)


def signed_headers(secret: str, message_id: str, body: bytes, timestamp: float) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt. The timestamp is the
    attempt's own (receivers refuse old ones), the id stays the event's, so
    a receiver dedupes retries on `webhook-id`."""
    when = datetime.fromtimestamp(int(timestamp), tz=UTC)
    signature = Webhook(secret).sign(message_id, when, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "batchgate-webhooks",
    }


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next try after `attempts` failed ones (1-based):
    base, 2*base, 4*base, ... at most `cap`."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


def next_attempt(
    attempts: int, now: float, *, max_attempts: int, base: float, cap: float
) -> float | None:
    """When to try again after `attempts` failed tries, or None: give up."""
    if attempts >= max_attempts:
        return None
    return now + retry_delay(attempts, base, cap)


def delivered(status: int) -> bool:
    """Standard Webhooks: any 2xx answer is a delivery; anything else retries."""
    return 200 <= status < 300
