"""agentstream_client with ``compress=True`` over WebSocket against a server running with
compression on: the socket negotiates permessage-deflate and the run arrives whole."""

from __future__ import annotations

from agentstream_client import AgentstreamClient, MessageChunk
from app.state import STATE
from tests.clients.checks import assert_one_run
from tests.conftest import ServerFactory


async def test_compressed_websocket_run_to_done(start_server: ServerFactory) -> None:
    server = await start_server(compression=True)
    views: list[str] = []

    async with AgentstreamClient(server.make_url(""), transport="ws", compress=True,
                                 handshake_timeout=10) as client:
        run = await client.start("demo", {"text": "hi", "tokens": 30, "delay_ms": 1})
        events = []
        async for e in run:
            events.append(e)
            views.extend(s.delivery.transport for s in server.app[STATE].sinks)
    done = assert_one_run(events)
    assert done.data.status == "completed"
    assert sum(isinstance(e, MessageChunk) for e in events) == 30
    assert "ws_deflate_batch" in views  # aiohttp keeps its inflate context
