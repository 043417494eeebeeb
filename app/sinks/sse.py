"""The SSE wire: aiohttp-sse's EventSourceResponse for headers and the hung-peer TCP timeout;
our pre-built frames go straight to its transport, many per write.

The heartbeat is not aiohttp-sse's: its ``prepare`` starts a ping task per connection (a task,
a coroutine frame and a timer per ping: ~1.4 KiB per idle connection and a task switch per
ping, measured in docs/PERFORMANCE.md P3). ``SseResponse.prepare`` does what aiohttp-sse's does
minus that task, and the sinks' shared timer wheel writes the ``: ping`` (``SseWire.heartbeat``),
which also finds a client that has gone (the write fails) within one heartbeat.

Library internals used here, for speed (tests/sinks/test_library_internals.py pins each):
``StreamResponse._payload_writer`` (its ``transport``, ``chunked``, ``_compress``,
``_headers_written``, ``drain``), ``EventSourceResponse._set_tcp_user_timeout`` and
``_ping_task`` (left None), ``StreamResponse._req``.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from aiohttp.web_request import BaseRequest
from aiohttp_sse import EventSourceResponse

from app.fanout.batch import Blob, Transport, http_chunk
from app.fanout.hub import Hub
from app.sinks.base import Sink
from app.sinks.cursor import Cursor
from app.sinks.policy import SinkPolicy
from app.store.base import EventStore
from protocol.codec import sse_comment, sse_retry

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
# Bytes buffered in the transport above which a write waits for the peer (asyncio's default
# high-water mark, and aiohttp's drain limit).
WRITE_HIGH_WATER = 64 * 1024
PING = sse_comment("ping")
PING_CHUNK = http_chunk(PING)


class SseResponse(EventSourceResponse):
    """aiohttp-sse's response without its per-connection ping task (see the module doc).
    ``gzip``: this response's compressor when the stream is gzipped (``open_sse``)."""

    gzip: zlib._Compress | None = None

    async def write_eof(self, data: bytes = b"") -> None:
        """A gzipped stream ends with its gzip trailer, so the body is a complete member."""
        gz, self.gzip = self.gzip, None
        if gz is not None and not self._eof_sent:
            data = gz.compress(data) + gz.flush()
        await super().write_eof(data)

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        """``EventSourceResponse.prepare`` minus ``create_task(self._ping())``: the same
        TCP_USER_TIMEOUT, headers and chunked encoding.

        Then the header map is emptied: prepared, the headers are serialized (sent with
        the first write) and nothing reads the map again, while it would stay allocated
        for the stream's whole life (~440 bytes per idle connection, issue 13)."""
        if self.prepared:
            return self._payload_writer
        self._set_tcp_user_timeout(request)
        writer = await web.StreamResponse.prepare(self, request)
        self.enable_chunked_encoding()
        self.headers.clear()
        return writer


