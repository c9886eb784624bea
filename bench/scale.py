"""`python -m bench.scale` (`make scale`): batchgate on three test hosts.

Root only: it builds three network namespaces on a private bridge
(10.213.0.0/24, bench/scale_net.py), runs the Prefect server, the gateway and
`batchgate mock-upstream` in the root namespace on 10.213.0.1, and one worker
per namespace with nothing but the variables docs/scale-out.md lists and the
gateway's directory hidden (bench/scale_stack.py). Everything it made -
namespaces, links, processes, temporary files - is removed when it ends,
also on Ctrl-C, SIGTERM or a failure.

Scenarios (`--only` picks some; each starts its own stack):
- spread: many batches at once, on one host and then on all hosts; the
  throughput ratio (target >= 2.5 x with three hosts);
- fanout: one large batch (20,000 lines) on one host, then on all hosts,
  with `BATCHGATE_FANOUT_RUNS` set for gateway and workers (the fan-out of
  one batch over several flow runs; with it at 1 a batch is one flow run and
  uses one host);
- kill: SIGKILL every process of one host while batches run;
- cut: set one host's link down while batches run, bring it back after the
  batches resumed elsewhere: its old run's late calls are refused.
kill and cut print the recovery time (kill or cut -> the first upstream
request of an affected batch from another host; target < 60 s) and check
every custom_id exactly once in the outputs.

Throughput is latency-bound by construction: the mock answers after
`--latency-ms`, each flow run sends at most `--max-concurrency` requests at
once (the provider's max_concurrency) and each host runs at most
`--runner-limit` flow runs, so a host, not the machine, is the bottleneck.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.report import markdown_table
from bench.scale_net import Host, can_run, network
from bench.scale_stack import MODES, ScaleStack, wait_until
from harness.batches import check_batch, create_batch, upload, wait_all_terminal
from harness.lines import chat_lines

SCENARIOS = ("spread", "fanout", "kill", "cut")
SPREAD_TARGET = 2.5
RECOVERY_TARGET_SECONDS = 60.0
# What the old run's flow logs when it ends because another run holds its batch.
OLD_RUN_ENDED = "ended lease_lost"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument(
        "--mode",
        choices=(*MODES, "both"),
        default="served",
        help="served: batchgate worker; pool: prefect worker + prefect deploy",
    )
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument(
        "--pool-query-seconds",
        type=float,
        default=None,
        help="pool: PREFECT_WORKER_QUERY_SECONDS of the workers (default: Prefect's, 10 s)",
    )
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument(
        "--logs", type=Path, default=None, help="copy every process's log here, per scenario"
    )
    parser.add_argument("--runner-limit", type=int, default=2, help="flow runs per host")
    parser.add_argument("--max-concurrency", type=int, default=4, help="requests per flow run")
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help="spread: batches at once (default: 2 x hosts x runner limit, two rounds on all)",
    )
    parser.add_argument("--lines", type=int, default=1000, help="spread: lines per batch")
    parser.add_argument("--fanout-lines", type=int, default=20_000)
    parser.add_argument("--kill-lines", type=int, default=1500, help="kill/cut: lines per batch")
    parser.add_argument(
        "--kill-batches", type=int, default=None, help="kill/cut: batches (default: one per host)"
    )
    parser.add_argument("--kill-after", type=float, default=8.0,
                        help="kill/cut: seconds after every batch started")  # fmt: skip
    return parser.parse_args(argv)


# -- running batches ------------------------------------------------------------


@dataclass
class Measured:
    """Batches run at once: how long, how spread, and whether each line ended once."""

    lines: int
    seconds: float
    peers: dict[str, int]
    problems: list[str]
    repeated: int
    phases: str
    helpers: list[int]  # chunks each helper run checkpointed (ScaleStack.helper_chunks)

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0


def inputs(stack: ScaleStack, prefix: str, count: int, lines: int) -> list[str]:
    """Upload `count` input files of `lines` lines; custom_ids `{prefix}{j}-{i}`."""
    client = stack.client()
    folder = stack.root / "inputs"
    folder.mkdir(exist_ok=True)
    return [upload(client, folder, chat_lines(f"{prefix}{j}", lines)) for j in range(count)]


def start_batches(stack: ScaleStack, file_ids: list[str]) -> list[str]:
    client = stack.client()
    return [create_batch(client, file_id) for file_id in file_ids]


def finish(
    stack: ScaleStack, batch_ids: list[str], prefix: str, lines: int, timeout: float
) -> tuple[list[str], int, list[Any]]:
    """Wait for every batch to end; the problems found (each custom_id once,
    counts), the upstream requests beyond one per line, the ended batches."""
    client = stack.client()
    ended = wait_all_terminal(client, batch_ids, timeout=timeout)
    sent = stack.mock_stats()["custom_ids"]
    problems, repeated = [], 0
    for j, batch in enumerate(ended):
        if batch.status != "completed":
            problems.append(f"{batch.id} ended {batch.status}")
        check = check_batch(client, batch, f"{prefix}{j}", lines, sent)
        problems += [f"{batch.id}: {p}" for p in check.problems]
        repeated += check.repeated
    return problems, repeated, ended


def phases(ended: list[Any]) -> str:
    """Median seconds from created to in_progress (the run's start and
    validation), to finalizing (the lines), to completed (finalize); the
    batch timestamps are whole seconds."""

    def median(pairs: list[tuple[int | None, int | None]]) -> str:
        spans = [b - a for a, b in pairs if a is not None and b is not None]
        return f"{statistics.median(spans):.0f}" if spans else "-"

    start = median([(b.created_at, b.in_progress_at) for b in ended])
    work = median([(b.in_progress_at, b.finalizing_at) for b in ended])
    end = median([(b.finalizing_at, b.completed_at) for b in ended])
    return f"{start} / {work} / {end} s"


def measure(stack: ScaleStack, prefix: str, count: int, lines: int) -> Measured:
    """`count` batches of `lines` lines created at once, timed to the last one's end."""
    file_ids = inputs(stack, prefix, count, lines)
    stack.reset_mock()
    started = time.monotonic()
    batch_ids = start_batches(stack, file_ids)
    problems, repeated, ended = finish(stack, batch_ids, prefix, lines, timeout=3600)
    took = time.monotonic() - started
    peers = stack.mock_stats()["peers"]
    helpers = stack.helper_chunks(batch_ids)
    return Measured(count * lines, took, peers, problems, repeated, phases(ended), helpers)


