"""The hub fed committed events by hand: deferred fan-out, one batch per conversation per
flush, marks and replay cache moving with delivery, the pending bound."""

from __future__ import annotations

import asyncio
import time

from app.fanout.batch import Batch
from app.fanout.hub import COALESCE_AFTER, MAX_BATCH_EVENTS, Hub, by_conversation
from protocol.codec import EncodedEvent
from protocol.events import Done, DoneData, MessageChunk, MessageChunkData


def chunk(conv: str, seq: int) -> EncodedEvent:
    return EncodedEvent.from_event(MessageChunk(
        seq=seq, conversation_id=conv, run_id=f"r_{conv}", agent="demo", ts=1,
        item_id="m_1", data=MessageChunkData(delta=f"{seq} ")))


def done(conv: str, seq: int) -> EncodedEvent:
    return EncodedEvent.from_event(Done(
        seq=seq, conversation_id=conv, run_id=f"r_{conv}", agent="demo", ts=1,
        data=DoneData(status="completed", events=seq)))


class Recorder:
    def __init__(self, conversation_id: str, hub: Hub | None = None) -> None:
        self.conversation_id = conversation_id
        self.batches: list[Batch] = []
        self.hub = hub

    def deliver(self, batch: Batch) -> None:
        self.batches.append(batch)
        if self.hub is not None and batch.events[-1].type == "done":
            self.hub.remove(self)  # what a sink does when its run's done is written

    @property
    def seqs(self) -> list[int]:
        return [e.seq for b in self.batches for e in b.events]


def test_by_conversation_keeps_commit_order_inside_each_conversation() -> None:
    commits = [[chunk("a", 1), chunk("b", 1), chunk("a", 2)], [chunk("b", 2), chunk("a", 3)]]
    groups = by_conversation(commits)
    assert [[(e.conversation_id, e.seq) for e in g] for g in groups] == [
        [("a", 1), ("a", 2), ("a", 3)], [("b", 1), ("b", 2)]]


def test_publish_returns_before_delivery_and_the_next_loop_step_delivers() -> None:
    async def go() -> tuple[list[int], list[int], int, int, int]:
        hub = Hub()
        a, b = Recorder("a"), Recorder("b")
        hub.add(a)
        hub.add(b)
        published: list[int] = []
        hub.on_published = published.append
        hub.publish([chunk("a", 1), chunk("b", 1), chunk("a", 2)])
        hub.publish([chunk("b", 2), chunk("a", 3)])
        # Nothing delivered, no mark moved, nothing cached: the commit path went on.
        before = (len(a.batches), hub.published_seq("a"), hub.pending_events)
        assert hub.recent.after("a", 0, 10) is None
        await asyncio.sleep(0)
        assert hub.pending_events == 0
        assert [len(x.batches) for x in (a, b)] == [1, 1]  # one batch per conversation
        assert hub.recent.after("a", 0, 10) is not None
        return a.seqs, b.seqs, before[0] + before[1], before[2], published[0]

    a_seqs, b_seqs, nothing_yet, pending, counted = asyncio.run(go())
    assert a_seqs == [1, 2, 3] and b_seqs == [1, 2]
    assert nothing_yet == 0 and pending == 5 and counted == 5


def test_marks_and_cache_move_with_delivery() -> None:
    async def go() -> None:
        hub = Hub()
        hub.publish([chunk("a", 1), chunk("a", 2)])
        assert hub.published_seq("a") == 0
        hub.flush()
        assert hub.published_seq("a") == 2
        cached = hub.recent.after("a", 0, 10)
        assert cached is not None and [e.seq for e in cached] == [1, 2]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left: no double delivery
        assert hub.published_seq("a") == 2

    asyncio.run(go())


def test_a_full_queue_delivers_at_once() -> None:
    async def go() -> list[int]:
        hub = Hub(max_pending=3)
        a = Recorder("a")
        hub.add(a)
        hub.publish([chunk("a", 1), chunk("a", 2)])
        assert a.seqs == []
        hub.publish([chunk("a", 3), chunk("a", 4)])  # 4 >= 3: delivered in this call
        assert hub.pending_events == 0
        return a.seqs

    assert asyncio.run(go()) == [1, 2, 3, 4]


def test_without_a_running_loop_publish_delivers_synchronously() -> None:
    hub = Hub()
    a = Recorder("a")
    hub.add(a)
    hub.publish([chunk("a", 1)])
    assert a.seqs == [1] and hub.published_seq("a") == 1


