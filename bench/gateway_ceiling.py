"""`uv run python -m bench.gateway_ceiling`: what one gateway sustains on this
machine, and how many running batches it takes to make it the bottleneck.

A real gateway (`python -m batchgate.cli serve`: uvicorn, a DuckDB file, the
blob directory) on a port of 127.0.0.1, and in this process a load
generator that speaks its APIs the way flow runs and clients do
(bench/ceiling_wire.py). No Prefect server and no provider: the gateway's
flow-run starts fail fast against a closed port (its reconciler is put off
for the run so it does not start runs for the simulated ones), and the
provider is a fixed delay per chunk.

1. chunk posts/s: simulated runs, each holding its batch's lease, post
   finished chunks (a real chunk result of 1,000 or 100 lines, the body
   `HttpWorkerAPI.record_chunk` sends) back to back, two at a time per run
   as `BATCHGATE_CHUNK_PARALLELISM` does; then finalize of the full batches.
2. input MB/s: the chunk-input reads every chunk starts with, and the whole
   input stream a run's validation reads.
3. metadata requests/s: retrieve, list batches, list files from concurrent clients.
4. the ramp: N runs at once, each chunk held by the provider for the time
   `--latency-ms` and `--run-concurrency` give it, with lease heartbeats;
   N doubles until the lines/s fall below 90 % of N runs' ideal, then one
   step halfway back. The knee is the last N that kept up.

The gateway is pinned to CPU 0 and the load generator to CPU 1 (both CPUs
of a 2-core machine); the CPU columns are each process's CPU time over the
window as a share of one core (psutil). Every phase is bounded in time; the
whole run takes 3-5 minutes. `--quick` is a smoke check (under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from bench.ceiling_model import (
    EFFICIENCY_FLOOR,
    Ceilings,
    Day,
    Step,
    chunk_seconds,
    day_rows,
    knee,
    next_batches,
    percentile,
    run_lines_per_second,
)
from bench.ceiling_wire import ChunkPost, Timing, Wire, renew_body, sample_result
from bench.report import Section, render_section
from harness.live import LiveGateway, free_port
from harness.workload import ENDPOINT, write_input
from tasks.validate import validate_jsonl
from tasks.worker_api import HttpWorkerAPI

INTERNAL_TOKEN = "internal-ceiling-token"
HEARTBEAT_SECONDS = 5.0  # a run's lease renewal at the default 30 s lease
GATEWAY_CPUS, LOADGEN_CPUS = {0}, {1}


@dataclass(frozen=True)
class Sizes:
    input_lines: int  # one input file, shared by every batch
    post_batches: int  # runs posting at once in phase 1
    post_seconds: float
    read_clients: int
    read_seconds: float
    meta_clients: int
    meta_seconds: float
    ramp_start: int
    warm_seconds: float
    chunk_periods: float  # a ramp step's window, in chunk times of the simulated provider
    ramp_seconds: float  # no new step starts after this (batch set-up grows with N)


FULL = Sizes(50_000, 8, 15.0, 8, 6.0, 16, 6.0, 8, 2.0, 2.0, 150.0)
QUICK = Sizes(5_000, 4, 3.0, 4, 2.0, 8, 2.0, 4, 1.0, 0.5, 10.0)


# -- processes and CPUs --------------------------------------------------------


def pin(pid: int, cpus: set[int]) -> bool:
    """Pin every thread of `pid` to `cpus`; threads it starts later inherit it."""
    try:
        for thread in psutil.Process(pid).threads():
            os.sched_setaffinity(thread.id, cpus)
    except (OSError, psutil.Error):
        return False
    return True


class CpuClock:
    """CPU seconds of a process (all its threads) between two readings."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def now(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


@dataclass
class Window:
    """A measured interval: wall time and both processes' CPU time, each as
    a share of one core."""

    gateway: CpuClock
    loadgen: CpuClock
    began: float = 0.0
    ended: float = 0.0
    gateway_cpu: float = 0.0
    loadgen_cpu: float = 0.0

    def __enter__(self) -> Window:
        self._g, self._l = self.gateway.now(), self.loadgen.now()
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.perf_counter()
        self.gateway_cpu = (self.gateway.now() - self._g) / self.seconds
        self.loadgen_cpu = (self.loadgen.now() - self._l) / self.seconds

    @property
    def seconds(self) -> float:
        return max(1e-9, self.ended - self.began)

    def cpu_cells(self, requests: int) -> list[str]:
        """Gateway CPU, its CPU per request (what a request costs it: less
        sensitive to a busy machine than the rates), the load generator's CPU."""
        per_request = self.gateway_cpu * self.seconds / requests * 1000 if requests else 0.0
        return [
            f"{self.gateway_cpu:.0%}",
            f"{per_request:.1f} ms",
            f"{self.loadgen_cpu:.0%}",
        ]