def warm_up(stack: ScaleStack, hosts: list[Host], timeout: float = 300) -> None:
    """Small batches until every one of `hosts` has sent a request: their
    workers are up, registered and have run a batch."""
    want = {h.address for h in hosts}
    client = stack.client()
    started, round_ = time.monotonic(), 0
    while not want <= set(stack.mock_stats()["peers"]):
        if time.monotonic() - started > timeout:
            seen = sorted(stack.mock_stats()["peers"])
            raise TimeoutError(
                f"hosts {sorted(want)} not all working after {timeout:.0f} s: {seen}"
            )
        round_ += 1
        file_ids = inputs(stack, f"warm{round_}-", len(hosts) * stack.runner_limit, 2)
        wait_all_terminal(client, start_batches(stack, file_ids), timeout=timeout)


def start_workers(stack: ScaleStack, hosts: list[Host]) -> None:
    for host in hosts:
        print(f"  {host.name} ({host.address}): {stack.data_dir_check(host)}", flush=True)
        names = " ".join(sorted(stack.worker_env(host)))  # names only: the token is a secret
        print(f"  {host.name} worker environment: {names}", flush=True)
        stack.start_worker(host)
    warm_up(stack, [h for h in stack.hosts if h.index in stack.workers])


def shares(peers: dict[str, int], hosts: list[Host]) -> str:
    total = sum(peers.values()) or 1
    return " / ".join(f"{100 * peers.get(h.address, 0) / total:.0f}%" for h in hosts)


