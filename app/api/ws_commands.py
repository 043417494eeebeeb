"""The WebSocket command handlers: what each command of one socket does, in order.

``Connection`` (ws.py) reads and decodes commands and turns errors into ``error`` replies;
``Commands`` carries them out against the engine and the socket's sink, and keeps what the
commands share: the socket's principal (swapped by ``refresh``) and the runs it started
(``StartedRuns``: cancel by ref, cancel on close).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from app import metrics
from app.api.snapshots import maybe_snapshot
from app.api.targets import parse_types, resolve, start_target
from app.api.webhooks import check_webhook
from app.auth.access import require_write, run_for
from app.auth.authenticator import Principal
from app.errors import (
    BadRequest,
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    Unauthenticated,
)
from app.ids import public, scoped
from app.sinks.base import SinkClosed
from app.sinks.ws import WsSink
from app.state import State
from protocol.messages import (
    Ack,
    CancelCommand,
    Command,
    InputCommand,
    PingCommand,
    Pong,
    RefreshCommand,
    StartCommand,
    StartRunRequest,
    SubscribeCommand,
    UnsubscribeCommand,
)

log = structlog.get_logger(__name__)
# Start refs a socket remembers for cancel-by-ref; past this, refs of ended runs (then the
# oldest) are forgotten, so a socket that lives for days does not grow with every run.
STARTED_REFS_LIMIT = 1024


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


class Commands:
    """One socket's command handlers; ``reply`` sends a reply frame on the socket."""

    def __init__(self, state: State, sink: WsSink, principal: Principal,
                 reply: Callable[[object], None]) -> None:
        self.state = state
        self.sink = sink
        self.principal = principal
        self.reply = reply
        self.refreshed = asyncio.Event()
        self.runs = StartedRuns()

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

    def check_room(self) -> None:
        limit = self.state.settings.max_subscriptions
        if limit and self.sink.delivery.count() >= limit:
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
        if self.sink.delivery.cursor(key) is None:
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
