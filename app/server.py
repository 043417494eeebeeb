"""create_app(): wiring, routes, middlewares, start-up and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from app.agents.config_file import registry_from_file
from app.agents.registry import AgentRegistry
from app.api import (
    compat_ag_ui,
    compat_ai_sdk,
    compat_openai,
    history,
    http,
    metrics_api,
    openapi,
    schedules,
    ws,
)
from app.api.common import error_response
from app.api.compat_openai import OPENAI_PATHS, openai_error
from app.api.errors import http_status
from app.api.static import add_static_routes
from app.api.webhooks import setup_webhooks
from app.auth.access import PRINCIPAL
from app.auth.authenticator import Authenticator
from app.auth.cors import setup_cors
from app.auth.limits import ConnectionLimiter, RunRateLimiter
from app.auth.origin import allowed_origins, check_browser_origin, check_cookie_origin
from app.cluster.node import ClusterNode
from app.config import Settings
from app.engine.engine import Engine
from app.engine.retention import retention_loop
from app.errors import AgentstreamError
from app.fanout.hub import Hub
from app.metrics import PUBLISHED, observe_store_batch
from app.schedules.pg_store import PgScheduleStore
from app.schedules.scheduler import SCHEDULER, Scheduler, scheduler_ctx
from app.schedules.store import Schedules, ScheduleStore
from app.state import STATE, State
from app.store.base import EventStore
from app.store.memory import MemoryEventStore
from app.store.postgres import PostgresEventStore
from app.store.sqlite import SqliteEventStore

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HTTP_EXCEPTION_CODES = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "body_too_large", 415: "unsupported_media_type",
}


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request: a request id bound for every log line and one access line without
    the query string (it may carry a token); the caller resolved (``_authenticate``); every
    non-2xx as ``{"error": {code, message}}`` (``_error_response``).

    One middleware, not three: an idle SSE stream keeps the whole chain suspended, and each
    middleware was one more coroutine frame per open connection (issue 13, P3)."""
    structlog.contextvars.clear_contextvars()
    rid = request.headers.get("X-Request-ID", "")[:64] or "q" + secrets.token_hex(6)
    structlog.contextvars.bind_contextvars(request_id=rid)
    started = time.perf_counter()
    status = 500
    try:
        try:
            _authenticate(request)
            response = await handler(request)
        except (AgentstreamError, web.HTTPException) as exc:
            response = _error_response(request, exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unhandled_error")
            response = _error(request, 500, "internal_error", "internal error")
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log.info("http_request", method=request.method, path=request.path, status=status,
                 ms=round((time.perf_counter() - started) * 1000, 1))


def _authenticate(request: web.Request) -> None:
    """Resolve the caller for every API path; health and metrics stay open. A caller that
    authenticated with the cookie and changes state (or opens a WebSocket) must come from an
    allowed origin (``app.auth.origin``: CSRF and cross-site WebSocket hijacking)."""
    if request.path.startswith("/v1/") and request.method != "OPTIONS":
        st = request.app[STATE]
        principal, source = st.auth.resolve(request)
        request[PRINCIPAL] = principal
        structlog.contextvars.bind_contextvars(user=principal.user)
        if source == "cookie":
            check_cookie_origin(request, allowed_origins(st.settings.cors_origins))
        elif source == "none":
            check_browser_origin(request, allowed_origins(st.settings.cors_origins))


def _error_response(
    request: web.Request, exc: AgentstreamError | web.HTTPException
) -> web.StreamResponse:
    """Our errors and aiohttp's own refusals (a GET of /v1/ws without an upgrade, a CORS
    preflight from an origin not on the list, ...) with a code; on the OpenAI-compatible
    paths, OpenAI's error shape, so its SDKs raise the right class also for auth and
    limits. A redirect (an HTTPException under 400) goes on as raised."""
    if isinstance(exc, AgentstreamError):
        return _error(request, http_status(exc), exc.code, exc.message)
    if exc.status < 400:
        raise exc
    code = HTTP_EXCEPTION_CODES.get(exc.status, "http_error")
    text = exc.text or ""
    message = text if text and not text.startswith(f"{exc.status}:") else exc.reason
    response = _error(request, exc.status, code, message[:300])
    if "Allow" in exc.headers:  # a 405 must say what is allowed (RFC 9110)
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    if request.path.startswith(OPENAI_PATHS):
        return openai_error(status, code, message)
    return error_response(status, code, message)


CLUSTER = web.AppKey("cluster", ClusterNode)


def schedule_store(store: EventStore) -> Schedules:
    """Schedules live with the events: in the SQLite file, in PostgreSQL (shared by every
    node, each due time claimed once), or in memory with the memory store."""
    if isinstance(store, PostgresEventStore):
        return PgScheduleStore(store)
    return ScheduleStore(store.path if isinstance(store, SqliteEventStore) else ":memory:")


def open_store(settings: Settings) -> EventStore:
    """The store the settings name: PostgreSQL (cluster mode), a SQLite file, or memory
    for ``--db :memory:``."""
    if settings.store:
        return PostgresEventStore(
            settings.store, batch_max=settings.store_batch,
            high_water=settings.store_high_water, low_water=settings.store_low_water,
            fail_timeout=settings.store_fail_timeout)
    if settings.db == ":memory:":
        return MemoryEventStore(
            batch_max=settings.store_batch, high_water=settings.store_high_water,
            low_water=settings.store_low_water, fail_timeout=settings.store_fail_timeout)
    return SqliteEventStore(
        settings.db, batch_max=settings.store_batch, high_water=settings.store_high_water,
        low_water=settings.store_low_water, fail_timeout=settings.store_fail_timeout)


def create_app(
    settings: Settings | None = None,
    *,
    store: EventStore | None = None,
    agents: AgentRegistry | None = None,
) -> web.Application:
    """The whole service: its state (``build_state``), routes, and start/stop steps."""
    settings = settings or Settings()
    settings.validate()
    state, cluster = build_state(settings, store, agents)
    app = web.Application(
        middlewares=[request_middleware],
        client_max_size=settings.max_body,
        # Request bodies arrive as sent: read_body refuses any Content-Encoding with 415
        # (aiohttp would inflate gzip unbounded, and answer br/zstd in plain text).
        handler_args={"auto_decompress": False},
    )
    app[STATE] = state
    if cluster is not None:
        app[CLUSTER] = cluster
    _add_routes(app, settings)
    app[SCHEDULER] = Scheduler(schedule_store(state.store), state.engine,
                               min_interval=settings.schedule_min_interval)
    app.cleanup_ctx.append(_lifecycle)
    app.cleanup_ctx.append(scheduler_ctx)  # starts after, stops before, the engine's step
    setup_webhooks(app, settings, state.engine)  # its delivery step too
    app.on_shutdown.append(_on_shutdown)
    return app


def build_state(
    settings: Settings, store: EventStore | None, agents: AgentRegistry | None
) -> tuple[State, ClusterNode | None]:
    """The store, hub, engine, auth and limits one process shares; in cluster mode (a
    bus) also the node that joins it to the others."""
    store = store or open_store(settings)
    store.batch_observer = observe_store_batch
    hub = Hub(settings.replay_cache_bytes)
    hub.on_published = PUBLISHED.inc
    agents = agents or registry_from_file(settings.agents_file)
    cluster = None
    if settings.bus:
        assert isinstance(store, PostgresEventStore), "validated: a bus needs PostgreSQL"
        cluster = ClusterNode(store, hub, settings.bus, lease=settings.lease_seconds,
                              forward_timeout=settings.ack_timeout,
                              prefix=settings.cluster_name)
    engine = Engine(
        store, hub, agents,
        input_timeout=settings.input_timeout, run_timeout=settings.run_timeout,
        max_conversations=settings.max_conversations, ack_timeout=settings.ack_timeout,
        bus=cluster.bus if cluster else None, peers=cluster.peers if cluster else None,
    )
    if cluster is not None:
        cluster.attach(engine)
    state = State(
        settings, store, hub, agents, engine, _authenticator(settings),
        ConnectionLimiter(settings.max_connections_per_user),
        RunRateLimiter(settings.runs_per_minute),
    )
    return state, cluster


def _authenticator(settings: Settings) -> Authenticator:
    return Authenticator(
        settings.auth,
        api_keys=settings.api_keys,
        api_keys_file=settings.api_keys_file,
        jwt_secret=settings.jwt_secret,
        jwt_public_key_file=settings.jwt_public_key_file,
        jwt_audience=settings.jwt_audience,
        stream_token_secret=settings.stream_token_secret,
        stream_token_ttl=settings.stream_token_ttl,
    )


def _add_routes(app: web.Application, settings: Settings) -> None:
    """Every route, in the order aiohttp matches them (static last)."""
    app.add_routes(http.routes)
    app.add_routes(history.routes)
    app.add_routes(metrics_api.routes)
    openapi.setup(app)
    app.add_routes(ws.routes)
    app.add_routes(compat_openai.routes)  # issue 17: OpenAI Chat Completions
    app.add_routes(compat_ai_sdk.routes)  # issue 17: Vercel AI SDK UI message stream
    app.add_routes(compat_ag_ui.routes)  # issue 17: AG-UI
    setup_cors(app, settings.cors_origin_list, settings.cors_credentials)
    app.add_routes(schedules.routes)
    add_static_routes(app, settings.demo_page)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    cluster = app.get(CLUSTER)
    await st.store.open()
    if cluster is not None:
        try:
            await cluster.start()
        except BaseException:
            await cluster.close()
            await st.store.close(timeout=1)
            raise
    interrupted = await st.engine.recover()
    log.info("store_opened", store=type(st.store).__name__, interrupted_runs=interrupted)
    sweeper = asyncio.create_task(_retention(app), name="retention")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        # Runs that are still open (no graceful shutdown happened) end interrupted now.
        await st.engine.shutdown(
            0.2 if st.shutdown_deadline else st.settings.shutdown_grace)
        # What the graceful stop left of the grace (all of it if there was none).
        left = st.shutdown_deadline - time.monotonic() if st.shutdown_deadline else 0.0
        lost = await st.store.close(
            timeout=max(0.2, left) if st.shutdown_deadline else st.settings.shutdown_grace)
        if lost:
            log.error("store_closed_with_unwritten_units", units=lost)
        if cluster is not None:
            await cluster.close()  # after the last writes: only then give conversations back
        await st.agents.close()
        log.info("store_closed")


async def _retention(app: web.Application) -> None:
    st = app[STATE]
    if st.settings.retention <= 0:
        return
    scheduler = app[SCHEDULER]
    await retention_loop(st.engine, st.settings.retention, st.settings.retention_sweep,
                         scheduler.conversation_ids)


async def _on_shutdown(app: web.Application) -> None:
    """SIGTERM: refuse new work, end runs ``interrupted``, flush, let streams say goodbye."""
    st = app[STATE]
    st.shutting_down = True
    grace = st.settings.shutdown_grace
    deadline = st.shutdown_deadline = time.monotonic() + grace
    log.info("shutdown_started", runs=len(st.engine.active), connections=len(st.sinks))
    await st.engine.shutdown(grace / 2)
    with contextlib.suppress(Exception):
        # keep the last half second of the grace for the sinks and the store to close
        await st.store.flush(timeout=max(0.1, deadline - 0.5 - time.monotonic()))
    for sink in list(st.sinks):
        sink.shutdown()
    while st.sinks and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.02)
    for sink in list(st.sinks):
        sink.close("shutdown")
        sink.abort()
    log.info("shutdown_done", remaining_connections=len(st.sinks))
