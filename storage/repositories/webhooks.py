"""Webhook endpoints and the outbox of deliveries.

`webhook_endpoints.secret` is sealed like a provider key; the clear secret is
shown once, at creation, and opened only to sign."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import duckdb
import orjson

from storage import ids
from storage import secrets as provider_secrets
from storage.database import (
    Database,
    now,
)
from storage.records import (
    WebhookDelivery,
    WebhookEndpointRecord,
    WebhookEvent,
)


class Webhooks(Database):
    """Endpoints (secrets sealed) and the outbox the delivery loop drains."""

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
        self, url: str, events: Sequence[WebhookEvent], api_key_id: str | None
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
            WebhookDelivery(
                event_id=event_id,
                endpoint_id=endpoint_id,
                type=event_type,
                batch_id=batch_id,
                created_at=created_at,
                attempts=attempts,
                url=url,
                secret=provider_secrets.decrypt(keys, sealed),
            )
            for (
                event_id,
                endpoint_id,
                event_type,
                batch_id,
                created_at,
                attempts,
                url,
                sealed,
            ) in rows
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
