"""The whole system as separate processes, for end-to-end tests: a Prefect
server, the gateway, a runner and `batchgate mock-upstream`, each started
and stopped by PID (process group) the way `batchgate up` does it."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai

from batchgate.up.supervisor import (
    Child,
    http_status,
    log_tail,
    prefect_server_command,
    start_child,
    stop_child,
)
from harness.live import GatewayAdmin, free_port

ADMIN_KEY = "admin-e2e-key"
INTERNAL_TOKEN = "internal-e2e-token"


def wait_for(
    check: Callable[[], bool], what: str, timeout: float, child: Child | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if child is not None and child.popen.poll() is not None:
            raise RuntimeError(f"{what}: {child.name} exited\n{log_tail(child.log_path)}")
        if time.monotonic() > deadline:
            tail = log_tail(child.log_path) if child else ""
            raise TimeoutError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.2)


def prefect_env(prefect_home: Path, api_url: str) -> dict[str, str]:
    """Our environment without any PREFECT_ or BATCHGATE_ setting of the
    outer shell, pointed at one Prefect server and home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHGATE_"))}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


class PrefectServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.child: Child | None = None

    def env(self) -> dict[str, str]:
        env = prefect_env(self.root / "prefect", self.api_url)
        env.update(
            # schedule runs promptly, so the retention test sees its interval
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        )
        return env

    def __enter__(self) -> PrefectServer:
        self.child = start_child(
            "prefect-server",
            prefect_server_command(self.port),
            self.env(),
            self.root / "logs",
        )
        wait_for(
            lambda: http_status(f"{self.api_url}/health") == 200, "Prefect server", 120, self.child
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child:
            stop_child(self.child)


class Stack(GatewayAdmin):
    """Gateway + runner + mock provider on one Prefect server."""

    def __init__(
        self,
        root: Path,
        prefect: PrefectServer,
        mock_args: Sequence[str] = (),
        **settings: Any,
    ) -> None:
        """`mock_args` are extra `batchgate mock-upstream` flags (e.g. `--latency-ms`)."""
        self.root = root
        self.mock_args = list(mock_args)
        self.prefect = prefect
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = ADMIN_KEY
        self.mock_port = free_port()
        self.mock_url = f"http://127.0.0.1:{self.mock_port}"
        self.settings = {k.upper(): str(v) for k, v in settings.items()}
        self.gateway: Child | None = None
        self.runner: Child | None = None
        self.mock: Child | None = None

    def env(self) -> dict[str, str]:
        env = self.prefect.env()
        env.update({f"BATCHGATE_{k}": v for k, v in self.settings.items()})
        env.update(
            BATCHGATE_DATA_DIR=str(self.root / "data"),
            BATCHGATE_PORT=str(self.port),
            BATCHGATE_HOST="127.0.0.1",
            BATCHGATE_ADMIN_KEY=ADMIN_KEY,
            BATCHGATE_INTERNAL_TOKEN=INTERNAL_TOKEN,
            BATCHGATE_GATEWAY_URL=self.url,
            PREFECT_RUNNER_PROCESS_LIMIT="8",
        )
        return env

    def start_gateway(self) -> None:
        self.gateway = start_child(
            "gateway",
            [sys.executable, "-m", "batchgate.cli", "serve"],
            self.env(),
            self.root / "logs",
        )
        wait_for(
            lambda: http_status(f"{self.url}/openapi.json") == 200, "gateway", 60, self.gateway
        )

    def start_runner(self) -> None:
        self.runner = start_child(
            "runner",
            [sys.executable, "-m", "batchgate.cli", "worker"],
            self.env(),
            self.root / "logs",
        )

    def kill_runner(self) -> None:
        """SIGKILL the runner and every flow-run process it spawned."""
        assert self.runner is not None
        os.killpg(self.runner.pid, signal.SIGKILL)
        self.runner.popen.wait(10)

    def __enter__(self) -> Stack:
        self.mock = start_child(
            "mock",
            [sys.executable, "-m", "batchgate.cli", "mock-upstream", "--port", str(self.mock_port)]
            + self.mock_args,
            self.env(),
            self.root / "logs",
        )
        wait_for(lambda: http_status(f"{self.mock_url}/stats") == 200, "mock", 30, self.mock)
        self.start_gateway()
        self.start_runner()
        wait_for(
            lambda: http_status(f"{self.url}/health") == 200, "gateway health", 90, self.runner
        )
        self.add_provider("openai", f"{self.mock_url}/v1", "sk-mock-openai", 64, default=True)
        self.add_provider("mistral", f"{self.mock_url}/v1", "sk-mock-mistral", 16)
        return self

    def __exit__(self, *exc: object) -> None:
        for child in (self.runner, self.gateway, self.mock):
            if child is not None and child.popen.poll() is None:
                stop_child(child)

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=f"{self.url}/v1", max_retries=0, timeout=60)

    def mock_config(self, **fields: Any) -> None:
        httpx.post(f"{self.mock_url}/config", json=fields).raise_for_status()

    def mock_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.mock_url}/stats").json()

    def reset_mock(self) -> None:
        httpx.post(f"{self.mock_url}/stats/reset").raise_for_status()
        self.mock_config(latency_ms=0, failure_rate=0, rate_429=0)


def prefect_artifacts(stack: Stack, key: str) -> list[dict[str, Any]]:
    """Artifacts by key, newest first (raw API: the client's filter model sends
    nulls this server version refuses)."""
    response = httpx.post(
        f"{stack.prefect.api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 5},
    )
    response.raise_for_status()
    return response.json()
