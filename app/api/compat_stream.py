"""What the compat endpoints share: turning a mapped request into a run to follow (start,
answer or dismiss), and serving a protocol view of that run from the committed log.

A view is one more reader of the same log, through the sinks' own machinery: a ``Sink``
(bounded queue, lossless catch-up from the replay cache or the store, write timeout,
lifetime, shutdown, metrics) subscribed to the run exactly like ``GET /v1/runs/{id}/events``,
with a ``Wire`` that turns the native frames the sink writes into the view's frames.

Sink surface used (the narrowest public one): ``Sink(wire, hub, store, policy, id)``,
``SseSink`` / ``SseResponse`` / ``serve_sink`` / ``SSE_CONTENT_TYPE`` from ``sinks/sse.py``,
``Sink.subscribe / close / run / release / peer_lost / on_finished / wire``, ``SseWire``
(``write_nowait / drain / abort / timed_out``), and ``State.sinks``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from app.api.http import serve_registered
from app.auth.access import principal_of, require_write, run_for
from app.auth.authenticator import Principal
from app.compat.common import Answer, Dismiss, NewRun, Plan, View, sse_frames, translate
from app.errors import shutting_down
from app.fanout.batch import Blob, Transport
from app.ids import public
from app.sinks.base import Sink
from app.sinks.sse import SSE_CONTENT_TYPE, SseResponse, SseSink
from app.sinks.wire import Wire
from app.state import STATE, State, connection_id

log = structlog.get_logger(__name__)
RUN_HEADER = "X-Agentstream-Run-Id"
CONVERSATION_HEADER = "X-Agentstream-Conversation-Id"


@dataclass(frozen=True, slots=True)
class Target:
    """The run a view follows, and the seq after which it starts."""

    conversation_id: str
    run_id: str
    after: int
    cancel_on_disconnect: bool = False

    def headers(self) -> dict[str, str]:
        return {RUN_HEADER: self.run_id, CONVERSATION_HEADER: public(self.conversation_id)}


def state_of(request: web.Request) -> State:
    return request.app[STATE]


async def begin(request: web.Request, plan: Plan) -> Target:
    """Carry out a mapped request through the engine, as the native endpoints would: a new
    run (owned, rate-limited, acknowledged once durable), an answer, or a dismissal."""
    st = state_of(request)
    principal = principal_of(request)
    require_write(principal)
    if isinstance(plan, NewRun):
        if st.shutting_down:
            raise shutting_down()
        st.run_limiter.check(principal.user)
        # engine.start, as POST /v1/runs: the conversation's multitask policy applies (a
        # busy thread gets 409 conversation_busy by default, not a second run beside it).
        started = await st.engine.start(plan.request, owner=principal.owner,
                                        admin=principal.admin)
        record = started.record
        return Target(record.conversation_id, record.run_id, started.after,
                      record.on_disconnect == "cancel")
    ref = plan.ref
    found = await run_for(st.engine, principal, ref.run_id, write=True)
    if isinstance(plan, Answer):
        await st.engine.answer(ref.run_id, ref.request_id, plan.value)
    elif isinstance(plan, Dismiss):
        await st.engine.cancel(ref.run_id, reason="input_dismissed")
    after = max(ref.seq, found.first_seq - 1)
    structlog.contextvars.bind_contextvars(run_id=ref.run_id)
    return Target(found.conversation_id, ref.run_id, after)


@contextlib.contextmanager
def stream_slot(st: State, principal: Principal) -> Iterator[None]:
    """One of the user's connection slots for the stream (429 past the limit)."""
    if st.shutting_down:
        raise shutting_down()
    st.connections.acquire(principal.user)
    try:
        yield
    finally:
        st.connections.release(principal.user)


