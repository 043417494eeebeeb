"""WebSocket transport with a real third-party client (``websockets``) over a real socket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.state import STATE
from tests.conftest import LiveServer, ServerFactory, url
from tests.helpers import check_run, eventually, post_run
from tests.sinks.raw_ws import RawWs


def ws_url(server: LiveServer) -> str:
    return f"ws://{server.host}:{server.port}/v1/ws"


async def send(ws: ClientConnection, **msg: Any) -> None:
    await ws.send(json.dumps(msg))


async def recv(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def until(ws: ClientConnection, pred: Any, timeout: float = 10) -> list[dict[str, Any]]:
    """Collect frames until ``pred(frame)`` is true (inclusive)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.01, deadline - time.monotonic()))
        got.append(frame)
        if pred(frame):
            return got


def is_event(frame: dict[str, Any], typ: str) -> bool:
    return frame["type"] == "event" and frame["event"]["type"] == typ


async def test_start_answer_done_and_a_second_viewer(server: LiveServer) -> None:
    async with connect(ws_url(server)) as a, connect(ws_url(server)) as b:
        await send(a, type="start", ref="s1", agent="demo", conversation_id="shared",
                   input={"tokens": 5, "delay_ms": 1, "ask": "Proceed?"})
        ack = await recv(a)
        assert ack == {"type": "ack", "ref": "s1", "run_id": ack["run_id"],
                       "conversation_id": "shared", "status": "running"}
        run_id = ack["run_id"]
        await send(b, type="subscribe", ref="b1", conversation_id="shared")
        assert (await recv(b))["type"] == "ack"
        a_frames = await until(a, lambda f: is_event(f, "require_user_input"))
        request_id = a_frames[-1]["event"]["data"]["request_id"]
        b_frames = await until(b, lambda f: is_event(f, "require_user_input"))
        await send(a, type="input", ref="i1", run_id=run_id, request_id=request_id, value="yes")
        a_frames += await until(a, lambda f: is_event(f, "done"))
        assert {"type": "ack", "ref": "i1", "run_id": run_id} in a_frames
        # b's late answer is refused, and b saw the same events including the answer
        await send(b, type="input", ref="late", run_id=run_id, request_id=request_id, value="no")
        b_frames += await until(b, lambda f: f["type"] == "error")
        assert b_frames[-1] == {"type": "error", "ref": "late", "code": "input_already_answered",
                                "message": b_frames[-1]["message"]}
        b_events = [f["event"] for f in b_frames if f["type"] == "event"]
        a_events = [f["event"] for f in a_frames if f["type"] == "event"]
        assert any(e["type"] == "user_input_received" for e in b_events)
        assert a_events[-1]["data"]["status"] == "completed"
        assert [e for e in b_events if e["run_id"] == run_id] == a_events


async def test_cancel_by_ref_before_ack(server: LiveServer) -> None:
    async with connect(ws_url(server)) as ws:
        # both frames leave before the server could answer the first
        await ws.send(json.dumps({"type": "start", "ref": "s", "agent": "demo",
                                  "input": {"tokens": 1000, "delay_ms": 10}}))
        await ws.send(json.dumps({"type": "cancel", "ref": "s"}))
        frames = await until(ws, lambda f: is_event(f, "done"))
        acks = [f for f in frames if f["type"] == "ack"]
        assert acks[0]["ref"] == "s" and acks[1]["ref"] == "s"
        done = frames[-1]["event"]
        assert done["data"]["status"] == "cancelled"
        assert sum(is_event(f, "done") for f in frames) == 1
        # cancelling the ended run is answered with its final status, not an error
        await send(ws, type="cancel", ref="again", run_id=done["run_id"])
        assert await recv(ws) == {"type": "ack", "ref": "again", "run_id": done["run_id"],
                                  "status": "cancelled"}


async def test_http_and_ws_answers_race_first_wins(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    async with connect(ws_url(server)) as ws:
        await send(ws, type="start", ref="s", agent="demo",
                   input={"tokens": 0, "ask": "x", "reasoning": False, "tool_call": False})
        frames = await until(ws, lambda f: is_event(f, "require_user_input"))
        ev = frames[-1]["event"]
        async with http.post(url(server, f"/v1/runs/{ev['run_id']}/input"),
                             json={"request_id": ev["data"]["request_id"], "value": 1}) as r:
            assert r.status == 200
        await send(ws, type="input", ref="i", run_id=ev["run_id"],
                   request_id=ev["data"]["request_id"], value=2)
        # The HTTP answer is acknowledged once durable, so the run may end before the
        # socket's input is handled: its error may come before or after ``done``.
        frames = await until(ws, lambda f: is_event(f, "done"))
        if not any(f["type"] == "error" for f in frames):
            frames += await until(ws, lambda f: f["type"] == "error")
        assert [f["code"] for f in frames if f["type"] == "error"] == ["input_already_answered"]
        received = [f["event"] for f in frames if is_event(f, "user_input_received")]
        assert received[0]["data"]["value"] == 1


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{nope", "malformed_json"),
        ("[]", "invalid_command"),
        ('{"type":"fly"}', "unknown_type"),
        ('{"ref":"r"}', "unknown_type"),
        ('{"type":"start","ref":"r"}', "invalid_command"),
        ('{"type":"start","agent":7}', "invalid_command"),
        ('{"type":"subscribe","after":"x","conversation_id":"c"}', "invalid_command"),
        ('{"type":"subscribe","after":-1,"conversation_id":"c"}', "invalid_command"),
        ('{"type":"subscribe"}', "invalid_command"),
        ('{"type":"subscribe","conversation_id":"nope"}', "conversation_not_found"),
        ('{"type":"subscribe","run_id":"nope"}', "run_not_found"),
        ('{"type":"unsubscribe","conversation_id":"nope"}', "not_subscribed"),
        ('{"type":"cancel","run_id":"nope"}', "run_not_found"),
        ('{"type":"cancel","ref":"never-started"}', "run_not_found"),
        ('{"type":"input","run_id":"nope","request_id":"q","value":1}', "run_not_found"),
        ('{"type":"start","agent":"nope"}', "unknown_agent"),
        ('{"type":"start","agent":"demo","input":{"tokens":-5}}', "invalid_input"),
    ],
)
async def test_malformed_frames_get_errors_and_the_socket_keeps_working(
    server: LiveServer, frame: str, code: str
) -> None:
    async with connect(ws_url(server)) as ws:
        await ws.send(frame)
        err = await recv(ws)
        assert err["type"] == "error" and err["code"] == code, err
        assert err["message"]
        await send(ws, type="ping", ref="p")
        assert await recv(ws) == {"type": "pong", "ref": "p"}


