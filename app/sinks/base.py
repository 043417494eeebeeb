"""The sink: one connection's writer task around the I/O-free ``Delivery`` and a ``Wire``.

One sink per connection; it may hold many subscriptions (a WebSocket does; SSE holds one).
The connection's handler owns the sink and runs ``Sink.run()``, the only task that writes
events. The hub calls ``offer`` (through each ``Cursor``) synchronously on every commit.

What is decided where:

- ``Delivery`` / ``Cursor`` (delivery.py, cursor.py): which bytes each subscription gets,
  queue bounds, overflow, catch-up paging, going live. No I/O.
- ``Sink`` (here): the writer loop, timers (write timeout, idle, lifetime), the store and
  replay-cache reads, hub registration, metrics, and why the connection ended.
- ``Wire`` (sse.py, ws.py): how bytes reach this client.

Speed: a live batch reaching a parked writer is written from the hub's callback
(``_write_now``), the same ``bytes`` object for every subscriber of a view; only a write
that must wait for the peer arms a timer; the lifetime is one timer for the whole sink.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from app import metrics
from app.fanout.batch import Batch, Blob, frames_of
from app.fanout.hub import Hub
from app.sinks.cursor import Cursor, Key, Page
from app.sinks.delivery import Delivery, joined
from app.sinks.policy import SinkPolicy
from app.sinks.wire import Wake, Wire

if TYPE_CHECKING:
    from app.store.base import EventStore

log = structlog.get_logger(__name__)

# Close reasons meaning the client is gone (or stopped reading): ``Sink.peer_lost``.
PEER_LOST_REASONS = frozenset({"disconnected", "write_timeout"})


class SinkClosed(Exception):
    """The sink is closed (the reason is in ``Sink.close_reason``): no more subscriptions,
    no more writes."""


class Writer(enum.Enum):
    """What the writer task is doing, as far as the hub's callback needs to know."""

    BUSY = "busy"  # running the loop: live batches go to the queue
    PARKED = "parked"  # waiting with nothing to do: live batches are written directly
    MUST_DRAIN = "must_drain"  # a direct write passed the high-water mark: drain first


def caused_by_timeout(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what it wraps) is a timeout, e.g. the kernel's
    TCP_USER_TIMEOUT surfacing as ETIMEDOUT under aiohttp's ``Connection lost``."""
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


async def read_page(hub: Hub, store: EventStore, cursor: Cursor, limit: int) -> Page:
    """The next page a lagging cursor missed: from the replay cache when it reaches back
    (the hub's own frames, no store round trip), else from the store. The hub's published
    mark is sampled first, so a complete page covers everything up to it."""
    conversation = cursor.conversation_id
    after = cursor.written_seq
    published = hub.published_seq(conversation)
    cached = hub.recent.after(conversation, after, limit)
    if cached is not None:
        return Page.read(cached, after, limit, published, cursor.run_id, shared=True)
    rows = await store.read_events(conversation, after, limit, run_id=cursor.run_id)
    return Page.read(rows, after, limit, published)


