"""Where one subscription stands, and what it must be sent next: no I/O, no asyncio.

A ``Cursor`` is one subscription's seq bookkeeping. It is fed live batches (``take_live``)
and catch-up pages (``plan_page`` / ``page_written``) and answers with what to write; the
sink does the writing and tells it what went out (``wrote``). Keeping this free of sockets
and tasks is what lets tests/sinks/test_cursor.py drive every case (gap, duplicate, overflow,
catch-up, merge) by feeding data, as python-websockets tests its sans-I/O protocol.

Two marks per cursor:

- ``written_seq``: the highest seq the transport took (or that a run filter scanned past).
  Every catch-up restarts here, so nothing written is sent twice and nothing unwritten is
  skipped.
- ``queued_seq``: the highest seq queued *or* written. A live batch at or below it is a
  duplicate; a batch reaching past it is trimmed to what lies above it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

from app.fanout.batch import Blob, Transport
from app.sinks.merge import merge_chunks

if TYPE_CHECKING:
    from app.fanout.batch import Batch
    from protocol.codec import EncodedEvent

Key = tuple[str, str]


class Phase(enum.Enum):
    """A subscription's delivery phase; only ``LIVE`` takes batches from the hub."""

    RESUMING = "resuming"  # reading what it missed from its start position (never merges)
    OVERFLOWED = "overflowed"  # its queue was dropped: reading back from ``written_seq``
    LIVE = "live"  # caught up with the hub's published mark: takes live batches
    ENDED = "ended"  # unsubscribed, replaced, its run's ``done`` written, or its sink closed


class Listener(Protocol):
    """Who a cursor hands live batches to (the sink)."""

    def offer(self, cursor: Cursor, batch: Batch) -> None: ...


def subscription_key(conversation_id: str, run_id: str | None) -> Key:
    """One subscription per key and connection: a run filter, or a whole conversation."""
    return ("run", run_id) if run_id is not None else ("conversation", conversation_id)


class Page:
    """One read of missed events (from the replay cache or the store), described so the
    cursor can decide without I/O what to write and whether it is now caught up."""

    __slots__ = ("complete", "events", "published", "scanned", "shared")

    def __init__(
        self,
        events: list[EncodedEvent],
        scanned: int,
        complete: bool,
        published: int,
        shared: bool,
    ) -> None:
        self.events = events  # seq > the cursor's written_seq, of its run if it filters
        self.scanned = scanned  # the highest seq the read looked at
        # Fewer rows than asked for: the read saw everything committed when it began.
        self.complete = complete
        self.published = published  # the hub's published mark, sampled before the read
        # The hub's own objects with frames built: never merged (that would decode per sink).
        self.shared = shared

    @classmethod
    def read(
        cls,
        rows: list[EncodedEvent],
        after: int,
        limit: int,
        published: int,
        run_id: str | None = None,
        shared: bool = False,
    ) -> Page:
        """A page from ``rows`` read after ``after`` (at most ``limit``); ``run_id`` filters
        rows that were read for the whole conversation (the cache; the store filters)."""
        scanned = rows[-1].seq if rows else after
        events = rows if run_id is None else [e for e in rows if e.run_id == run_id]
        return cls(events, scanned, len(rows) < limit, published, shared)


class PageOut:
    """What to write for one page: ``events`` (possibly merged), and where the page ends."""

    __slots__ = ("done_at", "events", "folded", "page")

    def __init__(
        self, page: Page, events: list[EncodedEvent], folded: int, done_at: int | None
    ) -> None:
        self.page = page
        self.events = events
        self.folded = folded  # stored events folded away by merging (a metric)
        self.done_at = done_at  # seq of the filtered run's ``done`` in this page, if any


