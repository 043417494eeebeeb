"""The private aiohttp internal the WebSocket heartbeat relies on, and how the wire uses it.

``WsWire`` learns that the peer is alive from the aiohttp protocol's ``_data_received_cb``
hook (called for every chunk read once the WebSocket parser is installed), instead of
aiohttp's own ``heartbeat=`` timers. If a release renames the hook or stops calling it,
these fail first (the pattern of test_library_internals.py: a tiny app on a real socket,
a raw client).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.sinks.timers import wheel
from app.sinks.ws import PING_FRAME, WsWire
from tests.helpers import eventually
from tests.sinks.raw_ws import RawWs
from tests.sinks.test_library_internals import Site, site  # noqa: F401  (the fixture)


async def ws_handler(request: web.Request, s: Site, **kw: Any) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=None, compress=kw.get("compress", False))
    await ws.prepare(request)
    s.seen["ws"] = ws
    s.seen["request"] = request
    s.seen["wire"] = WsWire(ws, request, heartbeat=kw.get("heartbeat", 0.0))
    await s.hold()
    return ws


async def test_data_received_hook_is_unset_without_heartbeat_and_called_per_chunk(
    site: Any,  # noqa: F811
) -> None:
    """``RequestHandler._data_received_cb``: None when aiohttp keeps no heartbeat (so ours
    replaces nothing), and called for each chunk the peer sends once it is set."""
    s = await site(ws_handler)
    client = await RawWs.connect("127.0.0.1", s.port, path="/")
    try:
        await eventually(lambda: "wire" in s.seen, 10, "the handler")
        protocol = s.seen["request"].protocol
        wire: WsWire = s.seen["wire"]
        assert protocol._data_received_cb == wire._data_received  # installed by WsWire
        assert not wire.heard
        client.send(type="ping")
        await eventually(lambda: wire.heard, 10, "the hook's call")
    finally:
        client.close()


async def test_upstream_leaves_the_hook_none_when_heartbeat_is_none(site: Any) -> None:  # noqa: F811
    """What WsWire overwrites: aiohttp installs a hook only for its own heartbeat."""

    async def bare(request: web.Request, s: Site) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        s.seen["request"] = request
        await s.hold()
        return ws

    s = await site(bare)
    client = await RawWs.connect("127.0.0.1", s.port, path="/")
    try:
        await eventually(lambda: "request" in s.seen, 10, "the handler")
        assert s.seen["request"].protocol._data_received_cb is None
    finally:
        client.close()


async def test_heartbeat_pings_an_idle_peer_and_a_silent_one_is_reported(
    site: Any,  # noqa: F811
) -> None:
    """The wire's beat on an idle socket writes a ping and sets a pong deadline on the
    wheel; nothing heard by then calls ``on_silent``. A beat after traffic pings nobody."""
    s = await site(ws_handler, heartbeat=0.2)
    client = await RawWs.connect("127.0.0.1", s.port, path="/")
    try:
        await eventually(lambda: "wire" in s.seen, 10, "the handler")
        wire: WsWire = s.seen["wire"]
        silent: list[bool] = []
        wire.on_silent = lambda: silent.append(True)
        client.send(type="hello")
        await eventually(lambda: wire.heard, 10, "the hook's call")
        assert wire.heartbeat(wheel().time(), 1.0) is False
        assert not wire.heard  # reset; no ping this time (the peer just spoke)
        assert wire.heartbeat(wheel().time(), 1.0) is False  # now it pings
        opcode, payload = await client.recv_frame()
        assert (opcode, payload) == (0x9, b"") and PING_FRAME == b"\x89\x00"
        await eventually(lambda: silent, 10, "the pong deadline")  # never answered
    finally:
        client.close()
