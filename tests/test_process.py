"""The real process: CLI, SIGKILL and restart, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import check_run
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


async def test_sigterm_under_load_with_stalled_clients_then_everyone_resumes(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    """Bug it pins: a client that never reads must not hold shutdown past its grace."""
    import socket

    db = tmp_path / "load.db"
    server = ServerProcess(db, "--shutdown-grace", "2", "--write-timeout", "30")
    procs.append(server)
    await server.start()
    async with aiohttp.ClientSession() as http:
        runs = []
        for i in range(5):
            async with http.post(server.base + "/v1/runs", json={
                "agent": "demo", "conversation_id": f"load-{i}",
                "input": {"tokens": 100000, "delay_ms": 1}}) as r:
                runs.append(await r.json())
        # stalled raw clients that never read
        stalled = []
        for run in runs:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            s.sendall(f"GET {run['events_url']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            stalled.append(s)
        seen: dict[str, list[dict]] = {r["run_id"]: [] for r in runs}  # type: ignore[type-arg]

        async def reader(run: dict) -> None:  # type: ignore[type-arg]
            try:
                async with http.get(server.base + run["events_url"]) as resp:
                    async for frame in iter_frames(resp):
                        if frame.data:
                            seen[run["run_id"]].append(frame.json)
            except aiohttp.ClientError:
                pass

        tasks = [asyncio.create_task(reader(r)) for r in runs]
        await asyncio.sleep(1.0)
        took = await asyncio.to_thread(server.terminate)
        assert took < 2 + 2.5, f"shutdown took {took:.1f}s"
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for s in stalled:
            s.close()

        restarted = ServerProcess(db, port=server.port)
        procs.append(restarted)
        await restarted.start()
        for run in runs:
            got = seen[run["run_id"]]
            last = str(got[-1]["seq"]) if got else "0"
            if got and got[-1]["type"] == "done":
                async with http.get(restarted.base + run["events_url"],
                                    headers={"Last-Event-ID": last}) as r:
                    assert r.status == 204
                rest: list[dict] = []  # type: ignore[type-arg]
            else:
                rest = await read_events(http, restarted.base + run["events_url"],
                                         headers={"Last-Event-ID": last})
            full = got + rest
            seqs = [e["seq"] for e in full]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gap, no duplicate"
            assert full[-1]["type"] == "done"
            assert full[-1]["data"]["status"] == "interrupted"
            assert full[-1]["data"]["events"] == len(full)


async def test_metrics_exposes_the_operational_series(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path / "m.db")
    procs.append(server)
    await server.start()
    async with aiohttp.ClientSession() as http:
        async with http.post(server.base + "/v1/runs", json={
                "agent": "demo", "input": {"tokens": 3, "delay_ms": 0, "ask": "x"}}) as r:
            run = await r.json()
        async with http.get(server.base + run["events_url"]) as resp:
            async for frame in iter_frames(resp):
                if frame.event == "require_user_input":
                    break
            async with http.get(server.base + "/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
    for series in (
        'agentstream_connections{transport="sse"} 1.0',
        "agentstream_events_published_total",
        'agentstream_events_delivered_total{transport="sse"}',
        'agentstream_sink_queue_events{transport="sse"}',
        'agentstream_sink_lagging_subscriptions{transport="sse"}',
        "agentstream_store_batch_ops_bucket",
        "agentstream_store_batch_seconds_bucket",
        "agentstream_store_pending_ops",
        'agentstream_runs_active{status="waiting_input"} 1.0',
        "agentstream_input_requests_pending 1.0",
    ):
        assert series in text, series


async def test_second_instance_on_the_same_database_exits_at_once_having_written_nothing(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    """Issue 10 bug 2: a second process ran recovery over the first one's live runs."""
    db = tmp_path / "shared.db"
    first = ServerProcess(db)
    procs.append(first)
    await first.start()
    async with aiohttp.ClientSession() as http:
        async with http.post(first.base + "/v1/runs", json={
                "agent": "demo", "input": {"tokens": 1000, "delay_ms": 5}}) as r:
            assert r.status == 202
            run = await r.json()
        before = db.stat().st_mtime_ns, (tmp_path / "shared.db-wal").stat().st_size
        second = subprocess.run(
            [sys.executable, "-m", "app", "--port", "0", "--db", str(db)],
            capture_output=True, text=True, timeout=30)
        assert second.returncode == 4
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another agentstream process" in lines[0]
        assert db.stat().st_mtime_ns == before[0]
        # the first process is unharmed: its run goes on and its events are delivered
        async with http.get(f"{first.base}/v1/runs/{run['run_id']}") as r:
            assert (await r.json())["status"] == "running"
        async with http.get(f"{first.base}/readyz") as r:
            assert r.status == 200


async def test_port_in_use_is_one_line_and_touches_no_database(tmp_path: Path,
                                                               procs: list[ServerProcess]) -> None:
    first = ServerProcess(tmp_path / "a.db")
    procs.append(first)
    await first.start()
    other = tmp_path / "b.db"
    res = subprocess.run(
        [sys.executable, "-m", "app", "--port", str(first.port), "--db", str(other)],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 3
    assert len(res.stderr.strip().splitlines()) == 1 and "cannot listen" in res.stderr
    assert not other.exists()


async def test_memory_database_serves_a_run(tmp_path: Path) -> None:
    """Issue 10 bug 15: ``--db :memory:`` was offered by --help but crashed at start."""
    proc = ServerProcess(Path(":memory:"))
    proc.log_path = tmp_path / "mem.log"
    try:
        await proc.start()
        async with aiohttp.ClientSession() as http:
            async with http.post(proc.base + "/v1/runs", json={
                    "agent": "demo", "input": {"tokens": 3, "delay_ms": 0}}) as r:
                run = await r.json()
            events = await read_events(http, proc.base + run["events_url"])
        assert [e["seq"] for e in events] == list(range(2, 2 + len(events)))
        assert events[-1]["type"] == "done" and events[-1]["data"]["events"] == len(events)
    finally:
        proc.stop()


def test_a_database_that_cannot_be_opened_is_one_line_and_exit_5(tmp_path: Path) -> None:
    """A failing disk at start (here: the database's directory is a file) is refused with one
    line, not a traceback, before anything listens or writes."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    res = subprocess.run(
        [sys.executable, "-m", "app", "--port", "0", "--db", str(blocker / "x.db")],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 5
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot open" in lines[0], res.stderr


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_each_event_loop_serves_a_streamed_run_and_says_which(
    tmp_path: Path, procs: list[ServerProcess], loop: str
) -> None:
    """``--event-loop``: both loops serve the same wire (a streamed run keeps the promise),
    and the listening line names the loop actually used."""
    proc = ServerProcess(tmp_path / "loop.db", "--event-loop", loop, "--log-level", "info",
                         "--log-format", "json")
    procs.append(proc)
    await proc.start()
    body = {"agent": "demo", "input": {"tokens": 20, "delay_ms": 1}}
    async with aiohttp.ClientSession() as http, http.post(
            proc.base + "/v1/runs", headers={"Accept": "text/event-stream"}, json=body) as r:
        assert r.status == 200
        events = [f.json async for f in iter_frames(r) if f.data]
    run_id = events[0]["run_id"]
    check_run(events, run_id)
    listening = [json.loads(line) for line in proc.log_path.read_text().splitlines()
                 if '"listening on' in line]
    assert listening and listening[0]["event_loop"] == loop
