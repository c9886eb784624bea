"""Shared test support: a real gateway in a subprocess, and an in-process app.

`LiveGateway` runs `python -m batchgate.cli serve` exactly as an operator
would, so tests see the real socket, uvicorn and process boundaries (RSS,
DuckDB's single-process lock). `inprocess_app` builds the same Starlette app
inside the test process for fast HTTP tests that also want to look at the
store directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_CHARS = 4000


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayAdmin:
    """The admin routes of a running gateway; mixed into the test harnesses,
    which set `url` and `admin_key`."""

    url: str
    admin_key: str

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An admin call that must succeed."""
        response = httpx.request(
            method, self.url + path, timeout=30, headers=self.admin_headers(), **kwargs
        )
        response.raise_for_status()
        return response

    def add_provider(
        self, name: str, base_url: str, api_key: str, max_concurrency: int, default: bool = False
    ) -> None:
        """A provider connection through `POST /admin/providers`."""
        self.admin(
            "POST",
            "/admin/providers",
            json={
                "name": name,
                "base_url": base_url,
                "api_key": api_key,
                "default": default,
                "max_concurrency": max_concurrency,
            },
        )

    def create_key(self, name: str) -> str:
        """A new API key through `POST /admin/keys`; returns the clear key."""
        return str(self.admin("POST", "/admin/keys", json={"name": name}).json()["key"])


class LiveGateway(GatewayAdmin):
    """`with LiveGateway(tmp_path) as gw:` - a gateway subprocess on a free port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        admin_key: str = "admin-test-key",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.admin_key = admin_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "gateway.log"
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._clients: list[openai.OpenAI] = []

    @property
    def pid(self) -> int:
        assert self.process is not None, "gateway not started"
        return self.process.pid

    # -- lifecycle --------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "BATCHGATE_DATA_DIR": str(self.data_dir),
                "BATCHGATE_PORT": str(self.port),
                "BATCHGATE_HOST": "127.0.0.1",
                "BATCHGATE_ADMIN_KEY": self.admin_key,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> LiveGateway:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "batchgate.cli", "serve"],
                cwd=REPO_ROOT,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.process.returncode} during "
                    f"start-up:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=2.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"gateway did not answer within {START_TIMEOUT_SECONDS:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after the grace period."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_GRACE_SECONDS)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> LiveGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ----------------------------------------------------------

    def openai_client(self, key: str) -> openai.OpenAI:
        client = openai.OpenAI(api_key=key, base_url=f"{self.url}/v1", max_retries=0)
        self._clients.append(client)
        return client


class FakeFlowRuns:
    """A FlowRunStarter that starts nothing but counts starts; readiness is
    whatever the test says, and no run keeps its batch (every batch whose
    lease lapsed looks dead to the reconciler)."""

    def __init__(self, ready: bool = True) -> None:
        self.is_ready = ready
        self.started: list[str] = []

    async def start_batch(self, batch: Any) -> str | None:
        self.started.append(batch.id)
        return None

    async def ready(self) -> bool:
        return self.is_ready

    async def keeps_batch(self, flow_run_id: str, lapsed_at: float | None) -> bool:
        return False

    async def resume_suspended(self, flow_run_id: str) -> bool:
        return False

    async def aclose(self) -> None:
        return None


def inprocess_app(data_dir: Path, flow_runs: Any | None = None, **settings: Any) -> Any:
    """The gateway's Starlette app in this process (no lifespan run), for
    `httpx.AsyncClient(transport=httpx.ASGITransport(app))`."""
    from gateway.app import create_app
    from tasks.settings import load_settings

    settings.setdefault("admin_key", "admin-test-key")
    return create_app(
        load_settings(data_dir=data_dir, **settings), flow_runs=flow_runs or FakeFlowRuns()
    )


@contextlib.asynccontextmanager
async def asgi_client(app: Any, key: str | None = None):  # noqa: ANN201 - async CM
    """An httpx client speaking to `app` in process, with `key` as bearer if given."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", headers=headers
    ) as client:
        yield client
