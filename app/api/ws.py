"""``GET /v1/ws``: one socket, many subscriptions, start/input/cancel/ping commands.

A connection runs three tasks in one ``asyncio.TaskGroup``: the command reader, the sink's
writer, and the credential-expiry watch. The writer's end is the connection's end (it then
cancels the others); the reader and the expiry end it by closing the sink; a task that fails
cancels the rest. Cleanup (close handshake, hub, runs to cancel, bookkeeping) runs once, in
``Connection.serve``'s ``finally``, whatever happened.

Commands (ws_commands.py) are handled in order, so a ``cancel`` naming a ``start``'s ref is
always resolved against the run that start created, even when the client sent it before
seeing the ``ack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import structlog
from aiohttp import WSMsgType, web

from app.api.common import error_response
from app.api.errors import ws_error
from app.api.ws_commands import Commands, StartedRuns
from app.auth.access import principal_of
from app.auth.authenticator import Principal
from app.errors import (
    AgentstreamError,
    BadRequest,
    shutting_down,
)
from app.sinks.base import SinkClosed
from app.sinks.cursor import Cursor
from app.sinks.ws import WsSink, close_code
from app.state import STATE, State, connection_id
from protocol.messages import (
    ErrorReply,
    decode_command,
)

__all__ = ["Connection", "StartedRuns", "routes"]
log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
COMMAND_TYPES = frozenset({"start", "subscribe", "unsubscribe", "input", "cancel", "ping",
                           "refresh"})


class ConnectionOver(Exception):
    """Raised when the writer ends: the task group's way of ending the other tasks."""


class Connection:
    """One WebSocket client's life: its tasks, command reading, replies, cleanup. What each
    command does is ``Commands`` (ws_commands.py)."""

    def __init__(self, state: State, ws: web.WebSocketResponse, sink: WsSink,
                 principal: Principal) -> None:
        self.state = state
        self.ws = ws
        self.sink = sink
        self.commands = Commands(state, sink, principal, self.reply)
        sink.on_finished = self._run_finished

    def _run_finished(self, cursor: Cursor) -> None:
        """A run subscription delivered its ``done``: the run leaves our bookkeeping."""
        if cursor.run_id is not None:
            self.commands.runs.ended(cursor.run_id)

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
        for run_id in self.commands.runs.cancel_on_close:
            self.state.engine.request_cancel(run_id, reason="client_disconnected")
        self.state.sinks.discard(sink)
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
            await self.commands.dispatch(cmd)
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

    async def expire(self) -> None:
        """Close 1008 when the credential expires, unless a ``refresh`` came first."""
        commands = self.commands
        while True:
            expires_at = commands.principal.expires_at
            if expires_at is None:
                await asyncio.Event().wait()  # never expires: cancelled with the connection
            commands.refreshed.clear()
            delay = (expires_at or 0) - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await commands.refreshed.wait()
                continue
            self.sink.close("token_expired")
            return


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
