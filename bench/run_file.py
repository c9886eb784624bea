"""`uv run python -m bench.run_file`: `batchgate run` against two hand-written
baselines on the same `batchgate mock-upstream`, in the same session.

- latency-bound: 20,000 lines at 200 ms, concurrency 128; target wall <= 1.05 x
- overhead-bound: 20,000 lines at 0 ms, concurrency 128; target requests/s >= 0.8 x
- memory: peak RSS of `batchgate run` at 1,000 and 200,000 lines (0 ms); target
  under 150 MB and flat

The baselines: `bench.baseline` (asyncio + aiohttp, `concurrency` workers on
one iterator, no retries, no output file) and `bench.cookbook` (the approach
of OpenAI's api_request_parallel_processor.py: fixed requests-per-minute
throttle, one retry queue, an output line appended per result). Every wall
time is the process's, spawn to exit, as a user would time it: all three pay
their interpreter start and imports. Targets are checked against the faster
baseline of the two.

Writes its section of docs/benchmarks.md between run-file markers (kept when
`python -m bench` rewrites the rest); `--quick` prints smaller runs only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from batchgate.up.supervisor import http_status
from bench.report import Run, Section, mb, ratio, render_section, seconds, write_block
from bench.system import RssSampler
from harness.live import free_port
from harness.workload import write_input

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- run-file:start -->", "<!-- run-file:end -->"
WALL_TARGET = 1.05
RATE_TARGET = 0.8
RSS_TARGET_MB = 150.0
ZERO_LATENCY_RPM = 1_000_000.0  # the cookbook's throttle, out of the way at 0 ms


@dataclass(frozen=True)
class Sizes:
    lines: int
    rss_lines: tuple[int, ...]


FULL = Sizes(20_000, (1_000, 200_000))
QUICK = Sizes(2_000, (1_000, 20_000))


class MockProcess:
    def __init__(self, latency_ms: float, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(work / f"mock-{latency_ms:g}.log", "ab")  # noqa: SIM115 (closed in __exit__)
        self.log = log
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "batchgate.cli", "--log-level", "warning", "mock-upstream"]
            + ["--port", str(self.port), "--latency-ms", str(latency_ms)],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while http_status(f"{self.url}/stats") != 200:
            if time.monotonic() > deadline or self.popen.poll() is not None:
                raise RuntimeError("mock upstream did not start")
            time.sleep(0.2)

    def reset(self) -> None:
        httpx.post(f"{self.url}/stats/reset").raise_for_status()

    def __enter__(self) -> MockProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.popen.terminate()
        self.popen.wait(timeout=30)
        self.log.close()


def bench_env() -> dict[str, str]:
    """Interpreters that read and write compiled bytecode, as an installed
    package's do (a PYTHONDONTWRITEBYTECODE=1 shell re-compiles every import on
    every start: 3 s of batchgate's start on a loaded 2-core machine)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BATCHGATE_", "OPENAI_")) and k != "PYTHONDONTWRITEBYTECODE"
    }