def ceiling_gateway(root: Path) -> LiveGateway:
    """The gateway as `batchgate serve` runs it, with nothing behind it: no
    Prefect server (its flow-run starts fail at once on a closed port) and
    the reconciler put off, so it leaves the simulated runs' batches alone."""
    closed = free_port()
    return LiveGateway(
        root / "data",
        env={
            "BATCHGATE_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "BATCHGATE_RECONCILE_INTERVAL_SECONDS": "3600",
            "PREFECT_API_URL": f"http://127.0.0.1:{closed}/api",
            "PREFECT_CLIENT_MAX_RETRIES": "0",
            "PREFECT_HOME": str(root / "prefect"),
        },
    )


# -- batches and runs ----------------------------------------------------------


@dataclass
class SimRun:
    """A simulated flow run: its batch, its lease, its next chunk."""

    batch_id: str
    token: str
    chunks: list[int]
    line_counts: list[int]
    cursor: int = 0

    def next_chunk(self) -> int:
        """The next chunk to run; past the last one it starts over (a retried
        chunk: accepted and written again), so long ramps never run dry."""
        index = self.chunks[self.cursor % len(self.chunks)]
        self.cursor += 1
        return index


@dataclass
class Fixture:
    gateway: LiveGateway
    api_key: str
    file_id: str
    input_path: Path
    plans: dict[int, list[dict]] = field(default_factory=dict)  # chunk lines -> plan
    runs: list[SimRun] = field(default_factory=list)  # every run started

    def __post_init__(self) -> None:
        self.client = self.gateway.openai_client(self.api_key)

    def plan(self, chunk_lines: int) -> list[dict]:
        """The chunk plan a run's validation makes of the input (computed once
        here: every batch reads the same file)."""
        if chunk_lines not in self.plans:
            with self.input_path.open("rb") as handle:
                blocks = iter(lambda: handle.read(1 << 20), b"")
                result = validate_jsonl(blocks, ENDPOINT, chunk_size=chunk_lines, max_lines=10**9)
            if result.errors:
                raise RuntimeError(f"bench input is invalid: {result.errors[:3]}")
            self.plans[chunk_lines] = [asdict(c) for c in result.chunks]
        return self.plans[chunk_lines]

    def start_run(self, chunk_lines: int) -> SimRun:
        """Create a batch through the public API, then claim it and record
        its plan through the internal API, as a flow run's start does."""
        batch = self.client.batches.create(
            input_file_id=self.file_id, endpoint=ENDPOINT, completion_window="24h"
        )
        api = HttpWorkerAPI(self.gateway.url, INTERNAL_TOKEN, patience=10)
        try:
            token = api.claim(batch.id, None)["lease_token"]
            plan = self.plan(chunk_lines)
            total = sum(c["line_count"] for c in plan)
            control = api.save_plan(
                batch.id, token, total=total, chunks=plan, errors=[], models=["gpt-4o-mini"]
            )
        finally:
            api.http.close()
        if control["status"] != "in_progress":
            raise RuntimeError(f"{batch.id} is {control['status']} after its plan")
        run = SimRun(batch.id, token, [c["index"] for c in plan], [c["line_count"] for c in plan])
        self.runs.append(run)
        return run

    def start_runs(self, count: int, chunk_lines: int) -> list[SimRun]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda _: self.start_run(chunk_lines), range(count)))


@contextlib.contextmanager
def fixture(work: Path, sizes: Sizes) -> Iterator[Fixture]:
    gateway = ceiling_gateway(work)
    with gateway:
        pinned = pin(gateway.pid, GATEWAY_CPUS)
        if not pinned:
            print("  (could not pin the gateway to CPU 0: CPU figures are shared)", flush=True)
        api_key = gateway.create_key("ceiling")
        input_path = work / "input.jsonl"
        size = write_input(input_path, sizes.input_lines)
        with input_path.open("rb") as handle:
            file_id = gateway.openai_client(api_key).files.create(file=handle, purpose="batch").id
        print(f"  input: {sizes.input_lines:,} lines, {size / 1e6:.1f} MB ({file_id})", flush=True)
        yield Fixture(gateway, api_key, file_id, input_path)


