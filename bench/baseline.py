"""The baseline: a plain asyncio loop sending the same request lines to the
same mock at the same concurrency, with no batch machinery at all.

Run as its own process (`python -m bench.baseline --client aiohttp ...`), so
its peak RSS is measured like the system's processes; prints one JSON line.
`concurrency` workers pull lines from one shared iterator, so no slot ever
idles while lines remain: the best a hand-written script does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson

Send = Callable[[bytes], Awaitable[int]]


def request_bodies(path: Path) -> Iterator[bytes]:
    """The upstream body of each input line (the line's `body`, re-serialized)."""
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                yield orjson.dumps(orjson.loads(raw)["body"])


async def drive(
    bodies: Iterator[bytes], send: Send, concurrency: int, max_seconds: float = float("inf")
) -> tuple[int, int]:
    """Send every body with `concurrency` workers, taking no new one after
    `max_seconds` (a loop that collapses must not stall the whole benchmark);
    returns (sent, answered 2xx)."""
    counts = [0, 0]
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        for body in bodies:  # one shared iterator: each body goes to one worker
            if time.monotonic() > deadline:
                return
            status = await send(body)
            counts[0] += 1
            counts[1] += 200 <= status < 300

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts[0], counts[1]


async def run_aiohttp(url: str, path: Path, concurrency: int, limit: float) -> tuple[int, int]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def send(body: bytes) -> int:
            try:
                async with session.post(url, data=body) as response:
                    orjson.loads(await response.read())
                    return response.status
            except aiohttp.ClientError:
                return 0  # counted as sent, not as answered

        return await drive(request_bodies(path), send, concurrency, limit)


async def run_httpx(url: str, path: Path, concurrency: int, limit: float) -> tuple[int, int]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=60) as client:

        async def send(body: bytes) -> int:
            try:
                response = await client.post(url, content=body)
            except httpx.TransportError:
                return 0  # httpx's pool drops connections under load: counted, not fatal
            orjson.loads(response.content)
            return response.status_code

        return await drive(request_bodies(path), send, concurrency, limit)


RUNNERS = {"aiohttp": run_aiohttp, "httpx": run_httpx}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plain asyncio baseline against the mock")
    parser.add_argument("--client", choices=sorted(RUNNERS), default="aiohttp")
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:PORT/v1/chat/...")
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument(
        "--max-seconds", type=float, default=float("inf"), help="take no new line after this"
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    run = RUNNERS[args.client](args.url, args.file, args.concurrency, args.max_seconds)
    sent, ok = asyncio.run(run)
    wall = time.perf_counter() - began
    sys.stdout.write(orjson.dumps({"wall": wall, "sent": sent, "ok": ok}).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