class ViewWire:
    """A ``Wire`` between a sink and an SSE response: native frames in, view frames out.
    When the view has ended its response (``done``, or a question) the sink is closed."""

    name: Transport = "sse"

    def __init__(self, inner: Wire, view: View, on_end: Callable[[], None]) -> None:
        self.inner = inner
        self.view = view
        self._on_end = on_end

    def write_nowait(self, data: bytes) -> bool:
        out = sse_frames(translate(self.view, data))
        if self.view.finished:
            self._on_end()
        return self.inner.write_nowait(out) if out else True

    def write_blob(self, blob: Blob) -> bool:
        return self.write_nowait(blob.data)  # translated per view: nothing to share

    def heartbeat(self, now: float, write_timeout: float) -> bool:
        return self.inner.heartbeat(now, write_timeout)

    async def drain(self) -> None:
        await self.inner.drain()

    def abort(self) -> None:
        self.inner.abort()

    async def goodbye(self, reason: str) -> None:
        """No ``retry:`` (these clients do not reconnect, and the OpenAI SDK reads a
        retry-only frame as an empty event): the view's own closing frames."""
        out = sse_frames(self.view.goodbye(reason))
        if out and not self.inner.write_nowait(out):
            await self.inner.drain()

    def timed_out(self) -> bool:
        return self.inner.timed_out()


class ViewSink(SseSink):
    """An ``SseSink`` whose wire speaks a view's protocol."""

    def __init__(self, response: SseResponse, st: State, cid: str, view: View) -> None:
        super().__init__(response, st.hub, st.store, st.settings.policy, cid)
        self.wire = ViewWire(self.wire, view, lambda: self.close("done"))


async def stream_view(
    request: web.Request, target: Target, view: View, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Serve ``view`` of the target run as SSE until the view ends or the client goes; the
    caller holds a ``stream_slot``."""
    st = state_of(request)
    policy = st.settings.policy
    cid = connection_id()
    structlog.contextvars.bind_contextvars(
        connection_id=cid, conversation_id=target.conversation_id, run_id=target.run_id)
    response = SseResponse(ping_interval=policy.heartbeat, send_timeout=policy.write_timeout,
                           allow_all_methods=True)
    response.headers["Content-Type"] = SSE_CONTENT_TYPE
    response.headers.update(target.headers())
    response.headers.update(headers or {})
    await response.prepare(request)
    await response.write(sse_frames(view.opening()))
    sink = ViewSink(response, st, cid, view)
    sink.subscribe(target.conversation_id, after=target.after, run_id=target.run_id,
                   ends_on_done=True)
    await serve_registered(st, sink, target.run_id if target.cancel_on_disconnect else None,
                           "compat_stream_closed")
    return response


class CollectWire:
    """A ``Wire`` with no peer: keeps the view's frames for a response sent at the end
    (non-streaming completions). Bounded: past ``limit`` bytes of native frames the view is
    ended with ``response_too_large`` (stream such runs instead)."""

    name: Transport = "sse"

    def __init__(self, view: View, on_end: Callable[[], None], limit: int) -> None:
        self.view = view
        self.frames: list[Any] = []
        self.too_large = False
        self._on_end = on_end
        self._left = limit

    def write_nowait(self, data: bytes) -> bool:
        self._left -= len(data)
        if self._left < 0 and not self.view.finished:
            self.too_large = True
            self.frames += self.view.goodbye("response_too_large")
        else:
            self.frames += translate(self.view, data)
        if self.view.finished:
            self._on_end()
        return True

    def write_blob(self, blob: Blob) -> bool:
        return self.write_nowait(blob.data)

    def heartbeat(self, now: float, write_timeout: float) -> bool:
        return False  # no peer to keep alive

    async def drain(self) -> None:
        return None

    def abort(self) -> None:
        return None

    async def goodbye(self, reason: str) -> None:
        self.frames += self.view.goodbye(reason)

    def timed_out(self) -> bool:
        return False


async def collect_view(request: web.Request, target: Target, view: View) -> list[Any]:
    """Follow the target run until ``view`` ends; its frames, for one JSON response."""
    st = state_of(request)
    policy = st.settings.policy
    cid = connection_id()
    sink: Sink | None = None
    wire = CollectWire(view, lambda: sink.close("done") if sink else None, policy.queue_bytes)
    sink = Sink(wire, st.hub, st.store, policy, cid)
    sink.on_finished = lambda _cursor: sink.close("done") if sink else None
    sink.subscribe(target.conversation_id, after=target.after, run_id=target.run_id,
                   ends_on_done=True)
    st.sinks.add(sink)
    try:
        await sink.run()
    finally:
        sink.release()
        st.sinks.discard(sink)
    if not view.finished:
        # Closed by policy (idle timeout, ...) before the run ended: say so, never a
        # partial answer that looks complete.
        wire.frames += view.goodbye(sink.close_reason or "closed")
    return wire.frames
