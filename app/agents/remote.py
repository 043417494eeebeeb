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
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import aiohttp
import msgspec
import structlog

from app.agents.base import MISSING, Agent, AgentError, RunContext
from app.agents.http_client import (
    LazySession,
    RequestProbe,
    backoff_delay,
    backoff_delays,
    read_error_text,
    safe_to_retry,
)
from app.clock import now_ms
from protocol.codec import decode_event
from protocol.events import (
    Done,
    EventBase,
    MessageChunkData,
    ReasoningData,
    RequireUserInput,
)
from protocol.messages import AgentCard, AgentList
from protocol.sse_parser import SseEvent, SseParser, SseProtocolError

log = structlog.get_logger(__name__)

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
# Written by the remote's engine; the local engine writes its own.
LIFECYCLE_TYPES = frozenset({"conversation_started", "run_started", "require_user_input",
                             "user_input_received", "run_cancelling", "done"})
_agents_decoder = msgspec.json.Decoder(AgentList)


def event_type(event: EventBase) -> str:
    tag: str = event.__struct_config__.tag  # type: ignore[assignment]
    return tag


class RemoteOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the operator configures for one remote agent (the TOML entry extends this)."""

    url: str
    remote_agent: str
    can_request_input: bool = True
    connect_timeout: PositiveSeconds = 10.0
    # Each JSON call, and the wait for a stream's response headers.
    request_timeout: PositiveSeconds = 30.0
    # Longest silence on a stream; the remote sends heartbeats, so this means it is gone.
    idle_timeout: PositiveSeconds = 60.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    resume_retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5
    backoff: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5
    cancel_timeout: PositiveSeconds = 3.0


@dataclass
class _RemoteRun:
    run_id: str | None = None
    last_seq: int = 0
    ended: bool = False
    # Resume attempts since an event last got through, and the seq they resume from.
    resume_failures: int = 0
    resumed_from: int = 0
    problem: str = ""


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
        self.base = options.url.rstrip("/")
        self.card = AgentCard(
            name=name,
            description=description or f"{options.remote_agent} at {self.base}",
            can_request_input=options.can_request_input,
        )
        self._http = LazySession(options.connect_timeout)
        self._lock = asyncio.Lock()
        self._ready = False
        self._cancels: set[asyncio.Task[None]] = set()

    # ---- set-up -------------------------------------------------------------------------

    async def _ensure_ready(self) -> None:
        """Check once (concurrent first runs share one check) that the remote has the agent."""
        if self._ready:
            return
        opts = self.options
        # Every attempt at its timeout plus every backoff at its longest (+20% jitter).
        sleeps = sum(min(10.0, opts.backoff * 2.0**i) * 1.2 for i in range(opts.retries))
        budget = (opts.retries + 1) * opts.request_timeout + sleeps + 1.0
        try:
            async with asyncio.timeout(budget), self._lock:
                if not self._ready:
                    await self._check_remote()
                    self._ready = True
        except TimeoutError:
            raise AgentError("remote_unavailable", f"{self.base} did not answer in time") from None

    async def _check_remote(self) -> None:
        opts = self.options
        delays = backoff_delays(opts.retries, opts.backoff)
        while True:
            problem = await self._fetch_agents()
            if problem is None:
                log.info("remote_ready", remote=self.base, remote_agent=opts.remote_agent)
                return
            delay = next(delays, None)
            if delay is None:
                raise AgentError("remote_unavailable", f"{self.base}: {problem}")
            log.warning("remote_setup_retry", remote=self.base, problem=problem,
                        delay=round(delay, 3))
            await asyncio.sleep(delay)

    async def _fetch_agents(self) -> str | None:
        """None when the remote lists our agent; else why not (retried). A remote without
        the agent is final."""
        try:
            async with asyncio.timeout(self.options.request_timeout), self._http.get().get(
                f"{self.base}/v1/agents"
            ) as resp:
                if resp.status != 200:
                    return f"GET /v1/agents answered {resp.status}: {await read_error_text(resp)}"
                listing = _agents_decoder.decode(await resp.read())
        except TimeoutError:
            return f"no answer within {self.options.request_timeout:g}s"
        except aiohttp.ClientError as exc:
            return f"cannot connect ({exc or type(exc).__name__})"
        except msgspec.MsgspecError:
            return "GET /v1/agents did not return an agent list"
        names = sorted(a.name for a in listing.agents)
        if self.options.remote_agent not in names:
            raise AgentError("remote_agent_unknown",
                             f"{self.base} has no agent {self.options.remote_agent!r} "
                             f"(it has: {', '.join(names)})")
        return None

    # ---- a run --------------------------------------------------------------------------

    async def run(self, ctx: RunContext, input: Any) -> None:
        structlog.contextvars.bind_contextvars(remote=self.base)
        await self._ensure_ready()
        remote = _RemoteRun()
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
                    stream = _Stream(await self._resume(remote))
        except BaseException:
            # Cancelled here, failed here, or shut down: do not leave the remote run going.
            if not remote.ended and remote.run_id is not None:
                await self._own(self._cancel_remote(remote.run_id),
                                f"remote-cancel:{ctx.run_id}")
            raise

    async def _open_run(self, input: Any, remote: _RemoteRun) -> _Stream:
        """Start the remote run and read its stream up to the first event that names it
        (``remote.run_id``); that event and any after it stay in ``frames``."""
        stream = _Stream(await self._start(input))
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
                                 remote: _RemoteRun) -> None:
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
            await self._cancel_remote(remote.run_id)
        finally:
            stream.resp.close()

    async def _start(self, input: Any) -> aiohttp.ClientResponse:
        """POST the run (as SSE, cancelled by the remote if this link drops). Retried only
        while nothing was sent: a repeat after that could start the run twice."""
        opts = self.options
        body = {"agent": opts.remote_agent, "input": input, "on_disconnect": "cancel"}
        delays = backoff_delays(opts.retries, opts.backoff)
        while True:
            probe = RequestProbe()
            try:
                async with asyncio.timeout(opts.request_timeout):
                    resp = await self._http.get().post(
                        f"{self.base}/v1/runs", json=body,
                        headers={"Accept": "text/event-stream"}, trace_request_ctx=probe,
                    )
                break
            except (TimeoutError, aiohttp.ClientError) as exc:
                delay = next(delays, None) if safe_to_retry(exc, probe) else None
                if delay is not None:
                    await asyncio.sleep(delay)
                    continue
                if isinstance(exc, aiohttp.ClientConnectorError):
                    self._ready = False
                    message = f"cannot connect to {self.base}: {exc}"
                elif isinstance(exc, TimeoutError):
                    message = f"{self.base} did not answer within {opts.request_timeout:g}s"
                else:
                    message = f"{self.base}: {exc or type(exc).__name__}"
                if probe.sent:
                    message += " (not retried: the remote had the start request)"
                raise AgentError("remote_unavailable", message) from None
        if resp.status == 200:
            return resp
        async with resp:
            await self._raise_http_error(resp, "starting the run")

    async def _resume(self, remote: _RemoteRun) -> aiohttp.ClientResponse:
        """Re-open the run's events after the last seq relayed. Attempts are bounded while
        no event gets through; any progress makes a later drop start afresh."""
        opts = self.options
        url = f"{self.base}/v1/runs/{remote.run_id}/events"
        while True:
            if remote.last_seq > remote.resumed_from:
                remote.resume_failures = 0
            remote.resumed_from = remote.last_seq
            if remote.resume_failures >= opts.resume_retries:
                raise AgentError(
                    "remote_disconnected",
                    f"lost the stream of remote run {remote.run_id} and could not resume it "
                    f"({opts.resume_retries} attempts; last: {remote.problem})",
                )
            await asyncio.sleep(backoff_delay(remote.resume_failures, opts.backoff))
            remote.resume_failures += 1
            try:
                async with asyncio.timeout(opts.request_timeout):
                    resp = await self._http.get().get(url, headers={
                        "Accept": "text/event-stream", "Last-Event-ID": str(remote.last_seq)})
            except (TimeoutError, aiohttp.ClientError) as exc:
                remote.problem = str(exc) or type(exc).__name__
                continue
            if resp.status == 200:
                log.info("remote_stream_resumed", remote_run_id=remote.run_id,
                         last_event_id=remote.last_seq, attempt=remote.resume_failures)
                return resp
            async with resp:
                if resp.status < 500:
                    await self._raise_http_error(resp, "resuming the stream")
                remote.problem = f"{resp.status} {await read_error_text(resp)}"

    async def _raise_http_error(self, resp: aiohttp.ClientResponse, doing: str) -> NoReturn:
        text = await read_error_text(resp)
        code = "remote_unavailable" if resp.status in (502, 503, 504) else "remote_http_error"
        raise AgentError(code, f"{self.base} answered {resp.status} {doing}: {text}")

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

    async def _relay(self, ctx: RunContext, stream: _Stream, remote: _RemoteRun) -> None:
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

    async def _on_event(self, ctx: RunContext, raw: str, remote: _RemoteRun) -> bool:
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
        await self._forward_input(run_id, q.request_id, answer)

    async def _forward_input(self, run_id: str, request_id: str, value: Any) -> None:
        """POST the answer. The remote keeps the first answer to a request and refuses later
        ones with 409, so a repeat is harmless: connection failures, timeouts and 502-504
        are retried."""
        opts = self.options
        url = f"{self.base}/v1/runs/{run_id}/input"
        delays = backoff_delays(opts.retries, opts.backoff)
        while True:
            try:
                async with asyncio.timeout(opts.request_timeout), self._http.get().post(
                    url, json={"request_id": request_id, "value": value}
                ) as resp:
                    if resp.status == 200:
                        return
                    if resp.status == 409:
                        # Settled there already: our own earlier attempt, the remote's default
                        # at the same deadline, or the run ended (its done follows).
                        log.info("remote_input_already_settled", request_id=request_id,
                                 detail=await read_error_text(resp))
                        return
                    if resp.status not in (502, 503, 504):
                        await self._raise_http_error(resp, "forwarding the answer")
                    problem = f"{resp.status} {await read_error_text(resp)}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = str(exc) or type(exc).__name__
            delay = next(delays, None)
            if delay is None:
                raise AgentError("remote_unavailable",
                                 f"could not forward the answer to {self.base}: {problem}")
            log.warning("remote_input_retry", request_id=request_id, problem=problem,
                        delay=round(delay, 3))
            await asyncio.sleep(delay)

    @staticmethod
    def _end_like(done: Done, remote: _RemoteRun) -> None:
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

    async def _cancel_remote(self, run_id: str) -> None:
        try:
            async with asyncio.timeout(self.options.cancel_timeout), self._http.get().post(
                f"{self.base}/v1/runs/{run_id}/cancel"
            ) as resp:
                log.info("remote_cancel_forwarded", remote_run_id=run_id, status=resp.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("remote_cancel_failed", remote_run_id=run_id,
                        error=str(exc) or type(exc).__name__)

    async def close(self) -> None:
        if self._cancels:
            await asyncio.wait(set(self._cancels), timeout=self.options.cancel_timeout)
        for task in list(self._cancels):
            task.cancel()
        await self._http.close()
