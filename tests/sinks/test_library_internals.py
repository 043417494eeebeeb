"""The private aiohttp / aiohttp-sse internals our sinks rely on, one test each.

They are used for speed (raw writes to the transport, no task per connection) and the
versions are pinned, but a new release may rename or change them. These tests fail first
and loudly when it does: each asserts the internal exists and behaves as the sinks assume.
A tiny aiohttp app on a real socket serves each case; clients are raw sockets so the tests
control reading.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp_sse import EventSourceResponse

from app.sinks.sse import SseResponse
from tests.sinks.raw_ws import RawWs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Site:
    """One handler on a real ephemeral port; ``seen`` gets what the handler exposes."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.release = asyncio.Event()
        self.port = 0

    async def hold(self) -> None:
        self.ready.set()
        async with asyncio.timeout(20):
            await self.release.wait()


@pytest.fixture
async def site() -> AsyncIterator[Callable[[Handler], Awaitable[Site]]]:
    runners: list[web.AppRunner] = []
    sites: list[Site] = []

    async def start(handler: Handler) -> Site:
        app = web.Application()
        app.router.add_route("*", "/", handler)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        runners.append(runner)
        s = sites[-1]
        s.port = runner.addresses[0][1]
        return s

    def make(handler: Any, **kw: Any) -> Any:
        s = Site()
        sites.append(s)

        async def route(request: web.Request) -> web.StreamResponse:
            return await handler(request, s, **kw)  # type: ignore[no-any-return]

        return start(route)

    yield make
    for s in sites:
        s.release.set()
    for runner in runners:
        await runner.cleanup()


async def raw_client(port: int, request: bytes, rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request)
    return sock


async def read_all(sock: socket.socket, until: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    buf = b""
    async with asyncio.timeout(10):
        while until not in buf:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            buf += chunk
    return buf


async def sse_handler(request: web.Request, s: Site, **kw: Any) -> web.StreamResponse:
    resp = SseResponse(ping_interval=kw.get("ping", 30), send_timeout=kw.get("timeout", 30))
    await resp.prepare(request)
    await resp.write(b"retry: 10\n\n")
    s.seen["resp"] = resp
    s.seen["request"] = request
    await s.hold()
    return resp


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_payload_writer_is_a_chunked_stream_writer_we_can_write_around(site: Any) -> None:
    """``StreamResponse._payload_writer``: a StreamWriter with ``transport``, ``chunked``,
    ``_compress`` None, ``_headers_written`` and ``drain``; frames we write to its transport
    as our own HTTP chunks reach the client intact, and ``_req.transport`` is that transport."""
    s = await site(sse_handler)
    sock = await raw_client(s.port, GET)
    try:
        await asyncio.wait_for(s.ready.wait(), 10)
        resp = s.seen["resp"]
        writer = resp._payload_writer
        assert isinstance(writer, StreamWriter)
        assert writer.chunked and writer._compress is None and writer._headers_written
        assert writer.transport is s.seen["request"].transport is resp._req.transport
        frame = b"id: 1\nevent: x\ndata: {}\n\n"
        writer.transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        await writer.drain()
        raw = await read_all(sock, frame)
        assert b"%x\r\n%s\r\n" % (len(frame), frame) in raw
    finally:
        sock.close()


async def upstream_sse_handler(request: web.Request, s: Site, **kw: Any) -> web.StreamResponse:
    resp = EventSourceResponse(ping_interval=30, send_timeout=kw.get("timeout", 30))
    await resp.prepare(request)
    s.seen["resp"] = resp
    s.seen["request"] = request
    await s.hold()
    return resp


def user_timeout_ms(request: web.Request) -> int:
    sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


async def test_upstream_prepare_is_tcp_timeout_then_prepare_then_a_ping_task(site: Any) -> None:
    """What ``SseResponse.prepare`` re-does minus the ping task: aiohttp-sse's ``prepare``
    calls ``_set_tcp_user_timeout(request)`` (TCP_USER_TIMEOUT = ``send_timeout`` in ms),
    prepares the response and stores its ping task in ``_ping_task``. If a release moves
    the ping elsewhere or adds a step, this fails before idle connections grow again."""
    s = await site(upstream_sse_handler, timeout=7)
    sock = await raw_client(s.port, GET)
    try:
        await asyncio.wait_for(s.ready.wait(), 10)
        resp = s.seen["resp"]
        assert isinstance(resp._ping_task, asyncio.Task) and not resp._ping_task.done()
        assert user_timeout_ms(s.seen["request"]) == 7000
        assert callable(EventSourceResponse._set_tcp_user_timeout)
    finally:
        sock.close()


async def test_our_prepare_keeps_headers_and_tcp_timeout_but_starts_no_task(site: Any) -> None:
    """``SseResponse.prepare``: aiohttp-sse's headers, TCP_USER_TIMEOUT set through its
    ``_set_tcp_user_timeout``, chunked, and ``_ping_task`` left None (no task per
    connection: the sinks' timer wheel sends the heartbeat)."""
    s = await site(sse_handler, timeout=3)
    sock = await raw_client(s.port, GET)
    try:
        await asyncio.wait_for(s.ready.wait(), 10)
        resp = s.seen["resp"]
        assert resp._ping_task is None
        assert user_timeout_ms(s.seen["request"]) == 3000
        raw = await read_all(sock, b"retry: 10")
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        assert b"content-type: text/event-stream" in head
        assert b"cache-control: no-cache" in head and b"transfer-encoding: chunked" in head
        assert resp._payload_writer.chunked
    finally:
        sock.close()


async def ws_handler(request: web.Request, s: Site) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    s.seen["request"] = request
    await s.hold()
    return ws


async def stall_ws(s: Site) -> tuple[RawWs, Any, Any]:
    client = await RawWs.connect("127.0.0.1", s.port, rcvbuf=4096, path="/")
    await asyncio.wait_for(s.ready.wait(), 10)
    request = s.seen["request"]
    request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                          8192)
    request.transport.write(b"\x81\x7f" + (1 << 20).to_bytes(8, "big") + b"x" * (1 << 20))
    return client, request.protocol, request.transport


