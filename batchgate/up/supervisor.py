"""`batchgate up`: a local Prefect server, the gateway and a runner, as one command.

Each piece runs as a child process in its own process group and logs to
`<data_dir>/logs/<name>.log`. The supervisor only starts them in order, waits
for each to answer, prints where things are, and stops all of them - with
their own children (uvicorn workers, flow-run processes) - on Ctrl-C or
SIGTERM. If one child dies, it is started again after a backoff while the
others keep running (`restart_step` holds the policy); a child that keeps
dying gives up the whole system with a message naming it, since a crash loop
needs a person.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

import httpx
import psutil
from pydantic import ValidationError

from batchgate.up import prefect_server
from batchgate.up.supervised import SUPERVISOR_PID_ENV, die_with_parent, group_members
from flows.deployments import SERVED_DEPLOYMENTS
from gateway.auth import load_or_create_secret
from tasks.settings import Settings, load_settings

PREFECT_START_TIMEOUT = 90.0
GATEWAY_START_TIMEOUT = 60.0
READY_TIMEOUT = 90.0
# The whole stop, all children: the runner's wave may take 60 % of it (its
# flow runs report their end), and on a loaded machine the Prefect server then
# needed more than the 4-5 s that 10 s left it (seen with the test suite in
# two processes), so 15.
STOP_TIMEOUT = 15.0
LEFTOVER_TIMEOUT = 3.0
POLL_INTERVAL = 0.25
PROGRESS_EVERY = 10.0
LOG_TAIL_LINES = 30
# Ctrl-C, a service manager's stop, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The share of the stop timeout the first wave may use (see stop_children).
FIRST_WAVE_SHARE = 0.6


class Shutdown(BaseException):
    """Raised by the signal handler: Ctrl-C or SIGTERM asked us to stop."""


class StartupError(Exception):
    """Something outside our children keeps the system from starting."""


class CrashLoop(Exception):
    """A child died more often than the restart policy allows."""

    def __init__(self, child: Child, deaths: int, window: float) -> None:
        super().__init__(
            f"{child.name} keeps crashing: it exited {deaths} times within {window:.0f} s, "
            f"last with exit code {child.popen.returncode}; giving up and stopping everything"
        )
        self.child = child


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid


# ---------------------------------------------------------------- restart policy


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead child is started again, and when `up` gives up on it.

    The delay doubles with each restart of a streak so a child that cannot
    start (a port held, a broken dependency) does not spin; a child that then
    stays up `stable_after` seconds starts a new streak. More than
    `max_restarts` within `window` seconds is a crash loop."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    max_restarts: int = 5
    window: float = 300.0
    stable_after: float = 60.0


@dataclass(frozen=True)
class RestartRecord:
    """One child's restarts so far: times (monotonic) inside the window, the
    current streak, and the total since `up` started (for the log marker)."""

    times: tuple[float, ...] = ()
    streak: int = 0
    total: int = 0


@dataclass(frozen=True)
class RestartStep:
    record: RestartRecord
    delay: float | None  # None: crash loop, give up


def restart_step(
    policy: RestartPolicy, record: RestartRecord, started_at: float, died_at: float
) -> RestartStep:
    """What to do about a child that started at `started_at` and died at `died_at`."""
    streak = 0 if died_at - started_at >= policy.stable_after else record.streak
    times = tuple(t for t in record.times if died_at - t < policy.window) + (died_at,)
    updated = RestartRecord(times=times, streak=streak + 1, total=record.total + 1)
    if len(times) > policy.max_restarts:
        return RestartStep(updated, None)
    return RestartStep(updated, min(policy.max_delay, policy.first_delay * 2**streak))


@dataclass
class Plan:
    """Everything `up` decides before starting anything: ports, URLs, environments."""

    data_dir: Path
    gateway_port: int
    gateway_base: str  # where this machine reaches the gateway
    prefect_api_url: str
    prefect_ui_url: str
    local_prefect_port: int | None  # None when PREFECT_API_URL points elsewhere
    base_env: dict[str, str] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


# ---------------------------------------------------------------- pure helpers


def reachable_host(host: str) -> str:
    """A host to connect to when the server binds `host` (wildcards → loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def ui_url_for(api_url: str, env: Mapping[str, str]) -> str:
    """The Prefect UI: PREFECT_UI_URL if given, else the API URL without `/api`."""
    if env.get("PREFECT_UI_URL"):
        return env["PREFECT_UI_URL"]
    return api_url.rstrip("/").removesuffix("/api")


def make_plan(settings: Settings, env: Mapping[str, str], internal_token: str) -> Plan:
    """Decide URLs and child environments from settings and the outer environment."""
    data_dir = settings.data_dir.resolve()
    gateway_base = f"http://{reachable_host(settings.host)}:{settings.port}"
    external = env.get("PREFECT_API_URL", "").strip()
    base_env = {
        k: v for k, v in env.items() if k not in ("PREFECT_API_URL", "BATCHGATE_INTERNAL_TOKEN")
    }
    base_env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
        BATCHGATE_DATA_DIR=str(data_dir),
        BATCHGATE_INTERNAL_TOKEN=internal_token,
    )
    # Each child watches this process and stops with it (batchgate/up/supervised.py).
    base_env[SUPERVISOR_PID_ENV] = str(os.getpid())
    if external:
        api_url, local_port = external, None
    else:
        api_url = f"http://127.0.0.1:{settings.prefect_port}/api"
        local_port = settings.prefect_port
        base_env["PREFECT_HOME"] = str(data_dir / "prefect")
    base_env["PREFECT_API_URL"] = api_url
    return Plan(
        data_dir=data_dir,
        gateway_port=settings.port,
        gateway_base=gateway_base,
        prefect_api_url=api_url,
        prefect_ui_url=ui_url_for(api_url, env),
        local_prefect_port=local_port,
        base_env=base_env,
    )


