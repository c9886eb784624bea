"""The real system for the benchmarks: Prefect server, gateway, runner and
`batchgate mock-upstream`, as separate processes (harness/stack.py starts and
stops them, by process group, exactly as the end-to-end tests do), plus the
tools to time batches through the official `openai` SDK and to sample each
process's peak RSS.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from harness.stack import ADMIN_KEY, INTERNAL_TOKEN, PrefectServer, Stack
from harness.webhook_receiver import Receiver

TERMINAL = {"completed", "failed", "expired", "cancelled"}
PROVIDER = "openai"
# Metrics and webhooks are on in every benchmark, as in production: /metrics
# is scraped at Prometheus's usual interval and every batch's end is sent to
# a webhook receiver.
SCRAPE_SECONDS = 15.0


def tree_memory(pid: int, children: bool = True) -> int:
    """Memory of a process and all its descendants, in bytes; 0 once gone.
    `children=False`: the process's own RSS only.

    One process: its RSS. A tree (the runner, its forkserver and the flow runs
    forked from it): the sum of each process's PSS, because forked processes
    share their parent's pages and summing RSS would count those pages once
    per process."""
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if children else [])]
    except psutil.Error:
        return 0
    if len(procs) == 1:
        with suppress(psutil.Error):
            return root.memory_info().rss
        return 0
    total = 0
    for proc in procs:
        with suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total


class RssSampler:
    """Samples the RSS of named process trees in a thread; keeps the peak of each."""

    def __init__(
        self,
        pids: Mapping[str, int],
        interval: float = 0.1,
        alone: Collection[str] = ("gateway",),
    ) -> None:
        """`alone`: names sampled without their children: the gateway, whose
        results-table builder is a child process with its own budget."""
        self.pids = dict(pids)
        self.alone = set(alone)
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, pid in list(self.pids.items()):
                memory = tree_memory(pid, children=name not in self.alone)
                self.peak[name] = max(self.peak.get(name, 0), memory)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self) -> dict[str, float]:
        return {name: value / 1e6 for name, value in self.peak.items()}


class BenchSystem:
    """One running stack (one mock latency) on a shared Prefect server."""

    def __init__(
        self, root: Path, prefect: PrefectServer, *, latency_ms: float, concurrency: int
    ) -> None:
        self.concurrency = concurrency
        self.stack = Stack(
            root,
            prefect,
            mock_args=["--latency-ms", str(latency_ms)],
            retention_interval_seconds=3600,
        )
        self.client: Any = None

    def __enter__(self) -> BenchSystem:
        self.stack.__enter__()
        try:
            self.stack.admin(
                "POST",
                "/admin/providers",
                json={
                    "name": PROVIDER,
                    "base_url": f"{self.stack.mock_url}/v1",
                    "api_key": "sk-mock-openai",
                    "default": True,
                    "max_concurrency": self.concurrency,
                },
            )
            self.client = self.stack.client(self.stack.create_key("bench"))
            self.receiver = Receiver().start()
            hook = self.stack.admin("POST", "/admin/webhooks", json={"url": self.receiver.url})
            self.receiver.secret = hook.json()["secret"]
            self._scraping = threading.Event()
            self._scraper = threading.Thread(target=self._scrape, daemon=True)
            self._scraper.start()
        except BaseException:
            self.stack.__exit__()
            raise
        return self

    def _scrape(self) -> None:
        """GET /metrics every SCRAPE_SECONDS, as a Prometheus server would."""
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        while not self._scraping.wait(SCRAPE_SECONDS):
            with suppress(httpx.HTTPError):
                httpx.get(f"{self.stack.url}/metrics", headers=headers, timeout=10)

    def __exit__(self, *exc: object) -> None:
        self._scraping.set()
        self._scraper.join(timeout=15)
        self.receiver.stop()
        self.stack.__exit__()

    def pids(self) -> dict[str, int]:
        """The processes whose peak RSS the tables report."""
        stack = self.stack
        assert stack.gateway and stack.runner and stack.mock
        return {"gateway": stack.gateway.pid, "runner": stack.runner.pid, "mock": stack.mock.pid}

    def upload(self, path: Path) -> str:
        with path.open("rb") as handle:
            return self.client.files.create(file=handle, purpose="batch").id

    def create(self, file_id: str) -> str:
        batch = self.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return batch.id

    def wait(self, batch_id: str, timeout: float, poll: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            batch = self.client.batches.retrieve(batch_id)
            if batch.status in TERMINAL:
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"{batch_id} still {batch.status} after {timeout:.0f} s")
            time.sleep(poll)

    def run_batch(self, file_id: str, timeout: float = 900) -> tuple[float, Any]:
        """Wall time from `batches.create` to `completed`, and the final batch."""
        began = time.perf_counter()
        batch = self.wait(self.create(file_id), timeout)
        wall = time.perf_counter() - began
        if batch.status != "completed" or batch.request_counts.failed:
            raise RuntimeError(f"batch {batch.id} ended {batch.status}: {batch.request_counts}")
        return wall, batch

    def run_batch_read_live(self, file_id: str, timeout: float = 900) -> tuple[float, Any, int]:
        """`run_batch` with a client reading live results by cursor the whole
        time (`GET /v1/batches/{id}/results`, streamed, every 0.5 s); also
        returns how many lines it read."""
        began = time.perf_counter()
        batch_id = self.create(file_id)
        read = [0]
        stop = threading.Event()

        def follow() -> None:
            cursor = ""
            auth = {"Authorization": f"Bearer {self.client.api_key}"}
            with httpx.Client(base_url=f"{self.stack.url}/v1", headers=auth, timeout=300) as http:
                while True:
                    params = {"after": cursor} if cursor else {}
                    url = f"/batches/{batch_id}/results"
                    with http.stream("GET", url, params=params) as response:
                        response.raise_for_status()
                        for block in response.iter_bytes(1 << 20):
                            read[0] += block.count(b"\n")
                        cursor = response.headers["batchgate-next-cursor"]
                        if response.headers["batchgate-results-complete"] == "true":
                            return
                    if stop.wait(0.5):
                        return

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        try:
            batch = self.wait(batch_id, timeout)
        finally:
            reader.join(timeout=120)
            stop.set()
        wall = time.perf_counter() - began
        if batch.status != "completed" or batch.request_counts.failed:
            raise RuntimeError(f"batch {batch.id} ended {batch.status}: {batch.request_counts}")
        return wall, batch, read[0]

    def download_table(self, batch_id: str) -> int:
        """Stream the batch's results table (Parquet); returns its size in bytes."""
        size = 0
        auth = {"Authorization": f"Bearer {self.client.api_key}"}
        url = f"{self.stack.url}/v1/batches/{batch_id}/results"
        with httpx.stream(
            "GET", url, params={"format": "parquet"}, headers=auth, timeout=300
        ) as response:
            response.raise_for_status()
            for block in response.iter_bytes(1 << 20):
                size += len(block)
        return size

    def first_request_delay(self, file_id: str, timeout: float = 120) -> float:
        """Seconds from `batches.create` returning to the mock's first request."""
        self.reset_stats()
        batch_id = self.create(file_id)
        began = time.perf_counter()
        deadline = began + timeout
        with httpx.Client(base_url=self.stack.mock_url) as http:
            while orjson.loads(http.get("/stats").content)["total"] == 0:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"no upstream request for {batch_id}")
                time.sleep(0.01)
        delay = time.perf_counter() - began
        self.wait(batch_id, timeout)
        return delay

    def reset_stats(self) -> None:
        """Clear the mock's counters, keeping its latency (unlike `Stack.reset_mock`)."""
        httpx.post(f"{self.stack.mock_url}/stats/reset").raise_for_status()

    def download(self, file_id: str) -> int:
        """Stream a file's content through the SDK; returns its size in bytes."""
        size = 0
        with self.client.files.with_streaming_response.content(file_id) as response:
            for block in response.iter_bytes(1 << 20):
                size += len(block)
        return size

    @contextmanager
    def input_blocks(self, batch_id: str) -> Iterator[Iterator[bytes]]:
        """The batch's input as the flow reads it: the internal API, streamed."""
        from tasks.worker_api import HttpWorkerAPI

        api = HttpWorkerAPI(self.stack.url, INTERNAL_TOKEN)
        with api.input_blocks(batch_id) as blocks:
            yield blocks

    def baseline(
        self, client: str, path: Path, max_seconds: float = float("inf")
    ) -> tuple[dict[str, Any], float]:
        """Run `bench.baseline` against this mock; returns its result and peak RSS (MB)."""
        cmd = [sys.executable, "-m", "bench.baseline", "--client", client]
        cmd += ["--max-seconds", str(max_seconds)]
        cmd += ["--url", f"{self.stack.mock_url}/v1/chat/completions"]
        cmd += ["--file", str(path), "--concurrency", str(self.concurrency)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        with RssSampler({"baseline": proc.pid}) as sampler:
            out, _ = proc.communicate(timeout=900)
        if proc.returncode:
            raise RuntimeError(f"baseline {client} exited {proc.returncode}")
        return orjson.loads(out.strip().splitlines()[-1]), sampler.peak_mb()["baseline"]