async def test_protocol_paused_flag_follows_the_high_water_mark(site: Any) -> None:
    """``BaseProtocol._paused``: True while the transport is over its high-water mark (the
    WebSocket sink's ``write_nowait`` answer), False once the peer has read."""
    s = await site(ws_handler)
    client, protocol, transport = await stall_ws(s)
    try:
        assert protocol._paused is True
        opcode, payload = await client.recv_frame(timeout=10)  # the client reads it all
        assert opcode == 0x1 and len(payload) == 1 << 20
        async with asyncio.timeout(10):
            while protocol._paused:
                await asyncio.sleep(0.01)
        assert transport.get_write_buffer_size() == 0
    finally:
        client.close()


async def test_drain_helper_waits_while_paused_and_fails_when_the_peer_is_gone(
    site: Any,
) -> None:
    """``BaseProtocol._drain_helper()``: waits while paused, returns once the peer read
    enough, and raises ConnectionError when the connection is lost while waiting."""
    s = await site(ws_handler)
    client, protocol, _ = await stall_ws(s)
    waiting = asyncio.ensure_future(protocol._drain_helper())
    await asyncio.sleep(0.05)
    assert not waiting.done(), "waits while the peer does not read"
    await client.recv_frame(timeout=10)
    await asyncio.wait_for(waiting, 10)
    client.close()

    s2 = await site(ws_handler)
    client2, protocol2, _ = await stall_ws(s2)
    waiting = asyncio.ensure_future(protocol2._drain_helper())
    await asyncio.sleep(0.05)
    client2.close()  # reset while the server waits
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 10)
    with pytest.raises(ConnectionError):
        await protocol2._drain_helper()  # and at once, afterwards
