"""The transport-neutral sink: bounded queue, lossless catch-up, timeouts, lifetime.

One sink per connection; it may hold many subscriptions (a WebSocket does; SSE holds one).
The connection's handler owns the sink and runs ``Sink.run()``, the only task that writes
events to the transport. The hub calls ``offer`` synchronously on every commit.

Lossless lag policy: a subscription starts *lagging*, reads what it missed from the store
from its last written seq, and joins live only when it has read up to what the hub has
published (a synchronous check, so nothing slips between the two). When the queue passes
its bound, it is dropped whole and every subscription goes back to lagging from its last
*written* seq. Live batches that overlap what a catch-up already wrote are trimmed by seq,
so there is no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from app import metrics
from app.fanout.batch import Batch, Blob, Transport, frames_of
from app.fanout.hub import Hub
from app.sinks.merge import merge_chunks
from app.sinks.policy import SinkPolicy
from protocol.codec import EncodedEvent

if TYPE_CHECKING:
    from app.store.base import EventStore

log = structlog.get_logger(__name__)


class SinkClosed(Exception):
    """The connection is gone or was closed by policy; the reason is in ``Sink.close_reason``."""


class Subscription:
    __slots__ = (
        "conversation_id",
        "ended",
        "ends_on_done",
        "enqueued_seq",
        "key",
        "lagging",
        "merge",
        "run_id",
        "sink",
        "written_seq",
    )

    def __init__(
        self,
        sink: Sink,
        conversation_id: str,
        run_id: str | None,
        after: int,
        ends_on_done: bool,
    ) -> None:
        self.sink = sink
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.key = ("run", run_id) if run_id is not None else ("conversation", conversation_id)
        # Highest seq queued or written: live offers at or below it are duplicates.
        self.enqueued_seq = after
        # Highest seq the transport accepted (or scanned past, for a run filter).
        self.written_seq = after
        self.lagging = True
        # Set when the sink overflowed: its catch-up may fold chunks (a plain resume never does).
        self.merge = False
        self.ends_on_done = ends_on_done
        self.ended = False

    def deliver(self, batch: Batch) -> None:
        """The hub's call (``fanout.hub.Subscriber``): hand the batch to our sink."""
        self.sink.offer(self, batch)


class _Item:
    __slots__ = ("count", "data", "done_run", "last_seq", "sub")

    def __init__(self, sub: Subscription, data: bytes, count: int, last_seq: int, done_run: bool):
        self.sub = sub
        self.data = data
        self.count = count
        self.last_seq = last_seq
        self.done_run = done_run


class Wake:
    """A one-waiter event: what ``asyncio.Event`` does for the writer task, without its
    waiter deque (~0.7 KiB per connection) and loop-binding checks on every ``set``."""

    __slots__ = ("_fut", "_set")

    def __init__(self) -> None:
        self._set = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            return
        fut = self._fut = asyncio.get_running_loop().create_future()
        try:
            await fut
        finally:
            self._fut = None


