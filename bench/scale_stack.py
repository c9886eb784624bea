"""The processes of the scale-out harness: what runs in the root namespace
(Prefect server, gateway, mock provider) and one worker per test host.

A worker gets a minimal environment, built from nothing rather than copied
from ours: `PATH`, `HOME` (its own directory), the three variables
docs/scale-out.md lists (`PREFECT_API_URL`, `BATCHGATE_GATEWAY_URL`,
`BATCHGATE_INTERNAL_TOKEN`) and the knobs a scenario sets on purpose
(`BATCHGATE_RUNNER_LIMIT`, `BATCHGATE_FANOUT_RUNS`, `BATCHGATE_HOME` for the
work pool). It runs from this checkout with the gateway's directory hidden
(bench/scale_net.py), which `data_dir_check` shows.

Two worker modes, the two of docs/scale-out.md:
- `served`: `batchgate worker` (a Prefect runner serving every deployment);
- `pool`: `prefect worker start --pool batchgate` (a process work pool) on
  the deployments `prefect deploy` made from prefect.yaml (all of
  `flows.deployments.DEPLOYMENT_NAMES`, `process-chunks` included, so a fanned-out
  batch gets its helper runs there too).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai

from batchgate.up import prefect_server
from batchgate.up.supervisor import Child, http_status, start_child, stop_child, stop_children
from bench.scale_net import ROOT_ADDRESS, Host
from flows.deployments import DEPLOYMENT_NAMES
from harness.live import GatewayAdmin, free_port
from harness.stack import prefect_env, wait_for

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "admin-scale-key"
INTERNAL_TOKEN = "bg-internal-scale-token"
POOL = "batchgate"
MODES = ("served", "pool")
KNOWN_422 = "422 Unprocessable Entity"


def worker_argv(mode: str, limit: int) -> list[str]:
    if mode == "served":
        return [sys.executable, "-m", "batchgate.cli", "worker"]
    return [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
            "--type", "process", "--limit", str(limit)]  # fmt: skip


class ScaleStack(GatewayAdmin):
    """`with ScaleStack(hosts, mode=...) as stack:` the root-namespace
    services; `start_worker(host)` / `stop_worker(host)` for the hosts."""

    def __init__(
        self,
        hosts: list[Host],
        *,
        mode: str = "served",
        latency_ms: float = 200.0,
        runner_limit: int = 2,
        max_concurrency: int = 8,
        extra_env: Mapping[str, str] | None = None,
        pool_query_seconds: float | None = None,
        keep_logs: Path | None = None,
    ) -> None:
        assert mode in MODES, mode
        self.hosts = hosts
        self.mode = mode
        self.latency_ms = latency_ms
        self.runner_limit = runner_limit
        self.max_concurrency = max_concurrency
        self.extra_env = dict(extra_env or {})
        # How often a work-pool worker asks for runs (Prefect's default: 10 s).
        self.pool_query_seconds = pool_query_seconds
        self.keep_logs = keep_logs  # where to copy every log when the stack stops
        self.admin_key = ADMIN_KEY
        self._tmp = tempfile.TemporaryDirectory(prefix="bgscale-")
        self.root = Path(self._tmp.name)
        # Everything of the gateway's machine lives under `hidden`: the
        # workers see an empty directory there.
        self.hidden = self.root / "gateway"
        self.data_dir = self.hidden / "data"
        self.prefect_port, self.port, self.mock_port = free_port(), free_port(), free_port()
        self.api_url = f"http://{ROOT_ADDRESS}:{self.prefect_port}/api"
        self.url = f"http://{ROOT_ADDRESS}:{self.port}"
        self.mock_url = f"http://{ROOT_ADDRESS}:{self.mock_port}"
        self.services: list[Child] = []
        self.workers: dict[int, Child] = {}
        self.deploy_output = ""
        self.api_key = ""

    # -- the root namespace ---------------------------------------------------

    def base_env(self) -> dict[str, str]:
        return prefect_env(self.hidden / "prefect", self.api_url)

    def gateway_env(self) -> dict[str, str]:
        env = self.base_env()
        env.update(self.extra_env)
        env.update(
            BATCHGATE_DATA_DIR=str(self.data_dir),
            BATCHGATE_HOST=ROOT_ADDRESS,
            BATCHGATE_PORT=str(self.port),
            BATCHGATE_ADMIN_KEY=ADMIN_KEY,
            BATCHGATE_INTERNAL_TOKEN=INTERNAL_TOKEN,
        )
        return env

    def _start(self, name: str, argv: list[str], env: Mapping[str, str]) -> Child:
        child = start_child(name, argv, env, self.hidden / "logs")
        self.services.append(child)
        return child

    def __enter__(self) -> ScaleStack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.hidden.mkdir(mode=0o700)
        self.data_dir.mkdir(mode=0o700)
        prefect = self._start(
            "prefect-server",
            prefect_server.command(ROOT_ADDRESS, self.prefect_port),
            self.base_env(),
        )
        mock = self._start(
            "mock",
            [
                sys.executable,
                "-m",
                "batchgate.cli",
                "mock-upstream",
                "--host",
                ROOT_ADDRESS,
                "--port",
                str(self.mock_port),
                "--latency-ms",
                str(self.latency_ms),
            ],  # fmt: skip
            self.base_env(),
        )
        wait_for(lambda: http_status(f"{self.api_url}/health") == 200, "Prefect", 180, prefect)
        gateway = self._start(
            "gateway", [sys.executable, "-m", "batchgate.cli", "serve"], self.gateway_env()
        )
        wait_for(lambda: http_status(f"{self.url}/health") is not None, "gateway", 90, gateway)
        wait_for(lambda: http_status(f"{self.mock_url}/stats") == 200, "mock", 60, mock)
        self.add_provider(
            "mock", f"{self.mock_url}/v1", "sk-mock", self.max_concurrency, default=True
        )
        self.api_key = self.create_key("scale")
        if self.mode == "pool":
            self.deploy_output = self.deploy()

    def prefect_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`prefect ...` from the checkout, against the shared server, with
        BATCHGATE_HOME unset (the deployments keep its placeholder)."""
        env = {k: v for k, v in self.base_env().items() if k != "BATCHGATE_HOME"}
        return subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def deploy(self) -> str:
        """The work pool and every prefect.yaml deployment (DEPLOYMENT_NAMES,
        which tests/integration/test_up.py holds equal to prefect.yaml's), one
        `prefect deploy` each (docs/scale-out.md, 3b); what happened, one
        line each.

        With Prefect 3.8.8 on our FastAPI each `prefect deploy` creates its
        deployment and then exits 1 on a `422 ... workers/filter` (its
        "is a worker online?" check sends `limit: null`, which this FastAPI
        refuses): that one is expected and told apart from real failures."""
        created = self.prefect_cli("work-pool", "create", POOL, "--type", "process")
        if created.returncode != 0:
            raise RuntimeError(f"work-pool create failed:\n{created.stdout}{created.stderr}")
        said = []
        for name in DEPLOYMENT_NAMES:
            deployed = self.prefect_cli("--no-prompt", "deploy", "--name", name)
            text = deployed.stdout + deployed.stderr
            made = "successfully created" in text
            if deployed.returncode == 0:
                said.append(f"{name}: created")
            elif made and KNOWN_422 in text and "workers/filter" in text:
                said.append(f"{name}: created, then exit 1 on the known 422 (workers/filter)")
            else:
                raise RuntimeError(f"prefect deploy --name {name} failed:\n{text}")
        return "\n".join(said)

    def close(self) -> None:
        workers = list(self.workers.values())
        stop_children([*workers, *reversed(self.services)], first=workers)
        self.workers.clear()
        self.services.clear()
        if self.keep_logs is not None:
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in [*self.hidden.glob("logs/*.log"), *self.root.glob("hosts/*/*.log")]:
                shutil.copy(log, self.keep_logs / log.name)
        self._tmp.cleanup()

    # -- the hosts --------------------------------------------------------------

    def host_dir(self, host: Host) -> Path:
        path = self.root / "hosts" / host.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def worker_env(self, host: Host) -> dict[str, str]:
        """All a worker machine is given (docs/scale-out.md), plus the knobs."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.host_dir(host)),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PREFECT_API_URL": self.api_url,
            "BATCHGATE_GATEWAY_URL": self.url,
            "BATCHGATE_INTERNAL_TOKEN": INTERNAL_TOKEN,
        }
        if self.mode == "served":
            env["BATCHGATE_RUNNER_LIMIT"] = str(self.runner_limit)
        else:
            env["BATCHGATE_HOME"] = str(REPO)
            if self.pool_query_seconds is not None:
                env["PREFECT_WORKER_QUERY_SECONDS"] = str(self.pool_query_seconds)
        env.update({k: v for k, v in self.extra_env.items() if k.startswith("BATCHGATE_")})
        return env

    def in_host(self, host: Host, argv: list[str]) -> list[str]:
        return host.command(argv, self.hidden)

    def start_worker(self, host: Host) -> None:
        argv = self.in_host(host, worker_argv(self.mode, self.runner_limit))
        # cwd: the checkout, as a worker machine's operator would start it.
        self.workers[host.index] = start_child(
            f"worker-{host.name}", argv, self.worker_env(host), self.host_dir(host), cwd=REPO
        )

    def stop_worker(self, host: Host) -> None:
        child = self.workers.pop(host.index, None)
        if child is not None:
            stop_child(child)

    def forget_worker(self, host: Host) -> Child | None:
        """The host's worker was killed from outside: reap it, stop tracking it."""
        child = self.workers.pop(host.index, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=10)
        return child

    def worker_log(self, host: Host) -> str:
        path = self.host_dir(host) / f"worker-{host.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def data_dir_check(self, host: Host) -> str:
        """What the host sees of the gateway's data directory, and whether it
        reaches the gateway: one line for the harness's output."""
        script = (
            "import os, sys, urllib.error, urllib.request\n"
            "data = sys.argv[1]\n"
            "try:\n"
            "    open(os.path.join(data, 'batchgate.duckdb'), 'rb')\n"
            "    seen = 'READABLE'\n"
            "except OSError as exc:\n"
            "    seen = f'unreadable ({type(exc).__name__}: {exc.strerror})'\n"
            "try:\n"
            "    code = urllib.request.urlopen(sys.argv[2] + '/health', timeout=10).status\n"
            "except urllib.error.HTTPError as exc:\n"
            "    code = exc.code  # 503 until a worker registered the deployment\n"
            "print(f'{data}/batchgate.duckdb {seen}; gateway /health {code}')\n"
        )
        argv = self.in_host(host, [sys.executable, "-c", script, str(self.data_dir), self.url])
        found = subprocess.run(
            argv, env=self.worker_env(host), capture_output=True, text=True, timeout=60
        )
        return (found.stdout + found.stderr).strip()

    # -- the gateway, as the harness sees it ---------------------------------------

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(api_key=self.api_key, base_url=f"{self.url}/v1", max_retries=2)

    def mock_stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.mock_url}/stats", timeout=30).json())

    def reset_mock(self) -> None:
        httpx.post(f"{self.mock_url}/stats/reset", timeout=30).raise_for_status()

    def helper_chunks(self, batch_ids: list[str]) -> list[int]:
        """Chunks each helper run (`<batch id>-helper-<n>`, the process-chunks
        deployment) of these batches checkpointed, from its final state's
        message (flows/process_chunks.py); -1 for a run that has not ended."""
        found = httpx.post(
            f"{self.api_url}/flow_runs/filter",
            json={"flow_runs": {"name": {"like_": "-helper-"}}, "limit": 200},
            timeout=30,
        )
        found.raise_for_status()
        counts = []
        for run in found.json():
            if not run["name"].startswith(tuple(f"{b}-helper-" for b in batch_ids)):
                continue
            message = (run.get("state") or {}).get("message") or ""
            done = re.match(r"(\d+) chunks of ", message)
            counts.append(int(done.group(1)) if done else -1)
        return sorted(counts, reverse=True)

    def refused_internal(self) -> int:
        """Internal-API calls the gateway answered 409 or another 4xx so far
        (a run posting or renewing with a lease token that is no longer valid)."""
        text = self.admin("GET", "/metrics").text
        pattern = re.compile(
            r'^batchgate_http_request_duration_seconds_count\{[^}]*route="/internal[^"]*"'
            r'[^}]*status_class="4xx"[^}]*\}\s+([0-9.e+]+)$',
            re.MULTILINE,
        )
        return int(sum(float(n) for n in pattern.findall(text)))


def wait_until(predicate: Any, what: str, timeout: float, poll: float = 0.5) -> float:
    """Seconds until `predicate()` was true; TimeoutError after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)
    return time.monotonic() - started


@contextlib.contextmanager
def scale_stack(hosts: list[Host], **options: Any) -> Iterator[ScaleStack]:
    with ScaleStack(hosts, **options) as stack:
        yield stack
