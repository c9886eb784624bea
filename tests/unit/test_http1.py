"""The provider HTTP client (tasks/http1.py) against scripted servers on
127.0.0.1: what a provider may answer, and what the client must not do."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tasks.http1 import HTTPClientError, InvalidRequestError, Pool, parse_origin
from tasks.upstream import header_safe

Answer = Callable[[bytes], Awaitable[bytes | None]]


class Server:
    """Reads each request whole; `answer` gives the bytes to send back (None:
    close without answering). Counts connections and keeps the requests."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = await self.answer(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


def fixed(payload: bytes, extra: bytes = b"", status: bytes = b"200 OK") -> Answer:
    async def answer(request: bytes) -> bytes:
        head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n" + extra
        return head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload

    return answer


def constant(data: bytes | None) -> Answer:
    async def answer(request: bytes) -> bytes | None:
        return data

    return answer


async def test_connections_are_kept_alive_and_reused_by_concurrent_requests() -> None:
    server = Server(fixed(b'{"ok": true}', b"x-request-id: req_up\r\n"))
    pool = Pool()
    async with server as url:
        for _ in range(3):
            answers = await asyncio.gather(
                *(pool.post(url, {"X-N": str(n)}, b'{"n": 1}') for n in range(20))
            )
        await pool.close()
    assert all(a.status == 200 and a.body == b'{"ok": true}' for a in answers)
    assert answers[0].headers["x-request-id"] == "req_up"
    assert len(server.requests) == 60
    assert server.connections <= 20  # 60 requests, at most one connection per one in flight
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nX-N: " in first
    assert first.endswith(b'\r\nContent-Length: 8\r\n\r\n{"n": 1}')


async def test_chunked_gzip_and_close_delimited_answers_are_read_whole() -> None:
    body = b'{"text": "' + b"a" * 5000 + b'"}'
    packed = gzip.compress(body)
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(packed[i : i + 1000]), packed[i : i + 1000])
        for i in range(0, len(packed), 1000)
    )
    pool = Pool()
    async with Server(
        constant(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked
            + b"0\r\n\r\n"
        )
    ) as url:
        assert (await pool.post(url, {}, b"{}")).body == body
    async with Server(constant(b"HTTP/1.0 200 OK\r\n\r\n" + body), close_after=True) as url:
        assert (await pool.post(url, {}, b"{}")).body == body
    await pool.close()


async def test_no_answer_a_cut_answer_or_garbage_is_an_oserror() -> None:
    pool = Pool()
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}"
    for answer, close_after in ((None, False), (cut, True), (b"SMTP ready\r\n\r\n", False)):
        async with Server(constant(answer), close_after=close_after) as url:
            with pytest.raises(HTTPClientError) as caught:
                await pool.post(url, {}, b"{}")
        assert isinstance(caught.value, OSError)
    with pytest.raises(OSError):  # nothing listens there
        await pool.post("http://127.0.0.1:9/v1/x", {}, b"{}")
    await pool.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    server = Server(fixed(b"{}"), close_after=True)  # closes without saying so
    pool = Pool()
    async with server as url:
        for _ in range(3):
            assert (await pool.post(url, {}, b"{}")).status == 200
            await asyncio.sleep(0.05)  # the close reaches the client
    await pool.close()
    assert server.connections == 3


async def test_a_cancelled_request_closes_its_connection_and_the_next_one_works() -> None:
    async def slow_first(request: bytes) -> bytes:
        if len(server.requests) == 1:
            await asyncio.sleep(5)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    server = Server(slow_first)
    pool = Pool()
    async with server as url:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.post(url, {}, b"{}")
        assert (await pool.post(url, {}, b"{}")).body == b"{}"
    await pool.close()
    assert server.connections == 2


async def test_redirects_are_answers_not_followed() -> None:
    server = Server(fixed(b"", b"Location: https://elsewhere/\r\n", b"301 Moved Permanently"))
    pool = Pool()
    async with server as url:
        answer = await pool.post(url, {}, b"{}")
    await pool.close()
    assert answer.status == 301 and len(server.requests) == 1


async def test_what_cannot_be_sent_is_refused_before_anything_is_sent() -> None:
    server = Server(fixed(b"{}"))
    pool = Pool()
    async with server as url:
        for bad in ({"X-Id": "a\r\nX-Evil: 1"}, {"X-Id": "a\nb"}, {"X-\rId": "a"}):
            with pytest.raises(InvalidRequestError):
                await pool.post(url, bad, b"{}")
        line_break = header_safe("line\r\nX-Evil: 1")
        unicode = header_safe("名前-1")
        answer = await pool.post(url, {"X-Batchgate-Custom-Id": line_break}, b"{}")
        assert answer.status == 200
        assert (await pool.post(url, {"X-Batchgate-Custom-Id": unicode}, b"{}")).status == 200
    await pool.close()
    assert len(server.requests) == 2 and b"X-Evil" not in server.requests[0].split(b"\r\n")[-3]
    assert header_safe("plain id #7") == "plain id #7"
    assert line_break == "line%0D%0AX-Evil: 1" and unicode == "%E5%90%8D%E5%89%8D-1"
    for url in ("ftp://h/x", "http:///x", "http://h:99999/x", "http://h/a b"):
        with pytest.raises(InvalidRequestError):
            parse_origin(url)


def test_origins_carry_the_host_header_a_server_expects() -> None:
    assert parse_origin("https://api.example.com/v1/x?api-version=2").head.startswith(
        b"POST /v1/x?api-version=2 HTTP/1.1\r\nHost: api.example.com\r\n"
    )
    assert b"Host: [::1]:8080\r\n" in parse_origin("http://[::1]:8080/v1").head
    assert parse_origin("https://h:443/v1").key == ("https", "h", 443)


def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    server = Server(fixed(b'{"tls": 1}'))
    tcp = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_tls)
    url = f"https://127.0.0.1:{tcp.sockets[0].getsockname()[1]}/v1/embeddings"
    try:
        with pytest.raises(ssl.SSLCertVerificationError):  # not signed by a trusted CA
            await Pool().post(url, {}, b"{}")
        trusting = Pool(tls=ssl.create_default_context(cafile=str(cert)))
        assert (await trusting.post(url, {}, b"{}")).body == b'{"tls": 1}'
        await trusting.close()
    finally:
        tcp.close()


async def test_a_host_is_looked_up_once_for_a_burst_of_new_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks import http1

    lookups: list[str] = []
    real = http1._lookup

    async def counted(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
        lookups.append(host)
        return await real(host, port)

    monkeypatch.setattr(http1, "_lookup", counted)
    server = Server(fixed(b"{}"))
    pool = Pool()
    async with server as url:
        by_name = url.replace("127.0.0.1", "localhost")  # may list ::1 first: it is refused
        answers = await asyncio.gather(*(pool.post(by_name, {}, b"{}") for _ in range(20)))
    await pool.close()
    assert [a.status for a in answers] == [200] * 20 and server.connections == 20
    assert lookups == ["localhost"]
