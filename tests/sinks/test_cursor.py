"""The sink's I/O-free core (``Cursor``, ``Delivery``) driven by feeding it batches and pages.

No socket, no task, no clock: a test publishes batches, plays the writer (take, write,
report) and reads catch-up pages from a list standing in for the store, then checks the
bytes that came out: every seq once, in order, no gap (a merged frame counts the chunks it
folds).
"""

from __future__ import annotations

import random
import re

from app.fanout.batch import Batch
from app.sinks.cursor import Cursor, Page, Phase
from app.sinks.delivery import Delivery, joined
from protocol.codec import EncodedEvent
from protocol.events import Done, DoneData, MessageChunk, MessageChunkData

CONV = "c"


def chunk(seq: int, run: str = "r1", item: str = "i1") -> EncodedEvent:
    return EncodedEvent.from_event(MessageChunk(
        seq=seq, conversation_id=CONV, run_id=run, agent="demo", ts=0, item_id=item,
        data=MessageChunkData(delta=f"<{seq}>")))


def done(seq: int, run: str = "r1", events: int = 0) -> EncodedEvent:
    return EncodedEvent.from_event(Done(
        seq=seq, conversation_id=CONV, run_id=run, agent="demo", ts=0,
        data=DoneData(status="completed", events=events)))


def covered(raw: bytes) -> list[int]:
    """The stored seqs an SSE byte stream carries, expanding merged frames."""
    seqs: list[int] = []
    for frame in raw.split(b"\n\n"):
        m = re.search(rb"^id: (\d+)$", frame, re.M)
        if m is None:
            continue
        last = int(m.group(1))
        merged = re.search(rb'"merged":(\d+)', frame)
        n = int(merged.group(1)) if merged else 1
        seqs.extend(range(last - n + 1, last + 1))
    return seqs


class World:
    """A store (every published event), a hub mark, one Delivery, and the bytes written."""

    def __init__(self, queue_events: int = 1000, queue_bytes: int = 10**7,
                 merge: bool = True) -> None:
        self.store: list[EncodedEvent] = []
        self.delivery = Delivery("sse", queue_events, queue_bytes, merge)
        self.out = bytearray()

    @property
    def published(self) -> int:
        return self.store[-1].seq if self.store else 0

    def publish(self, events: list[EncodedEvent], direct: bool = False) -> None:
        self.store.extend(events)
        batch = Batch(CONV, events)
        for cursor in list(self.delivery.cursors.values()):
            if cursor.conversation_id != CONV:
                continue  # the hub routes by conversation
            blob = self.delivery.offer(cursor, batch, direct)
            if blob is not None:
                self.out += blob.data
                if cursor.wrote(blob.last_seq, blob.done_run):
                    self.delivery.end(cursor)

    def chunks(self, n: int, direct: bool = False) -> None:
        first = self.published + 1
        self.publish([chunk(s) for s in range(first, first + n)], direct)

    def read_page(self, cursor: Cursor, limit: int, shared: bool = False) -> Page:
        rows = [e for e in self.store if e.seq > cursor.written_seq][:limit]
        return Page.read(rows, cursor.written_seq, limit, self.published, cursor.run_id,
                         shared=shared)

    def write_page(self, cursor: Cursor, page: Page, between: int = 0) -> bool:
        """Write a page; ``between`` events get published while the write is in flight."""
        out = self.delivery.plan_page(cursor, page)
        self.out += b"".join(e.sse for e in out.events)
        if between:
            self.chunks(between)
        finished = self.delivery.page_written(cursor, out, self.published)
        if finished:
            self.delivery.end(cursor)
        return finished

    def flush(self) -> None:
        items = self.delivery.take()
        if items:
            self.out += joined(items)
            _, finished = self.delivery.written(items)
            for cursor in finished:
                self.delivery.end(cursor)

    def catch_up(self, limit: int = 3) -> None:
        """Play the writer until nothing is lagging or queued."""
        for _ in range(10_000):
            lagging = self.delivery.lagging()
            if not lagging and not self.delivery.queue.items:
                return
            for cursor in lagging:
                self.write_page(cursor, self.read_page(cursor, limit))
            self.flush()
        raise AssertionError("never caught up")


