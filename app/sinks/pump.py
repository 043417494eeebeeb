"""A sink's writer task: the only code that awaits the peer.

The ``Sink`` (base.py) is what the hub and the connection's handler talk to; ``Pump`` is the
loop its ``run`` drives: drain after a direct write passed the high-water mark, catch up lagging
subscriptions page by page, flush the queue in one write, say goodbye, or park until woken.
Only a write that must wait for the peer runs under ``write_timeout`` (a timer per write
would be a timer per subscriber per event).
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING

from app import metrics
from app.fanout.batch import frames_of
from app.sinks.catchup import read_page
from app.sinks.cursor import Cursor
from app.sinks.delivery import joined
from app.sinks.ending import SinkClosed

if TYPE_CHECKING:
    from app.sinks.base import Sink


class Writer(enum.Enum):
    """What the writer task is doing, as far as the hub's callback needs to know."""

    BUSY = "busy"  # running the loop: live batches go to the queue
    PARKED = "parked"  # waiting with nothing to do: live batches are written directly
    MUST_DRAIN = "must_drain"  # a direct write passed the high-water mark: drain first


class Pump:
    """The writer loop of one sink (composed: the sink owns one per ``run``)."""

    __slots__ = ("sink",)

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def run(self) -> None:
        """Until the sink closes: drain, catch up, flush, say goodbye, or park. One frame:
        parking awaits the wake-up's future right here (an idle connection's whole stack
        below the handler is this coroutine)."""
        sink = self.sink
        sink.started()
        try:
            while not sink.closed:
                if sink.writer is Writer.MUST_DRAIN:
                    sink.writer = Writer.BUSY
                    await self._timed_drain()
                elif sink.ending == "max_lifetime":
                    await self._goodbye()
                elif lagging := sink.delivery.lagging():
                    for cursor in lagging:
                        await self._catch_up(cursor)
                    await self._flush()
                elif sink.delivery.queue.items:
                    await self._flush()
                elif sink.ending is not None:
                    await self._goodbye()
                else:
                    sink.wake.clear()
                    sink.writer = Writer.PARKED
                    try:
                        await sink.wake.wait()
                    finally:
                        if sink.writer is Writer.PARKED:
                            sink.writer = Writer.BUSY
        except SinkClosed:
            pass
        except (ConnectionError, RuntimeError) as exc:
            # aiohttp raises ClientConnectionResetError / RuntimeError on a closed transport.
            sink.transport_lost(exc)
            sink.log.debug("sink_write_failed", error=str(exc))
        finally:
            sink.stopped()

    async def _goodbye(self) -> None:
        reason = self.sink.ending or "shutdown"
        try:
            async with asyncio.timeout(self.sink.policy.write_timeout):
                await self.sink.wire.goodbye(reason)
        except TimeoutError:
            self.sink.wire.abort()
        self.sink.close(reason)

    async def _flush(self) -> None:
        """Write everything queued in one transport write."""
        items = self.sink.delivery.take()
        if not items:
            return
        if len(items) == 1:
            if not self.sink.wire.write_blob(items[0].blob):
                await self._timed_drain()
        else:
            await self._timed_write(joined(items))
        count, finished = self.sink.delivery.written(items)
        self.sink.delivered_now(count)
        for cursor in finished:
            self.sink.finish(cursor)

    async def _timed_write(self, data: bytes) -> None:
        """Write; only a write that has to wait for the peer runs under ``write_timeout``
        (a timer per write would be a timer per subscriber per event)."""
        if not self.sink.wire.write_nowait(data):
            await self._timed_drain()

    async def _timed_drain(self) -> None:
        try:
            async with asyncio.timeout(self.sink.policy.write_timeout):
                await self.sink.wire.drain()
        except TimeoutError:
            self.sink.write_timed_out()
            raise SinkClosed from None

    async def _catch_up(self, cursor: Cursor) -> None:
        """Write one page a lagging cursor missed; it goes live when that reaches the hub."""
        if cursor.ended or self.sink.closed:
            return
        sink = self.sink
        page = await read_page(sink.hub, sink.store, cursor, sink.policy.catchup_page)
        if cursor.ended or self.sink.closed:
            return
        out = self.sink.delivery.plan_page(cursor, page)
        if out.events:
            if out.folded:
                metrics.MERGED.labels(self.sink.transport).inc(out.folded)
            await self._timed_write(frames_of(out.events, self.sink.delivery.transport))
            self.sink.delivered_now(len(out.events))
        published = self.sink.hub.published_seq(cursor.conversation_id)
        if self.sink.delivery.page_written(cursor, out, published):
            self.sink.finish(cursor)
