"""One Prefect runner that serves the three batchgate deployments.

`batchgate up` starts this as a child process; on other machines
`batchgate worker` does the same against a remote gateway. The runner and the
flow-run processes it spawns talk to the gateway over HTTP only (they never
open DuckDB), so all they need is the gateway's URL and the internal token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from flows.deployments import (
    PROCESS_BATCH_DEPLOYMENT,
    PROCESS_CHUNKS_DEPLOYMENT,
    RETENTION_DEPLOYMENT,
)
from tasks.settings import Settings, load_settings

log = logging.getLogger("batchgate.runner")

API_WAIT_SECONDS = 120.0
DEFAULT_POLL_SECONDS = 0.5  # Prefect's default (10 s) makes every batch start late


def worker_environment(settings: Settings) -> dict[str, str]:
    """The variables flow-run processes need, resolved from settings.

    The internal token falls back to the one `batchgate up` keeps in the data
    directory, so a worker on the gateway's own machine needs no extra setup.
    """
    token = settings.internal_token
    token_file = settings.data_dir / "internal_token"
    if not token and token_file.exists():
        token = token_file.read_text().strip()
    if not token:
        raise SystemExit(
            "batchgate worker: BATCHGATE_INTERNAL_TOKEN is not set (and no "
            f"{token_file} exists); copy it from the gateway's data directory."
        )
    return {"BATCHGATE_GATEWAY_URL": settings.public_url, "BATCHGATE_INTERNAL_TOKEN": token}


def poll_seconds() -> float:
    """PREFECT_RUNNER_POLL_FREQUENCY if set, else half a second (a batch waits
    for the next poll before its flow run starts)."""
    raw = os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY")
    return float(raw) if raw else DEFAULT_POLL_SECONDS


def wait_for_prefect_api(timeout: float = API_WAIT_SECONDS) -> None:
    """Wait until the Prefect API answers, so a runner may start before (or
    alongside) its server; `batchgate up` starts both at once to overlap
    their start-up time. Gives up quietly: `serve` then reports the error.

    Without an API URL Prefect would serve against a throwaway in-process
    server that no gateway can reach, so that is refused outright."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise SystemExit(
            "batchgate worker: PREFECT_API_URL is not set; point it at the Prefect "
            "server the gateway uses (e.g. http://prefect-host:4200/api)."
        )

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while (error := client.api_healthcheck()) is not None:
            if time.monotonic() > deadline:
                log.warning("Prefect API still unreachable after %.0f s: %s", timeout, error)
                return
            time.sleep(0.5)


def prefork_flow_runs(preload: list[str]) -> None:
    """Start flow runs by forking a warm process instead of spawning a cold one.

    Prefect 3.8.8 runs a served flow with multiprocessing's "spawn": a fresh
    interpreter that imports Prefect and batchgate again before the first
    request goes out (measured here: 3-6 s of a batch's start). A forkserver
    with those modules preloaded hands each run an already-imported process;
    runs stay isolated processes (a crash or SIGKILL takes one run only). The
    forkserver is a child of this runner, in its process group, so stopping
    the runner's group stops it and its runs. Pinned to Prefect's
    `run_flow_in_subprocess`, which asks for the "spawn" context by name."""
    import multiprocessing
    import multiprocessing.forkserver
    from types import SimpleNamespace

    import prefect.flow_engine as flow_engine

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    multiprocessing.forkserver.ensure_running()

    def get_context(method: str | None = None) -> Any:
        return context if method == "spawn" else multiprocessing.get_context(method)

    # A stand-in for the module: Prefect asks it for get_context and context only.
    flow_engine.multiprocessing = SimpleNamespace(  # type: ignore[attr-defined,assignment]
        get_context=get_context, context=multiprocessing.context
    )


def serve_flows(settings: Settings | None = None, log_level: str = "info") -> None:
    """Register `process-batch/process-batch`, `process-chunks/process-chunks`
    (helper runs of one batch) and `retention/retention` and run their flow
    runs until SIGTERM or Ctrl-C.

    The flows are added as flow objects (not entrypoints), so the runner
    starts each run from the loaded flow rather than a `python -m
    prefect.engine` process that downloads and imports the code again."""
    import asyncio

    from prefect.runner import Runner

    from flows.process_batch import process_batch
    from flows.process_chunks import process_chunks
    from flows.retention import retention

    settings = settings or load_settings()
    # The runner polls every second; Prefect's client would log each poll.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Flow runs are child processes of this one and read settings from the
    # environment, so put the resolved values there.
    os.environ.update(worker_environment(settings))
    # Prefect configures logging in a flow run (root at WARNING): the
    # forkserver sets the `batchgate` loggers to this level (flows/forkserver.py).
    os.environ["BATCHGATE_LOG_LEVEL"] = log_level
    wait_for_prefect_api()
    # The forkserver (and so every run) starts with this environment.
    # Flow runs hand work to threads (asyncio.to_thread); glibc gives each
    # thread its own malloc arena, which inflates a run's RSS for no gain.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    # A run's big buffers (a chunk's input, its results) come and go; a fixed
    # mmap threshold hands them back to the kernel when freed, where glibc's
    # sliding one would soon keep them in the heap (measured: -16 MB peak for
    # a 50,000-line batch).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    prefork_flow_runs(["flows.forkserver"])
    log.info("serving flows for gateway %s (limit %d)", settings.public_url, settings.runner_limit)
    runner = Runner(
        name="batchgate",
        limit=settings.runner_limit,
        query_seconds=poll_seconds(),
        # Keep the retention schedule active while no runner is up: late runs
        # simply run when a runner comes back.
        pause_on_shutdown=False,
    )
    runner.add_flow(process_batch, name=PROCESS_BATCH_DEPLOYMENT)
    runner.add_flow(process_chunks, name=PROCESS_CHUNKS_DEPLOYMENT)
    runner.add_flow(
        retention, name=RETENTION_DEPLOYMENT, interval=settings.retention_interval_seconds
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.start())
