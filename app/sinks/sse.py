"""The SSE wire: aiohttp-sse's EventSourceResponse for headers, ``: ping`` heartbeat and the
hung-peer TCP timeout; our pre-built frames go straight to its transport, many per write.

aiohttp-sse's ping task ends when a ping cannot be written, so its end means the client is
gone: a done-callback turns that into ``Sink.transport_lost`` within one heartbeat.

Library internals used here, for speed (tests/sinks/test_library_internals.py pins each):
``StreamResponse._payload_writer`` (its ``transport``, ``chunked``, ``_compress``,
``_headers_written``, ``drain``), ``EventSourceResponse._ping_task`` and
``_abort_transport``, ``StreamResponse._req``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp_sse import EventSourceResponse

from app.fanout.batch import Transport
from app.fanout.hub import Hub
from app.sinks.base import Sink
from app.sinks.policy import SinkPolicy
from app.store.base import EventStore
from protocol.codec import sse_retry

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
# Bytes buffered in the transport above which a write waits for the peer (asyncio's default
# high-water mark, and aiohttp's drain limit).
WRITE_HIGH_WATER = 64 * 1024


class SseResponse(EventSourceResponse):
    """aiohttp-sse's response, remembering why its ping task gave up.

    Its ping write runs under the same ``write_timeout``; when a stalled peer makes it time
    out, aiohttp-sse aborts the transport. Recording that lets the sink report the drop as
    ``write_timeout`` (and count it) rather than as an ordinary disconnect.
    """

    timed_out = False

    def _abort_transport(self) -> None:
        self.timed_out = True
        super()._abort_transport()


class SseWire:
    """Frames written as HTTP chunks straight to the response's transport: one
    ``transport.write`` per write, no timer and no await unless the peer is slow."""

    name: Transport = "sse"

    def __init__(self, response: EventSourceResponse, retry_ms: int) -> None:
        self.response = response
        self.retry_ms = retry_ms
        writer = response._payload_writer
        self._writer = writer if isinstance(writer, StreamWriter) else None
        self._chunked = self._writer is not None and self._writer.chunked
        # Data the raw path could not take (compressed, or headers still buffered in
        # aiohttp): ``drain`` writes it through aiohttp's own ``write``.
        self._pending: list[bytes] = []

    def _raw_ok(self) -> bool:
        writer = self._writer
        return writer is not None and writer._compress is None and writer._headers_written

    def write_nowait(self, data: bytes) -> bool:
        if self._pending or not self._raw_ok():
            self._pending.append(data)
            return False
        assert self._writer is not None
        transport = self._writer.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        if self._chunked:
            transport.write(b"".join((b"%x\r\n" % len(data), data, b"\r\n")))
        else:
            transport.write(data)
        return transport.get_write_buffer_size() <= WRITE_HIGH_WATER

    async def drain(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            await self.response.write(data)
        elif self._writer is not None:
            await self._writer.drain()

    def abort(self) -> None:
        req = self.response._req
        if req is not None and req.transport is not None:
            req.transport.abort()

    async def goodbye(self, reason: str) -> None:
        """A ``retry:`` hint: the browser reconnects with its ``Last-Event-ID``."""
        if not self.write_nowait(sse_retry(self.retry_ms)):
            await self.drain()

    def timed_out(self) -> bool:
        """aiohttp-sse aborts a peer whose ping write timed out."""
        return bool(getattr(self.response, "timed_out", False))


class SseSink(Sink):
    """A ``Sink`` over an SSE response. Construction only: the behaviour is ``SseWire``'s.

    An SSE response carries one subscription: when its run's ``done`` is written, the
    response ends (``close("done")``).
    """

    def __init__(
        self,
        response: EventSourceResponse,
        hub: Hub,
        store: EventStore,
        policy: SinkPolicy,
        connection_id: str,
    ) -> None:
        super().__init__(SseWire(response, policy.retry_ms), hub, store, policy, connection_id)
        self.response = response
        self.on_finished = lambda _cursor: self.close("done")


async def open_sse(request: web.Request, policy: SinkPolicy) -> EventSourceResponse:
    response = SseResponse(
        ping_interval=policy.heartbeat,
        send_timeout=policy.write_timeout,
        allow_all_methods=True,
    )
    response.headers["Content-Type"] = SSE_CONTENT_TYPE
    await response.prepare(request)
    await response.write(sse_retry(policy.retry_ms))
    return response


async def serve_sink(sink: SseSink) -> None:
    """Run the sink until it closes or the client goes; end the ping task either way.

    The ping task ending means the client is gone: a done-callback on it tells the sink
    (a watcher task awaiting ``response.wait()`` did the same for ~1 KiB per connection).
    """
    ping = getattr(sink.response, "_ping_task", None)
    watcher: asyncio.Task[None] | None = None
    if isinstance(ping, asyncio.Task):
        ping.add_done_callback(lambda _: sink.transport_lost())
    else:
        watcher = asyncio.create_task(sink.response.wait())
        watcher.add_done_callback(lambda _: sink.transport_lost())
    try:
        await sink.run()
    finally:
        sink.release()
        sink.response.stop_streaming()
        if watcher is not None:
            await watcher
