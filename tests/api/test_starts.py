"""Idempotent starts and the multitask policy (issue 16), through real sockets and a real
SQLite file; a restart is a real second server on the same file, a crash a SIGKILLed
process."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from tests.api.test_history import KEYS, auth, check_stream, get, until_status
from tests.api.test_ws import is_event, send, until, ws_url
from tests.conftest import LiveServer, ServerFactory, url
from tests.process import ServerProcess
from tests.run_client import conversation_events, done_of
from tests.sse_client import iter_frames

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"
SSE = {"Accept": "text/event-stream"}


async def post(http: aiohttp.ClientSession, base: LiveServer | str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    address = base + "/v1/runs" if isinstance(base, str) else url(base, "/v1/runs")
    async with http.post(address, json=body, headers=headers or {}) as r:
        return r.status, await r.json()


def asking(cid: str, **extra: Any) -> dict[str, Any]:
    return {"agent": "demo", "conversation_id": cid, **extra,
            "input": {"tokens": 2, "delay_ms": 0, "ask": "go?"}}


def quick(cid: str, **extra: Any) -> dict[str, Any]:
    return {"agent": "demo", "conversation_id": cid, **extra,
            "input": {"tokens": 3, "delay_ms": 0}}


def by_run(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["run_id"] is not None:
            runs.setdefault(e["run_id"], []).append(e)
    return runs


async def conversation_until_done(http: aiohttp.ClientSession, server: LiveServer, cid: str,
                                  run_ids: list[str]) -> list[dict[str, Any]]:
    for run_id in run_ids:
        await until_done(http, server, run_id)
    events = await conversation_events(http, server, cid)
    check_stream(events)
    return events


async def until_done(http: aiohttp.ClientSession, server: LiveServer | str, run_id: str,
                     headers: dict[str, str] | None = None) -> dict[str, Any]:
    address = server if isinstance(server, str) else url(server, "")
    async with asyncio.timeout(15):
        while True:
            async with http.get(f"{address}/v1/runs/{run_id}", headers=headers or {}) as r:
                run = await r.json()
            if run.get("done_seq") is not None:
                return dict(run)
            await asyncio.sleep(0.02)


# ---- idempotency --------------------------------------------------------------------------


async def test_same_key_same_run_other_body_409_other_user_own_run(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth="token", api_keys=KEYS)
    key = {"Idempotency-Key": "order-42"}
    s1, first = await post(http, server, quick("k1"), {**auth(ALICE), **key})
    s2, again = await post(http, server, quick("k1"), {**auth(ALICE), **key})
    s3, other = await post(http, server, quick("k1", metadata={"x": 1}), {**auth(ALICE), **key})
    s4, bobs = await post(http, server, quick("kb"), {**auth(BOB), **key})
    assert (s1, s2, s3, s4) == (202, 202, 409, 202)
    assert again["run_id"] == first["run_id"] and again["replayed"] is True
    assert "replayed" not in first
    assert other["error"]["code"] == "idempotency_key_reused"
    assert bobs["run_id"] != first["run_id"]
    _, runs = await get(http, server, "/v1/runs", auth(ALICE), conversation_id="k1")
    assert [r["run_id"] for r in runs["runs"]] == [first["run_id"]]
    for bad in ("", "é", "x" * 256, "a b"):
        async with http.post(url(server, "/v1/runs"), json=quick("k2"),
                             headers={**auth(ALICE), "Idempotency-Key": bad}) as r:
            assert r.status == 422 and (await r.json())["error"]["code"] == \
                "invalid_idempotency_key", bad


async def test_concurrent_posts_with_one_key_make_one_run(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    """The race written down in engine/starts.py: the first start's single flight is
    registered before its first await, so the others wait for it."""
    key = {"Idempotency-Key": "race-1"}
    results = await asyncio.gather(*[post(http, server, quick("race"), key) for _ in range(8)])
    assert {status for status, _ in results} == {202}
    assert len({body["run_id"] for _, body in results}) == 1
    assert sorted(body.get("replayed", False) for _, body in results) == [False] + [True] * 7
    events = await conversation_until_done(http, server, "race", [results[0][1]["run_id"]])
    assert len(by_run(events)) == 1


async def test_a_retried_streaming_post_resumes_its_own_stream(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    body = {"agent": "demo", "conversation_id": "resume",
            "input": {"tokens": 40, "delay_ms": 2}}
    headers = {**SSE, "Idempotency-Key": "stream-1"}
    first: list[dict[str, Any]] = []
    async with http.post(url(server, "/v1/runs"), json=body, headers=headers) as r:
        async for frame in iter_frames(r):
            if frame.data:
                first.append(frame.json)
            if len(first) == 5:
                break  # the connection drops mid-run
    rest: list[dict[str, Any]] = []
    async with http.post(url(server, "/v1/runs"), json=body,
                         headers={**headers, "Last-Event-ID": str(first[-1]["seq"])}) as r:
        assert r.status == 200
        async for frame in iter_frames(r):
            if frame.data:
                rest.append(frame.json)
    events = first + rest
    done_of(events)
    check_stream(events)
    assert len({e["run_id"] for e in events}) == 1
    # ... and once the client has the done, a retry is told so (204), as EventSource expects
    async with http.post(url(server, "/v1/runs"), json=body,
                         headers={**headers, "Last-Event-ID": str(events[-1]["seq"])}) as r:
        assert r.status == 204


async def test_keys_survive_a_restart(
    start_server: ServerFactory, http: aiohttp.ClientSession, db_path: Path
) -> None:
    server = await start_server()
    _, first = await post(http, server, quick("persist"), {"Idempotency-Key": "p-1"})
    await until_done(http, server, first["run_id"])
    await server.close()
    again = await start_server(db=db_path)
    status, replay = await post(http, again, quick("persist"), {"Idempotency-Key": "p-1"})
    assert status == 202 and replay["run_id"] == first["run_id"] and replay["replayed"]
    assert replay["status"] == "completed"


async def test_websocket_start_with_a_key_twice(server: LiveServer) -> None:
    async with connect(ws_url(server)) as ws:
        start = {"type": "start", "agent": "demo", "conversation_id": "wsk",
                 "idempotency_key": "w-1", "input": {"tokens": 3, "delay_ms": 0}}
        await send(ws, ref="a", **start)
        frames = await until(ws, lambda f: is_event(f, "done"))
        ack = frames[0]
        events = [f["event"] for f in frames if f["type"] == "event"]
        done_of(events)
        await send(ws, ref="b", **start, after=events[2]["seq"])
        frames = await until(ws, lambda f: is_event(f, "done"))
    assert frames[0]["type"] == "ack" and frames[0]["run_id"] == ack["run_id"]
    assert frames[0]["replayed"] is True and "replayed" not in ack
    assert [f["event"] for f in frames[1:]] == events[3:]


# ---- multitask ----------------------------------------------------------------------------


async def test_reject_is_the_default_and_parallel_is_asked_for(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    _, a = await post(http, server, asking("mt"))
    await until_status(http, server, a["run_id"], "waiting_input")
    status, refused = await post(http, server, quick("mt"))
    assert (status, refused["error"]["code"]) == (409, "conversation_busy")
    status, b = await post(http, server, quick("mt", multitask="parallel"))
    assert status == 202
    async with http.post(url(server, f"/v1/runs/{a['run_id']}/cancel"), json={}) as r:
        assert r.status in (200, 202)
    events = await conversation_until_done(http, server, "mt", [a["run_id"], b["run_id"]])
    assert set(by_run(events)) == {a["run_id"], b["run_id"]}  # the refused one left no trace


async def test_enqueue_runs_after_in_order(server: LiveServer, http: aiohttp.ClientSession) -> None:
    _, a = await post(http, server, asking("q"))
    await until_status(http, server, a["run_id"], "waiting_input")
    _, b = await post(http, server, quick("q", multitask="enqueue"))
    _, c = await post(http, server, quick("q", multitask="enqueue"))
    assert b["status"] == c["status"] == "queued"
    _, run_a = await get(http, server, f"/v1/runs/{a['run_id']}")
    request_id = run_a["pending_input"]["request_id"]
    async with http.post(url(server, f"/v1/runs/{a['run_id']}/input"),
                         json={"request_id": request_id, "value": "ok"}) as r:
        assert r.status == 200
    events = await conversation_until_done(http, server, "q",
                                           [a["run_id"], b["run_id"], c["run_id"]])
    runs = by_run(events)
    order = [a["run_id"], b["run_id"], c["run_id"]]
    for earlier, later in itertools.pairwise(order):
        assert runs[earlier][-1]["seq"] < runs[later][0]["seq"]  # done, then the next starts
        assert done_of(runs[later])["status"] == "completed"


async def test_a_queued_run_cancelled_ends_with_one_done(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    _, a = await post(http, server, asking("qc"))
    await until_status(http, server, a["run_id"], "waiting_input")
    _, b = await post(http, server, quick("qc", multitask="enqueue"))
    async with http.get(url(server, b["events_url"])) as stream:
        async with http.post(url(server, f"/v1/runs/{b['run_id']}/cancel"), json={}) as r:
            assert r.status == 200 and (await r.json())["status"] == "cancelled"
        events = [f.json async for f in iter_frames(stream) if f.data]
    assert [e["type"] for e in events] == ["done"]
    assert done_of(events) == {"status": "cancelled", "events": 1}


async def test_a_queued_run_whose_streaming_client_leaves_is_cancelled(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    """``on_disconnect: cancel`` holds before the run starts: a tab closed while its run
    waits in the queue does not leave that run to start later for nobody."""
    _, a = await post(http, server, asking("qd"))
    await until_status(http, server, a["run_id"], "waiting_input")
    body = quick("qd", multitask="enqueue", on_disconnect="cancel")
    async with http.post(url(server, "/v1/runs"), json=body, headers=SSE) as stream:
        assert stream.status == 200
        _, listed = await get(http, server, "/v1/runs", conversation_id="qd")
        (queued,) = [r for r in listed["runs"] if r["run_id"] != a["run_id"]]
        assert queued["status"] == "queued"
    run_id = queued["run_id"]  # the client is gone: the queued run ends before it starts
    run = await until_done(http, server, run_id)
    assert run["status"] == "cancelled"
    # the active run was not touched: it still waits for its answer
    assert (await until_status(http, server, a["run_id"], "waiting_input")).get("done_seq") is None
    async with http.post(url(server, f"/v1/runs/{a['run_id']}/cancel"), json={}) as r:
        assert r.status in (200, 202)  # 202: the cancel is durable, the run still ending
    await until_done(http, server, a["run_id"])
    events = await conversation_events(http, server, "qd")
    check_stream(events)
    assert [e["type"] for e in by_run(events)[run_id]] == ["done"]


async def test_the_queue_is_bounded(server: LiveServer, http: aiohttp.ClientSession) -> None:
    _, a = await post(http, server, asking("qf"))
    await until_status(http, server, a["run_id"], "waiting_input")
    statuses = [(await post(http, server, quick("qf", multitask="enqueue")))[0]
                for _ in range(16)]
    status, full = await post(http, server, quick("qf", multitask="enqueue"))
    assert statuses == [202] * 16
    assert (status, full["error"]["code"]) == (429, "queue_full")


async def test_interrupt_cancels_the_active_run_then_starts(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    _, a = await post(http, server, asking("it"))
    await until_status(http, server, a["run_id"], "waiting_input")
    status, b = await post(http, server, quick("it", multitask="interrupt"))
    assert status == 202 and b["status"] == "running"
    events = await conversation_until_done(http, server, "it", [a["run_id"], b["run_id"]])
    runs = by_run(events)
    assert done_of(runs[a["run_id"]])["status"] == "cancelled"
    assert runs[a["run_id"]][-1]["seq"] < runs[b["run_id"]][0]["seq"]
    assert done_of(runs[b["run_id"]])["status"] == "completed"


async def test_answer_policy_answers_the_open_question(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    _, a = await post(http, server, asking("an"))
    await until_status(http, server, a["run_id"], "waiting_input")
    body = {"agent": "demo", "conversation_id": "an", "multitask": "answer", "input": "yes"}
    rest: list[dict[str, Any]] = []
    keyed = {**SSE, "Idempotency-Key": "answer-1"}
    async with http.post(url(server, "/v1/runs"), json=body, headers=keyed) as r:
        assert r.status == 200
        async for frame in iter_frames(r):
            if frame.data:
                rest.append(frame.json)
    assert rest[0]["type"] == "user_input_received" and rest[0]["data"]["value"] == "yes"
    assert {e["run_id"] for e in rest} == {a["run_id"]}
    events = await conversation_until_done(http, server, "an", [a["run_id"]])
    assert done_of(by_run(events)[a["run_id"]])["status"] == "completed"
    # a retry of the answering POST replays the answered run, it starts nothing
    status, retry = await post(http, server, body, {"Idempotency-Key": "answer-1"})
    assert (status, retry["run_id"], retry["replayed"]) == (202, a["run_id"], True)
    assert "You answered: yes" in [e["data"].get("text") for e in events]
    # with nothing waiting, an answer-start is a plain start
    status, c = await post(http, server, quick("an", multitask="answer"))
    assert status == 202 and c["run_id"] != a["run_id"]


async def test_queued_runs_end_interrupted_after_a_crash(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    proc = ServerProcess(tmp_path / "crash.db")
    await proc.start()
    try:
        _, a = await post(http, proc.base, asking("cr"))
        async with asyncio.timeout(10):
            while (await (await http.get(f"{proc.base}/v1/runs/{a['run_id']}")).json())[
                    "status"] != "waiting_input":
                await asyncio.sleep(0.02)
        _, b = await post(http, proc.base, quick("cr", multitask="enqueue"))
        assert b["status"] == "queued"
        proc.kill()
        await proc.start()
        run_b = await until_done(http, proc.base, b["run_id"])
        run_a = await until_done(http, proc.base, a["run_id"])
        assert run_b["status"] == run_a["status"] == "interrupted"
        assert run_b["error"]["code"] == "server_restarted" and run_b["events"] == 1
    finally:
        proc.stop()
