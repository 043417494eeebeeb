"""Remote agents: two real agentstream servers on two ports, one relaying the other's demo
agent; and a fake remote whose stream drops, for resume and once-only set-up."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.agents.demo import DemoAgent
from app.agents.registry import AgentRegistry
from app.agents.remote import RemoteAgent
from app.agents.remote_http import RemoteOptions
from app.state import STATE
from tests.agents.fake_remote import REQUEST_ID, RUN_ID, WORDS, FakeRemote
from tests.agents.tcp_proxy import TcpProxy
from tests.conftest import LiveServer, ServerFactory, url
from tests.run_client import done_of, stream_run, types
from tests.sse_client import read_events


def remote_agent(base: str, name: str = "far", **options: Any) -> RemoteAgent:
    opts: dict[str, Any] = {"url": base, "remote_agent": "demo", "backoff": 0.02,
                            "retries": 2, "resume_retries": 3, "cancel_timeout": 2.0}
    opts.update(options)
    return RemoteAgent(name, RemoteOptions(**opts))


@pytest.fixture
async def far(start_server: ServerFactory, tmp_path: Path) -> LiveServer:
    return await start_server(db=tmp_path / "far.db")


@pytest.fixture
async def near(start_server: ServerFactory, far: LiveServer, tmp_path: Path) -> LiveServer:
    agents = AgentRegistry([DemoAgent(), remote_agent(far.make_url(""))])
    return await start_server(db=tmp_path / "near.db", agents=agents)


async def far_runs(far: LiveServer) -> list[dict[str, Any]]:
    """The runs the remote server stored, read from its SQLite file."""
    st = far.app[STATE]
    await st.store.flush(timeout=5)
    with sqlite3.connect(st.settings.db) as db:
        rows = db.execute("SELECT record FROM runs").fetchall()
    return [json.loads(r[0]) for r in rows]


async def wait_far_status(http: aiohttp.ClientSession, far: LiveServer, run_id: str,
                          status: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            async with http.get(url(far, f"/v1/runs/{run_id}")) as resp:
                info = dict(await resp.json())
            if info["status"] == status:
                return info
            await asyncio.sleep(0.05)


def remote_tasks() -> list[str]:
    """The remote agent's own tasks still running (start, clean-up)."""
    return [t.get_name() for t in asyncio.all_tasks()
            if t.get_name().startswith("remote-") and not t.done()]


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


CONTENT_TYPES = {"reasoning_started", "reasoning", "reasoning_completed", "tool_call_started",
                 "tool_call_completed", "message_chunk", "message"}


def content(events: list[dict[str, Any]]) -> list[tuple[str, str | None, Any]]:
    return [(e["type"], e.get("item_id"), e["data"]) for e in events
            if e["type"] in CONTENT_TYPES]


async def test_remote_stream_is_relayed_event_for_event(
    near: LiveServer, far: LiveServer, http: aiohttp.ClientSession
) -> None:
    body = {"agent": "far", "input": {"text": "hi", "tokens": 8, "delay_ms": 1}}
    events = await stream_run(http, near, body)
    assert done_of(events)["status"] == "completed"
    assert {e["agent"] for e in events} == {"far"}
    assert_contiguous(events)
    [remote] = await far_runs(far)
    assert remote["status"] == "completed" and remote["agent"] == "demo"
    # Started so that a lost link cancels it there (issue 10 item 15).
    assert remote["on_disconnect"] == "cancel"
    assert remote_tasks() == []
    remote_events = await read_events(http, url(far, f"/v1/runs/{remote['run_id']}/events"))
    relayed = content(events)
    assert relayed == content(remote_events)
    assert [t for t, _, _ in relayed].count("message_chunk") == 8


