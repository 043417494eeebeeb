"""The SSE sink: aiohttp-sse's EventSourceResponse for headers, ``: ping`` heartbeat and the
hung-peer TCP timeout; our pre-built frames go through its ``write()``, many per call.

aiohttp-sse's ping task ends when a ping cannot be written, so ``response.wait()`` returning
means the client is gone: a watcher turns that into ``Sink.close`` within one heartbeat.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from app.engine.hub import Hub
from app.sinks.base import Sink, Subscription
from app.sinks.policy import SinkPolicy
from app.store.base import EventStore
from protocol.codec import sse_retry

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


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

    async def write(self, data: bytes) -> None:
        await self.response.write(data)

    def abort(self) -> None:
        req = self.response._req
        if req is not None and req.transport is not None:
            req.transport.abort()

    async def on_lifetime_over(self) -> None:
        await self._timed_write(sse_retry(self.policy.retry_ms))

    def on_subscription_ended(self, sub: Subscription) -> None:
        # An SSE response carries one subscription: when it ends, the response ends.
        self.close("done" if sub.ends_on_done else "unsubscribed")


async def open_sse(request: web.Request, policy: SinkPolicy) -> EventSourceResponse:
    response = EventSourceResponse(
        ping_interval=policy.heartbeat,
        send_timeout=policy.write_timeout,
        allow_all_methods=True,
    )
    response.headers["Content-Type"] = SSE_CONTENT_TYPE
    await response.prepare(request)
    await response.write(sse_retry(policy.retry_ms))
    return response


async def serve_sink(sink: SseSink) -> None:
    """Run the sink until it closes or the client goes; end the ping task either way."""
    watcher = asyncio.create_task(sink.response.wait())
    watcher.add_done_callback(lambda _: sink.close("disconnected"))
    try:
        await sink.run()
    finally:
        sink.response.stop_streaming()
        await watcher
