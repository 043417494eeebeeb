"""Real ``python -m app`` processes on one PostgreSQL + Redis, behind a round-robin proxy:
runs started, watched, answered and cancelled across nodes; a node SIGKILLed mid-run; a
node paused past its lease (a zombie) that comes back fenced. Every stream is checked
lossless and duplicate-free against ``done.data.events``."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster.check import check_conversation, check_run_stream
from tests.cluster.rr_proxy import RoundRobinProxy
from tests.process import ServerProcess
from tests.run_client import conversation_events
from tests.services import PG_DSN, REDIS_URL, pg_schema, redis_prefix, schema_dsn
from tests.sse_client import EventSource

LEASE = "2"


@pytest.fixture
async def cluster_args() -> AsyncIterator[list[str]]:
    async with pg_schema() as schema, redis_prefix() as prefix:
        yield ["--store", schema_dsn(schema, PG_DSN), "--bus", REDIS_URL,
               "--cluster-name", prefix, "--lease-seconds", LEASE]


@pytest.fixture
async def nodes(cluster_args: list[str], tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    procs = [ServerProcess(tmp_path / f"node{i}.db", *cluster_args) for i in range(3)]
    try:
        for p in procs:
            await p.start()
        yield procs
    finally:
        for p in procs:
            if p.proc is not None and p.proc.poll() is None:
                with __import__("contextlib").suppress(ProcessLookupError):
                    os.kill(p.proc.pid, signal.SIGCONT)
            p.stop()


@pytest.fixture
async def proxy(nodes: list[ServerProcess]) -> AsyncIterator[RoundRobinProxy]:
    rr = RoundRobinProxy([("127.0.0.1", p.port) for p in nodes])
    await rr.start()
    yield rr
    await rr.close()


async def start(http: aiohttp.ClientSession, base: str, **body: Any) -> dict[str, Any]:
    body.setdefault("agent", "demo")
    async with http.post(base + "/v1/runs", json=body) as resp:
        assert resp.status == 202, await resp.text()
        return dict(await resp.json())


async def follow(http: aiohttp.ClientSession, base: str, run_id: str) -> list[dict[str, Any]]:
    """Read a run to its ``done`` through the balancer, reconnecting with Last-Event-ID
    whenever the node serving the stream goes away."""
    source = EventSource(http, f"{base}/v1/runs/{run_id}/events")
    async with asyncio.timeout(60):
        while not source.events or source.events[-1]["type"] != "done":
            try:
                status = await source.connect_once()
            except (aiohttp.ClientError, ConnectionError):
                await asyncio.sleep(0.1)
                continue
            if status == 204:
                break
            if status != 200:
                await asyncio.sleep(0.1)
    return source.events


async def test_runs_across_three_nodes_survive_a_sigkill(
    nodes: list[ServerProcess], proxy: RoundRobinProxy
) -> None:
    victim = nodes[0]
    async with aiohttp.ClientSession() as http:
        # Conversations owned by the victim (started on it directly), and by the others.
        doomed = [await start(http, victim.base, input={"tokens": 100_000, "delay_ms": 10})
                  for _ in range(3)]
        # Started on the nodes that live, never through the balancer: a survivor the
        # balancer put on the victim would end ``interrupted`` if not finished by the kill.
        survivors = [await start(http, node.base, input={"tokens": 40, "delay_ms": 10})
                     for node in (nodes[1], nodes[2], nodes[1])]
        streams = [asyncio.create_task(follow(http, proxy.base, r["run_id"]))
                   for r in doomed + survivors]
        await asyncio.sleep(0.5)
        victim.kill()
        results = await asyncio.gather(*streams)
        for run, events in zip(doomed + survivors, results, strict=True):
            done = check_run_stream(events)
            if run in doomed:
                assert done["status"] == "interrupted"
                assert done["error"]["code"] == "node_lost"
            else:
                assert done["status"] == "completed"
        # The survivors now own the dead node's conversations: new runs there work.
        cid = doomed[0]["conversation_id"]
        again = await start(http, proxy.base, conversation_id=cid,
                            input={"tokens": 3, "delay_ms": 1})
        check_run_stream(await follow(http, proxy.base, again["run_id"]))
        check_conversation(await conversation_events(http, nodes[1].base, cid))


async def test_answer_and_cancel_through_the_balancer(
    nodes: list[ServerProcess], proxy: RoundRobinProxy
) -> None:
    async with aiohttp.ClientSession() as http:
        run = await start(http, proxy.base, input={"tokens": 3, "delay_ms": 1, "ask": "go?"})
        stream = asyncio.create_task(follow(http, proxy.base, run["run_id"]))
        request_id = None
        async with asyncio.timeout(20):
            while request_id is None:
                async with http.get(f"{proxy.base}/v1/runs/{run['run_id']}") as resp:
                    info = await resp.json()
                if info["status"] == "waiting_input":
                    request_id = info["pending_input"]["request_id"]
                await asyncio.sleep(0.02)
        answers = await asyncio.gather(*(
            http.post(f"{proxy.base}/v1/runs/{run['run_id']}/input",
                      json={"request_id": request_id, "value": i}) for i in range(3)))
        statuses = sorted(r.status for r in answers)
        bodies = [await r.text() for r in answers]
        assert statuses == [200, 409, 409], bodies
        assert check_run_stream(await stream)["status"] == "completed"
        long = await start(http, proxy.base, input={"tokens": 100_000, "delay_ms": 10})
        stream = asyncio.create_task(follow(http, proxy.base, long["run_id"]))
        for _ in range(3):  # each through a different node
            async with http.post(f"{proxy.base}/v1/runs/{long['run_id']}/cancel") as resp:
                assert resp.status in (200, 202), await resp.text()
        assert check_run_stream(await stream)["status"] == "cancelled"
    assert len(proxy.served) == 3, "the balancer spread the connections over every node"


async def test_a_paused_node_past_its_lease_is_fenced_when_it_wakes(
    nodes: list[ServerProcess], proxy: RoundRobinProxy
) -> None:
    zombie = nodes[0]
    assert zombie.proc is not None
    async with aiohttp.ClientSession() as http:
        run = await start(http, zombie.base, input={"tokens": 100_000, "delay_ms": 5})
        cid = run["conversation_id"]
        stream = asyncio.create_task(follow(http, nodes[1].base, run["run_id"]))
        await asyncio.sleep(0.3)
        os.kill(zombie.proc.pid, signal.SIGSTOP)  # a GC pause, a frozen VM...
        done = check_run_stream(await stream)  # a survivor ended it once the lease ran out
        assert done["status"] == "interrupted"
        os.kill(zombie.proc.pid, signal.SIGCONT)
        # The zombie's queued writes are refused (fenced) and it exits on its own.
        async with asyncio.timeout(30):
            while zombie.proc.poll() is None:
                await asyncio.sleep(0.1)
        events = await conversation_events(http, nodes[1].base, cid)
        check_conversation(events)
        assert events[-1]["type"] == "done", "nothing was written after the takeover's done"
        log = zombie.log_path.read_text()
        assert "store_units_rejected" in log, "the zombie did try to write, and was refused"
        assert "node_fenced" in log


async def test_workers_share_one_port_as_separate_nodes(
    cluster_args: list[str], tmp_path: Path
) -> None:
    import asyncpg

    server = ServerProcess(tmp_path / "w.db", *cluster_args, "--workers", "2")
    await server.start()
    try:
        schema = cluster_args[1].split("search_path=")[1]
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:  # both workers registered (the first one made it ready)
                    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
                    live = await conn.fetchval("SELECT count(*) FROM nodes WHERE NOT dead")
                    await conn.close()
                    if live == 2:
                        break
                    await asyncio.sleep(0.1)
            runs = [await start(http, server.base, input={"tokens": 5, "delay_ms": 1})
                    for _ in range(6)]
            for run in runs:
                check_run_stream(await follow(http, server.base, run["run_id"]))
        assert server.terminate() < 20
        assert server.proc is not None and server.proc.returncode == 0
    finally:
        server.stop()
