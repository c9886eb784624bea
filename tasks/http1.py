"""A lean HTTP/1.1 client for provider requests: keep-alive connections on
asyncio protocols, responses parsed by httptools (llhttp, the parser
uvicorn uses).

Why not aiohttp, which this replaced: at 0 ms provider latency the engine is
bound by its own process's CPU, and aiohttp spent ~180-240 us of it per
request on building request and response objects, cookie, URL and header
handling the engine never uses; this client spends ~100-110 us on the same
request (`python -m bench.http_clients`, 'Provider HTTP client' in
docs/benchmarks.md). It
does only what a provider request needs: POST a body with a fixed set of
headers, read the whole answer, keep the connection for the next request.

What it does not do, on purpose:
- Redirects are not followed: a provider answering 3xx gets that status on
  the line (a POST that aiohttp followed as a GET hid a wrong base URL).
- No proxies (the engine's session never read the environment's either)
  and no cookies.
- A request is never re-sent by the client itself, not even on a kept-alive
  connection the server had just closed: whether a POST may go again is the
  retry policy's call (tasks/upstream.py), and the error says what happened.

Deadlines are the caller's (tasks/deadlines.py cancels the task): a request
cancelled half-way closes its connection, which is then in an unknown state.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools

USER_AGENT = "batchgate"
# Idle connections older than this are closed instead of reused: servers drop
# idle keep-alive connections (often after 5-75 s), and one dropped just as a
# request goes out costs that request an attempt.
KEEPALIVE_SECONDS = 15.0
# How long a host's looked-up addresses are used before a new lookup.
DNS_SECONDS = 60.0


class HTTPClientError(OSError):
    """The request got no complete HTTP answer (connection refused, reset or
    closed early, a malformed response). An `OSError`, as socket errors are."""


class InvalidRequestError(ValueError):
    """The URL or a header cannot be sent (not http/https, no host, a newline
    in a header value); sending it again would not help."""


@dataclass(slots=True)
class Response:
    status: int
    # Lower-case names (the last value of a repeated header) for lookups, and
    # the pairs as they arrived, for one-pass scans.
    headers: dict[str, str]
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a URL's requests go, and the request line and fixed headers
    they all start with (built once per URL)."""

    key: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    head: bytes


def parse_origin(url: str) -> Origin:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequestError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequestError(f"invalid URL {url!r}: the scheme must be http or https")
    host = parts.hostname
    if not host:
        raise InvalidRequestError(f"invalid URL {url!r}: no host")
    tls = parts.scheme == "https"
    port = port or (443 if tls else 80)
    shown = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        shown += f":{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n"):
        raise InvalidRequestError(f"invalid URL {url!r}: whitespace in the path")
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {shown}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
    ).encode("ascii", "strict")
    return Origin((parts.scheme, host, port), host, port, tls, head)


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The request's own header lines. Values are sent as UTF-8; a value with
    a line break would end the header block early, so it is refused."""
    text = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise InvalidRequestError("a header name or value holds a line break")
    return text.encode("utf-8")


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """The body without its content-encoding (gzip or deflate, as asked for)."""
    if not encoding or encoding == "identity" or not body:
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            return zlib.decompress(body, 47)  # gzip or zlib framing, found from the header
        except zlib.error:
            if encoding == "deflate":
                try:
                    return zlib.decompress(body, -15)  # raw deflate, as some servers send it
                except zlib.error:
                    pass
        raise HTTPClientError(f"the response's {encoding} body could not be decoded")
    raise HTTPClientError(f"the response has an encoding that was not asked for: {encoding}")


class _Connection(asyncio.Protocol):
    """One kept-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.keep_alive = False

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection cannot be trusted
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPClientError(f"malformed response from the provider: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost finishes the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.status and exc is None and not self._framed():
            # An answer delimited by the close (no length, not chunked): it is whole.
            self.keep_alive = False
            waiter.set_result(None)
            return
        what = "reset" if exc is not None else "closed"
        self._fail(HTTPClientError(f"the provider {what} the connection before answering"))

    # -- httptools callbacks ----------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # an interim 1xx answer: the real one follows
            self._reset()
            return
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- helpers ------------------------------------------------------------------

    def _framed(self) -> bool:
        """Whether the answer said where it ends (a length or chunked encoding)."""
        return any(
            name.lower() in (b"content-length", b"transfer-encoding")
            for name, _ in self.raw_headers
        )

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def response(self) -> Response:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in self.raw_headers
        }
        body = b"".join(self.parts) if len(self.parts) != 1 else self.parts[0]
        body = decode_body(body, headers.get("content-encoding"))
        return Response(self.status, headers, self.raw_headers, body)

    async def exchange(self, request: bytes) -> Response:
        assert self.transport is not None
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(request)
            await self.waiter
        finally:
            self.waiter = None
        return self.response()


