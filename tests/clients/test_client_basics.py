"""agentstream_client against a real server on a real socket and a real SQLite file:
a run to its done, answers by callback and by ``await run.answer``, cancel versus close,
conversation subscriptions, errors as the documented exceptions. Both transports."""

from __future__ import annotations

import asyncio

import pytest

from agentstream_client import (
    AgentstreamClient,
    BadRequest,
    Conflict,
    Done,
    MessageChunk,
    NotFound,
    RequireUserInput,
    StreamEvent,
    event_type,
)
from protocol.events import UserInputReceived
from tests.clients.checks import assert_contiguous, assert_one_run
from tests.conftest import LiveServer

TRANSPORTS = ["sse", "ws"]


def client_for(server: LiveServer, transport: str) -> AgentstreamClient:
    return AgentstreamClient(server.make_url(""), transport=transport,  # type: ignore[arg-type]
                             handshake_timeout=10)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_run_to_done_answering_by_callback(server: LiveServer, transport: str) -> None:
    asked: list[RequireUserInput] = []

    async def on_input(event: RequireUserInput) -> str:
        asked.append(event)
        return "yes"

    async with client_for(server, transport) as client:
        run = await client.start("demo", {"text": "hi", "tokens": 12, "ask": "Proceed?",
                                          "delay_ms": 1}, on_input=on_input)
        events = [e async for e in run]
    done = assert_one_run(events)
    assert done.data.status == "completed" and run.result is done and run.complete
    assert [e.data.prompt for e in asked] == ["Proceed?"]
    received = [e for e in events if isinstance(e, UserInputReceived)]
    assert [r.data.value for r in received] == ["yes"]
    assert sum(isinstance(e, MessageChunk) for e in events) == 12
    assert run.conversation_id == events[0].conversation_id


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_answer_inside_the_loop_and_second_answer_conflicts(
    server: LiveServer, transport: str
) -> None:
    async with client_for(server, transport) as client:
        run = await client.start("demo", {"tokens": 3, "ask": "Go?", "delay_ms": 0})
        events: list[StreamEvent] = []
        async for event in run:
            events.append(event)
            if isinstance(event, RequireUserInput):
                assert run.pending_input is event
                await run.answer({"ok": True})
                with pytest.raises(Conflict) as info:
                    await run.answer("again", event.data.request_id)
                assert info.value.status == 409
    assert_one_run(events)
    assert run.pending_input is None
    with pytest.raises(Conflict):
        await run.answer("late")  # nothing pending


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_ends_the_run_but_close_only_detaches(
    server: LiveServer, transport: str
) -> None:
    slow = {"tokens": 400, "delay_ms": 20}
    async with client_for(server, transport) as client:
        cancelled = await client.start("demo", slow)
        kept = await client.start("demo", {"tokens": 15, "delay_ms": 20})
        seen: list[StreamEvent] = []
        chunks = 0
        async for event in cancelled:
            seen.append(event)
            chunks += isinstance(event, MessageChunk)
            if isinstance(event, MessageChunk) and chunks == 3:
                assert await cancelled.cancel() in ("running", "cancelling", "cancelled")
        done = assert_one_run(seen)
        assert done.data.status == "cancelled"

        first = [e async for e, _ in _take(kept, 4)]
        await kept.close()  # detach: the run goes on
        again = client.attach(kept.run_id, after=first[-1].seq)
        rest = [e async for e in again]
    whole = first + rest
    assert assert_one_run(whole).data.status == "completed"
    assert again.result is not None and not again.complete  # attached mid-run


async def _take(run: object, n: int):  # type: ignore[no-untyped-def]
    got = 0
    async for event in run:  # type: ignore[attr-defined]
        got += 1
        yield event, got
        if got >= n:
            return


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_conversation_subscription_sees_both_runs_in_order(
    server: LiveServer, transport: str
) -> None:
    async with client_for(server, transport) as client:
        first = await client.start("demo", {"tokens": 3, "delay_ms": 0},
                                   conversation_id=f"conv-{transport}")
        await first.wait()
        sub = client.subscribe(f"conv-{transport}")
        got: list[StreamEvent] = []
        second: asyncio.Task[Done] | None = None
        async for event in sub:
            got.append(event)
            if isinstance(event, Done) and second is None:
                run2 = await client.start("demo", {"tokens": 4, "delay_ms": 0},
                                          conversation_id=f"conv-{transport}")
                second = asyncio.create_task(run2.wait())
            elif isinstance(event, Done):
                break
        await sub.close()
        assert second is not None
        done2 = await second
    assert_contiguous(got)
    assert event_type(got[0]) == "conversation_started"
    assert [e.seq for e in got if isinstance(e, Done)] == [first.result.seq, done2.seq]  # type: ignore[union-attr]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_errors_are_the_documented_exceptions(server: LiveServer, transport: str) -> None:
    async with client_for(server, transport) as client:
        with pytest.raises((BadRequest, NotFound)) as info:
            await client.start("no-such-agent", "hi")
        assert info.value.code and info.value.message
        with pytest.raises(BadRequest) as bad:
            await client.start("demo", "hi", conversation_id="spaces are not ids")
        assert bad.value.status in (0, 422, 400)
        with pytest.raises(NotFound):
            async for _ in client.attach("r_doesnotexist"):
                pass
        assert [a.name for a in await client.agents()].count("demo") == 1
