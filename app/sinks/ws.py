"""The WebSocket sink: the shared Sink policy, with pre-built frames written in one go.

Event frames are built once per event (``EncodedEvent.ws``: header and the same envelope
bytes SSE uses) and a burst is written to the transport in one ``write``, so many events
cost one syscall. Replies (ack, pong, error) are written synchronously by the reader, so an
``ack`` always precedes the events of the run it acknowledges. Heartbeat is aiohttp's
ping/pong on the policy's interval.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSCloseCode, web

from app.fanout.hub import Hub
from app.sinks.base import Sink
from app.sinks.policy import SinkPolicy
from app.store.base import EventStore
from protocol.codec import encode_json, ws_text_frame


class WsSink(Sink):
    transport = "ws"

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        hub: Hub,
        store: EventStore,
        policy: SinkPolicy,
        connection_id: str,
    ) -> None:
        super().__init__(hub, store, policy, connection_id)
        self.ws = ws
        self._transport = request.transport
        self._protocol = request.protocol
        self.close_code: int = WSCloseCode.GOING_AWAY

    def _live_transport(self) -> asyncio.Transport:
        transport = self._transport
        if transport is None or transport.is_closing() or self.ws.closed:
            raise ConnectionResetError("websocket is closed")
        return transport

    async def write(self, data: bytes) -> None:
        if not self.write_nowait(data):
            await self.drain()

    def write_nowait(self, data: bytes) -> bool:
        """One transport write; False when the transport is over its high-water mark."""
        self._live_transport().write(data)
        return not getattr(self._protocol, "_paused", False)

    async def drain(self) -> None:
        """Flow control: wait while the kernel buffer is full (aiohttp's own drain helper)."""
        protocol = self._protocol
        if getattr(protocol, "_paused", False):
            await protocol._drain_helper()

    def send_reply(self, reply: object) -> None:
        """Write one control reply now, in order with everything written before it."""
        try:
            self._live_transport().write(ws_text_frame(encode_json(reply)))
        except ConnectionResetError:
            self.close("disconnected")

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def on_lifetime_over(self) -> None:
        """Close 1001: the client reconnects and resubscribes with ``after``."""
        reason = b"max lifetime" if self.close_reason is None and not self._draining else (
            b"server shutting down"
        )
        if not self.ws.closed:
            await self.ws.close(code=WSCloseCode.GOING_AWAY, message=reason)
