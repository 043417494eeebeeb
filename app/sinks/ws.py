"""The WebSocket wire: pre-built frames written in one go, replies in order, one byte bound.

Event frames are built once per event (``EncodedEvent.ws``: header and the same envelope
bytes SSE uses) and a burst is written to the transport in one ``write``, so many events
cost one syscall. Replies (ack, pong, error) are written synchronously by the reader, so an
``ack`` always precedes the events of the run it acknowledges.

permessage-deflate (RFC 7692, opt-in with ``--compression true``): when the client offered
it and the server window is the default 15 bits, the socket's subscriptions read a
compressed view of each batch, built once per batch and shared by every socket reading it,
like the plain one (``deflate_view``). A peer that asked for ``server_no_context_takeover``
reads ``ws_deflate``: every event compressed alone, that frame cached on the event. Every
other peer keeps its inflate context, so it reads ``ws_deflate_batch``: a live batch
compressed as one stream, later events referring back to earlier ones, which is where the
ratio is. Catch-up pages are written to one reader each, so they use the cached per-event
frames (shared by every reader) rather than a deflate of their own. Replies and snapshots
stay plain frames, which the extension allows per message (RSV1 unset; they never enter
the peer's window). Incoming compressed messages are inflated by aiohttp's reader, bounded
by ``max_ws_message`` (past it: close 1009, however small the compressed frame was).

Heartbeat: the sinks' shared timer wheel, not aiohttp's per-socket ``heartbeat=`` timers.
Each heartbeat interval in which the peer sent nothing, the wire writes a ping and puts
itself on the wheel for half an interval; if still nothing (no pong, no data) has arrived
then, the peer is dropped. "Something arrived" is a flag the aiohttp protocol's
data-received hook sets: no timer is touched per incoming chunk.

Replies obey the sink policy too: ``send_reply`` reports when the transport holds more than
``queue_bytes`` unread by the peer; the reader then stops reading that socket until the
peer catches up, and drops it after ``write_timeout`` (``ReplyRoom``).

Library internals used here, for speed (tests/sinks/test_library_internals.py and
tests/sinks/test_ws_internals.py pin each): the aiohttp protocol's ``_paused`` flag,
``_drain_helper()`` and ``_data_received_cb`` hook.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web

from app import metrics
from app.fanout.batch import Blob, Transport
from app.fanout.hub import Hub
from app.sinks.base import Sink
from app.sinks.policy import SinkPolicy
from app.sinks.timers import Wheel, wheel
from app.store.base import EventStore
from protocol.codec import DEFLATE_WINDOW_BITS, encode_json, ws_text_frame

# An empty, final, unmasked ping (opcode 0x9): control frames are never compressed.
PING_FRAME = b"\x89\x00"

# Close codes by close reason; anything else closes 1000.
CLOSE_CODES: dict[str, int] = {
    "max_lifetime": WSCloseCode.GOING_AWAY,
    "shutdown": WSCloseCode.GOING_AWAY,
    "token_expired": WSCloseCode.POLICY_VIOLATION,
    "write_timeout": WSCloseCode.POLICY_VIOLATION,
    "internal_error": WSCloseCode.INTERNAL_ERROR,
}
GOODBYE_MESSAGES = {"max_lifetime": b"max lifetime", "shutdown": b"server shutting down"}


def close_code(reason: str | None) -> int:
    return CLOSE_CODES.get(reason or "", WSCloseCode.OK)


def deflate_view(ws: web.WebSocketResponse) -> Transport:
    """The frames a prepared socket reads. Compressed frames assume the full 15-bit window:
    a client asking a smaller one gets plain frames (valid under the extension), not frames
    it could not inflate. ``server_no_context_takeover`` (in our handshake answer) rules out
    batch-wide compression: each event must then inflate alone."""
    if ws.compress != DEFLATE_WINDOW_BITS:
        return "ws"
    if "server_no_context_takeover" in ws.headers.get("Sec-WebSocket-Extensions", ""):
        return "ws_deflate"
    return "ws_deflate_batch"


class WsWire:
    """Raw frames to the request's transport, flow-controlled by aiohttp's own protocol;
    the ping/pong liveness check on the shared wheel (``heartbeat``, ``on_timer``)."""

    name: Transport = "ws"
    __slots__ = ("_pong_within", "_protocol", "_transport", "_wheel", "heard", "on_silent",
                 "view", "wheel_tick", "ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request,
                 heartbeat: float = 0.0) -> None:
        """``ws`` is prepared: its negotiated ``compress`` (window bits, 0: none) is known."""
        self.ws = ws
        self._transport = request.transport
        self._protocol: Any = request.protocol
        self.view = deflate_view(ws)
        self.heard = False  # the peer sent something since the last heartbeat or ping
        self.on_silent: Callable[[], None] | None = None  # a ping went unanswered
        self._pong_within = heartbeat / 2
        self._wheel: Wheel | None = None
        self.wheel_tick: int | None = None  # the wheel's (timers.py)
        self._protocol._data_received_cb = self._data_received

    def _data_received(self) -> None:
        """aiohttp's protocol calls this for every chunk read from the peer."""
        self.heard = True

    def _live_transport(self) -> asyncio.Transport:
        transport = self._transport
        if transport is None or transport.is_closing() or self.ws.closed:
            raise ConnectionResetError("websocket is closed")
        return transport

    def write_nowait(self, data: bytes) -> bool:
        """One transport write; False when the transport is over its high-water mark."""
        self._live_transport().write(data)
        return not self._protocol._paused

    def write_blob(self, blob: Blob) -> bool:
        return self.write_nowait(blob.data)  # event frames are built once per event

    def heartbeat(self, now: float, write_timeout: float) -> bool:
        """A ping if the peer sent nothing this interval, and a look back on the wheel in
        half an interval (``on_timer``). Never "stalled": a peer that stops reading is the
        write timeout's; a peer that stops answering is ``on_silent``'s."""
        if self.heard:
            self.heard = False
            return False
        self._live_transport().write(PING_FRAME)
        if self._pong_within > 0:
            timers = self._wheel = wheel()
            timers.schedule(self, now + self._pong_within)
        return False

    def on_timer(self, now: float) -> None:
        """The pong deadline: nothing arrived since the ping, so the peer is gone."""
        if not self.heard and not self.ws.closed and self.on_silent is not None:
            self.on_silent()

    def stop(self) -> None:
        """Leave the wheel (the connection ended with a ping outstanding)."""
        if self._wheel is not None:
            self._wheel.cancel(self)

    async def drain(self) -> None:
        """Flow control: wait while the kernel buffer is full (aiohttp's own drain helper)."""
        if self._protocol._paused:
            await self._protocol._drain_helper()

    def backed_up(self, bound: int) -> bool:
        """More than ``bound`` bytes written but not taken by the kernel (the peer is not
        reading them), and the transport paused for it (so ``drain`` will wait)."""
        transport = self._transport
        return (
            transport is not None
            and self._protocol._paused
            and transport.get_write_buffer_size() > bound
        )

    def send_reply(self, reply: object) -> None:
        """Write one control reply now, in order with everything written before it.
        Raises ConnectionError when the socket is gone."""
        self._live_transport().write(ws_text_frame(encode_json(reply)))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def goodbye(self, reason: str) -> None:
        """Close 1001: the client reconnects and resubscribes with ``after``."""
        if not self.ws.closed:
            await self.ws.close(code=close_code(reason),
                                message=GOODBYE_MESSAGES.get(reason, reason.encode()))

    def timed_out(self) -> bool:
        return False


