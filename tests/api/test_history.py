"""Reads around the stream (issue 16): conversation and run listings, a run's output, JSON
event pages, DELETE; owner-scoped. Real server, real SQLite file, real HTTP client."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import LiveServer, ServerFactory, url
from tests.run_client import done_of, stream_run
from tests.sse_client import iter_frames

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"
KEYS = f"{ALICE}=alice,{BOB}=bob"
JSON = {"Accept": "application/json"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def get(http: aiohttp.ClientSession, server: LiveServer, path: str,
              headers: dict[str, str] | None = None, **params: Any) -> tuple[int, Any]:
    async with http.get(url(server, path), headers=headers or {}, params=params) as r:
        return r.status, await r.json()


async def start(http: aiohttp.ClientSession, server: LiveServer, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with http.post(url(server, "/v1/runs"), json=body, headers=headers or {}) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


def check_stream(events: list[dict[str, Any]]) -> None:
    """Contiguous seq; every run in it has exactly one done, last of its events, counting
    them."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    runs: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["run_id"] is not None:
            runs.setdefault(e["run_id"], []).append(e)
    for mine in runs.values():
        done_of(mine)


async def all_pages(http: aiohttp.ClientSession, server: LiveServer, cid: str,
                    limit: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        status, page = await get(http, server, f"/v1/conversations/{cid}/events", JSON,
                                 after=after, limit=limit)
        assert status == 200, page
        assert len(page["events"]) <= limit
        events += page["events"]
        after = page["next_after"]
    return events


async def test_run_output_is_assembled_from_its_events(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await stream_run(http, server, {"agent": "demo", "input": {
        "tokens": 7, "delay_ms": 0, "reasoning": True, "tool_call": True}})
    done_of(events)
    status, run = await get(http, server, f"/v1/runs/{events[0]['run_id']}")
    assert status == 200
    out = run["output"]
    chunks = "".join(e["data"]["delta"] for e in events if e["type"] == "message_chunk")
    final = [e["data"]["text"] for e in events if e["type"] == "message"]
    assert final == [chunks] and out["text"] == chunks
    assert out["messages"] == [{"text": chunks, "complete": True,
                                "item_id": next(e["item_id"] for e in events
                                                if e["type"] == "message")}]
    completed = next(e for e in events if e["type"] == "tool_call_completed")
    assert out["tool_calls"] == [{"name": completed["data"]["name"], "complete": True,
                                  "item_id": completed["item_id"],
                                  "arguments": completed["data"]["arguments"],
                                  "result": completed["data"]["result"]}]
    reasoning = next(e for e in events if e["type"] == "reasoning_completed")
    assert [r["text"] for r in out["reasoning"]] == [reasoning["data"]["text"]]
    assert run["status"] == "completed" and run["events"] == len(events)
    _, plain = await get(http, server, f"/v1/runs/{events[0]['run_id']}", output="0")
    assert "output" not in plain and plain["run_id"] == run["run_id"]


async def test_listing_pages_filters_and_details(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(auth="token", api_keys=KEYS)
    made = []
    for i in range(5):
        run = await start(http, server, {
            "agent": "demo", "conversation_id": f"c{i}", "metadata": {"team": "red" if i % 2
                                                                      else "blue"},
            "input": {"tokens": 1, "delay_ms": 0}}, auth(ALICE))
        made.append(run)
        await asyncio.sleep(0.002)  # distinct created_at, so "newest first" is checkable
    waiting = await start(http, server, {"agent": "demo", "conversation_id": "asks",
                                         "input": {"tokens": 1, "delay_ms": 0,
                                                   "ask": "ok?"}}, auth(ALICE))
    await start(http, server, {"agent": "demo", "conversation_id": "bobs",
                               "input": {"tokens": 1, "delay_ms": 0}}, auth(BOB))
    await until_status(http, server, waiting["run_id"], "waiting_input", auth(ALICE))
    for run in made:
        await until_status(http, server, run["run_id"], "completed", auth(ALICE))

    ids: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        status, page = await get(http, server, "/v1/conversations", auth(ALICE), **params)
        assert status == 200, page
        ids += [c["conversation_id"] for c in page["conversations"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids == ["asks", "c4", "c3", "c2", "c1", "c0"]  # newest first, Bob's not there

    _, red = await get(http, server, "/v1/conversations", auth(ALICE), **{"metadata.team": "red"})
    assert [c["conversation_id"] for c in red["conversations"]] == ["c3", "c1"]
    _, asking = await get(http, server, "/v1/conversations", auth(ALICE), status="waiting_input")
    assert [c["conversation_id"] for c in asking["conversations"]] == ["asks"]
    _, by_agent = await get(http, server, "/v1/conversations", auth(ALICE), agent="nobody")
    assert by_agent["conversations"] == []
    _, bobs = await get(http, server, "/v1/conversations", auth(BOB))
    assert [c["conversation_id"] for c in bobs["conversations"]] == ["bobs"]

    status, detail = await get(http, server, "/v1/conversations/c3", auth(ALICE))
    assert status == 200 and [r["run_id"] for r in detail["runs"]] == [made[3]["run_id"]]
    assert detail["runs"][0]["metadata"] == {"team": "red"}
    status, runs = await get(http, server, "/v1/runs", auth(ALICE), conversation_id="c3")
    assert status == 200 and runs["runs"] == detail["runs"] and runs["next_after"] is None

    # A stranger gets exactly the unknown-id answer.
    stranger = await get(http, server, "/v1/conversations/c3", auth(BOB))
    unknown = await get(http, server, "/v1/conversations/zz", auth(BOB))
    assert stranger[0] == unknown[0] == 404
    assert stranger[1]["error"]["code"] == unknown[1]["error"]["code"] == "conversation_not_found"
    assert (await get(http, server, "/v1/runs", auth(BOB), conversation_id="c3"))[0] == 404
    assert (await get(http, server, f"/v1/runs/{made[3]['run_id']}", auth(BOB)))[0] == 404


async def until_status(http: aiohttp.ClientSession, server: LiveServer, run_id: str,
                       want: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            _, run = await get(http, server, f"/v1/runs/{run_id}", headers)
            if run["status"] == want:
                return dict(run)
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("path,params,code,status", [
    ("/v1/conversations", {"cursor": "not-a-cursor!"}, "invalid_cursor", 400),
    ("/v1/conversations", {"limit": "0"}, "invalid_limit", 422),
    ("/v1/conversations", {"limit": "²"}, "invalid_limit", 422),
    ("/v1/conversations", {"status": "sleeping"}, "invalid_status", 422),
    ("/v1/conversations", {"metadata.a b": "x"}, "invalid_metadata_filter", 422),
    ("/v1/runs", {}, "invalid_id", 422),
    ("/v1/runs", {"conversation_id": "nope"}, "conversation_not_found", 404),
])
async def test_bad_queries_are_coded(server: LiveServer, http: aiohttp.ClientSession,
                                     path: str, params: dict[str, str], code: str,
                                     status: int) -> None:
    got = await get(http, server, path, **params)
    assert got[0] == status and got[1]["error"]["code"] == code, got


async def test_json_event_pages_equal_the_sse_replay(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    counted = 1  # conversation_started
    for _ in range(3):
        events = await stream_run(http, server, {"agent": "demo", "conversation_id": "pg",
                                                 "input": {"tokens": 5, "delay_ms": 0}})
        counted += done_of(events)["events"]
    paged = await all_pages(http, server, "pg", limit=4)
    check_stream(paged)
    assert paged[0]["seq"] == 1 and len(paged) == counted
    async with http.get(url(server, "/v1/conversations/pg/events")) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        replay = []
        async for frame in iter_frames(r):
            if frame.data:
                replay.append(frame.json)
            if len(replay) == len(paged):
                break
    assert replay == paged
    status, body = await get(http, server, "/v1/conversations/pg/events", JSON, after=10_000)
    assert (status, body["error"]["code"]) == (400, "invalid_last_event_id")


async def test_delete_ends_open_runs_then_the_conversation_is_gone(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    run = await start(http, server, {"agent": "demo", "conversation_id": "del",
                                     "input": {"tokens": 2, "delay_ms": 0, "ask": "?"}})
    await until_status(http, server, run["run_id"], "waiting_input")
    async with http.get(url(server, run["events_url"])) as stream:
        async with http.delete(url(server, "/v1/conversations/del")) as r:
            assert r.status == 200, await r.text()
            assert await r.json() == {"conversation_id": "del", "deleted": True,
                                      "cancelled_runs": [run["run_id"]]}
        events = [f.json async for f in iter_frames(stream) if f.data]
    assert done_of(events)["status"] == "cancelled"
    check_stream(events)
    for path in ("/v1/conversations/del", f"/v1/runs/{run['run_id']}",
                 "/v1/conversations/del/events"):
        status, body = await get(http, server, path)
        assert status == 410, (path, body)
    status, body = await get(http, server, "/v1/conversations")
    assert "del" not in [c["conversation_id"] for c in body["conversations"]]
    async with http.delete(url(server, "/v1/conversations/del")) as r:
        assert r.status == 410
