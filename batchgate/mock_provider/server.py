"""A fake OpenAI-compatible provider, for dry runs, benchmarks and tests.

`batchgate mock-upstream` serves it; `create_mock_app` builds it for
in-process use and `serve_mock_in_thread` runs it on a free local port.
Answers are deterministic (token counts derive from the input length, random
failures come from a seeded generator), so a test can predict them.

Knobs (flags, `MockConfig` fields, and `POST /config` at run time): latency
with jitter, a rate of 500s, a rate of 429s with `Retry-After`, a token-bucket
request-rate limit (which also sends OpenAI's `x-ratelimit-*-requests`
headers on every answer), and an optional API key. Moderations flag any input
containing "flag-me". A body with `"stream": true` is answered with
server-sent events, so a test can prove the gateway never asks for them.

Every answer of a model route carries an `x-request-id` (`req_mock…`), as
OpenAI's do, except a `missing_request_id_rate` share of them, as from the
many OpenAI-compatible servers that send none.

Observability for tests: `GET /stats` counts requests per route, 429s and
5xx sent, requests in flight (and the most ever), and requests per
`X-Batchgate-Custom-Id` header - all attempts, and those answered 2xx - so a
test can prove that no line was sent twice - and per client address (`peers`:
which test host sent them, bench/scale.py). `GET /stats/client-request-ids`
lists, per custom id, the `X-Client-Request-Id` of each attempt in arrival
order (apart from `/stats`, which benchmarks poll often). `POST /stats/reset`
clears them all; `POST /stats/reset-max-in-flight` starts the in-flight
maximum over from the requests in flight now.

The hot path is kept cheap (orjson, no per-request logging, no access log):
it is benchmarked at thousands of requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import math
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from batchgate.mock_provider.config import (  # noqa: F401 (re-exported: tests and bench build mocks from here)
    FLOAT_KNOBS,
    SHARES,
    MockConfig,
    add_arguments,
    config_from_args,
)
from gateway.errors import EXCEPTION_HANDLERS, envelope

EMBEDDING_DIMENSIONS = 8
_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


_RUNTIME_FIELDS = frozenset(
    f.name for f in dataclasses.fields(MockConfig) if f.name not in ("host", "port")
)


# -- deterministic content ------------------------------------------------------


def _text_of(value: Any) -> str:
    """All text inside a request input (strings, message lists, content parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        parts = [value[k] for k in ("content", "text", "input_text") if k in value]
        return " ".join(_text_of(p) for p in parts)
    if isinstance(value, int):
        return "tok"  # a token id counts as one token
    return ""


def count_tokens(text: str) -> int:
    """The mock's tokenizer: one token per four characters, at least one."""
    return max(1, math.ceil(len(text) / 4))


def _inputs(value: Any) -> list[Any]:
    """`input`/`prompt` as a list of items: a string or one token list is one item."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


def _embedding(text: str, dimensions: int) -> list[float]:
    """Small floats derived from the text, the same on every call."""
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=64).digest()
        counter += 1
    return [round((b - 127.5) / 127.5, 6) for b in digest[:dimensions]]


def _reply(model: str, prompt_tokens: int) -> str:
    return f"Mock reply from {model} to a prompt of {prompt_tokens} tokens."


def _reasoning_tokens(model: str, body: dict[str, Any], completion_tokens: int) -> int:
    reasons = model.startswith(_REASONING_PREFIXES) or "reasoning_effort" in body
    return completion_tokens // 2 if reasons else 0


# -- the app --------------------------------------------------------------------


class MockState:
    """Counters and the token bucket; single event loop, so no locks."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.ids = itertools.count(1)
        self.reset()
        self._tokens = 0.0
        self._refilled = time.monotonic()
        self._bucket_rate: float | None = None

    def reset(self) -> None:
        self.total = 0
        self.routes: Counter[str] = Counter()
        self.sent_429 = 0
        self.sent_5xx = 0
        self.sent_reset = 0
        self.sent_hang = 0
        self.sent_non_json = 0
        self.streamed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.custom_ids: Counter[str] = Counter()
        self.custom_ids_ok: Counter[str] = Counter()
        # Model requests per client address: which test host sent them
        # (the scale-out harness gives each host its own address).
        self.peers: Counter[str] = Counter()
        self.client_request_ids: dict[str, list[str]] = {}

    def take_token(self) -> float | None:
        """None if the rate limit lets this request through, else seconds to wait."""
        rate = self.config.rps_limit
        if not rate:
            return None
        now = time.monotonic()
        capacity = max(1.0, rate)
        if self._bucket_rate != rate:
            self._bucket_rate, self._tokens, self._refilled = rate, capacity, now
        self._tokens = min(capacity, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / rate

    def rate_headers(self) -> dict[str, str]:
        """The budget left under `rps_limit`, as OpenAI's `x-ratelimit-*-requests` say it.

        `limit` is the bucket size, `remaining` whole tokens left, `reset` the
        time until the bucket is full again ("20ms", "1.5s"). Empty without a limit.
        """
        rate = self.config.rps_limit
        if not rate or self._bucket_rate != rate:
            return {}
        capacity = max(1.0, rate)
        return {
            "x-ratelimit-limit-requests": str(int(capacity)),
            "x-ratelimit-remaining-requests": str(int(self._tokens)),
            "x-ratelimit-reset-requests": format_duration((capacity - self._tokens) / rate),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "routes": dict(self.routes),
            "status_429": self.sent_429,
            "status_5xx": self.sent_5xx,
            "resets": self.sent_reset,
            "hangs": self.sent_hang,
            "non_json": self.sent_non_json,
            "streamed": self.streamed,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "custom_ids": dict(self.custom_ids),
            "custom_ids_ok": dict(self.custom_ids_ok),
            "duplicates_ok": sorted(k for k, n in self.custom_ids_ok.items() if n > 1),
            "peers": dict(self.peers),
        }


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, headers=headers, media_type="application/json"
    )


def _error(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return _json(envelope(status, message, param, code), status, headers)


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers write it: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def _retry_headers(seconds: float) -> dict[str, str]:
    """`Retry-After` in whole seconds (as HTTP says) plus the exact `retry-after-ms`."""
    return {"Retry-After": str(math.ceil(seconds)), "retry-after-ms": str(int(seconds * 1000))}


Builder = Callable[[MockState, dict[str, Any], str], dict[str, Any]]


def _chat(state: MockState, body: dict[str, Any], model: str) -> dict[str, Any]:
    prompt_tokens = count_tokens(_text_of(body.get("messages", [])))
    content = _reply(model, prompt_tokens)
    completion_tokens = count_tokens(content)
    return {
        "id": f"chatcmpl-mock{next(state.ids):010d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": prompt_tokens // 4},
            "completion_tokens_details": {
                "reasoning_tokens": _reasoning_tokens(model, body, completion_tokens)
            },
        },
        "system_fingerprint": "fp_mock",
    }


def _completion(state: MockState, body: dict[str, Any], model: str) -> dict[str, Any]:
    prompts = _inputs(body.get("prompt", ""))
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, prompt in enumerate(prompts):
        tokens = count_tokens(_text_of(prompt))
        text = _reply(model, tokens)
        prompt_tokens += tokens
        completion_tokens += count_tokens(text)
        choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": "stop"})
    return {
        "id": f"cmpl-mock{next(state.ids):010d}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _embeddings(state: MockState, body: dict[str, Any], model: str) -> dict[str, Any]:
    dimensions = body.get("dimensions")
    if not isinstance(dimensions, int) or not 1 <= dimensions <= 4096:
        dimensions = EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data, prompt_tokens = [], 0
    for index, item in enumerate(_inputs(body.get("input", ""))):
        text = _text_of(item)
        prompt_tokens += count_tokens(text)
        vector: Any = _embedding(text, dimensions)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": vector, "index": index})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _responses(state: MockState, body: dict[str, Any], model: str) -> dict[str, Any]:
    text_in = _text_of(body.get("input", "")) + " " + _text_of(body.get("instructions", ""))
    input_tokens = count_tokens(text_in.strip())
    content = _reply(model, input_tokens)
    output_tokens = count_tokens(content)
    n = next(state.ids)
    return {
        "id": f"resp_mock{n:010d}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_mock{n:010d}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": content, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": input_tokens // 4},
            "output_tokens": output_tokens,
            "output_tokens_details": {
                "reasoning_tokens": _reasoning_tokens(model, body, output_tokens)
            },
            "total_tokens": input_tokens + output_tokens,
        },
    }


def _moderations(state: MockState, body: dict[str, Any], model: str) -> dict[str, Any]:
    results = []
    for item in _inputs(body.get("input", "")):
        flagged = "flag-me" in _text_of(item)
        results.append(
            {
                "flagged": flagged,
                "categories": {c: flagged and c == "violence" for c in _MODERATION_CATEGORIES},
                "category_scores": {
                    c: (0.99 if flagged and c == "violence" else 0.0001)
                    for c in _MODERATION_CATEGORIES
                },
            }
        )
    return {"id": f"modr-mock{next(state.ids):010d}", "model": model, "results": results}


def _sse(payload: dict[str, Any], chat: bool) -> Iterator[bytes]:
    """The answer as server-sent events: what the gateway must never ask for."""
    if chat:
        choice = payload["choices"][0]
        base = {k: payload[k] for k in ("id", "created", "model")}
        base["object"] = "chat.completion.chunk"
        for delta, finish in (
            ({"role": "assistant", "content": ""}, None),
            ({"content": choice["message"]["content"]}, None),
            ({}, "stop"),
        ):
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    else:
        yield b"data: " + orjson.dumps(payload) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _model_route(
    state: MockState, builder: Builder, *, model_required: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state.total += 1
        state.routes[request.url.path] += 1
        state.in_flight += 1
        if state.in_flight > state.max_in_flight:
            state.max_in_flight = state.in_flight
        try:
            response = await _answer(state, builder, model_required, request)
        finally:
            state.in_flight -= 1
        if not _draw(state, state.config.missing_request_id_rate):
            response.headers["x-request-id"] = f"req_mock{next(state.ids):010d}"
        return response

    return endpoint


async def _answer(
    state: MockState, builder: Builder, model_required: bool, request: Request
) -> Response:
    """One model request, in the order a real provider checks things."""
    config = state.config
    headers = request.headers
    custom_id = headers.get("x-batchgate-custom-id")
    if custom_id is not None:
        state.custom_ids[custom_id] += 1
    if request.client is not None:
        state.peers[request.client.host] += 1
    client_request_id = headers.get("x-client-request-id")
    if client_request_id is not None:
        state.client_request_ids.setdefault(custom_id or "", []).append(client_request_id)

    if config.api_key and headers.get("authorization") != f"Bearer {config.api_key}":
        return _error(401, "Incorrect API key provided.", "invalid_api_key")
    wait = state.take_token()
    budget = state.rate_headers()
    if wait is not None:
        state.sent_429 += 1
        return _error(
            429,
            "Rate limit reached (requests per second).",
            "rate_limit_exceeded",
            headers={**_retry_headers(wait), **budget},
        )
    if config.rate_429 and state.rng.random() < config.rate_429:
        state.sent_429 += 1
        return _error(
            429,
            "Rate limit reached.",
            "rate_limit_exceeded",
            headers={**_retry_headers(config.retry_after), **budget},
        )

    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        if model_required:
            return _error(
                400, "you must provide a model parameter", "missing_required_parameter", "model"
            )
        model = "omni-moderation-latest"

    delay = config.latency_ms
    if config.latency_jitter_ms:
        delay += state.rng.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
    if delay > 0:
        await asyncio.sleep(delay / 1000)

    if config.failure_rate and state.rng.random() < config.failure_rate:
        state.sent_5xx += 1
        return _error(
            500,
            "The server had an error while processing your request.",
            "server_error",
            headers=budget,
        )
    if _draw(state, config.rate_503):
        state.sent_5xx += 1
        return _error(
            503,
            "The engine is currently overloaded, please try again later.",
            "server_overloaded",
            headers=budget,
        )
    fault = await _transport_fault(state, request)
    if fault is not None:
        return fault

    payload = builder(state, body, model)
    if custom_id is not None:
        state.custom_ids_ok[custom_id] += 1
    if body.get("stream") is True:
        state.streamed += 1
        return StreamingResponse(
            _sse(payload, builder is _chat), headers=budget, media_type="text/event-stream"
        )
    return _json(payload, headers=budget)


class _ResetResponse(Response):
    """Starts a response, then fails: uvicorn closes the connection mid-answer,
    which the client sees as a dropped connection (no status it can use)."""

    def __init__(self) -> None:
        super().__init__(status_code=200, headers={"content-length": "64"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        raise ConnectionResetError("mock upstream: connection reset on purpose")


def _draw(state: MockState, rate: float) -> bool:
    """A seeded coin flip; no draw at all when the rate is 0 (keeps old sequences)."""
    return bool(rate) and state.rng.random() < rate


async def _transport_fault(state: MockState, request: Request) -> Response | None:
    """The faults a real network and a flaky provider add: reset, hang, non-JSON."""
    config = state.config
    if _draw(state, config.reset_rate):
        state.sent_reset += 1
        return _ResetResponse()
    if _draw(state, config.hang_rate):
        state.sent_hang += 1
        deadline = time.monotonic() + config.hang_seconds
        while time.monotonic() < deadline:  # stop early once the client gave up
            await asyncio.sleep(0.1)
            if await request.is_disconnected():
                break
        return _error(504, "The mock hung on purpose.", "timeout")
    if _draw(state, config.non_json_rate):
        state.sent_non_json += 1
        return Response(b"<html>502 Bad Gateway (not JSON)</html>", 200, media_type="text/plain")
    return None


def create_mock_app(config: MockConfig | None = None) -> Starlette:
    """The fake provider as an ASGI app; `app.state.mock` holds its counters."""
    state = MockState(dataclasses.replace(config) if config else MockConfig())

    async def models(request: Request) -> Response:
        config = state.config
        if config.api_key and request.headers.get("authorization") != f"Bearer {config.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        names = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "omni-moderation-latest")
        return _json(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "batchgate-mock"}
                    for n in names
                ],
            }
        )

    async def stats(request: Request) -> Response:
        return _json(state.stats())

    async def client_request_ids(request: Request) -> Response:
        return _json(state.client_request_ids)

    async def reset(request: Request) -> Response:
        state.reset()
        return _json(state.stats())

    async def reset_max_in_flight(request: Request) -> Response:
        """Start the in-flight maximum over from the requests in flight now,
        so a test can watch a concurrency change take effect."""
        state.max_in_flight = state.in_flight
        return _json({"in_flight": state.in_flight, "max_in_flight": state.max_in_flight})

    async def configure(request: Request) -> Response:
        try:
            changes = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(changes, dict):
            return _error(400, "The request body must be a JSON object.")
        unknown = sorted(set(changes) - _RUNTIME_FIELDS)
        if unknown:
            return _error(400, f"Unknown config fields: {', '.join(unknown)}.")
        state.config = dataclasses.replace(state.config, **changes)
        if "seed" in changes:
            state.rng = random.Random(changes["seed"])
        return _json(dataclasses.asdict(state.config))

    routes = [
        Route("/v1/chat/completions", _model_route(state, _chat), methods=["POST"]),
        Route("/v1/completions", _model_route(state, _completion), methods=["POST"]),
        Route("/v1/embeddings", _model_route(state, _embeddings), methods=["POST"]),
        Route("/v1/responses", _model_route(state, _responses), methods=["POST"]),
        Route(
            "/v1/moderations",
            _model_route(state, _moderations, model_required=False),
            methods=["POST"],
        ),
        Route("/v1/models", models, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/stats/client-request-ids", client_request_ids, methods=["GET"]),
        Route("/stats/reset", reset, methods=["POST"]),
        Route("/stats/reset-max-in-flight", reset_max_in_flight, methods=["POST"]),
        Route("/config", configure, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.state.mock = state
    return app


# -- running it -------------------------------------------------------------------


def _free_socket(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@contextlib.contextmanager
def serve_mock_in_thread(config: MockConfig | None = None) -> Iterator[str]:
    """Run the mock under uvicorn in a background thread; yield its base URL ("…/v1").

    It listens on a port the OS picks (`config.port` is ignored), so tests and
    benchmarks never collide. Leaving the block stops the server.
    """
    import uvicorn

    config = config or MockConfig()
    sock = _free_socket(config.host)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_mock_app(config), log_level="warning", access_log=False, lifespan="off"
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="mock-upstream", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("mock upstream did not start")
            time.sleep(0.01)
        yield f"http://{config.host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def run_mock_upstream(args: argparse.Namespace) -> int:
    """Serve the mock until interrupted."""
    import uvicorn

    config = config_from_args(args)
    print(f"mock upstream on http://{config.host}:{config.port}/v1", flush=True)
    uvicorn.run(
        create_mock_app(config),
        host=config.host,
        port=config.port,
        log_level=getattr(args, "log_level", "info").lower(),
        access_log=False,
        lifespan="off",
    )
    return 0
