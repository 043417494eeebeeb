"""How a run's events reach the store: numbered, queued with the run row, the one ``done``.

Every lifecycle write goes through here, so the two rules are written once:

- a lifecycle event commits in one ``Group`` with the run row (and the webhook outbox rows
  of ``side_ops``), and readers see the row only once it committed (``ActiveRun.visible``);
- a run's ``done``, its final row and the conversation update are one atomic group, numbered
  from the live counter, or from what is committed (``write_done_reloaded``: after a
  restart, a takeover or a rejected write).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec

from app import metrics
from app.clock import now_ms
from app.engine.conversations import Conversations
from app.engine.event_log import number_event
from app.engine.state import ActiveRun, Conversation
from app.store.base import EventStore
from app.store.ops import AppendEvent, Group, Op, PutConversation, PutRun
from app.store.records import RunRecord, decode_run
from protocol.codec import EncodedEvent
from protocol.events import FINAL_STATUSES, Done, DoneData, EventBase
from protocol.messages import ErrorDetail

# An agent emitting without awaiting anything yields to the loop after this long (seconds),
# so one busy run cannot starve every other connection.
BURST_SECONDS = 0.0005
BURST_GAP = 0.0005
# Extra ops committed with a lifecycle event (webhook outbox rows).
SideOps = Callable[[RunRecord, EncodedEvent], list[Op]]


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


def check_open(run: ActiveRun) -> None:
    if run.ended or run.failure is not None:
        raise RuntimeError("the run has ended")


class RunWrites:
    def __init__(self, store: EventStore, conversations: Conversations) -> None:
        self.store = store
        self.conversations = conversations
        # The engine knows nothing of webhooks: the server wires this (api/webhooks.py).
        self.side_ops: SideOps | None = None

    # ---- events of a live run --------------------------------------------------------------

    async def emit(self, run: ActiveRun, cls: type[EventBase], data: msgspec.Struct,
                   **ids: str | None) -> EncodedEvent:
        """The agent's path: backpressure from the store, fairness to other tasks. The room
        check is synchronous while the store's queue has room (the common case: no two
        coroutine frames per event); above its high mark the agent waits as before."""
        if not self.store.has_room():
            await self.store.wait_for_room()
        check_open(run)
        now = time.perf_counter()
        if now - run.burst_started > BURST_SECONDS and now - run.last_emit < BURST_GAP:
            await asyncio.sleep(0)
            check_open(run)
            now = time.perf_counter()
            run.burst_started = now
        elif now - run.last_emit >= BURST_GAP:
            run.burst_started = now
        run.last_emit = now
        op = self.number(run, cls, data, **ids)
        self.store.enqueue(op)
        return op.event

    async def emit_with_row(self, run: ActiveRun, cls: type[EventBase],
                            data: msgspec.Struct) -> None:
        """An event that changes the run row (a question): queued with the row."""
        await self.store.wait_for_room()
        check_open(run)
        self.queue(run, [self.number(run, cls, data)])

    def emit_with_ack(self, run: ActiveRun, cls: type[EventBase],
                      data: msgspec.Struct) -> asyncio.Future[None]:
        """An event with the row, returning its commit to acknowledge (an answer)."""
        return self.queue(run, [self.number(run, cls, data)])

    def side(self, record: RunRecord, ops: list[Op]) -> list[Op]:
        """Ops that must commit with these events (webhook deliveries), from ``side_ops``."""
        if self.side_ops is None:
            return []
        return [extra for op in ops if type(op) is AppendEvent
                for extra in self.side_ops(record, op.event)]

    def queue(self, run: ActiveRun, ops: list[Op]) -> asyncio.Future[None]:
        """Queue ops as one group that also saves the run row; readers see the row once
        it committed."""
        group = Group([*ops, *self.side(run.record, ops), PutRun.of(run.record)], notify=True)
        self.store.enqueue(group)
        assert group.committed is not None
        put = group.ops[-1]
        assert isinstance(put, PutRun)

        def committed(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                run.visible = decode_run(put.body)

        group.committed.add_done_callback(committed)
        return group.committed

    @staticmethod
    def number(run: ActiveRun, cls: type[EventBase], data: msgspec.Struct,
               **ids: str | None) -> AppendEvent:
        op = number_event(run.conversation, cls, data, run.run_id, run.agent.name, **ids)
        run.record.events += 1
        return op

    def write_done(self, record: RunRecord, conv: Conversation, status: str,
                   error: ErrorDetail | None, events: int) -> asyncio.Future[None]:
        """The ``done``, the final row and the conversation update: one atomic group."""
        assert status in FINAL_STATUSES
        done = number_event(conv, Done, DoneData(status=status, events=events, error=error),  # type: ignore[arg-type]
                            record.run_id, record.agent)
        record.status = status
        record.ended_at = conv.record.updated_at = now_ms()
        record.events = events
        record.done_seq = done.event.seq
        record.error = error
        record.pending_input = None
        group = Group([done, *self.side(record, [done]), PutRun.of(record),
                       PutConversation.of(conv.record)], notify=True)
        self.store.enqueue(group)
        assert group.committed is not None
        # Nobody may wait on it (a run's own end): retrieve a failure so it is not logged.
        group.committed.add_done_callback(_retrieve)
        return group.committed

    # ---- the one ``done`` --------------------------------------------------------------

    async def write_done_reloaded(self, record: RunRecord, status: str,
                                  error: ErrorDetail | None) -> None:
        """End a run from what is committed (after a restart, or a rejected write)."""
        count, done = await self.store.run_events(record)
        if done is not None or count == 0:
            return  # ended already, or nothing of it was ever stored
        conv = await self.conversations.get(record.conversation_id)
        if conv is None:
            return
        record.events = count
        self.write_done(record, conv, status, error, count + 1)

    async def end_unstarted(self, record: RunRecord, status: str,
                            error: ErrorDetail | None) -> asyncio.Future[None] | None:
        """End a run that never started (an enqueued start that was cancelled, failed to
        start, or outlived the server): its ``done`` is its one event. Returns the commit."""
        conv = await self.conversations.get(record.conversation_id)
        if conv is None:
            return None
        record.first_seq = conv.seq + 1
        metrics.RUNS_ENDED.labels(status).inc()
        return self.write_done(record, conv, status, error, 1)
