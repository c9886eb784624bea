"""The gateway in this process under uvicorn (real HTTP, real DuckDB) with
batches run inline: each batch's run starts in a thread of this process
through the same `drive_batch` the Prefect flow runs, talking to the
gateway's internal API over HTTP; the provider is `batchgate mock-upstream`'s
app. Much faster than a Prefect server, for the parity twins, the isolation
tables and the conformance fuzzing."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batchgate.mock_provider.server import MockConfig, create_mock_app
from flows.process_batch import drive_batch
from gateway.app import create_app
from harness.live import FakeFlowRuns, GatewayAdmin, free_port
from harness.servers import ThreadedServer, stop_all
from storage.metadata import now
from tasks.settings import Settings, load_settings
from tasks.upstream import UpstreamClient
from tasks.worker_api import HttpWorkerAPI

ADMIN = "admin-parity"
TOKEN = "internal-parity"
TERMINAL = {"completed", "failed", "cancelled", "expired"}


class InlineFlowRuns(FakeFlowRuns):
    """Starts each batch's run in a thread of this process; `held` refuses to
    start (as a Prefect outage would), for twins that need no processor."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: Settings | None = None
        self.held = False
        self.threads: list[threading.Thread] = []

    async def start_batch(self, batch: Any) -> str | None:
        if self.held:
            raise RuntimeError("runner held by the test")
        assert self.settings is not None
        thread = threading.Thread(target=self._run, args=(batch.id,), daemon=True)
        thread.start()
        self.threads.append(thread)
        return None

    def _run(self, batch_id: str) -> None:
        settings = self.settings
        assert settings is not None

        async def go() -> None:
            async with UpstreamClient.from_settings(settings) as client:
                await drive_batch(
                    HttpWorkerAPI.from_settings(settings), client, batch_id, settings=settings
                )

        asyncio.run(go())


class Env(GatewayAdmin):
    def __init__(self, root: Path, **settings_overrides: Any) -> None:
        self.mock = ThreadedServer(create_mock_app(MockConfig(seed=7))).__enter__()
        self.runs = InlineFlowRuns()
        self.cancel_target: list[str] = []
        self.cancelable = ThreadedServer(self._cancelling_upstream()).__enter__()
        port = free_port()
        settings = load_settings(
            data_dir=root,
            port=port,
            admin_key=ADMIN,
            internal_token=TOKEN,
            gateway_url=f"http://127.0.0.1:{port}",
            reconcile_interval_seconds=3600,
            backoff_base_seconds=0.01,
            **settings_overrides,
        )
        self.runs.settings = settings
        self.app = create_app(settings, flow_runs=self.runs)
        self.server = ThreadedServer(self.app, port=port).__enter__()
        self.url = self.server.url
        self.admin_key = ADMIN
        self.state = self.app.state.gateway
        self.admin(
            "POST",
            "/admin/providers",
            json={
                "name": "openai",
                "base_url": f"{self.mock.url}/v1",
                "api_key": "sk-mock-key",
                "default": True,
            },
        )
        self.admin(
            "POST",
            "/admin/providers",
            json={"name": "mistral", "base_url": f"{self.mock.url}/v1", "api_key": "sk-mistral"},
        )
        self.admin(
            "POST",
            "/admin/providers",
            json={
                "name": "cancelable",
                "base_url": f"{self.cancelable.url}/v1",
                "api_key": "sk-cancel-batch",
            },
        )

    def _cancelling_upstream(self) -> Starlette:
        """An upstream that ends the batch from outside while answering (the
        reference's replaced fetch)."""

        async def chat(request: Request) -> JSONResponse:
            for batch_id in self.cancel_target:
                self.state.store.update_batch(batch_id, status="cancelled", cancelled_at=now())
            return JSONResponse(
                {
                    "id": "chatcmpl-batch-cancelled",
                    "object": "chat.completion",
                    "model": "gpt-4o-mini",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

    def close(self) -> None:
        for thread in self.runs.threads:
            thread.join(timeout=30)
        stop_all([self.server, self.cancelable, self.mock])

    def call(self, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            self.url + path,
            timeout=30,
            headers={"Authorization": f"Bearer {key}"},
            **kwargs,
        )

    def upload(
        self, key: str, lines: list[dict[str, Any]] | bytes, name: str = "batch.jsonl"
    ) -> str:
        data = lines if isinstance(lines, bytes) else b"\n".join(orjson.dumps(x) for x in lines)
        response = self.call(
            key,
            "POST",
            "/v1/files",
            data={"purpose": "batch"},
            files={"file": (name, data, "application/json")},
        )
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def create_batch(
        self, key: str, file_id: str, endpoint: str = "/v1/chat/completions", **extra: Any
    ) -> dict[str, Any]:
        response = self.call(
            key,
            "POST",
            "/v1/batches",
            json={
                "input_file_id": file_id,
                "endpoint": endpoint,
                "completion_window": "24h",
                **extra,
            },
        )
        assert response.status_code == 200, response.text
        return response.json()

    def get_batch(self, key: str, batch_id: str) -> dict[str, Any]:
        return self.call(key, "GET", f"/v1/batches/{batch_id}").json()

    def wait(self, key: str, batch_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (batch := self.get_batch(key, batch_id))["status"] not in TERMINAL:
            assert time.monotonic() < deadline, batch
            time.sleep(0.1)
        return batch

    def content(self, key: str, file_id: str) -> bytes:
        response = self.call(key, "GET", f"/v1/files/{file_id}/content")
        assert response.status_code == 200
        return response.content

    def held(self) -> Any:
        env = self

        class Hold:
            def __enter__(self) -> None:
                env.runs.held = True

            def __exit__(self, *exc: object) -> None:
                # The refused starts run after `batches.create` answered; let
                # them finish (and drop their launch reservations) before the
                # test goes on, or a reconciler pass may still find them reserved.
                deadline = time.monotonic() + 30
                while env.state.launches and time.monotonic() < deadline:
                    time.sleep(0.01)
                env.runs.held = False

        return Hold()
