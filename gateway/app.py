"""The Starlette app factory: state, middleware, routes, error handlers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway.auth import load_or_create_secret
from gateway.errors import EXCEPTION_HANDLERS
from gateway.flow_runs import FlowRunStarter, PrefectFlowRuns
from gateway.loops import reconciler
from gateway.loops import webhooks as webhook_loop
from gateway.metrics import GatewayMetrics, HttpMetricsMiddleware
from gateway.middleware import CorsMiddleware, RequestIdMiddleware
from gateway.routes import (
    admin,
    batches,
    files,
    health,
    internal,
    metrics,
    openapi,
    results,
    webhooks,
)
from gateway.state import GatewayState
from storage.blobs import BlobStore
from storage.metadata import MetadataStore
from storage.private import make_private_dir, tighten_tree
from storage.secrets import load_or_create_keys
from tasks.ledger import BatchLedger
from tasks.settings import Settings

log = logging.getLogger("batchgate.gateway")

# Every route the gateway serves; tests/integration/test_isolation.py checks
# each one's credentials from this list, so a new route is checked too.
ROUTES = [
    *health.routes,
    *openapi.routes,
    *files.routes,
    *batches.routes,
    *results.routes,
    *admin.routes,
    *internal.routes,
    *webhooks.routes,
    *metrics.routes,
]


def build_state(settings: Settings, flow_runs: FlowRunStarter | None = None) -> GatewayState:
    make_private_dir(settings.data_dir)
    secret_keys, created = load_or_create_keys(settings.secret_key, settings.data_dir)
    if created:
        log.warning("generated the provider-key secret, stored in %s", secret_keys.source)
    store = MetadataStore(settings.db_path, secret_keys)
    blobs = BlobStore(settings.blob_dir)
    # An older install left 0755/0644 paths; DuckDB's file follows the umask.
    tightened = tighten_tree(settings.data_dir)
    if tightened:
        log.info("made %d paths under %s owner-only", tightened, settings.data_dir)
    blobs.remove_debris()
    admin_key = settings.admin_key
    if not admin_key:
        admin_key, created = load_or_create_secret(settings.data_dir / "admin_key")
        if created:
            log.warning("generated admin key, stored in %s/admin_key", settings.data_dir)
    internal_token = (
        settings.internal_token or load_or_create_secret(settings.data_dir / "internal_token")[0]
    )
    gateway_metrics = GatewayMetrics(store.batch_status_counts, store.live_batch_ids)
    return GatewayState(
        settings=settings,
        store=store,
        blobs=blobs,
        admin_key=admin_key,
        internal_token=internal_token,
        flow_runs=flow_runs or PrefectFlowRuns(settings),
        ledger=BatchLedger(
            store,
            blobs,
            lease_seconds=settings.lease_seconds,
            prices=settings.prices,
            on_chunk=gateway_metrics.add_chunk,
            fanout_runs=settings.fanout_runs,
        ),
        metrics=gateway_metrics,
    )


def create_app(settings: Settings, flow_runs: FlowRunStarter | None = None) -> Starlette:
    state = build_state(settings, flow_runs)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        admin.load_configured_providers(state)
        async with reconciler.running(state), webhook_loop.running(state):
            yield
        await state.flow_runs.aclose()
        state.store.close()

    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(HttpMetricsMiddleware, metrics=state.metrics),
            Middleware(RequestIdMiddleware),
            Middleware(CorsMiddleware, allow_origins=settings.cors_origins),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.gateway = state
    return app
