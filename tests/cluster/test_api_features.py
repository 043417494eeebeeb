"""The API issue's start features in a cluster: the conversation's owning node decides the
idempotency key and the multitask policy of a start sent to any node; DELETE, listings and
queued runs work from a node that does not own the conversation."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from app.state import STATE
from tests.cluster.check import check_conversation, check_run_stream
from tests.cluster.conftest import NodeFactory
from tests.conftest import url
from tests.run_client import conversation_events
from tests.sse_client import read_events

LONG = {"tokens": 100_000, "delay_ms": 10}


async def post(http: aiohttp.ClientSession, node: Any, body: dict[str, Any],
               key: str | None = None) -> tuple[int, dict[str, Any]]:
    body = {"agent": "demo", **body}
    headers = {"Idempotency-Key": key} if key is not None else {}
    async with http.post(url(node, "/v1/runs"), json=body, headers=headers) as resp:
        return resp.status, dict(await resp.json())


async def test_a_keyed_start_sent_to_both_nodes_at_once_starts_one_run(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    body = {"input": {"tokens": 3, "delay_ms": 1}}
    results = await asyncio.gather(*(post(http, n, body, key="k-1") for n in (a, b, a, b)))
    assert {status for status, _ in results} == {202}, results
    assert len({r["run_id"] for _, r in results}) == 1, results
    assert sum(not r.get("replayed", False) for _, r in results) == 1, results
    run_id = results[0][1]["run_id"]
    check_run_stream(await read_events(http, url(b, f"/v1/runs/{run_id}/events")))
    # The key replays later on either node; another body under it is refused.
    for node in (a, b):
        status, again = await post(http, node, body, key="k-1")
        assert (status, again["run_id"], again["replayed"]) == (202, run_id, True)
        status, other = await post(http, node, {"input": {"tokens": 4}}, key="k-1")
        assert status == 409 and other["error"]["code"] == "idempotency_key_reused"
    # A keyed start in a named conversation owned by A, sent to B, is keyed on A.
    cid = results[0][1]["conversation_id"]
    named = {"conversation_id": cid, "input": {"tokens": 2, "delay_ms": 1}}
    status, first = await post(http, b, named, key="k-2")
    assert status == 202 and not first.get("replayed", False)
    status, second = await post(http, a, named, key="k-2")
    assert (status, second["run_id"], second["replayed"]) == (202, first["run_id"], True)
    check_run_stream(await read_events(http, url(a, f"/v1/runs/{first['run_id']}/events")))


async def test_the_owner_applies_the_multitask_policy_of_a_forwarded_start(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    status, busy = await post(http, a, {"input": LONG})
    assert status == 202
    cid = busy["conversation_id"]
    status, refused = await post(http, b, {"conversation_id": cid, "input": {"tokens": 1}})
    assert status == 409 and refused["error"]["code"] == "conversation_busy"
    status, queued = await post(http, b, {"conversation_id": cid, "multitask": "enqueue",
                                          "input": {"tokens": 2, "delay_ms": 1}})
    assert status == 202 and queued["status"] == "queued"
    status, second = await post(http, b, {"conversation_id": cid, "multitask": "enqueue",
                                          "input": {"tokens": 2, "delay_ms": 1}})
    assert status == 202 and second["status"] == "queued"
    # The queue lives on the owner: cancelling a queued run from B reaches it there.
    async with http.post(url(b, f"/v1/runs/{second['run_id']}/cancel")) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "cancelled"
    assert a.app[STATE].engine.starts.queued(queued["run_id"]) is not None
    status, interrupting = await post(http, b, {
        "conversation_id": cid, "multitask": "interrupt", "input": {"tokens": 2, "delay_ms": 1}})
    assert status == 202, interrupting
    ends = {}
    for run in (busy, queued, second, interrupting):
        ends[run["run_id"]] = check_run_stream(
            await read_events(http, url(b, f"/v1/runs/{run['run_id']}/events")))["status"]
    assert [ends[r["run_id"]] for r in (busy, queued, second, interrupting)] == [
        "cancelled", "cancelled", "cancelled", "completed"]
    events = await conversation_events(http, url(a, ""), cid)
    check_conversation(events)
    assert sum(e["type"] == "done" for e in events) == 4


async def test_delete_and_listings_from_a_node_that_does_not_own_the_conversation(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    a = await start_node()
    b = await start_node()
    status, run = await post(http, a, {"input": LONG})
    assert status == 202
    cid = run["conversation_id"]
    stream = asyncio.create_task(read_events(http, url(b, f"/v1/runs/{run['run_id']}/events")))
    async with http.get(url(b, "/v1/conversations")) as resp:
        listed = [c["conversation_id"] for c in (await resp.json())["conversations"]]
    assert cid in listed
    async with http.get(url(b, "/v1/runs"), params={"conversation_id": cid}) as resp:
        assert [r["run_id"] for r in (await resp.json())["runs"]] == [run["run_id"]]
    await asyncio.sleep(0.2)
    async with http.delete(url(b, f"/v1/conversations/{cid}")) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["cancelled_runs"] == [run["run_id"]]
    assert check_run_stream(await asyncio.wait_for(stream, 20))["status"] == "cancelled"
    for node in (a, b):
        async with http.get(url(node, f"/v1/conversations/{cid}")) as resp:
            assert resp.status == 410, (node, await resp.text())
        async with http.get(url(node, f"/v1/runs/{run['run_id']}")) as resp:
            assert resp.status == 410


async def test_concurrent_acquisitions_of_a_conversation_adopt_it_once(
    start_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    """Eight starts of one new conversation at once claim it once: a second adoption would
    run ``end_orphans`` again and could end the first start's run a second time (found by
    the keyed-start race of tests/api/test_starts.py run on a cluster node)."""
    a = await start_node()
    peers = a.app[STATE].engine.peers
    adopted: list[list[str]] = []
    on_acquired = peers.on_acquired

    async def counting(cids: list[str]) -> None:
        adopted.append(cids)
        await asyncio.sleep(0.05)  # an adoption that takes a while: the others must wait
        await on_acquired(cids)

    peers.on_acquired = counting
    assert await asyncio.gather(*(peers.acquire("c_once") for _ in range(8))) == [None] * 8
    assert adopted == [["c_once"]]
    status, run = await post(http, a, {"conversation_id": "c_once", "input": {"tokens": 2}})
    assert status == 202 and adopted == [["c_once"]]
    check_run_stream(await read_events(http, url(a, f"/v1/runs/{run['run_id']}/events")))
