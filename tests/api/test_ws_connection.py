"""The WebSocket connection's life: bounded replies, coded failures, cleanup on every exit
path, and the plain-GET answer. Real server, real sockets (``RawWs`` where the test must
control reading)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.api.ws import StartedRuns
from app.sinks.base import Sink, SinkClosed
from app.sinks.ws import WsSink
from app.state import STATE
from tests.conftest import LiveServer, ServerFactory, url
from tests.helpers import eventually
from tests.sinks.raw_ws import RawWs


def ws_url(server: LiveServer) -> str:
    return f"ws://{server.host}:{server.port}/v1/ws"


async def recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))



async def the_sink(server: LiveServer) -> WsSink:
    st = server.app[STATE]
    await eventually(lambda: any(isinstance(s, WsSink) for s in st.sinks))
    return next(s for s in st.sinks if isinstance(s, WsSink))


async def test_replies_to_a_client_that_never_reads_are_bounded_then_dropped(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 11 item 7: pings from a client that never reads its pongs. Past the byte bound
    the server stops reading that socket, then drops it (write_timeout, close 1008)."""
    bound = 64 * 1024
    server = await start_server(queue_bytes=bound, write_timeout=1.0, heartbeat=60)
    st = server.app[STATE]
    ws = await RawWs.connect(server.host, server.port, rcvbuf=4096, sndbuf=16 * 1024)
    sink = await the_sink(server)
    server_transport = sink.wire._transport
    assert server_transport is not None
    server_transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                         16 * 1024)
    burst = b"".join(ws.frame(json.dumps({"type": "ping", "ref": "r" * 128}).encode())
                     for _ in range(200))
    sent = 0
    peak = 0
    try:
        while sent < 64 * 1024 * 1024:
            ws.writer.write(burst)
            await asyncio.wait_for(ws.writer.drain(), 10)
            sent += len(burst)
            peak = max(peak, server_transport.get_write_buffer_size())
    except (ConnectionError, TimeoutError):
        pass
    finally:
        ws.close()
    assert sent < 16 * 1024 * 1024, f"the server kept reading: {sent} bytes taken"
    await eventually(lambda: sink not in st.sinks)
    assert sink.close_reason == "write_timeout" and sink.peer_lost
    assert peak <= bound + 1024, f"replies buffered {peak} bytes past a {bound} bound"
    async with http.get(url(server, "/metrics")) as resp:
        text = await resp.text()
    assert 'agentstream_peers_dropped_total{reason="write_timeout",transport="ws"}' in text


async def test_get_ws_without_upgrade_is_426_with_a_coded_body(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(url(server, "/v1/ws")) as resp:
        assert resp.status == 426
        assert resp.headers["Upgrade"] == "websocket"
        body = await resp.json()
    assert body["error"]["code"] == "upgrade_required" and body["error"]["message"]


async def test_a_command_that_raises_gets_internal_error_and_the_socket_keeps_working(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = server.app[STATE]

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(st.engine, "cancel", broken)
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "start", "ref": "s", "agent": "demo",
                                  "input": {"tokens": 0, "ask": "x"}}))
        run_id = (await recv(ws))["run_id"]
        await ws.send(json.dumps({"type": "cancel", "ref": "c", "run_id": run_id}))
        frame = await recv(ws)
        while frame["type"] == "event":
            frame = await recv(ws)
        assert frame == {"type": "error", "ref": "c", "code": "internal_error",
                         "message": frame["message"]}
        await ws.send(json.dumps({"type": "ping", "ref": "p"}))
        frame = await recv(ws)
        while frame["type"] == "event":
            frame = await recv(ws)
        assert frame == {"type": "pong", "ref": "p"}


async def test_a_writer_that_fails_still_cleans_up_and_closes_1011(
    start_server: ServerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(replay_cache_bytes=0)
    st = server.app[STATE]
    async with http.post(url(server, "/v1/runs"), json={
            "agent": "demo", "input": {"tokens": 2, "reasoning": False,
                                       "tool_call": False}}) as resp:
        conversation = (await resp.json())["conversation_id"]

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a bug in the store read")

    monkeypatch.setattr(st.store, "read_events", broken)
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "start", "ref": "s", "agent": "demo",
                                  "on_disconnect": "cancel",
                                  "input": {"tokens": 0, "ask": "x"}}))
        run_id = (await recv(ws))["run_id"]
        await ws.send(json.dumps({"type": "subscribe", "ref": "r",
                                  "conversation_id": conversation}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    await eventually(lambda: not st.sinks)
    assert st.hub.subscriber_count() == 0
    await eventually(lambda: run_id not in st.engine.active)  # cancelled on close


async def test_subscribe_finishing_after_the_sink_closed_leaves_nothing_in_the_hub(
    start_server: ServerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 8: a subscribe still running when the socket's sink closes (here its
    lifetime ends) must not leave a subscriber in the hub pinning the conversation."""
    server = await start_server(max_lifetime=0.5)
    st = server.app[STATE]
    async with http.post(url(server, "/v1/runs"), json={
            "agent": "demo", "input": {"tokens": 1, "reasoning": False,
                                       "tool_call": False}}) as resp:
        conversation = (await resp.json())["conversation_id"]
    entered, gate = asyncio.Event(), asyncio.Event()
    original = st.engine.conversation

    async def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await gate.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(st.engine, "conversation", held)
    async with connect(ws_url(server)) as ws:
        sink = await the_sink(server)
        await ws.send(json.dumps({"type": "subscribe", "ref": "r",
                                  "conversation_id": conversation}))
        await asyncio.wait_for(entered.wait(), 10)
        await eventually(lambda: sink.closed)  # max_lifetime closes it mid-command
        gate.set()
        await eventually(lambda: not st.sinks)
        assert not st.hub.has_subscribers(conversation) and st.hub.subscriber_count() == 0
        with pytest.raises(SinkClosed):
            sink.subscribe(conversation)
        assert st.hub.subscriber_count() == 0


def test_a_closed_sink_refuses_subscriptions() -> None:
    from app.fanout.hub import Hub
    from app.sinks.policy import SinkPolicy

    class NoWire:
        name = "ws"

    hub = Hub()
    sink = Sink(NoWire(), hub, None, SinkPolicy(), "k")  # type: ignore[arg-type]
    sink.subscribe("c")
    sink.close("disconnected")
    sink.release()
    with pytest.raises(SinkClosed):
        sink.subscribe("c")
    assert hub.subscriber_count() == 0


def test_started_runs_forget_ended_runs_and_stay_bounded() -> None:
    active = {"r1", "r2"}
    runs = StartedRuns(limit=3)
    runs.add("a", "r1", True, active.__contains__)
    runs.add("b", "r2", True, active.__contains__)
    runs.ended("r1")
    assert runs.cancel_on_close == {"r2"} and runs.by_ref["a"] == "r1"
    for i in range(3, 10):
        active.add(f"r{i}")
        runs.add(f"ref{i}", f"r{i}", True, active.__contains__)
    assert len(runs.by_ref) <= 3, "oldest refs forgotten past the limit"
    assert runs.cancel_on_close == active - {"r1"}, "runs still active stay cancellable"
    active -= {"r2", "r3", "r4", "r5", "r6"}  # ended unseen (unsubscribed)
    active.add("r10")
    runs.add("ref10", "r10", True, active.__contains__)
    assert runs.cancel_on_close == {"r7", "r8", "r9", "r10"}
    assert list(runs.by_ref) == ["ref8", "ref9", "ref10"]
    active.clear()
    runs.prune(active.__contains__)
    assert runs.by_ref == {} and runs.cancel_on_close == set()
