"""``GET /v1/ws``: one socket, many subscriptions, start/input/cancel/ping commands.

A connection runs three tasks in one ``asyncio.TaskGroup``: the command reader, the sink's
writer, and the credential-expiry watch. The writer's end is the connection's end (it then
cancels the others); the reader and the expiry end it by closing the sink; a task that fails
cancels the rest. Cleanup (close handshake, hub, runs to cancel, bookkeeping) runs once, in
``Connection.serve``'s ``finally``, whatever happened.

Commands are handled in order, so a ``cancel`` naming a ``start``'s ref is always resolved
against the run that start created, even when the client sent it before seeing the ``ack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
import structlog
from aiohttp import WSMsgType, web

from app import metrics
from app.api.common import error_response
from app.api.errors import ws_error
from app.api.snapshots import maybe_snapshot
from app.api.targets import parse_types, resolve, start_target
from app.api.webhooks import check_webhook
from app.auth.access import principal_of, require_write, run_for
from app.auth.authenticator import Principal
from app.errors import (
    AgentstreamError,
    BadRequest,
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    Unauthenticated,
    shutting_down,
)
from app.ids import public, scoped
from app.sinks.base import SinkClosed
from app.sinks.cursor import Cursor
from app.sinks.ws import WsSink, close_code
from app.state import STATE, State, connection_id
from protocol.messages import (
    Ack,
    CancelCommand,
    Command,
    ErrorReply,
    InputCommand,
    PingCommand,
    Pong,
    RefreshCommand,
    StartCommand,
    StartRunRequest,
    SubscribeCommand,
    UnsubscribeCommand,
    decode_command,
)

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
COMMAND_TYPES = frozenset({"start", "subscribe", "unsubscribe", "input", "cancel", "ping",
                           "refresh"})
# Start refs a socket remembers for cancel-by-ref; past this, refs of ended runs (then the
# oldest) are forgotten, so a socket that lives for days does not grow with every run.
STARTED_REFS_LIMIT = 1024


class ConnectionOver(Exception):
    """Raised when the writer ends: the task group's way of ending the other tasks."""


class StartedRuns:
    """Runs started on this socket: ``ref -> run id`` for cancel-by-ref, and the runs to
    cancel when the socket closes (``on_disconnect: cancel``). A run leaves the cancel set
    when its ``done`` is delivered; past ``limit`` entries ``prune`` drops ended runs (also
    those that ended unseen, after an unsubscribe), then the oldest refs."""

    def __init__(self, limit: int = STARTED_REFS_LIMIT) -> None:
        self.limit = limit
        self.by_ref: dict[str, str] = {}
        self.cancel_on_close: set[str] = set()

    def add(self, ref: str | None, run_id: str, cancel_on_close: bool,
            is_active: Callable[[str], bool]) -> None:
        if ref is not None:
            self.by_ref[ref] = run_id
        if cancel_on_close:
            self.cancel_on_close.add(run_id)
        if len(self.by_ref) > self.limit or len(self.cancel_on_close) > self.limit:
            self.prune(is_active)

    def ended(self, run_id: str) -> None:
        """The run's ``done`` was delivered: nothing to cancel any more. Its ref stays (a
        late cancel by ref still gets the final status) until ``prune`` needs the room."""
        self.cancel_on_close.discard(run_id)

    def prune(self, is_active: Callable[[str], bool]) -> None:
        """Forget ended runs; if refs are still over the limit, the oldest refs."""
        self.cancel_on_close = {r for r in self.cancel_on_close if is_active(r)}
        self.by_ref = {ref: run for ref, run in self.by_ref.items() if is_active(run)}
        while len(self.by_ref) > self.limit:
            del self.by_ref[next(iter(self.by_ref))]


