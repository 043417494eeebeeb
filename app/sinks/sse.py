"""The SSE sink: aiohttp-sse's EventSourceResponse for headers, ``: ping`` heartbeat and the
hung-peer TCP timeout; our pre-built frames go through its ``write()``, many per call.

aiohttp-sse's ping task ends when a ping cannot be written, so ``response.wait()`` returning
means the client is gone: a watcher turns that into ``Sink.close`` within one heartbeat.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp_sse import EventSourceResponse

from app.fanout.hub import Hub
from app.sinks.base import Sink, Subscription
from app.sinks.policy import SinkPolicy
from app.store.base import EventStore
from protocol.codec import sse_retry

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
# Bytes buffered in the transport above which a write waits for the peer (asyncio's default
# high-water mark, and aiohttp's drain limit).
WRITE_HIGH_WATER = 64 * 1024


class SseSink(Sink):
    transport = "sse"

    def __init__(
        self,
        response: EventSourceResponse,
        hub: Hub,
        store: EventStore,
        policy: SinkPolicy,
        connection_id: str,
    ) -> None:
        super().__init__(hub, store, policy, connection_id)
        self.response = response
        # The prepared response's writer: frames go straight to its transport, framed as
        # HTTP chunks here, so a write is one ``transport.write`` with no timer and no await.
        writer = response._payload_writer
        self._writer = writer if isinstance(writer, StreamWriter) else None
        self._chunked = self._writer is not None and self._writer.chunked
        self._raw_ok = self._writer is not None and self._writer._compress is None

    async def write(self, data: bytes) -> None:
        await self.response.write(data)

    def write_nowait(self, data: bytes) -> bool | None:
        if not self._raw_ok or self._writer is None or not self._writer._headers_written:
            return None  # compressed, or headers still buffered in aiohttp: its own write
        transport = self._writer.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        if self._chunked:
            transport.write(b"".join((b"%x\r\n" % len(data), data, b"\r\n")))
        else:
            transport.write(data)
        return transport.get_write_buffer_size() <= WRITE_HIGH_WATER

    async def drain(self) -> None:
        assert self._writer is not None
        await self._writer.drain()

    def transport_timed_out(self) -> bool:
        """aiohttp-sse aborts a peer whose ping write timed out."""
        return bool(getattr(self.response, "timed_out", False))

    def abort(self) -> None:
        req = self.response._req
        if req is not None and req.transport is not None:
            req.transport.abort()

    async def on_lifetime_over(self) -> None:
        await self._timed_write(sse_retry(self.policy.retry_ms))

    def on_subscription_ended(self, sub: Subscription) -> None:
        # An SSE response carries one subscription: when it ends, the response ends.
        self.close("done" if sub.ends_on_done else "unsubscribed")


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

    The ping task ending means the client is gone: a done-callback on it closes the sink
    (a watcher task awaiting ``response.wait()`` did the same for ~1 KiB per connection).
    """
    ping = getattr(sink.response, "_ping_task", None)
    watcher: asyncio.Task[None] | None = None
    if isinstance(ping, asyncio.Task):
        ping.add_done_callback(lambda _: sink.close_gone())
    else:
        watcher = asyncio.create_task(sink.response.wait())
        watcher.add_done_callback(lambda _: sink.close_gone())
    try:
        await sink.run()
    finally:
        sink.response.stop_streaming()
        if watcher is not None:
            await watcher
