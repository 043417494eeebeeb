"""Live conversation state is bounded: idle conversations leave memory and come back from
the store with the right seq; busy or subscribed ones stay."""

from __future__ import annotations

from pathlib import Path

from app.agents.registry import AgentRegistry
from app.engine.engine import Engine
from app.fanout.hub import Hub
from app.store.sqlite import SqliteEventStore
from protocol.messages import StartRunRequest


async def finished_run(engine: Engine, conversation_id: str) -> int:
    run = await engine.start_run(StartRunRequest(
        agent="demo", conversation_id=conversation_id,
        input={"tokens": 2, "delay_ms": 0, "reasoning": False, "tool_call": False}))
    assert run.task is not None
    await run.task
    await engine.store.flush()
    assert run.record.done_seq is not None
    return run.record.done_seq


async def test_idle_conversations_are_evicted_and_reload_with_their_seq(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "b.db")
    await store.open()
    engine = Engine(store, Hub(), AgentRegistry(), max_conversations=3, conversation_idle=0)
    try:
        last = {f"c{i}": await finished_run(engine, f"c{i}") for i in range(10)}
        assert engine.conversations_in_memory <= 3
        # a busy conversation is never evicted, however many others come along
        busy = await engine.start_run(StartRunRequest(
            agent="demo", conversation_id="busy", input={"tokens": 0, "ask": "wait?"}))
        for i in range(10, 20):
            last[f"c{i}"] = await finished_run(engine, f"c{i}")
        assert await engine.conversation("busy") is busy.conversation
        # an evicted conversation continues after its stored last seq: nothing reused
        again = await finished_run(engine, "c0")
        rows = await store.read_events("c0", 0, 1000)
        assert [e.seq for e in rows] == list(range(1, again + 1))
        assert rows[last["c0"]].type == "run_started"
        engine.request_cancel(busy.run_id, "test")
        assert busy.task is not None
        await busy.task
    finally:
        await store.close()
