"""`batchgate up` as a user runs it: one real start (Prefect server, runner,
gateway), then SIGTERM; a runner SIGKILLed mid-batch, restarted while the
rest keeps serving; plus the fast checks around it (port clash, process
cleanup, restarts of a dying child, prefect.yaml)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from batchgate.up.supervisor import (
    Child,
    CrashLoop,
    RestartPolicy,
    Supervisor,
    http_status,
    make_plan,
    prefect_server_env,
    runner_env,
    start_child,
    stop_child,
    stop_children,
    ui_url_for,
)
from harness.batches import check_batch, create_batch, upload, wait_all_terminal
from harness.lines import chat_lines
from harness.live import free_port
from harness.up import ROOT, Up, clean_env, live
from tasks.settings import load_settings


def test_up_serves_restarts_a_killed_runner_and_stops_every_child(up_dir: Path) -> None:
    """`up` prints where things are and a working key, and registers both
    deployments. Then `kill -9` of the runner mid-batch: `up` says so, starts
    it again, the gateway keeps answering, the batch completes with every
    line once, a new batch completes too, and Ctrl-C still stops every
    child. (One `up` for both: each start costs ~25 s of the suite.)"""
    lines = 400
    with Up(up_dir, lease_seconds=5, reconcile_interval_seconds=1, chunk_size=50) as up:
        up.wait_ready()
        assert f"http://127.0.0.1:{up.port}/v1" in up.text
        assert f"http://127.0.0.1:{up.prefect_port}" in up.text
        files = httpx.get(
            f"{up.url}/v1/files",
            headers={"Authorization": f"Bearer {up.api_key()}"},
            timeout=10,
        )
        assert files.status_code == 200, files.text
        for name in ("process-batch/process-batch", "retention/retention"):
            response = httpx.get(
                f"http://127.0.0.1:{up.prefect_port}/api/deployments/name/{name}", timeout=10
            )
            assert response.status_code == 200, (name, response.text)

        # Slow answers while the batch runs, so the kill lands mid-batch.
        up.add_mock_provider("--latency-ms", "1000")
        client = up.client()
        batch_id = create_batch(client, upload(client, up_dir, chat_lines("req", lines)))
        deadline = time.monotonic() + 60
        while client.batches.retrieve(batch_id).request_counts.completed == 0:
            assert time.monotonic() < deadline, "no chunk done within 60 s"
            time.sleep(0.2)

        runner = up.child("runner")
        runner.kill()
        httpx.post(f"{up.mock_url}/config", json={"latency_ms": 0}).raise_for_status()
        up.wait_restarted("runner", runner.pid)
        assert client.batches.retrieve(batch_id).status != "completed"

        [batch] = wait_all_terminal(client, [batch_id], timeout=120)
        assert batch.status == "completed"
        check = check_batch(client, batch, "req", lines, up.upstream_requests())
        assert check.problems == []
        marker = "=== restarting runner (exit code -9, restart 1)"
        assert marker in up.text
        assert marker in (up_dir / "data" / "logs" / "runner.log").read_text()

        [again] = wait_all_terminal(
            client, [create_batch(client, upload(client, up_dir, chat_lines("new", 20)))], 120
        )
        assert again.status == "completed"
        assert up.proc is not None
        children = psutil.Process(up.proc.pid).children(recursive=True)
        assert len(children) >= 3  # prefect server, gateway, runner
        code, seconds = up.interrupt()
        assert code == 0, up.text
        assert seconds < 20, up.text
        assert "did not stop" not in up.text
        assert live(children) == []


def test_up_refuses_a_taken_prefect_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        prefect_port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "batchgate.cli", "up"],
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


FAST = RestartPolicy(first_delay=0.05, max_delay=0.2, max_restarts=3, window=60)


def supervise_until(supervisor: Supervisor, done: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "supervisor did not get there in time"
        supervisor.tick()
        time.sleep(0.02)


def test_a_dead_child_is_restarted_alone_after_its_leftovers_end(tmp_path: Path) -> None:
    children: list[Child] = []
    supervisor = Supervisor(children, tmp_path, FAST)
    supervisor.start("steady", ["sleep", "600"], os.environ)
    # Dies after a second, leaving a grandchild in its process group.
    supervisor.start("flaky", ["sh", "-c", "sleep 600 & sleep 1; exit 3"], os.environ)
    steady, flaky = children
    deadline = time.monotonic() + 10
    while not (grandchildren := psutil.Process(flaky.pid).children()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    supervise_until(supervisor, lambda: children[1] is not flaky)
    try:
        assert children[0] is steady and steady.popen.poll() is None
        assert live(grandchildren) == []
        log = (tmp_path / "flaky.log").read_text()
        assert "=== restarting flaky (exit code 3, restart 1)" in log
        assert len(re.findall(r"\d starting flaky", log)) == 2
    finally:
        for child in children:
            stop_child(child)


def test_children_of_the_supervisor_stop_on_sigterm(tmp_path: Path) -> None:
    """A child started with SIGTERM blocked (an inherited signal mask) would
    sit out the whole stop grace and be SIGKILLed: a gateway never closes
    its database cleanly."""
    children: list[Child] = []
    Supervisor(children, tmp_path, FAST).start("sleeper", ["sleep", "600"], os.environ)
    started = time.monotonic()
    stop_child(children[0])
    assert children[0].popen.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 5


def test_the_runner_stops_while_the_prefect_server_still_answers(tmp_path: Path) -> None:
    """Ctrl-C right after a batch completed found its flow run still
    reporting to Prefect; with the server stopped at the same moment, the
    run's client retried past the stop timeout (a CI run said "runner did
    not stop within 10 s"). Runners now stop first: here one takes 2 s to
    stop and checks, as it does, that the server is still there."""
    server_port = free_port()
    server = start_child(
        "prefect-server",
        [sys.executable, "-m", "http.server", str(server_port), "--bind", "127.0.0.1"],
        os.environ,
        tmp_path,
    )
    report = tmp_path / "server-on-stop"
    runner_script = (
        "import signal, socket, sys, time\n"
        "def stop(*_):\n"
        "    time.sleep(2)\n"
        f"    with socket.create_connection(('127.0.0.1', {server_port}), timeout=2):\n"
        f"        open({str(report)!r}, 'w').write('answered')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "while True: time.sleep(1)\n"
    )
    try:
        deadline = time.monotonic() + 10
        while http_status(f"http://127.0.0.1:{server_port}/") != 200:
            assert time.monotonic() < deadline, "the fake server did not start"
            time.sleep(0.05)
        runner = start_child("runner", [sys.executable, "-c", runner_script], os.environ, tmp_path)
        time.sleep(0.5)  # the runner's handler is in place
        started = time.monotonic()
        stop_children([runner, server], first=[runner])
        assert time.monotonic() - started < 8
    finally:
        stop_children([server])
    assert report.read_text() == "answered", (tmp_path / "runner.log").read_text()
    assert runner.popen.returncode == 0
    assert server.popen.returncode == -signal.SIGTERM


def test_a_crash_loop_gives_up_naming_the_child_and_its_exit_code(tmp_path: Path) -> None:
    children: list[Child] = []
    supervisor = Supervisor(children, tmp_path, FAST)
    supervisor.start("doomed", ["sh", "-c", "echo cannot start; exit 7"], os.environ)
    try:
        with pytest.raises(CrashLoop) as info:
            supervise_until(supervisor, lambda: False)
    finally:
        for child in children:
            stop_child(child)
    assert "doomed keeps crashing" in str(info.value)
    assert "exit code 7" in str(info.value)
    log = (tmp_path / "doomed.log").read_text()
    assert log.count("cannot start") == FAST.max_restarts + 1
    assert "restart 3)" in log


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


def test_only_the_gateway_gets_batchgates_secrets(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    outer = {
        "BATCHGATE_SECRET_KEY": "provider-key-secret",
        "BATCHGATE_ADMIN_KEY": "admin",
        "PATH": "/usr/bin",
    }
    plan = make_plan(settings, outer, "internal")
    assert plan.base_env["BATCHGATE_SECRET_KEY"] == "provider-key-secret"  # the gateway's env
    runner = runner_env(plan, settings)
    assert "BATCHGATE_SECRET_KEY" not in runner and "BATCHGATE_ADMIN_KEY" not in runner
    assert runner["BATCHGATE_INTERNAL_TOKEN"] == "internal"  # runs call the internal API
    server = prefect_server_env(plan)
    assert not {"BATCHGATE_SECRET_KEY", "BATCHGATE_ADMIN_KEY", "BATCHGATE_INTERNAL_TOKEN"} & set(
        server
    )
    assert server["PATH"] == "/usr/bin"


def test_prefect_yaml_points_at_the_served_flows() -> None:
    """prefect.yaml and `batchgate up` must deploy the same flows under the same names."""
    from flows.deployments import DEPLOYMENT_NAMES
    from flows.process_batch import process_batch
    from flows.retention import retention

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in config["deployments"]}
    assert sorted(by_name) == sorted(DEPLOYMENT_NAMES)  # what a work pool gets deployed
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
