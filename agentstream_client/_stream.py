"""Run handles and conversation subscriptions: one resume loop for both transports.

A handle is iterated once (``async for``); its connection is opened lazily and re-opened
after a drop from the last seq it yielded, with ``Backoff`` between failed attempts. Frames
at or below that seq are dropped (``SeqTracker``), so the caller sees every event once, in
order. ``close()`` detaches (the run goes on on the server); ``cancel()`` asks the server to
stop the run, and the stream then ends with its ``done {cancelled}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import structlog

from agentstream_client._backoff import Backoff, SeqTracker
from agentstream_client._events import StreamEvent, decode, stored_count
from agentstream_client._exceptions import (
    RETRYABLE,
    ClientClosed,
    Conflict,
    ReconnectFailed,
)
from agentstream_client._http import Http
from agentstream_client._transports import Raw, StreamFinished, Target, Transport
from protocol.events import Done, RequireUserInput, UserInputReceived

log = structlog.get_logger("agentstream_client")
OnInput = Callable[[RequireUserInput], Awaitable[Any] | Any]


class _Stream:
    """The resume loop shared by ``Run`` and ``Subscription``."""

    def __init__(self, transport: Transport, target: Target, backoff: Backoff,
                 after: int = 0, first: AsyncGenerator[Raw, None] | None = None) -> None:
        self._transport = transport
        self.target = target
        self._backoff = backoff
        self._first = first
        self.tracker = SeqTracker(after)
        self.reconnects = 0
        self._gen: AsyncGenerator[StreamEvent, None] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncGenerator[StreamEvent, None]:
        if self._gen is None:
            self._gen = self._events()
        return self._gen

    async def close(self) -> None:
        """Stop reading and drop the connection. For a run this *detaches*: the run goes
        on on the server and can be attached again later."""
        self._closed = True
        gen, self._first = self._gen, None
        if gen is not None:
            await gen.aclose()

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _is_last(self, event: StreamEvent) -> bool:
        return False

    async def _on_event(self, event: StreamEvent) -> None:
        """Called for each new event before it is yielded."""

    async def _events(self) -> AsyncGenerator[StreamEvent, None]:
        """Connections one after another, resumed after the last seq, until the run's
        ``done`` (never, for a subscription) or ``close()``."""
        attempt = 0
        failing_since: float | None = None
        while not self._closed:
            conn = self._first or self._transport.connect(self.target, self.tracker.last_seq)
            self._first = None
            try:
                async with contextlib.aclosing(conn):
                    async for raw in conn:
                        event = decode(raw)
                        if not self.tracker.take(event.seq, stored_count(event)):
                            continue
                        attempt, failing_since = 0, None
                        await self._on_event(event)
                        yield event
                        if self._is_last(event):
                            return
            except StreamFinished:
                return
            except RETRYABLE as exc:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self._backoff.give_up_after:
                    raise ReconnectFailed(f"{self.target.kind} {self.target.id}: {exc}") \
                        from exc
                log.info("stream_reconnecting", target=self.target.id, error=str(exc),
                         after=self.tracker.last_seq, attempt=attempt)
            self.reconnects += 1
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1


class Run(_Stream):
    """A run on the server. Iterate it for its events up to its one ``done``."""

    def __init__(self, http: Http, transport: Transport, run_id: str,
                 conversation_id: str | None, backoff: Backoff, *, after: int = 0,
                 first: AsyncGenerator[Raw, None] | None = None, on_input: OnInput | None = None
                 ) -> None:
        super().__init__(transport, Target("run", run_id), backoff, after, first)
        self.http = http
        self.run_id = run_id
        self.conversation_id = conversation_id
        self.on_input = on_input
        self.result: Done | None = None
        self.pending_input: RequireUserInput | None = None

    def _is_last(self, event: StreamEvent) -> bool:
        return isinstance(event, Done)

    async def _on_event(self, event: StreamEvent) -> None:
        self.conversation_id = self.conversation_id or event.conversation_id
        if isinstance(event, Done):
            self.result = event
            self.pending_input = None
        elif isinstance(event, RequireUserInput):
            self.pending_input = event
            if self.on_input is not None:
                value = self.on_input(event)
                if inspect.isawaitable(value):
                    value = await value
                with contextlib.suppress(Conflict):  # answered already (by anyone)
                    await self.answer(value, event.data.request_id)
        elif isinstance(event, UserInputReceived):
            self.pending_input = None

    @property
    def complete(self) -> bool:
        """True once ``done`` arrived and this handle saw every event of the run (the
        count ``done.data.events`` promises); False for a handle attached mid-run."""
        return self.result is not None and self.tracker.counted == self.result.data.events

    async def wait(self) -> Done:
        """Read the run to its end; its ``done``."""
        async for _ in self:
            pass
        if self.result is None:
            raise ClientClosed(f"run {self.run_id} was closed before its done")
        return self.result

    async def answer(self, value: Any, request_id: str | None = None) -> None:
        """Answer the pending ``require_user_input`` (or ``request_id``). First answer wins:
        ``Conflict`` if it was answered already or the run ended."""
        if request_id is None:
            if self.pending_input is None:
                raise Conflict(0, "no_pending_input", f"run {self.run_id} asks nothing now")
            request_id = self.pending_input.data.request_id
        await self.http.post_json(f"/v1/runs/{self.run_id}/input",
                                  {"request_id": request_id, "value": value})

    async def cancel(self) -> str:
        """Ask the server to cancel the run (idempotent); returns the run's status. Keep
        iterating to get its ``done``; ``close()`` instead only stops listening."""
        reply = await self.http.post_json(f"/v1/runs/{self.run_id}/cancel", None,
                                          expect=(200, 202))
        return str(reply.get("status", ""))


class Subscription(_Stream):
    """Every event of a conversation, replay then live; ends only on ``close()``."""
