"""Filters that survive reconnect, and snapshot on join (issue 16), over real SSE and
WebSocket connections to a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from tests.api.test_history import check_stream, until_status
from tests.api.test_starts import post
from tests.api.test_ws import is_event, recv, send, until, ws_url
from tests.conftest import LiveServer, url
from tests.run_client import done_of, stream_run
from tests.sse_client import iter_frames

WANTED = {"run_started", "message", "done"}


async def read_sse(http: aiohttp.ClientSession, address: str, headers: dict[str, str],
                   stop: int | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(15), http.get(address, headers=headers) as r:
        assert r.status == 200, await r.text()
        async for frame in iter_frames(r):
            if frame.data:
                events.append(frame.json)
                assert frame.id == str(events[-1]["seq"])
            if stop is not None and len(events) == stop:
                break
    return events


async def test_sse_types_filter_survives_a_reconnect(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    full = await stream_run(http, server, {"agent": "demo", "conversation_id": "f1",
                                           "input": {"tokens": 4, "delay_ms": 0, "ask": "?"}},
                            on_event=lambda e: answer(http, server, e))
    done_of(full)
    run_id = full[0]["run_id"]
    address = url(server, f"/v1/runs/{run_id}/events?types=run_started,message")
    first = await read_sse(http, address, {}, stop=2)
    rest = await read_sse(http, address, {"Last-Event-ID": str(first[-1]["seq"])})
    expected = [e for e in full if e["type"] in WANTED]
    assert first + rest == expected and len(expected) == 4  # 2 messages, started, done


async def answer(http: aiohttp.ClientSession, server: LiveServer, event: dict[str, Any]) -> None:
    if event["type"] == "require_user_input":
        async with http.post(url(server, f"/v1/runs/{event['run_id']}/input"),
                             json={"request_id": event["data"]["request_id"],
                                   "value": "ok"}) as r:
            assert r.status == 200


async def test_ws_types_filter_and_a_resubscribe_keeping_it(server: LiveServer,
                                                            http: aiohttp.ClientSession) -> None:
    full = await stream_run(http, server, {"agent": "demo", "conversation_id": "f2",
                                           "input": {"tokens": 3, "delay_ms": 0}})
    async with connect(ws_url(server)) as ws:
        await send(ws, type="subscribe", ref="a", run_id=full[0]["run_id"],
                   types=["run_started", "message"])
        got = await until(ws, lambda f: is_event(f, "done"))
        await send(ws, type="subscribe", ref="b", run_id=full[0]["run_id"],
                   types=["run_started", "message"], after=full[0]["seq"])
        again = await until(ws, lambda f: is_event(f, "done"))
        await send(ws, type="subscribe", ref="c", conversation_id="f2", types=["nope"])
        bad = await recv(ws)
    expected = [e for e in full if e["type"] in WANTED]
    assert [f["event"] for f in got[1:]] == expected
    assert [f["event"] for f in again[1:]] == expected[1:]
    assert (bad["code"], bad["ref"]) == ("invalid_types", "c")
    async with http.get(url(server, "/v1/conversations/f2/events?types=x")) as r:
        assert r.status == 422 and (await r.json())["error"]["code"] == "invalid_types"


async def test_snapshot_of_a_finished_run_is_one_event_per_item(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    full = await stream_run(http, server, {"agent": "demo", "input": {
        "tokens": 30, "delay_ms": 0, "reasoning": True, "tool_call": True}})
    done_of(full)
    snap = await read_sse(http, url(server, f"/v1/runs/{full[0]['run_id']}/events?snapshot=1"),
                          {})
    assert [e["type"] for e in snap] == ["run_started", "reasoning_completed",
                                         "tool_call_completed", "message", "done"]
    by_seq = {e["seq"]: e for e in full}
    assert all(by_seq[e["seq"]] == e for e in snap)  # completion events are the stored ones
    assert snap[-1]["data"]["events"] == len(full)


async def test_snapshot_mid_run_then_live_nothing_lost_nothing_doubled(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    _, run = await post(http, server, {"agent": "demo", "conversation_id": "snap", "input": {
        "tokens": 150, "delay_ms": 4, "reasoning": False, "tool_call": False}})
    async with asyncio.timeout(10):  # wait until some chunks are stored
        while True:
            async with http.get(url(server, "/v1/conversations/snap/events"),
                                headers={"Accept": "application/json"},
                                params={"limit": "1000"}) as r:
                if len((await r.json())["events"]) > 20:
                    break
            await asyncio.sleep(0.02)
    joined = await read_sse(http, url(server, f"/v1/runs/{run['run_id']}/events?snapshot=1"), {})
    stored = await read_sse(http, url(server, run["events_url"]), {})
    done_of(stored)
    check_stream(stored)
    seqs = [e["seq"] for e in joined]
    assert seqs == sorted(set(seqs)) and joined[-1] == stored[-1]
    # the head was folded: one merged chunk stands for many stored ones ...
    merged = [e for e in joined if e["type"] == "message_chunk" and
              e["data"].get("merged", 1) > 1]
    assert len(merged) == 1 and merged[0]["data"]["merged"] > 10
    # ... and every stored chunk is in the joined stream exactly once
    covered = sum(e["data"].get("merged", 1) for e in joined if e["type"] == "message_chunk")
    text = "".join(e["data"]["delta"] for e in joined if e["type"] == "message_chunk")
    assert covered == sum(1 for e in stored if e["type"] == "message_chunk")
    final = next(e for e in stored if e["type"] == "message")["data"]["text"]
    assert text == final
    after_snapshot = [e for e in joined if e["seq"] > merged[0]["seq"]]
    assert [e["seq"] for e in after_snapshot] == list(
        range(merged[0]["seq"] + 1, stored[-1]["seq"] + 1))  # live part: contiguous


async def test_ws_snapshot_shows_an_open_question(server: LiveServer,
                                                  http: aiohttp.ClientSession) -> None:
    _, run = await post(http, server, {"agent": "demo", "conversation_id": "sq", "input": {
        "tokens": 5, "delay_ms": 0, "ask": "Proceed?"}})
    await until_status(http, server, run["run_id"], "waiting_input")
    async with connect(ws_url(server)) as ws:
        await send(ws, type="subscribe", ref="s", conversation_id="sq", snapshot=True)
        ack = await recv(ws)
        frames = [await recv(ws) for _ in range(6)]
        types = [f["event"]["type"] for f in frames]
        request_id = frames[-1]["event"]["data"]["request_id"]
        async with http.post(url(server, f"/v1/runs/{run['run_id']}/input"),
                             json={"request_id": request_id, "value": "y"}) as r:
            assert r.status == 200
        live = await until(ws, lambda f: is_event(f, "done"))
    assert ack["type"] == "ack"
    assert types == ["conversation_started", "run_started", "reasoning_completed",
                     "tool_call_completed", "message", "require_user_input"]
    everything = [f["event"] for f in frames + live]
    assert live[0]["event"]["type"] == "user_input_received"
    live_seqs = [f["event"]["seq"] for f in live]
    assert live_seqs == list(range(frames[-1]["event"]["seq"] + 1, live_seqs[-1] + 1))
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(set(seqs))
    assert everything[-1]["data"]["status"] == "completed"