@contextlib.contextmanager
def stack_for(
    hosts: list[Host], mode: str, args: argparse.Namespace, scenario: str, **extra_env: str
) -> Iterator[ScaleStack]:
    print(f"starting Prefect server, gateway and mock ({mode} workers) ...", flush=True)
    with ScaleStack(
        hosts,
        mode=mode,
        latency_ms=args.latency_ms,
        runner_limit=args.runner_limit,
        max_concurrency=args.max_concurrency,
        extra_env=extra_env,
        pool_query_seconds=args.pool_query_seconds,
        keep_logs=args.logs / f"{mode}-{scenario}" if args.logs else None,
    ) as stack:
        if stack.deploy_output:
            print(f"  prefect deploy:\n{indent(stack.deploy_output)}", flush=True)
        yield stack


def helper_runs(chunks: list[int]) -> str:
    """`3 (4+3+2)`: helper runs and the chunks each checkpointed (? = not ended)."""
    each = "+".join(str(n) if n >= 0 else "?" for n in chunks)
    return f"{len(chunks)} ({each})" if chunks else "0"


def indent(text: str) -> str:
    kept = [line for line in text.splitlines() if line.strip()][-12:]
    return "\n".join(f"    {line}" for line in kept)


# -- scenarios --------------------------------------------------------------------


def one_vs_all(
    hosts: list[Host], mode: str, args: argparse.Namespace, name: str, count: int, lines: int,
    **extra_env: str,
) -> dict[str, Any]:  # fmt: skip
    """The same batches on one host, then on every host; a row each and the ratio."""
    rows, rates = [], []
    with stack_for(hosts, mode, args, name, **extra_env) as stack:
        for working in (hosts[:1], hosts):
            start_workers(stack, [h for h in working if h.index not in stack.workers])
            print(f"  {name}: {count} x {lines} lines on {len(working)} host(s) ...", flush=True)
            got = measure(stack, f"{name}{len(working)}h", count, lines)
            rates.append(got.rate)
            rows.append(
                [
                    mode,
                    str(len(working)),
                    f"{count} x {lines}",
                    f"{got.seconds:.1f} s",
                    f"{got.rate:.0f}",
                    got.phases,
                    shares(got.peers, hosts),
                    helper_runs(got.helpers),
                    str(got.repeated),
                    "yes" if not got.problems else "; ".join(got.problems[:3]),
                ]  # fmt: skip
            )
    ratio = rates[1] / rates[0] if rates[0] else 0.0
    headers = ["mode", "hosts", "batches", "wall", "lines/s", "median start / lines / finalize",
               "share per host (h1/h2/h3)", "helper runs (chunks each)",
               "repeated", "each custom_id once"]  # fmt: skip
    return {
        "table": markdown_table(headers, rows),
        "verdict": f"{name}: {len(hosts)} hosts / 1 host = {ratio:.2f} x "
        f"(target >= {SPREAD_TARGET}) {'MET' if ratio >= SPREAD_TARGET else 'NOT MET'}",
        "ok": ratio >= SPREAD_TARGET and all(r[-1] == "yes" for r in rows),
    }


