"""`uv run python -m bench.http_clients`: client CPU per provider request,
aiohttp against batchgate's own client (tasks/http1.py), same mock, same run.

At 0 ms provider latency the engine is bound by its own process's CPU, so
what one request costs the client bounds every overhead-bound figure. Each
client runs in a fresh process on uvloop (as flow runs and `batchgate run`
do), sends the same chat body with the engine's headers and parses each
answer with orjson; CPU is the process's user + system time over the
request loop alone (start-up excluded), median of the rounds.

Writes its section of docs/benchmarks.md between http-clients markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from bench.report import markdown_table, write_block

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- http-clients:start -->", "<!-- http-clients:end -->"
CLIENTS = ("aiohttp", "batchgate")
BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello. " * 30}]}
)
HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer sk-bench",
    "X-Batchgate-Custom-Id": "request-1",
    "X-Client-Request-Id": "req_0123456789abcdef",
}

Send = Callable[[], Awaitable[int]]


async def loop_over(send: Send, requests: int, concurrency: int) -> dict[str, float]:
    """Warm the pool, then time `requests` sends by `concurrency` workers."""
    await asyncio.gather(*(send() for _ in range(concurrency)))
    todo = iter(range(requests))

    async def worker() -> None:
        for _ in todo:
            await send()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}


async def with_aiohttp(url: str, requests: int, concurrency: int) -> dict[str, float]:
    import aiohttp  # as tasks/upstream.py used it until tasks/http1.py

    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30.0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as s:

        async def send() -> int:
            async with s.post(url, data=BODY, headers=HEADERS) as response:
                orjson.loads(await response.read())
                return response.status

        return await loop_over(send, requests, concurrency)


async def with_batchgate(url: str, requests: int, concurrency: int) -> dict[str, float]:
    from tasks.http1 import Pool

    pool = Pool()

    async def send() -> int:
        response = await pool.post(url, HEADERS, BODY)
        orjson.loads(response.body)
        return response.status

    try:
        return await loop_over(send, requests, concurrency)
    finally:
        await pool.close()


def child(client: str, url: str, requests: int, concurrency: int) -> None:
    import uvloop

    run = {"aiohttp": with_aiohttp, "batchgate": with_batchgate}[client]
    result = uvloop.run(run(url, requests, concurrency))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


def measure(client: str, url: str, requests: int, concurrency: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.http_clients", "--child", client, "--url", url]
    cmd += ["--requests", str(requests), "--concurrency", str(concurrency)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    result: dict[str, float] = orjson.loads(out.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_clients", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.url, args.requests, args.concurrency)
        return 0

    from bench.run_file import MockProcess

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CLIENTS}
    with tempfile.TemporaryDirectory() as tmp, MockProcess(0, Path(tmp)) as mock:
        url = f"{mock.url}/v1/chat/completions"
        for _ in range(args.rounds):  # alternated, so a change in load hits both
            for client in CLIENTS:
                results[client].append(measure(client, url, args.requests, args.concurrency))
    us = {
        c: statistics.median(r["cpu"] for r in runs) / args.requests * 1e6
        for c, runs in results.items()
    }
    rate = {
        c: args.requests / statistics.median(r["wall"] for r in runs) for c, runs in results.items()
    }
    rows = [
        [c, f"{us[c]:.0f} us", f"{us[c] / us['aiohttp']:.2f}", f"{rate[c]:,.0f}"] for c in CLIENTS
    ]
    table = markdown_table(["client", "CPU per request", "x aiohttp", "requests/s"], rows)
    block = "\n".join(
        [
            START,
            "## Provider HTTP client",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} (load average at start {load}) with",
            "",
            "    uv run python -m bench.http_clients --write",
            "",
            f"{args.requests:,} chat requests per round, concurrency {args.concurrency}, "
            f"`batchgate mock-upstream` at 0 ms, each client in its own process on uvloop; "
            f"median of {args.rounds} rounds, the clients alternated. CPU is the client "
            "process's user + system time over the request loop.",
            "",
            table,
            "",
            "requests/s is bounded by the mock (one process on the other core) as much as by "
            "the client; CPU per request is the client's own cost, what bounds the engine at "
            "0 ms latency.",
            END,
        ]
    )
    print(block)
    if args.write:
        write_block(DOCS, START, END, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
