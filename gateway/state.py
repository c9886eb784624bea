"""The gateway's shared state, built once per app by `gateway/app.py`, and
the one typed way a route or a background loop reaches it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.flow_runs import FlowRunStarter
from gateway.metrics import GatewayMetrics
from storage.blobs import BlobStore
from storage.metadata import MetadataStore
from tasks.ledger import BatchLedger
from tasks.settings import Settings


@dataclass
class GatewayState:
    """Everything a request handler may need, built once per app."""

    settings: Settings
    store: MetadataStore
    blobs: BlobStore
    admin_key: str
    internal_token: str
    flow_runs: FlowRunStarter
    ledger: BatchLedger
    # Flow-run starts still in flight after their `batches.create` answered.
    launches: set[asyncio.Task[None]] = field(default_factory=set)
    # The app's Prometheus registry and the totals behind it (gateway/metrics.py).
    metrics: GatewayMetrics = field(default_factory=lambda: GatewayMetrics(dict))


def gateway_state(connection: HTTPConnection) -> GatewayState:
    """The state of the app serving this request."""
    state: GatewayState = connection.app.state.gateway
    return state
