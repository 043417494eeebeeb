"""A sink's writer task: the only code that awaits the peer.

The ``Sink`` (base.py) is what the hub and the connection's handler talk to; ``run`` here is
the loop its ``run`` hands back (module functions over the sink, not an object per
connection): drain after a direct write passed the high-water mark, catch up lagging
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


async def run(sink: Sink) -> None:
    """Until the sink closes: drain, catch up, flush, say goodbye, or park. Parking awaits
    the wake-up's future right here, and the work is one ``_step`` away, so an idle
    connection's whole stack below the handler is this one small frame (issue 13, P3:
    its locals and stack are what every idle stream pays)."""
    sink.started()
    try:
        while not sink.closed:
            if _has_work(sink):
                await _step(sink)
                continue
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


def _has_work(sink: Sink) -> bool:
    """Anything for ``_step`` to do (else the writer parks)."""
    return (sink.writer is Writer.MUST_DRAIN or sink.ending is not None
            or bool(sink.delivery.queue.items) or sink.delivery.has_lagging())


async def _step(sink: Sink) -> None:
    """One turn of work, in priority order: drain, the lifetime's goodbye, catch-up pages
    (then what queued meanwhile), the queue, a shutdown's goodbye once all is written."""
    if sink.writer is Writer.MUST_DRAIN:
        sink.writer = Writer.BUSY
        await _timed_drain(sink)
    elif sink.ending == "max_lifetime":
        await _goodbye(sink)
    elif lagging := sink.delivery.lagging():
        for cursor in lagging:
            await _catch_up(sink, cursor)
        await _flush(sink)
    elif sink.delivery.queue.items:
        await _flush(sink)
    elif sink.ending is not None:
        await _goodbye(sink)


async def _goodbye(sink: Sink) -> None:
    reason = sink.ending or "shutdown"
    try:
        async with asyncio.timeout(sink.policy.write_timeout):
            await sink.wire.goodbye(reason)
    except TimeoutError:
        sink.wire.abort()
    sink.close(reason)


async def _flush(sink: Sink) -> None:
    """Write everything queued in one transport write."""
    items = sink.delivery.take()
    if not items:
        return
    if len(items) == 1:
        if not sink.wire.write_blob(items[0].blob):
            await _timed_drain(sink)
    else:
        await _timed_write(sink, joined(items))
    count, finished = sink.delivery.written(items)
    sink.delivered_now(count)
    for cursor in finished:
        sink.finish(cursor)


async def _timed_write(sink: Sink, data: bytes) -> None:
    """Write; only a write that has to wait for the peer runs under ``write_timeout``
    (a timer per write would be a timer per subscriber per event)."""
    if not sink.wire.write_nowait(data):
        await _timed_drain(sink)


async def _timed_drain(sink: Sink) -> None:
    try:
        async with asyncio.timeout(sink.policy.write_timeout):
            await sink.wire.drain()
    except TimeoutError:
        sink.write_timed_out()
        raise SinkClosed from None


async def _catch_up(sink: Sink, cursor: Cursor) -> None:
    """Write one page a lagging cursor missed; it goes live when that reaches the hub."""
    if cursor.ended or sink.closed:
        return
    page = await read_page(sink.hub, sink.store, cursor, sink.policy.catchup_page)
    if cursor.ended or sink.closed:
        return
    out = sink.delivery.plan_page(cursor, page)
    if out.events:
        if out.folded:
            metrics.MERGED.labels(sink.transport).inc(out.folded)
        await _timed_write(sink, frames_of(out.events, sink.delivery.transport))
        sink.delivered_now(len(out.events))
    published = sink.hub.published_seq(cursor.conversation_id)
    if sink.delivery.page_written(cursor, out, published):
        sink.finish(cursor)
