"""The WebSocket wire: pre-built frames written in one go, replies in order, one byte bound.

Event frames are built once per event (``EncodedEvent.ws``: header and the same envelope
bytes SSE uses) and a burst is written to the transport in one ``write``, so many events
cost one syscall. Replies (ack, pong, error) are written synchronously by the reader, so an
``ack`` always precedes the events of the run it acknowledges. Heartbeat is aiohttp's
ping/pong on the policy's interval.

Replies obey the sink policy too: ``send_reply`` reports when the transport holds more than
``queue_bytes`` unread by the peer; the reader then stops reading that socket until the
peer catches up, and drops it after ``write_timeout`` (``ReplyRoom``).

Library internals used here, for speed (tests/sinks/test_library_internals.py pins each):
the aiohttp protocol's ``_paused`` flag and ``_drain_helper()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSCloseCode, web

from app.fanout.batch import Blob, Transport
from app.fanout.hub import Hub
from app.sinks.base import Sink
from app.sinks.policy import SinkPolicy
from app.store.base import EventStore
from protocol.codec import encode_json, ws_text_frame

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


class WsWire:
    """Raw frames to the request's transport, flow-controlled by aiohttp's own protocol."""

    name: Transport = "ws"

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self._transport = request.transport
        self._protocol: Any = request.protocol

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
        """Nothing: aiohttp's own ping/pong (``heartbeat=``) keeps a WebSocket alive."""
        return False

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
        super().__init__(WsWire(ws, request), hub, store, policy, connection_id)

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
