"""Remote agents: an agent of another server speaking PROTOCOL.md, run as if it were local.

The run starts there (``POST /v1/runs`` as SSE, ``on_disconnect: "cancel"`` so a lost link
stops it there); its content events are re-emitted here with their types and item ids; its
questions become local ``ctx.ask`` calls whose answers are forwarded (retried: first answer
wins there); its ``done`` ends the local run the same way. A dropped stream resumes with
``Last-Event-ID`` (the remote keeps the log) within a bounded budget. A local cancel or
failure cancels the remote run, also one cancelled before the remote named its run: the
start request runs in its own task and the cancel is sent once the id arrives (bounded by
``cancel_timeout``; past it the start stream is closed, which cancels by ``on_disconnect``).
Only a start request of which nothing was sent is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import structlog

from app.agents.base import MISSING, Agent, AgentError, RunContext
from app.agents.remote_http import RemoteOptions, RemoteRun, RemoteServer
from app.clock import now_ms
from protocol.codec import decode_event
from protocol.events import (
    Done,
    EventBase,
    MessageChunkData,
    ReasoningData,
    RequireUserInput,
)
from protocol.messages import AgentCard
from protocol.sse_parser import SseEvent, SseParser, SseProtocolError

log = structlog.get_logger(__name__)

# Written by the remote's engine; the local engine writes its own.
LIFECYCLE_TYPES = frozenset({"conversation_started", "run_started", "require_user_input",
                             "user_input_received", "run_cancelling", "done"})


def event_type(event: EventBase) -> str:
    tag: str = event.__struct_config__.tag  # type: ignore[assignment]
    return tag


@dataclass
class _Stream:
    """One open SSE response from the remote and what was read of it but not handled yet."""

    resp: aiohttp.ClientResponse
    parser: SseParser = field(default_factory=SseParser)
    frames: list[SseEvent] = field(default_factory=list)


class _StreamEnded(Exception):
    """The remote stream closed or broke before its ``done``: resume it."""


class RemoteAgent(Agent):
    def __init__(self, name: str, options: RemoteOptions, *, description: str = "") -> None:
        parts = urlsplit(options.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"remote agent {name!r}: url must be http(s)://host[:port]")
        self.options = options
        self.remote = RemoteServer(options)
        self.base = self.remote.base
        self.card = AgentCard(
            name=name,
            description=description or f"{options.remote_agent} at {self.base}",
            can_request_input=options.can_request_input,
        )
        self._cancels: set[asyncio.Task[None]] = set()

    # ---- set-up -------------------------------------------------------------------------

    # ---- a run --------------------------------------------------------------------------

    async def run(self, ctx: RunContext, input: Any) -> None:
        structlog.contextvars.bind_contextvars(remote=self.base)
        await self.remote.ensure_ready()
        remote = RemoteRun()
        # The start request and the wait for the remote run's id run in their own task: a
        # local cancel meanwhile must not abandon a run the remote may already have started.
        opening = asyncio.create_task(self._open_run(input, remote),
                                      name=f"remote-start:{ctx.run_id}")
        try:
            stream = await asyncio.shield(opening)
        except asyncio.CancelledError:
            await self._own(self._cancel_once_known(opening, remote),
                            f"remote-cancel:{ctx.run_id}")
            raise
        structlog.contextvars.bind_contextvars(remote_run_id=remote.run_id)
        log.info("remote_run_started")
        try:
            while True:
                try:
                    await self._relay(ctx, stream, remote)
                    return
                except _StreamEnded as exc:
                    remote.problem = str(exc)
                    log.warning("remote_stream_dropped", last_seq=remote.last_seq,
                                reason=remote.problem)
                    stream = _Stream(await self.remote.resume(remote))
        except BaseException:
            # Cancelled here, failed here, or shut down: do not leave the remote run going.
            if not remote.ended and remote.run_id is not None:
                await self._own(self.remote.cancel(remote.run_id),
                                f"remote-cancel:{ctx.run_id}")
            raise

    async def _open_run(self, input: Any, remote: RemoteRun) -> _Stream:
        """Start the remote run and read its stream up to the first event that names it
        (``remote.run_id``); that event and any after it stay in ``frames``."""
        stream = _Stream(await self.remote.start(input))
        try:
            while True:
                try:
                    frames = await self._read(stream)
                except _StreamEnded as exc:
                    raise AgentError("remote_disconnected",
                                     f"the remote stream ended before the run started: {exc}"
                                     ) from None
                for i, frame in enumerate(frames):
                    run_id = self._decode(frame.data).run_id
                    if run_id is not None:
                        remote.run_id = run_id
                        stream.frames = frames[i:]
                        return stream
        except BaseException:
            # Closing the start stream cancels a remote run we cannot name (on_disconnect).
            stream.resp.close()
            raise

    async def _cancel_once_known(self, opening: asyncio.Task[_Stream],
                                 remote: RemoteRun) -> None:
        """After a local cancel during ``_open_run``: wait (bounded) for the remote run's id,
        then cancel it there. If it never comes, the start stream is closed, which cancels
        the remote run by its ``on_disconnect``."""
        try:
            async with asyncio.timeout(self.options.cancel_timeout):
                stream = await opening
        except TimeoutError:
            log.warning("remote_cancel_without_run_id", reason="no first event in time")
            return
        except Exception:
            return  # the start failed: there is no remote run to cancel
        try:
            assert remote.run_id is not None
            await self.remote.cancel(remote.run_id)
        finally:
            stream.resp.close()

    async def _read(self, stream: _Stream) -> list[SseEvent]:
        """The next frames of a stream; _StreamEnded if it broke, closed or went silent."""
        while True:
            try:
                async with asyncio.timeout(self.options.idle_timeout):
                    chunk = await stream.resp.content.readany()
            except TimeoutError:
                raise _StreamEnded(f"nothing for {self.options.idle_timeout:g}s") from None
            except aiohttp.ClientError as exc:
                raise _StreamEnded(str(exc) or type(exc).__name__) from None
            if not chunk:
                raise _StreamEnded("the remote closed the stream")
            try:
                frames = stream.parser.feed(chunk)
            except SseProtocolError as exc:
                raise AgentError("remote_bad_response", str(exc)) from None
            if frames:
                return frames

    async def _relay(self, ctx: RunContext, stream: _Stream, remote: RemoteRun) -> None:
        """Relay one stream until the remote ``done`` (returns or raises AgentError);
        raises _StreamEnded if the stream ends before it."""
        async with stream.resp:
            while True:
                frames, stream.frames = stream.frames, []
                for frame in frames or await self._read(stream):
                    if await self._on_event(ctx, frame.data, remote):
                        return

    @staticmethod
    def _decode(raw: str) -> EventBase:
        try:
            event: EventBase = decode_event(raw)
        except msgspec.MsgspecError as exc:
            raise AgentError("remote_bad_response", f"unreadable remote event: {exc}") from None
        return event

    async def _on_event(self, ctx: RunContext, raw: str, remote: RemoteRun) -> bool:
        """Handle one remote event; True once it was the run's ``done``."""
        event = self._decode(raw)
        if event.run_id is None or event.run_id != remote.run_id or event.seq <= remote.last_seq:
            return False
        if isinstance(event, Done):
            remote.ended = True
            self._end_like(event, remote)
            return True
        if isinstance(event, RequireUserInput):
            await self._ask(ctx, event, event.run_id)
        elif event_type(event) not in LIFECYCLE_TYPES:
            await self._emit(ctx, event)
        remote.last_seq = event.seq
        return False

    @staticmethod
    async def _emit(ctx: RunContext, event: EventBase) -> None:
        data: msgspec.Struct = getattr(event, "data")  # noqa: B009 (not on EventBase)
        if isinstance(data, MessageChunkData | ReasoningData) and data.merged != 1:
            # The remote merged chunks while catching up; here it is one stored event.
            data = msgspec.structs.replace(data, merged=1)
        await ctx.emit(event_type(event), data, item_id=event.item_id,
                       thread_id=event.thread_id, task_id=event.task_id)

    async def _ask(self, ctx: RunContext, event: RequireUserInput, run_id: str) -> None:
        q = event.data
        timeout = None
        if q.expires_at is not None:
            timeout = max(0.01, (q.expires_at - now_ms()) / 1000)
        answer = await ctx.ask(
            q.prompt, choices=q.choices, schema=q.schema, timeout=timeout,
            default=q.default if q.has_default else MISSING,
        )
        await self.remote.forward_input(run_id, q.request_id, answer)

    @staticmethod
    def _end_like(done: Done, remote: RemoteRun) -> None:
        d = done.data
        if d.status == "completed":
            return
        if d.status == "cancelled" and remote.problem:
            # Started with on_disconnect: cancel, the remote stops when our link drops.
            raise AgentError("remote_disconnected",
                             f"lost the stream of remote run {remote.run_id} "
                             f"({remote.problem}) and the remote cancelled the run")
        if d.error is not None:
            raise AgentError(d.error.code, f"remote run {d.status}: {d.error.message}")
        raise AgentError(f"remote_{d.status}", f"the remote run ended {d.status}")

    # ---- cancel and close ---------------------------------------------------------------

    async def _own(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run clean-up work to its end even though this task is being cancelled; each step
        of it is bounded in time. The task is owned by the agent, so ``close()`` ends any
        still running."""
        task = asyncio.create_task(work, name=name)
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
        # Cancelled again while waiting: the caller re-raises the first one anyway.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def close(self) -> None:
        if self._cancels:
            await asyncio.wait(set(self._cancels), timeout=self.options.cancel_timeout)
        for task in list(self._cancels):
            task.cancel()
        await self.remote.close()