class Sink:
    """One connection's delivery: subscriptions in, frames out, until closed."""

    def __init__(
        self, wire: Wire, hub: Hub, store: EventStore, policy: SinkPolicy, connection_id: str
    ) -> None:
        self.wire = wire
        self.transport = wire.name  # "sse" | "ws": the metrics label
        self.hub = hub
        self.store = store
        self.policy = policy
        self.connection_id = connection_id
        self.delivery = Delivery(
            wire.name, policy.queue_events, policy.queue_bytes, policy.merge_chunks
        )
        # Called when a subscription ends with its run's ``done`` (SSE: the response ends;
        # WebSocket: the connection forgets the run).
        self.on_finished: Callable[[Cursor], None] | None = None
        self._wake = Wake()
        self._writer = Writer.BUSY
        # A goodbye to say: "max_lifetime" at once, "shutdown" once everything is written.
        self._ending: str | None = None
        self._overflows = 0
        self.closed = False
        self.close_reason: str | None = None
        self.delivered = 0
        self._last_delivery = time.monotonic()
        self._delivered_metric = metrics.DELIVERED.labels(self.transport)

    @property
    def log(self) -> Any:
        """Bound on use: sinks log rarely, and a bound logger per idle connection is memory."""
        return log.bind(connection_id=self.connection_id, transport=self.transport)

    @property
    def subs(self) -> dict[Key, Cursor]:
        """The open subscriptions by key (``/metrics`` counts the lagging ones)."""
        return self.delivery.cursors

    @property
    def queued_events(self) -> int:
        return self.delivery.queue.events

    @property
    def peer_lost(self) -> bool:
        """The client is gone or stopped reading (``disconnected`` or ``write_timeout``),
        as opposed to a close by policy (``done``, ``max_lifetime``, ``shutdown``...):
        what ``on_disconnect: cancel`` acts on."""
        return self.close_reason in PEER_LOST_REASONS

    # ---- subscriptions -------------------------------------------------------------------

    def subscribe(
        self,
        conversation_id: str,
        *,
        after: int = 0,
        run_id: str | None = None,
        ends_on_done: bool = False,
    ) -> Cursor:
        """Start delivering after ``after``; replaces a subscription with the same key.

        Refused once the sink is closed: a command finishing after its socket died must
        not leave a subscriber in the hub that nothing will ever remove."""
        if self.closed:
            raise SinkClosed(self.close_reason or "closed")
        cursor, replaced = self.delivery.subscribe(
            conversation_id, run_id, after, ends_on_done, listener=self
        )
        if replaced is not None:
            self.hub.remove(replaced)
        self.hub.add(cursor)
        self._wake.set()
        return cursor

    def unsubscribe(self, key: Key) -> bool:
        """Drop a subscription and whatever of it is still queued."""
        cursor = self.delivery.cursors.get(key)
        if cursor is None:
            return False
        self._end(cursor)
        return True

    def _end(self, cursor: Cursor) -> None:
        self.delivery.end(cursor)
        self.hub.remove(cursor)

    def _finish(self, cursor: Cursor) -> None:
        """A subscription's run ended with ``done`` written."""
        self._end(cursor)
        if self.on_finished is not None:
            self.on_finished(cursor)

    def release(self) -> None:
        """Closed for good: every subscription leaves the hub. Idempotent; ``run`` calls it
        on exit and owners call it in their cleanup (a writer that never started)."""
        self.closed = True
        for cursor in self.delivery.end_all():
            self.hub.remove(cursor)

    # ---- the hot path: called by the hub, synchronously ---------------------------------

    def offer(self, cursor: Cursor, batch: Batch) -> None:
        if self.closed:
            return
        delivery = self.delivery
        blob = delivery.offer(cursor, batch, self._writer is Writer.PARKED)
        if blob is not None:
            self._write_now(cursor, blob)
        elif delivery.queue.items or cursor.lagging:
            if delivery.overflows != self._overflows:
                self._overflowed()
            self._wake.set()

    def _overflowed(self) -> None:
        self._overflows = self.delivery.overflows
        metrics.CATCHUPS.labels(self.transport).inc()
        self.log.info("sink_overflow", dropped_events=self.delivery.dropped_events)

    def _write_now(self, cursor: Cursor, blob: Blob) -> None:
        """Write a live batch from the hub's callback while the writer task is parked.

        The task parks only with nothing queued or lagging, so writing here keeps the
        order, and saves the task wake-up (call_soon, task step), which profiled at about a
        third of the per-subscriber cost of a fan-out.
        """
        try:
            ready = self.wire.write_nowait(blob.data)
        except (ConnectionError, RuntimeError) as exc:
            self.transport_lost(exc)
            return
        self._delivered(blob.count)
        if cursor.wrote(blob.last_seq, blob.done_run):
            self._finish(cursor)
        if not ready:
            # Over the high-water mark: the task drains (under write_timeout) before any
            # further write, and nothing more is written from here until it parks again.
            self._writer = Writer.MUST_DRAIN
            self._wake.set()

    # ---- closing -------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Ask the writer to stop; safe from any callback, any number of times. The first
        reason given is the one kept."""
        if self.close_reason is None:
            self.close_reason = reason
        if not self.closed:
            self.closed = True
            self._wake.set()

    def transport_lost(self, exc: BaseException | None = None) -> None:
        """The wire failed under us. A reset or EOF is ``disconnected``; only a write that
        timed out (the wire's own ping, or the kernel's TCP_USER_TIMEOUT) is
        ``write_timeout``. Waiting in a drain when the reset came does not make it one."""
        if self.wire.timed_out() or caused_by_timeout(exc):
            self.write_timed_out()
        else:
            self.close("disconnected")

    def write_timed_out(self) -> None:
        """The peer did not read within ``write_timeout``: drop it now."""
        if not self.closed:
            metrics.PEERS_DROPPED.labels(self.transport, "write_timeout").inc()
        self.close("write_timeout")
        self.wire.abort()

    def shutdown(self) -> None:
        """Deliver what is queued or still to catch up, then say goodbye and close."""
        if self._ending is None:
            self._ending = "shutdown"
        self._wake.set()

    def abort(self) -> None:
        self.wire.abort()

    def _lifetime_over(self) -> None:
        self._ending = "max_lifetime"
        self._wake.set()

    # ---- the writer task -----------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until closed. Returns normally; the reason is ``close_reason``."""
        metrics.CONNECTIONS.labels(self.transport).inc()
        lifetime = self.policy.max_lifetime
        # One timer for the whole lifetime, not one per sleep: a per-sleep timeout costs a
        # timer-heap push and cancel on every wake-up, i.e. per subscriber per event.
        timer = (
            asyncio.get_running_loop().call_later(lifetime, self._lifetime_over)
            if lifetime > 0 else None
        )
        try:
            await self._deliver()
        except SinkClosed:
            pass
        except (ConnectionError, RuntimeError) as exc:
            # aiohttp raises ClientConnectionResetError / RuntimeError on a closed transport.
            self.transport_lost(exc)
            self.log.debug("sink_write_failed", error=str(exc))
        finally:
            self.release()
            if timer is not None:
                timer.cancel()
            metrics.CONNECTIONS.labels(self.transport).dec()

    async def _deliver(self) -> None:
        while not self.closed:
            if self._writer is Writer.MUST_DRAIN:
                self._writer = Writer.BUSY
                await self._timed_drain()
            elif self._ending == "max_lifetime":
                await self._goodbye()
            elif lagging := self.delivery.lagging():
                for cursor in lagging:
                    await self._catch_up(cursor)
                await self._flush()
            elif self.delivery.queue.items:
                await self._flush()
            elif self._ending is not None:
                await self._goodbye()
            else:
                await self._sleep()

    async def _goodbye(self) -> None:
        reason = self._ending or "shutdown"
        try:
            async with asyncio.timeout(self.policy.write_timeout):
                await self.wire.goodbye(reason)
        except TimeoutError:
            self.wire.abort()
        self.close(reason)

    async def _sleep(self) -> None:
        """Wait for an offer, a close, or the lifetime timer armed in ``run``."""
        self._wake.clear()
        idle = self.policy.idle_timeout
        self._writer = Writer.PARKED
        try:
            if idle <= 0:
                await self._wake.wait()
                return
            left = self._last_delivery + idle - time.monotonic()
            if left <= 0:
                self.close("idle_timeout")
                return
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                pass
        finally:
            if self._writer is Writer.PARKED:
                self._writer = Writer.BUSY

    async def _flush(self) -> None:
        """Write everything queued in one transport write."""
        items = self.delivery.take()
        if not items:
            return
        await self._timed_write(joined(items))
        count, finished = self.delivery.written(items)
        self._delivered(count)
        for cursor in finished:
            self._finish(cursor)

    def _delivered(self, count: int) -> None:
        self.delivered += count
        self._last_delivery = time.monotonic()
        self._delivered_metric.inc(count)

    async def _timed_write(self, data: bytes) -> None:
        """Write; only a write that has to wait for the peer runs under ``write_timeout``
        (a timer per write would be a timer per subscriber per event)."""
        if not self.wire.write_nowait(data):
            await self._timed_drain()

    async def _timed_drain(self) -> None:
        try:
            async with asyncio.timeout(self.policy.write_timeout):
                await self.wire.drain()
        except TimeoutError:
            self.write_timed_out()
            raise SinkClosed from None

    async def _catch_up(self, cursor: Cursor) -> None:
        """Write one page a lagging cursor missed; it goes live when that reaches the hub."""
        if cursor.ended or self.closed:
            return
        page = await read_page(self.hub, self.store, cursor, self.policy.catchup_page)
        if cursor.ended or self.closed:
            return
        out = self.delivery.plan_page(cursor, page)
        if out.events:
            if out.folded:
                metrics.MERGED.labels(self.transport).inc(out.folded)
            await self._timed_write(frames_of(out.events, self.transport))
            self._delivered(len(out.events))
        published = self.hub.published_seq(cursor.conversation_id)
        if self.delivery.page_written(cursor, out, published):
            self._finish(cursor)