# Only the gateway opens the database: the provider-key secret and the admin
# key go to it alone, not to the runner (and its flow runs) or Prefect.
GATEWAY_SECRETS = ("BATCHGATE_SECRET_KEY", "BATCHGATE_NEW_SECRET_KEY", "BATCHGATE_ADMIN_KEY")


def without(env: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


def prefect_server_env(plan: Plan) -> dict[str, str]:
    """The Prefect server has no use for batchgate's secrets."""
    return without(plan.base_env, (*GATEWAY_SECRETS, "BATCHGATE_INTERNAL_TOKEN"))


def runner_env(plan: Plan, settings: Settings) -> dict[str, str]:
    env = without(plan.base_env, GATEWAY_SECRETS)
    env["PREFECT_RUNNER_PROCESS_LIMIT"] = str(settings.runner_limit)
    env["BATCHGATE_RUNNER_LIMIT"] = str(settings.runner_limit)
    env["BATCHGATE_GATEWAY_URL"] = settings.gateway_url or plan.gateway_base
    return env


def prefect_server_command(port: int) -> list[str]:
    """A local Prefect server on loopback; its SQLite file lives in PREFECT_HOME."""
    return prefect_server.command("127.0.0.1", port)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (we could bind it)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError:
        return False
    return True


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 64_000))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- processes


def start_child(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    log_dir: Path,
    cwd: Path | None = None,
    *,
    supervised: bool = False,
) -> Child:
    """Start a child in its own session (so one killpg reaches its whole tree),
    with stdout and stderr appended to its log file. A `supervised` child gets
    SIGTERM from the kernel if this process dies (batchgate/up/supervised.py); only
    a single-threaded caller may ask for it, as it runs code between fork
    and exec."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log_file.flush()
        popen = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if supervised else None,
        )
    return Child(name=name, popen=popen, log_path=log_path)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_child(child: Child, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the child's process group, wait up to `timeout`, then SIGKILL
    the group and any descendant that left it."""
    stop_children([child], timeout)


