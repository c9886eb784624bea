"""Serving an ASGI app over real HTTP from a background thread, for tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from harness.live import free_port


class ThreadedServer:
    """uvicorn on 127.0.0.1:<free port> in a daemon thread; a context manager."""

    def __init__(self, app: Any, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all([self])


def stop_all(servers: list[ThreadedServer]) -> None:
    """Stop several at once: each takes ~0.2 s to notice and shut down, so
    they are all told first and then waited for."""
    for each in servers:
        each.server.should_exit = True
    for each in servers:
        each.thread.join(timeout=10)