def spread(hosts: list[Host], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    count = args.batches or 2 * len(hosts) * args.runner_limit
    return one_vs_all(hosts, mode, args, "spread", count, args.lines)


def fanout(hosts: list[Host], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    runs = str(len(hosts) * args.runner_limit)
    return one_vs_all(hosts, mode, args, "fanout", 1, args.fanout_lines, BATCHGATE_FANOUT_RUNS=runs)


def per_batch(stack: ScaleStack, prefix: str, count: int) -> list[int]:
    """Upstream requests so far for each batch `{prefix}{j}`."""
    counts: Counter[int] = Counter()
    for custom_id, n in stack.mock_stats()["custom_ids"].items():
        head = custom_id.rsplit("-", 1)[0]
        if head.startswith(prefix):
            counts[int(head[len(prefix) :])] += n
    return [counts[j] for j in range(count)]


def busiest(stack: ScaleStack, hosts: list[Host], window: float = 2.0) -> Host:
    """The host that sent the most requests during the last `window` seconds."""
    before = stack.mock_stats()["peers"]
    time.sleep(window)
    after = stack.mock_stats()["peers"]
    return max(hosts, key=lambda h: after.get(h.address, 0) - before.get(h.address, 0))


def lose_host(hosts: list[Host], mode: str, args: argparse.Namespace, how: str) -> dict[str, Any]:
    """One host lost while every host runs a batch: SIGKILL of everything in
    its namespace (`kill`) or its link set down (`cut`)."""
    count, lines, prefix = args.kill_batches or len(hosts), args.kill_lines, f"{how}b"
    with stack_for(hosts, mode, args, how) as stack:
        start_workers(stack, hosts)
        file_ids = inputs(stack, prefix, count, lines)
        stack.reset_mock()
        batch_ids = start_batches(stack, file_ids)
        wait_until(lambda: all(per_batch(stack, prefix, count)), "every batch sending", 300)
        time.sleep(args.kill_after)
        victim = busiest(stack, hosts)
        at_loss = per_batch(stack, prefix, count)
        lost_at = time.monotonic()
        if how == "kill":
            killed = victim.kill_all()
            stack.forget_worker(victim)
            print(f"  SIGKILLed {len(killed)} processes in {victim.name}", flush=True)
        else:
            victim.cut()
            print(f"  cut the link of {victim.name}", flush=True)
        time.sleep(4.0)
        now = per_batch(stack, prefix, count)
        stalled = [j for j in range(count) if now[j] == at_loss[j]]
        assert stalled, f"no batch stopped with {victim.name}: {at_loss} -> {now}"
        wait_until(
            lambda: all(per_batch(stack, prefix, count)[j] > at_loss[j] for j in stalled),
            "the lost host's batches resuming elsewhere",
            600,
        )
        recovery = time.monotonic() - lost_at
        print(f"  {len(stalled)} batch(es) resumed elsewhere after {recovery:.1f} s", flush=True)
        refused, lost_lease = "-", "-"
        if how == "cut":
            refused_before = stack.refused_internal()
            victim.restore()
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: OLD_RUN_ENDED in stack.worker_log(victim), "old run", 180, 1)
            time.sleep(1.0)
            refused = str(stack.refused_internal() - refused_before)
            lost_lease = "yes" if OLD_RUN_ENDED in stack.worker_log(victim) else "no"
            print(f"  link restored: {refused} late internal calls refused", flush=True)
        problems, repeated, _ = finish(stack, batch_ids, prefix, lines, timeout=1800)
        ended = time.monotonic() - lost_at
    ok = recovery < RECOVERY_TARGET_SECONDS and not problems
    if how == "cut":
        ok = ok and lost_lease == "yes"
    row = [mode, how, victim.name, f"{len(stalled)} of {count} x {lines}",
           f"{recovery:.1f} s", f"{ended:.0f} s", str(repeated), refused, lost_lease,
           "yes" if not problems else "; ".join(problems[:3])]  # fmt: skip
    headers = ["mode", "loss", "host", "its batches", "recovery", "loss -> all done",
               "repeated requests", "late calls refused", "old run ended lease_lost",
               "each custom_id once"]  # fmt: skip
    return {
        "table": markdown_table(headers, [row]),
        "verdict": f"{how}: recovery {recovery:.1f} s (target < {RECOVERY_TARGET_SECONDS:.0f} s) "
        f"{'MET' if ok else 'NOT MET'}",
        "ok": ok,
        "recovery": recovery,
        "problems": problems,
    }


def kill(hosts: list[Host], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    return lose_host(hosts, mode, args, "kill")


def cut(hosts: list[Host], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    return lose_host(hosts, mode, args, "cut")


RUNS = {"spread": spread, "fanout": fanout, "kill": kill, "cut": cut}


# -- main -------------------------------------------------------------------------


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = can_run()
    if reason:
        print(f"bench.scale skipped: {reason}")
        return 0
    signal.signal(signal.SIGTERM, _stop)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    results: list[dict[str, Any]] = []
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    with network(args.hosts) as hosts:
        for mode in modes:
            for name in args.only:
                print(f"\n== {name} ({mode}) ==", flush=True)
                result = RUNS[name](hosts, mode, args)
                print(result["table"], "\n" + result["verdict"], flush=True)
                results.append(result)
    print("\n== summary ==")
    for result in results:
        print(result["verdict"])
    print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