# -- load loops --------------------------------------------------------------


async def until(deadline: float, work: Callable[[], Awaitable[Timing | None]]) -> list[Timing]:
    """Call `work` back to back until `deadline` (perf_counter) or it returns None."""
    done: list[Timing] = []
    while time.perf_counter() < deadline:
        timing = await work()
        if timing is None:
            break
        done.append(timing)
    return done


def rate_cells(timings: Sequence[Timing], window: Window) -> list[str]:
    latencies = [t.seconds * 1000 for t in timings]
    return [
        f"{len(timings) / window.seconds:,.0f}",
        f"{percentile(latencies, 50):.0f} ms",
        f"{percentile(latencies, 99):.0f} ms",
    ]


async def chunk_posts(
    fix: Fixture, wire: Wire, sizes: Sizes, post: ChunkPost, parallelism: int
) -> tuple[list[str], dict[str, list[int]], float]:
    """Phase 1: runs post their chunks back to back; returns the row, the
    chunks each run has left, and the posts/s."""
    runs = await asyncio.to_thread(fix.start_runs, sizes.post_batches, post.lines)
    renew = {r.batch_id: renew_body(r.token) for r in runs}
    remaining = {r.batch_id: list(r.chunks) for r in runs}

    async def lane(run: SimRun) -> list[Timing]:
        async def one() -> Timing | None:
            if not remaining[run.batch_id]:
                return None
            index = remaining[run.batch_id].pop(0)
            return await wire.post_chunk(run.batch_id, run.token, index, post)

        return await until(deadline, one)

    async def heartbeat(run: SimRun) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await wire.renew(run.batch_id, renew[run.batch_id])

    with Window(CpuClock(fix.gateway.pid), CpuClock(os.getpid())) as window:
        deadline = time.perf_counter() + sizes.post_seconds
        beats = [asyncio.create_task(heartbeat(r)) for r in runs]
        lanes = await asyncio.gather(*(lane(r) for r in runs for _ in range(parallelism)))
        for beat in beats:
            beat.cancel()
    timings = [t for one in lanes for t in one]
    lines = sum(t.lines for t in timings)
    body_mb = len(post.body) / 1e6
    row = [
        f"{post.lines:,}",
        f"{body_mb:.2f} MB",
        f"{sizes.post_batches} x {parallelism}",
        *rate_cells(timings, window)[:1],
        f"{lines / window.seconds:,.0f}",
        f"{len(timings) * body_mb / window.seconds:,.0f}",
        *rate_cells(timings, window)[1:],
        *window.cpu_cells(len(timings)),
    ]
    return row, remaining, len(timings) / window.seconds


async def finish(
    wire: Wire, runs: Sequence[SimRun], remaining: dict[str, list[int]], post: ChunkPost
) -> None:
    """Post the chunks `runs` have left (not measured), so they can finalize."""
    for run in runs:
        for index in remaining[run.batch_id]:
            await wire.post_chunk(run.batch_id, run.token, index, post)
        remaining[run.batch_id] = []


def finalize_rows(fix: Fixture, runs: Sequence[SimRun]) -> list[list[str]]:
    """Finalize (parts -> output, error and meta files) of batches whose
    every chunk was posted, one at a time, as each run's last step."""
    rows = []
    for run in runs:
        api = HttpWorkerAPI(fix.gateway.url, INTERNAL_TOKEN, patience=10)
        clock = CpuClock(fix.gateway.pid)
        cpu, began = clock.now(), time.perf_counter()
        batch = api.finalize(run.batch_id, run.token, "completed")
        wall = time.perf_counter() - began
        cpu = clock.now() - cpu
        api.http.close()
        if batch["status"] != "completed":
            raise RuntimeError(f"{run.batch_id} finalized as {batch['status']}")
        lines = sum(run.line_counts)
        rows.append([f"{lines:,}", f"{wall:.2f} s", f"{lines / wall:,.0f}", f"{cpu / wall:.0%}"])
    return rows


