"""Reads around the stream: list and show conversations and runs, event pages, delete.

Every read is owner-scoped through ``auth.access`` (a stranger gets exactly the unknown-id
answer) and goes through ``Engine``; query strings are parsed here into the engine's query
types, and bad values are coded 4xx (PROTOCOL-NOTES lists the codes).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import get_args

import msgspec
from aiohttp import web

from app.api.common import json_response, parse_position, path_id
from app.auth.access import conversation_for, principal_of, require_write, run_for
from app.auth.authenticator import Principal
from app.engine.engine import Engine
from app.errors import BadRequest, InvalidInput
from app.ids import public
from app.state import STATE, State
from app.store.records import ConversationQuery, ConversationRecord, RunRecord
from protocol.events import RunStatus
from protocol.history import (
    ConversationDetail,
    ConversationInfo,
    ConversationList,
    Deleted,
    EventPage,
    RunDetail,
    RunList,
)
from protocol.messages import AGENT_PATTERN, ID_PATTERN

routes = web.RouteTableDef()
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_EVENT_PAGE = 1000
MAX_METADATA_FILTERS = 4
RUNS_IN_DETAIL = 100
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_AGENT = re.compile(AGENT_PATTERN)
# A cursor holds a store key: a public id, with its owner tag when ids are scoped (app/ids.py).
_CURSOR_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}(~[A-Za-z0-9_-]{16})?$")
_STATUSES = frozenset(get_args(RunStatus))
_cursor_type = tuple[int, str]


def _state(request: web.Request) -> State:
    return request.app[STATE]


def query_limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    value = parse_position(raw.strip())
    if value is None or not 1 <= value <= most:
        raise InvalidInput("invalid_limit", f"limit must be an integer from 1 to {most}")
    return value


def query_after(request: web.Request) -> int:
    raw = request.query.get("after", "").strip()
    if not raw:
        return 0
    value = parse_position(raw)
    if value is None:
        raise BadRequest("invalid_last_event_id", "after must be a non-negative integer seq")
    return value


def encode_cursor(record: ConversationRecord) -> str:
    raw = msgspec.json.encode((record.created_at, record.conversation_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[int, str]:
    """The opaque cursor back to its keyset; anything else is ``400 invalid_cursor``."""
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        created_at, ident = msgspec.json.decode(data, type=_cursor_type)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadRequest("invalid_cursor", "cursor is not one this server gave out") from None
    if not _CURSOR_KEY.match(ident):
        raise BadRequest("invalid_cursor", "cursor is not one this server gave out")
    return created_at, ident


def conversation_query(request: web.Request, owner: str | None) -> ConversationQuery:
    """``limit``, ``cursor``, ``agent``, ``status`` and ``metadata.<key>=<value>``."""
    q = request.query
    agent, status = q.get("agent"), q.get("status")
    if agent is not None and not _AGENT.match(agent):
        raise InvalidInput("invalid_agent", "agent must be an agent name")
    if status is not None and status not in _STATUSES:
        raise InvalidInput("invalid_status", f"status must be one of {sorted(_STATUSES)}")
    metadata: dict[str, str] = {}
    for name, value in q.items():
        if not name.startswith("metadata."):
            continue
        key = name.removeprefix("metadata.")
        if not _META_KEY.match(key) or len(value) > 256:
            raise InvalidInput("invalid_metadata_filter",
                               "metadata.<key> needs a key of [A-Za-z0-9_-] and a short value")
        metadata[key] = value
    if len(metadata) > MAX_METADATA_FILTERS:
        raise InvalidInput("invalid_metadata_filter",
                           f"at most {MAX_METADATA_FILTERS} metadata filters")
    cursor = q.get("cursor")
    return ConversationQuery(
        owner=owner, limit=query_limit(request, DEFAULT_LIMIT, MAX_LIMIT),
        before=decode_cursor(cursor) if cursor else None,
        agent=agent, status=status, metadata=metadata)


def list_owner(st: State, principal: Principal) -> str | None:
    """Whose conversations a listing shows: the caller's (everyone's without auth)."""
    require_write(principal)  # a stream token reads one stream, it does not list
    return principal.owner


def conversation_info(record: ConversationRecord) -> ConversationInfo:
    return ConversationInfo(public(record.conversation_id), record.created_at, record.updated_at,
                            record.metadata)


@routes.get("/v1/conversations")
async def list_conversations(request: web.Request) -> web.Response:
    st = _state(request)
    query = conversation_query(request, list_owner(st, principal_of(request)))
    rows = await st.engine.list_conversations(query)
    cursor = encode_cursor(rows[-1]) if len(rows) == query.limit else None
    return json_response(ConversationList([conversation_info(r) for r in rows], cursor))


@routes.get("/v1/conversations/{conversation_id}")
async def get_conversation(request: web.Request) -> web.Response:
    st = _state(request)
    cid = path_id(request, "conversation_id")
    conv = await conversation_for(st.engine, principal_of(request), cid)
    record = conv.record
    key = record.conversation_id
    runs = await st.engine.list_runs(key, 0, RUNS_IN_DETAIL)
    return json_response(ConversationDetail(
        cid, record.created_at, record.updated_at, st.hub.published_seq(key),
        [Engine.run_info(r) for r in runs], _next_run(runs, RUNS_IN_DETAIL), record.metadata))


@routes.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(request: web.Request) -> web.Response:
    st = _state(request)
    cid = path_id(request, "conversation_id")
    conv = await conversation_for(st.engine, principal_of(request), cid, write=True)
    cancelled = await st.engine.delete_conversation(conv.record.conversation_id)
    return json_response(Deleted(cid, cancelled_runs=cancelled))


def _next_run(runs: list[RunRecord], limit: int) -> int | None:
    return runs[-1].first_seq if len(runs) == limit else None


@routes.get("/v1/runs")
async def list_runs(request: web.Request) -> web.Response:
    st = _state(request)
    cid = request.query.get("conversation_id")
    if cid is None or not re.match(ID_PATTERN, cid):
        raise InvalidInput("invalid_id", f"conversation_id is required and must match {ID_PATTERN}")
    conv = await conversation_for(st.engine, principal_of(request), cid)
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    runs = await st.engine.list_runs(conv.record.conversation_id, query_after(request), limit)
    return json_response(RunList([Engine.run_info(r) for r in runs], _next_run(runs, limit)))


async def run_detail(engine: Engine, principal: Principal, run_id: str,
                     with_output: bool = True) -> RunDetail:
    record = await run_for(engine, principal, run_id)
    fields = msgspec.to_builtins(record)
    fields["conversation_id"] = public(record.conversation_id)
    detail = msgspec.convert(fields, RunDetail)
    if not with_output:
        return detail
    return msgspec.structs.replace(detail, output=await engine.run_output(record))


async def events_page(st: State, request: web.Request, conversation_id: str) -> web.Response:
    """``GET /v1/conversations/{id}/events`` asked for as JSON: one page after ``after``."""
    conversation_id = (await conversation_for(st.engine, principal_of(request), conversation_id)
                       ).record.conversation_id
    after = query_after(request)
    last = st.hub.published_seq(conversation_id)  # committed: what a page can hold
    if after > last:
        raise BadRequest("invalid_last_event_id",
                         f"after={after} is ahead of the conversation (last seq {last})")
    limit = query_limit(request, 100, MAX_EVENT_PAGE)
    rows = await st.engine.read_events(conversation_id, after, limit)
    next_after = rows[-1].seq if len(rows) == limit else None
    return json_response(EventPage([msgspec.Raw(e.body) for e in rows], last, next_after))