class SseWire:
    """Frames written as HTTP chunks straight to the response's transport: one
    ``transport.write`` per write, no timer and no await unless the peer is slow."""

    name: Transport = "sse"
    __slots__ = ("_chunked", "_gzip", "_pending", "_stalled_since", "_timed_out", "_writer",
                 "response", "retry_ms")

    def __init__(self, response: EventSourceResponse, retry_ms: int) -> None:
        self.response = response
        self.retry_ms = retry_ms
        writer = response._payload_writer
        self._writer = writer if isinstance(writer, StreamWriter) else None
        self._chunked = self._writer is not None and self._writer.chunked
        # Data the raw path could not take (compressed, or headers still buffered in
        # aiohttp): ``drain`` writes it through aiohttp's own ``write``. None until then:
        # an idle stream keeps no list of its own.
        self._pending: list[bytes] | None = None
        # When a heartbeat first found the peer not reading (over the high-water mark).
        self._stalled_since: float | None = None
        self._timed_out = False
        self._gzip = response.gzip if isinstance(response, SseResponse) else None

    def _raw_ok(self) -> bool:
        writer = self._writer
        return writer is not None and writer._compress is None and writer._headers_written

    def _transport(self) -> asyncio.Transport:
        assert self._writer is not None
        transport = self._writer.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        return transport

    def write_nowait(self, data: bytes) -> bool:
        if self._gzip is not None:
            data = gzip_write(self._gzip, data)
        if self._pending or not self._raw_ok():
            self._hold(data)
            return False
        transport = self._transport()
        transport.write(http_chunk(data) if self._chunked else data)
        return transport.get_write_buffer_size() <= WRITE_HIGH_WATER

    def write_blob(self, blob: Blob) -> bool:
        if self._gzip is not None:  # this connection's own stream: nothing to share
            return self.write_nowait(blob.data)
        if self._pending or not self._raw_ok():
            self._hold(blob.data)
            return False
        transport = self._transport()
        transport.write(blob.http_chunk() if self._chunked else blob.data)
        return transport.get_write_buffer_size() <= WRITE_HIGH_WATER

    def _hold(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
        else:
            self._pending.append(data)

    def heartbeat(self, now: float, write_timeout: float) -> bool:
        """A ``: ping`` comment; True once the peer has kept the transport over the
        high-water mark for ``write_timeout`` (what aiohttp-sse's ping did: above the mark
        a ping waited for the peer under ``send_timeout``, then aborted)."""
        if self._pending or not self._raw_ok():
            return False
        transport = self._transport()
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            if self._stalled_since is None:
                self._stalled_since = now
            elif now - self._stalled_since >= write_timeout:
                self._timed_out = True
                return True
            return False
        self._stalled_since = None
        if self._gzip is not None:
            ping = gzip_write(self._gzip, PING)
            transport.write(http_chunk(ping) if self._chunked else ping)
        else:
            transport.write(PING_CHUNK if self._chunked else PING)
        return False

    async def drain(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending = None
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
        """A heartbeat found the peer stalled past ``write_timeout``."""
        return self._timed_out


class SseSink(Sink):
    """A ``Sink`` over an SSE response. Construction only: the behaviour is ``SseWire``'s.

    An SSE response carries one subscription: when its run's ``done`` is written, the
    response ends (``close("done")``).
    """

    __slots__ = ("cancel_run", "closed_event", "response", "served_by", "slot_user")

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
        # What whoever serves the stream needs back in its ``on_stopped`` (api/http.py
        # ``serve_registered``): slots, not a closure or ``partial`` per connection.
        self.served_by: Any = None
        self.cancel_run: str | None = None
        self.closed_event = "sse_closed"
        self.slot_user: str | None = None

    def finish(self, cursor: Cursor) -> None:
        """The stream's run ended with its ``done`` written: the response ends (a method,
        not a per-connection closure in ``on_finished``)."""
        super().finish(cursor)
        self.close("done")


async def open_sse(request: web.Request, policy: SinkPolicy) -> EventSourceResponse:
    response = SseResponse(
        ping_interval=policy.heartbeat,
        send_timeout=policy.write_timeout,
        allow_all_methods=True,
    )
    response.headers["Content-Type"] = SSE_CONTENT_TYPE
    if policy.compression:
        response.headers["Vary"] = "Accept-Encoding"
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            response.headers["Content-Encoding"] = "gzip"
            response.gzip = new_gzip()
    await response.prepare(request)
    retry = sse_retry(policy.retry_ms)
    await response.write(retry if response.gzip is None else gzip_write(response.gzip, retry))
    return response


def accepts_gzip(header: str) -> bool:
    """``gzip`` listed with a non-zero q (``gzip;q=0`` refuses it)."""
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "x-gzip"):
            q = params.strip().removeprefix("q=")
            return not params.strip().startswith("q=") or _q(q) > 0
    return False


def _q(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return 0.0


def new_gzip() -> zlib._Compress:
    """A gzip stream sized for one connection: a 1 KiB window and memLevel 4 keep it near
    10 KiB (the defaults cost ~256 KiB a connection); SSE frames repeat within a frame far
    more than across a long window, so the ratio barely moves."""
    return zlib.compressobj(6, zlib.DEFLATED, 16 + 10, 4)


def gzip_write(gz: zlib._Compress, data: bytes) -> bytes:
    """Compress and flush to a byte boundary: an event must reach the client now, not when
    the compressor's buffer fills (Z_SYNC_FLUSH keeps the stream open)."""
    return gz.compress(data) + gz.flush(zlib.Z_SYNC_FLUSH)


def serve_sink(sink: SseSink) -> Coroutine[Any, Any, None]:
    """Run the sink until it closes or the client goes (its heartbeat write fails, or a
    write does); it leaves the hub on every path (``Sink.stopped``). No task besides the
    handler's own (the heartbeat is the timer wheel's), and not ``async``: the handler
    awaits the sink's own coroutine, one suspended frame fewer per idle stream."""
    return sink.run()
