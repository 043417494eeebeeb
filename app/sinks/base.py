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

- ``Wheel`` / ``Deadlines`` (timers.py): heartbeat, lifetime and idle, for every sink of
  the loop on one timer; the sink is one entry (``on_timer``), not a task and a timer.
- reading what a lagging subscription missed (catchup.py); why a sink ended (ending.py).

Speed: a live batch reaching a parked writer is written from the hub's callback
(``_write_now``), the batch's shared bytes and HTTP chunk for every subscriber of a view;
only a write that must wait for the peer arms a timer; deliveries move a plain-int tally
and read the wheel's coarse clock, no lock and no clock call per write.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from app import metrics
from app.fanout.batch import Batch, Blob
from app.fanout.hub import Hub
from app.sinks import pump
from app.sinks.catchup import read_page
from app.sinks.cursor import Cursor, Key
from app.sinks.delivery import Delivery
from app.sinks.ending import PEER_LOST_REASONS, SinkClosed, caused_by_timeout
from app.sinks.policy import SinkPolicy
from app.sinks.pump import Writer
from app.sinks.timers import Deadlines, Due, Wheel, wheel
from app.sinks.wire import Wake, Wire

if TYPE_CHECKING:
    from app.store.base import EventStore

__all__ = ["PEER_LOST_REASONS", "Sink", "SinkClosed", "caused_by_timeout", "read_page"]

log = structlog.get_logger(__name__)

