"""GET /metrics: the Prometheus text format of the gateway's registry.

Readable with the admin key, or with `metrics_token` when one is set: a
scraper gets a token that can read metrics and nothing else.
"""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth import bearer_token, require_admin
from gateway.state import gateway_state


def _may_read(request: Request) -> None:
    token = gateway_state(request).settings.metrics_token
    given = bearer_token(request)
    if token and given and hmac.compare_digest(given.encode(), token.encode()):
        return
    require_admin(request)


async def metrics(request: Request) -> Response:
    _may_read(request)
    # Rendering asks DuckDB for the batch counts: off the event loop.
    body = await run_in_threadpool(gateway_state(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes: list[Route] = [Route("/metrics", metrics, methods=["GET"])]