def test_resume_pages_then_goes_live_without_gap_or_duplicate() -> None:
    world = World()
    world.chunks(7)
    cursor, _ = world.delivery.subscribe(CONV, None, 2, False)
    assert cursor.phase is Phase.RESUMING
    world.write_page(cursor, world.read_page(cursor, 3))  # 3..5: more to read
    assert cursor.phase is Phase.RESUMING and cursor.written_seq == 5
    world.write_page(cursor, world.read_page(cursor, 3))  # 6..7, short: caught up
    assert cursor.phase is Phase.LIVE
    world.chunks(3, direct=True)
    assert covered(bytes(world.out)) == list(range(3, 11))


def test_live_batch_overlapping_a_catch_up_is_trimmed_and_a_repeat_ignored() -> None:
    world = World()
    world.chunks(5)
    cursor, _ = world.delivery.subscribe(CONV, None, 0, False)
    # 6..8 are published while page 1..5 is being written: still lagging after it
    world.write_page(cursor, world.read_page(cursor, 10), between=3)
    assert cursor.phase is Phase.RESUMING and cursor.written_seq == 5
    world.write_page(cursor, world.read_page(cursor, 10))
    assert cursor.phase is Phase.LIVE and cursor.queued_seq == 8
    overlap = Batch(CONV, [e for e in world.store if e.seq >= 7] + [chunk(9), chunk(10)])
    world.store.extend(overlap.events[-2:])
    blob = world.delivery.offer(cursor, overlap, direct=True)
    assert blob is not None and blob.count == 2  # 9, 10 only
    world.out += blob.data
    assert world.delivery.offer(cursor, overlap, direct=True) is None  # the same batch again
    assert covered(bytes(world.out)) == list(range(1, 11))


def test_overflow_drops_the_queue_catches_up_merged_then_goes_live() -> None:
    world = World(queue_events=5)
    cursor, _ = world.delivery.subscribe(CONV, None, 0, False)
    world.catch_up()
    assert cursor.phase is Phase.LIVE
    world.chunks(2, direct=True)  # written at once
    world.chunks(3)  # queued (the writer is busy)
    assert len(world.delivery.queue) == 1 and world.delivery.queue.events == 3
    world.chunks(4)  # passes the 5-event bound
    assert world.delivery.overflows == 1 and world.delivery.dropped_events == 3
    assert not world.delivery.queue.items
    assert cursor.phase is Phase.OVERFLOWED and cursor.queued_seq == cursor.written_seq == 2
    world.chunks(2)  # ignored while lagging
    out = world.delivery.plan_page(cursor, world.read_page(cursor, 100))
    assert len(out.events) == 1 and out.folded == 8, "9 chunks of one item fold into one"
    world.out += out.events[0].sse
    assert not world.delivery.page_written(cursor, out, world.published)
    assert cursor.phase is Phase.LIVE
    world.chunks(1, direct=True)
    assert covered(bytes(world.out)) == list(range(1, 13))


def test_a_batch_over_the_queue_bound_is_never_written_directly() -> None:
    """One committed batch can be larger than a sink's queue (``store_batch`` is large):
    written directly it would sit whole in the transport buffer of a reader that stopped
    reading, outside every bound. It overflows instead, and the reader catches up in pages."""
    world = World(queue_events=5)
    cursor, _ = world.delivery.subscribe(CONV, None, 0, False)
    world.catch_up()
    world.chunks(5, direct=True)  # exactly the bound: written at once
    assert cursor.written_seq == 5 and world.delivery.overflows == 0
    world.chunks(6, direct=True)  # over it: not written, the cursor falls behind
    assert world.delivery.overflows == 1 and cursor.phase is Phase.OVERFLOWED
    assert covered(bytes(world.out)) == list(range(1, 6))
    world.catch_up(limit=2)
    assert cursor.phase is Phase.LIVE
    assert covered(bytes(world.out)) == list(range(1, 12))


def test_a_plain_resume_and_shared_cache_pages_never_merge() -> None:
    world = World()
    world.chunks(6)
    resuming, _ = world.delivery.subscribe(CONV, None, 0, False)
    assert len(world.delivery.plan_page(resuming, world.read_page(resuming, 10)).events) == 6
    resuming.phase = Phase.OVERFLOWED
    shared = world.read_page(resuming, 10, shared=True)
    assert len(world.delivery.plan_page(resuming, shared).events) == 6
    assert len(World(merge=False).delivery.plan_page(resuming, world.read_page(resuming, 10))
               .events) == 6