async def _lookup(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, address) for family, _, _, _, address in infos]


@dataclass
class Pool:
    """Kept-alive connections to every origin this process sends to.

    `max_connections` bounds the connections open at once (the providers'
    limiters bound the requests in flight well below it); a request beyond
    it waits for one to be free."""

    max_connections: int = 1024
    keepalive_seconds: float = KEEPALIVE_SECONDS
    # None: a default context over the system's trusted CAs, made on first use.
    tls: ssl.SSLContext | None = None
    _idle: dict[tuple[str, str, int], list[_Connection]] = field(init=False, default_factory=dict)
    _origins: dict[str, Origin] = field(init=False, default_factory=dict)
    _dns: dict[tuple[str, int], tuple[float, asyncio.Future[Any]]] = field(
        init=False, default_factory=dict
    )
    _slots: asyncio.Semaphore | None = field(init=False, default=None)
    _closed: bool = field(init=False, default=False)

    def origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            origin = parse_origin(url)
            if len(self._origins) < 4096:  # base URLs are few; a stray flood is not kept
                self._origins[url] = origin
        return origin

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Response:
        """POST `body` to `url` and read the whole answer."""
        origin = self.origin(url)
        request = b"".join(
            (origin.head, encode_headers(headers), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            connection = self._take(origin) or await self._connect(origin)
            try:
                response = await connection.exchange(request)
            except BaseException:
                connection.abort()  # cancelled or failed half-way: its state is unknown
                raise
            if connection.keep_alive and not connection.closed and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin.key, []).append(connection)
            else:
                connection.abort()
            return response

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin.key)
        if not idle:
            return None
        oldest_usable = time.monotonic() - self.keepalive_seconds
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if not connection.closed and connection.idle_since >= oldest_usable:
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {}
        if origin.tls:
            if self.tls is None:
                self.tls = ssl.create_default_context()
            options = {"ssl": self.tls, "server_hostname": origin.host}
        # Refused, unresolvable, a certificate not trusted: all OSErrors.
        failure: OSError | None = None
        for family, address in await self._addresses(origin):
            try:
                _, connection = await loop.create_connection(
                    _Connection, address[0], address[1], family=family, **options
                )
                return connection
            except OSError as exc:  # that address does not answer: the next one may
                failure = exc
        raise failure or HTTPClientError(f"{origin.host} has no address")

    async def _addresses(self, origin: Origin) -> list[tuple[int, tuple[Any, ...]]]:
        """The origin's addresses, looked up once per `DNS_SECONDS` by one
        lookup that concurrent connects share: the first burst of a batch
        opens a connection per request in flight, and a lookup each would
        queue them all on the loop's small thread pool."""
        key = (origin.host, origin.port)
        cached = self._dns.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return await asyncio.shield(cached[1])
        lookup = asyncio.ensure_future(_lookup(origin.host, origin.port))
        self._dns[key] = (time.monotonic() + DNS_SECONDS, lookup)
        try:
            return await asyncio.shield(lookup)
        except OSError:
            self._dns.pop(key, None)  # a failed lookup is tried again by the next connect
            raise

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()
