"""Pure ASGI middleware: request ids on every response, and CORS.

Pure ASGI (not BaseHTTPMiddleware) so streamed uploads and downloads pass
through without buffering.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.ids import new_http_request_id

CORS_PREFIXES = ("/v1/files", "/v1/batches")
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project, X-Request-Id"


class RequestIdMiddleware:
    """Give every response an `x-request-id` (the client's, if it sent a sane one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = (
            incoming
            if 0 < len(incoming) <= 128 and incoming.isprintable()
            else new_http_request_id()
        )
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class CorsMiddleware:
    """Answer preflights on the Files and Batches routes; allow listed origins only."""

    def __init__(self, app: ASGIApp, allow_origins: Sequence[str]) -> None:
        self.app = app
        self.allow_origins = set(allow_origins)

    def _origin_headers(self, origin: str | None) -> dict[str, str]:
        if origin and (origin in self.allow_origins or "*" in self.allow_origins):
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(CORS_PREFIXES):
            await self.app(scope, receive, send)
            return
        origin = Headers(scope=scope).get("origin")
        if scope["method"] == "OPTIONS":
            headers = {
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": "600",
                **self._origin_headers(origin),
            }
            await Response(status_code=204, headers=headers)(scope, receive, send)
            return
        extra = self._origin_headers(origin)
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_origin(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in extra.items():
                    headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_origin)