def stop_children(
    children: list[Child], timeout: float = STOP_TIMEOUT, *, first: Sequence[Child] = ()
) -> None:
    """Stop all `children` within one `timeout` for all of them (one after the
    other, a loaded machine took 28 s for three children).

    `first` (runners) go before the rest, while the gateway and the Prefect
    server still answer: their flow runs report their end to both, and
    against a server that is already gone Prefect's client retries for
    longer than the whole timeout (a CI run: "runner did not stop within
    10 s"). They may use most of the time, never all of it."""
    start = time.monotonic()
    rest = [c for c in children if c not in first]
    waves = ((list(first), start + timeout * FIRST_WAVE_SHARE), (rest, start + timeout))
    for wave, deadline in waves:
        if wave:
            _stop_wave(wave, deadline)


def _stop_wave(children: list[Child], deadline: float) -> None:
    """SIGTERM each child's process group, wait until `deadline`, then SIGKILL
    the groups and any descendant that left them."""
    descendants: list[psutil.Process] = []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            descendants += psutil.Process(child.pid).children(recursive=True)
    for child in children:
        _signal_group(child.pid, signal.SIGTERM)
    timeout = deadline - time.monotonic()
    for child in children:
        try:
            child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  {child.name} did not stop within {timeout:.0f} s; killing it", flush=True)
            _signal_group(child.pid, signal.SIGKILL)
            child.popen.wait()
    _, alive = psutil.wait_procs(descendants, timeout=max(1.0, deadline - time.monotonic()))
    for child in children:
        _signal_group(child.pid, signal.SIGKILL)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def end_group(pgid: int, timeout: float = LEFTOVER_TIMEOUT) -> None:
    """End what is left of a dead child's process group (a Prefect server's
    uvicorn holding the port, a runner's forkserver and flow runs), so the
    restarted child starts alone, as a service manager would do it."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)  # psutil.wait_procs polls non-children only every ~1 s
    _signal_group(pgid, signal.SIGKILL)


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until a started child is in the list `up` stops,
    so a stop request in between cannot leave it running. Deferred by a
    handler, not blocked by the signal mask: a child inherits the mask, and
    one started with SIGTERM blocked ignores its own stop and gets killed."""
    asked: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: asked.append(signum)) for sig in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if asked:
            signal.raise_signal(asked[0])


@dataclass
class Supervisor:
    """Starts the children and keeps them running: a dead child is started
    again with the same command after the policy's delay, while the others
    go on. `children` is the list `up` stops at the end; a restart replaces
    the dead child in place, so the stop order stays the start order reversed."""

    children: list[Child]
    log_dir: Path
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    _records: dict[str, RestartRecord] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        self._commands[name] = (list(argv), dict(env))
        with stop_deferred():
            self.children.append(start_child(name, argv, env, self.log_dir, supervised=True))

    def tick(self) -> None:
        """Notice dead children and restart those whose delay has passed."""
        for index, child in enumerate(self.children):
            if child.popen.poll() is None:
                continue
            due = self._due.get(child.name)
            if due is None:
                self._schedule(child)
            elif time.monotonic() >= due:
                self._restart(index, child)

    def _schedule(self, child: Child) -> None:
        step = restart_step(
            self.policy,
            self._records.get(child.name, RestartRecord()),
            child.started_at,
            time.monotonic(),
        )
        self._records[child.name] = step.record
        if step.delay is None:
            raise CrashLoop(child, len(step.record.times), self.policy.window)
        note = (
            f"=== restarting {child.name} (exit code {child.popen.returncode}, "
            f"restart {step.record.total}) in {step.delay:g} s"
        )
        print(note, flush=True)
        with child.log_path.open("a") as log:
            log.write(f"\n{note}\n")
        end_group(child.pid)
        self._due[child.name] = time.monotonic() + step.delay

    def _restart(self, index: int, child: Child) -> None:
        argv, env = self._commands[child.name]
        del self._due[child.name]
        with stop_deferred():
            self.children[index] = start_child(child.name, argv, env, self.log_dir, supervised=True)


