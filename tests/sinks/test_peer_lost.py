"""Issue 10 item 9: ``on_disconnect: cancel`` must act when an SSE client resets the
connection while the server is blocked writing to it.

The drain that was waiting for the peer fails with a reset: that is ``disconnected`` (and
``Sink.peer_lost``), not ``write_timeout``, which only a write that timed out is.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import aiohttp

from app.sinks.base import caused_by_timeout
from app.sinks.sse import WRITE_HIGH_WATER, SseSink
from app.state import STATE
from tests.conftest import ServerFactory, url
from tests.helpers import check_run, eventually, poll, slow_reader


async def test_sse_reset_while_blocked_writing_cancels_the_run(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(write_timeout=60, heartbeat=30)
    st = server.app[STATE]
    body = json.dumps({"agent": "demo", "on_disconnect": "cancel",
                       "input": {"tokens": 1_000_000, "delay_ms": 1, "reasoning": False,
                                 "tool_call": False}}).encode()
    sock = await slow_reader(server, b"POST /v1/runs HTTP/1.1\r\nHost: x\r\n"
                             b"Accept: text/event-stream\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        await eventually(lambda: st.sinks)
        (sink,) = st.sinks
        assert isinstance(sink, SseSink)
        transport = sink.response._req.transport  # type: ignore[union-attr]
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                      16 * 1024)
        # the client reads nothing: the server ends up waiting for it to drain
        await eventually(lambda: transport.get_write_buffer_size() > WRITE_HIGH_WATER)
        (run_id,) = list(st.engine.active)
    finally:
        # reset, not FIN: the kernel answers the server's pending data with RST
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    await eventually(lambda: sink.closed and not st.sinks)
    assert sink.close_reason == "disconnected" and sink.peer_lost
    await eventually(lambda: run_id not in st.engine.active)
    # The run leaves ``active`` when its done is queued; the row says so once committed.
    async def run_row() -> dict[str, Any]:
        async with http.get(url(server, f"/v1/runs/{run_id}")) as resp:
            return dict(await resp.json())

    info = await poll(run_row, lambda row: row.get("done_seq") is not None,
                      what="the run's done committed")
    assert info["status"] == "cancelled", info
    events = []
    async with http.get(url(server, f"/v1/runs/{run_id}/events")) as resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    check_run(events, run_id)
    assert events[-2]["type"] == "run_cancelling"
    assert events[-2]["data"]["reason"] == "client_disconnected"


def test_only_a_timeout_under_the_error_makes_it_a_write_timeout() -> None:
    lost = ConnectionError("Connection lost")
    lost.__cause__ = TimeoutError(110, "Connection timed out")  # the kernel's user timeout
    assert caused_by_timeout(lost)
    reset = ConnectionError("Connection lost")
    reset.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert not caused_by_timeout(reset)
    assert not caused_by_timeout(None)
