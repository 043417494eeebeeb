"""Ownership checks. A caller who may not see a thing gets the same 404 as for a thing that
does not exist, on every path and transport, so ids reveal nothing."""

from __future__ import annotations

from aiohttp import web

from app.auth.authenticator import Principal
from app.engine.engine import Engine
from app.engine.state import Conversation
from app.errors import Forbidden, not_found
from app.store.records import RunRecord

PRINCIPAL = web.RequestKey("principal", Principal)


def _check(principal: Principal, kind: str, ident: str, conversation_id: str,
           owner: str | None, write: bool) -> None:
    if not principal.can_access(owner):
        raise not_found(kind, ident)
    scope = principal.conversation_scope
    if scope is not None:
        if scope != conversation_id:
            raise not_found(kind, ident)
        if write:
            raise Forbidden("insufficient_scope", "a stream token can only read its stream")


async def conversation_for(
    engine: Engine, principal: Principal, conversation_id: str, write: bool = False
) -> Conversation:
    conv = await engine.require_conversation(conversation_id)
    _check(principal, "conversation", conversation_id, conversation_id, conv.record.owner, write)
    return conv


async def run_for(
    engine: Engine, principal: Principal, run_id: str, write: bool = False
) -> RunRecord:
    record = await engine.get_run(run_id)
    _check(principal, "run", run_id, record.conversation_id, record.owner, write)
    return record


def require_write(principal: Principal) -> None:
    if principal.conversation_scope is not None:
        raise Forbidden("insufficient_scope", "a stream token can only read its stream")


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