async def input_reads(
    fix: Fixture, wire: Wire, sizes: Sizes, runs: Sequence[SimRun]
) -> tuple[list[list[str]], float]:
    """Phase 2: chunk inputs (every chunk's first request) and whole inputs
    (a run's validation), from concurrent readers; returns rows, chunk MB/s."""
    rng = random.Random(2)
    rows = []
    measured = 0.0

    async def chunk() -> Timing:
        run = rng.choice(runs)
        return await wire.chunk_input(run.batch_id, rng.choice(run.chunks))

    async def whole() -> Timing:
        return await wire.whole_input(rng.choice(runs).batch_id)

    for what, work in (("chunk input", chunk), ("whole input", whole)):
        with Window(CpuClock(fix.gateway.pid), CpuClock(os.getpid())) as window:
            deadline = time.perf_counter() + sizes.read_seconds
            done = await asyncio.gather(*(until(deadline, work) for _ in range(sizes.read_clients)))
        timings = [t for one in done for t in one]
        moved = sum(t.nbytes for t in timings) / window.seconds / 1e6
        measured = measured or moved
        rows.append(
            [
                what,
                f"{timings[0].nbytes / 1e6:.2f} MB" if timings else "-",
                str(sizes.read_clients),
                *rate_cells(timings, window)[:1],
                f"{moved:,.0f}",
                *rate_cells(timings, window)[1:],
                *window.cpu_cells(len(timings)),
            ]
        )
    return rows, measured * 1e6


async def metadata(
    fix: Fixture, wire: Wire, sizes: Sizes, runs: Sequence[SimRun]
) -> tuple[list[list[str]], float]:
    """Phase 3: the public API's polls and lists from concurrent clients;
    returns rows and the slowest kind's requests/s."""
    rng = random.Random(3)
    kinds: list[tuple[str, Callable[[], str]]] = [
        ("batches.retrieve", lambda: f"/v1/batches/{rng.choice(runs).batch_id}"),
        ("batches.list (20)", lambda: "/v1/batches?limit=20"),
        ("files.list", lambda: "/v1/files"),
    ]
    rows, slowest = [], float("inf")
    for what, path in kinds:

        async def get(path: Callable[[], str] = path) -> Timing:
            return await wire.public_get(path(), fix.api_key)

        with Window(CpuClock(fix.gateway.pid), CpuClock(os.getpid())) as window:
            deadline = time.perf_counter() + sizes.meta_seconds
            done = await asyncio.gather(*(until(deadline, get) for _ in range(sizes.meta_clients)))
        timings = [t for one in done for t in one]
        slowest = min(slowest, len(timings) / window.seconds)
        rows.append(
            [
                what,
                str(sizes.meta_clients),
                *rate_cells(timings, window),
                *window.cpu_cells(len(timings)),
            ]
        )
    return rows, slowest


# -- the ramp -----------------------------------------------------------------


@dataclass
class RampLoad:
    """The simulated runs of the ramp and what they have done."""

    fix: Fixture
    wire: Wire
    post: ChunkPost
    chunk_time: float
    parallelism: int
    posts: list[Timing] = field(default_factory=list)
    active: list[list[asyncio.Task[None]]] = field(default_factory=list)  # tasks per run
    stopped: list[asyncio.Task[None]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(4))

    @property
    def runs(self) -> int:
        return len(self.active)

    def add(self, runs: Sequence[SimRun]) -> None:
        """Start `runs`, each at a random point of its current chunks, as if
        it had been running for a while: the step is steady from the start."""
        for run in runs:
            body = renew_body(run.token)
            tasks = [asyncio.create_task(self._heartbeat(run, body))]
            for _ in range(self.parallelism):
                head_start = self.rng.uniform(0, self.chunk_time)
                tasks.append(asyncio.create_task(self._lane(run, head_start)))
            self.active.append(tasks)

    def shrink(self, runs: int) -> None:
        """Stop all but the first `runs` runs (a step back down the ramp)."""
        for tasks in self.active[runs:]:
            for task in tasks:
                task.cancel()
            self.stopped += tasks
        del self.active[runs:]

    async def _lane(self, run: SimRun, head_start: float) -> None:
        provider_time = self.chunk_time - head_start
        while True:
            index = run.next_chunk()
            await self.wire.chunk_input(run.batch_id, index)
            await asyncio.sleep(provider_time)
            self.posts.append(await self.wire.post_chunk(run.batch_id, run.token, index, self.post))
            provider_time = self.chunk_time

    async def _heartbeat(self, run: SimRun, body: bytes) -> None:
        await asyncio.sleep(self.rng.uniform(0, HEARTBEAT_SECONDS))
        while True:
            await self.wire.renew(run.batch_id, body)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [task for tasks in self.active for task in tasks] + self.stopped

    async def stop(self) -> None:
        self.shrink(0)
        results = await asyncio.gather(*self.stopped, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]

    def check(self) -> None:
        """A failed run (an error answer) fails the benchmark at once."""
        for task in self._tasks():
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]


