"""One connection's delivery state, I/O-free: its cursors, its bounded queue, and overflow.

``Delivery`` is the sans-I/O core of a sink (the model is python-websockets' protocol.py):
the sink feeds it live batches (``offer``) and catch-up pages (``plan_page``), takes what to
write (``take``) and reports what was written (``written``); it never touches a socket, a
task or a clock, so tests drive it by feeding data.

The rules it keeps:

- The queue is bounded in events and bytes. Past either bound it is dropped whole and every
  cursor falls back to its last *written* seq (``Cursor.fall_behind``): the sink then reads
  the gap from the store, so a slow peer costs memory up to the bound and never more.
- A cursor that ends (unsubscribe, replaced by a re-subscribe, its run's ``done``) takes its
  queued items with it (``end`` purges them), so nothing of a dropped subscription is
  written after the reply that dropped it.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.fanout.batch import Batch, Blob, Transport
from app.sinks.cursor import Cursor, Key, Listener, Page, PageOut, subscription_key


class Item:
    """A queued view of one live batch for one cursor (the batch's shared ``Blob``)."""

    __slots__ = ("blob", "cursor")

    def __init__(self, cursor: Cursor, blob: Blob) -> None:
        self.cursor = cursor
        self.blob = blob

    @property
    def data(self) -> bytes:
        return self.blob.data

    @property
    def count(self) -> int:
        return self.blob.count


class SendQueue:
    """Live items waiting for the writer, with their event and byte totals."""

    __slots__ = ("bytes", "events", "items", "max_bytes", "max_events")

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        # The shared empty tuple until something is queued: an idle connection keeps no
        # list of its own (a list, not a deque, once used: an empty deque costs a 64-slot
        # block per connection).
        self.items: Sequence[Item] = ()
        self.events = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def push(self, cursor: Cursor, blob: Blob) -> bool:
        """Queue ``blob``; False (nothing queued) when it would pass a bound."""
        events = self.events + blob.count
        size = self.bytes + len(blob.data)
        if events > self.max_events or size > self.max_bytes:
            return False
        self.events = events
        self.bytes = size
        items = self.items
        if isinstance(items, list):
            items.append(Item(cursor, blob))
        else:
            self.items = [Item(cursor, blob)]
        return True

    def fits(self, blob: Blob) -> bool:
        """``blob`` alone is within this queue's bounds (events and bytes)."""
        return blob.count <= self.max_events and len(blob.data) <= self.max_bytes

    def take(self) -> Sequence[Item]:
        items = self.items
        self.items = ()
        self.events = 0
        self.bytes = 0
        return items

    def purge(self, cursor: Cursor) -> None:
        """Forget every item of ``cursor`` (it ended)."""
        if any(item.cursor is cursor for item in self.items):
            self.items = [item for item in self.items if item.cursor is not cursor]
            self.events = sum(item.count for item in self.items)
            self.bytes = sum(len(item.data) for item in self.items)


class Delivery:
    """Every subscription of one connection and what to write for them next."""

    # Slots, and the cursors in a list: one of these per open connection (issue 13, P3).
    __slots__ = ("_cursors", "dropped_events", "merge", "overflows", "queue", "transport")

    def __init__(
        self, transport: Transport, queue_events: int, queue_bytes: int, merge: bool
    ) -> None:
        self.transport = transport
        self.queue = SendQueue(queue_events, queue_bytes)
        # A tuple, not a dict by key: an SSE stream holds one cursor, a WebSocket a few
        # (a one-entry dict is 224 bytes, a one-entry tuple 56); lookups by key and changes
        # happen per command, not per event.
        self._cursors: tuple[Cursor, ...] = ()
        self.merge = merge  # fold chunks when catching up after an overflow
        self.overflows = 0
        self.dropped_events = 0  # queued events dropped by the last overflow

    @property
    def cursors(self) -> dict[Key, Cursor]:
        """The subscriptions by key: a snapshot (changing it changes nothing here)."""
        return {c.key: c for c in self._cursors}

    def count(self) -> int:
        """How many subscriptions this connection holds."""
        return len(self._cursors)

    def cursor(self, key: Key) -> Cursor | None:
        """The subscription with ``key``, if any."""
        for cursor in self._cursors:
            if cursor.key == key:
                return cursor
        return None

    # ---- subscriptions -----------------------------------------------------------------

    def subscribe(
        self,
        conversation_id: str,
        run_id: str | None,
        after: int,
        ends_on_done: bool,
        listener: Listener | None = None,
        types: frozenset[str] | None = None,
    ) -> tuple[Cursor, Cursor | None]:
        """A new cursor resuming after ``after``, and the one it replaced (now ended)."""
        old = self.cursor(subscription_key(conversation_id, run_id))
        if old is not None:
            self.end(old)
        cursor = Cursor(conversation_id, run_id, after, ends_on_done, listener, types)
        self._cursors += (cursor,)
        return cursor, old

    def end(self, cursor: Cursor) -> None:
        """End ``cursor`` and drop what it still had queued."""
        cursor.end()
        if cursor in self._cursors:
            self._cursors = tuple(c for c in self._cursors if c is not cursor)
        self.queue.purge(cursor)

    def end_all(self) -> tuple[Cursor, ...]:
        cursors, self._cursors = self._cursors, ()
        for cursor in cursors:
            cursor.end()
        self.queue.take()
        return cursors

    def lagging(self) -> list[Cursor]:
        return [c for c in self._cursors if c.lagging]

    def has_lagging(self) -> bool:
        return any(c.lagging for c in self._cursors)

    # ---- live --------------------------------------------------------------------------

    def offer(self, cursor: Cursor, batch: Batch, direct: bool) -> Blob | None:
        """A live batch for ``cursor``. Returns the blob to write right now when ``direct``
        (the writer is parked) and nothing is queued, so order is kept; else queues it (or
        overflows) and returns None. A blob over the queue's own bound is never written
        directly: one huge committed batch (``store_batch`` is large) would otherwise sit
        whole in the transport's buffer of a reader that stopped reading, outside every
        bound; it overflows instead, and the reader catches up page by page."""
        blob = cursor.take_live(batch, self.transport)
        if blob is None:
            return None
        if blob.count == 0:
            if not self.queue.items:
                cursor.scanned_past(blob.last_seq)  # nothing of ours pending: skip ahead
            return None
        if direct and not self.queue.items and self.queue.fits(blob):
            return blob
        self.enqueue(cursor, blob)
        return None

    def enqueue(self, cursor: Cursor, blob: Blob) -> None:
        if not self.queue.push(cursor, blob):
            self.overflow()

    def overflow(self) -> int:
        """Drop the queue; every cursor catches up from what it had written. Returns how
        many queued events were dropped."""
        dropped = self.dropped_events = self.queue.events
        self.queue.take()
        for cursor in self._cursors:
            cursor.fall_behind()
        self.overflows += 1
        return dropped

    def take(self) -> Sequence[Item]:
        """Everything queued, oldest first, to be written as one write."""
        return self.queue.take()

    def written(self, items: Sequence[Item]) -> tuple[int, list[Cursor]]:
        """The transport took ``items``: (events delivered, cursors that finished)."""
        count = 0
        finished: list[Cursor] = []
        for item in items:
            blob = item.blob
            count += blob.count
            if item.cursor.wrote(blob.last_seq, blob.done_run):
                finished.append(item.cursor)
        return count, finished

    # ---- catch-up ----------------------------------------------------------------------

    def plan_page(self, cursor: Cursor, page: Page) -> PageOut:
        return cursor.plan_page(page, self.merge)

    def page_written(self, cursor: Cursor, out: PageOut, published_now: int) -> bool:
        return cursor.page_written(out, published_now)


def joined(items: Sequence[Item]) -> bytes:
    """One write's bytes: a lone item's shared bytes as they are, else joined once."""
    return items[0].blob.data if len(items) == 1 else b"".join([i.blob.data for i in items])
