"""Opening a run: ids, the agent's input, the conversation it runs in, its first row.

No state of its own: the lifecycle's ``start`` calls these between its checks and the one
synchronous step that makes the run active (lifecycle.py).
"""

from __future__ import annotations

import secrets
from typing import Any

from app.agents.base import Agent, AgentInputError
from app.clock import now_ms
from app.engine.conversations import Conversations
from app.engine.event_log import number_event
from app.engine.state import Conversation
from app.errors import Expired, InvalidInput, not_found
from app.ids import scoped
from app.store.base import EventStore
from app.store.ops import Op, PutConversation
from app.store.records import ConversationRecord, RunRecord
from protocol.events import ConversationStarted, ConversationStartedData
from protocol.messages import StartRunRequest


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def parse_input(agent: Agent, raw: Any) -> Any:
    """The agent's own reading of a start's input; a refusal is ``422 invalid_input``."""
    try:
        return agent.parse_input(raw)
    except AgentInputError as exc:
        raise InvalidInput("invalid_input", f"{agent.name}: {exc}") from None


async def open_conversation(
    store: EventStore, conversations: Conversations, conversation_id: str | None,
    owner: str | None, admin: bool,
) -> tuple[Conversation, list[Op]]:
    """The conversation to run in, and the ops that create it if it is new.
    ``conversation_id`` is public: it names a conversation in ``owner``'s namespace."""
    if conversation_id is not None:
        key = scoped(owner, conversation_id)
        conv = await conversations.get(key)
        if conv is None and await store.is_expired(key):
            raise Expired("conversation_expired",
                          f"conversation {conversation_id!r} has expired")
        if conv is not None:
            if not admin and conv.record.owner not in (None, owner):
                raise not_found("conversation", conversation_id)
            return conv, []
        # A concurrent request may have created it while we looked.
        conv = conversations.cached(key)
        if conv is not None:
            return conv, []
    ts = now_ms()
    record = ConversationRecord(scoped(owner, conversation_id or new_id("c")), ts, ts, owner)
    conv = Conversation(record, 0)
    conversations.add(conv)
    opening = number_event(conv, ConversationStarted, ConversationStartedData(), None, None)
    return conv, [PutConversation.of(record), opening]


def run_record(req: StartRunRequest, agent: Agent, conv: Conversation,
               queued: RunRecord | None, ts: int) -> RunRecord:
    """The new run's row; an enqueued start whose turn came keeps its id and creation time."""
    return RunRecord(
        run_id=queued.run_id if queued else new_id("r"),
        conversation_id=conv.record.conversation_id, agent=agent.name,
        status="running", created_at=queued.created_at if queued else ts, started_at=ts,
        input=req.input, on_disconnect=req.on_disconnect, metadata=req.metadata,
        owner=conv.record.owner, first_seq=conv.seq + 1, webhook_url=req.webhook_url,
    )
