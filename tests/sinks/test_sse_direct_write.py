"""The SSE sink's direct write path (frames written from the hub callback straight to the
transport, no timer per write) keeps the sink's guarantees.

- A peer that stops reading is still dropped after ``write_timeout``: the timeout now arms
  only when a write leaves the transport over its high-water mark, so this pins that path.
- Live subscribers on the direct path get every event once, in order, framed as valid HTTP
  chunks (aiohttp's client decodes them).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp

from app.state import STATE
from tests.conftest import ServerFactory, url
from tests.sse_client import read_events


async def _wait_until(cond: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return bool(cond())


async def _start(http: aiohttp.ClientSession, base: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("agent", "demo")
    async with http.post(url(base, "/v1/runs"), json=body) as resp:
        assert resp.status == 202, await resp.text()
        return dict(await resp.json())


async def test_stalled_reader_is_dropped_after_write_timeout(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(write_timeout=0.5, queue_events=1_000_000,
                                queue_bytes=512 * 1024 * 1024)
    st = server.app[STATE]
    setup = await _start(http, server, input={"tokens": 0, "reasoning": False,
                                              "tool_call": False})
    cid = setup["conversation_id"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (server.host, server.port))
    await loop.sock_sendall(sock, f"GET /v1/conversations/{cid}/events HTTP/1.1\r\n"
                                  "Host: x\r\n\r\n".encode())
    try:
        assert await _wait_until(lambda: st.sinks, 5)
        assert len(st.sinks) == 1
        sink = next(iter(st.sinks))
        # ~20 MB of frames: far more than socket buffers hold, and never read.
        await _start(http, server, conversation_id=cid,
                     input={"tokens": 60_000, "delay_ms": 0, "reasoning": False,
                            "tool_call": False})
        assert await _wait_until(lambda: not st.sinks, 15), (
            "a peer that stopped reading was not dropped")
        assert sink.close_reason == "write_timeout"
    finally:
        sock.close()


async def test_live_subscribers_get_every_event_once_in_order(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server()
    setup = await _start(http, server, input={"tokens": 0, "reasoning": False,
                                              "tool_call": False})
    cid = setup["conversation_id"]
    run: dict[str, Any] = {}

    async def ended() -> bool:
        run.update(await (await http.get(url(server, f"/v1/runs/{setup['run_id']}"))).json())
        return "done_seq" in run

    for _ in range(100):  # GET tells committed state: wait for the done to commit
        if await ended():
            break
        await asyncio.sleep(0.02)
    after = str(run["done_seq"])
    headers = {"Last-Event-ID": after}

    async def subscriber() -> list[dict[str, Any]]:
        return await read_events(http, url(server, f"/v1/conversations/{cid}/events"),
                                 headers=headers)

    readers = [asyncio.create_task(subscriber()) for _ in range(20)]
    await asyncio.sleep(0.3)  # every subscriber is live (parked) before the run starts
    await _start(http, server, conversation_id=cid,
                 input={"tokens": 300, "delay_ms": 1, "reasoning": True, "tool_call": True})
    results = await asyncio.gather(*readers)
    for events in results:
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(int(after) + 1, int(after) + 1 + len(seqs)))
        assert events[-1]["type"] == "done"
        assert events[-1]["data"]["events"] == len(events)


async def test_max_lifetime_ends_an_idle_stream_with_a_retry_hint(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """The lifetime is one timer armed per sink (no timeout per sleep): an idle stream still
    gets its ``retry:`` and ends when the lifetime is over."""
    server = await start_server(max_lifetime=0.5, heartbeat=30)
    setup = await _start(http, server, input={"tokens": 0, "reasoning": False,
                                              "tool_call": False})
    started = time.monotonic()
    async with http.get(url(server, f"/v1/conversations/{setup['conversation_id']}/events"),
                        headers={"Last-Event-ID": "0"}) as resp:
        assert resp.status == 200
        body = await asyncio.wait_for(resp.read(), 5)
    assert 0.4 < time.monotonic() - started < 3
    assert body.count(b"retry: ") == 2  # the first frame, and the goodbye
