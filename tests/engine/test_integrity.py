"""Regression tests for issue 10 ("Nothing lost, nothing doubled"), each named after its bug.

They run the real engine on a real SQLite file (or the memory twin where the point is the
writer's logic), with real agents, and check the promise after each: one ``done`` as the
run's last event, ``done.data.events`` equal to the run's stored events, ``seq`` contiguous.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.agents.base import Agent, RunContext
from app.agents.registry import AgentRegistry
from app.engine.engine import Engine
from app.engine.retention import sweep
from app.errors import Conflict, Unavailable
from app.fanout.hub import Hub
from app.store.base import EventStore
from app.store.faults import Faults
from app.store.ops import AppendEvent, Group, PutRun
from app.store.records import RunRecord
from app.store.sqlite import SqliteEventStore
from app.store.writer import StoreUnavailable
from protocol.codec import EncodedEvent, decode_event
from protocol.events import MessageChunkData
from protocol.messages import StartRunRequest

DEMO = {"tokens": 3, "delay_ms": 0, "reasoning": False, "tool_call": False}


class _Unencodable(msgspec.Struct):
    value: Any


class BadPayloadAgent(Agent):
    """Emits one good chunk, then a payload msgspec cannot encode, then (never) another."""

    @property
    def name(self) -> str:
        return "bad_payload"

    async def run(self, ctx: RunContext, input: Any) -> None:
        await ctx.emit("message_chunk", MessageChunkData(delta="ok"), item_id="m")
        await ctx.emit("message_chunk", _Unencodable(object()), item_id="m")  # type: ignore[arg-type]


class BusyAgent(Agent):
    """Emits as fast as it can, never awaiting anything but ``emit``."""

    @property
    def name(self) -> str:
        return "busy"

    async def run(self, ctx: RunContext, input: Any) -> None:
        for _ in range(int(input or 20_000)):
            await ctx.emit("message_chunk", MessageChunkData(delta="x"), item_id="m")


class PoisonAgent(Agent):
    """Emits a few chunks, then one the (fault-injected) database refuses, then more."""

    @property
    def name(self) -> str:
        return "poison"

    async def run(self, ctx: RunContext, input: Any) -> None:
        for i in range(20):
            await ctx.emit("message_chunk", MessageChunkData(delta="POISON" if i == 5 else "x"),
                           item_id="m")
            await asyncio.sleep(0.005)


def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register(PoisonAgent())
    agents.register(BadPayloadAgent())
    agents.register(BusyAgent())
    return agents


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    store = SqliteEventStore(tmp_path / "i.db", fail_timeout=0.3)
    await store.open()
    eng = Engine(store, Hub(), registry(), ack_timeout=2.0)
    yield eng
    await eng.shutdown(1.0)
    await store.close(timeout=2.0)


async def stored(store: EventStore, conversation_id: str) -> list[EncodedEvent]:
    return await store.read_events(conversation_id, 0, 1_000_000)


async def assert_promise(store: EventStore, conversation_id: str) -> None:
    """Seq contiguous from 1; each run: one done, its last event, counting its events."""
    await store.flush()
    events = await stored(store, conversation_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    runs: dict[str, list[EncodedEvent]] = {}
    for e in events:
        if e.run_id is not None:
            runs.setdefault(e.run_id, []).append(e)
    for run_id, mine in runs.items():
        dones = [e for e in mine if e.type == "done"]
        assert len(dones) == 1, f"{run_id}: {len(dones)} done events"
        assert mine[-1].type == "done"
        done = decode_event(dones[0].body)
        assert done.data.events == len(mine)  # type: ignore[union-attr]
        row = await store.get_run(run_id)
        assert row is not None and row.done_seq == dones[0].seq and row.status == (
            done.data.status)  # type: ignore[union-attr]


async def run_to_end(engine: Engine, **req: Any) -> RunRecord:
    run = await engine.start_run(StartRunRequest(**req))
    assert run.task is not None
    await run.task
    await engine.store.flush()
    return await engine.get_run(run.run_id)


async def test_done_and_final_row_commit_in_one_transaction_never_split(tmp_path: Path) -> None:
    """Bug 1: the writer cut a batch between the done event and the final run row."""
    store = SqliteEventStore(tmp_path / "g.db", batch_max=1)
    await store.open()
    try:
        ev = EncodedEvent(1, "done", "c", "r", b"{}")
        rec = RunRecord("r", "c", "demo", "completed", 1, done_seq=1)
        group = Group([AppendEvent(ev, 1), PutRun.of(rec)], notify=True)
        store.enqueue(group)
        assert group.committed is not None
        await group.committed
        assert store.writer.batch_observer is None
        assert (await store.get_run("r")) is not None and len(await stored(store, "c")) == 1
        # a queued row is a snapshot: changing the record afterwards changes nothing stored
        rec.status = "failed"
        assert (await store.get_run("r")).status == "completed"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_recovery_trusts_a_committed_done_over_an_open_row(tmp_path: Path) -> None:
    """Bug 1, reverse order: a row left 'running' beside a committed done must not get a
    second done{interrupted} at the next start."""
    path = tmp_path / "r.db"
    store = SqliteEventStore(path)
    await store.open()
    eng = Engine(store, Hub(), registry())
    rec = await run_to_end(eng, agent="demo", input=DEMO)
    await store.close()
    with sqlite3.connect(path) as db:  # what an older build could leave behind
        stale = msgspec.structs.replace(rec, status="running", done_seq=None)
        db.execute("UPDATE runs SET status='running', record=? WHERE id=?",
                   (msgspec.json.encode(stale), rec.run_id))
    store = SqliteEventStore(path)
    await store.open()
    try:
        eng = Engine(store, Hub(), registry())
        assert await eng.recover() == 1
        await assert_promise(store, rec.conversation_id)
        row = await store.get_run(rec.run_id)
        assert row is not None and row.status == "completed"
    finally:
        await store.close()


async def test_a_second_process_on_the_same_database_is_refused_before_writing(
    tmp_path: Path,
) -> None:
    """Bug 2: a second instance ran recovery over the first one's live runs."""
    from app.store.base import StoreLocked

    first = SqliteEventStore(tmp_path / "one.db")
    await first.open()
    try:
        second = SqliteEventStore(tmp_path / "one.db")
        with pytest.raises(StoreLocked):
            await second.open()
    finally:
        await first.close()
    again = SqliteEventStore(tmp_path / "one.db")  # released with the first: opens fine
    await again.open()
    await again.close()