def wait_until(
    check: Callable[[], bool], what: str, timeout: float, supervisor: Supervisor
) -> None:
    """Poll `check` until it is true, restarting children that die meanwhile."""
    start = time.monotonic()
    next_note = start + PROGRESS_EVERY
    while True:
        supervisor.tick()
        if check():
            return
        now = time.monotonic()
        if now - start > timeout:
            raise StartupError(f"{what} did not come up within {timeout:.0f} s")
        if now >= next_note:
            print(f"  still waiting for {what} ({now - start:.0f} s)", flush=True)
            next_note = now + PROGRESS_EVERY
        time.sleep(POLL_INTERVAL)


def http_status(url: str) -> int | None:
    """The status code of GET url, or None when nothing answers."""
    try:
        return httpx.get(url, timeout=10.0).status_code
    except httpx.HTTPError:
        return None


def deployments_registered(plan: Plan) -> bool:
    """Every served deployment exists on the Prefect server (the runner
    registers them one after the other, and /health only needs the first)."""
    return all(
        http_status(f"{plan.prefect_api_url}/deployments/name/{name}") == 200
        for name in SERVED_DEPLOYMENTS
    )


# ---------------------------------------------------------------- up


@dataclass
class StopRequest:
    """The stop signals `up` has received, and whether one may still raise.

    The first signal raises `Shutdown` into whatever `up` is doing (start-up,
    a readiness poll, the supervising loop), which unwinds to the one place
    that stops the children. Every later one is only noted: raised again, it
    could cut that stop short and leave the children running (a service
    manager's SIGTERM to the group followed by `uv run`'s forwarded SIGTERM
    did exactly that). Once `up` has begun stopping for another reason (a
    crash loop, a failed start), `disarm` makes even the first one a note."""

    received: list[str] = field(default_factory=list)
    armed: bool = True

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if self.armed and len(self.received) == 1:
            raise Shutdown(name)
        # os.write, not print: a handler that prints while the interrupted
        # code is printing raises "reentrant call" from inside print.
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), f"  {name}: already stopping\n".encode())

    def disarm(self) -> None:
        self.armed = False


def create_first_key(plan: Plan, admin_key: str) -> str | None:
    try:
        response = httpx.post(
            f"{plan.gateway_base}/admin/keys",
            json={"name": "default"},
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=10.0,
        )
    except httpx.HTTPError as exc:
        print(f"  could not create an API key: {exc}", flush=True)
        return None
    if response.status_code != 201:
        print(
            f"  could not create an API key: HTTP {response.status_code} {response.text}",
            flush=True,
        )
        return None
    return str(response.json()["key"])


def print_banner(
    plan: Plan,
    api_key: str | None,
    admin_key: str | None,
    children: list[Child],
    admin_key_source: str,
) -> None:
    lines = [
        "",
        "batchgate is up",
        f"  gateway (OpenAI base_url): {plan.gateway_base}/v1",
        f"  Prefect UI:                {plan.prefect_ui_url}",
    ]
    if api_key:
        lines.append(f"  API key:                   {api_key}")
        lines.append(
            "    (a new key named 'default' is created at every start; list and revoke"
            " keys with GET/DELETE /admin/keys)"
        )
    if admin_key:
        lines.append(f"  admin key (shown once):    {admin_key}")
    lines.append(f"  admin key stored in:       {admin_key_source}")
    lines.append("  logs:")
    lines.extend(f"    {child.name:<15} {child.log_path}" for child in children)
    print("\n".join(lines), flush=True)


