"""The one stream-target resolver: "what to stream, from where" for SSE and WebSocket alike.

Both transports name a stream the same way (a run id or a conversation id, a position, the
caller, optionally event types and a snapshot) and must get the same answers for the same
mistakes. Before this module SSE and WebSocket each checked ownership, clamped the position
to the run's first seq and refused a position ahead of the conversation, with different codes
(``invalid_last_event_id`` vs ``invalid_after``). Now:

- ownership goes through ``auth.access`` (the one rule), conversations and runs through the
  ``Engine`` only (the engine scopes ids; this module never reads the store);
- a position is refused with one code, ``invalid_last_event_id``, whichever field carried it;
- ``shutting_down`` is checked here, once, for every new stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.auth.access import conversation_for, run_for
from app.auth.authenticator import Principal
from app.engine.engine import Engine
from app.errors import BadRequest, InvalidInput, shutting_down
from protocol.events import EVENT_TYPES

# The one code for a stream position that is malformed or ahead of the conversation.
INVALID_POSITION = "invalid_last_event_id"
# Always delivered whatever a ``types`` filter says: a run's stream must be able to end.
ALWAYS_DELIVERED = frozenset({"done"})


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """A resolved stream: which conversation, after which seq, filtered how."""

    conversation_id: str
    after: int
    run_id: str | None = None
    # The run's ``done`` seq if it ended (run targets only).
    done_seq: int | None = None
    types: frozenset[str] | None = None
    snapshot: bool = False

    @property
    def finished(self) -> bool:
        """A run target whose ``done`` the client already has (SSE answers 204)."""
        return self.done_seq is not None and self.after >= self.done_seq


def parse_types(raw: str | list[str] | None) -> frozenset[str] | None:
    """``types`` as a comma list (SSE query) or a list (WebSocket): known event types only,
    ``done`` always added. None or empty means every type."""
    if raw is None:
        return None
    names = raw.split(",") if isinstance(raw, str) else raw
    wanted = frozenset(n.strip() for n in names if n.strip())
    if not wanted:
        return None
    unknown = sorted(wanted - EVENT_TYPES)
    if unknown:
        raise InvalidInput("invalid_types", f"unknown event types: {', '.join(unknown)[:200]}")
    return wanted | ALWAYS_DELIVERED


async def resolve(
    engine: Engine,
    principal: Principal,
    *,
    shutting: bool,
    conversation_id: str | None = None,
    run_id: str | None = None,
    after: int = 0,
    types: frozenset[str] | None = None,
    snapshot: bool = False,
) -> StreamTarget:
    """Resolve a stream request or raise the domain error both transports report.

    Exactly one of ``conversation_id`` / ``run_id``. A run target starts no earlier than the
    run's first event; a position past the conversation's last committed seq is refused."""
    if shutting:
        raise shutting_down()
    if (conversation_id is None) == (run_id is None):
        raise InvalidInput("invalid_command", "give exactly one of conversation_id, run_id")
    done_seq: int | None = None
    start = after
    if run_id is not None:
        record = await run_for(engine, principal, run_id)
        conversation_id = record.conversation_id
        done_seq = record.done_seq
        start = max(after, record.first_seq - 1)
        if done_seq is not None and after >= done_seq:
            # The client has the ``done``: nothing to check further (SSE answers 204).
            return StreamTarget(conversation_id, start, run_id, done_seq, types, snapshot)
    else:
        assert conversation_id is not None
        # the caller's own conversation of that name: from here on, its store key
        conversation_id = (await conversation_for(engine, principal, conversation_id)
                           ).record.conversation_id
    conv = await engine.conversation(conversation_id)
    last = conv.seq if conv is not None else 0
    if after > last:
        raise BadRequest(INVALID_POSITION,
                         f"position {after} is ahead of the conversation (last seq {last})")
    return StreamTarget(conversation_id, start, run_id, done_seq, types, snapshot)


def start_target(conversation_id: str, run_id: str, first_seq: int, after: int = 0,
                 types: frozenset[str] | None = None, snapshot: bool = False) -> StreamTarget:
    """The stream of a run just started (or found again by its idempotency key) by this
    caller: no lookup needed, the caller owns it."""
    return StreamTarget(conversation_id, max(after, first_seq - 1), run_id, None, types,
                        snapshot)
