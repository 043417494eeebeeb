"""What an idle SSE stream keeps while it waits (issue 13, P3: memory per idle connection),
on a real server and a real socket. Each assertion is one cut measured with
``scripts/probe_idle_memory.py``; a change that brings one back fails here, not only in the
benchmark."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp

from app.api import http
from app.sinks.sse import SseSink
from app.state import STATE
from tests.conftest import LiveServer, url
from tests.helpers import eventually, post_run


async def _tail(server: LiveServer) -> tuple[str, int]:
    """A conversation with one finished run, and its last seq."""
    async with aiohttp.ClientSession() as session:
        run = await post_run(session, server, input={"text": "x", "tokens": 0})
        for _ in range(2000):
            async with session.get(url(server, f"/v1/runs/{run['run_id']}?output=0")) as r:
                body = await r.json()
            if body.get("done_seq"):
                return run["conversation_id"], int(body["done_seq"])
            await asyncio.sleep(0.01)
    raise AssertionError("the run did not finish")


async def _open_idle(server: LiveServer, path: str, last: int) -> tuple[socket.socket, bytes]:
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (server.host, server.port))
    await loop.sock_sendall(sock, (f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: "
                                   f"text/event-stream\r\nLast-Event-ID: {last}\r\n\r\n").encode())
    raw = b""
    async with asyncio.timeout(20):
        while b"retry: " not in raw:
            raw += await loop.sock_recv(sock, 65536)
    return sock, raw


def _our_frames(sink: SseSink) -> list[str]:
    """The suspended coroutines of the task serving ``sink`` that are ours (app/), outermost
    first: what an idle stream's stack holds."""
    for task in asyncio.all_tasks():
        names: list[tuple[str, str]] = []
        coro: Any = task.get_coro()
        while coro is not None and hasattr(coro, "cr_code"):
            code = coro.cr_code
            names.append((code.co_filename, f"{Path(code.co_filename).stem}.{code.co_qualname}"))
            coro = coro.cr_await
        if any(name == "pump.run" for _, name in names) and coro is not None:
            return [name for path, name in names if "/app/" in path]
    raise AssertionError("no task runs the sink's pump")


async def test_an_idle_stream_keeps_two_frames_of_ours_and_no_per_connection_garbage(
    server: LiveServer,
) -> None:
    cid, last = await _tail(server)
    st = server.app[STATE]
    sock, raw = await _open_idle(server, f"/v1/conversations/{cid}/events", last)
    try:
        await eventually(lambda: len(st.sinks) == 1, what="the stream's sink")
        sink = next(iter(st.sinks))
        assert isinstance(sink, SseSink)
        # The handler awaits the pump itself: no helper frame between them (the request
        # middleware, app/server.py, is the only other frame of ours).
        frames = _our_frames(sink)
        assert frames[-2:] == ["http.conversation_events", "pump.run"], frames
        assert len(frames) <= 3, frames
        # The headers went out, and their map was emptied once serialized.
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        assert b"content-type: text/event-stream" in head and b"cache-control: no-cache" in head
        assert not sink.response.headers
        # No per-connection closure, no empty list of its own, no parsed query kept.
        assert sink.on_stopped is http._stream_stopped
        assert sink.delivery.queue.items == ()
        assert sink.wire._pending is None  # type: ignore[attr-defined]
        request = sink.response._req
        assert request is not None and "query" not in request._cache
    finally:
        sock.close()
    await eventually(lambda: not st.sinks, what="the sink's clean-up")


async def test_a_run_stream_with_a_query_still_checks_it(server: LiveServer) -> None:
    """Skipping the parsed query is only for a request without one."""
    cid, last = await _tail(server)
    async with aiohttp.ClientSession() as session:
        async with session.get(url(server, f"/v1/conversations/{cid}/events?types=nope"),
                               headers={"Last-Event-ID": str(last)}) as resp:
            assert resp.status == 422
            assert (await resp.json())["error"]["code"] == "invalid_types"
        async with session.get(url(server, f"/v1/conversations/{cid}/events?limit=0"),
                               headers={"Last-Event-ID": str(last)}) as resp:
            assert resp.status == 422
            assert (await resp.json())["error"]["code"] == "invalid_limit"
        async with session.get(
                url(server, f"/v1/conversations/{cid}/events?last_event_id={last + 5}"),
                headers={"Accept": "text/event-stream"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid_last_event_id"