def test_a_subscriber_leaving_during_delivery_does_not_break_the_fan_out() -> None:
    async def go() -> tuple[list[int], list[int], int]:
        hub = Hub()
        lone = Recorder("a", hub)
        hub.add(lone)
        pair = [Recorder("b", hub), Recorder("b", hub)]
        for sub in pair:
            hub.add(sub)
        hub.publish([chunk("a", 1), done("a", 2), chunk("b", 1), done("b", 2)])
        hub.flush()
        return lone.seqs, [s for sub in pair for s in sub.seqs], hub.subscriber_count()

    lone, pair, left = asyncio.run(go())
    assert lone == [1, 2] and pair == [1, 2, 1, 2] and left == 0


class Broken:
    conversation_id = "a"

    def deliver(self, batch: Batch) -> None:
        raise RuntimeError("a bug in one subscriber")


def test_one_failing_subscriber_costs_the_others_nothing() -> None:
    async def go() -> tuple[list[int], list[int], int]:
        hub = Hub()
        good_a, good_b = Recorder("a"), Recorder("b")
        for sub in (Broken(), good_a, good_b):
            hub.add(sub)
        hub.publish([chunk("a", 1), chunk("b", 1)])
        hub.flush()
        return good_a.seqs, good_b.seqs, hub.published_seq("a")

    a, b, mark = asyncio.run(go())
    assert a == [1] and b == [1] and mark == 1


def test_after_a_costly_flush_the_next_one_coalesces_what_commits_meanwhile() -> None:
    """Commits decoupled from fan-out arrive faster than a costly fan-out; after a flush that
    cost more than COALESCE_AFTER the next is delayed by that cost, so two commits go out as
    one batch (one write per subscriber), as the serial commit -> fan-out did implicitly."""

    class Slow(Recorder):
        def deliver(self, batch: Batch) -> None:
            super().deliver(batch)
            deadline = time.perf_counter() + 2 * COALESCE_AFTER
            while time.perf_counter() < deadline:  # a fan-out that costs CPU
                pass

    async def go() -> list[list[int]]:
        hub = Hub()
        sub = Slow("a")
        hub.add(sub)
        hub.publish([chunk("a", 1)])
        await asyncio.sleep(0)  # flushed at once: no cost known yet
        assert [len(b.events) for b in sub.batches] == [1]
        hub.publish([chunk("a", 2)])
        await asyncio.sleep(0)
        assert len(sub.batches) == 1, "the next flush waits for the cost of the last"
        hub.publish([chunk("a", 3)])
        async with asyncio.timeout(10):
            while len(sub.batches) < 2:
                await asyncio.sleep(0.001)
        return [[e.seq for e in b.events] for b in sub.batches]

    assert asyncio.run(go()) == [[1], [2, 3]]


def test_accepted_moves_at_publish_and_a_seq_is_never_delivered_twice() -> None:
    """The cluster's gap guard publishes and then reads on: it must see what it handed over
    (``accepted_seq``) though delivery waits for the next step; and a queued batch the mark
    has already passed (a follower seeded from the store meanwhile) delivers only what is new."""
    async def go() -> tuple[int, int, list[int]]:
        hub = Hub()
        rec = Recorder("a")
        hub.add(rec)
        hub.publish([chunk("a", 1), chunk("a", 2)])
        accepted, published = hub.accepted_seq("a"), hub.published_seq("a")
        hub.publish([chunk("a", 3), chunk("a", 4)])
        hub.note_committed("a", 3)  # the mark moved past part of what is queued
        await asyncio.sleep(0)
        return accepted, published, rec.seqs

    accepted, published, seqs = asyncio.run(go())
    assert (accepted, published) == (2, 0)
    assert seqs == [4]  # 1-3 are at or below the mark: never delivered twice


def test_one_huge_commit_reaches_a_subscriber_in_pieces_within_the_batch_cap() -> None:
    """A single run's commit of more than MAX_BATCH_EVENTS (store_batch is 20,000) is cut:
    every piece within the cap, in order, contiguous, the done last; the mark and the
    replay cache end where the commit ends."""
    n = 2 * MAX_BATCH_EVENTS + 10
    hub = Hub()
    a = Recorder("a")
    hub.add(a)
    hub.publish([chunk("a", s) for s in range(1, n)] + [done("a", n)])
    hub.flush()
    assert [len(b.events) for b in a.batches] == [MAX_BATCH_EVENTS, MAX_BATCH_EVENTS, 10]
    assert a.seqs == list(range(1, n + 1))
    assert a.batches[-1].events[-1].type == "done"
    assert hub.published_seq("a") == n
    cached = hub.recent.after("a", 0, n + 5)
    assert cached is not None and [e.seq for e in cached] == list(range(1, n + 1))