async def test_poisoned_batch_fails_only_its_conversation_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    """Bug 3: one failing batch was retried forever and stopped every run."""
    store = SqliteEventStore(tmp_path / "p.db", faults=Faults("commit_fail_permanent=POISON"))
    await store.open()
    eng = Engine(store, Hub(), registry())
    try:
        # a start the database refuses is a 503, and nothing of it exists
        with pytest.raises(Unavailable):
            await eng.start_run(StartRunRequest(agent="demo", conversation_id="refused",
                                                input={"text": "POISON"}))
        assert await store.get_conversation("refused") is None
        # a run whose 6th event is refused ends failed, numbered from what was committed
        poisoned = await eng.start_run(StartRunRequest(agent="poison", conversation_id="p"))
        healthy = await run_to_end(eng, agent="demo", input=DEMO)
        assert healthy.status == "completed"
        assert poisoned.task is not None
        await asyncio.wait_for(poisoned.task, 10)
        await store.flush()
        await assert_promise(store, healthy.conversation_id)
        await assert_promise(store, "p")
        row = await store.get_run(poisoned.run_id)
        assert row is not None and row.status == "failed" and row.error is not None
        assert row.error.code == "store_rejected"
        assert store.writer.rejected_units >= 1 and store.healthy
        # the conversation goes on: a new run numbers from the committed counter
        again = await run_to_end(eng, agent="demo", conversation_id="p", input=DEMO)
        assert again.status == "completed"
        await assert_promise(store, "p")
    finally:
        await eng.shutdown(1)
        await store.close(timeout=2)


async def test_unencodable_agent_payload_fails_the_run_without_a_seq_gap(engine: Engine) -> None:
    """Bug 5: seq was taken before encoding, leaving a gap the replay cache tripped on."""
    rec = await run_to_end(engine, agent="bad_payload")
    assert rec.status == "failed" and rec.error is not None
    assert rec.error.code == "invalid_event"
    await assert_promise(engine.store, rec.conversation_id)


async def test_cancel_and_answer_in_one_loop_iteration_never_raise_invalid_state(
    engine: Engine,
) -> None:
    """Bug 7: answer() set a result on a future the cancel had just cancelled."""
    run = await engine.start_run(StartRunRequest(agent="demo", input={**DEMO, "ask": "ok?"}))
    for _ in range(200):
        if run.pending is not None:
            break
        await asyncio.sleep(0.01)
    assert run.pending is not None
    request_id = run.pending.request_id
    engine.request_cancel(run.run_id, "test")
    with pytest.raises(Conflict):
        await engine.answer(run.run_id, request_id, "yes")
    assert run.task is not None
    await run.task
    rec = await engine.get_run(run.run_id)
    await engine.store.flush()
    assert (await engine.store.get_run(run.run_id)).status == "cancelled"  # type: ignore[union-attr]
    await assert_promise(engine.store, rec.conversation_id)