class Connection:
    """One WebSocket client: its sink, the runs it started, and its command handlers."""

    def __init__(self, state: State, ws: web.WebSocketResponse, sink: WsSink,
                 principal: Principal) -> None:
        self.state = state
        self.ws = ws
        self.sink = sink
        self.principal = principal
        self.refreshed = asyncio.Event()
        self.runs = StartedRuns()
        sink.on_finished = self._run_finished

    def _run_finished(self, cursor: Cursor) -> None:
        """A run subscription delivered its ``done``: the run leaves our bookkeeping."""
        if cursor.run_id is not None:
            self.runs.ended(cursor.run_id)

    # ---- lifecycle ---------------------------------------------------------------------

    async def serve(self) -> None:
        """Run reader, writer and expiry until the writer ends; clean up once."""
        name = self.sink.connection_id
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.read_commands(), name=f"ws-reader:{name}")
                tasks.create_task(self._write(), name=f"ws-writer:{name}")
                tasks.create_task(self.expire(), name=f"ws-expiry:{name}")
        except* ConnectionOver:
            pass
        except* Exception as failed:
            log.error("ws_connection_failed", exc_info=failed.exceptions[0])
            self.sink.close("internal_error")
        finally:
            await self._cleanup()

    async def _write(self) -> None:
        await self.sink.run()
        raise ConnectionOver

    async def read_commands(self) -> None:
        """Handle commands in order until the socket or the sink closes; the client's
        close (or a dead socket) closes the sink, which ends the writer."""
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                await self.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.error("binary_not_supported", "send JSON text frames")
            if self.sink.closed:
                return
            # Replies are bounded like events: stop reading a client that is not reading.
            await self.sink.reply_room()
            if self.sink.closed:
                return
        self.sink.close("disconnected")

    async def _cleanup(self) -> None:
        sink, ws = self.sink, self.ws
        sink.close("disconnected")
        sink.release()
        reason = sink.close_reason
        if not ws.closed and reason != "write_timeout":
            try:
                async with asyncio.timeout(sink.policy.write_timeout):
                    await ws.close(code=close_code(reason), message=(reason or "").encode())
            except (TimeoutError, ConnectionError, RuntimeError):
                sink.abort()
        for run_id in self.runs.cancel_on_close:
            self.state.engine.request_cancel(run_id, reason="client_disconnected")
        self.state.sinks.discard(sink)
        if isinstance(ws.exception(), asyncio.TimeoutError):
            metrics.PEERS_DROPPED.labels("ws", "heartbeat").inc()
        log.info("ws_closed", reason=reason, code=close_code(reason), delivered=sink.delivered)

    # ---- replies -----------------------------------------------------------------------

    def reply(self, message: object) -> None:
        try:
            self.sink.wire.send_reply(message)
        except (ConnectionError, RuntimeError) as exc:
            self.sink.transport_lost(exc)

    def error(self, code: str, message: str, ref: str | None = None) -> None:
        self.reply(ErrorReply(ref=ref, code=code, message=message))

    async def handle_text(self, raw: str) -> None:
        """One command, answered whatever happens: a coded error, or ``internal_error``
        for a bug (logged), so the reader survives and the cleanup still runs."""
        try:
            cmd = decode_command(raw)
        except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
            self.error(*self._classify(raw, exc))
            return
        except msgspec.DecodeError as exc:
            self.error("malformed_json", f"not valid JSON: {exc}")
            return
        except Exception:
            log.exception("ws_decode_failed")
            self.error("internal_error", "the command could not be read")
            return
        try:
            await self.dispatch(cmd)
        except AgentstreamError as exc:
            self.reply(ws_error(exc, cmd.ref))
        except SinkClosed:
            pass  # the socket closed while the command ran: nothing to answer
        except Exception:
            log.exception("ws_command_failed", command=type(cmd).__name__)
            self.error("internal_error", "the command failed on the server", cmd.ref)

    @staticmethod
    def _classify(raw: str, exc: msgspec.ValidationError) -> tuple[str, str, str | None]:
        """Name the problem: unknown type, or which field is wrong; echo ref if readable."""
        ref = None
        with contextlib.suppress(Exception):
            obj = msgspec.json.decode(raw)
            if isinstance(obj, dict):
                ref = obj.get("ref") if isinstance(obj.get("ref"), str) else None
                kind = obj.get("type")
                if not isinstance(obj.get("type"), str) or kind not in COMMAND_TYPES:
                    return "unknown_type", f"unknown command type {kind!r}: {exc}", ref
        return "invalid_command", str(exc), ref

    # ---- commands ----------------------------------------------------------------------

    async def dispatch(self, cmd: Command) -> None:
        engine = self.state.engine
        if isinstance(cmd, PingCommand):
            self.reply(Pong(ref=cmd.ref))
        elif isinstance(cmd, StartCommand):
            await self.start(cmd)
        elif isinstance(cmd, SubscribeCommand):
            await self.subscribe(cmd)
        elif isinstance(cmd, UnsubscribeCommand):
            key = self._key(cmd.conversation_id, cmd.run_id)
            if not self.sink.unsubscribe(key):
                raise NotFound("not_subscribed", f"no subscription to {public(key[1])!r}")
            self.reply(Ack(ref=cmd.ref, run_id=cmd.run_id, conversation_id=cmd.conversation_id))
        elif isinstance(cmd, InputCommand):
            await run_for(engine, self.principal, cmd.run_id, write=True)
            await engine.answer(cmd.run_id, cmd.request_id, cmd.value)
            self.reply(Ack(ref=cmd.ref, run_id=cmd.run_id))
        elif isinstance(cmd, CancelCommand):
            await self.cancel(cmd)
        elif isinstance(cmd, RefreshCommand):
            self.refresh(cmd)

    def refresh(self, cmd: RefreshCommand) -> None:
        """Swap in a fresh credential for the same user before the current one expires."""
        if not self.state.auth.enabled:
            raise BadRequest("auth_disabled", "this server does not use tokens")
        fresh = self.state.auth.verify(cmd.token)
        if fresh.user != self.principal.user:
            raise Unauthenticated("invalid_token", "a refresh token must be for the same user")
        self.principal = fresh
        self.refreshed.set()
        self.reply(Ack(ref=cmd.ref))

    async def expire(self) -> None:
        """Close 1008 when the credential expires, unless a ``refresh`` came first."""
        while True:
            expires_at = self.principal.expires_at
            if expires_at is None:
                await asyncio.Event().wait()  # never expires: cancelled with the connection
            self.refreshed.clear()
            delay = (expires_at or 0) - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.refreshed.wait()
                continue
            self.sink.close("token_expired")
            return

    def check_room(self) -> None:
        limit = self.state.settings.max_subscriptions
        if limit and len(self.sink.subs) >= limit:
            metrics.LIMITED.labels("subscriptions").inc()
            raise LimitExceeded("too_many_subscriptions",
                                f"at most {limit} subscriptions per socket")

    def _key(self, conversation_id: str | None, run_id: str | None) -> tuple[str, str]:
        """The sink's subscription key; a conversation is named in the caller's namespace."""
        if (conversation_id is None) == (run_id is None):
            raise InvalidInput("invalid_command", "give exactly one of conversation_id, run_id")
        if run_id is not None:
            return ("run", run_id)
        assert conversation_id is not None
        return ("conversation", scoped(self.principal.owner, conversation_id))

    def _is_active(self, run_id: str) -> bool:
        return run_id in self.state.engine.active

    async def start(self, cmd: StartCommand) -> None:
        if cmd.ref is not None and cmd.ref in self.runs.by_ref:
            raise Conflict("duplicate_ref", f"ref {cmd.ref!r} already started a run")
        require_write(self.principal)
        check_webhook(self.state.settings, cmd.webhook_url)
        self.check_room()
        self.state.run_limiter.check(self.principal.user)
        started = await self.state.engine.start(
            StartRunRequest(agent=cmd.agent, input=cmd.input,
                            conversation_id=cmd.conversation_id,
                            on_disconnect=cmd.on_disconnect, metadata=cmd.metadata,
                            multitask=cmd.multitask, webhook_url=cmd.webhook_url),
            owner=self.principal.owner,
            admin=self.principal.admin, idempotency_key=cmd.idempotency_key,
        )
        rec = started.record
        # Registered before anything else can fail: a socket that died meanwhile still
        # cancels an ``on_disconnect: cancel`` run in its cleanup.
        self.runs.add(cmd.ref, rec.run_id, rec.on_disconnect == "cancel", self._is_active)
        target = start_target(rec.conversation_id, rec.run_id, rec.first_seq)
        if started.replayed:
            target = await resolve(
                self.state.engine, self.principal, shutting=self.state.shutting_down,
                run_id=rec.run_id, after=max(cmd.after or 0, started.after))
        self.reply(Ack(ref=cmd.ref, run_id=rec.run_id,
                       conversation_id=public(rec.conversation_id),
                       status=rec.status, replayed=started.replayed))
        if not target.finished:
            self.sink.subscribe(rec.conversation_id, after=target.after, run_id=rec.run_id,
                                ends_on_done=True)

    async def subscribe(self, cmd: SubscribeCommand) -> None:
        key = self._key(cmd.conversation_id, cmd.run_id)
        if key not in self.sink.subs:
            self.check_room()
        target = await resolve(
            self.state.engine, self.principal, shutting=self.state.shutting_down,
            conversation_id=cmd.conversation_id, run_id=cmd.run_id, after=cmd.after or 0,
            types=parse_types(cmd.types), snapshot=cmd.snapshot)
        snap = await maybe_snapshot(self.state.engine, target)
        if self.sink.closed:
            raise SinkClosed(self.sink.close_reason or "closed")
        self.reply(Ack(ref=cmd.ref, run_id=target.run_id,
                       conversation_id=public(target.conversation_id)))
        if snap.events:
            self.write_events(b"".join([e.ws for e in snap.events]))
        if target.finished or snap.ended:
            return  # the client has (or just got) this run's ``done`` (SSE: 204)
        self.sink.subscribe(target.conversation_id, after=snap.after, run_id=target.run_id,
                            ends_on_done=target.run_id is not None, types=target.types)
        log.debug("ws_subscribed", key=key, after=snap.after)

    def write_events(self, frames: bytes) -> None:
        """Snapshot frames, in order after the ack; bounded like replies (the reader waits
        for room before the next command)."""
        try:
            self.sink.wire.write_nowait(frames)
        except (ConnectionError, RuntimeError) as exc:
            self.sink.transport_lost(exc)

    async def cancel(self, cmd: CancelCommand) -> None:
        run_id = cmd.run_id
        if run_id is None:
            start_ref = cmd.start_ref or cmd.ref
            run_id = self.runs.by_ref.get(start_ref or "")
            if run_id is None:
                raise NotFound("run_not_found",
                               f"no run_id and no start with ref {start_ref!r} on this socket")
        await run_for(self.state.engine, self.principal, run_id, write=True)
        _, record = await self.state.engine.cancel(run_id)
        self.reply(Ack(ref=cmd.ref, run_id=run_id, status=record.status))


