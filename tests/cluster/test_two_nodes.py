"""Two nodes, one PostgreSQL, one Redis, no sticky sessions: a run started on A is
streamed, answered and cancelled from B over SSE, HTTP and WebSocket."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from app.state import STATE
from tests.cluster.check import check_conversation, check_run_stream
from tests.cluster.conftest import NodeFactory
from tests.conftest import url
from tests.run_client import conversation_events
from tests.sse_client import iter_frames, read_events

ASK = {"tokens": 5, "delay_ms": 5, "ask": "ok?"}


async def start(http: aiohttp.ClientSession, node: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("agent", "demo")
    async with http.post(url(node, "/v1/runs"), json=body) as resp:
        assert resp.status == 202, await resp.text()
        return dict(await resp.json())


async def wait_question(http: aiohttp.ClientSession, node: Any, run_id: str) -> str:
    for _ in range(300):
        async with http.get(url(node, f"/v1/runs/{run_id}")) as resp:
            info = await resp.json()
        if info["status"] == "waiting_input":
            return str(info["pending_input"]["request_id"])
        await asyncio.sleep(0.02)
    raise AssertionError("the run never asked")


async def test_run_on_a_streamed_answered_and_read_from_b(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    run = await start(http, a, input=ASK)
    stream = asyncio.create_task(read_events(http, url(b, f"/v1/runs/{run['run_id']}/events")))
    request_id = await wait_question(http, b, run["run_id"])
    async with http.post(url(b, f"/v1/runs/{run['run_id']}/input"),
                         json={"request_id": request_id, "value": "yes"}) as resp:
        assert resp.status == 200, await resp.text()
    # First answer wins across nodes: a second answer on A is refused.
    async with http.post(url(a, f"/v1/runs/{run['run_id']}/input"),
                         json={"request_id": request_id, "value": "no"}) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "input_already_answered"
    events = await asyncio.wait_for(stream, 20)
    done = check_run_stream(events)
    assert done["status"] == "completed"
    assert any(e["type"] == "user_input_received" and e["data"]["value"] == "yes"
               for e in events)
    for node in (a, b):
        async with http.get(url(node, f"/v1/runs/{run['run_id']}")) as resp:
            info = await resp.json()
        assert info["status"] == "completed" and info["events"] == len(events)


async def test_starts_on_both_nodes_in_one_conversation_keep_seq_contiguous(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    first = await start(http, a, input={"tokens": 3, "delay_ms": 1})
    cid = first["conversation_id"]
    # Ten starts at once, alternating nodes: B forwards to the owner (A).
    runs = await asyncio.gather(*(
        start(http, (a, b)[i % 2], conversation_id=cid, input={"tokens": 5, "delay_ms": 1},
              multitask="parallel")
        for i in range(10)))
    assert {r["conversation_id"] for r in runs} == {cid}
    for r in runs:
        await read_events(http, url(b, f"/v1/runs/{r['run_id']}/events"))
    events = await conversation_events(http, url(b, ""), cid)
    check_conversation(events)
    assert sum(e["type"] == "done" for e in events) == 11
    # Every run was numbered by A, the owner; B only forwarded and followed.
    assert a.app[STATE].engine.peers.owns(cid) and not b.app[STATE].engine.peers.owns(cid)
    follower = b.app[STATE].engine.conversations.cached(cid)
    assert follower is None or follower.follower


async def test_cancel_from_b_is_idempotent_and_reaches_the_run_on_a(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    run = await start(http, a, input={"tokens": 100_000, "delay_ms": 10})
    stream = asyncio.create_task(read_events(http, url(b, f"/v1/runs/{run['run_id']}/events")))
    await asyncio.sleep(0.2)
    async with http.post(url(b, f"/v1/runs/{run['run_id']}/cancel")) as resp:
        assert resp.status == 202, await resp.text()
    async with http.post(url(b, f"/v1/runs/{run['run_id']}/cancel")) as resp:
        assert resp.status in (200, 202)
    events = await asyncio.wait_for(stream, 20)
    assert check_run_stream(events)["status"] == "cancelled"
    async with http.post(url(b, f"/v1/runs/{run['run_id']}/cancel")) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "cancelled"


async def test_websocket_on_b_starts_answers_and_cancels_runs_owned_by_a(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    owned = await start(http, a, input={"tokens": 1, "delay_ms": 1})
    await read_events(http, url(a, f"/v1/runs/{owned['run_id']}/events"))
    cid = owned["conversation_id"]
    async with http.ws_connect(url(b, "/v1/ws")) as ws:
        await ws.send_json({"type": "start", "ref": "s1", "agent": "demo",
                            "conversation_id": cid, "input": ASK})
        events: list[dict[str, Any]] = []
        run_id = None
        async with asyncio.timeout(20):
            async for msg in ws:
                frame = msg.json()
                if frame["type"] == "ack" and frame.get("ref") == "s1":
                    run_id = frame["run_id"]
                elif frame["type"] == "event":
                    event = frame["event"]
                    events.append(event)
                    if event["type"] == "require_user_input":
                        await ws.send_json({"type": "input", "ref": "i1", "run_id": run_id,
                                            "request_id": event["data"]["request_id"],
                                            "value": "ws"})
                    if event["type"] == "done":
                        break
                elif frame["type"] == "error":
                    raise AssertionError(frame)
        assert check_run_stream(events)["status"] == "completed"
        # The run ran on A (the owner), though this socket is on B.
        async with http.get(url(a, f"/v1/runs/{run_id}")) as resp:
            assert (await resp.json())["status"] == "completed"
        await ws.send_json({"type": "start", "ref": "s2", "agent": "demo",
                            "conversation_id": cid,
                            "input": {"tokens": 100_000, "delay_ms": 10}})
        long_events: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            async for msg in ws:
                frame = msg.json()
                if frame["type"] == "ack" and frame.get("ref") == "s2":
                    await ws.send_json({"type": "cancel", "ref": "c1",
                                        "run_id": frame["run_id"]})
                elif frame["type"] == "event":
                    long_events.append(frame["event"])
                    if frame["event"]["type"] == "done":
                        break
        assert check_run_stream(long_events)["status"] == "cancelled"
    check_conversation(await conversation_events(http, url(a, ""), cid))


async def test_last_event_id_resume_on_the_other_node(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    run = await start(http, a, input={"tokens": 60, "delay_ms": 5})
    first: list[dict[str, Any]] = []
    async with http.get(url(a, f"/v1/runs/{run['run_id']}/events")) as resp:
        async for frame in iter_frames(resp):
            if frame.data:
                first.append(frame.json)
                if len(first) == 10:
                    break
    rest = await read_events(http, url(b, f"/v1/runs/{run['run_id']}/events"),
                             headers={"Last-Event-ID": str(first[-1]["seq"])})
    check_run_stream(first + rest)


async def test_a_follower_never_judges_last_event_id_by_a_stale_counter(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    run = await start(http, a, input={"tokens": 2, "delay_ms": 1})
    await read_events(http, url(a, f"/v1/runs/{run['run_id']}/events"))
    cid = run["conversation_id"]
    await conversation_events(http, url(b, ""), cid, settle=0.1)  # B caches a follower
    later = await start(http, a, conversation_id=cid, input={"tokens": 30, "delay_ms": 1})
    events = await read_events(http, url(a, f"/v1/runs/{later['run_id']}/events"))
    last = events[-1]["seq"]
    tail = await read_events(http, url(b, f"/v1/runs/{later['run_id']}/events"),
                             headers={"Last-Event-ID": str(last - 3)})
    assert [e["seq"] for e in tail] == [last - 2, last - 1, last]


async def test_each_node_sweeps_only_the_conversations_it_owns(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    on_a = await start(http, a, input={"tokens": 1, "delay_ms": 1})
    on_b = await start(http, b, input={"tokens": 1, "delay_ms": 1})
    for node, run in ((a, on_a), (b, on_b)):
        await read_events(http, url(node, f"/v1/runs/{run['run_id']}/events"))
    future = 1 << 50  # every conversation is idle "before" this
    store_a, store_b = a.app[STATE].store, b.app[STATE].store
    assert await store_a.expirable(future, 100) == [on_a["conversation_id"]]
    assert await store_b.expirable(future, 100) == [on_b["conversation_id"]]
    deleted = await store_b.expire_conversations([on_b["conversation_id"]], future)
    assert deleted == [on_b["conversation_id"]]
    b.app[STATE].engine.conversations.end_expiry([], deleted)
    assert not b.app[STATE].engine.peers.owns(on_b["conversation_id"])
    for node in (a, b):  # gone for every node alike
        async with http.post(url(node, "/v1/runs"), json={
                "agent": "demo", "conversation_id": on_b["conversation_id"]}) as resp:
            assert resp.status == 410


async def test_a_client_leaving_node_b_cancels_its_on_disconnect_run_on_a(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    owned = await start(http, a, input={"tokens": 1, "delay_ms": 1})
    cid = owned["conversation_id"]
    body = {"agent": "demo", "conversation_id": cid, "on_disconnect": "cancel",
            "input": {"tokens": 100_000, "delay_ms": 10}}
    run_id = None
    async with http.post(url(b, "/v1/runs"), json=body,
                         headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 200
        async for frame in iter_frames(resp):
            if frame.data:
                run_id = frame.json["run_id"]
                break  # the client goes away mid-run
    assert run_id is not None
    async with asyncio.timeout(20):
        while True:
            async with http.get(url(a, f"/v1/runs/{run_id}")) as r:
                info = await r.json()
            if info["status"] == "cancelled":
                break
            await asyncio.sleep(0.05)
    check_run_stream(await read_events(http, url(b, f"/v1/runs/{run_id}/events")))
    # The same over a WebSocket on B that closes.
    async with http.ws_connect(url(b, "/v1/ws")) as ws:
        await ws.send_json({"type": "start", "ref": "s", "agent": "demo",
                            "conversation_id": cid, "on_disconnect": "cancel",
                            "input": {"tokens": 100_000, "delay_ms": 10}})
        async with asyncio.timeout(20):
            async for msg in ws:
                frame = msg.json()
                if frame["type"] == "ack":
                    ws_run = frame["run_id"]
                    break
    async with asyncio.timeout(20):
        while True:
            async with http.get(url(a, f"/v1/runs/{ws_run}")) as r:
                if (await r.json())["status"] == "cancelled":
                    break
            await asyncio.sleep(0.05)