async def ramp(
    fix: Fixture, wire: Wire, sizes: Sizes, args: argparse.Namespace, post: ChunkPost
) -> list[Step]:
    latency = args.latency_ms / 1000
    chunk_time = chunk_seconds(post.lines, latency, args.run_concurrency, args.chunk_parallelism)
    ideal = run_lines_per_second(latency, args.run_concurrency)
    load = RampLoad(fix, wire, post, chunk_time, args.chunk_parallelism)
    steps: list[Step] = []
    batches: int | None = sizes.ramp_start
    deadline = time.perf_counter() + sizes.ramp_seconds
    try:
        while batches is not None and time.perf_counter() < deadline:
            began = time.perf_counter()
            warm = sizes.warm_seconds
            if batches > load.runs:
                load.add(await asyncio.to_thread(fix.start_runs, batches - load.runs, post.lines))
            else:  # a step back down: let the runs left work off the last step's queue
                load.shrink(batches)
                warm = max(warm, chunk_time)
            setup = time.perf_counter() - began
            await asyncio.sleep(warm)
            load.check()
            with Window(CpuClock(fix.gateway.pid), CpuClock(os.getpid())) as window:
                await asyncio.sleep(sizes.chunk_periods * chunk_time)
            load.check()
            posts = [t for t in load.posts if window.began <= t.ended <= window.ended]
            latencies = [t.seconds * 1000 for t in posts]
            step = Step(
                batches=batches,
                seconds=window.seconds,
                lines=sum(t.lines for t in posts),
                posts=len(posts),
                post_p50_ms=percentile(latencies, 50),
                post_p99_ms=percentile(latencies, 99),
                gateway_cpu=window.gateway_cpu,
                loadgen_cpu=window.loadgen_cpu,
                ideal_run_rate=ideal,
            )
            steps.append(step)
            print(
                f"  {batches} batches: {step.rate:,.0f} lines/s of {step.ideal:,.0f} "
                f"({step.efficiency:.0%}), post p99 {step.post_p99_ms:.0f} ms, gateway CPU "
                f"{step.gateway_cpu:.0%} (setup {setup:.0f} s)",
                flush=True,
            )
            batches = next_batches(steps, args.max_batches)
    finally:
        await load.stop()
    return steps


def ramp_rows(steps: Sequence[Step]) -> list[list[str]]:
    return [
        [
            str(s.batches),
            f"{s.ideal:,.0f}",
            f"{s.rate:,.0f}",
            f"{s.efficiency:.0%}",
            f"{s.posts / s.seconds:,.1f}",
            f"{s.post_p50_ms:.0f} ms",
            f"{s.post_p99_ms:.0f} ms",
            f"{s.gateway_cpu:.0%}",
            f"{s.gateway_cpu * s.seconds / s.posts * 1000:.1f} ms" if s.posts else "-",
            f"{s.loadgen_cpu:.0%}",
        ]
        for s in sorted(steps, key=lambda s: s.batches)
    ]


# -- the whole run -------------------------------------------------------------

CPU_HEADERS = ["gateway CPU", "gateway CPU/req", "load-gen CPU"]