async def test_remote_question_is_asked_here_and_the_answer_forwarded(
    near: LiveServer, far: LiveServer, http: aiohttp.ClientSession
) -> None:
    async def answer(event: dict[str, Any]) -> None:
        if event["type"] == "require_user_input":
            assert event["data"]["prompt"] == "Proceed?"
            assert event["data"]["choices"] == ["yes", "no"]
            async with http.post(url(near, f"/v1/runs/{event['run_id']}/input"),
                                 json={"request_id": event["data"]["request_id"],
                                       "value": "yes"}) as resp:
                assert resp.status == 200, await resp.text()

    body = {"agent": "far", "input": {"tokens": 2, "delay_ms": 1, "ask": "Proceed?",
                                      "choices": ["yes", "no"]}}
    events = await stream_run(http, near, body, on_event=answer)
    assert done_of(events)["status"] == "completed"
    got = types(events)
    assert got.count("require_user_input") == 1 and got.count("user_input_received") == 1
    assert events[-2]["data"]["text"] == "You answered: yes"
    [remote] = await far_runs(far)
    remote_events = await read_events(http, url(far, f"/v1/runs/{remote['run_id']}/events"))
    [received] = [e for e in remote_events if e["type"] == "user_input_received"]
    assert received["data"]["value"] == "yes"


async def test_local_cancel_cancels_the_remote_run(
    near: LiveServer, far: LiveServer, http: aiohttp.ClientSession
) -> None:
    chunks = 0

    async def cancel_after_three(event: dict[str, Any]) -> None:
        nonlocal chunks
        if event["type"] == "message_chunk":
            chunks += 1
            if chunks == 3:
                async with http.post(url(near, f"/v1/runs/{event['run_id']}/cancel")) as resp:
                    assert resp.status == 202

    body = {"agent": "far", "input": {"tokens": 2000, "delay_ms": 5, "reasoning": False}}
    events = await stream_run(http, near, body, on_event=cancel_after_three)
    assert done_of(events)["status"] == "cancelled"
    [remote] = await far_runs(far)
    info = await wait_far_status(http, far, remote["run_id"], "cancelled")
    assert info["events"] < 100  # it stopped long before its 2000 chunks
    assert remote_tasks() == []


