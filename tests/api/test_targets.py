"""One stream-target resolver (issue 12): SSE and WebSocket give the same answers."""

from __future__ import annotations

import aiohttp
from websockets.asyncio.client import connect

from tests.api.test_ws import recv, send, ws_url
from tests.conftest import LiveServer, url
from tests.run_client import done_of, stream_run


async def test_a_position_ahead_is_one_code_on_both_transports(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await stream_run(http, server, {"agent": "demo", "conversation_id": "tg",
                                             "input": {"tokens": 2, "delay_ms": 0}})
    done_of(events)
    last = events[-1]["seq"]
    async with http.get(url(server, "/v1/conversations/tg/events"),
                        headers={"Last-Event-ID": str(last + 1)}) as r:
        sse = (r.status, (await r.json())["error"]["code"])
    async with connect(ws_url(server)) as ws:
        await send(ws, type="subscribe", ref="a", conversation_id="tg", after=last + 1)
        reply = await recv(ws)
        await send(ws, type="subscribe", ref="b", run_id=events[0]["run_id"], after=last + 1)
        reply_run = await recv(ws)
        await send(ws, type="unsubscribe", ref="c", run_id=events[0]["run_id"])
        unsub = await recv(ws)
    assert sse == (400, "invalid_last_event_id")
    assert (reply["type"], reply["code"], reply["ref"]) == ("error", "invalid_last_event_id", "a")
    # A run target whose done the client has: SSE says 204; the position is not "ahead".
    async with http.get(url(server, f"/v1/runs/{events[0]['run_id']}/events"),
                        headers={"Last-Event-ID": str(last)}) as r:
        assert r.status == 204
    # ... and WebSocket acknowledges without subscribing (no slot held for nothing)
    assert (reply_run["type"], reply_run["ref"]) == ("ack", "b")
    assert (unsub["type"], unsub["code"]) == ("error", "not_subscribed")


async def test_a_stranger_and_an_unknown_id_get_the_same_answer(
    server: LiveServer,
) -> None:
    async with connect(ws_url(server)) as ws:
        await send(ws, type="subscribe", ref="x", conversation_id="nope")
        reply = await recv(ws)
        await send(ws, type="subscribe", ref="y", run_id="r_nope", conversation_id="c")
        both = await recv(ws)
    assert (reply["code"], reply["ref"]) == ("conversation_not_found", "x")
    assert (both["code"], both["ref"]) == ("invalid_command", "y")