def run(settings: Settings, children: list[Child], log_level: str = "info") -> NoReturn:
    """Start everything, then keep the children running. Never returns: it
    ends by an exception (Shutdown, StartupError, CrashLoop), and the caller
    stops whatever `children` holds by then."""
    token = (
        settings.internal_token or load_or_create_secret(settings.data_dir / "internal_token")[0]
    )
    plan = make_plan(settings, os.environ, token)
    if settings.admin_key:
        admin_key, admin_created = settings.admin_key, False
        admin_key_source = "BATCHGATE_ADMIN_KEY"
    else:
        admin_key, admin_created = load_or_create_secret(plan.data_dir / "admin_key")
        admin_key_source = str(plan.data_dir / "admin_key")

    if not port_is_free(settings.host, settings.port):
        raise StartupError(
            f"port {settings.port} on {settings.host} is already in use; stop "
            "what runs there or set BATCHGATE_PORT"
        )
    if plan.local_prefect_port is not None and not port_is_free(
        "127.0.0.1", plan.local_prefect_port
    ):
        raise StartupError(
            f"port {plan.local_prefect_port} (Prefect server) is already in use; stop what "
            "runs there, set BATCHGATE_PREFECT_PORT, or point PREFECT_API_URL at a running "
            "Prefect server"
        )

    started = time.monotonic()
    python = sys.executable
    supervisor = Supervisor(children, plan.log_dir)
    print(f"data directory: {plan.data_dir}", flush=True)
    if plan.local_prefect_port is not None:
        print(
            f"starting Prefect server on port {plan.local_prefect_port} "
            "(SQLite under the data directory; first start takes ~20 s)",
            flush=True,
        )
        supervisor.start(
            "prefect-server",
            prefect_server_command(plan.local_prefect_port),
            prefect_server_env(plan),
        )
    else:
        print(f"using the Prefect server at {plan.prefect_api_url}", flush=True)
    # The gateway does not need Prefect to start, so both come up together.
    print(f"starting gateway on {settings.host}:{settings.port}", flush=True)
    supervisor.start(
        "gateway", [python, "-m", "batchgate.cli", "--log-level", log_level, "serve"], plan.base_env
    )

    # The runner waits for the Prefect API itself; starting it now overlaps
    # its imports with the server's start-up.
    supervisor.start(
        "runner",
        [python, "-m", "batchgate.cli", "--log-level", log_level, "worker"],
        runner_env(plan, settings),
    )
    wait_until(
        lambda: http_status(f"{plan.prefect_api_url}/health") == 200,
        "the Prefect server",
        PREFECT_START_TIMEOUT,
        supervisor,
    )
    print("Prefect server is up", flush=True)
    wait_until(
        lambda: http_status(f"{plan.gateway_base}/health") is not None,
        "the gateway",
        GATEWAY_START_TIMEOUT,
        supervisor,
    )

    api_key = create_first_key(plan, admin_key)
    print_banner(plan, api_key, admin_key if admin_created else None, children, admin_key_source)
    wait_until(
        lambda: (
            http_status(f"{plan.gateway_base}/health") == 200
            and (plan.local_prefect_port is None or deployments_registered(plan))
        ),
        "the runner to register the flows",
        READY_TIMEOUT,
        supervisor,
    )
    print(f"ready after {time.monotonic() - started:.0f} s - press Ctrl-C to stop", flush=True)
    while True:
        supervisor.tick()
        time.sleep(POLL_INTERVAL)


def supervise(stop: StopRequest, children: list[Child], log_level: str) -> int:
    """Run the system until a stop signal (0) or a failure (1), reporting the
    failure. Whatever way it ends, it ends disarmed: from then on no signal
    raises, so the stop that follows cannot be interrupted."""
    try:
        run(load_settings(), children, log_level)
    except Shutdown:
        return 0
    except (StartupError, ValidationError) as exc:
        print(f"batchgate up: {exc}", file=sys.stderr, flush=True)
    except CrashLoop as exc:
        print(
            f"batchgate up: {exc}; last lines of {exc.child.log_path}:\n"
            f"{log_tail(exc.child.log_path)}",
            file=sys.stderr,
            flush=True,
        )
    finally:
        stop.disarm()
    return 1


def up(args: argparse.Namespace) -> int:
    """Run until a stop signal (exit 0) or until a child keeps dying (exit 1),
    then stop every child, however many signals arrive meanwhile."""
    # Readiness polls would otherwise log one line each at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    children: list[Child] = []
    stop = StopRequest()
    previous: dict[signal.Signals, signal._HANDLER] = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, stop.handle)
        code = supervise(stop, children, getattr(args, "log_level", "info"))
    except Shutdown:  # the first signal came while a failure was being reported
        code = 0
    stop.disarm()
    if children:
        print("stopping ...", flush=True)
    stop_children(list(reversed(children)), first=[c for c in children if c.name == "runner"])
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if children:
        print("stopped", flush=True)
    return code
