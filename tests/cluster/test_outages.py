"""PostgreSQL or Redis going away under a cluster node (a proxy in front of each that the
test takes down and brings back on the same port; the machine's services keep running):
readiness says so, new runs get a coded 503, an open run ends with a coded ``done`` and
nothing is silently dropped; when the dependency returns, the node recovers by itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.schedules.scheduler import SCHEDULER
from app.server import create_app
from app.state import STATE
from tests.agents.tcp_proxy import TcpProxy
from tests.cluster.check import check_run_stream
from tests.conftest import LiveServer, make_settings, url
from tests.services import pg_schema, redis_prefix
from tests.sse_client import read_events


class Switch(TcpProxy):
    """A proxy that can refuse connections (down) and accept again on the same port (up)."""

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)


@pytest.fixture
async def switches() -> AsyncIterator[tuple[Switch, Switch]]:
    pg, rd = Switch("127.0.0.1", 5432), Switch("127.0.0.1", 6379)
    await pg.start()
    await rd.start()
    yield pg, rd
    await pg.close()
    await rd.close()


@pytest.fixture
async def node(switches: tuple[Switch, Switch], tmp_path: Path) -> AsyncIterator[LiveServer]:
    pg, rd = switches
    async with pg_schema() as schema, redis_prefix() as prefix:
        settings = make_settings(
            tmp_path / "unused.db", store=f"postgresql://postgres@127.0.0.1:{pg.port}/test"
            f"?search_path={schema}", bus=f"redis://127.0.0.1:{rd.port}/0",
            cluster_name=prefix, lease_seconds=30.0, store_fail_timeout=1.0, ack_timeout=2.0)
        server = LiveServer(create_app(settings))
        await server.start()
        yield server
        await server.close()


async def ready(http: aiohttp.ClientSession, node: LiveServer) -> tuple[int, str]:
    async with http.get(url(node, "/readyz")) as resp:
        return resp.status, (await resp.json())["status"]


async def until_ready_is(http: aiohttp.ClientSession, node: LiveServer,
                         want: tuple[int, str]) -> None:
    async with asyncio.timeout(30):
        while await ready(http, node) != want:
            await asyncio.sleep(0.1)


async def start(
    http: aiohttp.ClientSession, node: LiveServer, **input: Any
) -> aiohttp.ClientResponse:
    return await http.post(url(node, "/v1/runs"), json={"agent": "demo", "input": input})


async def test_redis_down_means_unready_and_503_then_recovers(
    node: LiveServer, switches: tuple[Switch, Switch], http: aiohttp.ClientSession
) -> None:
    _, rd = switches
    assert await ready(http, node) == (200, "ready")
    await rd.down()
    await until_ready_is(http, node, (503, "bus_unavailable"))
    async with await start(http, node, tokens=1) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "bus_unavailable"
    await rd.up()
    await until_ready_is(http, node, (200, "ready"))
    async with await start(http, node, tokens=5, delay_ms=1) as resp:
        assert resp.status == 202
        run = await resp.json()
    check_run_stream(await read_events(http, url(node, f"/v1/runs/{run['run_id']}/events")))


async def test_postgres_down_ends_open_runs_coded_refuses_new_ones_and_recovers(
    node: LiveServer, switches: tuple[Switch, Switch], http: aiohttp.ClientSession
) -> None:
    pg, _ = switches
    async with await start(http, node, tokens=100_000, delay_ms=5) as resp:
        run = await resp.json()
    stream = asyncio.create_task(
        read_events(http, url(node, f"/v1/runs/{run['run_id']}/events")))
    await asyncio.sleep(0.3)
    await pg.down()
    await until_ready_is(http, node, (503, "store_unavailable"))
    async with await start(http, node, tokens=1) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "store_unavailable"
    async with http.get(url(node, f"/v1/runs/{run['run_id']}")) as resp:
        # The open run is still served from memory; a read of the store would be a 503.
        assert resp.status in (200, 503)
    # Past store_fail_timeout the open run is ended (its done waits for the database).
    engine = node.app[STATE].engine
    async with asyncio.timeout(30):
        while engine.active and all(r.failure is None for r in engine.active.values()):
            await asyncio.sleep(0.05)
    await pg.up()
    await until_ready_is(http, node, (200, "ready"))
    done = check_run_stream(await asyncio.wait_for(stream, 30))
    assert done["status"] == "failed" and done["error"]["code"] == "store_unavailable"
    async with await start(http, node, tokens=3, delay_ms=1) as resp:
        assert resp.status == 202
        again = await resp.json()
    check_run_stream(await read_events(http, url(node, f"/v1/runs/{again['run_id']}/events")))


async def test_shared_schedules_go_on_firing_after_postgres_comes_back(
    node: LiveServer, switches: tuple[Switch, Switch], http: aiohttp.ClientSession
) -> None:
    """While PostgreSQL is away a firing can neither be claimed nor start a run (each is a
    logged pass of the scheduler, never its end); once it returns, firings resume."""
    pg, _ = switches
    async with http.post(url(node, "/v1/schedules"), json={
            "agent": "demo", "interval_seconds": 1.0, "conversation_id": "tick",
            "input": {"tokens": 1, "delay_ms": 0, "reasoning": False,
                      "tool_call": False}}) as r:
        assert r.status == 201, await r.text()
        sid = (await r.json())["schedule_id"]
    scheduler = node.app[SCHEDULER]
    await pg.down()
    await asyncio.sleep(3)  # several due times pass with the database away
    assert scheduler._task is not None and not scheduler._task.done()
    await pg.up()
    await until_ready_is(http, node, (200, "ready"))
    before = scheduler.get(sid).fires
    async with asyncio.timeout(30):
        while scheduler.get(sid).fires < before + 2:
            await asyncio.sleep(0.1)
    runs: list[Any] = []
    async with http.get(url(node, "/v1/runs?conversation_id=tick&limit=100")) as r:
        assert r.status == 200
        runs = (await r.json())["runs"]
    assert len(runs) >= before + 2
    for run in runs[-2:]:
        check_run_stream(await read_events(http, url(node, f"/v1/runs/{run['run_id']}/events")))