def warm_imports() -> None:
    """Compile each contender's imports once, outside the measurements."""
    modules = "batchgate.cli, batchgate.run.command, batchgate.run.display, tasks.local_run, "
    modules += "bench.baseline, bench.cookbook, rich.logging"
    subprocess.run([sys.executable, "-c", f"import {modules}"], env=bench_env(), check=True)


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd`; (wall from spawn to exit, peak RSS MB, stdout)."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=bench_env())
    with RssSampler({"p": proc.pid}, interval=0.05) as sampler:
        out, _ = proc.communicate(timeout=1800)
    wall = time.perf_counter() - began
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}")
    return wall, sampler.peak_mb()["p"], out


def run_batchgate(mock: MockProcess, source: Path, work: Path, concurrency: int) -> Run:
    mock.reset()
    out = work / f"{source.stem}.out.jsonl"
    cmd = [sys.executable, "-m", "batchgate.cli", "run", str(source), "-o", str(out)]
    cmd += ["--base-url", f"{mock.url}/v1", "--max-concurrency", str(concurrency), "--quiet"]
    cmd += ["--state-dir", str(work / "state")]
    wall, rss, _ = timed(cmd)
    with open(out, "rb") as handle:
        lines = sum(1 for _ in handle)
    return Run("batchgate run", wall, lines, {"process": rss})


def run_aiohttp(mock: MockProcess, source: Path, concurrency: int) -> Run:
    mock.reset()
    cmd = [sys.executable, "-m", "bench.baseline", "--client", "aiohttp"]
    cmd += ["--url", f"{mock.url}/v1/chat/completions", "--file", str(source)]
    cmd += ["--concurrency", str(concurrency)]
    wall, rss, out = timed(cmd)
    result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return Run("baseline: asyncio + aiohttp", wall, result["ok"], {"process": rss})


def run_cookbook(mock: MockProcess, source: Path, work: Path, concurrency: int, rpm: float) -> Run:
    mock.reset()
    out = work / f"{source.stem}.cookbook.jsonl"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.cookbook", "--url", f"{mock.url}/v1/chat/completions"]
    cmd += ["--file", str(source), "--output", str(out), "--rpm", f"{rpm:g}"]
    cmd += ["--concurrency", str(concurrency)]
    wall, rss, stdout = timed(cmd)
    result: dict[str, Any] = orjson.loads(stdout.strip().splitlines()[-1])
    return Run(f"baseline: cookbook ({rpm:,.0f} rpm)", wall, result["ok"], {"process": rss})


HEADERS = [
    "run",
    "requests",
    "wall",
    "requests/s",
    "wall / aiohttp",
    "rate / aiohttp",
    "wall / cookbook",
    "rate / cookbook",
    "peak RSS",
]


def rows(runs: list[Run]) -> list[list[str]]:
    aio, cook = runs[1], runs[2]
    return [
        [
            r.label,
            str(r.requests),
            seconds(r.wall),
            f"{r.rate:.0f}",
            f"{ratio(r.wall, aio.wall):.2f}",
            f"{ratio(r.rate, aio.rate):.2f}",
            f"{ratio(r.wall, cook.wall):.2f}",
            f"{ratio(r.rate, cook.rate):.2f}",
            mb(r.rss_mb.get("process")),
        ]
        for r in runs
    ]


def compare(latency_ms: float, lines: int, concurrency: int, work: Path) -> tuple[list[Run], Path]:
    source = work / f"run-{latency_ms:g}.jsonl"
    write_input(source, lines)
    rpm = concurrency / (latency_ms / 1000) * 60 if latency_ms else ZERO_LATENCY_RPM
    with MockProcess(latency_ms, work) as mock:
        runs = [
            run_batchgate(mock, source, work, concurrency),
            run_aiohttp(mock, source, concurrency),
            run_cookbook(mock, source, work, concurrency, rpm),
        ]
    for r in runs:
        print(f"  {r.label}: {r.requests} in {r.wall:.2f} s ({r.rate:.0f}/s)", flush=True)
    return runs, source


def latency_section(runs: list[Run], latency_ms: float, concurrency: int) -> Section:
    ours, best = runs[0], min(runs[1:], key=lambda r: r.wall)
    value = ratio(ours.wall, best.wall)
    return Section(
        title="`batchgate run`: latency-bound",
        claim=(
            f"{ours.requests:,} chat lines, mock latency {latency_ms:g} ms, concurrency "
            f"{concurrency}. Target: wall <= {WALL_TARGET} x the faster baseline. "
            f"Measured: {value:.2f} x ({best.label})."
        ),
        headers=HEADERS,
        rows=rows(runs),
        passed=value <= WALL_TARGET,
        notes=[
            f"Ideal: {ours.requests * latency_ms / 1000 / concurrency:.1f} s "
            "(lines x latency / concurrency), plus each process's start.",
            "Wall is the process's, spawn to exit: batchgate's includes hashing and copying "
            "the input into its state directory, validation, checkpoints and finalize.",
        ],
    )


def overhead_section(runs: list[Run], concurrency: int) -> Section:
    ours, best = runs[0], max(runs[1:], key=lambda r: r.rate)
    value = ratio(ours.rate, best.rate)
    return Section(
        title="`batchgate run`: overhead-bound",
        claim=(
            f"{ours.requests:,} chat lines, mock latency 0, concurrency {concurrency}. "
            f"Target: requests/s >= {RATE_TARGET} x the faster baseline. "
            f"Measured: {value:.2f} x ({best.label})."
        ),
        headers=HEADERS,
        rows=rows(runs),
        passed=value >= RATE_TARGET,
        notes=[
            "On 2 cores the mock (one uvicorn process) competes with the client for CPU, "
            "so it is part of what is measured; all three runs hit the same mock.",
            "The cookbook's loop sleeps 1 ms whenever it cannot send and starts one request "
            "per pass, which caps it near 1,000 requests/s whatever the provider.",
        ],
    )


def rss_section(points: list[tuple[int, Run]], concurrency: int) -> Section:
    peaks = [r.rss_mb["process"] for _, r in points]
    flat = max(peaks) < RSS_TARGET_MB
    return Section(
        title="`batchgate run`: memory",
        claim=(
            f"Peak RSS of the `batchgate run` process, mock latency 0, concurrency "
            f"{concurrency}. Target: under {RSS_TARGET_MB:.0f} MB at every size, flat. "
            f"Measured: {min(peaks):.0f} - {max(peaks):.0f} MB."
        ),
        headers=["lines", "wall", "requests/s", "peak RSS"],
        rows=[
            [f"{n:,}", seconds(r.wall), f"{r.rate:.0f}", mb(r.rss_mb["process"])] for n, r in points
        ],
        passed=flat,
        notes=[
            "The input is streamed (validated in 1 MiB blocks, executed a chunk at a time, two "
            "chunks of 1,000 lines in flight) and the output assembled from per-chunk parts on "
            "disk; the validator's set of custom_ids is freed before the first request; the "
            "meter keeps latencies in fixed buckets, so nothing kept grows a line at a time."
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_file", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sections: list[Section] = []
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="batchgate-run-bench-") as tmp:
        work = Path(tmp)
        warm_imports()
        print("latency-bound", flush=True)
        runs, _ = compare(args.latency_ms, sizes.lines, args.concurrency, work)
        sections.append(latency_section(runs, args.latency_ms, args.concurrency))
        print("overhead-bound", flush=True)
        runs, _ = compare(0, sizes.lines, args.concurrency, work)
        sections.append(overhead_section(runs, args.concurrency))
        print("memory", flush=True)
        points = []
        with MockProcess(0, work) as mock:
            for n in sizes.rss_lines:
                source = work / f"rss-{n}.jsonl"
                write_input(source, n)
                points.append((n, run_batchgate(mock, source, work, args.concurrency)))
                source.unlink()
        sections.append(rss_section(points, args.concurrency))
    command = "uv run python -m bench.run_file" + (" --quick" if args.quick else "")
    body = "\n\n".join(render_section(s) for s in sections)
    block = (
        f"{START}\n\n## `batchgate run` against hand-written scripts\n\n"
        f"Re-run with `{command}` ({time.strftime('%Y-%m-%d')}; load average at start {load}).\n\n"
        f"{body}\n\n{END}"
    )
    print("\n" + block)
    output = args.output or (None if args.quick else DOCS)
    if output is not None:
        write_block(output, START, END, block)
        print(f"wrote {output}")
    return 0 if all(s.passed is not False for s in sections) else 1


if __name__ == "__main__":
    raise SystemExit(main())
