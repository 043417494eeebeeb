"""SSE end to end through a real server socket and a real SQLite file."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import LiveServer, ServerFactory, url
from tests.helpers import assert_contiguous, post_run
from tests.sse_client import EventSource, iter_frames, read_events


async def test_post_runs_streams_sse_with_headers_and_ask_round_trip(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    body = {"agent": "demo", "input": {"text": "hi", "tokens": 20, "ask": "Proceed?",
                                       "delay_ms": 1}}
    seen: list[dict[str, Any]] = []
    async with http.post(url(server, "/v1/runs"), json=body,
                         headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        first = True
        async for frame in iter_frames(resp):
            if first:
                assert frame.retry is not None, "first frame carries retry"
                first = False
            if not frame.data:
                continue
            ev = frame.json
            assert frame.id == str(ev["seq"]) and frame.event == ev["type"]
            seen.append(ev)
            if ev["type"] == "require_user_input":
                run_id, rq = ev["run_id"], ev["data"]["request_id"]
                async with http.post(url(server, f"/v1/runs/{run_id}/input"),
                                     json={"request_id": rq, "value": "yes"}) as r:
                    assert r.status == 200, await r.text()
            if ev["type"] == "done":
                break
    types = [e["type"] for e in seen]
    assert types[0] == "run_started"
    for t in ("reasoning_started", "reasoning", "tool_call_started", "tool_call_completed",
              "require_user_input", "user_input_received"):
        assert t in types
    assert types.count("message_chunk") == 20
    assert seen[-1]["data"]["status"] == "completed"
    assert seen[-1]["data"]["events"] == len(seen)
    assert_contiguous(seen)
    assert seen[-2]["data"]["text"] == "You answered: yes"


@pytest.mark.parametrize("replay_cache_bytes", [64 * 1024 * 1024, 0])
async def test_flaky_event_source_gets_every_event_once_then_204(
    start_server: ServerFactory, http: aiohttp.ClientSession, replay_cache_bytes: int
) -> None:
    """Both catch-up sources: the in-memory window and (with it off) the store."""
    server = await start_server(replay_cache_bytes=replay_cache_bytes)
    run = await post_run(http, server, input={"tokens": 60, "delay_ms": 2})
    es = EventSource(http, url(server, run["events_url"]))
    for _ in range(200):
        status = await es.connect_once(max_events=7)
        if status == 204:
            break
    else:
        raise AssertionError("never got 204")
    assert es.events[-1]["type"] == "done"
    assert_contiguous(es.events)
    assert len({e["seq"] for e in es.events}) == len(es.events)
    assert es.events[-1]["data"]["events"] == len(es.events)
    assert es.connects > 5


async def test_query_last_event_id_resumes_for_browsers(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    run = await post_run(http, server, input={"tokens": 5, "delay_ms": 0})
    full = await read_events(http, url(server, run["events_url"]))
    middle = full[4]["seq"]
    rest = await read_events(http, url(server, run["events_url"] + f"?last_event_id={middle}"))
    assert [e["seq"] for e in rest] == [e["seq"] for e in full if e["seq"] > middle]
    # the header wins over the query
    rest2 = await read_events(http, url(server, run["events_url"] + "?last_event_id=1"),
                              headers={"Last-Event-ID": str(middle)})
    assert rest2 == rest


async def test_conversation_stream_spans_runs_and_stays_open(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    r1 = await post_run(http, server, input={"tokens": 3, "delay_ms": 0}, conversation_id="conv-1")
    await read_events(http, url(server, r1["events_url"]))
    got: list[dict[str, Any]] = []

    async def reader() -> None:
        async with http.get(url(server, "/v1/conversations/conv-1/events")) as resp:
            async for frame in iter_frames(resp):
                if frame.data:
                    got.append(frame.json)
                    if sum(e["type"] == "done" for e in got) == 2:
                        return

    task = asyncio.create_task(reader())
    r2 = await post_run(http, server, input={"tokens": 3, "delay_ms": 0}, conversation_id="conv-1")
    await asyncio.wait_for(task, 10)
    assert got[0]["type"] == "conversation_started"
    assert {e["run_id"] for e in got if e["run_id"]} == {r1["run_id"], r2["run_id"]}
    assert_contiguous(got)


async def test_heartbeat_comment_when_idle(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(heartbeat=0.2)
    run = await post_run(http, server, input={"tokens": 0, "ask": "wait", "reasoning": False,
                                           "tool_call": False})
    pings = 0
    async with http.get(url(server, run["events_url"])) as resp:
        async for frame in iter_frames(resp):
            pings += "ping" in frame.comments
            if pings >= 2:
                break
    assert pings >= 2


async def test_vanished_client_is_removed_within_a_heartbeat(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    from app.state import STATE

    server = await start_server(heartbeat=0.3)
    st = server.app[STATE]
    run = await post_run(http, server, input={"tokens": 0, "ask": "wait", "reasoning": False,
                                           "tool_call": False})
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"GET {run['events_url']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    deadline = time.monotonic() + 5
    while not st.sinks and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(st.sinks) == 1
    writer.transport.abort()  # the client vanishes without a goodbye
    gone_at = time.monotonic()
    while st.sinks and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not st.sinks, "sink not removed"
    assert time.monotonic() - gone_at < 0.3 * 2 + 0.5
    assert st.hub.subscriber_count() == 0
    # the run outlives its viewers
    assert run["run_id"] in st.engine.active


async def test_on_disconnect_cancel_cancels_the_run(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    body = {"agent": "demo", "input": {"tokens": 0, "ask": "wait"}, "on_disconnect": "cancel"}
    async with http.post(url(server, "/v1/runs"), json=body,
                         headers={"Accept": "text/event-stream"}) as resp:
        async for frame in iter_frames(resp):
            if frame.event == "run_started":
                run_id = frame.json["run_id"]
            if frame.event == "require_user_input":
                break
        resp.close()
    for _ in range(100):
        async with http.get(url(server, f"/v1/runs/{run_id}")) as r:
            info = await r.json()
        if info["status"] == "cancelled":
            break
        await asyncio.sleep(0.05)
    assert info["status"] == "cancelled"


async def test_run_outlives_a_closed_tab_by_default(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    body = {"agent": "demo", "input": {"tokens": 30, "delay_ms": 5}}
    async with http.post(url(server, "/v1/runs"), json=body,
                         headers={"Accept": "text/event-stream"}) as resp:
        async for frame in iter_frames(resp):
            if frame.event == "run_started":
                run_id = frame.json["run_id"]
                break
        resp.close()
    events = await read_events(http, url(server, f"/v1/runs/{run_id}/events"))
    assert events[-1]["data"]["status"] == "completed"


async def test_cancel_is_idempotent(server: LiveServer, http: aiohttp.ClientSession) -> None:
    run = await post_run(http, server, input={"tokens": 0, "ask": "wait"})
    cancel = url(server, f"/v1/runs/{run['run_id']}/cancel")
    async with http.post(cancel) as r1:
        assert r1.status == 202
    events = await read_events(http, url(server, run["events_url"]))
    assert events[-1]["data"]["status"] == "cancelled"
    assert [e["type"] for e in events].count("done") == 1
    assert "run_cancelling" in [e["type"] for e in events]
    for _ in range(2):
        async with http.post(cancel) as r:
            assert r.status == 200
            assert (await r.json())["status"] == "cancelled"


async def test_agent_failure_ends_with_one_failed_done(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    run = await post_run(http, server, input={"tokens": 2, "delay_ms": 0, "fail": True})
    events = await read_events(http, url(server, run["events_url"]))
    done = events[-1]
    assert done["type"] == "done" and done["data"]["status"] == "failed"
    assert done["data"]["error"]["code"] == "demo_failure"
    assert [e["type"] for e in events].count("done") == 1


async def test_input_race_first_answer_wins(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    run = await post_run(http, server, input={"tokens": 0, "ask": "pick", "reasoning": False,
                                           "tool_call": False, "delay_ms": 0})
    request_id = None
    async with http.get(url(server, run["events_url"])) as resp:
        async for frame in iter_frames(resp):
            if frame.event == "require_user_input":
                request_id = frame.json["data"]["request_id"]
                break
    answer = url(server, f"/v1/runs/{run['run_id']}/input")

    async def post(value: str) -> int:
        async with http.post(answer, json={"request_id": request_id, "value": value}) as r:
            return r.status

    statuses = await asyncio.gather(*(post(f"v{i}") for i in range(5)))
    assert sorted(statuses) == [200, 409, 409, 409, 409]
    events = await read_events(http, url(server, run["events_url"]))
    received = [e for e in events if e["type"] == "user_input_received"]
    assert len(received) == 1
