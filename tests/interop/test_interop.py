"""Clients nobody here wrote, against a real server: httpx-sse (no phantom empty events
from ``retry:`` or ``: ping``), websockets, npm ``eventsource`` (resumes and stops on the
204 after done), and a browser's native EventSource in Chromium."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import httpx
import httpx_sse
import websockets

from tests.browser.driver import browser
from tests.conftest import LiveServer, ServerFactory, url
from tests.jsenv import JS_DIR, node_modules


def assert_one_run(events: list[dict[str, Any]]) -> dict[str, Any]:
    types = [e["type"] for e in events]
    assert types.count("done") == 1 and types[-1] == "done", types[-5:]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert events[-1]["data"]["events"] == len(events)
    return dict(events[-1]["data"])


async def test_httpx_sse_sees_no_phantom_event(start_server: ServerFactory) -> None:
    """Heartbeats every 0.05 s while a question waits: many pings, no empty event."""
    server = await start_server(heartbeat=0.05)
    body = {"agent": "demo", "input": {"tokens": 5, "delay_ms": 0, "ask": "ok?"}}
    got: list[httpx_sse.ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=30) as http, httpx_sse.aconnect_sse(
        http, "POST", url(server, "/v1/runs"), json=body,
        headers={"Accept": "text/event-stream"},
    ) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            got.append(sse)
            event = json.loads(sse.data)
            if event["type"] == "require_user_input":
                await asyncio.sleep(0.5)  # ~10 heartbeats go by
                r = await http.post(url(server, f"/v1/runs/{event['run_id']}/input"),
                                    json={"request_id": event["data"]["request_id"],
                                          "value": "y"})
                assert r.status_code == 200
            if event["type"] == "done":
                break
    # every dispatched SSE event is a real one: data, and the SSE name is its type
    assert all(sse.data and sse.event == json.loads(sse.data)["type"] for sse in got), [
        (s.event, s.data[:30]) for s in got if not s.data]
    assert got[0].retry is not None  # the retry hint rides on the first real event
    events = [json.loads(s.data) for s in got]
    assert [str(e["seq"]) for e in events] == [s.id for s in got]
    assert assert_one_run(events)["status"] == "completed"


async def test_websockets_library_start_and_resume(server: LiveServer) -> None:
    ws_url = url(server, "/v1/ws").replace("http://", "ws://")
    first: list[dict[str, Any]] = []
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "start", "ref": "a", "agent": "demo",
                                  "input": {"tokens": 40, "delay_ms": 2}}))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "ack" and ack["ref"] == "a"
        while len(first) < 10:
            frame = json.loads(await ws.recv())
            if frame["type"] == "event":
                first.append(frame["event"])
    rest: list[dict[str, Any]] = []
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "ref": "b", "run_id": ack["run_id"],
                                  "after": first[-1]["seq"]}))
        while not rest or rest[-1]["type"] != "done":
            frame = json.loads(await ws.recv())
            if frame["type"] == "event":
                rest.append(frame["event"])
    assert_one_run(first + rest)


async def test_npm_eventsource_reads_to_done_and_stops_on_204(server: LiveServer) -> None:
    node_modules()
    async with httpx.AsyncClient() as http:
        r = await http.post(url(server, "/v1/runs"), json={
            "agent": "demo", "input": {"tokens": 30, "delay_ms": 1}})
        run = r.json()
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS_DIR / "eventsource_client.mjs"), url(server, run["events_url"]),
        cwd=JS_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out, err)
    result = json.loads(out)
    assert result["readyState"] == 2
    assert assert_one_run(result["events"])["status"] == "completed"


async def test_browser_native_eventsource_resumes_and_stops_on_204(server: LiveServer) -> None:
    """Plain ``new EventSource(url)`` with ``addEventListener`` per type in Chromium: the
    server ends the response after done, the browser reconnects with Last-Event-ID, gets
    204 and stops (readyState CLOSED)."""
    async with httpx.AsyncClient() as http:
        r = await http.post(url(server, "/v1/runs"), json={
            "agent": "demo", "input": {"tokens": 25, "delay_ms": 1}})
        run = r.json()
    async with browser() as page:
        await page.open(url(server, "/"))
        await page.eval(f"""(() => {{
            window.got = [];
            const es = window.es = new EventSource({json.dumps(run['events_url'])});
            for (const t of ["run_started","reasoning_started","reasoning","reasoning_completed",
                             "tool_call_started","tool_call_completed","message_chunk","done"])
                es.addEventListener(t, (m) => window.got.push(JSON.parse(m.data)));
            // the protocol's own ``message`` type is the SSE default name: onmessage
            es.onmessage = (m) => window.got.push(JSON.parse(m.data));
        }})()""")
        await page.wait("window.es.readyState === 2")
        events = await page.eval("window.got")
    assert assert_one_run(events)["status"] == "completed"
