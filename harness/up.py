"""`batchgate up` as a user runs it, for the tests that start it for real:
its environment (free ports, its own data directory), its output read in a
thread, `batchgate mock-upstream` as its provider, and its children found by
what they run, so a test can SIGKILL one of them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from batchgate.up.supervisor import Child, http_status, start_child, stop_child
from harness.live import GatewayAdmin, free_port
from harness.stack import wait_for

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "admin-up-key"
READY_TIMEOUT = 120.0
# What each child of `up` runs, to find it among the `up` process's children.
CHILD_COMMANDS = {
    "prefect-server": ("batchgate.up.prefect_server", "server", "start"),
    "gateway": ("batchgate.cli", "serve"),
    "runner": ("batchgate.cli", "worker"),
}


def _term_group_then_up(pid: int) -> None:
    os.killpg(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGTERM)


# How users and their tools stop `up`: Ctrl-C in a terminal signals the
# foreground group; a service manager signals the whole group; `uv run`
# (`make up`) forwards the SIGTERM it got to `up`, which then has two.
STOPS: dict[str, Callable[[int], None]] = {
    "SIGTERM to the group": lambda pid: os.killpg(pid, signal.SIGTERM),
    "SIGINT to the group": lambda pid: os.killpg(pid, signal.SIGINT),
    "SIGTERM to the group, then to up": _term_group_then_up,
}


def clean_env(data_dir: Path, port: int, prefect_port: int) -> dict[str, str]:
    """The outer environment minus anything that would point the child at
    another Prefect server or another batchgate configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHGATE_"))}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        BATCHGATE_DATA_DIR=str(data_dir),
        BATCHGATE_PORT=str(port),
        BATCHGATE_PREFECT_PORT=str(prefect_port),
    )
    return env


class Output:
    """Collects a child's stdout+stderr lines in a thread so the pipe never fills."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def wait_ready(
    proc: subprocess.Popen[str], output: Output, url: str, timeout: float = READY_TIMEOUT
) -> None:
    """Until the `up` at `url` answers `/health` 200 and printed `ready`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"batchgate up exited early:\n{output.text}"
        if "ready after" in output.text and http_status(f"{url}/health") == 200:
            return
        time.sleep(0.5)
    pytest.fail(f'not ready (/health 200, "ready" printed) in {timeout:.0f} s:\n{output.text}')


def live(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


class Up(GatewayAdmin):
    """`with Up(tmp_path, lease_seconds=10) as up:` - `batchgate up` on free
    ports with a known admin key and extra settings; stopped by SIGTERM (and
    killed if it does not stop) when the block ends."""

    def __init__(self, root: Path, ports: tuple[int, int] | None = None, **settings: Any) -> None:
        self.root = root
        self.port, self.prefect_port = ports or (free_port(), free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = ADMIN_KEY
        self.env = clean_env(root / "data", self.port, self.prefect_port)
        self.env["BATCHGATE_ADMIN_KEY"] = ADMIN_KEY
        self.env.update({f"BATCHGATE_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc: subprocess.Popen[str] | None = None
        self.output: Output | None = None
        self.mock: Child | None = None
        self.mock_url = ""

    def start(self) -> Up:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchgate.cli", "up"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own process group, as under a shell or a service manager,
            # so a test can signal the group as they do.
            start_new_session=True,
        )
        self.output = Output(self.proc)
        return self

    def __enter__(self) -> Up:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:  # the test failed first
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.mock is not None:
            stop_child(self.mock)
        for proc in self.processes():  # a failed test must not leave orphans behind
            with contextlib.suppress(psutil.Error):
                proc.kill()

    @property
    def text(self) -> str:
        assert self.output is not None
        return self.output.text

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until `/health` answers 200 and `up` printed `ready`."""
        assert self.proc is not None and self.output is not None
        wait_ready(self.proc, self.output, self.url, timeout)

    def api_key(self) -> str:
        match = re.search(r"API key:\s+(\S+)", self.text)
        assert match, self.text
        return match.group(1)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(api_key=self.api_key(), base_url=f"{self.url}/v1", max_retries=0)

    def add_mock_provider(self, *mock_args: str) -> None:
        """Start `batchgate mock-upstream` and make it the default provider."""
        port = free_port()
        self.mock_url = f"http://127.0.0.1:{port}"
        self.mock = start_child(
            "mock",
            [sys.executable, "-m", "batchgate.cli", "mock-upstream", "--port", str(port)]
            + list(mock_args),
            self.env,
            self.root / "logs",
        )
        wait_for(lambda: http_status(f"{self.mock_url}/stats") == 200, "mock", 30, self.mock)
        self.add_provider("openai", f"{self.mock_url}/v1", "sk-mock", 64, default=True)

    def upstream_requests(self) -> dict[str, int]:
        """How many requests the mock answered per custom_id."""
        return dict(httpx.get(f"{self.mock_url}/stats", timeout=30).json()["custom_ids"])

    def child(self, name: str) -> psutil.Process:
        """The running child `name` of `up` (a new process after a restart)."""
        assert self.proc is not None
        words = CHILD_COMMANDS[name]
        for proc in psutil.Process(self.proc.pid).children():
            try:
                cmdline = proc.cmdline()
            except psutil.NoSuchProcess:
                continue
            if all(word in cmdline for word in words):
                return proc
        raise LookupError(f"no {name} under batchgate up")

    def flow_runs(self) -> list[psutil.Process]:
        """The running flow-run processes: children of the runner's forkserver."""
        runner = self.child("runner")
        servers = [p for p in runner.children() if "forkserver" in " ".join(p.cmdline())]
        return [run for server in servers for run in server.children()]

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60) -> psutil.Process:
        """The new process of child `name` once `up` started it again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.text
            try:
                proc = self.child(name)
                if proc.pid != old_pid:
                    return proc
            except LookupError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{name} not restarted within {timeout:.0f} s:\n{self.text}")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this `up`, wherever it sits in the process
        tree (a child of `up`, the forkserver, a flow run, or any of them
        orphaned): those with this `up`'s data directory in their environment."""
        data_dir = self.env["BATCHGATE_DATA_DIR"]
        mock = self.mock.pid if self.mock is not None else None  # the test's, not up's
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.pid != mock and proc.environ().get("BATCHGATE_DATA_DIR") == data_dir:
                    found.append(proc)
        return live(found)

    def wait_gone(self, timeout: float) -> list[psutil.Process]:
        """Until none of this `up`'s processes is left, or `timeout`: what is left."""
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def stop(self, how: str) -> int:
        """Stop `up` as `how` (a key of STOPS) says; its exit code."""
        assert self.proc is not None
        STOPS[how](self.proc.pid)
        return self.proc.wait(timeout=60)

    def interrupt(self) -> tuple[int, float]:
        """Ctrl-C to `up`: its exit code and how long it took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        return code, time.monotonic() - started
