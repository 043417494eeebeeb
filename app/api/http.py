"""The HTTP API of PROTOCOL.md (JSON and SSE endpoints)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, NamedTuple

import msgspec
import structlog
from aiohttp import web

from app.api.common import (
    has_query,
    idempotency_key,
    json_response,
    parse_last_event_id,
    path_id,
    query_flag,
    read_json,
    wants_json,
    wants_sse,
)
from app.api.history import MAX_EVENT_PAGE, events_page, query_after, query_limit, run_detail
from app.api.snapshots import maybe_snapshot
from app.api.targets import StreamTarget, parse_types, resolve, start_target
from app.api.webhooks import check_webhook
from app.auth.access import conversation_for, principal_of, require_write, run_for
from app.auth.authenticator import Principal
from app.engine.engine import Engine
from app.engine.starts import Started
from app.errors import shutting_down
from app.ids import public
from app.sinks.base import Sink
from app.sinks.sse import SSE_CONTENT_TYPE, SseResponse, SseSink, open_sse, serve_sink
from app.state import STATE, State, connection_id
from protocol.messages import (
    AgentList,
    HealthStatus,
    InputRequest,
    StartRunRequest,
    StartRunResponse,
)

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


class StreamToken(msgspec.Struct):
    token: str
    expires_at: int
    conversation_id: str


def _state(request: web.Request) -> State:
    return request.app[STATE]


def _events_url(run_id: str) -> str:
    return f"/v1/runs/{run_id}/events"


@routes.post("/v1/runs")
async def start_run(request: web.Request) -> web.StreamResponse:
    st = _state(request)
    principal = principal_of(request)
    require_write(principal)
    body = await read_json(request, StartRunRequest, st.settings.max_body)
    check_webhook(st.settings, body.webhook_url)
    sse = wants_sse(request)
    # Every refusal (shutdown, stream slots, rate) comes before the run starts: a client
    # told 429/503 must be able to trust that nothing is running.
    key = idempotency_key(request)
    position = parse_last_event_id(request)  # checked even when unused: never ignored
    if sse:
        _take_slot(st, principal)
    try:
        st.run_limiter.check(principal.user)
        started = await st.engine.start(body, owner=principal.owner,
                                        admin=principal.admin, idempotency_key=key)
    except BaseException:
        if sse:
            st.connections.release(principal.user)
        raise
    record = started.record
    structlog.contextvars.bind_contextvars(
        run_id=record.run_id, conversation_id=record.conversation_id
    )
    if not sse:
        return json_response(
            StartRunResponse(record.run_id, public(record.conversation_id), record.status,
                             _events_url(record.run_id), started.replayed),
            status=202,
        )
    response, pump = await _open_started(request, st, principal, started, position)
    del body, started, record, principal, st  # an idle stream keeps only what it uses
    if pump is not None:
        await pump  # the idle stack: this frame and the pump's (issue 13)
    return response


async def _open_started(request: web.Request, st: State, principal: Principal,
                        started: Started, position: int) -> Opened:
    """The stream of a run just started (or of the run a retried POST started): from its
    first event, or where the client's stream stopped. Holds the caller's slot."""
    record = started.record
    types = parse_types(request.query.get("types"))
    try:
        if started.replayed:
            # A retried POST (or an answer): resume where the client's stream stopped.
            target = await resolve(
                st.engine, principal, shutting=st.shutting_down, run_id=record.run_id,
                after=max(position, started.after), types=types)
            if target.finished:
                st.connections.release(principal.user)
                return Opened(web.Response(status=204), None)
        else:
            target = start_target(record.conversation_id, record.run_id, record.first_seq,
                                  types=types)
    except BaseException:
        st.connections.release(principal.user)
        raise
    return await _open_stream(request, st, principal, target,
                              cancel_on_disconnect=record.on_disconnect == "cancel")


@routes.get("/v1/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    """The run's committed row and its output, assembled from its events (``?output=0``:
    the row alone, for pollers of long runs)."""
    st = _state(request)
    with_output = request.query.get("output", "1") not in ("0", "false")
    return json_response(await run_detail(st.engine, principal_of(request),
                                          path_id(request, "run_id"), with_output))


@routes.get("/v1/runs/{run_id}/events")
async def run_events(request: web.Request) -> web.StreamResponse:
    """The run's SSE stream. The handler awaits the sink's pump itself: while the stream
    is idle, its frame (four locals) and the pump's are the whole stack below the
    middleware (issue 13, P3)."""
    response, pump = await _open_target(request, run_id=path_id(request, "run_id"))
    if pump is not None:
        await pump
    return response


@routes.get("/v1/conversations/{conversation_id}/events")
async def conversation_events(request: web.Request) -> web.StreamResponse:
    """SSE (what EventSource asks for, and the default); a JSON page when the client asks
    for ``application/json`` and not for ``text/event-stream``. Awaits the pump itself,
    as ``run_events`` does."""
    cid = path_id(request, "conversation_id")
    if has_query(request):  # no query: nothing to check, and no parsed query kept
        query_limit(request, 1, MAX_EVENT_PAGE)  # the page parameters are checked either way
        query_after(request)
    if wants_json(request):
        return await events_page(_state(request), request, cid)
    response, pump = await _open_target(request, conversation_id=cid)
    if pump is not None:
        await pump
    return response


async def _open_target(request: web.Request, *, run_id: str | None = None,
                       conversation_id: str | None = None) -> Opened:
    """Both SSE GETs: resolve the target (targets.py, shared with WebSocket), then open
    the stream; the handler awaits the pump (this frame is gone by then)."""
    st = _state(request)
    principal = principal_of(request)
    query = request.query if has_query(request) else None
    target = await resolve(
        st.engine, principal, shutting=st.shutting_down, run_id=run_id,
        conversation_id=conversation_id, after=parse_last_event_id(request),
        types=parse_types(query.get("types")) if query else None,
        snapshot=query_flag(request, "snapshot") if query else False)
    if target.finished:
        # The browser saw ``done``: 204 makes EventSource stop reconnecting.
        return Opened(web.Response(status=204), None)
    _take_slot(st, principal)
    return await _open_stream(request, st, principal, target)


@routes.post("/v1/conversations/{conversation_id}/stream-token")
async def stream_token(request: web.Request) -> web.Response:
    """A short-lived token for ``?access_token=``: EventSource cannot send headers."""
    st = _state(request)
    principal = principal_of(request)
    require_write(principal)
    cid = path_id(request, "conversation_id")
    conv = await conversation_for(st.engine, principal, cid)
    token, expires = st.auth.issue_stream_token(principal, conv.record.conversation_id)
    return json_response(StreamToken(token, expires, cid), status=201)


def _take_slot(st: State, principal: Principal) -> None:
    """Refuse a stream the server cannot serve (503 shutting down, 429 too many per user),
    else take one of the user's connection slots. Whoever takes it gives it back: the
    stream's ``on_stopped`` once it is served, the opener on any earlier exit. Not a
    context manager: its generator would be one more object per idle stream."""
    if st.shutting_down:
        raise shutting_down()
    st.connections.acquire(principal.user)


class Opened(NamedTuple):
    """An opened SSE stream: its response, and the sink's pump for the handler to await
    (None when the stream is already complete)."""

    response: web.StreamResponse
    pump: Coroutine[Any, Any, None] | None


def _head_response() -> web.Response:
    """What a GET of the stream would answer, headers only: HEAD opens no sink."""
    response = web.Response(status=200)
    response.headers.update(SseResponse().headers)  # aiohttp-sse's own header set
    response.headers["Content-Type"] = SSE_CONTENT_TYPE
    return response


async def _open_stream(
    request: web.Request,
    st: State,
    principal: Principal,
    target: StreamTarget,
    cancel_on_disconnect: bool = False,
) -> Opened:
    """Open one SSE stream; the caller holds a connection slot (``_take_slot``), which
    goes back when the stream has been served, or here when it never gets that far."""
    try:
        if request.method == "HEAD":
            st.connections.release(principal.user)
            return Opened(_head_response(), None)
        cid = connection_id()
        run_id = target.run_id
        structlog.contextvars.bind_contextvars(connection_id=cid,
                                               conversation_id=target.conversation_id)
        snap = await maybe_snapshot(st.engine, target)
        response = await open_sse(request, st.settings.policy)
        if snap.events:
            await response.write(b"".join([e.sse for e in snap.events]))
        if snap.ended:
            st.connections.release(principal.user)
            return Opened(response, None)  # the run's done was in the snapshot
        sink = SseSink(response, st.hub, st.store, st.settings.policy, cid)
        sink.subscribe(target.conversation_id, after=snap.after, run_id=run_id,
                       ends_on_done=run_id is not None, types=target.types)
    except BaseException:
        st.connections.release(principal.user)
        raise
    pump = serve_registered(st, sink, run_id if cancel_on_disconnect else None, "sse_closed",
                            slot_user=principal.user)
    return Opened(response, pump)


def serve_registered(st: State, sink: SseSink, cancel_run: str | None, closed_event: str,
                     slot_user: str | None = None) -> Coroutine[Any, Any, None]:
    """Register an SSE sink for shutdown (``st.sinks``) and hand back its pump for the
    handler to await. When the pump ends (``Sink.on_stopped``): unregister; if the peer
    went away (disconnected, or stalled past write_timeout) cancel ``cancel_run`` (the
    run's ``on_disconnect: cancel``); give back ``slot_user``'s connection slot. Shared
    by the native and the compat streams.

    Not ``async`` and no closure or ``partial``: what the clean-up needs sits in the
    sink's own slots and ``on_stopped`` is the one module function, so an idle stream
    holds no try/finally frame and no per-connection callable (issue 13, P3)."""
    st.sinks.add(sink)
    sink.served_by = st
    sink.cancel_run = cancel_run
    sink.closed_event = closed_event
    sink.slot_user = slot_user
    sink.on_stopped = _stream_stopped
    return serve_sink(sink)


def _stream_stopped(sink: Sink) -> None:
    assert isinstance(sink, SseSink)
    st: State = sink.served_by
    sink.served_by = None
    if sink.close_reason is None:
        # Ended without a reason: cancelled, i.e. aiohttp's handler cancellation (the client
        # went away).
        sink.close("disconnected")
    st.sinks.discard(sink)
    if sink.slot_user is not None:
        st.connections.release(sink.slot_user)
    if sink.cancel_run is not None and sink.peer_lost:
        st.engine.request_cancel(sink.cancel_run, reason="client_disconnected")
    log.info(sink.closed_event, reason=sink.close_reason, delivered=sink.delivered)


@routes.post("/v1/runs/{run_id}/input")
async def answer_input(request: web.Request) -> web.Response:
    st = _state(request)
    run_id = path_id(request, "run_id")
    await run_for(st.engine, principal_of(request), run_id, write=True)
    body = await read_json(request, InputRequest, st.settings.max_body)
    await st.engine.answer(run_id, body.request_id, body.value)
    record = await st.engine.get_run(run_id)
    return json_response(Engine.run_info(record))


@routes.post("/v1/runs/{run_id}/cancel")
async def cancel_run(request: web.Request) -> web.Response:
    st = _state(request)
    run_id = path_id(request, "run_id")
    await run_for(st.engine, principal_of(request), run_id, write=True)
    running, record = await st.engine.cancel(run_id)
    return json_response(Engine.run_info(record), status=202 if running else 200)


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    return json_response(AgentList(_state(request).agents.cards()))


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response(HealthStatus("ok"))


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    st = _state(request)
    if st.shutting_down:
        return json_response(HealthStatus("shutting_down"), status=503)
    if not await st.store.ping():
        return json_response(HealthStatus("store_unavailable"), status=503)
    if not st.engine.bus.healthy:
        return json_response(HealthStatus("bus_unavailable"), status=503)
    return json_response(HealthStatus("ready"))