class Cursor:
    """One subscription: its filter, phase and seq marks. Also the hub's ``Subscriber``."""

    __slots__ = (
        "conversation_id",
        "ends_on_done",
        "listener",
        "phase",
        "queued_seq",
        "run_id",
        "types",
        "written_seq",
    )

    def __init__(
        self,
        conversation_id: str,
        run_id: str | None,
        after: int,
        ends_on_done: bool,
        listener: Listener | None = None,
        types: frozenset[str] | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self.run_id = run_id
        # Event types this subscription wants (None: all); ``done`` is always among them.
        self.types = types
        self.ends_on_done = ends_on_done
        self.listener = listener
        self.phase = Phase.RESUMING
        self.queued_seq = after
        self.written_seq = after

    def __repr__(self) -> str:
        return f"Cursor({self.key}, {self.phase.value}, written={self.written_seq})"

    @property
    def key(self) -> Key:
        """Its subscription key; made on use (a tuple per idle cursor is memory)."""
        return subscription_key(self.conversation_id, self.run_id)

    @property
    def lagging(self) -> bool:
        return self.phase is Phase.RESUMING or self.phase is Phase.OVERFLOWED

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    def deliver(self, batch: Batch) -> None:
        """The hub's call (``fanout.hub.Subscriber``): hand the batch to our sink."""
        if self.listener is not None:
            self.listener.offer(self, batch)

    # ---- live ------------------------------------------------------------------------

    def take_live(self, batch: Batch, transport: Transport) -> Blob | None:
        """The part of a live batch above ``queued_seq`` (shared bytes when it is the whole
        batch), or None when not live or already had. The caller queues or writes it."""
        if self.phase is not Phase.LIVE or batch.last_seq <= self.queued_seq:
            return None
        blob = batch.blob(transport, self.run_id, self.queued_seq, self.types)
        self.queued_seq = batch.last_seq
        return blob

    def wrote(self, last_seq: int, done_run: bool) -> bool:
        """The transport took frames up to ``last_seq``. True: that was this run's ``done``
        and the subscription ends with it (the caller ends the cursor)."""
        if self.phase is Phase.ENDED:
            return False
        if last_seq > self.written_seq:
            self.written_seq = last_seq
        return done_run and self.ends_on_done

    def scanned_past(self, last_seq: int) -> None:
        """A live batch held nothing for this run filter and nothing of ours is queued."""
        if last_seq > self.written_seq:
            self.written_seq = last_seq

    def fall_behind(self) -> None:
        """The queue was dropped: restart from what was written. A resuming cursor keeps
        its phase (a plain resume never merges); a live one becomes ``OVERFLOWED``."""
        if self.phase is Phase.ENDED:
            return
        if self.phase is Phase.LIVE:
            self.phase = Phase.OVERFLOWED
        self.queued_seq = self.written_seq

    def end(self) -> None:
        self.phase = Phase.ENDED

    # ---- catch-up --------------------------------------------------------------------

    def plan_page(self, page: Page, merge: bool) -> PageOut:
        """What to write for ``page``: cut at the filtered run's ``done``; fold chunks only
        after an overflow (``merge``), never for a plain resume or shared frames."""
        events = page.events
        if self.types is not None:
            events = [e for e in events if e.type in self.types]
        done_at: int | None = None
        if self.run_id is not None:
            for i, event in enumerate(events):
                if event.type == "done":
                    done_at = event.seq
                    events = events[: i + 1]
                    break
        if merge and self.phase is Phase.OVERFLOWED and not page.shared and events:
            merged = merge_chunks(events)
            return PageOut(page, merged, len(events) - len(merged), done_at)
        return PageOut(page, events, 0, done_at)

    def page_written(self, out: PageOut, published_now: int) -> bool:
        """Advance past a written page; go live when it reached the hub's published mark
        (read in the same synchronous step, so no batch slips between). True: the page
        held this run's ``done`` and the subscription ends with it."""
        if self.phase is Phase.ENDED:
            return False  # unsubscribed while the page was being written: stay ended
        if out.done_at is not None and self.ends_on_done:
            self.written_seq = max(self.written_seq, out.done_at)
            return True
        page = out.page
        reached = page.scanned if out.done_at is None else out.done_at
        if reached > self.written_seq:
            self.written_seq = reached
        if page.complete and page.published > self.written_seq:
            # Read everything committed when the read began: scanned through ``published``.
            self.written_seq = page.published
        if self.written_seq >= published_now and self.lagging:
            self.phase = Phase.LIVE
            self.queued_seq = self.written_seq
        return False
