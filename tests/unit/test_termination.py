"""SIGTERM ends a flow run under uvloop wherever it lands (flows/termination.py)."""

from __future__ import annotations

import asyncio
import signal

import pytest
import uvloop

from flows.termination import UvloopTermination, raise_termination


class SignalledWhileReading(asyncio.Protocol):
    """SIGTERM arrives while uvloop runs this connection's read callback."""

    def data_received(self, data: bytes) -> None:
        signal.raise_signal(signal.SIGTERM)


async def serve_one_read() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SignalledWhileReading, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x")
    await asyncio.sleep(3)  # a run that swallowed the signal carries on past this


def test_sigterm_inside_a_protocol_callback_ends_the_loop() -> None:
    """Raised inside `data_received`, uvloop logged the termination as the
    transport's fatal error and the run went on (a CI run's flow run kept
    its batch going 30 s after SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, raise_termination)
    try:
        with (
            pytest.raises(UvloopTermination) as ended,
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        ):
            runner.run(serve_one_read())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ended.value.code == 128 + signal.SIGTERM


def test_sigterm_outside_a_loop_raises_at_once() -> None:
    with pytest.raises(UvloopTermination):
        raise_termination(signal.SIGTERM)