async def test_binary_frame_is_an_error_not_a_close(server: LiveServer) -> None:
    async with connect(ws_url(server)) as ws:
        await ws.send(b"\x00\x01")
        assert (await recv(ws))["code"] == "binary_not_supported"
        await send(ws, type="ping")
        assert (await recv(ws))["type"] == "pong"


async def test_oversized_frame_closes_1009(start_server: ServerFactory) -> None:
    server = await start_server(max_ws_message=4096)
    async with connect(ws_url(server), max_size=None) as ws:
        await ws.send(json.dumps({"type": "ping", "ref": "x" * 10_000}))
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_subscribe_after_replays_without_gap_or_duplicate(server: LiveServer) -> None:
    async with connect(ws_url(server)) as ws:
        await send(ws, type="start", ref="s", agent="demo", conversation_id="rp",
                   input={"tokens": 30, "delay_ms": 0})
        frames = await until(ws, lambda f: is_event(f, "done"))
        events = [f["event"] for f in frames if f["type"] == "event"]
    async with connect(ws_url(server)) as ws:
        cut = events[10]["seq"]
        await send(ws, type="subscribe", ref="r", run_id=events[0]["run_id"], after=cut)
        assert (await recv(ws))["type"] == "ack"
        again = [f["event"] for f in await until(ws, lambda f: is_event(f, "done"))
                 if f["type"] == "event"]
        assert again == [e for e in events if e["seq"] > cut]


async def test_one_socket_many_subscriptions_gets_each_event_once(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    convs = [f"many-{i}" for i in range(50)]
    engine = server.app[STATE].engine

    async def run_in(cid: str) -> str:
        body = await post_run(http, server, conversation_id=cid,
                              input={"tokens": 5, "delay_ms": 1, "reasoning": False})
        return str(body["run_id"])

    # History to replay. The default multitask policy is ``reject``: the second round may
    # only start once every first-round run has ended (a race this test once lost on CI).
    history = await asyncio.gather(*(run_in(c) for c in convs))
    await eventually(lambda: not engine.runs.active, what="first round ended")
    async with connect(ws_url(server)) as ws:
        for cid in convs:
            await send(ws, type="subscribe", conversation_id=cid, ref=cid)
        live = await asyncio.gather(*(run_in(c) for c in convs))
        events: list[dict[str, Any]] = []
        dones = 0
        while dones < 2 * len(convs):
            f = await recv(ws)
            if f["type"] != "event":
                assert f["type"] == "ack", f
                continue
            events.append(f["event"])
            dones += f["event"]["type"] == "done"
    seen = [(e["conversation_id"], e["seq"]) for e in events]
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    for cid, first, second in zip(convs, history, live, strict=True):
        mine = [e for e in events if e["conversation_id"] == cid]
        assert mine[0]["seq"] == 1
        check_run(mine, first)
        check_run(mine, second)


async def test_silent_peer_is_dropped_within_two_heartbeats(
    start_server: ServerFactory,
) -> None:
    server = await start_server(heartbeat=0.3)
    st = server.app[STATE]
    reader, writer = await asyncio.open_connection(server.host, server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((
        "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    deadline = time.monotonic() + 5
    while not st.sinks and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert st.sinks
    opened = time.monotonic()
    # the peer never answers the server's pings
    while st.sinks and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not st.sinks
    assert time.monotonic() - opened <= 2 * 0.3 + 0.3
    writer.close()


async def test_shutdown_closes_websockets_1001(start_server: ServerFactory) -> None:
    server = await start_server()
    async with connect(ws_url(server)) as ws:
        await send(ws, type="ping")
        await recv(ws)
        closing = asyncio.create_task(server.close())
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        await closing


def test_websockets_version() -> None:
    assert int(websockets.__version__.split(".")[0]) >= 13


async def test_a_peer_that_answers_pings_is_kept_across_heartbeats(
    start_server: ServerFactory,
) -> None:
    """The shared wheel pings an idle socket every interval; a peer that answers (pongs
    only, no commands) is still there after several pings."""
    server = await start_server(heartbeat=0.5)
    client = await RawWs.connect(server.host, server.port)
    try:
        pings = 0
        while pings < 3:
            opcode, payload = await client.recv_frame()
            if opcode == 0x9:
                pings += 1
                client.writer.write(client.frame(payload, opcode=0xA))
        client.send(type="ping", ref="still-here")
        assert await client.recv() == {"type": "pong", "ref": "still-here"}
        assert len(server.app[STATE].sinks) == 1
    finally:
        client.close()
