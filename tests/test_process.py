"""The real process: CLI, SIGKILL and restart, SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.process import ServerProcess
from tests.sse_client import iter_frames, read_events


@pytest.fixture
async def procs() -> AsyncIterator[list[ServerProcess]]:
    made: list[ServerProcess] = []
    yield made
    for p in made:
        p.stop()


def test_help_lists_flags_with_env() -> None:
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--host", "--port", "--db", "--heartbeat", "--log-format"):
        assert flag in out
    assert "AGENTSTREAM_PORT" in out


def test_invalid_config_is_refused_at_start() -> None:
    res = subprocess.run([sys.executable, "-m", "app", "--heartbeat", "0"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "heartbeat" in res.stderr
    res = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True,
                         env={"AGENTSTREAM_PORT": "http"})
    assert res.returncode == 2 and "AGENTSTREAM_PORT" in res.stderr


async def test_sigkill_keeps_stored_events_and_restart_interrupts_open_runs(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    db = tmp_path / "kill.db"
    first = ServerProcess(db)
    procs.append(first)
    await first.start()
    async with aiohttp.ClientSession() as http:
        async with http.post(first.base + "/v1/runs", json={
            "agent": "demo", "conversation_id": "conv-k",
            "input": {"tokens": 100000, "delay_ms": 5}}) as r:
            run = await r.json()
        seen: list[dict] = []  # type: ignore[type-arg]
        async with http.get(first.base + run["events_url"]) as resp:
            async for frame in iter_frames(resp):
                if frame.data:
                    seen.append(frame.json)
                    if len(seen) >= 40:
                        break
        first.kill()

        second = ServerProcess(db, port=first.port)
        procs.append(second)
        await second.start()
        events = await read_events(http, second.base + run["events_url"])
        # every event a client saw was stored; the run ended interrupted, exactly once
        assert events[: len(seen)] == seen
        assert [e["seq"] for e in events] == list(range(events[0]["seq"],
                                                        events[0]["seq"] + len(events)))
        done = events[-1]
        assert done["type"] == "done" and done["data"]["status"] == "interrupted"
        assert done["data"]["events"] == len(events)
        assert [e["type"] for e in events].count("done") == 1
        async with http.get(second.base + f"/v1/runs/{run['run_id']}") as r:
            assert (await r.json())["status"] == "interrupted"
        # the conversation goes on with fresh seqs, none reused
        async with http.post(second.base + "/v1/runs", json={
            "agent": "demo", "conversation_id": "conv-k",
            "input": {"tokens": 1, "delay_ms": 0}}) as r:
            run2 = await r.json()
        events2 = await read_events(http, second.base + run2["events_url"])
        assert events2[0]["seq"] == done["seq"] + 1


async def test_sigterm_ends_runs_interrupted_and_closes_streams(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path / "term.db", "--shutdown-grace", "3")
    procs.append(server)
    await server.start()
    async with aiohttp.ClientSession() as http:
        async with http.post(server.base + "/v1/runs", json={
            "agent": "demo", "input": {"tokens": 100000, "delay_ms": 10}}) as r:
            run = await r.json()
        got: list[dict] = []  # type: ignore[type-arg]
        retry_seen = False

        async def reader() -> None:
            nonlocal retry_seen
            async with http.get(server.base + run["events_url"]) as resp:
                async for frame in iter_frames(resp):
                    if frame.data:
                        got.append(frame.json)
                    if frame.retry is not None and got:
                        retry_seen = True

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.5)
        took = await asyncio.to_thread(server.terminate)
        await asyncio.wait_for(task, 5)
        assert took < 3 + 2
        assert got[-1]["type"] == "done" and got[-1]["data"]["status"] == "interrupted"