async def test_retention_sweep_racing_a_start_in_an_idle_conversation_keeps_one_counter(
    engine: Engine,
) -> None:
    """Bug 4: the sweep dropped a conversation a run was starting in: duplicate seq."""
    first = await run_to_end(engine, agent="demo", conversation_id="idle", input=DEMO)
    cutoff = 1 << 62  # everything idle counts as expired
    # the sweep fences the conversation; a start racing it waits, then sees it is gone
    sweeping = asyncio.create_task(sweep(engine, cutoff, set()))
    starting = asyncio.create_task(engine.start_run(StartRunRequest(
        agent="demo", conversation_id="idle", input=DEMO)))
    done, _ = await asyncio.wait({sweeping, starting}, timeout=10)
    assert sweeping in done and starting in done
    if starting.exception() is None:
        # the start won: the conversation was in use and kept, numbering continued
        run = starting.result()
        assert run.task is not None
        await run.task
        await assert_promise(engine.store, "idle")
        assert run.record.first_seq == first.done_seq + 1  # type: ignore[operator]
    else:
        assert sweeping.result() == ["idle"]
        assert getattr(starting.exception(), "code", "") == "conversation_expired"


async def test_protected_conversations_survive_retention(engine: Engine) -> None:
    """Bug 4b: a schedule's conversation expired between firings, and the schedule died."""
    await run_to_end(engine, agent="demo", conversation_id="scheduled", input=DEMO)
    assert await sweep(engine, 1 << 62, {"scheduled"}) == []
    rec = await run_to_end(engine, agent="demo", conversation_id="scheduled", input=DEMO)
    assert rec.status == "completed"
    await assert_promise(engine.store, "scheduled")


async def test_disk_failing_refuses_new_runs_and_fails_open_ones_in_bounded_time(
    tmp_path: Path,
) -> None:
    """Bug 6: with the disk failing, runs still answered 202 and 'completed' in memory."""
    faults = Faults()
    store = SqliteEventStore(tmp_path / "d.db", faults=faults, fail_timeout=0.3)
    await store.open()
    eng = Engine(store, Hub(), registry(), ack_timeout=1.0)
    try:
        run = await eng.start_run(StartRunRequest(
            agent="demo", input={"tokens": 1000, "delay_ms": 5, "ask": "ok?"}))
        faults.probability = 1.0  # from now on every commit fails (a full disk)
        with pytest.raises(Unavailable) as refused:
            for _ in range(100):
                await eng.start_run(StartRunRequest(agent="demo", input=DEMO))
                await asyncio.sleep(0.02)
        assert refused.value.code == "store_unavailable"
        assert run.task is not None
        await asyncio.wait_for(run.task, 10)  # failed within fail_timeout, not hanging
        assert run.record.status == "failed" and run.record.error is not None
        assert run.record.error.code == "store_unavailable"
        visible = await eng.get_run(run.run_id)
        assert visible.status != "failed"  # its done is not committed: nobody is told
        faults.probability = 0.0  # the disk is back: the done commits, no restart needed
        await store.flush(5)
        await assert_promise(store, run.record.conversation_id)
        assert store.healthy
    finally:
        await eng.shutdown(1)
        await store.close(timeout=2)


async def test_close_with_a_failing_disk_returns_within_its_timeout(tmp_path: Path) -> None:
    """Bug 6b: SIGTERM never exited while the store could not commit."""
    store = SqliteEventStore(tmp_path / "c.db", faults=Faults("commit_fail=1.0"))
    await store.open()
    store.enqueue(AppendEvent(EncodedEvent(1, "notify", "c", None, b"{}"), 1))
    left = await asyncio.wait_for(store.close(timeout=0.5), 5)
    assert left == 1


async def test_enqueue_after_close_is_refused(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "x.db")
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        store.enqueue(AppendEvent(EncodedEvent(1, "notify", "c", None, b"{}"), 1))


async def test_a_busy_agent_yields_to_other_tasks(engine: Engine) -> None:
    """Bug 13: ``emit`` never yielded while the store had room, starving the loop. Not a
    timing assertion: while a busy run emits, a ticker task must get turns."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    run = await engine.start_run(StartRunRequest(agent="busy", input=20_000))
    ticks_at_start = ticks
    assert run.task is not None
    await run.task
    task.cancel()
    assert ticks - ticks_at_start > 5
    await assert_promise(engine.store, run.record.conversation_id)
