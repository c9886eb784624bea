"""`batchgate up` as a user runs it: one real start (Prefect server, runner,
gateway), then SIGTERM; plus the fast checks around it (port clash, process
cleanup, prefect.yaml)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from gateway.supervisor import make_plan, start_child, stop_child, ui_url_for
from tasks.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


@pytest.fixture
def up_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, int, int]]:
    port, prefect_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "up"],
        cwd=ROOT,
        env=clean_env(tmp_path / "data", port, prefect_port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(proc)
    try:
        yield proc, output, port, prefect_port
    finally:
        if proc.poll() is None:  # the test failed before stopping it
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def wait_healthy(proc: subprocess.Popen[str], output: Output, port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"batchgate up exited early:\n{output.text}"
        try:
            healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
            if healthy and "ready after" in output.text:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f'not ready (/health 200 and "ready" printed) within 120 s:\n{output.text}')


def live(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_up_serves_prints_a_working_key_and_stops_every_child(up_process) -> None:
    proc, output, port, prefect_port = up_process
    wait_healthy(proc, output, port)

    text = output.text
    assert f"http://127.0.0.1:{port}/v1" in text
    assert f"http://127.0.0.1:{prefect_port}" in text
    match = re.search(r"API key:\s+(\S+)", text)
    assert match, text
    files = httpx.get(
        f"http://127.0.0.1:{port}/v1/files",
        headers={"Authorization": f"Bearer {match.group(1)}"},
        timeout=10,
    )
    assert files.status_code == 200, files.text
    for name in ("process-batch/process-batch", "retention/retention"):
        response = httpx.get(
            f"http://127.0.0.1:{prefect_port}/api/deployments/name/{name}", timeout=10
        )
        assert response.status_code == 200, (name, response.text)

    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 3  # prefect server, gateway, runner
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, output.text
    assert live(children) == []


def test_up_refuses_a_taken_prefect_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        prefect_port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "up"],
            cwd=ROOT,
            env=clean_env(tmp_path / "data", free_port(), prefect_port),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"port {prefect_port}" in result.stderr
    assert "already in use" in result.stderr


def test_stop_child_also_ends_grandchildren(tmp_path: Path) -> None:
    child = start_child(
        "sleeper", ["sh", "-c", "sleep 600 & sleep 600 & wait"], os.environ, tmp_path
    )
    deadline = time.monotonic() + 10
    while len(psutil.Process(child.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchildren = psutil.Process(child.pid).children(recursive=True)
    assert len(grandchildren) == 2

    stop_child(child)

    assert child.popen.returncode is not None
    assert live(grandchildren) == []
    assert "starting sleeper" in (tmp_path / "sleeper.log").read_text()


def test_plan_uses_an_external_prefect_server_when_told(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, port=9100, prefect_port=4300)
    local = make_plan(settings, {}, "token")
    assert local.local_prefect_port == 4300
    assert local.base_env["PREFECT_API_URL"] == "http://127.0.0.1:4300/api"
    assert local.base_env["PREFECT_HOME"] == str(tmp_path.resolve() / "prefect")
    assert local.prefect_ui_url == "http://127.0.0.1:4300"

    remote = make_plan(settings, {"PREFECT_API_URL": "http://prefect.internal:4200/api"}, "t")
    assert remote.local_prefect_port is None
    assert remote.base_env["PREFECT_API_URL"] == "http://prefect.internal:4200/api"
    assert "PREFECT_HOME" not in remote.base_env
    assert remote.prefect_ui_url == "http://prefect.internal:4200"
    assert ui_url_for("http://x/api", {"PREFECT_UI_URL": "http://ui"}) == "http://ui"


def test_prefect_yaml_points_at_the_served_flows() -> None:
    """prefect.yaml and `batchgate up` must deploy the same flows under the same names."""
    from flows.process_batch import process_batch
    from flows.retention import retention

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in config["deployments"]}
    assert by_name["process-batch"]["entrypoint"] == "flows/process_batch.py:process_batch"
    assert by_name["retention"]["entrypoint"] == "flows/retention.py:retention"
    assert process_batch.name == "process-batch"
    assert retention.name == "retention"
    assert by_name["retention"]["schedules"][0]["interval"] > 0
    assert all(d["work_pool"]["name"] == "batchgate" for d in config["deployments"])


def test_readme_documents_every_setting_with_its_default() -> None:
    """The configuration table in README.md names every Settings field, its
    environment variable and its default, and nothing that does not exist."""
    from tasks.settings import Settings

    rows = re.findall(
        r"^\| `(\w+)` \| `(BATCHGATE_\w+)` \| ([^|]+) \|",
        (ROOT / "README.md").read_text(),
        flags=re.M,
    )
    documented = {name: (env, default.strip()) for name, env, default in rows}
    assert set(documented) == set(Settings.model_fields)
    for name, (env, default) in documented.items():
        assert env == f"BATCHGATE_{name.upper()}"
        value = Settings.model_fields[name].get_default(call_default_factory=True)
        if value is not None and not isinstance(value, Path):
            assert default == f"`{value}`", name
