"""SSE entry points at the edge (issues 10 and 11): HEAD is headers only, and a refused
stream start starts nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from app.state import STATE
from tests.conftest import LiveServer, ServerFactory, url
from tests.raw_http import RawConnection, build
from tests.sse_client import read_events

SSE = {"Accept": "text/event-stream"}
# A run that stays open (waiting for an answer) until cancelled.
WAITING = {"tokens": 0, "ask": "wait", "reasoning": False, "tool_call": False}


async def finished_run(server: LiveServer, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.post(url(server, "/v1/runs"),
                         json={"agent": "demo", "input": {"tokens": 2, "delay_ms": 0}}) as r:
        run = dict(await r.json())
    await read_events(http, url(server, run["events_url"]))  # returns after done
    return run


async def open_run(server: LiveServer, http: aiohttp.ClientSession, cid: str) -> dict[str, Any]:
    async with http.post(url(server, "/v1/runs"),
                         json={"agent": "demo", "conversation_id": cid, "input": WAITING}) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


# ---- HEAD: headers only, no sink -------------------------------------------------------


async def test_head_on_sse_endpoints_answers_headers_only(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    """Issue 11 item 6: a HEAD streamed event frames after the headers."""
    run = await finished_run(server, http)
    open_ = await open_run(server, http, "head-open")
    paths = [run["events_url"], f"/v1/conversations/{run['conversation_id']}/events",
             open_["events_url"], f"/v1/conversations/{open_['conversation_id']}/events"]
    heads = {}
    conn = await RawConnection.open(server)
    try:
        for path in paths:
            async with asyncio.timeout(10):
                await conn.send(build("HEAD", path, None, close=False))
                head = heads[path] = await conn.response("HEAD")
                # the next response on the same connection follows the headers directly:
                # not one byte of event stream was sent
                await conn.send(build("GET", "/healthz", None, close=False))
                after = await conn.response()
            assert head.status == 200, path
            assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert head.headers["cache-control"] == "no-cache"
            assert (after.status, after.json()) == (200, {"status": "ok"}), after.raw_head
            assert not server.app[STATE].sinks, "a HEAD opened a sink"
    finally:
        await conn.close()
    for path, head in heads.items():
        # the same status and content headers a GET answers
        async with http.get(url(server, path)) as r:
            assert r.status == head.status
            for name in ("Content-Type", "Cache-Control", "X-Accel-Buffering"):
                assert r.headers[name] == head.headers[name.lower()], name


async def test_head_answers_what_get_would_204_and_errors(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    run = await finished_run(server, http)
    done_seq = (await read_events(http, url(server, run["events_url"])))[-1]["seq"]
    for headers, status in [({"Last-Event-ID": str(done_seq)}, 204),
                            ({"Last-Event-ID": "x"}, 400), ({"Last-Event-ID": "\u00b2"}, 400)]:
        async with http.head(url(server, run["events_url"]), headers=headers) as h, \
                http.get(url(server, run["events_url"]), headers=headers) as g:
            assert h.status == g.status == status, headers
            assert await h.read() == b""
    async with http.head(url(server, "/v1/runs/r_missing/events")) as h:
        assert h.status == 404


async def test_head_holds_no_connection_slot(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(max_connections_per_user=1)
    run = await open_run(server, http, "head-slot")
    events = url(server, f"/v1/conversations/{run['conversation_id']}/events")
    for _ in range(3):
        async with http.head(events) as h:
            assert h.status == 200
    held = await http.get(events)  # the one slot: HEADs released theirs
    try:
        assert held.status == 200
        async with http.head(events) as h, http.get(events) as g:
            # when a GET would be refused, so is a HEAD, with the same status
            assert h.status == g.status == 429
    finally:
        held.close()


# ---- refusals come before the run starts -----------------------------------------------


async def test_refused_sse_start_starts_no_run_connection_limit(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """Issue 10 item 10: POST /v1/runs with Accept: text/event-stream started the run, then
    answered 429 (connection limit) while it ran."""
    server = await start_server(max_connections_per_user=1, runs_per_minute=2)
    held_run = await open_run(server, http, "held")  # 1st run of the minute
    held = await http.get(url(server, held_run["events_url"]))
    try:
        assert held.status == 200
        async with http.post(url(server, "/v1/runs"), headers=SSE, json={
                "agent": "demo", "conversation_id": "refused", "input": WAITING}) as r:
            assert r.status == 429
            assert (await r.json())["error"]["code"] == "too_many_connections"
        async with http.get(url(server, "/v1/conversations/refused/events")) as r:
            assert r.status == 404, "the refused run was started"
    finally:
        held.close()
    # and the refusal did not use up the rate window: the 2nd run of the minute starts
    async with http.post(url(server, "/v1/runs"), json={"agent": "demo", "input": WAITING}) as r:
        assert r.status == 202, await r.text()
    async with http.post(url(server, "/v1/runs"), json={"agent": "demo", "input": WAITING}) as r:
        assert r.status == 429 and (await r.json())["error"]["code"] == "rate_limited"


async def test_refused_sse_start_starts_no_run_shutting_down(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    """Issue 10 item 10: the shutdown check came after the run had started."""
    st = server.app[STATE]
    st.shutting_down = True  # what SIGTERM sets first (server._on_shutdown)
    try:
        async with http.post(url(server, "/v1/runs"), headers=SSE, json={
                "agent": "demo", "conversation_id": "late", "input": WAITING}) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "shutting_down"
    finally:
        st.shutting_down = False
    async with http.get(url(server, "/v1/conversations/late/events")) as r:
        assert r.status == 404, "the refused run was started"
