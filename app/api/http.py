"""The HTTP API of PROTOCOL.md (JSON and SSE endpoints)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import msgspec
import structlog
from aiohttp import web

from app.api.common import (
    json_response,
    parse_last_event_id,
    path_id,
    read_json,
    wants_sse,
)
from app.auth.access import conversation_for, principal_of, require_write, run_for
from app.auth.authenticator import Principal
from app.engine.engine import Engine
from app.errors import BadRequest, shutting_down
from app.sinks.sse import SSE_CONTENT_TYPE, SseResponse, SseSink, open_sse, serve_sink
from app.state import STATE, State, connection_id
from protocol.messages import AgentList, InputRequest, StartRunRequest, StartRunResponse

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


def owner_of(st: State, principal: Principal) -> str | None:
    """The owner recorded on new conversations (None when auth is off)."""
    return principal.user if st.auth.enabled else None


@routes.post("/v1/runs")
async def start_run(request: web.Request) -> web.StreamResponse:
    st = _state(request)
    principal = principal_of(request)
    require_write(principal)
    body = await read_json(request, StartRunRequest, st.settings.max_body)
    sse = wants_sse(request)
    # Every refusal (shutdown, stream slots, rate) comes before the run starts: a client
    # told 429/503 must be able to trust that nothing is running.
    with _stream_slot(st, principal) if sse else contextlib.nullcontext():
        st.run_limiter.check(principal.user)
        run = await st.engine.start_run(body, owner=owner_of(st, principal),
                                        admin=principal.admin)
        record = run.record
        structlog.contextvars.bind_contextvars(
            run_id=record.run_id, conversation_id=record.conversation_id
        )
        if not sse:
            return json_response(
                StartRunResponse(record.run_id, record.conversation_id, record.status,
                                 _events_url(record.run_id)),
                status=202,
            )
        return await _stream(
            request, st, record.conversation_id, record.first_seq - 1, record.run_id,
            cancel_on_disconnect=record.on_disconnect == "cancel",
        )


@routes.get("/v1/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    st = _state(request)
    record = await run_for(st.engine, principal_of(request), path_id(request, "run_id"))
    return json_response(Engine.run_info(record))


@routes.get("/v1/runs/{run_id}/events")
async def run_events(request: web.Request) -> web.StreamResponse:
    st = _state(request)
    principal = principal_of(request)
    record = await run_for(st.engine, principal, path_id(request, "run_id"))
    after = parse_last_event_id(request)
    if record.done_seq is not None and after >= record.done_seq:
        # The browser saw ``done``: 204 makes EventSource stop reconnecting.
        return web.Response(status=204)
    await _check_not_ahead(st, record.conversation_id, after)
    start = max(after, record.first_seq - 1)
    with _stream_slot(st, principal):
        return await _stream(request, st, record.conversation_id, start, record.run_id)


@routes.get("/v1/conversations/{conversation_id}/events")
async def conversation_events(request: web.Request) -> web.StreamResponse:
    st = _state(request)
    principal = principal_of(request)
    cid = path_id(request, "conversation_id")
    await conversation_for(st.engine, principal, cid)
    after = parse_last_event_id(request)
    await _check_not_ahead(st, cid, after)
    with _stream_slot(st, principal):
        return await _stream(request, st, cid, after, None)


@routes.post("/v1/conversations/{conversation_id}/stream-token")
async def stream_token(request: web.Request) -> web.Response:
    """A short-lived token for ``?access_token=``: EventSource cannot send headers."""
    st = _state(request)
    principal = principal_of(request)
    require_write(principal)
    cid = path_id(request, "conversation_id")
    await conversation_for(st.engine, principal, cid)
    token, expires = st.auth.issue_stream_token(principal, cid)
    return json_response(StreamToken(token, expires, cid), status=201)


async def _check_not_ahead(st: State, conversation_id: str, after: int) -> None:
    conv = await st.engine.conversation(conversation_id)
    last = conv.seq if conv is not None else 0
    if after > last:
        raise BadRequest("invalid_last_event_id",
                       f"last event id {after} is ahead of the conversation (last seq {last})")


@contextlib.contextmanager
def _stream_slot(st: State, principal: Principal) -> Iterator[None]:
    """Refuse a stream the server cannot serve (503 shutting down, 429 too many per user),
    else hold one of the user's connection slots for the block."""
    if st.shutting_down:
        raise shutting_down()
    st.connections.acquire(principal.user)
    try:
        yield
    finally:
        st.connections.release(principal.user)


def _head_response() -> web.Response:
    """What a GET of the stream would answer, headers only: HEAD opens no sink."""
    response = web.Response(status=200)
    response.headers.update(SseResponse().headers)  # aiohttp-sse's own header set
    response.headers["Content-Type"] = SSE_CONTENT_TYPE
    return response


async def _stream(
    request: web.Request,
    st: State,
    conversation_id: str,
    after: int,
    run_id: str | None,
    cancel_on_disconnect: bool = False,
) -> web.StreamResponse:
    """Serve one SSE stream until it ends; the caller holds a ``_stream_slot``."""
    if request.method == "HEAD":
        return _head_response()
    cid = connection_id()
    structlog.contextvars.bind_contextvars(connection_id=cid, conversation_id=conversation_id)
    response = await open_sse(request, st.settings.policy)
    sink = SseSink(response, st.hub, st.store, st.settings.policy, cid)
    sink.subscribe(conversation_id, after=after, run_id=run_id,
                   ends_on_done=run_id is not None)
    st.sinks.add(sink)
    try:
        await serve_sink(sink)
    except asyncio.CancelledError:
        # With handler_cancellation on, aiohttp cancels us when the client goes.
        sink.close("disconnected")
        raise
    finally:
        st.sinks.discard(sink)
        # The peer went away (disconnected, or stalled past write_timeout): not a normal end.
        # ``peer_lost`` where the sink has it, else the reason it was closed with.
        peer_lost = getattr(sink, "peer_lost", sink.close_reason == "disconnected")
        if cancel_on_disconnect and peer_lost and run_id:
            st.engine.request_cancel(run_id, reason="client_disconnected")
        log.info("sse_closed", reason=sink.close_reason, delivered=sink.delivered)
    return response


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
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    st = _state(request)
    if st.shutting_down:
        return json_response({"status": "shutting_down"}, status=503)
    if not await st.store.ping():
        return json_response({"status": "store_unavailable"}, status=503)
    return json_response({"status": "ready"})
