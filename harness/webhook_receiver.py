"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that checks
every delivery with the official SDK (`client.webhooks.unwrap`) and the
standardwebhooks library, as a user's receiver would, and remembers them.

It can answer 500 to the first N deliveries, and be stopped and started
again on the same port (a receiver that is down for a while).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import openai
import standardwebhooks
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from harness.live import free_port
from harness.servers import ThreadedServer


@dataclass
class Delivery:
    webhook_id: str
    event: dict[str, Any]  # as the standardwebhooks library verified and parsed it
    sdk_type: str  # the event type the openai SDK parsed


@dataclass
class Receiver:
    secret: str = ""
    fail_first: int = 0  # answer 500 to this many deliveries before accepting
    port: int = field(default_factory=free_port)
    attempts: int = 0
    refused: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadedServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            with self.lock:
                self.attempts += 1
                try:
                    sdk = openai.OpenAI(api_key="unused", webhook_secret=self.secret)
                    sdk_event = sdk.webhooks.unwrap(body, headers)
                    event = standardwebhooks.Webhook(self.secret).verify(body, headers)
                except Exception:
                    self.bad_signatures += 1
                    return Response(status_code=400)
                if self.fail_first > 0:
                    self.fail_first -= 1
                    self.refused += 1
                    return Response(status_code=500)
                self.deliveries.append(Delivery(headers["webhook-id"], event, sdk_event.type))
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def start(self) -> Receiver:
        self.server = ThreadedServer(self._app(), port=self.port).__enter__()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.__exit__()
            self.server = None

    def unique(self) -> dict[str, Delivery]:
        """Deliveries deduplicated on `webhook-id`, as a receiver should."""
        with self.lock:
            return {d.webhook_id: d for d in self.deliveries}

    def for_batch(self, batch_id: str) -> list[Delivery]:
        return [d for d in self.unique().values() if d.event["data"]["id"] == batch_id]

    def wait_for(self, batch_ids: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.for_batch(b) for b in batch_ids):
            assert time.monotonic() < deadline, (
                f"no webhook for {[b for b in batch_ids if not self.for_batch(b)]} "
                f"after {timeout:.0f} s ({self.attempts} attempts, {self.refused} refused)"
            )
            time.sleep(0.1)
