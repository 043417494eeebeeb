"""Ownership checks: the one access rule, used by every path and transport.

A caller who may not see a thing gets the same 404 as for a thing that does not exist, so ids
reveal nothing. This module knows the rule, not the engine: it resolves through any object
with the two lookups below (the engine is one), so the arrow points api -> auth, never
auth -> engine.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from aiohttp import web

from app.auth.authenticator import Principal
from app.errors import Forbidden, not_found
from app.ids import scoped

PRINCIPAL = web.RequestKey("principal", Principal)


class Owned(Protocol):
    @property
    def owner(self) -> str | None: ...


class OwnedRun(Owned, Protocol):
    @property
    def conversation_id(self) -> str: ...


class HasRecord(Protocol):
    @property
    def record(self) -> Owned: ...


C = TypeVar("C", bound=HasRecord, covariant=True)
R = TypeVar("R", bound=OwnedRun, covariant=True)


class Lookups(Protocol[C, R]):
    """What access checks resolve through (the engine provides both)."""

    async def require_conversation(self, conversation_id: str) -> C: ...

    async def get_run(self, run_id: str, namespace: str | None = None) -> R: ...


def check_access(principal: Principal, kind: str, ident: str, conversation_id: str,
                 owner: str | None, write: bool) -> None:
    """The rule: the owner (or an admin) may; a stream token only reads its conversation."""
    if not principal.can_access(owner):
        raise not_found(kind, ident)
    scope = principal.conversation_scope
    if scope is not None:
        if scope != conversation_id:
            raise not_found(kind, ident)
        if write:
            raise Forbidden("insufficient_scope", "a stream token can only read its stream")


async def conversation_for(
    lookups: Lookups[C, OwnedRun], principal: Principal, conversation_id: str,
    write: bool = False,
) -> C:
    """The caller's conversation ``conversation_id`` (a public id: it is looked up in the
    caller's own namespace, app/ids.py); use ``.record.conversation_id`` (the store key)
    from here on."""
    key = scoped(principal.owner, conversation_id)
    conv = await lookups.require_conversation(key)
    check_access(principal, "conversation", conversation_id, key, conv.record.owner, write)
    return conv


async def run_for(
    lookups: Lookups[HasRecord, R], principal: Principal, run_id: str, write: bool = False
) -> R:
    record = await lookups.get_run(run_id, namespace=principal.owner)
    check_access(principal, "run", run_id, record.conversation_id, record.owner, write)
    return record


def require_write(principal: Principal) -> None:
    if principal.conversation_scope is not None:
        raise Forbidden("insufficient_scope", "a stream token can only read its stream")


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