class WsSink(Sink):
    """A ``Sink`` over a WebSocket. Construction only: the behaviour is ``WsWire``'s."""

    __slots__ = ()
    wire: WsWire

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        hub: Hub,
        store: EventStore,
        policy: SinkPolicy,
        connection_id: str,
    ) -> None:
        wire = WsWire(ws, request, policy.heartbeat)
        super().__init__(wire, hub, store, policy, connection_id)
        wire.on_silent = self._silent
        # Batches and catch-up pages in the socket's view (compressed or not); ``transport``
        # (the metrics label) stays "ws".
        self.delivery.transport = wire.view

    def _silent(self) -> None:
        """No pong (nor anything else) within half a heartbeat of a ping: drop the peer.
        ``disconnected``: the client is gone, as far as ``on_disconnect`` is concerned."""
        if not self.closed:
            metrics.PEERS_DROPPED.labels("ws", "heartbeat").inc()
        self.close("disconnected")
        self.wire.abort()

    def stopped(self) -> None:
        super().stopped()
        self.wire.stop()

    async def reply_room(self) -> None:
        """Return once the peer has read its replies down to the byte bound; past
        ``write_timeout`` drop the socket (``write_timeout``, close code 1008).

        The reader awaits this before reading the next command: a client that sends and
        never reads then stops being read (TCP pushes back on it), and what it costs the
        server is bounded by ``queue_bytes`` plus one reply.
        """
        bound = self.policy.queue_bytes
        if not self.wire.backed_up(bound):
            return
        try:
            async with asyncio.timeout(self.policy.write_timeout):
                while self.wire.backed_up(bound) and not self.closed:
                    await self.wire.drain()
        except TimeoutError:
            self.write_timed_out()
        except (ConnectionError, RuntimeError) as exc:
            self.transport_lost(exc)