async def measure(args: argparse.Namespace, sizes: Sizes, work: Path) -> list[Section]:
    print("sampling chunk results from an in-thread mock provider ...", flush=True)
    posts = {n: ChunkPost.capture(n, await sample_result(n)) for n in (1000, 100)}
    sections = []
    with fixture(work, sizes) as fix:
        wire = Wire(fix.gateway.url, INTERNAL_TOKEN)
        try:
            print("1. chunk posts ...", flush=True)
            big, left, posts_per_second = await chunk_posts(
                fix, wire, sizes, posts[1000], args.chunk_parallelism
            )
            print("2. input reads ...", flush=True)
            reads, input_rate = await input_reads(fix, wire, sizes, fix.runs)
            print("   finalize ...", flush=True)
            ended = fix.runs[:2]
            await finish(wire, ended, left, posts[1000])
            finals = await asyncio.to_thread(finalize_rows, fix, ended)
            small, _, _ = await chunk_posts(fix, wire, sizes, posts[100], args.chunk_parallelism)
            sections.append(
                Section(
                    "Chunk posts (worker -> gateway checkpoints)",
                    "Runs post finished chunks back to back, each holding its batch's lease.",
                    [
                        "chunk lines",
                        "body",
                        "runs x parallel",
                        "posts/s",
                        "lines/s",
                        "MB/s",
                        "p50",
                        "p99",
                        *CPU_HEADERS,
                    ],
                    [big, small],
                )
            )
            sections.append(
                Section(
                    "Finalize (checkpoint parts -> output files)",
                    "One batch at a time, after all its chunks were posted.",
                    ["lines", "wall", "lines/s", "gateway CPU"],
                    finals,
                )
            )
            sections.append(
                Section(
                    "Input served to workers",
                    "Concurrent readers of 1,000-line chunk inputs and of whole inputs.",
                    ["read", "size", "readers", "req/s", "MB/s", "p50", "p99", *CPU_HEADERS],
                    reads,
                )
            )
            print("3. metadata ...", flush=True)
            meta_rows, meta_rate = await metadata(fix, wire, sizes, fix.runs)
            sections.append(
                Section(
                    "Public metadata requests",
                    "Concurrent clients, each sending its next request when the last is answered.",
                    ["request", "clients", "req/s", "p50", "p99", *CPU_HEADERS],
                    meta_rows,
                )
            )
            print("4. the ramp ...", flush=True)
            steps = await ramp(fix, wire, sizes, args, posts[1000])
        finally:
            await wire.close()
    good, bad = knee(steps)
    latency = args.latency_ms / 1000
    note = (
        f"Each run: provider {args.latency_ms:.0f} ms per request, {args.run_concurrency} "
        f"requests in flight, {args.chunk_parallelism} chunks at once, so a 1,000-line chunk "
        f"takes {chunk_seconds(1000, latency, args.run_concurrency, args.chunk_parallelism):.2f} s "
        f"and a run alone does {run_lines_per_second(latency, args.run_concurrency):,.0f} lines/s;"
        f" a lease heartbeat every {HEARTBEAT_SECONDS:.0f} s."
    )
    verdict = (
        f"Knee: the gateway kept up with {good.batches if good else 'no'} batches"
        + (f" and fell behind at {bad.batches}" if bad else " (never fell behind in the ramp)")
        + f" (below {EFFICIENCY_FLOOR:.0%} of the ideal lines/s)."
    )
    sections.append(
        Section(
            "Running batches until the gateway is the bottleneck",
            note,
            [
                "batches",
                "ideal lines/s",
                "lines/s",
                "of ideal",
                "posts/s",
                "post p50",
                "post p99",
                "gateway CPU",
                "gateway CPU/chunk",
                "load-gen CPU",
            ],
            ramp_rows(steps),
            notes=[verdict],
        )
    )
    best = max(steps, key=lambda s: s.rate)
    ceilings = Ceilings(
        chunk_posts=posts_per_second,
        chunk_lines=1000,
        input_bytes=input_rate,
        metadata=meta_rate,
        lines=good.rate if good and bad else best.rate,
        lines_is_knee=bool(good and bad),
    )
    sections.append(
        Section(
            "A 10-million-line day against these ceilings",
            "Lines arrive in 8 busy hours, the peak is 3 x their mean; headroom is at the peak.",
            ["quantity", "24 h avg", "busy hours", "peak", "ceiling", "headroom"],
            day_rows(Day(), ceilings),
        )
    )
    return sections


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_ceiling",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="simulated provider")
    parser.add_argument(
        "--run-concurrency", type=int, default=64, help="requests in flight per run"
    )
    parser.add_argument("--chunk-parallelism", type=int, default=2, help="chunks at once per run")
    parser.add_argument("--max-batches", type=int, default=512, help="the ramp's last step")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    pinned = len(os.sched_getaffinity(0)) >= 2 and pin(os.getpid(), LOADGEN_CPUS)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at start: {load}; CPUs pinned: {pinned}", flush=True)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        sections = asyncio.run(measure(args, sizes, Path(tmp)))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ncommand: uv run python -m bench.gateway_ceiling {' '.join(argv)}".rstrip())
    print(f"took {time.perf_counter() - began:.0f} s; load average at the end: {load}\n")
    for section in sections:
        print(render_section(section) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
