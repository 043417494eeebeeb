"""Conversation ids are scoped per owner (app/ids.py): a stranger can neither learn that an id
is taken, nor squat it, nor learn that someone else's run or conversation expired."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from app.ids import public, scoped
from tests.auth.test_auth import ADMIN, ALICE, BOB, KEYS, bearer, status_code
from tests.conftest import LiveServer, ServerFactory, url
from tests.helpers import check_run
from tests.sse_client import read_events


async def start(http: aiohttp.ClientSession, server: LiveServer, key: str,
                **body: Any) -> dict[str, Any]:
    async with http.post(url(server, "/v1/runs"), headers=bearer(key),
                         json={"agent": "demo", **body}) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())



def test_scoping_is_a_pure_bijection_on_public_ids() -> None:
    assert scoped(None, "chat-1") == "chat-1"
    a, b = scoped("alice", "chat-1"), scoped("bob", "chat-1")
    assert a != b and public(a) == public(b) == "chat-1"
    assert "~" in a and scoped("alice", "chat-1") == a


async def test_a_stranger_choosing_a_taken_id_gets_a_conversation_of_their_own(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth="token", api_keys=KEYS)
    quick = {"tokens": 3, "delay_ms": 0, "reasoning": False, "tool_call": False}
    alice = await start(http, server, ALICE, conversation_id="chat-1", input=quick)
    # Bob names Alice's id and an unused one: the same answer (202) for both
    taken = await start(http, server, BOB, conversation_id="chat-1", input=quick)
    fresh = await start(http, server, BOB, conversation_id="never-used", input=quick)
    assert taken["conversation_id"] == "chat-1" and fresh["conversation_id"] == "never-used"
    assert alice["conversation_id"] == "chat-1"
    for run, key in ((alice, ALICE), (taken, BOB), (fresh, BOB)):
        events = await read_events(http, url(server, run["events_url"]), headers=bearer(key))
        check_run(events, run["run_id"])
        # every conversation starts at seq 1: Bob's is not Alice's, and neither sees the other
        assert events[0]["seq"] == 2 and {e["conversation_id"] for e in events} == {
            run["conversation_id"]}
    # each owner's conversation stream holds only its own run
    for key, rid in ((ALICE, alice["run_id"]), (BOB, taken["run_id"])):
        events = await read_events(
            http, url(server, "/v1/conversations/chat-1/events"), headers=bearer(key))
        assert {e["run_id"] for e in events if e["run_id"]} == {rid}
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # over WebSocket too: Bob's start with Alice's id is acked, in Bob's namespace
    ws_url = f"ws://{server.host}:{server.port}/v1/ws"
    async with connect(ws_url, additional_headers=bearer(BOB)) as ws:
        await ws.send(json.dumps({"type": "start", "ref": "s", "agent": "demo",
                                  "conversation_id": "chat-1", "input": quick}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ack["type"] == "ack" and ack["conversation_id"] == "chat-1"
        frames = []
        while not frames or frames[-1]["type"] != "done":
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert frame["type"] == "event"
            frames.append(frame["event"])
        check_run(frames, ack["run_id"])
        assert frames[0]["seq"] > 1  # Bob's conversation already had his first run
    # an admin still reaches Alice's run by its (global, random) run id
    assert (await status_code(http, "GET", url(server, f"/v1/runs/{alice['run_id']}"),
                              ADMIN))[0] == 200


async def test_expiry_is_told_only_to_the_owner(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth="token", api_keys=KEYS, retention=0.2,
                                retention_sweep=0.1)
    run = await start(http, server, ALICE, conversation_id="old",
                      input={"tokens": 2, "delay_ms": 0})
    check_run(await read_events(http, url(server, run["events_url"]), headers=bearer(ALICE)),
              run["run_id"])
    conv_url = url(server, "/v1/conversations/old/events")
    deadline = time.monotonic() + 10
    got = (0, "")
    while time.monotonic() < deadline:
        got = await status_code(http, "GET", conv_url, ALICE)
        if got[0] == 410:
            break
        await asyncio.sleep(0.1)
    assert got == (410, "conversation_expired")
    run_url = url(server, f"/v1/runs/{run['run_id']}")
    assert await status_code(http, "GET", run_url, ALICE) == (410, "run_expired")
    # a stranger gets exactly what an id that never existed gets
    for u, unknown in ((conv_url, url(server, "/v1/conversations/nope/events")),
                       (run_url, url(server, "/v1/runs/r_nope"))):
        assert await status_code(http, "GET", u, BOB) == await status_code(
            http, "GET", unknown, BOB)
        assert (await status_code(http, "GET", u, BOB))[0] == 404