def upgrade_required() -> web.Response:
    """``426`` for a plain GET: the client must upgrade to a WebSocket (RFC 9110 15.5.22)."""
    response = error_response(426, "upgrade_required",
                              "this endpoint speaks WebSocket: send an Upgrade: websocket request")
    response.headers["Upgrade"] = "websocket"
    response.headers["Connection"] = "Upgrade"
    return response


@routes.get("/v1/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.shutting_down:
        raise shutting_down()
    if request.headers.get("Upgrade", "").strip().lower() != "websocket":
        return upgrade_required()
    principal = principal_of(request)  # authenticated at the upgrade, by the middleware
    state.connections.acquire(principal.user)
    try:
        return await _serve(request, state, principal)
    finally:
        state.connections.release(principal.user)


async def _serve(request: web.Request, state: State, principal: Principal) -> web.StreamResponse:
    policy = state.settings.policy
    ws = web.WebSocketResponse(
        heartbeat=None,  # ping/pong on the shared timer wheel (app/sinks/ws.py)
        max_msg_size=state.settings.max_ws_message,  # also bounds inflated messages
        compress=policy.compression,  # permessage-deflate if offered (app/sinks/ws.py)
        timeout=5.0,
    )
    if not ws.can_prepare(request).ok:
        raise BadRequest("invalid_websocket_handshake",
                         "the WebSocket handshake headers are missing or invalid")
    await ws.prepare(request)
    conn_id = connection_id()
    structlog.contextvars.bind_contextvars(connection_id=conn_id)
    sink = WsSink(ws, request, state.hub, state.store, policy, conn_id)
    state.sinks.add(sink)
    await Connection(state, ws, sink, principal).serve()
    return ws
