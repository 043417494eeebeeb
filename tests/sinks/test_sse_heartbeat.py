"""The SSE heartbeat the timer wheel sends (``SseWire.heartbeat``), on a real socket: a ping
reaches the client, a peer that stops reading is reported stalled only once ``write_timeout``
has passed over the high-water mark (times are fed, not waited for), and a peer that has
gone makes the heartbeat fail like any write."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from app.sinks.sse import PING, WRITE_HIGH_WATER, SseWire
from tests.sinks.test_library_internals import GET, raw_client, read_all, site, sse_handler

__all__ = ["site"]  # the fixture, imported for these tests


async def test_heartbeat_writes_a_ping_chunk(site: Any) -> None:
    s = await site(sse_handler)
    sock = await raw_client(s.port, GET)
    try:
        await asyncio.wait_for(s.ready.wait(), 10)
        wire = SseWire(s.seen["resp"], 1000)
        assert wire.heartbeat(0.0, write_timeout=30) is False
        raw = await read_all(sock, PING)
        assert b"%x\r\n%s\r\n" % (len(PING), PING) in raw
    finally:
        sock.close()


async def test_a_peer_that_stops_reading_is_stalled_only_after_write_timeout(site: Any) -> None:
    s = await site(sse_handler)
    sock = await raw_client(s.port, GET, rcvbuf=4096)
    try:
        await asyncio.wait_for(s.ready.wait(), 10)
        resp = s.seen["resp"]
        transport = resp._req.transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                      8192)
        wire = SseWire(resp, 1000)
        wire.write_nowait(b"x" * (1024 * 1024))  # the client reads none of it
        assert transport.get_write_buffer_size() > WRITE_HIGH_WATER
        assert wire.heartbeat(100.0, write_timeout=5) is False  # first seen stalled
        assert wire.heartbeat(104.0, write_timeout=5) is False  # not for 5 s yet
        assert not wire.timed_out()
        assert wire.heartbeat(105.0, write_timeout=5) is True
        assert wire.timed_out()
    finally:
        sock.close()


async def test_heartbeat_to_a_peer_that_has_gone_raises(site: Any) -> None:
    s = await site(sse_handler)
    sock = await raw_client(s.port, GET)
    await asyncio.wait_for(s.ready.wait(), 10)
    resp = s.seen["resp"]
    wire = SseWire(resp, 1000)
    sock.close()
    transport = resp._req.transport
    async with asyncio.timeout(10):
        while transport is not None and not transport.is_closing():
            await asyncio.sleep(0.01)
    with pytest.raises(ConnectionError):
        wire.heartbeat(0.0, write_timeout=30)
