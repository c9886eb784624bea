"""The test hosts of the scale-out harness: Linux network namespaces on a
private bridge, made and removed with `ip` (root only).

Layout (all names begin with `bgscale`, so leftovers of a killed run are
recognised and removed at the next start):

    root namespace: bridge bgscale0, 10.213.0.1/24 - gateway, Prefect, mock
      ├─ veth bgscale-h1 ── eth0 10.213.0.11 in namespace bgscale-h1
      ├─ veth bgscale-h2 ── eth0 10.213.0.12 in namespace bgscale-h2
      └─ veth bgscale-h3 ── eth0 10.213.0.13 in namespace bgscale-h3

A host's "link" is the root end of its veth: `cut` sets it down, so the host
keeps running but can reach nothing (a partition); `restore` brings it back.
Commands run inside a host through `ip netns exec`, which also gives them a
mount namespace of their own: a tmpfs mounted there over the gateway's
directory hides the data directory from everything the host runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = "bgscale"
BRIDGE = f"{PREFIX}0"
SUBNET = "10.213.0"
ROOT_ADDRESS = f"{SUBNET}.1"
LOCK = Path("/run/bgscale.lock")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def can_run() -> str | None:
    """None when this process may build namespaces, else why not."""
    if os.geteuid() != 0:
        return "bench.scale builds network namespaces and needs root (run it with sudo)"
    try:
        ip("netns", "list")
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"bench.scale needs the `ip` command with netns support: {exc}"
    return None


@dataclass(frozen=True)
class Host:
    """One test host: a namespace, its address and the root end of its link."""

    index: int

    @property
    def name(self) -> str:
        return f"{PREFIX}-h{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{10 + self.index}"

    @property
    def link(self) -> str:
        """The veth end in the root namespace (on the bridge)."""
        return f"{PREFIX}-h{self.index}"

    def kill_all(self) -> list[int]:
        """SIGKILL every process in the namespace (the host "loses power")."""
        return kill_namespace(self.name)

    def cut(self) -> None:
        ip("link", "set", self.link, "down")

    def restore(self) -> None:
        ip("link", "set", self.link, "up")

    def command(self, argv: list[str], hidden: Path) -> list[str]:
        """`argv` run inside this host, with `hidden` covered by an empty tmpfs."""
        script = 'mount -t tmpfs -o size=1m,mode=0755 bgscale-hidden "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.name, "sh", "-c", script, str(hidden), *argv]


def kill_namespace(name: str) -> list[int]:
    """SIGKILL every process that runs in namespace `name`; their PIDs."""
    found = ip("netns", "pids", name, check=False)
    pids = [int(word) for word in found.stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _existing() -> tuple[list[str], list[str]]:
    namespaces = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in ip("-o", "link", "show").stdout.splitlines()
    ]
    return (
        [n for n in namespaces if n.startswith(PREFIX)],
        [link for link in links if link.startswith(PREFIX)],
    )


def teardown() -> None:
    """Remove every `bgscale*` namespace and link, killing what runs inside."""
    namespaces, links = _existing()
    for name in namespaces:
        kill_namespace(name)
        ip("netns", "del", name, check=False)
    for link in links:
        ip("link", "del", link, check=False)


def build(count: int) -> list[Host]:
    """The bridge and `count` hosts on it; anything left from an earlier run
    is removed first."""
    teardown()
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "add", f"{ROOT_ADDRESS}/24", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    hosts = [Host(i) for i in range(1, count + 1)]
    for host in hosts:
        ip("netns", "add", host.name)
        ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.name)
        ip("link", "set", host.link, "master", BRIDGE)
        ip("link", "set", host.link, "up")
        inside = ("netns", "exec", host.name, "ip")
        ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip(*inside, "link", "set", "eth0", "up")
        ip(*inside, "link", "set", "lo", "up")
    return hosts


@contextlib.contextmanager
def network(count: int) -> Iterator[list[Host]]:
    """The hosts while the block runs; all removed after it, however it ends.
    One harness at a time: a second one would tear down the first's hosts."""
    with LOCK.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another bench.scale run holds {LOCK}; wait for it") from None
        try:
            yield build(count)
        finally:
            teardown()