async def test_remote_failure_ends_the_local_run_with_the_remote_error(
    near: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await stream_run(http, near, {"agent": "far", "input": {"tokens": 1, "fail": True}})
    done = done_of(events)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "demo_failure"
    assert "asked to fail" in done["error"]["message"]


async def test_input_the_remote_refuses_fails_with_its_reason(
    near: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await stream_run(http, near, {"agent": "far", "input": {"tokens": "many"}})
    error = done_of(events)["error"]
    assert error["code"] == "remote_http_error"
    assert "422" in error["message"] and "invalid_input" in error["message"]


async def test_remote_that_is_down_fails_remote_unavailable(
    start_server: ServerFactory, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    agent = remote_agent(f"http://127.0.0.1:{unused_tcp_port}")
    server = await start_server(agents=AgentRegistry([agent]))
    error = done_of(await stream_run(http, server, {"agent": "far", "input": "hi"}))["error"]
    assert error["code"] == "remote_unavailable"
    assert "cannot connect" in error["message"]


async def test_remote_without_that_agent_fails_clearly(
    start_server: ServerFactory, far: LiveServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    agent = remote_agent(far.make_url(""), remote_agent="nope")
    server = await start_server(db=tmp_path / "near.db", agents=AgentRegistry([agent]))
    error = done_of(await stream_run(http, server, {"agent": "far", "input": "hi"}))["error"]
    assert error["code"] == "remote_agent_unknown"
    assert "'nope'" in error["message"] and "demo" in error["message"]


@pytest.fixture
async def fake_remote() -> AsyncIterator[tuple[FakeRemote, LiveServer]]:
    fake = FakeRemote()
    server = LiveServer(fake.app())
    await server.start()
    yield fake, server
    await server.close()


async def test_dropped_remote_stream_resumes_with_last_event_id_without_gap_or_duplicate(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    fake, remote = fake_remote
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    events = await stream_run(http, server, {"agent": "far", "input": "go"})
    assert done_of(events)["status"] == "completed"
    assert [e["data"]["delta"] for e in events if e["type"] == "message_chunk"] == WORDS
    assert events[-2]["data"]["text"] == "".join(WORDS)
    # 3 events per connection: the resumes asked for what followed the last relayed seq.
    assert fake.last_event_ids == ["3", "6"]
    assert fake.cancels == []


async def test_concurrent_first_runs_set_up_the_remote_once(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    fake, remote = fake_remote
    fake.per_connection = 100
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    runs = await asyncio.gather(*(stream_run(http, server, {"agent": "far", "input": "go"})
                                  for _ in range(5)))
    assert [done_of(r)["status"] for r in runs] == ["completed"] * 5
    assert fake.agents_calls == 1


async def test_remote_stream_lost_for_good_fails_and_cancels_the_remote_run(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    fake, remote = fake_remote
    fake.start_per_connection = 2
    fake.per_connection = 0  # every resume delivers nothing and drops again
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    error = done_of(await stream_run(http, server, {"agent": "far", "input": "go"}))["error"]
    assert error["code"] == "remote_disconnected"
    assert "3 attempts" in error["message"]
    assert fake.last_event_ids == ["2", "2", "2"]
    assert fake.cancels == [RUN_ID]


async def test_local_cancel_right_at_the_start_cancels_the_real_remote_run(
    near: LiveServer, far: LiveServer, http: aiohttp.ClientSession
) -> None:
    """Issue 10 item 15, against a real remote: cancelled as soon as the local run exists
    (the start request in flight, or not sent yet), nothing is left running there."""
    warm = await stream_run(http, near, {"agent": "far", "input": {"tokens": 1}})
    assert done_of(warm)["status"] == "completed"

    async def cancel_at_once(event: dict[str, Any]) -> None:
        if event["type"] == "run_started":
            async with http.post(url(near, f"/v1/runs/{event['run_id']}/cancel")) as resp:
                assert resp.status == 202

    body = {"agent": "far", "input": {"tokens": 2000, "delay_ms": 5, "reasoning": False}}
    events = await stream_run(http, near, body, on_event=cancel_at_once)
    assert done_of(events)["status"] == "cancelled"
    assert_contiguous(events)
    later = [r for r in await far_runs(far) if r["run_id"] != warm[0]["run_id"]]
    others = [r for r in later if r["input"] != {"tokens": 1}]
    for run in others:
        await wait_far_status(http, far, run["run_id"], "cancelled")
    assert remote_tasks() == []


@pytest.mark.parametrize("hold", ["before_headers", "before_first_event"])
async def test_local_cancel_before_the_remote_run_id_is_known_still_cancels_it(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer], hold: str,
) -> None:
    """Issue 10 item 15: a local cancel while the start POST was in flight, or before the
    remote's first event, was lost (no run id to cancel): the remote run went on."""
    fake, remote = fake_remote
    fake.hold_start = hold  # type: ignore[assignment]
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))

    async def cancel_while_starting(event: dict[str, Any]) -> None:
        if event["type"] == "run_started":
            await fake.start_received.wait()  # the start request is at the remote
            async with http.post(url(server, f"/v1/runs/{event['run_id']}/cancel")) as resp:
                assert resp.status == 202
            fake.release.set()  # only now does the remote name its run

    events = await stream_run(http, server, {"agent": "far", "input": "go"},
                              on_event=cancel_while_starting)
    assert done_of(events)["status"] == "cancelled"
    assert types(events) == ["run_started", "run_cancelling", "done"]
    assert_contiguous(events)
    assert fake.starts == [{"agent": "demo", "input": "go", "on_disconnect": "cancel"}]
    assert fake.cancels == [RUN_ID]
    assert remote_tasks() == []


@pytest.mark.parametrize("hold", ["before_headers", "before_first_event"])
async def test_local_cancel_while_the_remote_stalls_closes_the_start_stream(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer], hold: str,
) -> None:
    """The remote never names its run: the wait for its id is bounded (cancel_timeout), then
    the start stream is closed, which cancels the run there by its on_disconnect."""
    fake, remote = fake_remote
    fake.hold_start = hold  # type: ignore[assignment]
    agent = remote_agent(remote.make_url(""), cancel_timeout=0.3)
    server = await start_server(agents=AgentRegistry([agent]))

    async def cancel_while_starting(event: dict[str, Any]) -> None:
        if event["type"] == "run_started":
            await fake.start_received.wait()
            async with http.post(url(server, f"/v1/runs/{event['run_id']}/cancel")) as resp:
                assert resp.status == 202

    events = await stream_run(http, server, {"agent": "far", "input": "go"},
                              on_event=cancel_while_starting)
    assert done_of(events)["status"] == "cancelled"
    async with asyncio.timeout(5):
        await fake.start_closed_by_client.wait()
    assert fake.cancels == []
    assert remote_tasks() == []


async def test_start_request_lost_after_it_was_sent_is_not_retried(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    """Retry only what is safe: the remote had the start request, a repeat could start the
    run twice."""
    fake, remote = fake_remote
    fake.vanish_start = True
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    error = done_of(await stream_run(http, server, {"agent": "far", "input": "go"}))["error"]
    assert error["code"] == "remote_unavailable"
    assert "not retried: the remote had the start request" in error["message"]
    assert len(fake.starts) == 1


async def test_lost_link_cancels_the_remote_run_and_fails_remote_disconnected(
    start_server: ServerFactory, far: LiveServer, http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The network between the two servers dies mid-run: the remote cancels its run (it was
    started with on_disconnect: cancel), the local run resumes by Last-Event-ID to the
    remote's done, relays everything once, and fails with a coded error."""
    proxy = TcpProxy(far.host, far.port)
    await proxy.start()
    try:
        agents = AgentRegistry([remote_agent(proxy.url())])
        near = await start_server(db=tmp_path / "near.db", agents=agents)
        chunks = 0

        async def cut_after_three(event: dict[str, Any]) -> None:
            nonlocal chunks
            if event["type"] == "message_chunk":
                chunks += 1
                if chunks == 3:
                    proxy.cut()

        body = {"agent": "far", "input": {"tokens": 2000, "delay_ms": 5, "reasoning": False}}
        events = await stream_run(http, near, body, on_event=cut_after_three)
        error = done_of(events)["error"]
        assert error["code"] == "remote_disconnected"
        assert "the remote cancelled the run" in error["message"]
        assert_contiguous(events)
        [remote] = await far_runs(far)
        info = await wait_far_status(http, far, remote["run_id"], "cancelled")
        assert info["events"] < 100
        # Every chunk the remote produced was relayed exactly once, in order.
        remote_events = await read_events(http, url(far, f"/v1/runs/{remote['run_id']}/events"))
        assert content(events) == content(remote_events)
        assert proxy.connections >= 2  # the stream was resumed over a new connection
        assert remote_tasks() == []
    finally:
        await proxy.close()


async def test_answer_forward_is_retried_while_the_remote_answers_503(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    """An answer is first-wins at the remote, so forwarding it again is safe: a briefly
    unavailable remote no longer fails the run."""
    fake, remote = fake_remote
    fake.ask, fake.per_connection, fake.input_failures = True, 100, 2
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    events = await stream_run(http, server, {"agent": "far", "input": "go"},
                              on_event=answer_with(http, server, "yes"))
    assert done_of(events)["status"] == "completed"
    assert types(events) == ["run_started", "require_user_input", "user_input_received",
                             "message", "done"]
    assert events[-2]["data"]["text"] == "You answered: yes"
    assert fake.inputs == [{"request_id": REQUEST_ID, "value": "yes"}] * 3


async def test_answer_forward_that_keeps_failing_fails_the_run_and_cancels_remote(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    fake, remote = fake_remote
    fake.ask, fake.per_connection, fake.input_failures = True, 100, 10
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    events = await stream_run(http, server, {"agent": "far", "input": "go"},
                              on_event=answer_with(http, server, "no"))
    error = done_of(events)["error"]
    assert error["code"] == "remote_unavailable"
    assert "could not forward the answer" in error["message"] and "503" in error["message"]
    assert len(fake.inputs) == 3
    assert fake.cancels == [RUN_ID]
    assert remote_tasks() == []


async def test_remote_question_survives_a_dropped_stream(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    """The stream drops right after the question: the answer is still forwarded and the
    resumed stream goes on after it, without asking twice."""
    fake, remote = fake_remote
    fake.ask, fake.per_connection = True, 2
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    events = await stream_run(http, server, {"agent": "far", "input": "go"},
                              on_event=answer_with(http, server, "yes"))
    assert done_of(events)["status"] == "completed"
    assert types(events).count("require_user_input") == 1
    assert events[-2]["data"]["text"] == "You answered: yes"
    assert fake.last_event_ids == ["2", "4"]
    assert fake.inputs == [{"request_id": REQUEST_ID, "value": "yes"}]


def answer_with(http: aiohttp.ClientSession, server: LiveServer, value: Any) -> Any:
    async def answer(event: dict[str, Any]) -> None:
        if event["type"] == "require_user_input":
            assert event["data"]["prompt"] == "Proceed?"
            async with http.post(url(server, f"/v1/runs/{event['run_id']}/input"),
                                 json={"request_id": event["data"]["request_id"],
                                       "value": value}) as resp:
                assert resp.status == 200, await resp.text()
    return answer
