"""The internal API as flow runs speak it, for the gateway-ceiling benchmark.

Simulated workers must load the gateway exactly as real flow runs do, but
hundreds of them must fit in one load-generator process on one core. So the
requests are taken from `tasks.worker_api.HttpWorkerAPI` itself (captured
once through an `httpx.MockTransport`: same paths, same JSON bodies) and
replayed over one `aiohttp` session, with each run's lease token put in.

A chunk post carries a real chunk result: `execute_lines` run once against
an in-thread `batchgate mock-upstream`, so its output lines, per-line meta,
usage rows and metrics are what a run posts for that many lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson

from harness.workload import ENDPOINT, chat_request
from storage.records import ProviderRecord
from tasks.worker_api import HttpWorkerAPI

# A stand-in of a real token's length (32 hex characters), swapped per run.
PLACEHOLDER = "lease-token-placeholder-00000000"
MARK_BATCH = "batch_capture"


def captured(call: Callable[[HttpWorkerAPI], Any]) -> httpx.Request:
    """The request `call` makes through a real `HttpWorkerAPI`, not sent anywhere."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"{}")

    api = HttpWorkerAPI("http://gateway", "token")
    api.http = httpx.Client(transport=httpx.MockTransport(answer), headers=api.http.headers)
    call(api)
    (request,) = seen
    return request


async def sample_result(lines: int) -> dict[str, Any]:
    """A real chunk result of `lines` chat lines: the keyword arguments of
    `HttpWorkerAPI.record_chunk` as `tasks/drive.py` passes them."""
    from batchgate.mock_provider.server import MockConfig, serve_mock_in_thread
    from tasks.execute import execute_lines
    from tasks.upstream import UpstreamClient

    provider = ProviderRecord(name="openai", base_url="", api_key="sk-mock", is_default=True)
    requests = [chat_request(i) for i in range(lines)]
    with serve_mock_in_thread(MockConfig()) as url:
        provider = ProviderRecord(**{**provider.__dict__, "base_url": url})
        async with UpstreamClient() as client:
            result = await execute_lines(requests, ENDPOINT, [provider], client, lambda: None)
            if result.failed:
                raise RuntimeError(f"sample chunk: {result.failed} of {lines} lines failed")
            return {**result.as_post(), "metrics": client.report_metrics()}


@dataclass(frozen=True)
class ChunkPost:
    """A chunk checkpoint's body with a placeholder lease token."""

    lines: int
    body: bytes

    @classmethod
    def capture(cls, lines: int, result: dict[str, Any]) -> ChunkPost:
        request = captured(lambda api: api.record_chunk(MARK_BATCH, PLACEHOLDER, 0, **result))
        if request.url.path != f"/internal/batches/{MARK_BATCH}/chunks/0":
            raise RuntimeError(f"record_chunk posts to {request.url.path}: update the benchmark")
        if request.content.count(PLACEHOLDER.encode()) != 1:
            raise RuntimeError("the lease token is not where the benchmark expects it")
        return cls(lines, request.content)

    def for_token(self, token: str) -> bytes:
        return self.body.replace(PLACEHOLDER.encode(), token.encode(), 1)


def renew_body(token: str) -> bytes:
    return captured(lambda api: api.renew(MARK_BATCH, token)).content


@dataclass
class Timing:
    """One answered request: when it ended, how long it took, what it moved."""

    ended: float
    seconds: float
    lines: int = 0
    nbytes: int = 0


class Wire:
    """One aiohttp session to the gateway's internal API (and the public API
    for the metadata load), shared by every simulated run."""

    def __init__(self, base_url: str, internal_token: str, *, connections: int = 128) -> None:
        self.base = base_url.rstrip("/")
        self.internal = {"Authorization": f"Bearer {internal_token}"}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=300),
        )
        # Bodies being sent at once: bounds the load generator's memory (a
        # 1,000-line post is ~0.8 MB); the wait counts in the post's latency.
        self.sending = asyncio.Semaphore(64)

    async def close(self) -> None:
        await self.session.close()

    async def _request(
        self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str]
    ) -> bytes:
        async with self.session.request(
            method, self.base + path, data=body, headers=headers
        ) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
            return data

    async def post_chunk(self, batch_id: str, token: str, index: int, post: ChunkPost) -> Timing:
        began = time.perf_counter()
        async with self.sending:
            answer = await self._request(
                "POST",
                f"/internal/batches/{batch_id}/chunks/{index}",
                body=post.for_token(token),
                headers={**self.internal, "content-type": "application/json"},
            )
        status = orjson.loads(answer)["status"]
        if status != "in_progress":
            raise RuntimeError(f"{batch_id} chunk {index}: the gateway answered {status}")
        ended = time.perf_counter()
        return Timing(ended, ended - began, lines=post.lines, nbytes=len(post.body))

    async def chunk_input(self, batch_id: str, index: int) -> Timing:
        began = time.perf_counter()
        path = f"/internal/batches/{batch_id}/chunks/{index}/input"
        data = await self._request("GET", path, headers=self.internal)
        ended = time.perf_counter()
        return Timing(ended, ended - began, nbytes=len(data))

    async def whole_input(self, batch_id: str) -> Timing:
        """The input stream a run's validation reads (`HttpWorkerAPI.input_blocks`)."""
        began = time.perf_counter()
        size = 0
        url = f"{self.base}/internal/batches/{batch_id}/input"
        async with self.session.get(url, headers=self.internal) as response:
            if response.status != 200:
                raise RuntimeError(f"input of {batch_id}: {response.status}")
            async for block in response.content.iter_chunked(1 << 20):
                size += len(block)
        ended = time.perf_counter()
        return Timing(ended, ended - began, nbytes=size)

    async def renew(self, batch_id: str, body: bytes) -> Timing:
        began = time.perf_counter()
        await self._request(
            "POST",
            f"/internal/batches/{batch_id}/renew",
            body=body,
            headers={**self.internal, "content-type": "application/json"},
        )
        ended = time.perf_counter()
        return Timing(ended, ended - began)

    async def public_get(self, path: str, api_key: str) -> Timing:
        began = time.perf_counter()
        data = await self._request("GET", path, headers={"Authorization": f"Bearer {api_key}"})
        ended = time.perf_counter()
        return Timing(ended, ended - began, nbytes=len(data))
