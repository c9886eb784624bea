"""GET /health: no key; 200 once flow runs can be created.

A load balancer or `batchgate up` polls this; "starting" (503) means
batches would be accepted but no Prefect deployment could run them yet.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.state import gateway_state

log = logging.getLogger("batchgate.gateway")

# Prefect's client can hang on an unreachable server; health must not.
READY_TIMEOUT_SECONDS = 5.0


async def flow_runs_ready(flow_runs: object) -> bool:
    try:
        return bool(
            await asyncio.wait_for(
                flow_runs.ready(),  # type: ignore[attr-defined]
                READY_TIMEOUT_SECONDS,
            )
        )
    except Exception as exc:  # a broken probe means "not ready", never a 500
        log.debug("flow-run readiness probe failed: %s", exc)
        return False


async def health(request: Request) -> Response:
    ready = await flow_runs_ready(gateway_state(request).flow_runs)
    if ready:
        return JSONResponse({"status": "ok", "prefect": "ok"})
    return JSONResponse({"status": "starting", "prefect": "unavailable"}, status_code=503)


routes: list[Route] = [Route("/health", health, methods=["GET"])]
