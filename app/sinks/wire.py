"""The small interface a sink writes through, and the one-waiter wake-up its writer parks on.

A ``Sink`` composes a ``Wire`` (SSE response or WebSocket) instead of subclassing per
transport: everything transport-specific is in these calls.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from app.fanout.batch import Blob, Transport


class Wire(Protocol):
    """One client connection seen from a sink."""

    name: Transport

    def write_nowait(self, data: bytes) -> bool:
        """Hand ``data`` to the transport now. True: done; False: taken, but ``drain`` must
        be awaited before the next write (over the high-water mark, or a write the wire
        could only do asynchronously). Raises ConnectionError if the peer is gone."""
        ...

    def write_blob(self, blob: Blob) -> bool:
        """``write_nowait`` of a batch's shared bytes: any framing the wire adds is built
        once per blob (``Blob.http_chunk``) and shared by every subscriber writing it."""
        ...

    def heartbeat(self, now: float, write_timeout: float) -> bool:
        """The timer wheel's heartbeat for this connection. True: the peer has read
        nothing for ``write_timeout`` (the sink drops it). Raises ConnectionError if the
        peer is gone."""
        ...

    async def drain(self) -> None:
        """Wait until the peer has read enough that writing may go on."""
        ...

    def abort(self) -> None:
        """Drop the connection now (a peer that stopped reading)."""
        ...

    async def goodbye(self, reason: str) -> None:
        """Tell the client to come back later (SSE ``retry:``; WebSocket close 1001)."""
        ...

    def timed_out(self) -> bool:
        """True when the wire's own layer gave up on a write (a timed-out ping)."""
        ...


class Wake:
    """A one-waiter event: what ``asyncio.Event`` does for the writer task, without its
    waiter deque (~0.7 KiB per connection) and loop-binding checks on every ``set``.
    ``wait`` is not a coroutine: it returns the future itself, so a parked writer holds
    no extra frame."""

    __slots__ = ("_fut", "_set")

    def __init__(self) -> None:
        self._set = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def wait(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        if self._set:
            fut.set_result(None)
        else:
            self._fut = fut
        return fut