def test_overflow_keeps_a_resuming_cursor_unmerged() -> None:
    world = World(queue_events=2)
    live, _ = world.delivery.subscribe("c", "r1", 0, True)
    world.catch_up()
    resuming, _ = world.delivery.subscribe("c", None, 0, False)
    world.chunks(3)  # over the bound for ``live``
    assert live.phase is Phase.OVERFLOWED and resuming.phase is Phase.RESUMING


def test_run_filter_ends_at_done_and_scans_past_other_runs() -> None:
    world = World()
    cursor, _ = world.delivery.subscribe(CONV, "r1", 0, True)
    world.catch_up()
    world.publish([chunk(1, run="r2"), chunk(2, run="r2")], direct=True)
    assert cursor.written_seq == 2, "nothing for r1, nothing pending: scanned past"
    world.publish([chunk(3), done(4), chunk(5, run="r2")], direct=True)
    assert cursor.ended and CONV not in {c.conversation_id for c in world.delivery.cursors.values()}
    assert covered(bytes(world.out)) == [3, 4]


def test_a_catch_up_page_cut_at_the_runs_done_finishes_the_cursor() -> None:
    world = World()
    world.publish([chunk(1), done(2), chunk(3, run="r2")])
    cursor, _ = world.delivery.subscribe(CONV, "r1", 0, True)
    assert world.write_page(cursor, world.read_page(cursor, 10)) is True
    assert cursor.ended and covered(bytes(world.out)) == [1, 2]


def test_ending_a_cursor_purges_its_queued_items() -> None:
    world = World()
    old, _ = world.delivery.subscribe(CONV, None, 0, False)
    other, _ = world.delivery.subscribe("d", None, 0, False)
    world.catch_up()
    world.chunks(3)
    world.chunks(2)
    assert world.delivery.queue.events == 5
    world.delivery.end(old)
    assert world.delivery.queue.events == 0 and world.delivery.queue.bytes == 0
    assert other.phase is Phase.LIVE and not other.ended


def test_resubscribe_replaces_the_cursor_and_its_stale_items() -> None:
    world = World()
    old, _ = world.delivery.subscribe(CONV, None, 0, False)
    world.catch_up()
    world.chunks(4)  # queued for ``old``
    new, replaced = world.delivery.subscribe(CONV, None, 2, False)
    assert replaced is old and old.ended and not world.delivery.queue.items
    world.catch_up()
    world.chunks(1)
    world.flush()
    assert covered(bytes(world.out)) == [3, 4, 5]
    assert new.phase is Phase.LIVE


def test_a_page_finishing_after_unsubscribe_does_not_revive_the_cursor() -> None:
    world = World()
    world.chunks(3)
    cursor, _ = world.delivery.subscribe(CONV, None, 0, False)
    page = world.read_page(cursor, 10)
    out = world.delivery.plan_page(cursor, page)
    world.delivery.end(cursor)
    assert world.delivery.page_written(cursor, out, world.published) is False
    assert cursor.phase is Phase.ENDED


def test_random_interleavings_are_gap_free_and_duplicate_free() -> None:
    """Publishing, direct writes, queueing, overflow and paged catch-up in random order:
    the written stream is always exactly 1..N."""
    for seed in range(200):
        rng = random.Random(seed)
        world = World(queue_events=rng.choice([3, 8, 50]), merge=rng.random() < 0.5)
        cursor, _ = world.delivery.subscribe(CONV, None, 0, False)
        for _ in range(rng.randint(5, 40)):
            action = rng.random()
            if action < 0.5:
                parked = not world.delivery.lagging() and not world.delivery.queue.items
                world.chunks(rng.randint(1, 4), direct=parked and rng.random() < 0.7)
            elif action < 0.7:
                world.flush()
            else:
                for lagging in world.delivery.lagging():
                    page = world.read_page(lagging, rng.randint(1, 6))
                    world.write_page(lagging, page, between=rng.choice([0, 0, 2]))
        world.catch_up()
        assert covered(bytes(world.out)) == list(range(1, world.published + 1)), seed
        assert cursor.phase is Phase.LIVE