class Sink:
    """One connection's delivery: subscriptions in, frames out, until closed."""

    # Slots, not a __dict__: one of these per open connection (idle memory, issue 13).
    __slots__ = (
        "_deadlines", "_last_delivery", "_overflows", "_wheel", "close_reason",
        "closed", "connection_id", "delivered", "delivery", "ending", "hub", "on_finished",
        "on_stopped", "policy", "store", "wake", "wheel_tick", "wire", "writer",
    )

    def __init__(
        self, wire: Wire, hub: Hub, store: EventStore, policy: SinkPolicy, connection_id: str
    ) -> None:
        self.wire = wire
        self.hub = hub
        self.store = store
        self.policy = policy
        self.connection_id = connection_id
        self.delivery = Delivery(wire.name, policy.queue_events, policy.queue_bytes,
                                 policy.merge_chunks)
        # Called when a subscription ends with its run's ``done`` (SSE: the response ends;
        # WebSocket: the connection forgets the run).
        self.on_finished: Callable[[Cursor], None] | None = None
        # Called last when the writer task ends, on every path (cancelled too): the
        # handler's clean-up, so the handler awaits ``run()`` directly and an idle stream
        # holds no frame of its own for a try/finally (api/http.py ``serve_registered``).
        self.on_stopped: Callable[[Sink], None] | None = None
        # Shared with the writer task (pump.py): its wake-up, its state, a goodbye to say
        # ("max_lifetime" at once, "shutdown" once everything is written).
        self.wake = Wake()
        self.writer = Writer.BUSY
        self.ending: str | None = None
        self._overflows = 0
        self.closed = False
        self.close_reason: str | None = None
        self.delivered = 0
        self._wheel: Wheel | None = None
        self.wheel_tick: int | None = None  # the wheel's (timers.py)
        self._deadlines: Deadlines | None = None
        self._last_delivery = 0.0
        metrics.DELIVERED.counts.setdefault(wire.name, 0)

    @property
    def transport(self) -> str:
        """"sse" | "ws": the metrics label (the wire's name; not a slot of its own)."""
        return self.wire.name

    @property
    def log(self) -> Any:
        """Bound on use: sinks log rarely, and a bound logger per idle connection is memory."""
        return log.bind(connection_id=self.connection_id, transport=self.transport)

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
        types: frozenset[str] | None = None,
    ) -> Cursor:
        """Start delivering after ``after``; replaces a subscription with the same key.

        Refused once the sink is closed: a command finishing after its socket died must
        not leave a subscriber in the hub that nothing will ever remove."""
        if self.closed:
            raise SinkClosed(self.close_reason or "closed")
        cursor, replaced = self.delivery.subscribe(
            conversation_id, run_id, after, ends_on_done, listener=self, types=types
        )
        if replaced is not None:
            self.hub.remove(replaced)
        self.hub.add(cursor)
        self.wake.set()
        return cursor

    def unsubscribe(self, key: Key) -> bool:
        """Drop a subscription and whatever of it is still queued."""
        cursor = self.delivery.cursor(key)
        if cursor is None:
            return False
        self._end(cursor)
        return True

    def _end(self, cursor: Cursor) -> None:
        self.delivery.end(cursor)
        self.hub.remove(cursor)

    def finish(self, cursor: Cursor) -> None:
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
        blob = delivery.offer(cursor, batch, self.writer is Writer.PARKED)
        if blob is not None:
            self._write_now(cursor, blob)
        elif delivery.queue.items or cursor.lagging:
            if delivery.overflows != self._overflows:
                self._overflowed()
            self.wake.set()

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
            ready = self.wire.write_blob(blob)
        except (ConnectionError, RuntimeError) as exc:
            self.transport_lost(exc)
            return
        self.delivered_now(blob.count)
        if cursor.wrote(blob.last_seq, blob.done_run):
            self.finish(cursor)
        if not ready:
            # Over the high-water mark: the task drains (under write_timeout) before any
            # further write, and nothing more is written from here until it parks again.
            self.writer = Writer.MUST_DRAIN
            self.wake.set()

    # ---- closing -------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Ask the writer to stop; safe from any callback, any number of times. The first
        reason given is the one kept."""
        if self.close_reason is None:
            self.close_reason = reason
        if not self.closed:
            self.closed = True
            self.wake.set()

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
        if self.ending is None:
            self.ending = "shutdown"
        self.wake.set()

    def abort(self) -> None:
        self.wire.abort()

    # ---- timers (one entry on the loop's wheel) --------------------------------------------

    def on_timer(self, now: float) -> None:
        """The wheel's call: heartbeat, lifetime, idle; then the next visit."""
        if self.closed or self._deadlines is None or self._wheel is None:
            return
        due = self._deadlines.due(now, self._last_delivery)
        if due & Due.LIFETIME:
            self.ending = "max_lifetime"
            self.wake.set()
        if due & Due.IDLE and self.writer is Writer.PARKED:
            self.close("idle_timeout")
            return
        if due & Due.HEARTBEAT:
            self._heartbeat(now)
        if not self.closed:
            self._wheel.schedule(self, self._deadlines.next(self._last_delivery))

    def _heartbeat(self, now: float) -> None:
        try:
            stalled = self.wire.heartbeat(now, self.policy.write_timeout)
        except (ConnectionError, RuntimeError) as exc:
            self.transport_lost(exc)
            return
        if stalled:
            self.write_timed_out()

    # ---- the writer task -----------------------------------------------------------------

    def run(self) -> Coroutine[Any, Any, None]:
        """Deliver until closed; returns normally, the reason is ``close_reason``.

        Not ``async``: it hands back the writer loop's own coroutine (``pump.run``), so an
        idle connection holds one suspended frame fewer."""
        return pump.run(self)

    def started(self) -> None:
        """The writer task began: count the connection, join the loop's timer wheel."""
        metrics.CONNECTIONS.labels(self.transport).inc()
        timers = self._wheel = wheel()
        policy = self.policy
        now = self._last_delivery = timers.time()
        self._deadlines = Deadlines(now, policy.heartbeat, policy.max_lifetime,
                                    policy.idle_timeout)
        timers.schedule(self, self._deadlines.next(self._last_delivery))

    def stopped(self) -> None:
        """The writer task ends, on every path: leave the hub and the wheel, then tell
        ``on_stopped``."""
        self.release()
        if self._wheel is not None:
            self._wheel.cancel(self)
        metrics.CONNECTIONS.labels(self.transport).dec()
        if self.on_stopped is not None:
            on_stopped, self.on_stopped = self.on_stopped, None
            on_stopped(self)

    def delivered_now(self, count: int) -> None:
        """``count`` events reached the transport: a plain-int tally and the wheel's coarse
        clock (for the idle timeout), no lock and no clock call per write."""
        self.delivered += count
        if self._wheel is not None:
            self._last_delivery = self._wheel.now
        metrics.DELIVERED.counts[self.wire.name] += count
