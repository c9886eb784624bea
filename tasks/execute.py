"""Running one chunk of a batch: route each line, call the provider, and
shape the result lines.

The chunk is the unit of checkpointing: its lines run concurrently (the
upstream client bounds them per provider), and the whole chunk's result is
posted once to the gateway, which writes it and marks the chunk done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from storage.ids import new_http_request_id
from storage.jsonl import iter_chunk_lines
from storage.records import USAGE_COUNTS, ProviderRecord
from tasks.crashpoints import crash_point
from tasks.estimate import input_chars
from tasks.line_journal import ChunkJournal
from tasks.result_lines import result_line
from tasks.routing import UPSTREAM_PATHS, Route, RoutingError, prepare_body, resolve_route
from tasks.upstream import UpstreamClient, log_failed_line
from tasks.usage import Usage, add_into, empty_usage, usage_of

STOP_CODES = {
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request was sent."),
    "expired": ("batch_expired", "The batch expired before this request was sent."),
    "budget_exceeded": (
        "budget_exceeded",
        "The API key's budget was reached before this request was sent.",
    ),
}
DEFAULT_STOP = ("batch_cancelled", "The batch was stopped before this request was sent.")
# A chunk's usage row: the stored counts, plus what budgets and estimates use.
USAGE_ROW_FIELDS = (
    *USAGE_COUNTS,
    "total_tokens",
    "input_chars",
)


@dataclass
class ChunkResult:
    output: bytearray = field(default_factory=bytearray)
    errors: bytearray = field(default_factory=bytearray)
    completed: int = 0
    failed: int = 0
    usage: dict[str, Any] = field(default_factory=empty_usage)
    model: str | None = None
    # Per input line, in input order, outside the OpenAI lines:
    # custom_id, requested model, provider, latency_ms, attempts.
    meta: list[dict[str, Any]] = field(default_factory=list)
    # Usage per (requested model, provider): /admin/usage sums these, budgets
    # price them and estimates learn characters per token from them.
    by_model: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    stopped: int = 0  # lines not sent because the batch was told to stop

    def succeed(
        self,
        line: bytes,
        usage: Usage,
        model: Any = None,
        info: dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
    ) -> None:
        """A line answered 2xx: its result line, the usage of its answer and
        the model that answered (the answer's own body is not kept: a
        chunk's parsed bodies were most of its memory)."""
        self.output += line
        self.completed += 1
        add_into(self.usage, usage)
        if self.model is None and isinstance(model, str):
            self.model = model
        if info is not None:
            self._note(info, usage, request)

    def fail(self, line: bytes, info: dict[str, Any] | None = None) -> None:
        self.errors += line
        self.failed += 1
        if info is not None:
            self._note(info, None)

    def _note(
        self,
        info: dict[str, Any],
        usage: dict[str, Any] | None,
        request: dict[str, Any] | None = None,
    ) -> None:
        self.meta.append(info)
        model = info["model"] if isinstance(info["model"], str) else ""
        key = (model, info["provider"] or "")
        row = self.by_model.get(key)
        if row is None:
            row = self.by_model[key] = dict.fromkeys(USAGE_ROW_FIELDS, 0)
        row["lines"] += 1
        if usage is None:
            row["failed"] += 1
            return
        row["succeeded"] += 1
        row["input_tokens"] += usage["input_tokens"]
        row["output_tokens"] += usage["output_tokens"]
        row["cached_tokens"] += usage["input_tokens_details"]["cached_tokens"]
        row["reasoning_tokens"] += usage["output_tokens_details"]["reasoning_tokens"]
        row["total_tokens"] += usage["total_tokens"]
        if request is not None:  # text of answered lines only: it pairs with their tokens
            row["input_chars"] += input_chars(request)

    def usage_rows(self) -> list[dict[str, Any]]:
        return [
            {"model": model, "provider": provider, **row}
            for (model, provider), row in self.by_model.items()
        ]

    def as_post(self) -> dict[str, Any]:
        """The fields of the checkpoint post to the gateway."""
        return {
            "output": bytes(self.output),
            "errors": bytes(self.errors),
            "completed": self.completed,
            "failed": self.failed,
            "usage": self.usage if self.completed else None,
            "model": self.model,
            "meta": self.meta,
            "usage_rows": self.usage_rows(),
        }


def encode_body(body: dict[str, Any]) -> bytes:
    """A request body as JSON bytes of exactly its size. orjson sizes its
    buffer for the worst case (about eight times a long string) and hands it
    back as is; a body lives through its request and any retries, so it is
    copied down to size (measured: 32 KB held for a 4 KB line)."""
    return bytes(memoryview(orjson.dumps(body)))


def parse_chunk(data: bytes) -> list[dict[str, Any]]:
    """The request lines of a chunk's byte range (validated already)."""
    return [orjson.loads(raw) for _, raw in iter_chunk_lines(data)]


def route_lines(
    lines: Sequence[dict[str, Any]], providers: Sequence[ProviderRecord]
) -> list[Route | RoutingError]:
    """Each line's route, resolved once per distinct model of the chunk."""
    known: dict[str, Route | RoutingError] = {}
    routes: list[Route | RoutingError] = []
    for line in lines:
        model = line["body"].get("model")
        if not isinstance(model, str):
            routes.append(resolve_route(model, providers))
            continue
        route = known.get(model)
        if route is None:
            route = known[model] = resolve_route(model, providers)
        routes.append(route)
    return routes


def routing_error_line(custom_id: str, route: RoutingError) -> bytes:
    """The error line of a line batchgate answers itself (no provider to send
    it to). It carries batchgate's own `req_…` id, as a provider's answer
    would carry the provider's, and that id is logged."""
    request_id = new_http_request_id()
    log_failed_line(None, custom_id, request_id, None, route.status, route.code, 0)
    response = {"status_code": route.status, "request_id": request_id, "body": route.error_body()}
    return result_line(custom_id, response)


async def execute_lines(
    lines: Sequence[dict[str, Any]],
    endpoint: str,
    providers: Sequence[ProviderRecord],
    client: UpstreamClient,
    stop_reason: Callable[[], str | None],
    gate: Callable[[], Awaitable[None]] | None = None,
    journal: ChunkJournal | None = None,
    priority: int = 0,
) -> ChunkResult:
    """Run every line; each ends as exactly one output or error line, in input order.

    Each provider's lines are worked off by as many workers as it may have
    requests in flight (its `max_concurrency`), not by a task per line: a
    thousand-line chunk made a thousand tasks, most of them parked in the
    limiter, and that bookkeeping was about a third of a run's own CPU per
    line at 0 ms provider latency. A queue per provider keeps a slow
    provider's lines from holding up another's.

    `gate` is awaited before every attempt: it holds a paused batch's
    requests until it is resumed (or told to stop). With a `journal`
    (tasks/line_journal.py) the lines an earlier, killed run of this chunk
    finished are taken from it instead of being sent again, and each line
    that ends (not one stopped) is written to it as it ends. `priority` is
    the chunk's place among the chunks in flight (its index): the client
    serves lower values first (tasks/aimd.py says why)."""
    path = UPSTREAM_PATHS[endpoint]
    results: list[bytes] = [b""] * len(lines)
    # per answered line: its usage and the model that answered (not the body)
    usages: list[Usage | None] = [None] * len(lines)
    models: list[Any] = [None] * len(lines)
    # per line: provider name, latency of the last attempt (ms), attempts
    sent: list[tuple[str | None, float | None, int]] = [(None, None, 0)] * len(lines)
    done = journal.replay() if journal is not None else {}
    for index, old in done.items():
        results[index] = old.line
        sent[index] = (old.provider, old.latency_ms, old.attempts)
        if old.ok:
            body = old.body()
            usages[index], models[index] = usage_of(body), body.get("model")
    queues: dict[str, tuple[ProviderRecord, list[tuple[int, Route]]]] = {}
    for index, route in enumerate(route_lines(lines, providers)):
        if index in done:
            continue
        if isinstance(route, RoutingError):
            results[index] = routing_error_line(lines[index]["custom_id"], route)
        else:
            queues.setdefault(route.provider.name, (route.provider, []))[1].append((index, route))

    stopped = 0

    def stopped_line(custom_id: str) -> bytes:
        nonlocal stopped
        stopped += 1
        code, message = STOP_CODES.get(stop_reason() or "", DEFAULT_STOP)
        return result_line(custom_id, None, code=code, message=message)

    def should_stop() -> bool:
        return stop_reason() is not None

    # What `send` takes beyond the line (a client need not know a knob left at its default).
    extra: dict[str, Any] = {}
    if gate is not None:
        extra["gate"] = gate
    if priority:
        extra["priority"] = priority

    async def one(index: int, route: Route) -> None:
        """Send line `index`; keep its result line, and its usage if it succeeded."""
        custom_id = lines[index]["custom_id"]
        provider = route.provider
        if stop_reason():
            results[index] = stopped_line(custom_id)
            sent[index] = (provider.name, None, 0)
            return
        body, upstream_model = lines[index]["body"], route.upstream_model
        result = await client.send(
            provider,
            path,
            lambda: encode_body(prepare_body(body, upstream_model)),
            custom_id=custom_id,
            should_stop=should_stop,
            **extra,
        )
        crash_point("execute:after_response")
        sent[index] = (provider.name, result.latency_ms, result.attempts)
        if result.status_code is None:
            if result.error_code == "stopped":
                results[index] = stopped_line(custom_id)
                return  # not journaled: a resumed run sends it
            line = results[index] = result_line(
                custom_id, None, code=result.error_code, message=result.error_message
            )
        else:
            response = {
                "status_code": result.status_code,
                "request_id": result.request_id,
                "body": result.body,
            }
            line = results[index] = result_line(custom_id, response)
            answer = result.body
            if result.ok and answer is not None:
                usages[index] = result.usage if result.usage is not None else usage_of(answer)
                models[index] = answer.get("model")
        if journal is not None:
            journal.record(
                index,
                line,
                ok=result.ok,
                provider=provider.name,
                latency_ms=result.latency_ms,
                attempts=result.attempts,
            )

    async def worker(pending: Iterator[tuple[int, Route]]) -> None:
        for index, route in pending:  # one shared iterator: each line goes to one worker
            await one(index, route)

    await asyncio.gather(
        *(
            worker(pending)
            for provider, queue in queues.values()
            for pending in [iter(queue)]
            for _ in range(min(len(queue), max(1, provider.max_concurrency)))
        )
    )
    outcome = ChunkResult(stopped=stopped)
    for index, (request, usage, model, (provider, latency_ms, attempts)) in enumerate(
        zip(lines, usages, models, sent, strict=True)
    ):
        line, results[index] = results[index], b""  # held once: in the output, not here too
        info = {
            "custom_id": request["custom_id"],
            "model": request["body"].get("model"),
            "provider": provider,
            "latency_ms": latency_ms,
            "attempts": attempts,
        }
        if usage is not None:
            outcome.succeed(line, usage, model, info, request["body"])
        else:
            outcome.fail(line, info)
    return outcome
