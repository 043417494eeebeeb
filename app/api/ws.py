"""``GET /v1/ws``: one socket, many subscriptions, start/input/cancel/ping commands.

The handler owns two things and ends both: the sink's writer task and the read loop here.
Commands are handled in order, so a ``cancel`` naming a ``start``'s ref is always resolved
against the run that start created, even when the client sent it before seeing the ``ack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from app import metrics
from app.api.errors import ws_error
from app.auth.access import conversation_for, principal_of, require_write, run_for
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
from app.sinks.ws import WsSink
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


class Connection:
    """One WebSocket client: its sink, the runs it started, and its command handlers."""

    def __init__(self, st: State, sink: WsSink, principal: Principal) -> None:
        self.st = st
        self.sink = sink
        self.principal = principal
        self.refreshed = asyncio.Event()
        self.started: dict[str, str] = {}  # start ref -> run id
        self.cancel_on_close: set[str] = set()

    def error(self, code: str, message: str, ref: str | None = None, **ids: Any) -> None:
        self.sink.send_reply(ErrorReply(ref=ref, code=code, message=message, **ids))

    async def handle_text(self, raw: str) -> None:
        try:
            cmd = decode_command(raw)
        except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
            self.error(*self._classify(raw, exc))
            return
        except msgspec.DecodeError as exc:
            self.error("malformed_json", f"not valid JSON: {exc}")
            return
        try:
            await self.dispatch(cmd)
        except AgentstreamError as exc:
            self.sink.send_reply(ws_error(exc, cmd.ref))

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

    async def dispatch(self, cmd: Command) -> None:
        engine = self.st.engine
        if isinstance(cmd, PingCommand):
            self.sink.send_reply(Pong(ref=cmd.ref))
        elif isinstance(cmd, StartCommand):
            await self.start(cmd)
        elif isinstance(cmd, SubscribeCommand):
            await self.subscribe(cmd)
        elif isinstance(cmd, UnsubscribeCommand):
            key = self._key(cmd.conversation_id, cmd.run_id)
            if not self.sink.unsubscribe(key):
                raise NotFound("not_subscribed", f"no subscription to {key[1]!r}")
            self.sink.send_reply(Ack(ref=cmd.ref, run_id=cmd.run_id,
                                     conversation_id=cmd.conversation_id))
        elif isinstance(cmd, InputCommand):
            await run_for(engine, self.principal, cmd.run_id, write=True)
            await engine.answer(cmd.run_id, cmd.request_id, cmd.value)
            self.sink.send_reply(Ack(ref=cmd.ref, run_id=cmd.run_id))
        elif isinstance(cmd, CancelCommand):
            await self.cancel(cmd)
        elif isinstance(cmd, RefreshCommand):
            self.refresh(cmd)

    def refresh(self, cmd: RefreshCommand) -> None:
        """Swap in a fresh credential for the same user before the current one expires."""
        if not self.st.auth.enabled:
            raise BadRequest("auth_disabled", "this server does not use tokens")
        fresh = self.st.auth.verify(cmd.token)
        if fresh.user != self.principal.user:
            raise Unauthenticated("invalid_token", "a refresh token must be for the same user")
        self.principal = fresh
        self.refreshed.set()
        self.sink.send_reply(Ack(ref=cmd.ref))

    async def expire(self) -> None:
        """Close 1008 when the credential expires, unless a ``refresh`` came first."""
        while True:
            expires_at = self.principal.expires_at
            if expires_at is None:
                await asyncio.Event().wait()  # never expires: wait to be cancelled
            self.refreshed.clear()
            delay = (expires_at or 0) - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.refreshed.wait()
                continue
            self.sink.close_code = WSCloseCode.POLICY_VIOLATION
            self.sink.close("token_expired")
            return

    def check_room(self) -> None:
        limit = self.st.settings.max_subscriptions
        if limit and len(self.sink.subs) >= limit:
            metrics.LIMITED.labels("subscriptions").inc()
            raise LimitExceeded("too_many_subscriptions",
                           f"at most {limit} subscriptions per socket")

    @staticmethod
    def _key(conversation_id: str | None, run_id: str | None) -> tuple[str, str]:
        if (conversation_id is None) == (run_id is None):
            raise InvalidInput("invalid_command", "give exactly one of conversation_id, run_id")
        if run_id is not None:
            return ("run", run_id)
        assert conversation_id is not None
        return ("conversation", conversation_id)

    async def start(self, cmd: StartCommand) -> None:
        if cmd.ref is not None and cmd.ref in self.started:
            raise Conflict("duplicate_ref", f"ref {cmd.ref!r} already started a run")
        require_write(self.principal)
        self.check_room()
        self.st.run_limiter.check(self.principal.user)
        run = await self.st.engine.start_run(
            StartRunRequest(
                agent=cmd.agent, input=cmd.input, conversation_id=cmd.conversation_id,
                on_disconnect=cmd.on_disconnect, metadata=cmd.metadata,
            ),
            owner=self.principal.user if self.st.auth.enabled else None,
            admin=self.principal.admin,
        )
        rec = run.record
        if cmd.ref is not None:
            self.started[cmd.ref] = rec.run_id
        if rec.on_disconnect == "cancel":
            self.cancel_on_close.add(rec.run_id)
        self.sink.send_reply(Ack(ref=cmd.ref, run_id=rec.run_id,
                                 conversation_id=rec.conversation_id, status=rec.status))
        self.sink.subscribe(rec.conversation_id, after=rec.first_seq - 1, run_id=rec.run_id,
                            ends_on_done=True)

    async def subscribe(self, cmd: SubscribeCommand) -> None:
        engine = self.st.engine
        key = self._key(cmd.conversation_id, cmd.run_id)
        if key not in self.sink.subs:
            self.check_room()
        after = cmd.after or 0
        if cmd.run_id is not None:
            record = await run_for(engine, self.principal, cmd.run_id)
            conversation_id = record.conversation_id
            start = max(after, record.first_seq - 1)
            run_id: str | None = record.run_id
        else:
            assert cmd.conversation_id is not None
            await conversation_for(engine, self.principal, cmd.conversation_id)
            conversation_id, start, run_id = cmd.conversation_id, after, None
        conv = await engine.conversation(conversation_id)
        last = conv.seq if conv is not None else 0
        if after > last:
            raise BadRequest("invalid_after",
                           f"after={after} is ahead of the conversation (last seq {last})")
        self.sink.send_reply(Ack(ref=cmd.ref, run_id=run_id, conversation_id=conversation_id))
        self.sink.subscribe(conversation_id, after=start, run_id=run_id,
                            ends_on_done=run_id is not None)
        log.debug("ws_subscribed", key=key, after=start)

    async def cancel(self, cmd: CancelCommand) -> None:
        run_id = cmd.run_id
        if run_id is None:
            start_ref = cmd.start_ref or cmd.ref
            run_id = self.started.get(start_ref or "")
            if run_id is None:
                raise NotFound("run_not_found",
                               f"no run_id and no start with ref {start_ref!r} on this socket")
        await run_for(self.st.engine, self.principal, run_id, write=True)
        _, record = await self.st.engine.cancel(run_id)
        self.sink.send_reply(Ack(ref=cmd.ref, run_id=run_id, status=record.status))

    def on_closed(self) -> None:
        for run_id in self.cancel_on_close:
            self.st.engine.request_cancel(run_id, reason="client_disconnected")


@routes.get("/v1/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if st.shutting_down:
        raise shutting_down()
    principal = principal_of(request)  # authenticated at the upgrade, by the middleware
    st.connections.acquire(principal.user)
    try:
        return await _serve(request, st, principal)
    finally:
        st.connections.release(principal.user)


async def _serve(request: web.Request, st: State, principal: Principal) -> web.WebSocketResponse:
    policy = st.settings.policy
    ws = web.WebSocketResponse(
        heartbeat=policy.heartbeat,
        max_msg_size=st.settings.max_ws_message,
        compress=False,
        timeout=5.0,
    )
    await ws.prepare(request)
    cid = connection_id()
    structlog.contextvars.bind_contextvars(connection_id=cid)
    sink = WsSink(ws, request, st.hub, st.store, policy, cid)
    conn = Connection(st, sink, principal)
    st.sinks.add(sink)
    reader = asyncio.create_task(_read_loop(ws, conn), name=f"ws-reader:{cid}")
    writer = asyncio.create_task(sink.run(), name=f"ws-writer:{cid}")
    expiry = asyncio.create_task(conn.expire(), name=f"ws-expiry:{cid}")
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sink.close(sink.close_reason or "disconnected")
        if not ws.closed:
            # Wakes the read loop with a close message and does the closing handshake.
            await ws.close(code=sink.close_code, message=(sink.close_reason or "").encode())
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry
        for task in (writer, reader):
            try:
                async with asyncio.timeout(policy.write_timeout):
                    await task
            except TimeoutError:
                task.cancel()
        conn.on_closed()
        st.sinks.discard(sink)
        if isinstance(ws.exception(), asyncio.TimeoutError):
            metrics.PEERS_DROPPED.labels("ws", "heartbeat").inc()
        log.info("ws_closed", reason=sink.close_reason, code=ws.close_code,
                 delivered=sink.delivered)
    return ws


async def _read_loop(ws: web.WebSocketResponse, conn: Connection) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await conn.handle_text(msg.data)
        elif msg.type == WSMsgType.BINARY:
            conn.error("binary_not_supported", "send JSON text frames")
        if conn.sink.closed:
            return
