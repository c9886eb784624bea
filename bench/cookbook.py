"""The cookbook baseline: how OpenAI's `api_request_parallel_processor.py`
works, reduced to what matters for speed, for `bench.run_file`.

Its approach, kept as it is: read the file one request at a time; a fixed
requests-per-minute budget that refills continuously and is spent one
request at a time (no adaptation to 429s or `Retry-After` beyond a fixed
pause after a rate-limit error); a task per request; one retry queue that
failed requests go back to, served before new lines; a main loop that
sleeps 1 ms whenever it cannot send; each result appended to the output
file as it arrives (the script opens the file for each line). Left out:
the token-per-minute budget (the mock does not need it), logging.

The connection pool is capped at `--concurrency`, so it runs at the same
concurrency as the others; set `--rpm` to the rate that concurrency allows
(concurrency / latency x 60) and the throttle is never the bottleneck.

Run as its own process; prints one JSON line like bench.baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR = 15
SECONDS_TO_SLEEP_EACH_LOOP = 0.001


@dataclass
class StatusTracker:
    num_tasks_started: int = 0
    num_tasks_in_progress: int = 0
    num_tasks_succeeded: int = 0
    num_tasks_failed: int = 0
    num_rate_limit_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0


@dataclass
class APIRequest:
    task_id: int
    request_json: dict[str, Any]
    metadata: Any
    attempts_left: int
    result: list[Any] = field(default_factory=list)

    async def call_api(
        self,
        session: aiohttp.ClientSession,
        url: str,
        retry_queue: asyncio.Queue[APIRequest],
        save_path: Path,
        status: StatusTracker,
    ) -> None:
        error: Any = None
        try:
            async with session.post(url, json=self.request_json) as response:
                answer = await response.json(content_type=None)
            if "error" in answer:
                error = answer
                if "rate limit" in str(answer["error"].get("message", "")).lower():
                    status.time_of_last_rate_limit_error = time.time()
                    status.num_rate_limit_errors += 1
        except (aiohttp.ClientError, ValueError) as exc:
            error = exc
        if error is not None:
            self.result.append(error)
            if self.attempts_left:
                retry_queue.put_nowait(self)
            else:
                append_to_jsonl([self.request_json, [str(e) for e in self.result]], save_path)
                status.num_tasks_in_progress -= 1
                status.num_tasks_failed += 1
            return
        append_to_jsonl([self.request_json, answer, self.metadata], save_path)
        status.num_tasks_in_progress -= 1
        status.num_tasks_succeeded += 1


def append_to_jsonl(data: Any, path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(orjson.dumps(data) + b"\n")


async def process(
    requests_path: Path, save_path: Path, url: str, rpm: float, concurrency: int, attempts: int
) -> StatusTracker:
    retry_queue: asyncio.Queue[APIRequest] = asyncio.Queue()
    status = StatusTracker()
    next_request: APIRequest | None = None
    capacity = rpm
    last_update = time.time()
    file_done = False
    task_id = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": "Bearer sk-bench"}
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        with open(requests_path, "rb") as lines:
            while True:
                if next_request is None:
                    if not retry_queue.empty():
                        next_request = retry_queue.get_nowait()
                    elif not file_done:
                        raw = lines.readline()
                        if raw.strip():
                            line = orjson.loads(raw)
                            next_request = APIRequest(
                                task_id, line["body"], line.get("custom_id"), attempts
                            )
                            task_id += 1
                            status.num_tasks_started += 1
                            status.num_tasks_in_progress += 1
                        elif not raw:
                            file_done = True
                now = time.time()
                capacity = min(capacity + rpm * (now - last_update) / 60.0, rpm)
                last_update = now
                if next_request is not None and capacity >= 1:
                    capacity -= 1
                    next_request.attempts_left -= 1
                    task = asyncio.create_task(
                        next_request.call_api(session, url, retry_queue, save_path, status)
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    next_request = None
                if status.num_tasks_in_progress == 0:
                    break
                await asyncio.sleep(SECONDS_TO_SLEEP_EACH_LOOP)
                paused = time.time() - status.time_of_last_rate_limit_error
                if paused < SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR:
                    await asyncio.sleep(SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR - paused)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cookbook-style baseline against the mock")
    parser.add_argument("--url", required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--rpm", type=float, required=True, help="max requests per minute")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--attempts", type=int, default=5)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    status = asyncio.run(
        process(args.file, args.output, args.url, args.rpm, args.concurrency, args.attempts)
    )
    wall = time.perf_counter() - began
    result = {"wall": wall, "sent": status.num_tasks_started, "ok": status.num_tasks_succeeded}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