class Sink(ABC):
    transport: Transport

    def __init__(self, hub: Hub, store: EventStore, policy: SinkPolicy, connection_id: str):
        self.hub = hub
        self.store = store
        self.policy = policy
        self.connection_id = connection_id
        self.subs: dict[tuple[str, str], Subscription] = {}
        # A list, not a deque: an empty deque costs a 64-slot block per connection.
        self._queue: list[_Item] = []
        self._queued_events = 0
        self._queued_bytes = 0
        self._wake = Wake()
        # True while the writer task waits in ``_sleep`` with nothing to do (see _write_now).
        self._parked = False
        self._must_drain = False
        # True while the transport is over its high-water mark and we wait for the peer.
        self._peer_blocked = False
        self._expired = False
        self.closed = False
        self.close_reason: str | None = None
        self._draining = False
        self.delivered = 0
        self._last_delivery = time.monotonic()
        self._delivered_metric = metrics.DELIVERED.labels(self.transport)

    @property
    def log(self) -> Any:
        """Bound on use: sinks log rarely, and a bound logger per idle connection is memory."""
        return log.bind(connection_id=self.connection_id, transport=self.transport)

    # ---- subscriptions ------------------------------------------------------------------

    def subscribe(
        self,
        conversation_id: str,
        *,
        after: int = 0,
        run_id: str | None = None,
        ends_on_done: bool = False,
    ) -> Subscription:
        sub = Subscription(self, conversation_id, run_id, after, ends_on_done)
        old = self.subs.get(sub.key)
        if old is not None:
            self._drop(old)
        self.subs[sub.key] = sub
        self.hub.add(sub)
        self._wake.set()
        return sub

    def unsubscribe(self, key: tuple[str, str]) -> bool:
        sub = self.subs.get(key)
        if sub is None:
            return False
        self._drop(sub)
        return True

    def _drop(self, sub: Subscription) -> None:
        sub.ended = True
        self.hub.remove(sub)
        self.subs.pop(sub.key, None)
        self.on_subscription_ended(sub)

    def on_subscription_ended(self, sub: Subscription) -> None:
        """Hook: an SSE run stream ends its response; a WebSocket just forgets it."""

    # ---- the hot path: called by the hub, synchronously --------------------------------

    def offer(self, sub: Subscription, batch: Batch) -> None:
        if sub.lagging or sub.ended or self.closed or batch.last_seq <= sub.enqueued_seq:
            return
        blob = batch.blob(self.transport, sub.run_id, sub.enqueued_seq)
        sub.enqueued_seq = batch.last_seq
        if blob.count == 0:
            if not self._queue:
                # Nothing of this run in the batch and nothing pending: scanned past it.
                sub.written_seq = batch.last_seq
            return
        if self._parked and not self._queue and self._write_now(sub, blob):
            return
        self._queued_events += blob.count
        self._queued_bytes += len(blob.data)
        if (
            self._queued_events > self.policy.queue_events
            or self._queued_bytes > self.policy.queue_bytes
        ):
            self._overflow()
            return
        self._queue.append(_Item(sub, blob.data, blob.count, blob.last_seq, blob.done_run))
        self._wake.set()

    def _write_now(self, sub: Subscription, blob: Blob) -> bool:
        """Write a live batch from the hub's callback while the writer task is parked.

        The task is parked only with nothing queued, lagging or in flight, so writing here
        keeps the order, and saves the task wake-up (Event, call_soon, task step), which
        profiled at about a third of the per-subscriber cost of a fan-out. False when the
        transport has no non-blocking write (the queue path is used).
        """
        try:
            ready = self.write_nowait(blob.data)
        except (ConnectionError, RuntimeError):
            self.close_gone()
            return True
        if ready is None:
            return False
        if blob.last_seq > sub.written_seq:
            sub.written_seq = blob.last_seq
        self._delivered(blob.count)
        if blob.done_run and sub.ends_on_done and not sub.ended:
            self._drop(sub)
        if not ready:
            # Over the high-water mark: the task drains (under write_timeout) before any
            # further write, and nothing more is written from here until it parks again.
            self._must_drain = True
            self._peer_blocked = True
            self._parked = False
            self._wake.set()
        return True

    def _overflow(self) -> None:
        """Drop the queue; every subscription catches up from the store instead."""
        dropped = self._queued_events
        self._queue.clear()
        self._queued_events = 0
        self._queued_bytes = 0
        for sub in self.subs.values():
            sub.lagging = True
            sub.merge = self.policy.merge_chunks
            sub.enqueued_seq = sub.written_seq
        metrics.CATCHUPS.labels(self.transport).inc()
        self.log.info("sink_overflow", dropped_events=dropped)
        self._wake.set()

    # ---- the writer ---------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """Ask the writer to stop; safe from any callback, any number of times."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._wake.set()

    def close_gone(self) -> None:
        """The transport failed under us. If we were waiting for the peer to read (or the
        transport itself timed out a write), the peer stalled: a write timeout, whichever
        layer noticed first (ours, aiohttp-sse's ping, the kernel's TCP_USER_TIMEOUT)."""
        if self._peer_blocked or self.transport_timed_out():
            if not self.closed:
                metrics.PEERS_DROPPED.labels(self.transport, "write_timeout").inc()
            self.close("write_timeout")
        else:
            self.close("disconnected")

    def transport_timed_out(self) -> bool:
        """Hook: True when the transport layer gave up on a write of its own."""
        return False

    def shutdown(self) -> None:
        """Deliver what is queued or still to catch up, then say goodbye and close."""
        self._draining = True
        self._wake.set()

    @property
    def queued_events(self) -> int:
        return self._queued_events

    async def run(self) -> None:
        """Deliver until closed. Returns normally; the reason is ``close_reason``."""
        metrics.CONNECTIONS.labels(self.transport).inc()
        lifetime = self.policy.max_lifetime
        deadline = time.monotonic() + lifetime if lifetime > 0 else None
        # One timer for the whole lifetime, not one per sleep: a per-sleep timeout costs a
        # timer-heap push and cancel on every wake-up, i.e. per subscriber per event.
        lifetime_timer = (
            asyncio.get_running_loop().call_later(lifetime, self._lifetime_over)
            if deadline is not None else None
        )
        try:
            while not self.closed:
                if self._must_drain:
                    self._must_drain = False
                    await self._timed_drain()
                    continue
                if self._expired or (deadline is not None and time.monotonic() >= deadline):
                    await self.on_lifetime_over()
                    self.close("max_lifetime")
                    break
                lagging = [s for s in self.subs.values() if s.lagging]
                if lagging:
                    for sub in lagging:
                        await self._catch_up_page(sub)
                    if self._queue:
                        await self._drain()
                    continue
                if self._queue:
                    await self._drain()
                    continue
                if self._draining:
                    await self.on_lifetime_over()
                    self.close("shutdown")
                    break
                await self._sleep()
        except SinkClosed:
            pass
        except (ConnectionError, RuntimeError) as exc:
            # aiohttp raises ClientConnectionResetError / RuntimeError on a closed transport.
            self.close_gone()
            self.log.debug("sink_write_failed", error=str(exc))
        finally:
            self.closed = True
            for sub in list(self.subs.values()):
                sub.ended = True
                self.hub.remove(sub)
            self.subs.clear()
            self._queue.clear()
            if lifetime_timer is not None:
                lifetime_timer.cancel()
            metrics.CONNECTIONS.labels(self.transport).dec()

    def _lifetime_over(self) -> None:
        self._expired = True
        self._wake.set()

    async def _sleep(self) -> None:
        """Wait for an offer, a close, or the lifetime timer armed in ``run``."""
        self._wake.clear()
        idle = self.policy.idle_timeout
        self._parked = True
        try:
            if idle <= 0:
                await self._wake.wait()
                return
            idle_at = self._last_delivery + idle
            if time.monotonic() >= idle_at:
                self.close("idle_timeout")
                return
            try:
                async with asyncio.timeout_at(asyncio.get_running_loop().time() + (
                    idle_at - time.monotonic()
                )):
                    await self._wake.wait()
            except TimeoutError:
                pass
        finally:
            self._parked = False

    async def _drain(self) -> None:
        """Write everything queued in one transport write."""
        items = self._queue
        self._queue = []
        self._queued_events = 0
        self._queued_bytes = 0
        data = items[0].data if len(items) == 1 else b"".join([i.data for i in items])
        await self._timed_write(data)
        count = 0
        for item in items:
            sub = item.sub
            count += item.count
            if item.last_seq > sub.written_seq:
                sub.written_seq = item.last_seq
            if item.done_run and sub.ends_on_done and not sub.ended:
                self._drop(sub)
        self._delivered(count)

    def _delivered(self, count: int) -> None:
        self.delivered += count
        self._last_delivery = time.monotonic()
        self._delivered_metric.inc(count)

    async def _timed_write(self, data: bytes) -> None:
        """Write; only a write that has to wait for the peer runs under ``write_timeout``.

        Arming a timeout costs a timer per write, i.e. per subscriber per event, so the
        common case (the transport takes the bytes at once) goes through ``write_nowait``.
        """
        written = self.write_nowait(data)
        if written:
            return
        if written is not None:
            await self._timed_drain()
            return
        try:
            async with asyncio.timeout(self.policy.write_timeout):
                await self.write(data)
        except TimeoutError:
            self._write_timed_out()

    async def _timed_drain(self) -> None:
        self._peer_blocked = True
        try:
            async with asyncio.timeout(self.policy.write_timeout):
                await self.drain()
        except TimeoutError:
            self._write_timed_out()
        self._peer_blocked = False

    def _write_timed_out(self) -> NoReturn:
        metrics.PEERS_DROPPED.labels(self.transport, "write_timeout").inc()
        self.close("write_timeout")
        self.abort()
        raise SinkClosed from None

    async def _catch_up_page(self, sub: Subscription) -> None:
        """Replay one page from the store; join live when caught up with the hub."""
        if sub.ended:
            return
        published = self.hub.published_seq(sub.conversation_id)
        page = self.policy.catchup_page
        cached = self.hub.recent.after(sub.conversation_id, sub.written_seq, page)
        if cached is not None:
            # From memory: the hub's own objects (frames already built), no store round trip.
            # ``published`` is read in the same step, so the page covers up to it.
            scanned = cached[-1].seq if cached else sub.written_seq
            rows = cached if sub.run_id is None else [
                e for e in cached if e.run_id == sub.run_id
            ]
            short = len(cached) < page
            merge = False  # shared frames are cheap; merging would decode per sink
        else:
            rows = await self.store.read_events(
                sub.conversation_id, sub.written_seq, page, run_id=sub.run_id
            )
            scanned = rows[-1].seq if rows else sub.written_seq
            short = len(rows) < page
            merge = sub.merge
        if sub.ended or self.closed:
            return
        done_at: int | None = None
        if sub.run_id is not None:
            for ev in rows:
                if ev.type == "done":
                    done_at = ev.seq
                    rows = [e for e in rows if e.seq <= ev.seq]
                    break
        if rows:
            out = merge_chunks(rows) if merge else rows
            if len(out) < len(rows):
                metrics.MERGED.labels(self.transport).inc(len(rows) - len(out))
            await self._timed_write(self.frames(out))
            self._delivered(len(out))
        if done_at is not None and sub.ends_on_done:
            self._drop(sub)
            return
        sub.written_seq = max(sub.written_seq, scanned if done_at is None else done_at)
        if short and published > sub.written_seq:
            # Read everything committed when the read began: scanned through ``published``.
            sub.written_seq = published
        if sub.written_seq >= self.hub.published_seq(sub.conversation_id):
            sub.lagging = False
            sub.merge = False
            sub.enqueued_seq = sub.written_seq

    def frames(self, events: list[EncodedEvent]) -> bytes:
        return frames_of(events, self.transport)

    # ---- transport ----------------------------------------------------------------------

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Write pre-built frames; raise ConnectionError if the peer is gone."""

    def write_nowait(self, data: bytes) -> bool | None:
        """Hook: write without awaiting. True: done; False: written, but the transport is
        over its high-water mark, so ``drain`` must be awaited; None: not supported here,
        ``write`` is used instead. Raise ConnectionError if the peer is gone."""
        return None

    async def drain(self) -> None:
        """Wait until the transport is back under its high-water mark (with write_nowait)."""
        raise NotImplementedError

    @abstractmethod
    def abort(self) -> None:
        """Drop the connection now (a peer that stopped reading)."""

    async def on_lifetime_over(self) -> None:
        """Hook: tell the client to come back (SSE ``retry``; WebSocket close 1001)."""
